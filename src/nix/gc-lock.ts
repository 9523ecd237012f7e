/**
 * Waiting out a Nix garbage collection that is running now.
 *
 * A collection that began before a root link existed read the permanent
 * roots without it, and (Nix 2.8 at least) may still delete a path that
 * `nix-store --realise --add-root` just realised and rooted. Every
 * collector takes gc.lock exclusively (flock) before it reads any root and
 * keeps it for its whole run, so once no process holds it exclusively,
 * every collector sees the root.
 *
 * Taking the lock shared answers that, but Node has no flock: it costs a
 * process (flock(1)), about 11 ms, on every nix layer's Prepare. The
 * kernel's table of locks (/proc/locks) answers the same question without
 * one when it shows every lock of the machine: in the initial pid namespace
 * (elsewhere it hides the locks of processes outside the namespace, such as
 * a collector on the host) and off overlayfs (whose inode numbers can
 * differ from the ones its locks are listed under). Otherwise, or when any
 * exclusive lock is listed on the file's inode number (any device: btrfs
 * reports subvolume devices that /proc/locks does not), the process it is.
 */
import { readFileSync, readlinkSync, statfsSync, statSync } from "node:fs";
import path from "node:path";
import { CancelledError } from "../errors.js";
import { runProcess } from "./realise.js";

/** The kernel's fixed inode of the initial pid namespace (PROC_PID_INIT_INO). */
const INITIAL_PID_NAMESPACE = "pid:[4026531836]";
const OVERLAYFS_SUPER_MAGIC = 0x794c7630;
/** How long a shared lock is waited for before giving up (a collection of a large store takes minutes). */
const FLOCK_WAIT_SECONDS = 300;

export function gcLockPath(): string {
  return path.join(process.env["NIX_STATE_DIR"] ?? "/nix/var/nix", "gc.lock");
}

/**
 * What /proc/locks says of gc.lock: "free" when no process holds or waits
 * for it exclusively, "held" when one may, "unknown" when the table cannot
 * show every holder (see the header).
 */
export function gcLockState(lock = gcLockPath()): "free" | "held" | "unknown" {
  try {
    if (!tableShowsEveryProcess()) return "unknown";
    const st = statSync(lock, { bigint: true, throwIfNoEntry: false });
    // No file: no collector has one open (a collector creates it before it locks it).
    if (st === undefined) return "free";
    if (statfsSync(path.dirname(lock)).type === OVERLAYFS_SUPER_MAGIC) return "unknown";
    const ino = st.ino.toString();
    // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; a waiter's line has "->" after the number.
    for (const line of readFileSync("/proc/locks", "utf8").split("\n")) {
      const fields = line.trim().split(/\s+/);
      const access = fields.indexOf("WRITE");
      if (access >= 0 && fields[access + 2]?.split(":")[2] === ino) return "held";
    }
    return "free";
  } catch {
    return "unknown";
  }
}

let showsEveryProcess: boolean | undefined;

/**
 * Whether this process's /proc/locks lists the locks of every process: it
 * runs in the initial pid namespace, and /proc is mounted for that
 * namespace. Neither changes while the process lives, so it is read once.
 */
function tableShowsEveryProcess(): boolean {
  showsEveryProcess ??= readlinkSync("/proc/self/ns/pid") === INITIAL_PID_NAMESPACE && readlinkSync("/proc/self") === String(process.pid);
  return showsEveryProcess;
}

/**
 * Waits until no Nix garbage collection is running. Returns false when
 * that cannot be known (the lock cannot be taken, e.g. a store owned by
 * another user): the caller's check of the paths is then all there is.
 */
export async function waitForGarbageCollector(signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) throw new CancelledError("cancelled before waiting for Nix's garbage collector");
  const lock = gcLockPath();
  if (gcLockState(lock) === "free") return true;
  try {
    const res = await runProcess("flock", ["--shared", "--wait", String(FLOCK_WAIT_SECONDS), lock, "true"], { signal });
    return res.code === 0;
  } catch (err) {
    if (err instanceof CancelledError) throw err;
    return false;
  }
}
