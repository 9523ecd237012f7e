/**
 * Store views (store_view = "tree") with real Nix, real mounts, and a real
 * containerd and runc:
 *   - a container sees exactly its closure under /nix/store, read-only,
 *     through one bind of a tree of hard links (the host's own inodes);
 *   - two nix layers in a chain: the top one's view holds both closures;
 *   - the view is built at Commit, survives a restart, goes with Remove;
 *   - a leftover .build-* (a builder killed by kill -9) and a view of no
 *     layer are removed at start;
 *   - a store on another filesystem: one warn line, per-path binds;
 *   - a store that is a read-only bind mount of itself (as on NixOS):
 *     views are built all the same;
 *   - store_view = "binds": no view, per-path binds;
 *   - a store path deleted by force: the view still holds its files;
 *   - through containerd, ctr run: the closure, read-only, same inodes.
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { createLogger } from "../../src/log.js";
import type { Mount, Snapshotter } from "../../src/snapshotter/snapshotter.js";
import { NixStoreRealiser } from "../../src/nix/realise.js";
import { killTasks, startContainerd } from "../../devenv/containerd.js";
import { REPO, startDaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, buildNixImageArchive } from "../../devenv/images.js";
import { withMounts } from "../lib/mount.js";
import { closureInfoOf, closureList, closureOf, nixBuild, nonce, prelude, storeListing } from "../lib/nix.js";
import { nixLabels, openNixSnapshotter } from "../lib/nix-layer.js";
import { requireOrSkip } from "../lib/require.js";
import { listAll, tail } from "../lib/util.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);
const FIXTURES_DIR = path.join(REPO, "build/test-fixtures");
const NAMESPACE = `storeview-${randomBytes(3).toString("hex")}`;
const newId = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

/** A fresh three-path closure: app -> lib -> data (a file). */
async function buildClosure(): Promise<string[]> {
  const n = nonce();
  const [app] = await nixBuild(`${prelude(n)}
    let data = mk "data" "echo data-${n} > $out";
        lib = mk "lib" "mkdir -p $out/share; echo ${"${data}"} > $out/share/ref; ln -s share $out/link";
        app = mk "app" "mkdir -p $out/bin; echo ${"${lib}"} > $out/bin/app";
    in app`);
  return closureOf(app!);
}

function capture(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger("debug", (l) => lines.push(l)), lines };
}

const storeMounts = (ms: Mount[]) => ms.filter((m) => m.target);

/** Mounts a container's mounts at mp (after making their mountpoints in its rootfs, as the differ would) and runs fn. */
async function inside<T>(ms: Mount[], mp: string, fn: () => Promise<T>): Promise<T> {
  mkdirSync(mp, { recursive: true });
  await withMounts([ms[0]!], mp, async () => {
    mkdirSync(path.join(mp, "nix/store"), { recursive: true });
    for (const m of storeMounts(ms)) {
      const target = path.join(mp, m.target!);
      if (statSync(m.source).isDirectory()) mkdirSync(target, { recursive: true });
      else writeFileSync(target, "");
    }
  });
  return withMounts(ms, mp, fn);
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 60_000, every = 100): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(every);
  }
}

if (requireOrSkip(t, { root: true, commands: ["nix-store", "nix-build", "unshare"] })) {
  t.test("tree: one read-only bind of a view holding exactly the closure, the store's own inodes", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const { log, lines } = capture();
    const sn = await openNixSnapshotter(root, new NixStoreRealiser(), { logger: log });
    t.teardown(() => sn.close());
    const closure = await buildClosure();
    await sn.prepare("x", "", { labels: nixLabels(closure) });
    await sn.commit("layer", "x");
    await sn.views.settled();
    const view = path.join(root, "store-views", "1");
    t.same(readdirSync(view).sort(), closure.map((p) => path.basename(p)), "the view of layer 1 holds one entry per store path");
    const ms = await sn.prepare("ctr", "layer");
    t.same(storeMounts(ms), [{ type: "bind", source: view, target: "/nix/store", options: ["ro", "rbind"] }], "one read-only bind of the view onto /nix/store");
    t.same(await sn.mounts("ctr"), ms, "Mounts repeats it");
    t.same(storeMounts(await sn.view("v", "layer")), storeMounts(ms), "a view snapshot gets it too");
    await inside(ms, path.join(tmp.path, "mnt"), async () => {
      const mp = path.join(tmp.path, "mnt");
      t.same(readdirSync(path.join(mp, "nix/store")).map((b) => `/nix/store/${b}`).sort(), closure, "inside, /nix/store holds exactly the closure");
      const app = closure.find((p) => p.endsWith("-app"))!;
      const lib = closure.find((p) => p.endsWith("-lib"))!;
      const data = closure.find((p) => p.endsWith("-data"))!;
      const file = `${app}/bin/app`;
      t.equal(statSync(path.join(mp, file)).ino, statSync(file).ino, "a file inside is the host store file's inode");
      t.equal(statSync(path.join(mp, data)).ino, statSync(data).ino, "a store path that is a file too");
      t.equal(readFileSync(path.join(mp, lib, "link/ref"), "utf8"), `${data}\n`, "symlinks are recreated");
      t.equal(statSync(path.join(mp, lib, "share")).mode & 0o7777, statSync(`${lib}/share`).mode & 0o7777, "directories keep the store's mode");
      const err = await run("sh", ["-c", `touch ${path.join(mp, app, "x")}`]).then(() => "", (e: { stderr: string }) => e.stderr);
      t.match(err, /Read-only file system/, "the store is read-only inside");
    });
    t.equal(lines.filter((l: string) => l.includes("level=warn")).length, 0, "no warning");
    t.equal(lines.filter((l: string) => l.includes("store view built")).length, 1, "the view was built once");

    // A store path deleted by force: the view holds its files (hard links), so the container keeps them.
    const app = closure.find((p) => p.endsWith("-app"))!;
    const before = readFileSync(`${app}/bin/app`, "utf8");
    await run("nix-store", ["--delete", "--ignore-liveness", app]);
    t.notOk(existsSync(app), "the store path is gone from the store");
    t.same(await sn.mounts("ctr"), ms, "Mounts still returns the view");
    t.equal(readFileSync(path.join(view, path.basename(app), "bin/app"), "utf8"), before, "which still holds the file");

    await sn.remove("ctr");
    await sn.remove("v");
    await sn.remove("layer");
    t.notOk(existsSync(view), "Remove of the layer removes its view");
  });

  t.test("two nix layers in a chain: the top layer's view covers both", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    const a = await buildClosure();
    const b = await buildClosure();
    await sn.prepare("xa", "", { labels: nixLabels(a) });
    await sn.commit("a", "xa");
    await sn.prepare("xb", "a", { labels: nixLabels(b) });
    await sn.commit("b", "xb");
    await sn.views.settled();
    const ms = await sn.prepare("ctr", "b");
    t.same(storeMounts(ms).map((m) => m.source), [path.join(root, "store-views", "2")], "the view of the top nix layer");
    t.same(readdirSync(path.join(root, "store-views", "2")).sort(), [...a, ...b].map((p) => path.basename(p)).sort(), "holding the paths of both layers");
  });

  t.test("restart keeps views; orphans and interrupted builds are removed at start", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const closure = await buildClosure();
    let sn: Snapshotter & { views: { settled(): Promise<void> } } = await openNixSnapshotter(root);
    await sn.prepare("x", "", { labels: nixLabels(closure) });
    await sn.commit("layer", "x");
    await sn.views.settled();
    await sn.close();
    const views = path.join(root, "store-views");
    const viewIno = statSync(path.join(views, "1")).ino;

    // A builder killed by kill -9 half-way through a tree of 20,000 files.
    const [big] = await nixBuild(`${prelude(nonce())} mk "big" "mkdir $out; cd $out; i=0; while [ $i -lt 20000 ]; do : > f$i; i=$((i+1)); done"`);
    const builder = spawn(process.execPath, [path.join(REPO, "build/src/snapshotter/store-view-builder.js"), path.join(views, ".build-7-deadbeef")], { stdio: ["pipe", "ignore", "ignore"] });
    builder.stdin.end(`${big}\n`);
    await waitFor(() => existsSync(path.join(views, ".build-7-deadbeef", path.basename(big!), "f1")), "the builder to begin", 60_000, 2);
    builder.kill("SIGKILL");
    await new Promise((r) => builder.once("exit", r));
    // A view whose layer is gone (a crash between Remove's two steps).
    mkdirSync(path.join(views, "42", "x"), { recursive: true });
    t.same(readdirSync(views).sort(), [".build-7-deadbeef", "1", "42"], "before the restart: the view, an interrupted build, an orphan");

    const { log, lines } = capture();
    sn = await openNixSnapshotter(root, new NixStoreRealiser(), { logger: log });
    t.teardown(() => sn.close());
    await sn.cleanup(); // the daemon's start-up repair
    t.same(readdirSync(views), ["1"], "after it: only the view of the existing layer");
    const ms = await sn.prepare("ctr", "layer");
    t.same(storeMounts(ms).map((m) => m.source), [path.join(views, "1")], "the view is used after the restart");
    t.equal(statSync(path.join(views, "1")).ino, viewIno, "not rebuilt");
    t.equal(lines.filter((l: string) => l.includes("store view built")).length, 0, "no build after the restart");
    await sn.remove("ctr");
    await sn.remove("layer");
    t.same(readdirSync(views), [], "Remove takes the view");
  });

  t.test("store on another filesystem: one warn line, per-path binds that work", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "tmpfs");
    mkdirSync(root);
    await run("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", root]);
    t.teardown(() => run("umount", ["-l", root]).then(() => undefined));
    const { log, lines } = capture();
    const sn = await openNixSnapshotter(path.join(root, "root"), new NixStoreRealiser(), { logger: log });
    t.teardown(() => sn.close());
    const a = await buildClosure();
    const b = await buildClosure();
    await sn.prepare("xa", "", { labels: nixLabels(a) });
    await sn.commit("a", "xa");
    await sn.views.settled();
    await sn.prepare("xb", "", { labels: nixLabels(b) });
    await sn.commit("b", "xb");
    await sn.views.settled();
    const ms = await sn.prepare("ctr", "a");
    await sn.views.settled();
    t.same(storeMounts(ms).map((m) => m.target), a, "per-path binds");
    t.same(storeMounts(await sn.prepare("ctr-b", "b")).map((m) => m.target), b);
    const warns = lines.filter((l: string) => l.includes("level=warn"));
    t.equal(warns.length, 1, "exactly one warn line");
    t.match(warns[0], /store views unavailable.*another filesystem.*EXDEV/, "naming the reason");
    t.same(readdirSync(path.join(root, "root", "store-views")), [], "no view, no leftover build");
    await inside(await sn.mounts("ctr"), path.join(tmp.path, "mnt"), async () => {
      const mp = path.join(tmp.path, "mnt");
      t.same(readdirSync(path.join(mp, "nix/store")).map((x) => `/nix/store/${x}`).sort(), a, "the binds show the closure");
      const data = a.find((p) => p.endsWith("-data"))!;
      t.equal(readFileSync(path.join(mp, data), "utf8"), readFileSync(data, "utf8"), "and its files");
    });
  });

  t.test('store_view = "binds": no view is built', async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root, new NixStoreRealiser(), { storeView: "binds" });
    t.teardown(() => sn.close());
    const closure = await buildClosure();
    await sn.prepare("x", "", { labels: nixLabels(closure) });
    await sn.commit("layer", "x");
    const ms = await sn.prepare("ctr", "layer");
    await sn.views.settled();
    t.same(storeMounts(ms).map((m) => [m.source, m.target, m.options.join(",")]), closure.map((p) => [p, p, "ro,rbind"]), "one read-only bind per store path");
    t.same(readdirSync(path.join(root, "store-views")), [], "no view");
  });

  t.test("store as a read-only bind mount of itself (NixOS): views are built all the same", async (t) => {
    const tmp = tempDir();
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "run/sn.sock");
    const logFile = path.join(tmp.path, "daemon.log");
    const wrap = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", 'mount --bind /nix/store /nix/store && mount -o remount,bind,ro /nix/store && exec "$@"', "sh"];
    const daemon = await startDaemonProcess({ root, address, logFile, logLevel: "debug", wrap });
    const client = new SnapshotsClient({ address });
    t.teardown(async () => {
      if (!t.passing()) console.error(tail(logFile));
      await client.close();
      await daemon.stop("SIGTERM", 10_000);
      tmp.cleanup();
    });
    const closure = await buildClosure();
    await client.prepare("x", "", { labels: nixLabels(closure) });
    await client.commit("layer", "x");
    await waitFor(() => /store view built|level=warn/.test(readFileSync(logFile, "utf8")), "the view or a warning");
    const log = readFileSync(logFile, "utf8");
    t.notMatch(log, /level=warn/, "no fallback warning");
    t.match(log, /link\(\) crosses a mount on one filesystem/, "link() gave EXDEV across the store's bind mount");
    t.match(log, /store view built/, "the view was built");
    const ms = await client.prepare("ctr", "layer");
    t.same(storeMounts(ms).map((m) => m.source), [path.join(root, "store-views", "1")], "containers get the view");
    const f = path.join(root, "store-views", "1", path.basename(closure.find((p) => p.endsWith("-app"))!), "bin/app");
    t.equal(statSync(f).ino, statSync(closure.find((p) => p.endsWith("-app"))! + "/bin/app").ino, "hard links of the store's files");
  });
}

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "nix-build", "nix-store", "gcc", "patchelf"] })) {
  t.test("through containerd: ctr run sees exactly the closure, read-only, the host's inodes", async (t) => {
    const f = await buildFixtures(FIXTURES_DIR, { MANY_N: "1000" });
    const tmp = tempDir("nix-snapshotter-storeview-");
    const snRoot = path.join(tmp.path, "sn/root");
    const snAddress = path.join(tmp.path, "sn/run/sn.sock");
    const snLog = path.join(tmp.path, "sn/daemon.log");
    let daemon = await startDaemonProcess({ root: snRoot, address: snAddress, logFile: snLog, logLevel: "debug" });
    const ctrd = await startContainerd({ dir: path.join(tmp.path, "containerd"), snapshotterAddress: snAddress, logLevel: "info" });
    t.teardown(async () => {
      if (!t.passing()) console.error(tail(snLog));
      await killTasks(ctrd, NAMESPACE);
      await ctrd.stop();
      await daemon.stop("SIGTERM", 10_000);
      tmp.cleanup();
    });
    const ctr = (args: string[]) => ctrd.ctr(args, { namespace: NAMESPACE, timeoutMs: 120_000 });
    const info = await closureInfoOf([f.busybox, f.hello]);
    const closure = closureList(info);
    const img = await buildNixImageArchive({ dir: tmp.path, name: "bb-hello", closureInfo: info, config: { Entrypoint: [`${f.hello}/bin/hello`] } });
    await ctr(["images", "import", "--local=false", "--snapshotter", "nix", img.archive]);
    const direct = new SnapshotsClient({ address: snAddress });
    const layers = (await listAll(direct)).filter((i) => i.labels["containerd.io/snapshot/nix-layer"] === "true");
    await direct.close();
    t.equal(layers.length, 1, "one nix layer");
    await waitFor(() => readdirSync(path.join(snRoot, "store-views")).some((n) => !n.startsWith(".")), "the view, built at commit");
    const [viewId] = readdirSync(path.join(snRoot, "store-views"));
    t.same(readdirSync(path.join(snRoot, "store-views", viewId!)).map((b) => `/nix/store/${b}`).sort(), closure, "the view holds the closure");

    const bb = `${f.busybox}/bin`;
    const check = async (when: string) => {
      const ls = await ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("ls"), `${bb}/ls`, "-1A", "/nix/store"]);
      t.same(storeListing(ls), closure, `${when}: ls /nix/store lists exactly the ${closure.length} closure paths`);
      const ro = await ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("ro"), `${bb}/sh`, "-c", `${bb}/touch ${f.hello}/x 2>/dev/null && echo writable || echo read-only`]);
      t.equal(ro, "read-only\n", `${when}: the store is read-only inside`);
      const ino = await ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("ino"), `${bb}/stat`, "-c", "%i", `${f.hello}/bin/hello`]);
      t.equal(ino.trim(), String(statSync(`${f.hello}/bin/hello`).ino), `${when}: a store file inside is the host's inode`);
      t.equal(await ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("hello")]), "Hello, world!\n", `${when}: hello runs`);
      const mounts = await ctr(["run", "--rm", "--snapshotter", "nix", img.ref, newId("mounts"), `${bb}/cat`, "/proc/self/mountinfo"]);
      t.equal(mounts.split("\n").filter((l: string) => / \/nix\/store[ /]/.test(l)).length, 1, `${when}: one mount on /nix/store inside`);
    };
    await check("first daemon");

    await daemon.stop("SIGTERM", 10_000);
    daemon = await startDaemonProcess({ root: snRoot, address: snAddress, logFile: snLog, logLevel: "debug" });
    // containerd redials the proxy socket with a backoff: wait until it reaches the new daemon.
    await waitFor(() => ctr(["snapshots", "--snapshotter", "nix", "ls"]).then(() => true, () => false), "containerd to reach the restarted daemon", 60_000, 500);
    await check("after a restart");
    t.equal(readFileSync(snLog, "utf8").match(/store view built/g)?.length, 1, "the view was built once, not again after the restart");

    await ctr(["images", "rm", "--sync", img.ref]);
    await waitFor(async () => readdirSync(path.join(snRoot, "store-views")).length === 0, "the view to go with the image", 15_000);
    t.same(readdirSync(path.join(snRoot, "store-views")), [], "removing the image removes the view");
  });
}
