/**
 * The seam between a snapshotter that keeps directories and metadata (the
 * overlay snapshotter) and a decorator that adds behaviour per snapshot on
 * top of it (the Nix snapshotter): the Snapshotter contract plus what a
 * decorator needs to keep its own per-snapshot state in step with the
 * snapshots. Nothing else of the overlay snapshotter is reachable from a
 * decorator.
 */
import type { MetaStore, SnapshotRecord } from "./metadata.js";
import type { CreateOptions, Mount, Snapshotter } from "./snapshotter.js";

export interface LayerStore extends Snapshotter {
  /** The state directory; a decorator keeps its own files below it. */
  readonly root: string;
  /** The metadata store, for a decorator's own tables (its rows go with their snapshot). */
  readonly metadata: MetaStore;
  /**
   * Creates an active snapshot or view and returns its record.
   * `inTransaction` runs with the new id inside the creating transaction,
   * so a decorator's own rows commit or fail with the snapshot.
   */
  create(kind: "active" | "view", key: string, parent: string, opts?: CreateOptions, inTransaction?: (id: string) => void): Promise<SnapshotRecord>;
  /** The record (id, kind, parent ids) of an active snapshot or view. */
  record(key: string): Promise<SnapshotRecord>;
  /** The rootfs mounts of a record from record() or create(): the same objects for the same record. */
  mountsOf(rec: SnapshotRecord): Mount[];
  /** The id (directory name) of any snapshot. */
  idOf(key: string): Promise<string>;
  /**
   * Removes a snapshot; `check` runs with its id inside the removing
   * transaction (a decorator's refusal decided in the same step). Returns the id.
   */
  removeChecked(key: string, check?: (id: string) => void): Promise<string>;
  /** Removes the snapshot with this id unless something builds on it (the undo of a failed create). */
  removeById(id: string): Promise<void>;
}
