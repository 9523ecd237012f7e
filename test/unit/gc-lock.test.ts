/**
 * gc.lock as Nix's collector holds it (flock, exclusive, for its whole
 * run), held here by flock(1): what /proc/locks tells, and that waiting for
 * the collector ends only after the holder let go, on both paths (the
 * table, and the flock(1) process where the table cannot see every lock).
 */
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { existsSync, readlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import t, { type Test } from "tap";
import { gcLockState, waitForGarbageCollector } from "../../src/nix/gc-lock.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const inInitialPidNamespace = readlinkSync("/proc/self/ns/pid") === "pid:[4026531836]";

interface Holder {
  /** Lets go of the lock: the holder writes its marker file, then exits (which releases it). */
  release(): Promise<void>;
  /** Written just before the lock is released. */
  marker: string;
}

/** Holds the lock as `flock <mode>` over a shell waiting on its stdin; resolves once it is held (a conflicting non-blocking flock fails). */
async function holdLock(t: Test, lock: string, mode: "--exclusive" | "--shared"): Promise<Holder> {
  const marker = `${lock}.released-${Math.random().toString(36).slice(2)}`;
  const holder = spawn("flock", [mode, lock, "sh", "-c", 'read _; echo released > "$0"', marker], { stdio: ["pipe", "ignore", "inherit"], detached: true });
  const exited = once(holder, "exit");
  t.teardown(() => {
    try {
      process.kill(-holder.pid!, "SIGKILL");
    } catch {
      /* gone */
    }
  });
  const probe = mode === "--exclusive" ? "--shared" : "--exclusive";
  while (spawnSync("flock", ["--nonblock", probe, lock, "true"]).status === 0) await new Promise((r) => setTimeout(r, 10));
  return {
    marker,
    async release() {
      holder.stdin!.end();
      await exited;
    },
  };
}

if (requireOrSkip(t, { commands: ["flock"] })) {
  t.test("/proc/locks: free, held while a collector holds it, free again; a shared holder is no collector", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const lock = path.join(tmp.path, "gc.lock");
    if (!inInitialPidNamespace) {
      t.equal(gcLockState(lock), "unknown", "outside the initial pid namespace the table is not trusted");
      return;
    }
    t.equal(gcLockState(lock), "free", "no file: no collector");
    writeFileSync(lock, "");
    t.equal(gcLockState(lock), "free", "nobody holds it");
    const shared = await holdLock(t, lock, "--shared");
    t.equal(gcLockState(lock), "free", "a shared holder (a nix-store adding a temporary root) is no collector");
    await shared.release();
    const collector = await holdLock(t, lock, "--exclusive");
    t.equal(gcLockState(lock), "held", "held exclusively: a collection may be running");
    await collector.release();
    t.equal(gcLockState(lock), "free", "free once the collector is gone");
  });

  t.test("waiting for the collector ends only after it let go", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const before = process.env["NIX_STATE_DIR"];
    process.env["NIX_STATE_DIR"] = tmp.path;
    t.teardown(() => {
      if (before === undefined) delete process.env["NIX_STATE_DIR"];
      else process.env["NIX_STATE_DIR"] = before;
    });
    const lock = path.join(tmp.path, "gc.lock");
    writeFileSync(lock, "");
    t.equal(await waitForGarbageCollector(), true, "no collector: answers at once");
    const collector = await holdLock(t, lock, "--exclusive");
    let ended = false;
    const waiting = waitForGarbageCollector().finally(() => (ended = true));
    await new Promise((r) => setTimeout(r, 300));
    t.equal(ended, false, "still waiting while the collector runs");
    const released = collector.release();
    t.equal(await waiting, true, "the wait ends");
    t.ok(existsSync(collector.marker), "after the collector let go, not before");
    await released;

    const again = await holdLock(t, lock, "--exclusive");
    const ac = new AbortController();
    const cancelled = waitForGarbageCollector(ac.signal);
    ac.abort();
    await t.rejects(cancelled, { name: "CancelledError" }, "a caller that gives up stops the wait");
    await again.release();
  });
}

if (requireOrSkip(t, { root: true, commands: ["unshare", "flock"] })) {
  t.test("in a pid namespace of its own the table is not trusted: the wait takes the lock itself", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const lock = path.join(tmp.path, "gc.lock");
    writeFileSync(lock, "");
    // The collector runs outside the namespace: its lock is one /proc/locks hides there.
    const collector = await holdLock(t, lock, "--exclusive");
    const module = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../src/nix/gc-lock.js");
    const script = `const m = await import(${JSON.stringify(module)}); console.log(m.gcLockState()); console.log(await m.waitForGarbageCollector()); console.log("done");`;
    const child = spawn("unshare", ["--pid", "--fork", "--mount-proc", process.execPath, "--input-type=module", "-e", script], {
      env: { ...process.env, NIX_STATE_DIR: tmp.path },
      stdio: ["ignore", "pipe", "inherit"],
    });
    t.teardown(() => void child.kill("SIGKILL"));
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    while (!out.includes("\n")) await new Promise((r) => setTimeout(r, 20));
    t.equal(out.trim(), "unknown", "gcLockState answers unknown");
    await new Promise((r) => setTimeout(r, 300));
    t.notOk(out.includes("done"), "and the wait is still waiting while the collector outside holds the lock");
    const released = collector.release();
    const [code] = (await once(child, "exit")) as [number];
    t.equal(code, 0, "the child exits cleanly");
    t.same(out.trim().split("\n"), ["unknown", "true", "done"], "the wait ends");
    t.ok(existsSync(collector.marker), "once the collector let go");
    await released;
  });
}
