/**
 * The Nix layer behaviour with real Nix and real mounts: realisation and GC
 * roots on Prepare, store bind mounts on Mounts, roots gone on Remove, and
 * hostile labels refused without a trace.
 */
import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { InvalidArgumentError, FailedPreconditionError } from "../../src/errors.js";
import { ExternalBuilderRealiser, NixStoreRealiser, ROOT_TOPS_FROM } from "../../src/nix/realise.js";
import type { Mount } from "../../src/snapshotter/snapshotter.js";
import { REPO } from "../../devenv/daemon.js";
import { withMounts } from "../lib/mount.js";
import { closureOf, layerStorePaths, nixBuild, nonce, prelude, tryDelete, unrootedBelow } from "../lib/nix.js";
import { nixLabels, openNixSnapshotter } from "../lib/nix-layer.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);

const LAYER = "containerd.io/snapshot/nix-layer";
const PATH_LABEL = "containerd.io/snapshot/nix-store-path.";
const BASENAME_LABEL = "containerd.io/snapshot/nix/store.";
const CLOSURE_LABEL = "containerd.io/snapshot/nix-closure";


function binds(mounts: Mount[]): string[] {
  return mounts.filter((m) => m.target).map((m) => m.target!);
}

/**
 * The store paths a container sees through its store mounts: the targets
 * of per-path binds, or the entries of a store view bound onto /nix/store.
 */
function seen(mounts: Mount[]): string[] {
  const store = mounts.filter((m) => m.target);
  if (store.length === 1 && store[0]!.target === "/nix/store") return readdirSync(store[0]!.source).map((b) => `/nix/store/${b}`).sort();
  return store.map((m) => m.target!);
}


/** A three-path closure: app -> lib -> data, plus a closure file listing it. */
async function buildClosure(n: string): Promise<{ app: string; closure: string[]; info: string }> {
  const [app, info] = await nixBuild(`${prelude(n)}
    let data = mk "data" "echo data > $out";
        lib = mk "lib" "mkdir -p $out; echo ${"${data}"} > $out/ref";
        app = mk "app" "mkdir -p $out/bin; echo ${"${lib}"} > $out/bin/app";
        info = builtins.derivation {
          name = "closure-info"; system = builtins.currentSystem; builder = "/bin/sh";
          exportReferencesGraph = [ "graph" app ];
          PATH = "/usr/bin:/bin";
          args = [ "-c" "while read p; do case $p in /nix/store/*) echo $p;; esac; done < graph | sort -u > $out" ];
        };
    in [ app info ]`);
  return { app: app!, closure: await closureOf(app!), info: info! };
}

if (requireOrSkip(t, { root: true, commands: ["nix-store", "nix-build"] })) {
  t.test("per-path labels only, a large layer: the tops are rooted, and that pins every path until Remove", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    // Four tops: app (-> lib -> data, and -> shared), tool (-> shared), a
    // path that refers to itself and nothing else, and many.nix's top
    // (-> 300 leaves). Enough paths that only tops are rooted.
    const n = nonce();
    const [app, tool, self, many] = await nixBuild(`${prelude(n)}
      let data = mk "data" "echo data > $out";
          shared = mk "shared" "echo shared > $out";
          lib = mk "lib" "mkdir -p $out; echo ${"${data}"} > $out/ref";
          app = mk "app" "mkdir -p $out; echo ${"${lib}"} ${"${shared}"} > $out/ref";
          tool = mk "tool" "mkdir -p $out; echo ${"${shared}"} > $out/ref";
          self = mk "self" "mkdir -p $out; echo $out > $out/me";
      in [ app tool self (import ${path.join(REPO, "test/fixtures/nix/many.nix")} { n = 300; salt = nonce; }) ]`);
    const small = [...new Set([...(await closureOf(app!)), ...(await closureOf(tool!)), self!])].sort();
    const leaves = (await closureOf(many!)).filter((p) => p !== many);
    const paths = [...small, many!, ...leaves].sort();
    t.equal(paths.length, 307, "307 store paths: four tops, 303 below them");
    t.ok(paths.length >= ROOT_TOPS_FROM, "enough for rooting only the tops");
    t.teardown(() => tryDelete(paths));

    await sn.prepare("extract", "", { labels: nixLabels(paths) });
    const dir = path.join(root, "gcroots", "1");
    const links = readdirSync(dir).sort();
    t.same(links, ["root", "root-2", "root-3", "root-4"], "four root links, not 307");
    t.same(links.map((l) => readlinkSync(path.join(dir, l))).sort(), [app, many, self, tool].sort(), "they point at the tops");
    t.same(layerStorePaths(root, "1"), paths, "all 307 are the layer's store paths");
    const sample = [...small, many!, leaves[0]!, leaves[150]!, leaves[299]!];
    for (const p of sample) t.equal(await tryDelete([p]), false, `Nix's collector refuses to delete ${path.basename(p)}`);
    t.same(await unrootedBelow(sample, dir), [], "each of them, top or not, is kept alive by a root of the layer");
    t.equal(await tryDelete(paths), false, "the collector refuses the whole set");
    t.same(paths.filter((p) => !existsSync(p)), [], "every path is still in the store");

    await sn.commit("layer", "extract");
    await sn.remove("layer");
    t.notOk(existsSync(dir), "the roots went with the snapshot");
    t.ok(await tryDelete(paths), "then the collector deletes the paths (nix-store --delete succeeds)");
    t.same(paths.filter((p) => existsSync(p)), [], "and they are gone from the store");
  });

  t.test("nix-closure label: one nix-store process realises, roots and lists the closure", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    // A nix-store that records its arguments, then runs the real one.
    const calls = path.join(tmp.path, "calls");
    const wrapper = path.join(tmp.path, "nix-store");
    writeFileSync(wrapper, `#!/bin/sh\necho "$*" >> ${calls}\nexec nix-store "$@"\n`);
    chmodSync(wrapper, 0o755);
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root, new NixStoreRealiser(wrapper));
    t.teardown(() => sn.close());
    const { closure, info } = await buildClosure(nonce());
    await sn.prepare("x", "", { labels: { [LAYER]: "true", [CLOSURE_LABEL]: info } });
    const argv = readFileSync(calls, "utf8").trim().split("\n");
    t.equal(argv.length, 1, "one nix-store process for the whole Prepare");
    t.match(argv[0], /^--query --requisites --force-realise --add-root \S+\/gcroots\/1\/root \/nix\/store\//, "it realises, roots and queries at once");
    t.same(readdirSync(path.join(root, "gcroots/1")), ["root"], "one root: the closure file's path");
    t.same(await unrootedBelow(closure, path.join(root, "gcroots/1")), [], "which keeps every listed path alive");
    t.same(layerStorePaths(root, "1"), closure, "and the layer's store paths are the listed closure");
  });

  for (const storeView of ["binds", "tree"] as const) {
    t.test(`nix layer: one realisation, rooted, mounted above, unrooted on remove (store_view ${storeView})`, async (t) => {
      const tmp = tempDir();
      t.teardown(() => tmp.cleanup());
      const root = path.join(tmp.path, "root");
      const sn = await openNixSnapshotter(root, new NixStoreRealiser(), { storeView });
      t.teardown(() => sn.close());
      const { closure, info } = await buildClosure(nonce());
      t.equal(closure.length, 3, "the fixture closure has three paths");

      const unpack = await sn.prepare("extract-1", "", { labels: nixLabels(closure) });
      t.same(binds(unpack), [], "no store mounts while the nix layer itself is unpacked");
      t.same(binds(await sn.mounts("extract-1")), [], "nor from Mounts during unpack");
      const roots = readdirSync(path.join(root, "gcroots", "1")).sort();
      t.same(roots, ["root", "root-2", "root-3"], "a small layer: one root link per store path");
      t.same(layerStorePaths(root, "1"), closure, "the layer's store paths recorded in the database");
      t.equal(await tryDelete([closure[0]!]), false, "a rooted path cannot be deleted");
      t.same(await unrootedBelow(closure, path.join(root, "gcroots")), [], "every path is kept alive by a root of the snapshot");

      await sn.commit("layer-1", "extract-1");
      await sn.views.settled();
      const mounts = await sn.prepare("container", "layer-1");
      if (storeView === "binds") {
        t.same(binds(mounts), closure, "a container above gets one bind per store path, sorted");
        for (const m of mounts.slice(1)) {
          t.same([m.type, m.source, m.options], ["bind", m.target, ["ro", "rbind"]], `${m.target}: read-only rbind of itself`);
        }
      } else {
        t.same(mounts.slice(1), [{ type: "bind", source: path.join(root, "store-views", "1"), target: "/nix/store", options: ["ro", "rbind"] }], "a container above gets one read-only bind of the layer's store view");
      }
      t.same(seen(mounts), closure, "showing exactly the closure");
      t.same(await sn.mounts("container"), mounts, "Mounts repeats what Prepare returned");
      const view = await sn.view("view", "layer-1");
      t.same(seen(view), closure, "views get the store mounts too (read-only rootfs)");

      // Mount it for real: the store paths appear inside the rootfs.
      const mp = path.join(tmp.path, "mnt");
      mkdirSync(mp);
      const rootfs = (await sn.mounts("container"))[0]!;
      await withMounts([rootfs], mp, async () => {
        // The differ would have written the mountpoints (an empty file for a
        // store path that is a file); do it by hand here.
        for (const p of storeView === "binds" ? closure : ["/nix/store"]) {
          const target = path.join(mp, p);
          if (statSync(p).isFile()) {
            mkdirSync(path.dirname(target), { recursive: true });
            writeFileSync(target, "");
          } else mkdirSync(target, { recursive: true });
        }
      });
      await withMounts(await sn.mounts("container"), mp, async () => {
        const inside = readdirSync(path.join(mp, "nix/store")).map((b) => `/nix/store/${b}`).sort();
        t.same(inside, closure, "inside the rootfs /nix/store holds exactly the closure");
        const data = closure.find((p) => p.endsWith("-data"))!;
        t.equal(readFileSync(path.join(mp, data), "utf8"), "data\n", "a store path that is a file is mounted as a file");
        const app = closure.find((p) => p.endsWith("-app"))!;
        t.match(readFileSync(path.join(mp, app, "bin/app"), "utf8"), /-lib/);
        const err = await run("sh", ["-c", `touch ${path.join(mp, app, "x")}`]).then(() => "", (e: { stderr: string }) => e.stderr);
        t.match(err, /Read-only file system/, "store mounts are read-only");
      });

      await sn.remove("view");
      await sn.remove("container");
      await sn.remove("layer-1");
      t.notOk(existsSync(path.join(root, "gcroots", "1")), "roots removed with the snapshot");
      t.notOk(existsSync(path.join(root, "store-views", "1")), "and the store view");
      t.same(await unrootedBelow(closure, root), closure, "no root of ours keeps any path alive now");
      // The fixture's closure file refers to the closure: it goes too.
      t.ok(await tryDelete([info, ...closure]), "and the garbage collector may delete the closure (nix-store --delete succeeds)");
    });

    t.test(`nix-closure label: one path realised and rooted; basename labels (store_view ${storeView})`, async (t) => {
      const tmp = tempDir();
      t.teardown(() => tmp.cleanup());
      const root = path.join(tmp.path, "root");
      const sn = await openNixSnapshotter(root, new NixStoreRealiser(), { storeView });
      t.teardown(() => sn.close());
      const { closure, info } = await buildClosure(nonce());
      await sn.prepare("x", "", { labels: { [LAYER]: "true", [CLOSURE_LABEL]: info } });
      t.same(readdirSync(path.join(root, "gcroots/1")).sort(), ["root"], "only the closure file is rooted (it refers to every listed path)");
      t.same(layerStorePaths(root, "1"), closure, "the mounted paths are the listed closure");
      t.same(await unrootedBelow(closure, path.join(root, "gcroots/1")), [], "rooting the closure file keeps every listed path alive");
      await sn.commit("c", "x");
      await sn.views.settled();
      t.same(seen(await sn.prepare("ctr", "c")), closure);

      const labels: Record<string, string> = { [LAYER]: "true" };
      closure.forEach((p, i) => (labels[`${BASENAME_LABEL}${i}`] = path.basename(p)));
      await sn.prepare("old-style", "", { labels });
      await sn.commit("old", "old-style");
      await sn.views.settled();
      t.same(seen(await sn.prepare("ctr-old", "old")), closure, "the oldest label form (basenames) works too");
    });

    t.test(`store paths of every parent, deduplicated, on an ordinary base layer (store_view ${storeView})`, async (t) => {
      const tmp = tempDir();
      t.teardown(() => tmp.cleanup());
      const sn = await openNixSnapshotter(path.join(tmp.path, "root"), new NixStoreRealiser(), { storeView });
      t.teardown(() => sn.close());
      const a = await buildClosure(nonce());
      const b = await buildClosure(nonce());
      await sn.prepare("base-a", "");
      await sn.commit("base", "base-a");
      await sn.prepare("l1-a", "base", { labels: nixLabels(a.closure) });
      await sn.commit("l1", "l1-a");
      await sn.prepare("l2-a", "l1", { labels: nixLabels([...b.closure, a.closure[0]!]) });
      await sn.commit("l2", "l2-a");
      await sn.views.settled();
      const m = await sn.prepare("top", "l2");
      t.equal(m[0]!.type, "overlay", "rootfs first");
      t.same(seen(m), [...new Set([...a.closure, ...b.closure])].sort(), "union of both layers' paths, each once, sorted");
      if (storeView === "tree") t.equal(binds(m).length, 1, "through one mount");
    });
  }

  t.test("hostile labels are refused with InvalidArgument and leave no trace", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    const n = nonce();
    const [escape] = await nixBuild(`${prelude(n)} mk "escape" "ln -s /etc $out"`);
    const good = (await buildClosure(n)).closure[0]!;
    const hash = "0".repeat(32);
    const many: Record<string, string> = { [LAYER]: "true" };
    for (let i = 0; i < 100_000; i++) many[`${PATH_LABEL}${i}`] = good;
    const cases: [string, Record<string, string>, RegExp][] = [
      ["/etc", nixLabels(["/etc"]), /not in \/nix\/store/],
      ["dot-dot", nixLabels(["/nix/store/../etc"]), /invalid store path/],
      ["dot-dot after a hash", nixLabels([`/nix/store/${hash}-x/../../etc`]), /top-level store path/],
      ["newline in the name", nixLabels([`/nix/store/${hash}-evil\nname`]), /characters Nix does not allow/],
      ["short hash", nixLabels(["/nix/store/abc-short"]), /32-character hash/],
      ["hash outside base32", nixLabels([`/nix/store/${"e".repeat(32)}-x`]), /Nix base32/],
      ["basename with a slash", { [LAYER]: "true", [`${BASENAME_LABEL}0`]: `${hash}-x/y` }, /must not contain/],
      ["symlink out of the store", nixLabels([escape!]), /symlink that leads out/],
      ["closure that is not a store path", { [LAYER]: "true", [CLOSURE_LABEL]: "/etc/passwd" }, /nix-closure.*not in \/nix\/store/],
      ["100,000 labels", many, /more than 16384 store path labels/],
      ["nix-layer not true", { [LAYER]: "yes" }, /must be "true"/],
    ];
    for (const [what, labels, re] of cases) {
      const err = await sn.prepare(`bad-${what}`, "", { labels }).then(() => undefined, (e: Error) => e);
      t.ok(err instanceof InvalidArgumentError, `${what}: InvalidArgument`);
      t.match(err?.message ?? "", re, `${what}: names the problem`);
    }
    const missing = `/nix/store/${"1".repeat(32)}-not-there`;
    const err = await sn.prepare("missing", "", { labels: nixLabels([missing]) }).then(() => undefined, (e: Error) => e);
    t.ok(err instanceof FailedPreconditionError, "a path Nix cannot realise: FailedPrecondition");
    t.match(err?.message ?? "", /nix-store --realise .* failed: .*not-there/, "carrying Nix's message");
    const left: string[] = [];
    await sn.walk((i) => {
      left.push(i.name);
    });
    t.same(left, [], "no snapshot was created");
    t.same(readdirSync(path.join(root, "snapshots")), [], "no snapshot directory left");
    t.same(readdirSync(path.join(root, "gcroots")), [], "no GC root left");
  });

  t.test("external builder is called as <builder> <outLink> <storePath>", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const calls = path.join(tmp.path, "calls");
    const builder = path.join(tmp.path, "builder.sh");
    writeFileSync(builder, `#!/bin/sh\necho "$1 $2" >> ${calls}\nexec nix-store --realise "$2" --add-root "$1"\n`);
    chmodSync(builder, 0o755);
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root, new ExternalBuilderRealiser(builder));
    t.teardown(() => sn.close());
    const { closure } = await buildClosure(nonce());
    await sn.prepare("x", "", { labels: nixLabels(closure) });
    const lines = readFileSync(calls, "utf8").trim().split("\n").sort();
    t.same(lines, closure.map((p) => `${path.join(root, "gcroots/1", path.basename(p))} ${p}`).sort(), "one call per store path");
    t.same(await unrootedBelow(closure, path.join(root, "gcroots/1")), [], "the builder's roots keep the paths alive");

    writeFileSync(builder, `#!/bin/sh\necho "cannot build $2" >&2\nexit 3\n`);
    const err = await sn.prepare("y", "", { labels: nixLabels(closure) }).then(() => undefined, (e: Error) => e);
    t.match(err?.message ?? "", /external builder .* failed for .* \(exit 3\): cannot build/, "a failing builder's message reaches the caller");
    t.same(readdirSync(path.join(root, "gcroots")), ["1"], "and leaves no roots behind");
  });
}
