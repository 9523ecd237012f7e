/**
 * Small helpers shared by the benchmarks: monotonic timing, latency samples
 * and their percentiles, throughput, and markdown tables. Benchmarks report
 * numbers; nothing here decides pass or fail of a test.
 */

/** Monotonic clock in nanoseconds. */
export function now(): bigint {
  return process.hrtime.bigint();
}

/** Milliseconds between two now() readings. */
export function msBetween(start: bigint, end: bigint): number {
  return Number(end - start) / 1e6;
}

/** Latency samples (ms) plus the wall time they were collected over. */
export class Samples {
  readonly latencies: number[] = [];
  /** Sum of the wall-clock spans of the measured phases, in ms. */
  wallMs = 0;

  /** Times one call of fn and records its latency. */
  async time<T>(fn: () => Promise<T>): Promise<T> {
    const t0 = now();
    const r = await fn();
    this.latencies.push(msBetween(t0, now()));
    return r;
  }

  /**
   * Runs a measured phase: its wall time is added to wallMs, so throughput
   * can be computed over phases interleaved with other work.
   */
  async phase<T>(fn: () => Promise<T>): Promise<T> {
    const t0 = now();
    try {
      return await fn();
    } finally {
      this.wallMs += msBetween(t0, now());
    }
  }

  get count(): number {
    return this.latencies.length;
  }

  /** Operations per second over the measured phases. */
  opsPerSec(): number {
    return opsPerSec(this.count, this.wallMs);
  }

  summary(): Summary {
    return summarize(this.latencies, this.wallMs);
  }
}

export interface Summary {
  count: number;
  opsPerSec: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export function opsPerSec(count: number, wallMs: number): number {
  return wallMs > 0 ? (count * 1000) / wallMs : 0;
}

/**
 * The p-th percentile (0..100) of the values, nearest-rank on the sorted
 * list (no interpolation: a reported latency is one that happened).
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return percentileSorted(sorted, p);
}

export function percentileSorted(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((Math.min(Math.max(p, 0), 100) / 100) * sorted.length);
  return sorted[Math.min(Math.max(rank - 1, 0), sorted.length - 1)]!;
}

export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  let s = 0;
  for (const v of values) s += v;
  return s / values.length;
}

export function summarize(latencies: readonly number[], wallMs: number): Summary {
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    count: sorted.length,
    opsPerSec: opsPerSec(sorted.length, wallMs),
    meanMs: mean(sorted),
    p50Ms: percentileSorted(sorted, 50),
    p99Ms: percentileSorted(sorted, 99),
    maxMs: sorted.length ? sorted[sorted.length - 1]! : NaN,
  };
}

/** Runs fn(i) for i in [0, n) with at most `concurrency` calls in flight. */
export async function pool(n: number, concurrency: number, fn: (i: number, worker: number) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, n) }, async (_, w) => {
    while (next < n) {
      const i = next++;
      await fn(i, w);
    }
  });
  await Promise.all(workers);
}

/** A number for a table cell: about three significant digits. */
export function fmt(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  const abs = Math.abs(v);
  if (abs >= 10 ** digits) return Math.round(v).toLocaleString("en-US");
  const decimals = Math.max(0, digits - 1 - Math.floor(Math.log10(abs)));
  return v.toFixed(Math.min(decimals, 4));
}

export type Align = "left" | "right" | "center";

/** A GitHub-flavoured markdown table; cells are escaped for `|`. */
export function markdownTable(headers: string[], rows: string[][], align: Align[] = []): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
  const widths = headers.map((h, i) => Math.max(3, esc(h).length, ...rows.map((r) => esc(r[i] ?? "").length)));
  const pad = (s: string, i: number) => {
    const w = widths[i]!;
    return align[i] === "right" ? s.padStart(w) : s.padEnd(w);
  };
  const line = (cells: string[]) => `| ${cells.map((c, i) => pad(esc(c), i)).join(" | ")} |`;
  const rule = widths.map((w, i) => {
    const a = align[i] ?? "left";
    if (a === "right") return "-".repeat(w - 1) + ":";
    if (a === "center") return ":" + "-".repeat(w - 2) + ":";
    return "-".repeat(w);
  });
  return [line(headers), `| ${rule.join(" | ")} |`, ...rows.map((r) => line(headers.map((_, i) => r[i] ?? "")))].join("\n");
}

/** The shape every benchmark writes with --json, which bench/run.sh assembles. */
export interface BenchReport {
  /** Directory name under bench/. */
  name: string;
  title: string;
  /** The complete markdown section body (table and notes), without the title. */
  markdown: string;
  /** Machine-readable rows, free-form per benchmark. */
  rows: unknown[];
  /** Anything else worth keeping: parameters, environment. */
  meta?: Record<string, unknown>;
  /**
   * The performance goals this benchmark measures (P1, P2, ...), one row
   * each: bench/run.sh gathers every benchmark's rows into the table that
   * opens docs/performance.md and ends the run's output.
   */
  goals?: GoalRow[];
}

/** One performance goal, as measured in this run. */
export interface GoalRow {
  /** The goal's id, "P1" ... "P6"; several rows may share one. */
  id: string;
  /** What is measured, in a few words. */
  measure: string;
  /** The goal, as text ("≥ 1.0×", "≤ 2 ms"). */
  goal: string;
  /** The figure this run measured, as text ("0.96×", "12.2 ms"). */
  now: string;
  met: boolean;
}
