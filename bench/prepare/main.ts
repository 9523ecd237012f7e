/**
 * Prepare of a nix layer of 1,000 store paths, every path already in the
 * store, straight to the daemon's socket: with a nix-closure label (one
 * closure-info path rooted for the whole closure) and with per-path labels
 * only (as images built by the Go original's tooling carry them), each
 * followed by the Commit the unpacker makes and the snapshot's Remove.
 * For reference, the plain `nix-store --realise --add-root` of the same
 * paths (one root per path), and of the closure-info path alone.
 * Targets (goal P3, p50): ≤ 100 ms with nix-closure, ≤ 500 ms per-path.
 *
 *   node build/bench/prepare/main.js [--quick] [--json FILE]
 *
 * Runs as root: it builds the closure with Nix (GC roots under its
 * temporary directory, for the run only), starts a private nix-snapshotter
 * that no containerd knows, and stops it by PID at the end, also on
 * failure or interruption. The markdown report goes to stdout, progress to
 * stderr.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { nixLayerAnnotations } from "../../src/image/nix-image.js";
import type { StorePath } from "../../src/nix/store-path.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { tempDir, type TempDir } from "../../test/lib/tmp.js";
import { timeProcess } from "../lib/containerd-run.js";
import { benchMain, benchOptions, fsType, removeStaleAutoRoots } from "../lib/harness.js";
import { fmt, markdownTable, msBetween, now, percentile, type BenchReport, type GoalRow } from "../lib/stats.js";

const exec = promisify(execFile);
const opts = benchOptions("5 Prepares per variant instead of 20 (a smoke run)");
const REPS = opts.quick ? 5 : 20;
const REALISE_REPS = opts.quick ? 2 : 5;
const SIZE = 1000;
/** many.nix with withHello: n leaves + the top + hello, libc, loader. */
const MANY_EXTRA = 4;
const MANY_NIX = path.join(REPO, "test/fixtures/nix/many.nix");
const CLOSURE_INFO_NIX = path.join(REPO, "test/fixtures/nix/closure-info.nix");
const GOAL_CLOSURE_MS = 100;
const GOAL_PER_PATH_MS = 500;

function progress(msg: string): void {
  process.stderr.write(`[bench prepare] ${msg}\n`);
}

interface Env {
  tmp: TempDir;
  daemon?: DaemonProcess;
  client?: SnapshotsClient;
  daemonLog: string;
}

async function nixBuild(args: string[], outLink: string): Promise<string> {
  try {
    const { stdout } = await exec("nix-build", [...args, "--max-jobs", "4", "-Q", "--out-link", outLink], { maxBuffer: 64 << 20, timeout: 900_000 });
    const out = stdout.split("\n").filter(Boolean);
    if (out.length !== 1) throw new Error(`expected one output, got ${out.length}`);
    return out[0]!;
  } catch (err) {
    throw new Error(`nix-build ${args.join(" ")}: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().slice(-2000)}`);
  }
}

interface Row {
  variant: "closure" | "per-path";
  what: string;
  labels: number;
  prepareMs: number[];
  commitMs: number[];
  removeMs: number[];
  realiseMs: number[];
  goalMs: number;
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = now();
  const r = await fn();
  return [r, msBetween(t0, now())];
}

/** nix-store --realise --add-root of paths (one root per path), timed alone. */
async function timeRealise(paths: string[], dir: string, reps: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < reps; i++) {
    const rootDir = path.join(dir, `realise-${randomBytes(4).toString("hex")}`);
    mkdirSync(rootDir, { recursive: true });
    const r = await timeProcess("nix-store", ["--realise", "--add-root", path.join(rootDir, "root"), ...paths], { timeoutMs: 300_000 });
    if (r.code !== 0) throw new Error(`nix-store --realise: ${r.stderr.trim().slice(-1000)}`);
    out.push(r.totalMs);
    rmSync(rootDir, { recursive: true, force: true });
  }
  return out;
}

async function run(env: Env): Promise<BenchReport> {
  const dir = env.tmp.path;
  const load0 = os.loadavg();
  progress(`building the ${SIZE.toLocaleString("en-US")}-path closure and its closure info with Nix`);
  const roots = path.join(dir, "gcroots");
  mkdirSync(roots, { recursive: true });
  const top = await nixBuild([MANY_NIX, "--arg", "n", String(SIZE - MANY_EXTRA), "--arg", "withHello", "true"], path.join(roots, "many"));
  const closureInfo = await nixBuild([CLOSURE_INFO_NIX, "--arg", "storePaths", `[ ${JSON.stringify(top)} ]`], path.join(roots, "closure"));
  const paths = readFileSync(path.join(closureInfo, "store-paths"), "utf8").split("\n").filter(Boolean);
  if (paths.length !== SIZE) throw new Error(`closure of ${top} has ${paths.length} store paths, expected ${SIZE}`);

  const address = path.join(dir, "sn.sock");
  env.daemon = await startDaemonProcess({
    root: path.join(dir, "root"),
    address,
    logFile: env.daemonLog,
    config: `[image_service]\nenable = false\n`,
  });
  const sn = (env.client = new SnapshotsClient({ address }));

  // The labels containerd's unpacker passes: the layer's annotations and
  // the snapshot ref.
  const ref = { "containerd.io/snapshot.ref": `sha256:${randomBytes(32).toString("hex")}` };
  const variants: { variant: Row["variant"]; what: string; labels: Record<string, string>; realise: string[]; goalMs: number }[] = [
    {
      variant: "closure",
      what: `${SIZE.toLocaleString("en-US")} paths, nix-closure label (+ per-path labels)`,
      labels: { ...ref, ...nixLayerAnnotations(paths as StorePath[], path.join(closureInfo, "store-paths")) },
      realise: [closureInfo],
      goalMs: GOAL_CLOSURE_MS,
    },
    {
      variant: "per-path",
      what: `${SIZE.toLocaleString("en-US")} paths, per-path labels only`,
      labels: { ...ref, ...nixLayerAnnotations(paths as StorePath[]) },
      realise: paths,
      goalMs: GOAL_PER_PATH_MS,
    },
  ];
  const rows: Row[] = variants.map((v) => ({ variant: v.variant, what: v.what, labels: Object.keys(v.labels).length, prepareMs: [], commitMs: [], removeMs: [], realiseMs: [], goalMs: v.goalMs }));

  progress(`Prepare, Commit, Remove on the daemon's socket: 1 warm-up + ${REPS} per variant, alternating`);
  const nonce = randomBytes(4).toString("hex");
  let seq = 0;
  for (let i = 0; i <= REPS; i++) {
    for (const j of i % 2 === 0 ? [0, 1] : [1, 0]) {
      const n = ++seq;
      const key = `extract-${nonce}-${n}`;
      const name = `layer-${nonce}-${n}`;
      const labels = variants[j]!.labels;
      const [mounts, prep] = await timed(() => sn.prepare(key, "", { labels }));
      if (mounts.length !== 1) throw new Error(`Prepare of the nix layer (${variants[j]!.variant}) returned ${mounts.length} mounts, expected the rootfs alone`);
      const [, commit] = await timed(() => sn.commit(name, key, { labels }));
      const [, rm] = await timed(() => sn.remove(name));
      if (i === 0) continue; // warm-up
      rows[j]!.prepareMs.push(prep);
      rows[j]!.commitMs.push(commit);
      rows[j]!.removeMs.push(rm);
    }
  }

  progress(`nix-store --realise --add-root alone: ${REALISE_REPS} per variant`);
  const realiseDir = path.join(dir, "realise");
  for (const [j, v] of variants.entries()) rows[j]!.realiseMs = await timeRealise(v.realise, realiseDir, REALISE_REPS);

  const p50 = (xs: number[]) => percentile(xs, 50);
  const table = markdownTable(
    ["Prepare of a nix layer, on the daemon's socket", "labels", "p50 ms", "p99 ms", "max ms", "n", "Commit p50 ms", "Remove p50 ms", "nix-store --realise --add-root alone, p50 ms", "goal (p50)", ""],
    rows.map((r) => [
      r.what,
      r.labels.toLocaleString("en-US"),
      fmt(p50(r.prepareMs)),
      fmt(percentile(r.prepareMs, 99)),
      fmt(Math.max(...r.prepareMs)),
      String(r.prepareMs.length),
      fmt(p50(r.commitMs)),
      fmt(p50(r.removeMs)),
      `${fmt(p50(r.realiseMs))} (${r.variant === "closure" ? "the closure-info path" : `${SIZE.toLocaleString("en-US")} paths, ${SIZE.toLocaleString("en-US")} roots`})`,
      `≤ ${r.goalMs} ms`,
      p50(r.prepareMs) <= r.goalMs ? "MET" : "MISSED",
    ]),
    ["left", "right", "right", "right", "right", "right", "right", "right", "right", "left", "left"],
  );
  const load1 = os.loadavg();
  const la = (l: number[]) => l.map((x) => x.toFixed(2)).join(" ");
  const markdown = `${opts.quick ? "**Quick run (--quick).**\n\n" : ""}${table}

A nix layer of the \`many\` fixture (${SIZE.toLocaleString("en-US")} store paths: ${(SIZE - MANY_EXTRA).toLocaleString("en-US")} small leaves, \
the top path that refers to them, hello, libc and the loader), every path already in the store, prepared straight on the \
daemon's socket (no containerd) with the labels containerd's unpacker passes, a fresh key each time; each Prepare is followed by \
the unpacker's Commit (same labels) and the Remove, timed apart. After one warm-up each, ${REPS} of each variant, alternating. \
*nix-store --realise --add-root alone* is that Nix call run by the benchmark: of the closure-info path (what the nix-closure \
variant roots), and of all ${SIZE.toLocaleString("en-US")} paths with one root each (what per-path labels cost when every path is \
rooted). State on ${fsType(dir)}. Load average (1, 5, 15 min) before: ${la(load0)}, after: ${la(load1)}.
`;
  const goals: GoalRow[] = rows.map((r) => ({
    id: "P3",
    measure: `Prepare, ${SIZE.toLocaleString("en-US")}-path nix layer, ${r.variant === "closure" ? "nix-closure label" : "per-path labels only"} (p50)`,
    goal: `≤ ${r.goalMs} ms`,
    now: `${fmt(p50(r.prepareMs))} ms`,
    met: p50(r.prepareMs) <= r.goalMs,
  }));
  return {
    name: "prepare",
    title: "Prepare of a 1,000-path nix layer",
    markdown,
    rows: rows.map((r) => ({ ...r, p50: p50(r.prepareMs) })),
    meta: { size: SIZE, reps: REPS, realiseReps: REALISE_REPS, quick: opts.quick },
    goals,
  };
}

benchMain<Env>({
  name: "prepare",
  opts,
  init: () => {
    const tmp = tempDir("nix-snapshotter-bench-prepare-");
    return { tmp, daemonLog: path.join(tmp.path, "nix-snapshotter.log") };
  },
  run,
  teardown: async (env) => {
    await env.client?.close();
    await env.daemon?.stop();
    env.tmp.cleanup();
    removeStaleAutoRoots(env.tmp.path);
  },
  logs: (env) => ({ "nix-snapshotter": env.daemonLog }),
});
