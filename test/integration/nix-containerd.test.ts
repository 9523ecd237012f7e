/**
 * Nix images under a real containerd with real Nix: images whose layer
 * carries no package bytes, only store-path annotations, are imported
 * through containerd's Transfer service (the path that hands layer
 * annotations to the snapshotter as labels) and run with `ctr run`.
 *
 *   - hello prints "Hello, world!"; redis answers PONG on the host network;
 *   - inside a container /nix/store holds exactly the image's closure;
 *   - a nix layer on top of an ordinary base layer sees both;
 *   - a closure of 1,000+ store paths runs;
 *   - hostile store-path annotations fail the import with a message naming
 *     the problem and leave nothing behind in our daemon or in containerd;
 *   - removed images are garbage collected by containerd, after which none
 *     of our roots keeps their paths alive, and a fresh closure can be
 *     deleted from the store (and cannot while its image exists);
 *   - a closure missing from the local store is substituted from an HTTP
 *     binary cache on unpack.
 *
 * One nix-snapshotter and one private containerd serve everything but the
 * binary-cache case, which needs a daemon started with its own NIX_CONFIG.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import t from "tap";
import type { Test } from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { buildLayer, type LayerEntry } from "../../src/image/layer.js";
import { mountpointEntries, nixLayerAnnotations } from "../../src/image/nix-image.js";
import type { StorePath } from "../../src/nix/store-path.js";
import type { Info } from "../../src/snapshotter/snapshotter.js";
import { killTasks, startContainerd, type Containerd } from "../../devenv/containerd.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, buildNixImageArchive, helloImage, redisImage, waitForPong, type Fixtures } from "../../devenv/images.js";
import { CLOSURE_INFO_NIX, closureInfoOf, closureList, closureOf, isValid, nixBuild, nonce, prelude, storeListing, tryDelete, unrootedBelow } from "../lib/nix.js";
import { requireOrSkip } from "../lib/require.js";
import { entries, freePort, listAll, tail } from "../lib/util.js";
import { tempDir, type TempDir } from "../lib/tmp.js";

const run = promisify(execFile);

// Our own namespace and container ids: runc state (/run/containerd/runc/<ns>/<id>)
// and shim sockets are shared with any other containerd on this host.
const NAMESPACE = `nixctr-${randomBytes(3).toString("hex")}`;
const newId = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

/** Fixture out-links (GC roots) live here across runs, so rebuilding is a no-op. */
const FIXTURES_DIR = path.join(REPO, "build/test-fixtures");

const LAYER_LABEL = "containerd.io/snapshot/nix-layer";
const PATH_LABEL = "containerd.io/snapshot/nix-store-path.";
const CLOSURE_LABEL = "containerd.io/snapshot/nix-closure";

// --- helpers ------------------------------------------------------------------


/**
 * A fresh three-path closure (app -> lib -> data) that nothing roots, and a
 * closureInfo over it and busybox (to have a program that can read it).
 */
async function freshClosure(busybox: string): Promise<{ app: string; lib: string; closure: string[]; info: string }> {
  const n = nonce();
  const [app, info] = await nixBuild(`${prelude(n)}
    let data = mk "data" "echo data-${n} > $out";
        lib = mk "lib" "mkdir -p $out; echo ${"${data}"} > $out/ref";
        app = mk "app" "mkdir -p $out/bin; echo ${"${lib}"} > $out/bin/app";
        info = import ${CLOSURE_INFO_NIX} { rootPaths = [ app ]; storePaths = [ ${JSON.stringify(busybox)} ]; };
    in [ app info ]`);
  const closure = await closureOf(app!);
  const lib = closure.find((p) => p.endsWith("-lib"))!;
  return { app: app!, lib, closure, info: info! };
}

interface Stack {
  tmp: TempDir;
  snRoot: string;
  snAddress: string;
  snLog: string;
  ctrdLog: string;
  daemon: DaemonProcess;
  ctrd: Containerd;
  /** Our daemon's socket, not containerd's: what really exists. */
  direct: SnapshotsClient;
  ctr(args: string[], timeoutMs?: number): Promise<string>;
  /** Imports through the Transfer service, which hands layer annotations to the snapshotter. */
  importImage(archive: string): Promise<string>;
}

/** Our daemon and a private containerd, both stopped by PID (and logs printed on failure) at teardown. */
async function startStack(t: Test, name: string, env?: Record<string, string>): Promise<Stack> {
  const tmp = tempDir(`nix-snapshotter-${name}-`);
  const snRoot = path.join(tmp.path, "sn/root");
  const snAddress = path.join(tmp.path, "sn/run/nix-snapshotter.sock");
  const snLog = path.join(tmp.path, "sn/daemon.log");
  const ctrdDir = path.join(tmp.path, "containerd");
  const ctrdLog = path.join(ctrdDir, "containerd.log");
  let daemon: DaemonProcess | undefined;
  let ctrd: Containerd | undefined;
  let direct: SnapshotsClient | undefined;
  t.teardown(async () => {
    if (!t.passing()) {
      console.error(`# --- nix-snapshotter log ${snLog} (tail) ---\n${tail(snLog)}`);
      console.error(`# --- containerd log ${ctrdLog} (tail) ---\n${tail(ctrdLog, 60, /msg="loading plugin/)}`);
    }
    await direct?.close();
    if (ctrd) {
      await killTasks(ctrd, NAMESPACE);
      await ctrd.stop();
    }
    await daemon?.stop("SIGTERM", 10_000);
    tmp.cleanup();
  });
  daemon = await startDaemonProcess({ root: snRoot, address: snAddress, logFile: snLog, logLevel: "debug", ...(env ? { env } : {}) });
  ctrd = await startContainerd({ dir: ctrdDir, snapshotterAddress: snAddress, logLevel: "info" });
  direct = new SnapshotsClient({ address: snAddress });
  const c = ctrd;
  const ctr = (args: string[], timeoutMs = 120_000) => c.ctr(args, { namespace: NAMESPACE, timeoutMs });
  t.comment(`${name}: state in ${tmp.path}; logs: ${snLog}, ${ctrdLog}`);
  return {
    tmp,
    snRoot,
    snAddress,
    snLog,
    ctrdLog,
    daemon,
    ctrd,
    direct,
    ctr,
    importImage: (archive) => ctr(["images", "import", "--local=false", "--snapshotter", "nix", archive], 300_000),
  };
}

async function imageRefs(s: Stack): Promise<string[]> {
  return (await s.ctr(["images", "ls", "-q"])).split("\n").filter(Boolean);
}

/** Kills a detached container's task, then removes task and container. */
async function removeContainer(s: Stack, id: string): Promise<void> {
  await s.ctr(["tasks", "kill", "-s", "SIGKILL", id]).catch(() => undefined);
  for (let i = 0; i < 100; i++) {
    const tasks = await s.ctr(["tasks", "ls"]);
    if (!new RegExp(`^${id}\\s+\\d+\\s+RUNNING`, "m").test(tasks)) break;
    await sleep(100);
  }
  await s.ctr(["tasks", "rm", "-f", id]).catch(() => undefined);
  await s.ctr(["containers", "rm", id]);
}

/** Waits (bounded) until our daemon holds exactly `want` snapshots and as many directories. */
async function waitForSnapshotCount(s: Stack, want: number, ms = 15_000): Promise<{ left: Info[]; dirs: string[]; roots: string[] }> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = await listAll(s.direct);
    const dirs = entries(path.join(s.snRoot, "snapshots"));
    const roots = entries(path.join(s.snRoot, "gcroots"));
    if ((left.length === want && dirs.length === want) || Date.now() > deadline) return { left, dirs, roots };
    await sleep(250);
  }
}

// --- the tests -------------------------------------------------------------------

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "nix-build", "nix-store", "nix", "redis-cli", "gcc", "patchelf"] })) {
  const started = Date.now();
  let fixtures: Fixtures;
  t.before(async () => {
    // The sizes asserted below assume the default 1,000-leaf `many` fixture.
    fixtures = await buildFixtures(FIXTURES_DIR, { MANY_N: "1000" });
  });
  t.teardown(() => {
    console.log(`# nix-containerd: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });

  t.test("nix images under containerd", async (t) => {
    const f = fixtures;
    const s = await startStack(t, "nixctr");
    const imagesDir = path.join(s.tmp.path, "images");
    mkdirSync(imagesDir, { recursive: true });
    const helloClosure = closureList(f["hello-closure"]);
    const redisClosure = closureList(f["redis-closure"]);

    // First, while our daemon holds nothing: hostile images must leave it empty.
    await t.test("hostile store-path annotations fail the import and leave nothing behind", async (t) => {
      const n = nonce();
      const [escape] = await nixBuild(`${prelude(n)} mk "escape" "ln -s /etc $out"`);
      const hash = "0".repeat(32);
      const labels = (paths: string[]) => nixLayerAnnotations(paths as StorePath[]);
      const tooMany: Record<string, string> = { [LAYER_LABEL]: "true" };
      for (let i = 0; i < 100_000; i++) tooMany[`${PATH_LABEL}${i}`] = f.hello;
      const cases: { name: string; annotations: Record<string, string>; want: RegExp }[] = [
        { name: "etc", annotations: labels(["/etc"]), want: /invalid store path "\/etc": not in \/nix\/store/ },
        { name: "dotdot", annotations: labels(["/nix/store/../etc"]), want: /invalid store path "\/nix\/store\/\.\.\/etc"/ },
        { name: "symlink-escape", annotations: labels([escape!]), want: /is a symlink that leads out of \/nix\/store \(to \/etc\)/ },
        { name: "newline", annotations: labels([`/nix/store/${hash}-evil\nname`]), want: /characters Nix does not allow/ },
        { name: "closure-outside", annotations: { [LAYER_LABEL]: "true", [CLOSURE_LABEL]: "/etc/passwd" }, want: /nix-closure.*not in \/nix\/store/ },
        { name: "100k-labels", annotations: tooMany, want: /more than 16384 store path labels/ },
      ];
      for (const c of cases) {
        const ref = `docker.io/nixctr/hostile-${c.name}:${n}`;
        const archive = path.join(imagesDir, `hostile-${c.name}.tar`);
        const t0 = Date.now();
        const layer: LayerEntry[] = [{ type: "file", path: `hostile/${c.name}`, content: `${c.name} ${n}\n` }];
        await writeImageArchive(
          { layers: [{ tar: await buildLayer(layer), annotations: c.annotations }], config: { Entrypoint: ["/bin/sh"] }, ref },
          archive,
        );
        const writeMs = Date.now() - t0;
        if (c.name === "100k-labels") {
          const size = statSync(archive).size;
          t.comment(`100,000 annotations: archive ${(size / 1e6).toFixed(1)} MB, written in ${writeMs} ms`);
          t.ok(size < 32e6, `the 100k-annotation archive stays reasonably small (${size} bytes)`);
          t.ok(writeMs < 30_000, `and is written in reasonable time (${writeMs} ms)`);
        }
        const t1 = Date.now();
        const err = await s.importImage(archive).then(
          (out) => new Error(`import succeeded: ${out}`),
          (e: Error) => e,
        );
        const importMs = Date.now() - t1;
        t.comment(`${c.name}: import failed after ${importMs} ms with: ${err.message.replace(/\s+/g, " ").slice(0, 600)}`);
        t.notMatch(err.message, /^import succeeded/, `${c.name}: the import fails`);
        t.match(err.message, c.want, `${c.name}: containerd reports our message naming the problem`);
        if (s.ctrd.binaries.major < 2) t.match(err.message, /code = InvalidArgument/, `${c.name}: with our gRPC code, InvalidArgument`);
        // 2.x's ctr prints the Transfer service's error text without the gRPC code.
        else t.notMatch(err.message, /code = (Unknown|Internal)/, `${c.name}: and not as an unknown or internal error`);
        t.ok(importMs < 60_000, `${c.name}: and fails in reasonable time (${importMs} ms)`);

        // Nothing left: not in our daemon, not on its disk, not as a GC root.
        const { left, dirs, roots } = await waitForSnapshotCount(s, 0, 2_000);
        t.same(left.map((i) => `${i.kind} ${i.name}`), [], `${c.name}: our daemon lists no snapshot`);
        t.same(dirs, [], `${c.name}: no directory under ${s.snRoot}/snapshots`);
        t.same(roots, [], `${c.name}: no directory under ${s.snRoot}/gcroots`);
        // Whatever image record containerd kept must not run.
        const refs = await imageRefs(s);
        if (refs.includes(ref)) t.comment(`${c.name}: containerd kept an image record for ${ref}`);
        const runErr = await s.ctr(["run", "--rm", "--snapshotter", "nix", ref, newId(`hostile-${c.name}`)], 60_000).then(
          (out) => new Error(`ran: ${out}`),
          (e: Error) => e,
        );
        t.notMatch(runErr.message, /^ran: /, `${c.name}: ctr run of the image fails`);
        t.comment(`${c.name}: ctr run: ${runErr.message.replace(/\s+/g, " ").slice(0, 300)}`);
        if (refs.includes(ref)) await s.ctr(["images", "rm", "--sync", ref]);
        // A failed run may have created a container record.
        for (const id of (await s.ctr(["containers", "ls", "-q"])).split("\n").filter(Boolean)) await s.ctr(["containers", "rm", id]);
        const after = await waitForSnapshotCount(s, 0, 5_000);
        t.same(after.left.map((i) => `${i.kind} ${i.name}`), [], `${c.name}: still no snapshot after the run attempt`);
        t.same(after.roots, [], `${c.name}: still no GC root after the run attempt`);
      }
      t.same(await imageRefs(s), [], "no image record is left");
      t.same(await unrootedBelow([escape!, f.hello], s.snRoot), [escape!, f.hello], "no root of ours keeps a path a hostile image named");
      const viaContainerd = new SnapshotsClient({ address: s.ctrd.address, snapshotter: "nix", namespace: NAMESPACE });
      try {
        t.same((await listAll(viaContainerd)).map((i) => i.name), [], "containerd's own snapshot metadata for nix is empty too");
      } finally {
        await viaContainerd.close();
      }
      // The Transfer service's lease goes with the failed import, and containerd's GC takes the blobs.
      const rows = async (args: string[]) => (await s.ctr(args)).split("\n").slice(1).filter(Boolean);
      const deadline = Date.now() + 10_000;
      let leases = await rows(["leases", "ls"]);
      let content = await rows(["content", "ls"]);
      while ((leases.length > 0 || content.length > 0) && Date.now() < deadline) {
        await sleep(250);
        leases = await rows(["leases", "ls"]);
        content = await rows(["content", "ls"]);
      }
      t.same(leases, [], "containerd holds no lease from the failed imports");
      t.same(content, [], "nor any of their blobs");
    });

    await t.test("hello runs: ctr run prints exactly Hello, world!", async (t) => {
      const hello = await helloImage(imagesDir, f);
      await s.importImage(hello.archive);
      t.ok((await imageRefs(s)).includes(hello.ref), "image imported");
      const nix = (await listAll(s.direct)).filter((i) => i.labels[LAYER_LABEL] === "true");
      t.equal(nix.length, 1, "one nix layer in our daemon");
      t.equal(nix[0]?.kind, "committed", "committed");
      const out = await s.ctr(["run", "--rm", "--snapshotter", "nix", hello.ref, newId("hello")]);
      t.equal(out, "Hello, world!\n", "hello prints exactly Hello, world!");
    });

    await t.test("redis runs on the host network and answers PONG", async (t) => {
      const port = await freePort();
      const img = await redisImage(imagesDir, f, port);
      await s.importImage(img.archive);
      const id = newId("redis");
      await s.ctr(["run", "-d", "--net-host", "--snapshotter", "nix", img.ref, id]);
      try {
        t.equal(await waitForPong(port, 20_000), "PONG", `redis-cli -p ${port} ping answers PONG from the host`);
      } finally {
        await removeContainer(s, id);
      }
      t.notOk((await s.ctr(["containers", "ls", "-q"])).includes(id), "task and container removed");
    });

    const bbHelloInfo = await closureInfoOf([f.busybox, f.hello]);
    const bbHelloClosure = closureList(bbHelloInfo);
    await t.test("inside a container /nix/store holds exactly the image's closure", async (t) => {
      t.ok(bbHelloClosure.includes(f.busybox) && bbHelloClosure.includes(f.hello), "the closure holds busybox and hello");
      const img = await buildNixImageArchive({
        dir: imagesDir,
        name: "busybox-hello",
        closureInfo: bbHelloInfo,
        config: { Entrypoint: [`${f.hello}/bin/hello`] },
      });
      await s.importImage(img.archive);
      const inside = await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("ls"), `${f.busybox}/bin/ls`, "-1A", "/nix/store"]);
      t.same(storeListing(inside), bbHelloClosure, `ls /nix/store lists the ${bbHelloClosure.length} closure paths and nothing else`);
      const out = await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("hello2")]);
      t.equal(out, "Hello, world!\n", "its entrypoint (hello) runs");
      const ro = await s.ctr([
        "run", "--rm", "--snapshotter", "nix", img.ref, newId("ro"),
        `${f.busybox}/bin/sh`, "-c", `${f.busybox}/bin/touch ${f.hello}/x 2>/dev/null && echo writable || echo read-only`,
      ]);
      t.equal(ro, "read-only\n", "store paths are read-only inside");
      const cat = await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("md5"), `${f.busybox}/bin/md5sum`, `${f.hello}/bin/hello`]);
      const host = (await run("md5sum", [`${f.hello}/bin/hello`])).stdout;
      t.equal(cat, host, "a store file reads the same inside as on the host");
    });

    await t.test("a nix layer on top of an ordinary base layer", async (t) => {
      const base: LayerEntry[] = [
        { type: "dir", path: "bin", mode: 0o755 },
        { type: "file", path: "bin/busybox", content: readFileSync("/bin/busybox"), mode: 0o755 },
        { type: "file", path: "etc/base-file", content: "from the base layer\n" },
      ];
      const paths = helloClosure as StorePath[];
      const ref = `docker.io/nixctr/based:${nonce()}`;
      const archive = path.join(imagesDir, "based.tar");
      await writeImageArchive(
        {
          layers: [
            { tar: await buildLayer(base) },
            { tar: await buildLayer(await mountpointEntries(paths)), annotations: nixLayerAnnotations(paths, path.join(f["hello-closure"], "store-paths")) },
          ],
          config: { Entrypoint: [`${f.hello}/bin/hello`] },
          ref,
        },
        archive,
      );
      await s.importImage(archive);
      const infos = await listAll(s.direct);
      const byName = new Map(infos.map((i) => [i.name, i]));
      const stacked = infos.filter((i) => i.labels[LAYER_LABEL] === "true" && i.parent !== "" && byName.get(i.parent)?.labels[LAYER_LABEL] === undefined);
      t.equal(stacked.length, 1, "our daemon holds a nix layer whose parent is an ordinary layer");
      const baseFile = await s.ctr(["run", "--rm", "--snapshotter", "nix", ref, newId("base"), "/bin/busybox", "cat", "/etc/base-file"]);
      t.equal(baseFile, "from the base layer\n", "the base layer's file is there");
      const out = await s.ctr(["run", "--rm", "--snapshotter", "nix", ref, newId("based-hello")]);
      t.equal(out, "Hello, world!\n", "a program from the nix layer's store paths runs");
      const inside = await s.ctr(["run", "--rm", "--snapshotter", "nix", ref, newId("based-ls"), "/bin/busybox", "ls", "-1A", "/nix/store"]);
      t.same(storeListing(inside), helloClosure, "/nix/store holds exactly the nix layer's closure");
      await s.ctr(["images", "rm", "--sync", ref]);
    });

    await t.test("a closure of 1,000 store paths runs", async (t) => {
      const manyClosure = await closureOf(f.many);
      t.equal(manyClosure.length, 1004, "the many fixture has 1004 paths (1000 leaves, top, hello, libc, loader)");
      const info = await closureInfoOf([f.many, f.busybox]);
      const closure = closureList(info);
      t.equal(closure.length, 1005, "with busybox: 1005 paths");
      const img = await buildNixImageArchive({ dir: imagesDir, name: "many", closureInfo: info, config: { Entrypoint: [`${f.many}/bin/hello`] } });
      const t0 = Date.now();
      await s.importImage(img.archive);
      const importMs = Date.now() - t0;
      const t1 = Date.now();
      const out = await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("many")]);
      const runMs = Date.now() - t1;
      t.equal(out, "Hello, world!\n", "the hello inside the 1,000-path closure prints Hello, world!");
      const inside = storeListing(await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("many-ls"), `${f.busybox}/bin/ls`, "-1A", "/nix/store"]));
      t.equal(inside.length, 1005, "/nix/store has 1005 entries inside");
      t.same(inside, closure, "exactly the closure");
      t.ok(manyClosure.every((p) => inside.includes(p)), "every one of the 1004 paths of the many fixture");
      const leaf = manyClosure.find((p) => /-leaf\d+$/.test(p))!;
      const data = await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("many-cat"), `${f.busybox}/bin/cat`, `${leaf}/data`]);
      t.equal(data, readFileSync(`${leaf}/data`, "utf8"), "a leaf's file reads as on the host");
      t.comment(`1005-path image: import ${importMs} ms, ctr run ${runMs} ms`);
      await s.ctr(["images", "rm", "--sync", img.ref]);
    });

    await t.test("GC: removed images leave no snapshots and no roots; a fresh closure becomes collectable", async (t) => {
      t.same(
        (await s.ctr(["containers", "ls", "-q"])).split("\n").filter(Boolean),
        [],
        "no containers are left (ctr run --rm and the redis teardown removed theirs)",
      );
      for (const ref of await imageRefs(s)) await s.ctr(["images", "rm", "--sync", ref]);
      t.same(await imageRefs(s), [], "every image removed");
      const { left, dirs, roots } = await waitForSnapshotCount(s, 0);
      t.same(left.map((i) => `${i.kind} ${i.name}`), [], "containerd's GC removed every snapshot of ours");
      t.same(dirs, [], "no snapshot directory left");
      t.same(roots, [], "no GC root directory left");
      const paths = [...new Set([...helloClosure, ...redisClosure, f["hello-closure"], f["redis-closure"], f.busybox, f.many])].sort();
      t.same(await unrootedBelow(paths, s.snRoot), paths, "nothing below our root keeps hello's, redis's or the others' paths alive");

      // Collectability without a global GC: a closure nothing else roots.
      const fresh = await freshClosure(f.busybox);
      t.equal(fresh.closure.length, 3, "a fresh three-path closure");
      const img = await buildNixImageArchive({
        dir: imagesDir,
        name: "fresh",
        closureInfo: fresh.info,
        config: { Entrypoint: [`${f.busybox}/bin/cat`, `${fresh.app}/bin/app`] },
      });
      await s.importImage(img.archive);
      t.equal(await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("fresh")]), `${fresh.lib}\n`, "the fresh image runs");
      const doomed = [...fresh.closure, fresh.info];
      t.notOk(await tryDelete(doomed), "while the image exists, nix-store --delete refuses its closure");
      for (const p of doomed) t.ok(await isValid(p), `${path.basename(p)} is still valid`);
      await s.ctr(["images", "rm", "--sync", img.ref]);
      const after = await waitForSnapshotCount(s, 0);
      t.same(after.left.map((i) => `${i.kind} ${i.name}`), [], "its snapshot is collected");
      t.same(after.roots, [], "and its roots");
      t.same(await unrootedBelow(doomed, s.snRoot), doomed, "no root of ours keeps the fresh closure");
      t.ok(await tryDelete(doomed), "once the image is removed, nix-store --delete deletes the closure");
      for (const p of doomed) t.notOk(await isValid(p), `${path.basename(p)} is gone from the store`);
    });
  });

  t.test("store paths missing locally are substituted from an HTTP binary cache on unpack", async (t) => {
    const f = fixtures;
    const tmp = tempDir("nix-snapshotter-cache-");
    t.teardown(() => tmp.cleanup());
    const cache = path.join(tmp.path, "cache");
    const fresh = await freshClosure(f.busybox);
    const img = await buildNixImageArchive({
      dir: path.join(tmp.path, "images"),
      name: "cached",
      closureInfo: fresh.info,
      config: { Entrypoint: [`${f.busybox}/bin/cat`, `${fresh.app}/bin/app`] },
    });
    const doomed = [...fresh.closure, fresh.info];
    try {
      await run("nix", ["copy", "--to", `file://${cache}?compression=none`, fresh.info], { maxBuffer: 16 * 1024 * 1024 });
    } catch (err) {
      throw new Error(`nix copy failed: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`);
    }
    t.ok(existsSync(path.join(cache, "nix-cache-info")), "nix copy wrote a binary cache (nix-cache-info)");
    for (const p of doomed) {
      t.ok(existsSync(path.join(cache, `${path.basename(p).slice(0, 32)}.narinfo`)), `${path.basename(p)} is in the cache`);
    }

    // A tiny static file server for the cache directory; it records what Nix asks for.
    const requests: string[] = [];
    const server = http.createServer((req, res) => {
      const url = decodeURIComponent((req.url ?? "/").split("?")[0]!);
      requests.push(`${req.method} ${url}`);
      const file = path.join(cache, path.normalize(url));
      if (!file.startsWith(cache + "/")) {
        res.writeHead(403).end();
        return;
      }
      readFile(file).then(
        (body) => {
          res.writeHead(200, { "content-length": body.length });
          res.end(req.method === "HEAD" ? undefined : body);
        },
        () => res.writeHead(404).end(),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;

    t.ok(await tryDelete(doomed), "nothing roots the fresh closure: deleted from the local store");
    for (const p of doomed) t.notOk(await isValid(p), `${path.basename(p)} is not in the local store`);

    // Nix reads extra settings from NIX_CONFIG; /etc/nix/nix.conf sets no substituters.
    const env = { NIX_CONFIG: `substituters = ${url}\nrequire-sigs = false`, no_proxy: "127.0.0.1", NO_PROXY: "127.0.0.1" };
    const s = await startStack(t, "nixcache", env);
    try {
      await s.importImage(img.archive);
    } catch (err) {
      t.comment(`cache requests: ${requests.join(", ")}`);
      throw err;
    }
    t.ok(requests.some((r) => r.endsWith(`/${path.basename(fresh.info).slice(0, 32)}.narinfo`)), "Nix asked the HTTP cache for the closure's narinfo");
    t.ok(requests.some((r) => r.startsWith("GET /nar/")), "and downloaded NARs from it");
    t.comment(`binary cache requests: ${requests.length} (${requests.filter((r) => r.includes("/nar/")).length} NARs)`);
    for (const p of doomed) t.ok(await isValid(p), `${path.basename(p)} is valid in the local store again`);
    const out = await s.ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("cached")]);
    t.equal(out, `${fresh.lib}\n`, "the image runs from the substituted paths");
    await s.ctr(["images", "rm", "--sync", img.ref]);
    const after = await waitForSnapshotCount(s, 0);
    t.same(after.left.map((i) => `${i.kind} ${i.name}`), [], "removing the image removes its snapshot");
    t.ok(await tryDelete(doomed), "and the substituted closure can be deleted again");
  });
}
