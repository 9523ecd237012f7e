/**
 * The snapshots API's messages as proto-loader hands them over and takes
 * them (Wire*), and their conversion to and from the core's types. The
 * server's hot responses skip these objects: codec.ts encodes them
 * straight from the core's types.
 */
import type { Info, Kind, Mount, Usage } from "../snapshotter/snapshotter.js";

/** google.protobuf.Timestamp. */
export interface WireTimestamp {
  seconds: number;
  nanos: number;
}

/** containerd.services.snapshots.v1.Info. */
export interface WireInfo {
  name: string;
  parent: string;
  kind: string;
  createdAt?: WireTimestamp | null;
  updatedAt?: WireTimestamp | null;
  labels: Record<string, string>;
}

/** containerd.types.Mount. */
export interface WireMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

/** containerd.services.snapshots.v1.UsageResponse. */
export interface WireUsage {
  size: number;
  inodes: number;
}

const KIND_TO_WIRE: Record<Kind, string> = { view: "VIEW", active: "ACTIVE", committed: "COMMITTED" };
const WIRE_TO_KIND: Record<string, Kind> = { VIEW: "view", ACTIVE: "active", COMMITTED: "committed" };

const NS_PER_S = 1_000_000_000n;

/** Nanoseconds since the epoch as google.protobuf.Timestamp (no precision lost). */
export function toWireTimestamp(ns: bigint): WireTimestamp {
  let s = ns / NS_PER_S;
  let n = ns % NS_PER_S;
  if (n < 0n) {
    s -= 1n;
    n += NS_PER_S;
  }
  return { seconds: Number(s), nanos: Number(n) };
}

export function fromWireTimestamp(t: WireTimestamp | null | undefined): bigint {
  if (!t) return 0n;
  return BigInt(t.seconds) * NS_PER_S + BigInt(t.nanos);
}

export function toWireInfo(info: Info): WireInfo {
  return {
    name: info.name,
    parent: info.parent,
    kind: KIND_TO_WIRE[info.kind],
    createdAt: toWireTimestamp(info.created),
    updatedAt: toWireTimestamp(info.updated),
    labels: info.labels,
  };
}

export function fromWireInfo(w: WireInfo): Info {
  return {
    name: w.name,
    parent: w.parent,
    kind: WIRE_TO_KIND[w.kind] ?? "active",
    labels: w.labels ?? {},
    created: fromWireTimestamp(w.createdAt),
    updated: fromWireTimestamp(w.updatedAt),
  };
}

/**
 * A received mount as the core's Mount (no target when it is empty). The
 * core's Mount goes out as it is: proto-loader fills in an absent target,
 * and codec.ts encodes the server's responses.
 */
export function fromWireMount(w: WireMount): Mount {
  const m: Mount = { type: w.type, source: w.source, options: w.options ?? [] };
  if (w.target) m.target = w.target;
  return m;
}

export function toWireUsage(u: Usage): WireUsage {
  return { size: u.size, inodes: u.inodes };
}

export function fromWireUsage(w: WireUsage): Usage {
  return { size: Number(w.size), inodes: Number(w.inodes) };
}
