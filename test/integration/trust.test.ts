/**
 * Trust under faults, with real components: Cleanup racing live calls,
 * Nix deleting store paths while layers are prepared, concurrent and
 * cancelled Prepares, failing builders, kill -9 in the middle of a nix
 * layer, orphan roots, missing store paths, a Nix daemon that is down, and
 * an upgrade from a root the first release wrote. Each case backs a
 * sentence of docs/architecture.md ("Durability and concurrency").
 *
 * Store paths: every test builds its own (a nonce in the derivation) and
 * deletes only those; the store is shared with whatever else runs here.
 */
import { execFile, execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { buildNixImage } from "../../src/image/build.js";
import { AlreadyExistsError, CancelledError, FailedPreconditionError, InvalidArgumentError, UnavailableError } from "../../src/errors.js";
import { MAX_STORE_PATH_LABELS } from "../../src/nix/labels.js";
import { ExternalBuilderRealiser, NixStoreRealiser, ROOT_TOPS_FROM } from "../../src/nix/realise.js";
import { SCHEMA_VERSION } from "../../src/snapshotter/metadata.js";
import type { Mount } from "../../src/snapshotter/snapshotter.js";
import { REPO, startDaemonProcess } from "../../devenv/daemon.js";
import { closureOf, nixBuild, nonce, prelude, tryDelete, unrootedBelow } from "../lib/nix.js";
import { nixLabels, openNixSnapshotter } from "../lib/nix-layer.js";
import { requireOrSkip } from "../lib/require.js";
import { schema1Closures, type Schema1Expected } from "../lib/schema1.js";
import {
  buildNixFixture,
  clientLoad,
  deleteFixture,
  killRounds,
  nixDeleteRace,
  rootTargets,
  rowsAndDirs,
} from "../lib/soak.js";
import { tempDir } from "../lib/tmp.js";
import { entries, listAll } from "../lib/util.js";

const run = promisify(execFile);
const FIXTURE = path.join(REPO, "test/fixtures/schema1");


/** A three-path closure of this run's own. */
async function closure(tag: string): Promise<string[]> {
  const [app] = await nixBuild(`${prelude(nonce())}
    let data = mk "${tag}-data" "echo data > $out";
        lib = mk "${tag}-lib" "mkdir -p $out; echo \${data} > $out/ref";
    in mk "${tag}-app" "mkdir -p $out/bin; echo \${lib} > $out/bin/app"`);
  return closureOf(app!);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Whether a process exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Living child processes of pid. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(ppid) === pid && state !== "Z") out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

async function until(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(25);
  }
}

function pidsIn(file: string): number[] {
  return existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map(Number) : [];
}

/**
 * An external builder that records its calls and pids, starts a grandchild
 * in its process group, and waits for `go` before realising the path (and
 * making the root's directory itself, so a builder left running would
 * really leave a root link behind).
 */
function gatedBuilder(dir: string): { builder: string; go: string; pids: string; calls: string } {
  const b = { builder: path.join(dir, "builder.sh"), go: path.join(dir, "go"), pids: path.join(dir, "pids"), calls: path.join(dir, "calls") };
  writeFileSync(
    b.builder,
    `#!/bin/sh
echo "$1 $2" >> ${b.calls}
echo $$ >> ${b.pids}
sleep 600 &
echo $! >> ${b.pids}
while [ ! -e ${b.go} ]; do sleep 0.05; done
kill $! 2>/dev/null
mkdir -p "$(dirname "$1")"
exec nix-store --realise "$2" --add-root "$1"
`,
  );
  chmodSync(b.builder, 0o755);
  return b;
}

async function rejection(p: Promise<unknown>): Promise<Error | undefined> {
  return p.then(() => undefined, (e: Error) => e);
}


/**
 * The store paths a snapshot's mounts show: the sources of per-path binds,
 * or the entries of a store view bound onto /nix/store (layers of an older
 * release get their view built after the first start).
 */
function storeSeen(mounts: Mount[]): string[] {
  const store = mounts.filter((m) => m.target);
  if (store.length === 1 && store[0]!.target === "/nix/store") return readdirSync(store[0]!.source).map((b) => `/nix/store/${b}`).sort();
  return store.map((m) => m.source);
}
if (requireOrSkip(t, { root: true, commands: ["nix-store", "nix-build", "nix", "flock", "strace"] })) {
  t.test("every write call is synced to disk before it is answered; reads never sync", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const d = await startDaemonProcess({ root, address });
    t.teardown(() => d.stop("SIGTERM", 5_000));
    const sn = new SnapshotsClient({ address });
    t.teardown(() => sn.close());
    await sn.prepare("warm-a", "");
    await sn.commit("warm", "warm-a");
    await sn.prepare("live", "warm");
    const log = path.join(tmp.path, "strace.log");
    const { spawn } = await import("node:child_process");
    const tracer = spawn("strace", ["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", log, "-p", String(d.pid)], { stdio: "ignore" });
    t.teardown(() => tracer.kill("SIGINT"));
    await until("strace is attached", () => existsSync(log) && readFileSync(`/proc/${d.pid}/status`, "utf8").match(/TracerPid:\s+(\d+)/)?.[1] !== "0");
    const syncs = () => readFileSync(log, "utf8").split("\n").filter((l) => /\b(fsync|fdatasync)\(/.test(l)).length;
    const counted = async (call: () => Promise<unknown>): Promise<number> => {
      const before = syncs();
      await call();
      return syncs() - before;
    };
    // The daemon is one thread: a sync of a call happens before its answer
    // is written, and strace records it before the answer reaches us.
    // One sync, as containerd's own snapshotter: the empty directory is
    // made again by start-up if a power loss takes it (crash.test.ts).
    t.ok((await counted(() => sn.prepare("a", ""))) >= 1, "Prepare: the database log");
    t.ok((await counted(() => sn.view("v", "warm"))) >= 1, "View: the database log");
    t.ok((await counted(() => sn.commit("c", "a"))) >= 1, "Commit: the database log");
    t.ok((await counted(() => sn.update({ name: "c", labels: { x: "y" } }))) >= 1, "Update: the database log");
    t.ok((await counted(() => sn.remove("c"))) >= 1, "Remove: the database log");
    t.equal(await counted(async () => {
      await sn.stat("warm");
      await sn.mounts("live");
      await sn.usage("live");
      await listAll(sn);
    }), 0, "Stat, Mounts, Usage and List never sync");
  });

  t.test("Cleanup racing Prepare, Commit and Remove of many clients loses no live directory", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const d = await startDaemonProcess({ root, address });
    const res = await clientLoad({ address, root, clients: 16, durationMs: 6_000, cleanupShare: 0.05 });
    t.ok(res.ops > 0 && res.cleanups > 0, `${res.ops} calls, ${res.cleanups} of them Cleanup`);
    t.same(res.errors.slice(0, 5), [], "no call failed (a reclaimed live directory fails Usage, Commit or Mounts)");
    t.same(res.lostDirectories, [], "every row still has its directory");
    t.same(rowsAndDirs(root).dirs, [], "and everything removed is gone after the last Cleanup");
    t.equal(await d.stop(), 0);
  });

  t.test("a Nix delete loop racing nix-layer Prepares: no path of a live layer is ever missing", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    // Four small layers (a root per path) and one of 301 paths (only its
    // tops rooted, once every path is present).
    const fixture = await buildNixFixture(4, nonce(), path.join(tmp.path, "cache"), 300);
    t.teardown(() => deleteFixture(fixture));
    t.ok(fixture.closures[4]!.length >= ROOT_TOPS_FROM, `a layer of ${fixture.closures[4]!.length} paths: Prepare roots only its tops`);
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const d = await startDaemonProcess({ root, address, env: { NIX_CONFIG: fixture.nixConfig } });
    const res = await nixDeleteRace({ address, fixture, durationMs: 8_000 });
    t.ok(res.layers > 0, `${res.layers} nix layers prepared, used and removed`);
    t.ok(res.deletions > 0, `the paths were really deleted ${res.deletions} times (of ${res.deleteAttempts} attempts) meanwhile`);
    t.same(res.errors.slice(0, 5), [], "every call succeeded");
    t.same(res.missingWhileLive.slice(0, 5), [], "no store path of a live layer was missing");
    t.same(entries(path.join(root, "gcroots")), [], "every root went with its layer");
    t.equal(await d.stop(), 0);
  });

  t.test("kill -9 rounds during plain and nix layers: no acknowledged commit lost, every nix layer whole", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const fixture = await buildNixFixture(2, nonce(), path.join(tmp.path, "cache"));
    t.teardown(() => deleteFixture(fixture));
    const res = await killRounds({ root: path.join(tmp.path, "root"), address: path.join(tmp.path, "sn.sock"), fixture, rounds: 3, workers: 4, killAfterMs: 1_500 });
    t.equal(res.rounds, 3, "three kills");
    t.ok(res.acknowledged > 0 && res.nixLayersChecked > 0, `${res.acknowledged} acknowledged commits; ${res.nixLayersChecked} nix layer checks after restarts`);
    t.same(res.lost, [], "none lost");
    t.same(res.damage, [], "no row without directory, no orphan, no half-prepared layer, every nix layer mounted whole");
    t.same(res.errors, [], "no call failed but for the kills");
  });

  t.test("same-key nix Prepares: one wins, the other is AlreadyExists, one root directory", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    const paths = await closure("same-key");
    const results = await Promise.allSettled([0, 1, 2].map(() => sn.prepare("k", "", { labels: nixLabels(paths) })));
    t.equal(results.filter((r) => r.status === "fulfilled").length, 1, "exactly one Prepare succeeds");
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    t.ok(refused.length === 2 && refused.every((r) => r.reason instanceof AlreadyExistsError), "the others: AlreadyExists");
    t.same((await listAll(sn)).map((i) => i.name), ["k"], "one snapshot");
    t.same(entries(path.join(root, "gcroots")), [await idOf(root, "k")], "one root directory, the winner's");
    t.same(await unrootedBelow(paths, path.join(root, "gcroots")), [], "its paths rooted");
    await sn.remove("k");
    t.ok(await tryDelete(paths), "removed: the paths can go");
  });

  t.test("Remove and Commit during a nix Prepare are refused; the Prepare completes", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const b = gatedBuilder(tmp.path);
    const sn = await openNixSnapshotter(root, new ExternalBuilderRealiser(b.builder));
    t.teardown(() => sn.close());
    const paths = await closure("remove-during");
    const preparing = sn.prepare("layer", "", { labels: nixLabels(paths) });
    await until("the builders run", () => pidsIn(b.pids).length >= 2);
    const removed = await rejection(sn.remove("layer"));
    t.ok(removed instanceof FailedPreconditionError, `Remove: FailedPrecondition (${removed?.message})`);
    t.match(removed?.message ?? "", /still being realised/);
    t.ok((await rejection(sn.commit("c", "layer"))) instanceof FailedPreconditionError, "Commit: FailedPrecondition");
    writeFileSync(b.go, "");
    await preparing;
    t.same(await unrootedBelow(paths, path.join(root, "gcroots")), [], "the Prepare completed with every path rooted");
    await sn.commit("c", "layer");
    await sn.remove("c");
    t.same(entries(path.join(root, "gcroots")), [], "then Remove works and takes the roots");
    await tryDelete(paths);
  });

  t.test("a caller that gives up stops the realisation: no process left, nothing left, a retry works", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const b = gatedBuilder(tmp.path);
    const d = await startDaemonProcess({ root, address, config: `external_builder = "${b.builder}"\n` });
    t.teardown(() => d.stop("SIGTERM", 5_000));
    const sn = new SnapshotsClient({ address });
    t.teardown(() => sn.close());
    const paths = await closure("cancel");
    const ac = new AbortController();
    const preparing = rejection(sn.prepare("layer", "", { labels: nixLabels(paths), signal: ac.signal }));
    await until("three builders and their grandchildren run", () => pidsIn(b.pids).length === 6);
    const pids = pidsIn(b.pids);
    ac.abort();
    const err = await preparing;
    t.ok(err instanceof CancelledError, `the caller sees Cancelled (${err?.constructor.name})`);
    await until("every builder and grandchild is gone", () => pids.every((p) => !alive(p)));
    t.pass(`all ${pids.length} processes of the realisation are gone`);
    await until("the daemon undid the layer", () => entries(path.join(root, "gcroots")).length === 0 && entries(path.join(root, "snapshots")).length === 0);
    t.same(await listAll(sn), [], "no snapshot left");
    t.same(childrenOf(d.pid), [], "the daemon has no child process left");

    writeFileSync(b.go, "");
    writeFileSync(b.calls, "");
    await sn.prepare("layer", "", { labels: nixLabels(paths) });
    t.equal(readFileSync(b.calls, "utf8").trim().split("\n").length, paths.length, "the retry ran one builder per path, once");
    t.same(await unrootedBelow(paths, path.join(root, "gcroots")), [], "and rooted every path");
    await sn.remove("layer");
    await tryDelete(paths);
  });

  t.test("a caller that gives up stops nix-store itself (a substituter that never answers)", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const sockets = new Set<net.Socket>();
    const hang = net.createServer((s) => sockets.add(s)); // accepts, never answers
    await new Promise<void>((r) => hang.listen(0, "127.0.0.1", r));
    t.teardown(() => {
      for (const s of sockets) s.destroy();
      hang.close();
    });
    const url = `http://127.0.0.1:${(hang.address() as net.AddressInfo).port}`;
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const d = await startDaemonProcess({
      root,
      address,
      env: { NIX_CONFIG: `substituters = ${url}\nrequire-sigs = false\nnarinfo-cache-negative-ttl = 0`, no_proxy: "127.0.0.1", NO_PROXY: "127.0.0.1" },
    });
    t.teardown(() => d.stop("SIGTERM", 5_000));
    const sn = new SnapshotsClient({ address });
    t.teardown(() => sn.close());
    const absent = `/nix/store/${"3".repeat(32)}-never-${nonce().replace(/[^a-z0-9]/g, "")}`;
    const ac = new AbortController();
    const preparing = rejection(sn.prepare("slow", "", { labels: nixLabels([absent]), signal: ac.signal }));
    await until("nix-store asks the substituter", () => sockets.size > 0);
    const kids = childrenOf(d.pid);
    t.ok(kids.length >= 1, `the daemon runs nix-store (pid ${kids.join(", ")})`);
    ac.abort();
    t.ok((await preparing) instanceof CancelledError, "the caller sees Cancelled");
    await until("nix-store is gone", () => kids.every((p) => !alive(p)));
    await until("the layer is undone", () => entries(path.join(root, "snapshots")).length === 0);
    t.same(childrenOf(d.pid), [], "no process left");
    t.same(entries(path.join(root, "gcroots")), [], "no root directory left");
  });

  t.test("an external builder failing partway stops the others; no root link appears after the undo", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const pids = path.join(tmp.path, "pids");
    const builder = path.join(tmp.path, "builder.sh");
    writeFileSync(
      builder,
      `#!/bin/sh
case "$2" in *-data) sleep 0.3; echo "cannot build $2" >&2; exit 3;; esac
echo $$ >> ${pids}
sleep 1.5
mkdir -p "$(dirname "$1")"
exec nix-store --realise "$2" --add-root "$1"
`,
    );
    chmodSync(builder, 0o755);
    const sn = await openNixSnapshotter(root, new ExternalBuilderRealiser(builder));
    t.teardown(() => sn.close());
    const paths = await closure("partway");
    const err = await rejection(sn.prepare("layer", "", { labels: nixLabels(paths) }));
    t.match(err?.message ?? "", /external builder .* failed for .*-data \(exit 3\): cannot build/, "the failure reaches the caller");
    const started = pidsIn(pids);
    t.equal(started.length, 2, "two other builders had started");
    t.same(started.filter(alive), [], "and were stopped before Prepare answered");
    await sleep(2_500); // past the moment they would have made their links
    t.same(entries(path.join(root, "gcroots")), [], "no root link appeared after the undo");
    t.same(entries(path.join(root, "snapshots")), [], "no snapshot left");
    t.same(await unrootedBelow(paths, root), paths, "nothing of ours roots the paths");
    await tryDelete(paths);
  });

  t.test("kill -9 in the middle of a nix Prepare: restart removes it; Cleanup takes late roots", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const b = gatedBuilder(tmp.path);
    const config = `external_builder = "${b.builder}"\n`;
    let d = await startDaemonProcess({ root, address, config });
    let sn = new SnapshotsClient({ address });
    const paths = await closure("kill-mid");
    await sn.prepare("kept-a", "");
    await sn.commit("kept", "kept-a");
    const preparing = rejection(sn.prepare("layer", "kept", { labels: nixLabels(paths) }));
    await until("the builders run", () => pidsIn(b.pids).length === 6);
    process.kill(d.pid, "SIGKILL");
    await d.exited;
    t.ok((await preparing) instanceof UnavailableError, "the caller saw the daemon die");
    await sn.close();
    t.equal(rowsAndDirs(root).preparing, 1, "the database holds the layer as preparing");

    d = await startDaemonProcess({ root, address, config });
    t.teardown(() => d.stop("SIGTERM", 5_000));
    sn = new SnapshotsClient({ address });
    t.teardown(() => sn.close());
    t.same((await listAll(sn)).map((i) => i.name), ["kept"], "start-up removed the interrupted layer and kept the rest");
    t.equal(rowsAndDirs(root).preparing, 0, "nothing preparing");
    // The orphaned builders still run; let them finish and make their links.
    writeFileSync(b.go, "");
    const pids = pidsIn(b.pids);
    await until("the orphaned builders finish", () => pids.every((p) => !alive(p)));
    t.ok(entries(path.join(root, "gcroots")).length > 0, "late root links appeared after start-up");
    await sn.cleanup();
    t.same(entries(path.join(root, "gcroots")), [], "Cleanup removed them");
    t.same(await unrootedBelow(paths, root), paths, "nothing of ours roots the paths any more");
    await tryDelete(paths);
  });

  t.test("orphan roots: Cleanup removes roots no snapshot owns and keeps live ones", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    const live = await closure("orphan-live");
    const orphan = await closure("orphan-dead");
    await sn.prepare("live", "", { labels: nixLabels(live) });
    const liveId = await idOf(root, "live");
    mkdirSync(path.join(root, "gcroots", "9999"));
    await run("nix-store", ["--realise", ...orphan, "--add-root", path.join(root, "gcroots", "9999", "root")]);
    t.same(await unrootedBelow(orphan, path.join(root, "gcroots", "9999")), [], "the orphan directory roots its paths");
    await sn.cleanup();
    t.same(entries(path.join(root, "gcroots")), [liveId], "only the live layer's roots are left");
    t.same(await unrootedBelow(orphan, root), orphan, "the orphan's paths are free");
    t.same(await unrootedBelow(live, path.join(root, "gcroots", liveId)), [], "the live layer's are still rooted");
    await sn.remove("live");
    await tryDelete([...orphan, ...live]);
  });

  t.test("store paths deleted by force: Mounts and Prepare above fail loudly, never mount nothing", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    // Per-path binds: a store view, once built, holds the files itself (store-view.test.ts).
    const sn = await openNixSnapshotter(root, undefined, { storeView: "binds" });
    t.teardown(() => sn.close());
    const paths = await closure("forced");
    await sn.prepare("x", "", { labels: nixLabels(paths) });
    await sn.commit("layer", "x");
    await sn.prepare("ctr", "layer");
    const victim = paths.find((p) => p.endsWith("-app"))!;
    await run("nix-store", ["--delete", "--ignore-liveness", victim]);
    const err = await rejection(sn.mounts("ctr"));
    t.ok(err instanceof FailedPreconditionError, "Mounts: FailedPrecondition");
    t.match(err?.message ?? "", new RegExp(`${victim}.*missing from the Nix store`), "naming the missing path");
    const err2 = await rejection(sn.prepare("ctr2", "layer"));
    t.ok(err2 instanceof FailedPreconditionError, "Prepare above: FailedPrecondition");
    t.same((await listAll(sn)).map((i) => i.name).sort(), ["ctr", "layer"], "the refused Prepare left nothing");
    await sn.remove("ctr");
    await sn.remove("layer");
    await tryDelete(paths);
  });

  t.test("a Nix daemon that is down: Unavailable, not NotFound; nothing left", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const down = new NixStoreRealiser("nix-store", { ...process.env, NIX_REMOTE: `unix://${path.join(tmp.path, "no-daemon.sock")}` });
    const sn = await openNixSnapshotter(root, down);
    t.teardown(() => sn.close());
    const err = await rejection(sn.prepare("x", "", { labels: nixLabels([`/nix/store/${"4".repeat(32)}-x`]) }));
    t.ok(err instanceof UnavailableError, `Unavailable (got ${err?.constructor.name}: ${err?.message})`);
    t.match(err?.message ?? "", /Nix daemon is not reachable/);
    t.same(entries(path.join(root, "snapshots")), [], "no snapshot left");
  });

  t.test("nix-closure: listed paths beyond the rooted closure are rooted too; bounds", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    const n = nonce();
    // The file names `stray` without referring to it (its string context is
    // discarded), so rooting the file does not keep `stray` alive.
    const [stray, listing, big] = await nixBuild(`${prelude(n)}
      let stray = mk "stray" "echo stray > $out";
          listing = mk "listing" "echo \${builtins.unsafeDiscardStringContext "\${stray}"} > $out";
          big = mk "big-listing" "head -c 34000000 /dev/zero > $out";
      in [ stray listing big ]`);
    t.same(await closureOf(listing!), [listing], "the listing does not refer to what it lists");
    await sn.prepare("x", "", { labels: { "containerd.io/snapshot/nix-layer": "true", "containerd.io/snapshot/nix-closure": listing! } });
    const id = await idOf(root, "x");
    t.same(await unrootedBelow([stray!], path.join(root, "gcroots", id)), [], "the stray path is rooted by the layer");
    t.same(rootTargets(path.join(root, "gcroots", id, "extra")), [stray], "in extra/");
    await sn.remove("x");

    const e = await rejection(sn.prepare("big", "", { labels: { "containerd.io/snapshot/nix-layer": "true", "containerd.io/snapshot/nix-closure": big! } }));
    t.ok(e instanceof InvalidArgumentError, "a closure file over 32 MiB: InvalidArgument");
    t.match(e?.message ?? "", /at most 33554432 are read/);

    const labels: Record<string, string> = { "containerd.io/snapshot/nix-layer": "true", "containerd.io/snapshot/nix-closure": listing! };
    for (let i = 0; i <= MAX_STORE_PATH_LABELS + 100; i++) labels[`containerd.io/snapshot/nix-store-path.${i}`] = stray!;
    await sn.prepare("many", "", { labels });
    t.pass(`with nix-closure, ${MAX_STORE_PATH_LABELS + 101} per-path labels are accepted`);
    delete labels["containerd.io/snapshot/nix-closure"];
    const e2 = await rejection(sn.prepare("many-no-closure", "", { labels }));
    t.match(e2?.message ?? "", /more than 16384 store path labels/, "without it, the per-path cap holds");
    await sn.remove("many");
    t.same(entries(path.join(root, "gcroots")), [], "no roots left");
    await tryDelete([listing!, big!, stray!]);
  });

  t.test("nix2container build refuses an image whose labels the daemon would refuse", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const closureFile = path.join(tmp.path, "closure");
    const lines = Array.from({ length: MAX_STORE_PATH_LABELS + 1 }, (_, i) => `/nix/store/${"6".repeat(32)}-p${i}`);
    writeFileSync(closureFile, lines.join("\n") + "\n");
    const configFile = path.join(tmp.path, "config.json");
    writeFileSync(configFile, "{}");
    const err = await rejection(buildNixImage({ configFile, closureFile, out: path.join(tmp.path, "image.tar") }));
    t.ok(err instanceof InvalidArgumentError, "InvalidArgument");
    t.match(err?.message ?? "", /would refuse this image's nix layer: nix layer has more than 16384 store path labels.*; give a closure file that is in the Nix store/);
    t.notOk(existsSync(path.join(tmp.path, "image.tar")), "no archive written");
  });

  t.test("Update cannot turn a snapshot into a nix layer, nor make start-up remove one", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    let sn = await openNixSnapshotter(root);
    const paths = await closure("update-label");
    await sn.prepare("plain", "");
    await sn.update({ name: "plain", labels: { "containerd.io/snapshot/nix-layer": "true" } });
    await sn.prepare("nix", "", { labels: nixLabels(paths) });
    await sn.update({ name: "nix", labels: {} }, ["labels"]);
    await sn.close();
    sn = await openNixSnapshotter(root);
    t.teardown(() => sn.close());
    t.same((await listAll(sn)).map((i) => i.name).sort(), ["nix", "plain"], "both survive a restart");
    await sn.commit("nix-c", "nix");
    const m = await sn.prepare("ctr", "nix-c");
    t.same(m.filter((x) => x.target).map((x) => x.source), paths, "the nix layer still mounts its paths without its label");
    await sn.remove("ctr");
    await sn.remove("nix-c");
    await tryDelete(paths);
  });

  t.test("upgrade: a root written by the first release (schema 1) keeps every snapshot, label, nix layer and root", async (t) => {
    const expected = JSON.parse(readFileSync(path.join(FIXTURE, "expected.json"), "utf8")) as Schema1Expected;
    const { a, b, bInfo } = await schema1Closures();
    t.same(expected.nixLayers["nix-a"], a, "the fixture's store paths are the ones built here (same derivations)");
    t.same(expected.nixLayers["nix-b"], b);
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    mkdirSync(root);
    execFileSync("tar", ["-xf", path.join(FIXTURE, "root.tar"), "-C", root]);
    // Nix registered the root links by their absolute path on the machine
    // that wrote the fixture; register the same links here, as they were.
    for (const id of ["2", "3"]) {
      for (const link of readdirSync(path.join(root, "gcroots", id)).filter((l) => l.startsWith("root"))) {
        const p = path.join(root, "gcroots", id, link);
        await run("nix-store", ["--realise", readlinkSync(p), "--add-root", p]);
      }
    }
    const address = path.join(tmp.path, "sn.sock");
    for (const start of ["first start (migrates)", "second start"]) {
      const d = await startDaemonProcess({ root, address });
      const sn = new SnapshotsClient({ address });
      const seen = await listAll(sn);
      const want = expected.snapshots.filter((s) => s.name !== expected.interrupted);
      t.same(
        seen.map((i) => ({ name: i.name, parent: i.parent, kind: i.kind, labels: i.labels, created: i.created, updated: i.updated })),
        want.map((s) => ({ name: s.name, parent: s.parent, kind: s.kind, labels: s.labels, created: BigInt(s.createdMs) * 1_000_000n, updated: BigInt(s.updatedMs) * 1_000_000n })),
        `${start}: every snapshot with its kind, parent, labels and times`,
      );
      t.notOk(seen.some((i) => i.name === expected.interrupted), `${start}: the interrupted nix layer is gone`);
      const ctr = await sn.mounts("ctr");
      t.same(storeSeen(ctr), a, `${start}: the container above nix-a mounts its store paths`);
      const peek = await sn.mounts("peek");
      t.same(storeSeen(peek), b, `${start}: the view of nix-b (nix-closure) mounts the closure`);
      const check = await sn.prepare(`check-${start}`, "nix-a");
      t.same(storeSeen(check), a, `${start}: a new container above nix-a too`);
      await sn.remove(`check-${start}`);
      const base = await sn.view(`base-view-${start}`, "base");
      t.equal(readFileSync(path.join(base[0]!.source, expected.baseFile.path), "utf8"), expected.baseFile.content, `${start}: the base layer's file`);
      await sn.remove(`base-view-${start}`);
      t.same(await unrootedBelow(a, path.join(root, "gcroots", "2")), [], `${start}: nix-a's paths rooted by its links`);
      t.same(await unrootedBelow([bInfo], path.join(root, "gcroots", "3")), [], `${start}: nix-b's closure file rooted`);
      t.same(entries(path.join(root, "gcroots")), ["2", "3"], `${start}: no other root directory (the interrupted layer's went)`);
      t.notOk(existsSync(path.join(root, "gcroots", "2", "store-paths")), `${start}: the schema 1 store-paths files were imported and dropped`);
      await sn.close();
      t.equal(await d.stop(), 0);
      const db = new Database(path.join(root, "metadata.db"), { readonly: true });
      t.equal(db.pragma("user_version", { simple: true }), SCHEMA_VERSION, `${start}: schema ${SCHEMA_VERSION}`);
      db.close();
    }
  });
}

async function idOf(root: string, key: string): Promise<string> {
  const db = new Database(path.join(root, "metadata.db"), { readonly: true });
  try {
    return String((db.prepare("SELECT id FROM snapshots WHERE key = ?").get(key) as { id: number }).id);
  } finally {
    db.close();
  }
}
