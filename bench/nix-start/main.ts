/**
 * Container start from nix images: `ctr run --rm` of a nix image (one layer
 * of empty mountpoints plus store-path annotations, built by the real
 * `nix2container build`) on the `nix` snapshotter, against an ordinary
 * image with the same files (one layer holding the real files of every
 * store path under /nix/store) on containerd's `overlayfs`, for closures of
 * 1, 10, 100, 1,000 and 5,000 store paths. Also: our Prepare of a nix layer
 * straight on the daemon's socket (closure label, and per-path labels
 * only), the whole import (unpack) of both images, and where the time of a
 * container start goes: containerd's event stream, the daemon's own
 * per-call times (its debug log), and the kernel's cost of the bind mounts
 * (mountcost.c, compiled with gcc at run time).
 *
 *   node build/bench/nix-start/main.js [--quick] [--json FILE]
 *
 * Runs as root: it builds the closures with Nix (GC roots under its
 * temporary directory, for the run only), starts two private
 * nix-snapshotters and a private containerd (state in the temporary
 * directory), and stops all of them by PID at the end, also on failure or
 * interruption. The markdown report goes to stdout, progress to stderr.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { lstat, readFile, readlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { readImageArchive } from "../../src/image/archive.js";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { buildLayer, type LayerEntry } from "../../src/image/layer.js";
import { nixLayerAnnotations } from "../../src/image/nix-image.js";
import { NIX_CLOSURE_LABEL } from "../../src/nix/labels.js";
import type { StorePath } from "../../src/nix/store-path.js";
import { fileEntriesFromDir } from "../../test/lib/host-tree.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildNixImageArchive, NIX2CONTAINER_BIN } from "../../devenv/images.js";
import { tempDir, type TempDir } from "../../test/lib/tmp.js";
import { clearNamespace, ContainerdEvents, killStartedProcesses, SyncGc, timeProcess, type ContainerdEvent, type TimedProcess } from "../lib/containerd-run.js";
import { benchMain, benchOptions, fsType, missingBuild, removeStaleAutoRoots } from "../lib/harness.js";
import { fmt, markdownTable, msBetween, now, percentile, type BenchReport } from "../lib/stats.js";

const exec = promisify(execFile);

// ---------------------------------------------------------------- options

const opts = benchOptions("closures up to 1,000 paths (no 5,000), fewer repetitions (a smoke run)");

interface Params {
  /** Closure sizes (store paths). */
  sizes: number[];
  /** Measured `ctr run`s per image (after one warm-up run). */
  runs: number;
  /** Imports per image for the sizes in importSizes (others: one). */
  importReps: number;
  importSizes: number[];
  /** Prepares per label variant (after one warm-up), 1,000 paths. */
  prepareReps: number;
  /** Prepares per label variant at 5,000 paths (0: skipped). */
  prepareBigReps: number;
  /** Plain nix-store --realise --add-root calls per variant, for context (at 5,000 paths: realiseBigReps). */
  realiseReps: number;
  realiseBigReps: number;
  /** Mounts calls per image, through containerd. */
  mountsCalls: number;
  /** Runs of mountcost.c per size. */
  mountCostReps: number;
}

const PARAMS: Params = opts.quick
  ? { sizes: [1, 10, 100, 1000], runs: 2, importReps: 1, importSizes: [1000], prepareReps: 5, prepareBigReps: 0, realiseReps: 1, realiseBigReps: 0, mountsCalls: 10, mountCostReps: 1 }
  : { sizes: [1, 10, 100, 1000, 5000], runs: 5, importReps: 3, importSizes: [1000, 5000], prepareReps: 20, prepareBigReps: 3, realiseReps: 3, realiseBigReps: 1, mountsCalls: 30, mountCostReps: 3 };

/** Targets from the brief: reports, not tests. */
const TARGET_START_RATIO_1000 = 1.5;
const TARGET_PREPARE_CLOSURE_MS = 100;
const TARGET_PREPARE_PER_PATH_MS = 500;

const NS = `bench-nixstart-${randomBytes(3).toString("hex")}`;
const GC_ROOT = { "containerd.io/gc.root": "bench" };
const HELLO = "Hello, world!\n";
const MANY_NIX = path.join(REPO, "test/fixtures/nix/many.nix");
const CLOSURE_INFO_NIX = path.join(REPO, "test/fixtures/nix/closure-info.nix");
const HELLO_STATIC_NIX = path.join(REPO, "bench/nix-start/hello-static.nix");
/** many.nix with withHello: n leaves + the top + hello, libc, loader. */
const MANY_EXTRA = 4;

function progress(msg: string): void {
  process.stderr.write(`[bench nix-start] ${msg}\n`);
}

// ---------------------------------------------------------------- closures and images

interface Case {
  /** Store paths in the closure (what the container sees under /nix/store). */
  size: number;
  /** What the closure is, for the report. */
  what: string;
  top: string;
  entry: string[];
  closureInfo: string;
  paths: string[];
  /** nix-build wall time (program + closure info), ms: cached after the first run. */
  buildMs: number;
  nix: Image;
  ordinary: Image;
}

interface Image {
  archive: string;
  ref: string;
  bytes: number;
  /** Time to build the archive, ms. */
  buildMs: number;
  /** containerd's snapshot name of the single layer (its chain id = diff id). */
  chainId: string;
  annotations: Record<string, string>;
}

async function nixBuild(args: string[], outLink: string, log: string): Promise<string> {
  try {
    const { stdout, stderr } = await exec("nix-build", [...args, "--max-jobs", "4", "-Q", "--out-link", outLink], {
      maxBuffer: 64 << 20,
      timeout: 900_000,
    });
    writeFileSync(log, stderr, { flag: "a" });
    const out = stdout.split("\n").filter(Boolean);
    if (out.length !== 1) throw new Error(`expected one output, got ${out.length}`);
    return out[0]!;
  } catch (err) {
    throw new Error(`nix-build ${args.join(" ")}: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().slice(-2000)}`);
  }
}

/**
 * The program and its closure info. Size 1 is a statically linked hello
 * (one store path, no references); larger sizes are many.nix with
 * withHello: size - 4 leaves, the top path (linking bin/hello), and the
 * dynamically linked hello with its libc and loader.
 */
async function buildClosure(size: number, dir: string): Promise<Omit<Case, "nix" | "ordinary">> {
  const roots = path.join(dir, "gcroots");
  mkdirSync(roots, { recursive: true });
  const log = path.join(dir, "nix-build.log");
  const t0 = now();
  let top: string;
  let what: string;
  if (size === 1) {
    top = await nixBuild([HELLO_STATIC_NIX], path.join(roots, "hello-static"), log);
    what = "static hello alone";
  } else {
    if (size < MANY_EXTRA + 1) throw new Error(`closure size ${size}: many.nix with hello has at least ${MANY_EXTRA + 1} paths`);
    top = await nixBuild([MANY_NIX, "--arg", "n", String(size - MANY_EXTRA), "--arg", "withHello", "true"], path.join(roots, `many-${size}`), log);
    what = `${(size - MANY_EXTRA).toLocaleString("en-US")} leaves + top + hello, libc, loader`;
  }
  const closureInfo = await nixBuild([CLOSURE_INFO_NIX, "--arg", "storePaths", `[ ${JSON.stringify(top)} ]`], path.join(roots, `closure-${size}`), log);
  const buildMs = msBetween(t0, now());
  const paths = readFileSync(path.join(closureInfo, "store-paths"), "utf8").split("\n").filter(Boolean);
  if (paths.length !== size) throw new Error(`closure of ${top} has ${paths.length} store paths, expected ${size}`);
  return { size, what, top, entry: [`${top}/bin/hello`], closureInfo, paths, buildMs };
}

/** Layer entries holding the real files of store paths, at their /nix/store places. */
async function storeEntries(paths: string[]): Promise<LayerEntry[]> {
  const out: LayerEntry[] = [];
  for (const p of paths) {
    const rel = p.slice(1);
    const st = await lstat(p);
    if (st.isDirectory()) {
      out.push({ type: "dir", path: rel, mode: st.mode & 0o7777 });
      for (const e of await fileEntriesFromDir(p)) {
        const under = `${rel}/${e.path}`;
        if (e.type === "hardlink") out.push({ ...e, path: under, target: `${rel}/${e.target}` });
        else out.push({ ...e, path: under } as LayerEntry);
      }
    } else if (st.isSymbolicLink()) {
      out.push({ type: "symlink", path: rel, target: await readlink(p) });
    } else {
      out.push({ type: "file", path: rel, content: await readFile(p), mode: st.mode & 0o7777 });
    }
  }
  return out;
}

async function describeArchive(archive: string, ref: string, buildMs: number): Promise<Image> {
  const img = await readImageArchive(archive);
  const chainId = img.config.rootfs?.diff_ids?.[0];
  if (!chainId || img.manifest.layers.length !== 1) throw new Error(`${archive}: expected an image of one layer`);
  return { archive, ref, bytes: statSync(archive).size, buildMs, chainId, annotations: img.manifest.layers[0]!.annotations ?? {} };
}

async function buildImages(c: Omit<Case, "nix" | "ordinary">, dir: string): Promise<Case> {
  const t0 = now();
  const nix = await buildNixImageArchive({
    dir,
    name: `nix-${c.size}`,
    closureInfo: c.closureInfo,
    config: { Entrypoint: c.entry },
    ref: `docker.io/bench/nix-start:nix-${c.size}`,
  });
  const nixMs = msBetween(t0, now());
  const t1 = now();
  const ordRef = `docker.io/bench/nix-start:ordinary-${c.size}`;
  const ordArchive = path.join(dir, `ordinary-${c.size}.tar`);
  await writeImageArchive({ layers: [{ tar: await buildLayer(await storeEntries(c.paths)) }], config: { Entrypoint: c.entry }, ref: ordRef }, ordArchive);
  const ordMs = msBetween(t1, now());
  return { ...c, nix: await describeArchive(nix.archive, nix.ref, nixMs), ordinary: await describeArchive(ordArchive, ordRef, ordMs) };
}

// ---------------------------------------------------------------- environment

interface Env {
  tmp: TempDir;
  daemons: DaemonProcess[];
  containerd?: Containerd;
  events?: ContainerdEvents;
  gc?: SyncGc;
  clients: SnapshotsClient[];
  daemonLog: string;
}

/** Removes Nix's indirect-root links (gcroots/auto) that point into dir: our out-links and daemons' roots, gone with dir. */
async function teardown(env: Env): Promise<void> {
  // ctr runs in flight first: their containers are then cleared below.
  killStartedProcesses();
  if (env.containerd) await clearNamespace(env.containerd, NS, progress);
  await env.events?.stop();
  env.gc?.close();
  for (const c of env.clients.splice(0)) await c.close().catch(() => {});
  if (env.containerd) {
    const c = env.containerd;
    env.containerd = undefined;
    await c.stop().catch((e: unknown) => progress(`stopping containerd (pid ${c.pid}): ${String(e)}`));
  }
  for (const d of env.daemons.splice(0)) {
    const code = await d.stop("SIGTERM", 15_000);
    if (code !== 0) progress(`nix-snapshotter (pid ${d.pid}) exited with ${code}`);
  }
  killStartedProcesses();
  env.tmp.cleanup();
  const stale = removeStaleAutoRoots(env.tmp.path);
  if (stale) progress(`removed ${stale} stale links to the temporary directory from /nix/var/nix/gcroots/auto`);
}

// ---------------------------------------------------------------- Prepare, straight to the daemon

interface PrepareRow {
  size: number;
  variant: "closure" | "per-path";
  labels: number;
  samples: number[];
  /** Commit of the prepared layer with the same labels (as the unpacker does), ms. */
  commitMs: number[];
  /** Remove of the committed layer, ms. */
  removeMs: number[];
  /** The same nix-store --realise --add-root the daemon runs, alone, ms. */
  realiseMs: number[];
  target?: number;
}

/**
 * Prepare of the nix layer with the labels containerd's unpacker passes
 * (the layer's annotations that start with containerd.io/snapshot/, plus
 * containerd.io/snapshot.ref), under a fresh extract key each time, then
 * its Commit with the same labels (as the unpacker does) and its Remove.
 * The variants alternate so that drift hits both.
 */
async function measurePrepare(sn: SnapshotsClient, c: Case, reps: number): Promise<PrepareRow[]> {
  // The closure variant: the nix image's layer annotations as they are.
  const base: Record<string, string> = { "containerd.io/snapshot.ref": c.nix.chainId };
  for (const [k, v] of Object.entries(c.nix.annotations)) if (k.startsWith("containerd.io/snapshot/")) base[k] = v;
  if (!base[NIX_CLOSURE_LABEL]) throw new Error(`${c.nix.archive}: the nix layer has no ${NIX_CLOSURE_LABEL} annotation`);
  // The per-path variant: one label per store path and no closure file,
  // as nix2container writes them (without the closure).
  const perPath: Record<string, string> = { "containerd.io/snapshot.ref": c.nix.chainId, ...nixLayerAnnotations(c.paths as StorePath[]) };
  const variants = [
    { variant: "closure" as const, labels: base, target: c.size === 1000 ? TARGET_PREPARE_CLOSURE_MS : undefined },
    { variant: "per-path" as const, labels: perPath, target: c.size === 1000 ? TARGET_PREPARE_PER_PATH_MS : undefined },
  ];
  const rows: PrepareRow[] = variants.map((v) => ({
    size: c.size,
    variant: v.variant,
    labels: Object.keys(v.labels).length,
    samples: [],
    commitMs: [],
    removeMs: [],
    realiseMs: [],
    ...(v.target !== undefined ? { target: v.target } : {}),
  }));
  const timed = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
    const t0 = now();
    const r = await fn();
    return [r, msBetween(t0, now())];
  };
  const nonce = randomBytes(4).toString("hex");
  let seq = 0;
  for (let i = 0; i <= reps; i++) {
    const order = i % 2 === 0 ? [0, 1] : [1, 0];
    for (const j of order) {
      const n = ++seq;
      const key = `extract-${nonce}-${n} ${c.nix.chainId}`;
      const name = `layer-${nonce}-${n}`;
      const labels = variants[j]!.labels;
      const [mounts, ms] = await timed(() => sn.prepare(key, "", { labels }));
      if (mounts.length !== 1) throw new Error(`Prepare of a nix layer (${c.size} paths, ${variants[j]!.variant}) returned ${mounts.length} mounts, expected the rootfs alone`);
      const [, commit] = await timed(() => sn.commit(name, key, { labels }));
      const [, rm] = await timed(() => sn.remove(name));
      if (i === 0) continue; // warm-up
      rows[j]!.samples.push(ms);
      rows[j]!.commitMs.push(commit);
      rows[j]!.removeMs.push(rm);
    }
  }
  return rows;
}

/** nix-store --realise --add-root, as the daemon's realiser runs it, timed alone. */
async function timeRealise(paths: string[], dir: string, reps: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < reps; i++) {
    const rootDir = path.join(dir, `realise-${randomBytes(4).toString("hex")}`);
    mkdirSync(rootDir);
    const r = await timeProcess("nix-store", ["--realise", "--add-root", path.join(rootDir, "root"), ...paths], { timeoutMs: 300_000 });
    if (r.code !== 0) throw new Error(`nix-store --realise: ${r.stderr.trim().slice(-1000)}`);
    out.push(r.totalMs);
    rmSync(rootDir, { recursive: true, force: true });
  }
  return out;
}

// ---------------------------------------------------------------- imports

interface ImportSample {
  ms: number;
  /** nix only: the unpack's Prepare and Commit of the layer inside the daemon (its debug log), ms. */
  daemonPrepareMs?: number;
  daemonCommitMs?: number;
  /** From containerd's events, ms from spawn: the extract snapshot prepared, and committed (NaN if not seen). */
  preparedAt: number;
  committedAt: number;
}

/** The unpack's /snapshot/prepare and /snapshot/commit events of an import, ms from its spawn. */
async function importMarks(events: ContainerdEvents, p: TimedProcess, snapshotter: string): Promise<{ preparedAt: number; committedAt: number }> {
  // Events are stamped by containerd, the spawn by us (Date.now()): allow
  // a millisecond of skew, no more (the previous import ends just before).
  const mine = (e: ContainerdEvent) =>
    e.namespace === NS &&
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
type DaemonCalls = Record<string, { n: number; ms: number }>;

/** The log's size in bytes, after giving lines in flight (daemon → pipe → log file) a moment to land. */
async function logOffset(file: string): Promise<number> {
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
function daemonCalls(file: string, from: number, to: number, keep: (key: string) => boolean = () => true): DaemonCalls {
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

// ---------------------------------------------------------------- ctr run

type Kind = "nix" | "ordinary";

/** Marks on one run's timeline, ms from spawning ctr. */
interface RunSample {
  firstByteMs: number;
  totalMs: number;
  /** containerd's events, ms from spawn (NaN when an event was not seen). */
  prepared: number;
  containerCreated: number;
  taskCreated: number;
  taskStarted: number;
  taskExited: number;
  taskDeleted: number;
  /** The synchronous garbage collection after the run (removes the container's snapshot), ms; not in totalMs. */
  gcMs: number;
  /** nix only: the daemon's calls during the run and its garbage collection (its debug log). */
  daemon?: DaemonCalls;
}

const PHASES: { id: string; label: string; from: keyof RunSample | "spawn"; to: keyof RunSample }[] = [
  { id: "prepare", label: "spawn → snapshot prepared (ctr start, image lookup, Prepare)", from: "spawn", to: "prepared" },
  { id: "container", label: "→ container record", from: "prepared", to: "containerCreated" },
  { id: "task-create", label: "→ task created (Mounts, shim start, rootfs mounts, runc create)", from: "containerCreated", to: "taskCreated" },
  { id: "task-start", label: "→ task started (runc start)", from: "taskCreated", to: "taskStarted" },
  { id: "first-byte", label: "→ first stdout byte at ctr", from: "taskStarted", to: "firstByteMs" },
  { id: "exit", label: "→ task exit event", from: "firstByteMs", to: "taskExited" },
  { id: "task-delete", label: "→ task deleted (runc delete, rootfs unmount, shim exit)", from: "taskExited", to: "taskDeleted" },
  { id: "ctr-exit", label: "→ ctr exits (container and snapshot records removed)", from: "taskDeleted", to: "totalMs" },
];

function phaseMs(s: RunSample, p: (typeof PHASES)[number]): number {
  const from = p.from === "spawn" ? 0 : (s[p.from] as number);
  return (s[p.to] as number) - from;
}

function eventAt(evs: ContainerdEvent[], topic: string, start: TimedProcess): number {
  const e = evs.find((x) => x.topic === topic);
  return e ? e.wallMs - start.startWallMs : NaN;
}

interface Runner {
  ctrd: Containerd;
  daemonLog: string;
  events: ContainerdEvents;
  gc: SyncGc;
  seq: number;
}

async function ctrRun(r: Runner, c: Case, kind: Kind): Promise<RunSample> {
  const img = kind === "nix" ? c.nix : c.ordinary;
  const snapshotter = kind === "nix" ? "nix" : "overlayfs";
  const id = `run-${c.size}-${kind}-${++r.seq}-${randomBytes(2).toString("hex")}`;
  const from = await logOffset(r.daemonLog);
  const p = await timeProcess("ctr", ["--address", r.ctrd.address, "--namespace", NS, "run", "--rm", "--snapshotter", snapshotter, img.ref, id, ...c.entry], {
    timeoutMs: 180_000,
  });
  if (p.code !== 0 || p.stdout !== HELLO) {
    throw new Error(`ctr run of ${img.ref} (${snapshotter}) exited ${p.code ?? p.signal} with stdout ${JSON.stringify(p.stdout.slice(0, 200))}, stderr: ${p.stderr.trim().slice(-1500)}`);
  }
  const evs = await r.events.waitFor(NS, id, (e) => e.some((x) => x.topic === "/containers/delete"));
  const t0 = now();
  await r.gc.collect();
  const gcMs = msBetween(t0, now());
  const daemon = kind === "nix" ? daemonCalls(r.daemonLog, from, await logOffset(r.daemonLog)) : undefined;
  return {
    ...(daemon ? { daemon } : {}),
    firstByteMs: p.firstByteMs,
    totalMs: p.totalMs,
    prepared: eventAt(evs, "/snapshot/prepare", p),
    containerCreated: eventAt(evs, "/containers/create", p),
    taskCreated: eventAt(evs, "/tasks/create", p),
    taskStarted: eventAt(evs, "/tasks/start", p),
    taskExited: eventAt(evs, "/tasks/exit", p),
    taskDeleted: eventAt(evs, "/tasks/delete", p),
    gcMs,
  };
}

// ---------------------------------------------------------------- the kernel's share

interface MountCost {
  n: number;
  /** µs, as printed by mountcost.c. */
  mount: number;
  rbind: number;
  unshare: number;
  unshare_exit: number;
  detach: number;
  umount: number;
  base_unshare: number;
  base_unshare_exit: number;
}

/** Compiles bench/nix-start/mountcost.c; undefined (and why) when there is no C compiler. */
async function compileMountCost(dir: string): Promise<{ bin?: string; why?: string }> {
  const bin = path.join(dir, "mountcost");
  try {
    await exec("gcc", ["-O2", "-o", bin, path.join(REPO, "bench/nix-start/mountcost.c")]);
    return { bin };
  } catch (err) {
    return { why: `cannot compile bench/nix-start/mountcost.c: ${((err as { stderr?: string }).stderr || (err as Error).message).trim().slice(0, 300)}` };
  }
}

/** Runs mountcost over the store paths reps times (each in its own private mount namespace on a tmpfs). */
async function measureMountCost(bin: string, paths: string[], dir: string, reps: number): Promise<MountCost[]> {
  const out: MountCost[] = [];
  const work = path.join(dir, `mountcost-${paths.length}`);
  mkdirSync(work, { recursive: true });
  for (let i = 0; i < reps; i++) {
    const res = await new Promise<string>((resolve, reject) => {
      const child = execFile(bin, [work], { timeout: 120_000 }, (err, stdout, stderr) => (err ? reject(new Error(`mountcost: ${stderr || err.message}`)) : resolve(stdout)));
      child.stdin!.end(paths.join("\n") + "\n");
    });
    out.push(JSON.parse(res) as MountCost);
  }
  return out;
}

// ---------------------------------------------------------------- Mounts through containerd

async function measureMounts(sn: SnapshotsClient, img: Image, expect: number, calls: number): Promise<number[]> {
  const key = `bench-mounts-${randomBytes(4).toString("hex")}`;
  await sn.prepare(key, img.chainId, { labels: GC_ROOT });
  try {
    const first = await sn.mounts(key);
    if (first.length !== expect) throw new Error(`Mounts above ${img.ref} returned ${first.length} mounts, expected ${expect}`);
    const out: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = now();
      await sn.mounts(key);
      out.push(msBetween(t0, now()));
    }
    return out;
  } finally {
    await sn.remove(key);
  }
}

// ---------------------------------------------------------------- the run

interface SizeResult {
  size: number;
  what: string;
  runs: Record<Kind, RunSample[]>;
  /** The first run after the import (not in runs). */
  firstRun: Record<Kind, RunSample>;
  imports: Record<Kind, ImportSample[]>;
  mountsMs: Record<Kind, number[]>;
  mountsCount: Record<Kind, number>;
}

interface Results {
  cases: Case[];
  mountCost: MountCost[][];
  mountCostSkipped?: string;
  sizes: SizeResult[];
  prepare: PrepareRow[];
  load: { before: number[]; after: number[] };
  fs: string;
  setupMs: number;
}

async function run(env: Env): Promise<Results> {
  const load = { before: os.loadavg(), after: [] as number[] };
  const dir = env.tmp.path;
  const setup0 = now();

  // Closures and images.
  const imagesDir = path.join(dir, "images");
  mkdirSync(imagesDir, { recursive: true });
  const cases: Case[] = [];
  for (const size of PARAMS.sizes) {
    progress(`closure of ${size.toLocaleString("en-US")} store paths: nix-build`);
    const closure = await buildClosure(size, dir);
    progress(`  built in ${fmt(closure.buildMs)} ms; images: nix2container build and an ordinary layer of the same files`);
    const c = await buildImages(closure, imagesDir);
    progress(`  nix image ${fmt(c.nix.bytes / 1024)} KiB in ${fmt(c.nix.buildMs)} ms, ordinary image ${fmt(c.ordinary.bytes / 1024)} KiB in ${fmt(c.ordinary.buildMs)} ms`);
    cases.push(c);
  }

  // Daemons and containerd.
  const sockDir = path.join(dir, "run");
  mkdirSync(sockDir, { recursive: true });
  const daemonAddress = path.join(sockDir, "nix-snapshotter.sock");
  const directAddress = path.join(sockDir, "direct.sock");
  const containerdDir = path.join(dir, "containerd");
  progress(`starting nix-snapshotter (×2) and containerd in ${dir}`);
  env.daemons.push(
    await startDaemonProcess({
      root: path.join(dir, "nix-snapshotter"),
      address: daemonAddress,
      logFile: env.daemonLog,
      // Debug: a line per gRPC call with the time spent in its handler,
      // which is how the daemon's share of imports and starts is measured.
      logLevel: "debug",
      config: `[image_service]\ncontainerd_address = "${path.join(containerdDir, "containerd.sock")}"\n`,
    }),
  );
  // Prepare is measured on a second daemon that containerd does not know:
  // containerd's garbage collector removes from its backend whatever its
  // own metadata does not hold.
  env.daemons.push(
    await startDaemonProcess({
      root: path.join(dir, "nix-snapshotter-direct"),
      address: directAddress,
      logFile: path.join(dir, "nix-snapshotter-direct.log"),
      config: `[image_service]\nenable = false\n`,
    }),
  );
  const ctrd = await startContainerd({ dir: containerdDir, snapshotterAddress: daemonAddress, logLevel: "warn" });
  env.containerd = ctrd;
  env.events = await ContainerdEvents.start(ctrd, NS);
  env.gc = new SyncGc(ctrd.address, NS);
  const client = (address: string, snapshotter?: string) => {
    const c = new SnapshotsClient({ address, ...(snapshotter ? { snapshotter, namespace: NS } : {}) });
    env.clients.push(c);
    return c;
  };
  const direct = client(directAddress);
  const viaContainerd: Record<Kind, SnapshotsClient> = { nix: client(ctrd.address, "nix"), ordinary: client(ctrd.address, "overlayfs") };
  const setupMs = msBetween(setup0, now());

  // Prepare straight to the daemon.
  const prepare: PrepareRow[] = [];
  for (const c of cases) {
    const reps = c.size === 1000 ? PARAMS.prepareReps : c.size === 5000 ? PARAMS.prepareBigReps : 0;
    if (reps === 0) continue;
    progress(`Prepare of the ${c.size.toLocaleString("en-US")}-path nix layer on the daemon's socket: ${reps} × 2 variants`);
    const rows = await measurePrepare(direct, c, reps);
    const realiseDir = path.join(dir, "realise");
    mkdirSync(realiseDir, { recursive: true });
    // Per-path rooting of 5,000 paths takes seconds each time: fewer there.
    const realiseReps = c.size === 5000 ? PARAMS.realiseBigReps : PARAMS.realiseReps;
    rows[0]!.realiseMs = await timeRealise([c.closureInfo], realiseDir, realiseReps);
    rows[1]!.realiseMs = await timeRealise(c.paths, realiseDir, realiseReps);
    prepare.push(...rows);
  }

  // Imports: the whole unpack through the Transfer service.
  const ctr = (args: string[], timeoutMs = 300_000) => ctrd.ctr(args, { namespace: NS, timeoutMs });
  const results: SizeResult[] = [];
  for (const c of cases) {
    const reps = PARAMS.importSizes.includes(c.size) ? PARAMS.importReps : 1;
    progress(`import of the ${c.size.toLocaleString("en-US")}-path images: ${reps} × 2`);
    const imports: Record<Kind, ImportSample[]> = { nix: [], ordinary: [] };
    for (let i = 0; i < reps; i++) {
      const order: Kind[] = i % 2 === 0 ? ["nix", "ordinary"] : ["ordinary", "nix"];
      for (const kind of order) {
        const img = c[kind];
        if (i > 0) {
          await ctr(["images", "rm", "--sync", img.ref]);
          await env.gc.collect();
        }
        const from = await logOffset(env.daemonLog);
        const p = await timeProcess("ctr", ["--address", ctrd.address, "--namespace", NS, "images", "import", "--local=false", "--snapshotter", kind === "nix" ? "nix" : "overlayfs", img.archive], {
          timeoutMs: 600_000,
        });
        if (p.code !== 0) throw new Error(`ctr images import of ${img.archive}: ${p.stderr.trim().slice(-1500)}`);
        const s: ImportSample = { ms: p.totalMs, ...(await importMarks(env.events, p, kind === "nix" ? "nix" : "overlayfs")) };
        if (kind === "nix") {
          const calls = daemonCalls(env.daemonLog, from, await logOffset(env.daemonLog), (key) => key.includes("extract-")); // containerd prefixes backend keys with "<namespace>/<n>/"
          if (calls["prepare"]?.n === 1 && calls["commit"]?.n === 1) {
            s.daemonPrepareMs = calls["prepare"].ms;
            s.daemonCommitMs = calls["commit"].ms;
          } else {
            progress(`  warning: the daemon's log shows ${calls["prepare"]?.n ?? 0} Prepare and ${calls["commit"]?.n ?? 0} Commit calls for one import`);
          }
        }
        imports[kind].push(s);
      }
    }
    results.push({
      size: c.size,
      what: c.what,
      runs: { nix: [], ordinary: [] },
      firstRun: {} as Record<Kind, RunSample>,
      imports,
      mountsMs: { nix: [], ordinary: [] },
      mountsCount: { nix: c.size + 1, ordinary: 1 },
    });
  }

  // Container starts.
  const runner: Runner = { ctrd, daemonLog: env.daemonLog, events: env.events, gc: env.gc, seq: 0 };
  for (const [i, c] of cases.entries()) {
    const res = results[i]!;
    progress(`ctr run, ${c.size.toLocaleString("en-US")} store paths: 1 warm-up + ${PARAMS.runs} runs per image`);
    for (const kind of ["nix", "ordinary"] as Kind[]) res.firstRun[kind] = await ctrRun(runner, c, kind);
    for (let r = 0; r < PARAMS.runs; r++) {
      const order: Kind[] = r % 2 === 0 ? ["nix", "ordinary"] : ["ordinary", "nix"];
      for (const kind of order) res.runs[kind].push(await ctrRun(runner, c, kind));
    }
    const p50 = (k: Kind) => percentile(res.runs[k].map((s) => s.firstByteMs), 50);
    progress(`  first byte p50: nix ${fmt(p50("nix"))} ms, ordinary ${fmt(p50("ordinary"))} ms`);
    env.events.clear();
  }

  // The kernel's share: the same bind mounts made and unmade by a small C
  // program, at 1,000 paths and at the largest size.
  const mountCost: MountCost[][] = [];
  const compiled = await compileMountCost(dir);
  if (compiled.bin) {
    for (const c of cases.filter((x) => x.size === 1000 || x === cases[cases.length - 1])) {
      progress(`kernel mount costs for ${c.size.toLocaleString("en-US")} bind mounts (private mount namespace)`);
      mountCost.push(await measureMountCost(compiled.bin, c.paths, dir, PARAMS.mountCostReps));
    }
  } else {
    progress(compiled.why!);
  }

  // Mounts of a container's snapshot, through containerd.
  for (const [i, c] of cases.entries()) {
    const res = results[i]!;
    for (const kind of ["nix", "ordinary"] as Kind[]) {
      res.mountsMs[kind] = await measureMounts(viaContainerd[kind], c[kind], res.mountsCount[kind], PARAMS.mountsCalls);
    }
  }
  await env.gc.collect();

  load.after = os.loadavg();
  return { cases, sizes: results, prepare, load, fs: fsType(dir), setupMs, mountCost, ...(compiled.why ? { mountCostSkipped: compiled.why } : {}) };
}

// ---------------------------------------------------------------- report

const p50 = (v: number[]) => percentile(v, 50);
const p99 = (v: number[]) => percentile(v, 99);

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den > 0 ? num / den : NaN;
}

function ratioText(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : "–";
}

function report(res: Results): BenchReport {
  const N = (n: number) => n.toLocaleString("en-US");
  const first = (s: SizeResult, k: Kind) => s.runs[k].map((x) => x.firstByteMs);
  const total = (s: SizeResult, k: Kind) => s.runs[k].map((x) => x.totalMs);

  const startRows = res.sizes.map((s) => {
    const rf = p50(first(s, "nix")) / p50(first(s, "ordinary"));
    const rt = p50(total(s, "nix")) / p50(total(s, "ordinary"));
    const target = s.size === 1000 ? `≤ ${TARGET_START_RATIO_1000}× ${rf <= TARGET_START_RATIO_1000 ? "PASS" : "MISS"}` : "";
    return [
      N(s.size),
      fmt(p50(first(s, "nix"))),
      fmt(p50(first(s, "ordinary"))),
      ratioText(rf),
      fmt(p50(total(s, "nix"))),
      fmt(p50(total(s, "ordinary"))),
      ratioText(rt),
      fmt(Math.max(...first(s, "nix"))),
      fmt(Math.max(...first(s, "ordinary"))),
      target,
    ];
  });
  const startTable = markdownTable(
    ["Store paths", "nix: first byte p50 ms", "ordinary p50 ms", "nix/ordinary", "nix: whole run p50 ms", "ordinary p50 ms", "nix/ordinary", "nix max (first byte)", "ordinary max", "target (first byte)"],
    startRows,
    ["right", "right", "right", "right", "right", "right", "right", "right", "right", "left"],
  );

  // Growth with n.
  const xs = res.sizes.map((s) => s.size);
  const growth = (f: (s: SizeResult, k: Kind) => number[], k: Kind) => slope(xs, res.sizes.map((s) => p50(f(s, k))));
  const growthText = `Growth with the closure (least-squares slope of the p50s over ${xs.map(N).join(", ")} paths, ms per 1,000 store paths): \
first byte nix ${fmt(growth(first, "nix") * 1000)}, ordinary ${fmt(growth(first, "ordinary") * 1000)}; \
whole run nix ${fmt(growth(total, "nix") * 1000)}, ordinary ${fmt(growth(total, "ordinary") * 1000)}.`;

  // Phases, smallest and largest closure.
  const small = res.sizes[0]!;
  const large = res.sizes[res.sizes.length - 1]!;
  const ph = (s: SizeResult, k: Kind, p: (typeof PHASES)[number]) => p50(s.runs[k].map((x) => phaseMs(x, p)).filter(Number.isFinite));
  const phaseRows = PHASES.map((p) => [
    p.label,
    fmt(ph(small, "nix", p)),
    fmt(ph(small, "ordinary", p)),
    fmt(ph(large, "nix", p)),
    fmt(ph(large, "ordinary", p)),
    fmt(ph(large, "nix", p) - ph(large, "ordinary", p)),
  ]);
  const gcRow = (s: SizeResult, k: Kind) => p50(s.runs[k].map((x) => x.gcMs));
  phaseRows.push([
    "(after the run: synchronous GC removing the container's snapshot)",
    fmt(gcRow(small, "nix")),
    fmt(gcRow(small, "ordinary")),
    fmt(gcRow(large, "nix")),
    fmt(gcRow(large, "ordinary")),
    fmt(gcRow(large, "nix") - gcRow(large, "ordinary")),
  ]);
  const phaseTable = markdownTable(
    ["Phase of `ctr run --rm` (p50 ms)", `nix, ${N(small.size)}`, `ordinary, ${N(small.size)}`, `nix, ${N(large.size)}`, `ordinary, ${N(large.size)}`, `difference at ${N(large.size)}`],
    phaseRows,
    ["left", "right", "right", "right", "right", "right"],
  );

  const mountsTable = markdownTable(
    ["Store paths", "nix: mounts", "nix Mounts p50 ms", "p99 ms", "overlayfs Mounts p50 ms", "p99 ms", "nix: task created − container created, p50 ms", "ordinary, p50 ms"],
    res.sizes.map((s) => {
      const tc = PHASES.find((p) => p.id === "task-create")!;
      return [
        N(s.size),
        N(s.mountsCount.nix),
        fmt(p50(s.mountsMs.nix)),
        fmt(p99(s.mountsMs.nix)),
        fmt(p50(s.mountsMs.ordinary)),
        fmt(p99(s.mountsMs.ordinary)),
        fmt(ph(s, "nix", tc)),
        fmt(ph(s, "ordinary", tc)),
      ];
    }),
    ["right", "right", "right", "right", "right", "right", "right", "right"],
  );

  const prepareTable = markdownTable(
    ["Prepare of a nix layer, on the daemon's socket", "labels", "p50 ms", "p99 ms", "max ms", "n", "nix-store --realise alone, p50 ms", "Commit p50 ms", "Remove p50 ms", "target", ""],
    res.prepare.map((r) => [
      `${N(r.size)} paths, ${r.variant === "closure" ? `nix-closure label${r.labels > 3 ? " (+ per-path labels)" : ""}` : "per-path labels only"}`,
      N(r.labels),
      fmt(p50(r.samples)),
      fmt(p99(r.samples)),
      fmt(Math.max(...r.samples)),
      String(r.samples.length),
      fmt(p50(r.realiseMs)),
      fmt(p50(r.commitMs)),
      fmt(p50(r.removeMs)),
      r.target !== undefined ? `p50 ≤ ${r.target} ms` : "",
      r.target !== undefined ? (p50(r.samples) <= r.target ? "PASS" : "MISS") : "",
    ]),
    ["left", "right", "right", "right", "right", "right", "right", "right", "right", "left", "left"],
  );

  // The daemon's share of a nix start, from its log.
  const METHODS = ["stat", "prepare", "mounts", "remove"];
  const cap = (m: string) => m.charAt(0).toUpperCase() + m.slice(1);
  const daemonMs = (s: SizeResult, m: string | undefined) =>
    p50(
      s.runs.nix.map((r) => {
        const calls = r.daemon ?? {};
        if (m !== undefined) return calls[m]?.ms ?? 0;
        return Object.values(calls).reduce((a, c) => a + c.ms, 0);
      }),
    );
  const callCounts = (s: SizeResult) => {
    const calls = s.runs.nix[0]?.daemon ?? {};
    return Object.entries(calls)
      .map(([m, c]) => `${cap(m)} ${c.n}`)
      .join(", ");
  };
  const daemonTable = markdownTable(
    ["Store paths", "calls per run (first run)", ...METHODS.map((m) => `${cap(m)} ms`), "other ms", "daemon total ms", "nix − ordinary, whole run p50 ms"],
    res.sizes.map((s) => {
      const other = daemonMs(s, undefined) - METHODS.reduce((a, m) => a + daemonMs(s, m), 0);
      return [
        N(s.size),
        callCounts(s),
        ...METHODS.map((m) => fmt(daemonMs(s, m))),
        fmt(Math.max(0, other)),
        fmt(daemonMs(s, undefined)),
        fmt(p50(total(s, "nix")) - p50(total(s, "ordinary"))),
      ];
    }),
    ["right", "left", "right", "right", "right", "right", "right", "right", "right"],
  );
  const imp = (s: SizeResult, k: Kind) => s.imports[k].map((x) => x.ms);
  const marks = (s: SizeResult, k: Kind) => {
    const pr = p50(s.imports[k].map((x) => x.preparedAt).filter(Number.isFinite));
    const cm = p50(s.imports[k].map((x) => x.committedAt).filter(Number.isFinite));
    return `${fmt(pr)} / ${fmt(cm)}`;
  };
  const importTable = markdownTable(
    ["Store paths", "nix image", "import p50 ms", "daemon: Prepare / Commit p50 ms", "prepared / committed at", "ordinary image", "import p50 ms", "prepared / committed at", "nix/ordinary", "imports each"],
    res.sizes.map((s) => {
      const c = res.cases.find((x) => x.size === s.size)!;
      const dp = p50(s.imports.nix.map((x) => x.daemonPrepareMs).filter((x): x is number => x !== undefined));
      const dc = p50(s.imports.nix.map((x) => x.daemonCommitMs).filter((x): x is number => x !== undefined));
      return [
        N(s.size),
        `${fmt(c.nix.bytes / 1024)} KiB`,
        fmt(p50(imp(s, "nix"))),
        `${fmt(dp)} / ${fmt(dc)}`,
        marks(s, "nix"),
        `${fmt(c.ordinary.bytes / 1024)} KiB`,
        fmt(p50(imp(s, "ordinary"))),
        marks(s, "ordinary"),
        ratioText(p50(imp(s, "nix")) / p50(imp(s, "ordinary"))),
        String(s.imports.nix.length),
      ];
    }),
    ["right", "right", "right", "right", "right", "right", "right", "right", "right", "right"],
  );

  const mc = (runs: MountCost[], f: (m: MountCost) => number) => p50(runs.map(f)) / 1000;
  const kernelTable = res.mountCost.length
    ? markdownTable(
        ["Bind mounts (N)", "N ro binds (2N mount calls) ms", "µs per bind", "N umount2, one by one, ms", "µs per umount", "1 umount2(MNT_DETACH) of N, ms", "1 rbind copying N, ms", "unshare(CLONE_NEWNS) with N, ms", "child life incl. namespace teardown, ms"],
        res.mountCost.map((runs) => {
          const n = runs[0]!.n;
          return [
            N(n),
            fmt(mc(runs, (m) => m.mount)),
            fmt((mc(runs, (m) => m.mount) * 1000) / n),
            fmt(mc(runs, (m) => m.umount)),
            fmt((mc(runs, (m) => m.umount) * 1000) / n),
            fmt(mc(runs, (m) => m.detach)),
            fmt(mc(runs, (m) => m.rbind)),
            `${fmt(mc(runs, (m) => m.unshare))} (none: ${fmt(mc(runs, (m) => m.base_unshare))})`,
            `${fmt(mc(runs, (m) => m.unshare_exit))} (none: ${fmt(mc(runs, (m) => m.base_unshare_exit))})`,
          ];
        }),
        ["right", "right", "right", "right", "right", "right", "right", "right", "right"],
      )
    : `(skipped: ${res.mountCostSkipped ?? "no closure of 1,000 paths or more"})`;

  const firstRunText = res.sizes
    .map((s) => `${N(s.size)}: nix ${fmt(s.firstRun.nix.firstByteMs)} / ${fmt(s.firstRun.nix.totalMs)}, ordinary ${fmt(s.firstRun.ordinary.firstByteMs)} / ${fmt(s.firstRun.ordinary.totalMs)}`)
    .join("; ");
  const closuresText = res.cases.map((c) => `${N(c.size)} = ${c.what}`).join("; ");
  const buildText = res.cases.map((c) => `${N(c.size)}: ${fmt(c.buildMs / 1000)} s`).join(", ");
  const la = (l: number[]) => l.map((x) => x.toFixed(2)).join(" ");
  const busy = Math.max(res.load.before[0] ?? 0, res.load.after[0] ?? 0) > os.cpus().length;

  const markdown = `${opts.quick ? "**Quick run (--quick): closures up to 1,000 store paths (the 5,000-path case is skipped), few repetitions; the numbers are noisy.**\n\n" : ""}\
Container start time, \`ctr run --rm --snapshotter S IMAGE ID ENTRYPOINT\` against a private containerd: *nix* is a nix image \
(one layer of empty mountpoints whose annotations name the store paths, built by \`nix2container build\`, imported with \
\`ctr images import --local=false\`) on our \`nix\` snapshotter, which bind-mounts every store path read-only into the \
container; *ordinary* is an ordinary single-layer image holding the real files of the same store paths under /nix/store \
(no annotations) on containerd's \`overlayfs\`. Both run the same program, which prints "Hello, world!". *First byte*: from \
spawning ctr to the first byte of the container's output reaching ctr; *whole run*: to ctr's exit, container and snapshot \
removed. p50 of ${PARAMS.runs} runs per image and size (after one warm-up run each), nix and ordinary alternating.

${startTable}

${growthText}

Closures (store paths as the container sees them under /nix/store): ${closuresText}. Sizes above 1 come from \
test/fixtures/nix/many.nix (\`withHello = true\`), the 1-path case from bench/nix-start/hello-static.nix (the same program, \
linked statically, since the dynamic hello alone is already 3 paths); each closure is listed by test/fixtures/nix/closure-info.nix, \
whose store-paths file the nix image names in its \`nix-closure\` annotation (next to one \`nix-store-path.N\` annotation per path).

**Where the time goes.** From containerd's event stream (subscribed to over gRPC during the runs: timestamps of \
/snapshot/prepare, /containers/create, /tasks/create, /tasks/start, /tasks/exit, /tasks/delete), p50 per phase, at the \
smallest and the largest closure. Events are stamped by their publisher (containerd, or the shim for /tasks/*, which \
sends them a little after the fact), so phases of a few ms can come out slightly negative:

${phaseTable}

Mounts of a container's snapshot above the image's layer, through containerd's snapshots API (${PARAMS.mountsCalls} calls; \
ctr calls it once per start, within "task created"), and the whole task-create phase beside it:

${mountsTable}

Our daemon's own share of each nix start: the time its gRPC handlers took (its debug log), per method, summed over the \
run and the garbage collection after it (which removes the container's snapshot), p50 over the runs; the last column is \
what the nix image's run cost more than the ordinary one's:

${daemonTable}

**Prepare of the nix layer**, straight to a second nix-snapshotter's socket (one containerd does not know, so its garbage \
collector stays out of the way), with the labels containerd's unpacker passes (the layer's \`containerd.io/snapshot/\` \
annotations and \`containerd.io/snapshot.ref\`), a fresh extract key each time, every path already in the store. With a \
\`nix-closure\` label the daemon realises and roots the closure-info path alone and reads the list from it; with per-path labels only it realises and roots every path in one \
\`nix-store --realise --add-root\` call. *nix-store --realise alone* is that same Nix call run by the benchmark, the part of \
the Prepare that is Nix's. Each Prepare is followed by the Commit the unpacker makes (same labels), then its Remove, \
timed apart. After one warm-up each, the variants alternating:

${prepareTable}

**Whole import** (\`ctr images import --local=false\`, through the Transfer service, which unpacks: content ingest, \
Prepare, applying the layer, Commit), the nix image on \`nix\` and the ordinary image on \`overlayfs\`; between repetitions \
the image is removed with \`ctr images rm --sync\` and a synchronous garbage collection, so every import is a full one. \
*daemon: Prepare / Commit* is the time the unpack's Prepare and Commit of the nix layer spent in our daemon (its log); \
*prepared / committed at* are the p50 times (ms from spawning ctr) of the unpack's /snapshot/prepare and /snapshot/commit events: before the first, \
ctr's start, reading the archive and ingesting content, and the Prepare; between them, applying the layer's tar and \
the Commit; after the second, recording the image and ctr's exit:

${importTable}

**The kernel's share.** A small C program (bench/nix-start/mountcost.c, compiled with gcc at run time) makes the same \
read-only bind mounts of the same store paths that containerd's mount code makes for the container's rootfs (mount \
MS_BIND|MS_REC, then a remount read-only), in a private mount namespace on a tmpfs, and times the other operations a \
start and a stop do with them; p50 of ${PARAMS.mountCostReps} run(s). A \`ctr run\` of a nix image makes and unmakes the \
rootfs's N binds twice, unmounting them one by one each time: ctr itself temp-mounts the container's rootfs while \
generating the spec (containerd's oci.WithAdditionalGIDs reads /etc/group from a temporary mount; with strace, for \
1,000 paths: 2,001 mount and 2,002 umount2 calls in ctr's own process, half of the latter failing with EINVAL, as \
containerd's unmount repeats until the target is no mount point), then the shim mounts it for runc and unmounts it \
when the task is deleted; runc's new mount namespace copies the tree in between:

${kernelTable}

First run after the import (first byte / whole run, ms; not in the figures above): ${firstRunText}.

Setup, not measured: closures built with \`nix-build\` in ${buildText} (cached in the Nix store after the first run; \
GC roots under the benchmark's temporary directory for the run only), and everything up to the first measurement took \
${fmt(res.setupMs / 1000)} s. State on ${res.fs}. Load average (1, 5, 15 min) before: ${la(res.load.before)}, after: ${la(res.load.after)}\
${busy ? " — **the machine was busy with other work during the run: absolute numbers are depressed and noisy; compare the ratios measured side by side.**" : "."}
`;

  const rows = res.sizes.map((s) => ({
    size: s.size,
    closure: s.what,
    firstByteMs: { nix: first(s, "nix"), ordinary: first(s, "ordinary") },
    totalMs: { nix: total(s, "nix"), ordinary: total(s, "ordinary") },
    p50FirstByteMs: { nix: p50(first(s, "nix")), ordinary: p50(first(s, "ordinary")) },
    p50TotalMs: { nix: p50(total(s, "nix")), ordinary: p50(total(s, "ordinary")) },
    ratioFirstByte: p50(first(s, "nix")) / p50(first(s, "ordinary")),
    ratioTotal: p50(total(s, "nix")) / p50(total(s, "ordinary")),
    phasesP50Ms: Object.fromEntries((["nix", "ordinary"] as Kind[]).map((k) => [k, Object.fromEntries(PHASES.map((p) => [p.id, ph(s, k, p)]))])),
    runs: s.runs,
    firstRun: s.firstRun,
    imports: s.imports,
    mountsMs: s.mountsMs,
  }));
  return {
    name: "nix-start",
    title: "Container start: nix images vs ordinary images",
    markdown,
    rows,
    meta: {
      params: PARAMS,
      mountCost: res.mountCost,
      quick: opts.quick,
      load: res.load,
      fs: res.fs,
      prepare: res.prepare,
      images: res.cases.map((c) => ({ size: c.size, buildMs: c.buildMs, nix: { bytes: c.nix.bytes, buildMs: c.nix.buildMs }, ordinary: { bytes: c.ordinary.bytes, buildMs: c.ordinary.buildMs } })),
    },
  };
}

// ---------------------------------------------------------------- main

benchMain<Env>({
  name: "nix-start",
  opts,
  preflight: () => missingBuild([NIX2CONTAINER_BIN, path.join(REPO, "build/src/cli/nix-snapshotter.js")]),
  init: () => {
    const tmp = tempDir("nix-snapshotter-bench-nix-start-");
    return { tmp, daemons: [], clients: [], daemonLog: path.join(tmp.path, "nix-snapshotter.log") };
  },
  run: async (env) => report(await run(env)),
  teardown,
  logs: (env) => ({ "nix-snapshotter log": env.daemonLog, ...(env.containerd ? { "containerd log": path.join(env.containerd.dir, "containerd.log") } : {}) }),
});
