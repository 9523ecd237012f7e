/**
 * The snapshotter contract, shaped like containerd's snapshots.Snapshotter
 * (core/snapshots/snapshotter.go): one small interface that the overlay
 * implementation, the Nix decorator and the gRPC client all satisfy, and that
 * the gRPC service adapter serves.
 */

export type Kind = "view" | "active" | "committed";

export interface Info {
  name: string;
  /** Empty string when the snapshot has no parent (as on the wire). */
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  /** Nanoseconds since the Unix epoch (containerd's precision; kept to the microsecond). */
  created: bigint;
  updated: bigint;
}

export interface Usage {
  /** Bytes used on disk. */
  size: number;
  /** Inodes used. */
  inodes: number;
}

/** A mount as containerd's types.Mount: data, never performed here. */
export interface Mount {
  type: string;
  source: string;
  /** Path inside the rootfs (containerd >= 1.7); empty for the rootfs itself. */
  target?: string;
  options: string[];
}

export interface CreateOptions {
  labels?: Record<string, string>;
  /**
   * Aborted when the caller gives up (a cancelled or timed-out gRPC call):
   * work started for the call, such as a realisation, is stopped and undone.
   */
  signal?: AbortSignal;
}

export interface Snapshotter {
  stat(key: string): Promise<Info>;
  /**
   * Updates mutable fields (labels). `fieldPaths` as containerd:
   * "labels" replaces all labels, "labels.<k>" sets or removes one;
   * none means "labels".
   */
  update(info: Pick<Info, "name" | "labels">, fieldPaths?: string[]): Promise<Info>;
  usage(key: string): Promise<Usage>;
  mounts(key: string): Promise<Mount[]>;
  prepare(key: string, parent: string, opts?: CreateOptions): Promise<Mount[]>;
  view(key: string, parent: string, opts?: CreateOptions): Promise<Mount[]>;
  commit(name: string, key: string, opts?: CreateOptions): Promise<void>;
  remove(key: string): Promise<void>;
  /** Calls fn for every snapshot matching any of the filters (none: all). */
  walk(fn: (info: Info) => void | Promise<void>, filters?: string[]): Promise<void>;
  /** Reclaims resources no snapshot references any more. */
  cleanup(): Promise<void>;
  close(): Promise<void>;
}
