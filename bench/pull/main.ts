/**
 * Pulling an image from a registry: a nix image (one layer of mountpoints,
 * store paths named in annotations) against the same closure as an ordinary
 * layered image (one gzip layer per store path, like nixpkgs' dockerTools
 * layered images), both pushed by nix2container to a local docker-registry
 * and pulled by containerd's Transfer service. The nix image is unpacked by
 * nix-snapshotter, the layered one by containerd's builtin overlayfs
 * snapshotter: what a node without nix-snapshotter would do.
 *
 * Five images share 90% of their closures (54 shared store paths, busybox,
 * 6 of their own, an entry point): about 2 MiB per store path of real
 * host files (libraries, programs, data), so each closure is ≥ 100 MiB.
 *
 * Measured, alternating the sides, each pull cold for containerd (image
 * removed and garbage collected in between):
 *   1. pull + unpack + first run (`ctr run` printing "started") with the
 *      closure already in the Nix store;
 *   2. bytes the registry sent for one pull (its own log);
 *   3. disk used after pulling all five images;
 *   4. the nix image again, with its closure absent from the store and
 *      served by a local HTTP binary cache (substituted on unpack).
 *
 *   node build/bench/pull/main.js [--quick] [--json FILE]
 */
import { execFile } from "node:child_process";
import { createReadStream, lstatSync, mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { goArch } from "../../src/image/oci.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, buildNixImageArchive, NIX2CONTAINER_BIN } from "../../devenv/images.js";
import { tryDelete } from "../../test/lib/nix.js";
import { htpasswdFile, makeCert, startRegistry, type Registry } from "../../test/lib/registry.js";
import { tempDir } from "../../test/lib/tmp.js";
import { clearNamespace, killStartedProcesses } from "../lib/containerd-run.js";
import { benchMain, benchOptions, missingBuild, removeStaleAutoRoots } from "../lib/harness.js";
import { buildClosures, OWN, SHARED } from "../lib/closures.js";
import { StorePathLayers } from "../lib/layered.js";
import { fmt, markdownTable, msBetween, now, percentile, type BenchReport } from "../lib/stats.js";

const exec = promisify(execFile);
const opts = benchOptions("2 measured pulls per side instead of 5 (a smoke run)");

const REPS = opts.quick ? 2 : 5;
const IMAGES = 5;
const TARGETS = { speedup: 10, bytesPercent: 1, disk: 1.1 };
const NS = "bench-pull";
const USER = "benchuser";
const PASSWORD = "bench-pass";

function progress(msg: string): void {
  process.stderr.write(`[bench pull] ${msg}\n`);
}

interface Env {
  tmp: ReturnType<typeof tempDir>;
  daemonLog: string;
  daemon?: DaemonProcess;
  containerd?: Containerd;
  registry?: Registry;
  cache?: http.Server;
  /** Store paths this run built, and their derivations; deleted at the end. */
  built: string[];
  derivations: string[];
}

// ---------------------------------------------------------------- measuring

/**
 * Deletes store paths, retrying briefly: containerd's GC removes a
 * snapshot (and with it our GC roots) just after it reports the image gone.
 */
async function deletePaths(paths: string[], what: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    if (await tryDelete(paths)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`Nix refused to delete ${what} (${paths.length} store paths): something still roots them`);
}

async function du(paths: string[]): Promise<number> {
  const existing = paths.filter((p) => lstatSync(p, { throwIfNoEntry: false }));
  if (existing.length === 0) return 0;
  // One du: hard-linked files count once, as on the disk.
  const { stdout } = await exec("du", ["-s", "-x", "-B1", "-c", ...existing], { maxBuffer: 16 * 1024 * 1024 });
  return Number(stdout.trim().split("\n").pop()!.split(/\s+/)[0]);
}

/** A static file server for a binary cache directory, counting the bytes it sends. */
async function serveCache(dir: string): Promise<{ server: http.Server; url: string; sent: () => number }> {
  let sent = 0;
  const server = http.createServer((req, res) => {
    const file = path.join(dir, path.normalize(decodeURIComponent((req.url ?? "/").split("?")[0]!)));
    const st = file.startsWith(dir + "/") ? lstatSync(file, { throwIfNoEntry: false }) : undefined;
    if (!st?.isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-length": st.size });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    sent += st.size;
    createReadStream(file).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, sent: () => sent };
}

type SideId = "nix" | "layered";

interface Pulled {
  pullMs: number;
  runMs: number;
  registryBytes: number;
}

interface Result {
  closurePaths: number;
  closureBytes: number;
  unionBytes: number;
  archiveBytes: Record<SideId, number>;
  layers: Record<SideId, number>;
  cold: Record<SideId, Pulled[]>;
  disk: Record<SideId, number>;
  cache: { pulls: Pulled[]; cacheBytes: number; sentPerPull: number; compression: string };
}

async function run(env: Env): Promise<Result> {
  const tmp = env.tmp.path;
  const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
  progress(`building ${IMAGES} closures of ${SHARED + OWN + 2} store paths (${SHARED + 1} shared) from host files`);
  const c = await buildClosures(tmp, f.busybox, IMAGES);
  env.built = c.built;
  env.derivations = c.derivations;
  const closureBytes = await du(c.images[0]!.closure);
  const union = [...new Set(c.images.flatMap((i) => i.closure))];
  const unionBytes = await du(union);
  progress(`one closure: ${c.images[0]!.closure.length} paths, ${fmt(closureBytes / 2 ** 20)} MiB; all five: ${union.length} paths, ${fmt(unionBytes / 2 ** 20)} MiB`);

  // The binary cache server runs from the start so the daemon's NIX_CONFIG can name it.
  const cacheDir = path.join(tmp, "cache");
  mkdirSync(cacheDir, { recursive: true });
  const cache = await serveCache(cacheDir);
  env.cache = cache.server;

  const tls = makeCert(path.join(tmp, "tls"));
  env.registry = await startRegistry({ dir: path.join(tmp, "registry"), auth: { htpasswd: htpasswdFile(path.join(tmp, "htpasswd"), USER, PASSWORD) }, tls });
  const reg = env.registry;
  const dockerDir = path.join(tmp, "docker");
  mkdirSync(dockerDir, { recursive: true });
  writeFileSync(path.join(dockerDir, "config.json"), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString("base64") } } }));
  const push = (archive: string, ref: string) =>
    exec(process.execPath, [NIX2CONTAINER_BIN, "push", archive, "--ref", ref], {
      env: { ...process.env, DOCKER_CONFIG: dockerDir, NODE_EXTRA_CA_CERTS: tls.cert },
      maxBuffer: 16 * 1024 * 1024,
    });

  progress("building and pushing the images");
  const refs: Record<SideId, string[]> = { nix: [], layered: [] };
  const archiveBytes: Record<SideId, number> = { nix: 0, layered: 0 };
  const layers: Record<SideId, number> = { nix: 1, layered: 0 };
  const storeLayers = new StorePathLayers(6);
  for (const [k, img] of c.images.entries()) {
    const config = { Entrypoint: [`${img.app}/bin/app`] };
    const nix = await buildNixImageArchive({ dir: path.join(tmp, "images"), name: `nix-${k}`, closureInfo: img.info, config });
    refs.nix.push(`${reg.host}/bench/nix:img${k}`);
    await push(nix.archive, refs.nix[k]!);
    // Shared store paths first, as dockerTools orders layers by popularity, so
    // the five layered images share their first layers' snapshots too.
    const order = [...img.closure.filter((p) => c.shared.has(p)), ...img.closure.filter((p) => !c.shared.has(p))];
    const archive = path.join(tmp, "images", `layered-${k}.tar`);
    refs.layered.push(`${reg.host}/bench/layered:img${k}`);
    await writeImageArchive({ layers: await storeLayers.layers(order), config, ref: refs.layered[k]! }, archive);
    await push(archive, refs.layered[k]!);
    if (k === 0) {
      archiveBytes.nix = lstatSync(nix.archive).size;
      archiveBytes.layered = lstatSync(archive).size;
      layers.layered = order.length;
    }
  }

  progress("starting nix-snapshotter and containerd");
  const snRoot = path.join(tmp, "sn/root");
  const snAddress = path.join(tmp, "sn/nix-snapshotter.sock");
  env.daemon = await startDaemonProcess({
    root: snRoot,
    address: snAddress,
    logFile: env.daemonLog,
    // Only consulted for store paths that are not valid: the binary cache case.
    env: { NIX_CONFIG: `substituters = ${cache.url}\nrequire-sigs = false\nnarinfo-cache-negative-ttl = 0`, no_proxy: "127.0.0.1", NO_PROXY: "127.0.0.1" },
  });
  // containerd's registry client trusts the system roots; SSL_CERT_FILE replaces them for its process.
  const saved = process.env["SSL_CERT_FILE"];
  process.env["SSL_CERT_FILE"] = tls.cert;
  try {
    env.containerd = await startContainerd({ dir: path.join(tmp, "containerd"), snapshotterAddress: snAddress });
  } finally {
    if (saved === undefined) delete process.env["SSL_CERT_FILE"];
    else process.env["SSL_CERT_FILE"] = saved;
  }
  const ctrd = env.containerd;
  const ctr = (args: string[]) => ctrd.ctr(args, { namespace: NS, timeoutMs: 600_000 });
  const snapshotter: Record<SideId, string> = { nix: "nix", layered: "overlayfs" };
  const containerdRoot = path.join(ctrd.dir, "root");

  const pull = async (side: SideId, ref: string) =>
    ctr(["images", "pull", "--local=false", "--platform", `linux/${goArch()}`, "--user", `${USER}:${PASSWORD}`, "--snapshotter", snapshotter[side], ref]);
  let seq = 0;
  const firstRun = async (side: SideId, ref: string) => {
    const out = await ctr(["run", "--rm", "--snapshotter", snapshotter[side], ref, `bench-pull-${++seq}`]);
    if (out !== "started\n") throw new Error(`${ref} printed ${JSON.stringify(out)}, expected "started"`);
  };
  /** Removes images and lets containerd's GC take their content and snapshots; checks it did. */
  const removeAll = async (side: SideId, rs: string[]) => {
    await ctr(["images", "rm", "--sync", ...rs]);
    const content = (await ctr(["content", "ls", "-q"])).trim();
    const snaps = (await ctr(["snapshots", "--snapshotter", snapshotter[side], "ls"])).trim().split("\n").slice(1).filter(Boolean);
    if (content !== "" || snaps.length > 0) throw new Error(`after removing ${rs.join(", ")}: content ${JSON.stringify(content)}, snapshots ${snaps.join("; ")}`);
  };
  const registrySent = (from: number) => reg.responses().slice(from).filter((r) => r.method === "GET").reduce((n, r) => n + r.written, 0);
  const coldPull = async (side: SideId, ref: string): Promise<Pulled> => {
    const before = reg.responses().length;
    const t0 = now();
    await pull(side, ref);
    const t1 = now();
    await firstRun(side, ref);
    const t2 = now();
    const p = { pullMs: msBetween(t0, t1), runMs: msBetween(t1, t2), registryBytes: registrySent(before) };
    await removeAll(side, [ref]);
    return p;
  };

  progress(`cold pull + unpack + first run: one warm-up and ${REPS} measured per side, alternating`);
  const cold: Record<SideId, Pulled[]> = { nix: [], layered: [] };
  for (let i = -1; i < REPS; i++) {
    for (const side of ["nix", "layered"] as const) {
      const p = await coldPull(side, refs[side][0]!);
      progress(`  ${i < 0 ? "warm-up" : `#${i + 1}`} ${side}: pull ${fmt(p.pullMs)} ms + run ${fmt(p.runMs)} ms, ${p.registryBytes} bytes from the registry`);
      if (i >= 0) cold[side].push(p);
    }
  }

  progress("disk used after pulling all five images");
  const disk: Record<SideId, number> = { nix: 0, layered: 0 };
  for (const side of ["nix", "layered"] as const) {
    const base = await du([containerdRoot, snRoot]);
    for (const r of refs[side]) await pull(side, r);
    disk[side] = (await du([containerdRoot, snRoot])) - base;
    progress(`  ${side}: ${fmt(disk[side] / 2 ** 20)} MiB in containerd and the snapshotter`);
    await removeAll(side, refs[side]);
  }

  // The binary cache case: every store path of the run deleted, image 0's closure served over HTTP.
  let compression = "zstd";
  const copy = (comp: string) => exec("nix", ["copy", "--to", `file://${cacheDir}?compression=${comp}`, c.images[0]!.info], { maxBuffer: 16 * 1024 * 1024 });
  progress("filling the binary cache (nix copy)");
  try {
    await copy(compression);
  } catch {
    compression = "xz";
    await copy(compression);
  }
  const cacheBytes = await du([cacheDir]);
  const doomed = env.built.filter((p) => p === c.images[0]!.info || c.images[0]!.closure.includes(p));
  await deletePaths(env.built, "the run's store paths");
  progress(`closure absent, served by ${cache.url} (${compression}, ${fmt(cacheBytes / 2 ** 20)} MiB): ${REPS} pulls`);
  const pulls: Pulled[] = [];
  const sentBefore = cache.sent();
  for (let i = 0; i < REPS; i++) {
    const p = await coldPull("nix", refs.nix[0]!);
    progress(`  #${i + 1} nix from the binary cache: pull ${fmt(p.pullMs)} ms + run ${fmt(p.runMs)} ms`);
    pulls.push(p);
    await deletePaths(doomed, "the substituted closure");
  }
  const sentPerPull = (cache.sent() - sentBefore) / REPS;

  return {
    closurePaths: c.images[0]!.closure.length,
    closureBytes,
    unionBytes,
    archiveBytes,
    layers,
    cold,
    disk,
    cache: { pulls, cacheBytes, sentPerPull, compression },
  };
}

// ---------------------------------------------------------------- report

const p50 = (xs: number[]) => percentile(xs, 50);
const mib = (b: number) => `${fmt(b / 2 ** 20)} MiB`;

function report(r: Result): BenchReport {
  const total = (ps: Pulled[]) => ps.map((p) => p.pullMs + p.runMs);
  const t = { nix: p50(total(r.cold.nix)), layered: p50(total(r.cold.layered)), cache: p50(total(r.cache.pulls)) };
  const bytes = { nix: p50(r.cold.nix.map((p) => p.registryBytes)), layered: p50(r.cold.layered.map((p) => p.registryBytes)) };
  const speedup = t.layered / t.nix;
  const bytesPercent = (100 * bytes.nix) / bytes.layered;
  const nixDisk = r.unionBytes + r.disk.nix;
  const verdict = (ok: boolean) => (ok ? "PASS" : "MISS");
  const table = markdownTable(
    ["", "nix image", "layered image", "ratio", "target"],
    [
      ["cold pull + unpack + first run, p50", `${fmt(t.nix)} ms`, `${fmt(t.layered)} ms`, `layered/nix **${fmt(speedup)}×**`, `≥ ${TARGETS.speedup}×: ${verdict(speedup >= TARGETS.speedup)}`],
      ["… of which pull + unpack, p50", `${fmt(p50(r.cold.nix.map((p) => p.pullMs)))} ms`, `${fmt(p50(r.cold.layered.map((p) => p.pullMs)))} ms`, "", ""],
      ["… of which first run, p50", `${fmt(p50(r.cold.nix.map((p) => p.runMs)))} ms`, `${fmt(p50(r.cold.layered.map((p) => p.runMs)))} ms`, "", ""],
      ["bytes sent by the registry per pull", String(bytes.nix), `${bytes.layered} (${mib(bytes.layered)})`, `nix/layered **${fmt(bytesPercent)}%**`, `≤ ${TARGETS.bytesPercent}%: ${verdict(bytesPercent <= TARGETS.bytesPercent)}`],
      ["layers; archive size", `${r.layers.nix}; ${fmt(r.archiveBytes.nix / 1024)} KiB`, `${r.layers.layered}; ${mib(r.archiveBytes.layered)}`, "", ""],
      ["disk added by pulling the 5 images (containerd + snapshotter)", mib(r.disk.nix), mib(r.disk.layered), `layered/nix ${fmt(r.disk.layered / Math.max(r.disk.nix, 1))}×`, ""],
      [
        "disk for the 5 images, store paths included",
        `${mib(nixDisk)} (store ${mib(r.unionBytes)} + ${mib(r.disk.nix)})`,
        mib(r.disk.layered),
        `nix/union of the closures **${fmt(nixDisk / r.unionBytes)}×**; nix/one closure ${fmt(nixDisk / r.closureBytes)}×`,
        `≤ ${TARGETS.disk}×: ${verdict(nixDisk / r.unionBytes <= TARGETS.disk)}`,
      ],
    ],
    ["left", "right", "right", "left", "left"],
  );
  const cacheRatio = t.layered / t.cache;
  const markdown = `${opts.quick ? "**Quick run (--quick): few repetitions; the numbers are noisy.**\n\n" : ""}\
The same closure (${r.closurePaths} store paths, ${mib(r.closureBytes)} on disk, host libraries, programs and data) as \
a *nix image* (one layer of mountpoints; store paths in annotations) and as a *layered image* (one gzip layer per \
store path, shared paths first, like dockerTools' layered images), both pushed by \`nix2container push\` to a local \
docker-registry (TLS, basic auth) and pulled by containerd's Transfer service (\`ctr images pull --local=false\`). \
The nix image is unpacked by nix-snapshotter, the layered image by containerd's builtin overlayfs snapshotter. \
A pull is timed from the start of \`ctr images pull\` to the end of a first \`ctr run --rm\` printing "started"; after \
each, the image is removed and containerd's GC runs, so every pull is cold for containerd. One warm-up and ${REPS} \
measured pulls per side, alternating. Closure already in the Nix store.

${table}

The five images share 90% of their closures (${SHARED + 1} of ${r.closurePaths} store paths): together ${mib(r.unionBytes)} \
of store paths. With nix images these are on disk once, in the Nix store, and pulling the five images adds only \
${mib(r.disk.nix)}; the layered images store them in containerd's content store (compressed) and again unpacked in \
overlayfs snapshots, sharing only the layers they have in the same order. The disk target is read against the union \
of the five closures, the least any scheme can use: against one closure it cannot hold by construction (5 × 10% own \
paths make the union ${fmt(r.unionBytes / r.closureBytes)}× one closure).

**Closure absent from the store**, served by a local HTTP binary cache (\`nix copy\`, ${r.cache.compression} NARs, \
${mib(r.cache.cacheBytes)}): the nix image's pull substitutes the closure during unpack. p50 ${fmt(t.cache)} ms \
(pull + unpack ${fmt(p50(r.cache.pulls.map((p) => p.pullMs)))} ms, first run ${fmt(p50(r.cache.pulls.map((p) => p.runMs)))} ms) \
against ${fmt(t.layered)} ms for the layered image from the registry: layered/nix ${fmt(cacheRatio)}×. The cache \
sent ${mib(r.cache.sentPerPull)} per pull (busybox, rooted by the test fixtures, stays in the store).
`;
  return {
    name: "pull",
    title: "Pull from a registry: nix image vs layered image",
    markdown,
    rows: (["nix", "layered"] as const).map((side) => ({ side, samples: r.cold[side] })),
    meta: { reps: REPS, quick: opts.quick, result: r, speedup, bytesPercent, cacheRatio, targets: TARGETS },
  };
}

async function teardown(env: Env): Promise<void> {
  if (env.containerd) {
    const c = env.containerd;
    env.containerd = undefined;
    await clearNamespace(c, NS, progress);
    await c.stop().catch((e: unknown) => progress(`stopping containerd (pid ${c.pid}): ${String(e)}`));
  }
  if (env.daemon) {
    const d = env.daemon;
    env.daemon = undefined;
    await d.stop("SIGTERM", 15_000);
  }
  await env.registry?.stop().catch(() => undefined);
  await new Promise<void>((resolve) => (env.cache ? env.cache.close(() => resolve()) : resolve()));
  killStartedProcesses();
  env.tmp.cleanup();
  removeStaleAutoRoots(env.tmp.path);
  // The daemon's roots lived in the temp dir: nothing keeps the run's paths now.
  const left = [...env.built, ...env.derivations].filter((p) => lstatSync(p, { throwIfNoEntry: false }));
  if (left.length > 0 && !(await tryDelete(left))) progress(`could not delete the run's ${left.length} store paths`);
}

benchMain<Env>({
  name: "pull",
  opts,
  preflight: () => missingBuild([NIX2CONTAINER_BIN, path.join(REPO, "build/src/cli/nix-snapshotter.js")]),
  init: () => {
    const tmp = tempDir("nix-snapshotter-bench-pull-");
    return { tmp, daemonLog: path.join(tmp.path, "nix-snapshotter.log"), built: [], derivations: [] };
  },
  run: async (env) => report(await run(env)),
  teardown,
  logs: (env) => ({
    "nix-snapshotter log": env.daemonLog,
    ...(env.containerd ? { "containerd log": path.join(env.containerd.dir, "containerd.log") } : {}),
    ...(env.registry ? { "registry log": env.registry.log } : {}),
  }),
});
