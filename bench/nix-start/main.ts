/**
 * Container start from nix images: `ctr run --rm` of a nix image (one layer
 * of empty mountpoints plus store-path annotations, built by the real
 * `nix2container build`) on two nix-snapshotters, one per store_view
 * setting ("tree": one bind of a per-layer tree of hard links; "binds": one
 * bind per store path), against an ordinary image with the same files (one
 * layer holding the real files of every store path under /nix/store) on
 * containerd's `overlayfs`, for closures of 1, 10, 100, 1,000 and 5,000
 * store paths. Also: the store view's build time and size, the whole import
 * of each image, where the time of a start goes (containerd's event stream,
 * the daemons' per-call times from their debug logs), Mounts through
 * containerd, and the kernel's cost of per-path bind mounts (mountcost.c).
 *
 *   node build/bench/nix-start/main.js [--quick] [--json FILE]
 *
 * Runs as root: it builds the closures with Nix (GC roots under its
 * temporary directory, for the run only), starts two private
 * nix-snapshotters and a private containerd (state in the temporary
 * directory), and stops all of them by PID at the end, also on failure or
 * interruption. The markdown report goes to stdout, progress to stderr.
 *
 * Modules: closures.ts (nix-build of the closures), images.ts (the two
 * images of a closure), runs.ts (one timed ctr run; Mounts), timeline.ts
 * (containerd's events of an import, the daemons' logs), mountcost.ts (the
 * kernel's share), report.ts (markdown, rows, goals).
 */
import { randomBytes } from "node:crypto";
import { lstatSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { NIX2CONTAINER_BIN } from "../../devenv/images.js";
import { tempDir, type TempDir } from "../../test/lib/tmp.js";
import { clearNamespace, ContainerdEvents, killStartedProcesses, SyncGc, timeProcess } from "../lib/containerd-run.js";
import { benchMain, benchOptions, fsType, missingBuild, removeStaleAutoRoots } from "../lib/harness.js";
import { fmt, msBetween, now, percentile } from "../lib/stats.js";
import { buildClosure, type Case } from "./closures.js";
import { buildImages } from "./images.js";
import { compileMountCost, measureMountCost, type MountCost } from "./mountcost.js";
import { report, type Params, type Results, type SizeResult, type ViewStats } from "./report.js";
import { ctrRun, KINDS, measureMounts, NIX_KINDS, SNAPSHOTTER, type Kind, type RunSample, type Runner } from "./runs.js";
import { daemonCalls, importMarks, logOffset, type ImportSample } from "./timeline.js";

const opts = benchOptions("closures up to 1,000 paths (no 5,000), fewer repetitions (a smoke run)");

const PARAMS: Params = opts.quick
  ? { sizes: [1, 10, 100, 1000], runs: 2, importReps: 1, importSizes: [1000], mountsCalls: 10, mountCostReps: 1 }
  : { sizes: [1, 10, 100, 1000, 5000], runs: 5, importReps: 3, importSizes: [1000, 5000], mountsCalls: 30, mountCostReps: 3 };

const NS = `bench-nixstart-${randomBytes(3).toString("hex")}`;

function progress(msg: string): void {
  process.stderr.write(`[bench nix-start] ${msg}\n`);
}

interface Env {
  tmp: TempDir;
  daemons: DaemonProcess[];
  containerd?: Containerd;
  events?: ContainerdEvents;
  gc?: SyncGc;
  clients: SnapshotsClient[];
  /** Debug log and root of the nix-snapshotter of each nix kind. */
  daemonLog: Record<string, string>;
  daemonRoot: Record<string, string>;
}

/** Stops everything by PID, removes the temporary directory and Nix's indirect-root links into it. */
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

/** Directories and other entries below dir. */
function countTree(dir: string): { dirs: number; entries: number } {
  let dirs = 0;
  let entries = 0;
  const walk = (d: string) => {
    dirs++;
    for (const name of readdirSync(d)) {
      const p = path.join(d, name);
      if (lstatSync(p).isDirectory()) walk(p);
      else entries++;
    }
  };
  walk(dir);
  return { dirs: dirs - 1, entries };
}

/**
 * Waits until the tree daemon has built the store view of the layer it
 * unpacked last (views are named by snapshot id; one more than before),
 * and reads its build time from the log.
 */
async function waitForView(env: Env, before: Set<string>): Promise<ViewStats> {
  const dir = path.join(env.daemonRoot["tree"]!, "store-views");
  const deadline = Date.now() + 600_000;
  for (;;) {
    const fresh = readdirSync(dir).filter((n) => !n.startsWith(".") && !before.has(n));
    if (fresh.length > 0) {
      const id = fresh[0]!;
      // The log line follows the rename (daemon → pipe → log file).
      let m: RegExpMatchArray | undefined;
      for (let i = 0; i < 100 && !m; i++) {
        m = [...readFileSync(env.daemonLog["tree"]!, "utf8").matchAll(/msg="store view built" id=(\d+) storePaths=\d+ ms=([\d.]+)/g)].find((x) => x[1] === id);
        if (!m) await sleep(50);
      }
      return { buildMs: m ? Number(m[2]) : NaN, ...countTree(path.join(dir, id)) };
    }
    const warn = /level=warn msg="store view/.exec(readFileSync(env.daemonLog["tree"]!, "utf8"));
    if (warn) throw new Error(`the tree daemon could not build a store view: ${warn.input.slice(warn.index, warn.index + 300)}`);
    if (Date.now() > deadline) throw new Error("no store view after 10 minutes");
    await sleep(50);
  }
}

async function run(env: Env): Promise<Results> {
  const load = { before: os.loadavg(), after: [] as number[] };
  const dir = env.tmp.path;
  const setup0 = now();

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

  // One nix-snapshotter per store_view setting, both proxy plugins of one containerd.
  const sockDir = path.join(dir, "run");
  mkdirSync(sockDir, { recursive: true });
  const containerdDir = path.join(dir, "containerd");
  const address: Record<string, string> = {};
  for (const k of NIX_KINDS) {
    address[k] = path.join(sockDir, `${k}.sock`);
    progress(`starting nix-snapshotter (store_view = "${k}") in ${dir}`);
    env.daemons.push(
      await startDaemonProcess({
        root: env.daemonRoot[k]!,
        address: address[k]!,
        logFile: env.daemonLog[k]!,
        // Debug: a line per gRPC call with the time spent in its handler.
        logLevel: "debug",
        config: `store_view = "${k}"\n[image_service]\nenable = false\n`,
      }),
    );
  }
  const ctrd = await startContainerd({ dir: containerdDir, snapshotterAddress: address["tree"]!, proxySnapshotters: { [SNAPSHOTTER.binds]: address["binds"]! }, logLevel: "warn" });
  env.containerd = ctrd;
  env.events = await ContainerdEvents.start(ctrd, NS);
  env.gc = new SyncGc(ctrd.address, NS);
  const viaContainerd = Object.fromEntries(
    KINDS.map((k) => {
      const c = new SnapshotsClient({ address: ctrd.address, snapshotter: SNAPSHOTTER[k], namespace: NS });
      env.clients.push(c);
      return [k, c];
    }),
  ) as Record<Kind, SnapshotsClient>;
  const setupMs = msBetween(setup0, now());

  // Imports: the whole unpack through the Transfer service.
  const ctr = (args: string[], timeoutMs = 300_000) => ctrd.ctr(args, { namespace: NS, timeoutMs });
  const results: SizeResult[] = [];
  const viewsDir = path.join(env.daemonRoot["tree"]!, "store-views");
  for (const c of cases) {
    const reps = PARAMS.importSizes.includes(c.size) ? PARAMS.importReps : 1;
    progress(`import of the ${c.size.toLocaleString("en-US")}-path images: ${reps} × ${KINDS.length}`);
    const imports: Record<Kind, ImportSample[]> = { tree: [], binds: [], ordinary: [] };
    let view: ViewStats | undefined;
    // Kinds whose snapshotter holds the unpacked image now, by image ref.
    const unpacked = new Map<string, Set<Kind>>([[c.nix.ref, new Set()], [c.ordinary.ref, new Set()]]);
    for (let i = 0; i < reps; i++) {
      const order = KINDS.map((_, j) => KINDS[(i + j) % KINDS.length]!);
      for (const kind of order) {
        const img = kind === "ordinary" ? c.ordinary : c.nix;
        if (i > 0) {
          // One image record, unpacked for every snapshotter: removed as a whole.
          if (unpacked.get(img.ref)!.size > 0) await ctr(["images", "rm", "--sync", img.ref]);
          await env.gc.collect();
          unpacked.get(img.ref)!.clear();
        }
        const log = env.daemonLog[kind];
        const from = log ? await logOffset(log) : 0;
        const views = new Set(readdirSync(viewsDir));
        const p = await timeProcess("ctr", ["--address", ctrd.address, "--namespace", NS, "images", "import", "--local=false", "--snapshotter", SNAPSHOTTER[kind], img.archive], {
          timeoutMs: 600_000,
        });
        if (p.code !== 0) throw new Error(`ctr images import of ${img.archive} (${SNAPSHOTTER[kind]}): ${p.stderr.trim().slice(-1500)}`);
        const s: ImportSample = { ms: p.totalMs, ...(await importMarks(env.events, NS, p, SNAPSHOTTER[kind])) };
        if (log) {
          const calls = daemonCalls(log, from, await logOffset(log), (key) => key.includes("extract-")); // containerd prefixes backend keys with "<namespace>/<n>/"
          if (calls["prepare"]?.n === 1 && calls["commit"]?.n === 1) {
            s.daemonPrepareMs = calls["prepare"].ms;
            s.daemonCommitMs = calls["commit"].ms;
          }
        }
        if (kind === "tree") view = await waitForView(env, views);
        unpacked.get(img.ref)!.add(kind);
        imports[kind].push(s);
      }
    }
    // What a later import's removal took is unpacked again, unmeasured.
    for (const kind of KINDS) {
      const img = kind === "ordinary" ? c.ordinary : c.nix;
      if (unpacked.get(img.ref)!.has(kind)) continue;
      const views = new Set(readdirSync(viewsDir));
      await ctr(["images", "import", "--local=false", "--snapshotter", SNAPSHOTTER[kind], img.archive], 600_000);
      if (kind === "tree") await waitForView(env, views);
    }
    results.push({
      size: c.size,
      what: c.what,
      runs: { tree: [], binds: [], ordinary: [] },
      firstRun: {} as Record<Kind, RunSample>,
      imports,
      mountsMs: { tree: [], binds: [], ordinary: [] },
      mountsCount: { tree: 2, binds: c.size + 1, ordinary: 1 },
      ...(view ? { view } : {}),
    });
  }
  const viewCount = readdirSync(viewsDir).filter((n) => !n.startsWith(".")).length;
  if (viewCount < cases.length) throw new Error(`${viewCount} store views for ${cases.length} nix images`);

  // Container starts.
  const runner: Runner = { ctrd, ns: NS, daemonLog: env.daemonLog, events: env.events, gc: env.gc, seq: 0 };
  for (const [i, c] of cases.entries()) {
    const res = results[i]!;
    progress(`ctr run, ${c.size.toLocaleString("en-US")} store paths: 1 warm-up + ${PARAMS.runs} runs per image and kind`);
    for (const kind of KINDS) res.firstRun[kind] = await ctrRun(runner, c, kind);
    for (let r = 0; r < PARAMS.runs; r++) {
      for (let j = 0; j < KINDS.length; j++) {
        const kind = KINDS[(r + j) % KINDS.length]!;
        res.runs[kind].push(await ctrRun(runner, c, kind));
      }
    }
    const p50 = (k: Kind) => percentile(res.runs[k].map((s) => s.firstByteMs), 50);
    progress(`  first byte p50: ${KINDS.map((k) => `${k} ${fmt(p50(k))} ms`).join(", ")}`);
    env.events.clear();
  }

  // The kernel's share of per-path binds, at 1,000 paths and at the largest size.
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
    for (const kind of KINDS) {
      res.mountsMs[kind] = await measureMounts(viaContainerd[kind], kind === "ordinary" ? c.ordinary : c.nix, res.mountsCount[kind], PARAMS.mountsCalls);
    }
  }
  await env.gc.collect();

  load.after = os.loadavg();
  return { params: PARAMS, quick: opts.quick, cases, sizes: results, load, fs: fsType(dir), setupMs, mountCost, ...(compiled.why ? { mountCostSkipped: compiled.why } : {}) };
}

benchMain<Env>({
  name: "nix-start",
  opts,
  preflight: () => missingBuild([NIX2CONTAINER_BIN, path.join(REPO, "build/src/cli/nix-snapshotter.js")]),
  init: () => {
    const tmp = tempDir("nix-snapshotter-bench-nix-start-");
    const daemonLog = Object.fromEntries(NIX_KINDS.map((k) => [k, path.join(tmp.path, `nix-snapshotter-${k}.log`)]));
    const daemonRoot = Object.fromEntries(NIX_KINDS.map((k) => [k, path.join(tmp.path, `nix-snapshotter-${k}`)]));
    return { tmp, daemons: [], clients: [], daemonLog, daemonRoot };
  },
  run: async (env) => report(await run(env)),
  teardown,
  logs: (env) => ({
    ...Object.fromEntries(NIX_KINDS.map((k) => [`nix-snapshotter (${k}) log`, env.daemonLog[k]!])),
    ...(env.containerd ? { "containerd log": path.join(env.containerd.dir, "containerd.log") } : {}),
  }),
});
