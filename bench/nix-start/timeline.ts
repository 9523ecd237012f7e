/**
 * Timelines from outside the daemon: containerd's events of an import, and
 * the daemon's own per-call times (its debug log).
 */
import { readFileSync, statSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import type { ContainerdEvent, ContainerdEvents, TimedProcess } from "../lib/containerd-run.js";

export interface ImportSample {
  ms: number;
  /** nix only: the unpack's Prepare and Commit of the layer inside the daemon (its debug log), ms. */
  daemonPrepareMs?: number;
  daemonCommitMs?: number;
  /** From containerd's events, ms from spawn: the extract snapshot prepared, and committed (NaN if not seen). */
  preparedAt: number;
  committedAt: number;
}

/** The unpack's /snapshot/prepare and /snapshot/commit events of an import, ms from its spawn. */
export async function importMarks(events: ContainerdEvents, ns: string, p: TimedProcess, snapshotter: string): Promise<{ preparedAt: number; committedAt: number }> {
  // Events are stamped by containerd, the spawn by us (Date.now()): allow
  // a millisecond of skew, no more (the previous import ends just before).
  const mine = (e: ContainerdEvent) =>
    e.namespace === ns &&
    e.wallMs >= p.startWallMs - 1 &&
    e.wallMs <= p.startWallMs + p.totalMs + 50 &&
    e.body.includes('"extract-') &&
    e.body.includes(`"${snapshotter}"`);
  await events.waitForAny((e) => mine(e) && e.topic === "/snapshot/commit", 2_000);
  const all = events.events.filter(mine);
  const prepared = all.find((x) => x.topic === "/snapshot/prepare");
  const committed = all.find((x) => x.topic === "/snapshot/commit" && (!prepared || x.wallMs >= prepared.wallMs));
  return {
    preparedAt: prepared ? prepared.wallMs - p.startWallMs : NaN,
    committedAt: committed ? committed.wallMs - p.startWallMs : NaN,
  };
}

/** Time inside the daemon's gRPC handlers, per method (lower-case): calls and ms summed. */
export type DaemonCalls = Record<string, { n: number; ms: number }>;

/** The log's size in bytes, after giving lines in flight (daemon → pipe → log file) a moment to land. */
export async function logOffset(file: string): Promise<number> {
  await sleep(30);
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/**
 * The calls the daemon logged (at debug level: `msg="Prepare" key=... ms=...`)
 * between two byte offsets of its log, optionally only those whose key
 * passes `keep`.
 */
export function daemonCalls(file: string, from: number, to: number, keep: (key: string) => boolean = () => true): DaemonCalls {
  let text = "";
  try {
    text = readFileSync(file).subarray(from, to).toString("utf8");
  } catch {
    return {};
  }
  const out: DaemonCalls = {};
  for (const m of text.matchAll(/ level=debug msg="([A-Za-z]+)"(?: key=("(?:[^"\\]|\\.)*"|\S+))?.*? ms=([\d.]+)/g)) {
    // Methods are logged as the service names them (lower-case here).
    const method = m[1]!.toLowerCase();
    let key = m[2] ?? "";
    if (key.startsWith('"')) {
      try {
        key = JSON.parse(key) as string;
      } catch {
        /* keep it quoted */
      }
    }
    if (!keep(key)) continue;
    const c = (out[method] ??= { n: 0, ms: 0 });
    c.n++;
    c.ms += Number(m[3]);
  }
  return out;
}
