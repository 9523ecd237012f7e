/**
 * One `ctr run --rm` of an image, timed from outside (first stdout byte,
 * exit) and placed on containerd's event timeline; and Mounts through
 * containerd.
 */
import { randomBytes } from "node:crypto";
import type { SnapshotsClient } from "../../src/containerd/snapshots.js";
import type { Containerd } from "../../devenv/containerd.js";
import { timeProcess, type ContainerdEvent, type ContainerdEvents, type SyncGc, type TimedProcess } from "../lib/containerd-run.js";
import { msBetween, now } from "../lib/stats.js";
import type { Case, Image } from "./closures.js";
import { daemonCalls, logOffset, type DaemonCalls } from "./timeline.js";

const HELLO = "Hello, world!\n";

/** tree and binds: the nix image on nix-snapshotters with that store_view; ordinary: the ordinary image on overlayfs. */
export type Kind = "tree" | "binds" | "ordinary";
export const KINDS: readonly Kind[] = ["tree", "binds", "ordinary"];
export const NIX_KINDS: readonly Kind[] = ["tree", "binds"];
/** containerd's snapshotter name for each kind. */
export const SNAPSHOTTER: Record<Kind, string> = { tree: "nix", binds: "nix-binds", ordinary: "overlayfs" };

/** Marks on one run's timeline, ms from spawning ctr. */
export interface RunSample {
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
  /** nix kinds only: the daemon's calls during the run and its garbage collection (its debug log). */
  daemon?: DaemonCalls;
}

export const PHASES: { id: string; label: string; from: keyof RunSample | "spawn"; to: keyof RunSample }[] = [
  { id: "prepare", label: "spawn → snapshot prepared (ctr start, image lookup, Prepare)", from: "spawn", to: "prepared" },
  { id: "container", label: "→ container record", from: "prepared", to: "containerCreated" },
  { id: "task-create", label: "→ task created (Mounts, shim start, rootfs mounts, runc create)", from: "containerCreated", to: "taskCreated" },
  { id: "task-start", label: "→ task started (runc start)", from: "taskCreated", to: "taskStarted" },
  { id: "first-byte", label: "→ first stdout byte at ctr", from: "taskStarted", to: "firstByteMs" },
  { id: "exit", label: "→ task exit event", from: "firstByteMs", to: "taskExited" },
  { id: "task-delete", label: "→ task deleted (runc delete, rootfs unmount, shim exit)", from: "taskExited", to: "taskDeleted" },
  { id: "ctr-exit", label: "→ ctr exits (container and snapshot records removed)", from: "taskDeleted", to: "totalMs" },
];

export function phaseMs(s: RunSample, p: (typeof PHASES)[number]): number {
  const from = p.from === "spawn" ? 0 : (s[p.from] as number);
  return (s[p.to] as number) - from;
}

function eventAt(evs: ContainerdEvent[], topic: string, start: TimedProcess): number {
  const e = evs.find((x) => x.topic === topic);
  return e ? e.wallMs - start.startWallMs : NaN;
}

export interface Runner {
  ctrd: Containerd;
  ns: string;
  /** The daemon's debug log per nix kind. */
  daemonLog: Record<string, string>;
  events: ContainerdEvents;
  gc: SyncGc;
  seq: number;
}

export async function ctrRun(r: Runner, c: Case, kind: Kind): Promise<RunSample> {
  const img = kind === "ordinary" ? c.ordinary : c.nix;
  const snapshotter = SNAPSHOTTER[kind];
  const log = r.daemonLog[kind];
  const id = `run-${c.size}-${kind}-${++r.seq}-${randomBytes(2).toString("hex")}`;
  const from = log ? await logOffset(log) : 0;
  const p = await timeProcess("ctr", ["--address", r.ctrd.address, "--namespace", r.ns, "run", "--rm", "--snapshotter", snapshotter, img.ref, id, ...c.entry], {
    timeoutMs: 180_000,
  });
  if (p.code !== 0 || p.stdout !== HELLO) {
    throw new Error(`ctr run of ${img.ref} (${snapshotter}) exited ${p.code ?? p.signal} with stdout ${JSON.stringify(p.stdout.slice(0, 200))}, stderr: ${p.stderr.trim().slice(-1500)}`);
  }
  const evs = await r.events.waitFor(r.ns, id, (e) => e.some((x) => x.topic === "/containers/delete"));
  const t0 = now();
  await r.gc.collect();
  const gcMs = msBetween(t0, now());
  const daemon = log ? daemonCalls(log, from, await logOffset(log)) : undefined;
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

/**
 * Mounts of a container's snapshot above an image's layer, through
 * containerd's snapshots API: `calls` calls after a first that must return
 * `expect` mounts.
 */
export async function measureMounts(sn: SnapshotsClient, img: Image, expect: number, calls: number): Promise<number[]> {
  const key = `bench-mounts-${randomBytes(4).toString("hex")}`;
  await sn.prepare(key, img.chainId, { labels: { "containerd.io/gc.root": "bench" } });
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
