/**
 * Mounts are data: the list containerd will mount for a snapshot, computed
 * from the snapshot's id chain alone. The rules are those of containerd's
 * overlayfs snapshotter (plugins/snapshots/overlay), so a container sees the
 * same filesystem under either:
 *   - no parents: a bind mount of the snapshot's own directory (overlayfs
 *     needs at least one lower layer), read-only for a view;
 *   - a view of one parent: a read-only bind mount of that parent;
 *   - a view of several: a read-only overlay of the parents (lowerdir only);
 *   - an active snapshot with parents: overlay with upperdir and workdir.
 * Bind mounts need no privilege a rootless containerd lacks, so only the
 * overlay type changes with the driver.
 */
import path from "node:path";
import type { Mount } from "./snapshotter.js";
import type { SnapshotRecord } from "./metadata.js";

export interface SnapshotPaths {
  /** The directory holding one directory per snapshot id. */
  snapshotsDir: string;
}

export function upperPath(p: SnapshotPaths, id: string): string {
  return path.join(p.snapshotsDir, id, "fs");
}

export function workPath(p: SnapshotPaths, id: string): string {
  return path.join(p.snapshotsDir, id, "work");
}

/** `overlayType` is "overlay", or "fuse3.fuse-overlayfs" (same options, mounted by containerd's FUSE helper). */
export function computeMounts(p: SnapshotPaths, s: SnapshotRecord, overlayOptions: readonly string[], overlayType = "overlay"): Mount[] {
  if (s.parentIds.length === 0) {
    return [{ type: "bind", source: upperPath(p, s.id), options: [s.kind === "view" ? "ro" : "rw", "rbind"] }];
  }
  const options = [...overlayOptions];
  if (s.kind === "active") {
    options.push(`workdir=${workPath(p, s.id)}`, `upperdir=${upperPath(p, s.id)}`);
  } else if (s.parentIds.length === 1) {
    return [{ type: "bind", source: upperPath(p, s.parentIds[0]!), options: ["ro", "rbind"] }];
  }
  options.push(`lowerdir=${s.parentIds.map((id) => upperPath(p, id)).join(":")}`);
  return [{ type: overlayType, source: "overlay", options }];
}
