/**
 * CRI PullImage latency, the kubelet path: a `nix:0` reference whose
 * closure is already in the Nix store, pulled through nix-snapshotter's
 * ImageService, against the layered equivalent (the same closure as an
 * ordinary image with one layer per store path) pulled by containerd's CRI
 * from a local registry (Debian's docker-registry, plain HTTP, basic auth).
 * Two closures: the redis test fixture (small) and bench/pull's 62 store
 * paths of host files (bench/lib/closures.ts, ≥ 100 MiB).
 *
 * Both images are unpacked with the `nix` snapshotter (CRI's snapshotter).
 * Between repetitions the image is removed (CRI RemoveImage) and
 * containerd's garbage collection is forced, so every pull is cold for
 * containerd: no content, no snapshots. The Nix closure stays in the store.
 *
 *   node build/bench/cri-pull/main.js [--quick] [--json FILE] [--daemon-log FILE]
 */
import { execFile } from "node:child_process";
import { lstatSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { criClients, type CriClients } from "../../test/lib/cri.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, buildNixImageArchive, NIX2CONTAINER_BIN, redisArgs, redisImage } from "../../devenv/images.js";
import { tryDelete } from "../../test/lib/nix.js";
import { htpasswdFile, startRegistry, type Registry } from "../../test/lib/registry.js";
import { tempDir } from "../../test/lib/tmp.js";
import { killStartedProcesses, SyncGc } from "../lib/containerd-run.js";
import { buildClosures } from "../lib/closures.js";
import { benchMain, benchOptions, missingBuild, removeStaleAutoRoots } from "../lib/harness.js";
import { StorePathLayers } from "../lib/layered.js";
import { fmt, markdownTable, msBetween, now, percentile, summarize, type BenchReport, type Summary } from "../lib/stats.js";

const exec = promisify(execFile);

const opts = benchOptions(undefined, { "daemon-log": ["FILE", "write the daemon's log there, at debug level (default: a temp file, info)"] });

/** Measured pulls per side (after one unmeasured warm-up pull each). */
const REPS = opts.quick ? 5 : 30;
/** The goal (P5): nix pulls at least this many times faster (p50). */
const TARGET_RATIO = 10;
const PAUSE = "localhost/nix-snapshotter-bench/pause:1";
const USER = "benchuser";
const PASSWORD = "bench-pass";
const NS = "k8s.io";

function progress(msg: string): void {
  process.stderr.write(`[bench cri-pull] ${msg}\n`);
}

interface Env {
  tmp: ReturnType<typeof tempDir>;
  daemonLog: string;
  daemon?: DaemonProcess;
  containerd?: Containerd;
  registry?: Registry;
  cri?: CriClients;
  direct?: CriClients;
  gc?: SyncGc;
  /** Store paths this run added or built, and their derivations; deleted at the end. */
  storeAdded: string[];
  derivations: string[];
}

async function teardown(env: Env): Promise<void> {
  env.gc?.close();
  env.cri?.close();
  env.direct?.close();
  if (env.containerd) {
    const c = env.containerd;
    env.containerd = undefined;
    await c.stop().catch((e: unknown) => progress(`stopping containerd (pid ${c.pid}): ${String(e)}`));
  }
  if (env.daemon) {
    const d = env.daemon;
    env.daemon = undefined;
    await d.stop("SIGTERM", 15_000);
  }
  if (env.registry) {
    const r = env.registry;
    env.registry = undefined;
    await r.stop().catch(() => {});
  }
  killStartedProcesses();
  env.tmp.cleanup();
  removeStaleAutoRoots(env.tmp.path);
  // The daemon's roots lived in the temp dir: nothing keeps the run's paths now.
  const left = [...env.storeAdded, ...env.derivations].filter((p) => lstatSync(p, { throwIfNoEntry: false }));
  if (left.length > 0 && !(await tryDelete(left))) progress(`could not delete the run's ${left.length} store paths`);
}

interface Side {
  id: "nix" | "layered";
  what: string;
  ref: string;
  layers: number;
  bytes: number;
  samples: number[];
  /** Wall clock (ms since the epoch) at each measured pull's call. */
  startedAt: number[];
}

/** One closure, as a nix:0 archive and as a layered image. */
interface Fixture {
  id: "redis" | "bench-pull";
  title: string;
  storePaths: number;
  /** The closure's size on disk. */
  closureBytes: number;
  /** The nix:0 archive's store path. */
  archive: string;
  sides: Side[];
  phases?: NixPhases;
}

interface Built {
  id: Fixture["id"];
  title: string;
  closure: string[];
  /** The nix image archive (outside the store) and the layered image's config. */
  archive: string;
  config: Record<string, unknown>;
}

async function du(paths: string[]): Promise<number> {
  const { stdout } = await exec("du", ["-s", "-x", "-B1", "-c", ...paths], { maxBuffer: 16 * 1024 * 1024 });
  return Number(stdout.trim().split("\n").pop()!.split(/\s+/)[0]);
}

async function run(env: Env): Promise<Fixture[]> {
  const tmp = env.tmp.path;
  const snAddress = path.join(tmp, "sn.sock");
  const ctdDir = path.join(tmp, "containerd");
  const ctdAddress = path.join(ctdDir, "containerd.sock");

  progress("building the redis fixture closure (cached after the first run)");
  const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
  const redisClosure = readFileSync(path.join(f["redis-closure"], "store-paths"), "utf8").split("\n").filter(Boolean);
  const redis = await redisImage(path.join(tmp, "images"), f, 6399);
  progress("building bench/pull's closure of host files (fresh store paths)");
  const c = await buildClosures(tmp, f.busybox, 1);
  env.storeAdded.push(...c.built);
  env.derivations.push(...c.derivations);
  const app = c.images[0]!;
  const benchConfig = { Entrypoint: [`${app.app}/bin/app`] };
  const bench = await buildNixImageArchive({ dir: path.join(tmp, "images"), name: "bench-pull", closureInfo: app.info, config: benchConfig });
  const builds: Built[] = [
    { id: "redis", title: "redis test fixture", closure: redisClosure, archive: redis.archive, config: { Entrypoint: [`${f.redis}/bin/redis-server`], Cmd: redisArgs(6399) } },
    { id: "bench-pull", title: "bench/pull's closure of host files", closure: app.closure, archive: bench.archive, config: benchConfig },
  ];

  const htpasswd = htpasswdFile(path.join(tmp, "htpasswd"), USER, PASSWORD);
  env.registry = await startRegistry({ dir: path.join(tmp, "registry"), auth: { htpasswd } });
  const host = env.registry.host;
  const dockerDir = path.join(tmp, "docker");
  mkdirSync(dockerDir, { recursive: true });
  writeFileSync(path.join(dockerDir, "config.json"), JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString("base64") } } }));
  const hostsDir = path.join(ctdDir, "certs.d", host);
  mkdirSync(hostsDir, { recursive: true });
  writeFileSync(path.join(hostsDir, "hosts.toml"), `server = "http://${host}"\n\n[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`);

  const fixtures: Fixture[] = [];
  for (const b of builds) {
    // The nix image: an archive in the Nix store.
    const stored = (await exec("nix-store", ["--add", b.archive])).stdout.trim();
    env.storeAdded.push(stored);
    // The layered image: one layer per store path, pushed to the registry.
    const layeredRef = `${host}/bench/${b.id}-layered:v1`;
    progress(`${b.id}: building the layered image (${b.closure.length} layers, one per store path)`);
    const layers = await new StorePathLayers(2).layers(b.closure);
    const layeredArchive = path.join(tmp, `images/${b.id}-layered.tar`);
    const written = await writeImageArchive({ layers, config: b.config, ref: layeredRef }, layeredArchive);
    await exec(process.execPath, [NIX2CONTAINER_BIN, "push", layeredArchive, "--ref", layeredRef, "--plain-http"], {
      env: { ...process.env, DOCKER_CONFIG: dockerDir },
      maxBuffer: 16 * 1024 * 1024,
    });
    fixtures.push({
      id: b.id,
      title: b.title,
      storePaths: b.closure.length,
      closureBytes: await du(b.closure),
      archive: stored,
      sides: [
        { id: "nix", what: "`nix:0` archive in the Nix store, via nix-snapshotter's ImageService", ref: `nix:0${stored}`, layers: 1, bytes: lstatSync(stored).size, samples: [], startedAt: [] },
        {
          id: "layered",
          what: "ordinary image, one layer per store path, via containerd's CRI from a local registry",
          ref: layeredRef,
          layers: written.layerDigests.length,
          bytes: lstatSync(layeredArchive).size,
          samples: [],
          startedAt: [],
        },
      ],
    });
  }

  progress("starting nix-snapshotter (image service) and containerd (CRI)");
  env.daemon = await startDaemonProcess({
    root: path.join(tmp, "root"),
    address: snAddress,
    config: `[image_service]\nenable = true\ncontainerd_address = "${ctdAddress}"\n`,
    logFile: env.daemonLog,
    ...(opts.extra["daemon-log"] ? { logLevel: "debug" } : {}),
  });
  env.containerd = await startContainerd({ dir: ctdDir, snapshotterAddress: snAddress, cri: { sandboxImage: PAUSE } });
  env.cri = criClients(snAddress, ctdAddress);
  env.direct = criClients(ctdAddress, ctdAddress);
  env.gc = new SyncGc(ctdAddress, NS);
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      await env.direct.runtime.Version({ version: "v1" });
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const auth = { username: USER, password: PASSWORD };
  const pull = (s: Side) => (s.id === "nix" ? env.cri!.image.PullImage({ image: { image: s.ref } }) : env.direct!.image.PullImage({ image: { image: s.ref }, auth }));
  const remove = async (s: Side) => {
    await env.cri!.image.RemoveImage({ image: { image: s.ref } });
    await env.gc!.collect();
  };

  for (const fx of fixtures) {
    progress(`${fx.id}: ${REPS} measured pulls per side (after one warm-up), alternating, cold for containerd each time`);
    for (let i = -1; i < REPS; i++) {
      for (const s of fx.sides) {
        const wall = Date.now();
        const t0 = now();
        const res = (await pull(s)) as { imageRef: string };
        const ms = msBetween(t0, now());
        if (!/^sha256:[0-9a-f]{64}$/.test(res.imageRef)) throw new Error(`PullImage ${s.ref} answered ${JSON.stringify(res)}`);
        if (i >= 0) {
          s.samples.push(ms);
          s.startedAt.push(wall);
        }
        progress(`  ${i < 0 ? "warm-up" : `#${i + 1}`} ${s.id}: ${fmt(ms)} ms`);
        await remove(s);
        const st = (await env.direct!.image.ImageStatus({ image: { image: s.id === "nix" ? `${s.ref}:latest` : s.ref } })) as { image: unknown };
        if (st.image !== null) throw new Error(`${s.ref} still present after RemoveImage`);
      }
    }
  }
  for (const fx of fixtures) fx.phases = nixPhases(env.daemonLog, path.join(ctdDir, "containerd.log"), fx.archive, fx.sides[0]!);
  return fixtures;
}

/** Where a nix pull's time goes, per measured pull (ms). */
interface NixPhases {
  /** From the call to the daemon's "loading nix image archive" line: reference checks, making sure the archive is in the store. */
  realise: number[];
  /** From there to containerd's CRI logging the ImageCreate event: the import (content, image record, unpack). */
  load: number[];
  /** From the event to PullImage's answer: the daemon waiting until CRI lists the image. */
  settle: number[];
}

/**
 * Reads the phases of one archive's pulls from the daemon's and
 * containerd's logs (one clock, two processes, ms resolution); empty when
 * the lines do not line up one per pull.
 */
function nixPhases(daemonLog: string, containerdLog: string, archive: string, nix: Side): NixPhases {
  const times = (file: string, re: RegExp) =>
    readFileSync(file, "utf8")
      .split("\n")
      .filter((l) => re.test(l) && l.includes(archive))
      .map((l) => Date.parse(/^time="?([^"\s]+)/.exec(l)?.[1] ?? ""))
      .slice(1); // the warm-up pull's
  const loading = times(daemonLog, /msg="loading nix image archive"/);
  const created = times(containerdLog, /msg="ImageCreate event name:\\"nix:0\//);
  const n = nix.startedAt.length;
  if (loading.length !== n || created.length !== n) return { realise: [], load: [], settle: [] };
  const start = nix.startedAt;
  const end = start.map((t, i) => t + nix.samples[i]!);
  return {
    realise: loading.map((t, i) => t - start[i]!),
    load: created.map((t, i) => t - loading[i]!),
    settle: end.map((t, i) => t - created[i]!),
  };
}

function report(fixtures: Fixture[]): BenchReport {
  const rows = fixtures.map((fx) => {
    const sum = Object.fromEntries(fx.sides.map((s) => [s.id, summarize(s.samples, 0)])) as Record<Side["id"], Summary>;
    return { fx, sum, ratio50: sum.layered.p50Ms / sum.nix.p50Ms, ratio99: sum.layered.p99Ms / sum.nix.p99Ms };
  });
  const table = markdownTable(
    ["Closure", "Image", "Layers", "Archive", "Pulls", "p50 ms", "p99 ms", "max ms"],
    rows.flatMap(({ fx, sum }) =>
      fx.sides.map((s) => [
        `${fx.title} (${fx.storePaths} paths, ${fmt(fx.closureBytes / 2 ** 20)} MiB)`,
        s.what,
        String(s.layers),
        `${fmt(s.bytes / 2 ** 20)} MiB`,
        String(sum[s.id].count),
        fmt(sum[s.id].p50Ms),
        fmt(sum[s.id].p99Ms),
        fmt(sum[s.id].maxMs),
      ]),
    ),
    ["left", "left", "right", "right", "right", "right", "right", "right"],
  );
  const ratios = rows
    .map(({ fx, ratio50, ratio99 }) => `- ${fx.title}: layered / nix **${fmt(ratio50)}×** at p50, ${fmt(ratio99)}× at p99 (target ≥ ${TARGET_RATIO}× at p50: **${ratio50 >= TARGET_RATIO ? "PASS" : "MISS"}**).`)
    .join("\n");
  const phases = rows
    .filter(({ fx }) => fx.phases?.realise.length)
    .map(({ fx }) => {
      const ph = fx.phases!;
      return `- ${fx.title}: ${fmt(percentile(ph.realise, 50))} ms until the daemon starts loading, ${fmt(percentile(ph.load, 50))} ms importing, ${fmt(percentile(ph.settle, 50))} ms until PullImage answers.`;
    })
    .join("\n");
  const markdown = `${opts.quick ? "**Quick run (--quick): few repetitions; the numbers are noisy.**\n\n" : ""}\
CRI PullImage as kubelet calls it, of two closures: the redis test fixture and bench/pull's closure of host files. \
*nix*: \`PullImage nix:0/nix/store/…-image.tar\` on nix-snapshotter's socket; the archive and the closure are already \
in the Nix store, so the pull imports the archive into containerd and unpacks one nix layer of mountpoints. *layered*: \
the same store paths as an ordinary image with one gzip layer per store path, pulled by containerd's CRI from a local \
docker-registry over plain HTTP with basic auth, unpacked with the same \`nix\` snapshotter. Each side pulls once \
unmeasured, then ${REPS} times, alternating; after each pull the image is removed (CRI RemoveImage) and containerd's \
GC is forced, so every pull is cold for containerd.

${table}

${ratios}
${
  phases
    ? `
Where a nix pull's time goes (p50 of each phase, from the daemon's and containerd's logs, ms resolution): from the \
call until the daemon logs that it starts loading (reference checks, making sure the archive is in the Nix store), \
importing it into containerd (content, unpack of the nix layer, image record) until CRI logs the ImageCreate event, \
and until CRI lists the image and PullImage answers.

${phases}
`
    : ""
}`;
  return {
    name: "cri-pull",
    title: "CRI PullImage: nix:0 from the Nix store vs a layered image from a registry",
    markdown,
    rows: rows.flatMap(({ fx, sum }) =>
      fx.sides.map((s) => ({ fixture: fx.id, side: s.id, ref: s.ref, layers: s.layers, bytes: s.bytes, ...sum[s.id], samplesMs: s.samples })),
    ),
    meta: {
      reps: REPS,
      quick: opts.quick,
      fixtures: rows.map(({ fx, ratio50, ratio99 }) => ({ id: fx.id, storePaths: fx.storePaths, closureBytes: fx.closureBytes, nixPhasesMs: fx.phases, ratioP50: ratio50, ratioP99: ratio99 })),
      target: TARGET_RATIO,
    },
    goals: rows.map(({ fx, ratio50 }) => ({
      id: "P5",
      measure: `CRI PullImage, layered / nix:0, ${fx.title} (${fx.storePaths} paths, ${fmt(fx.closureBytes / 2 ** 20)} MiB), p50`,
      goal: `≥ ${TARGET_RATIO}×`,
      now: `${fmt(ratio50)}×`,
      met: ratio50 >= TARGET_RATIO,
    })),
  };
}

benchMain<Env>({
  name: "cri-pull",
  opts,
  preflight: () => missingBuild([NIX2CONTAINER_BIN, path.join(REPO, "build/src/cli/nix-snapshotter.js")]),
  init: () => {
    const tmp = tempDir("nix-snapshotter-bench-cri-pull-");
    return { tmp, daemonLog: opts.extra["daemon-log"] ?? path.join(tmp.path, "nix-snapshotter.log"), storeAdded: [], derivations: [] };
  },
  run: async (env) => report(await run(env)),
  teardown,
  logs: (env) => ({ "nix-snapshotter log": env.daemonLog, ...(env.containerd ? { "containerd log": path.join(env.containerd.dir, "containerd.log") } : {}) }),
});
