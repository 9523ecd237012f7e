/**
 * Hand-written protobuf encoding of the responses that carry mounts
 * (Prepare, View, Mounts: `repeated containerd.types.Mount mounts = 1`).
 * A container above a large closure gets a thousand bind mounts per call;
 * the nix decorator hands out the same Mount objects each time, so each
 * one's encoding is computed once and the response is a concatenation.
 *
 *   Mount: 1 type, 2 source, 3 target, 4 options (all strings)
 */
import type { Mount } from "../snapshotter/snapshotter.js";

const encoded = new WeakMap<Mount, Buffer>();

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

function field(tag: number, value: string, parts: Buffer[]): void {
  if (value === "") return; // proto3: empty strings are not written
  const bytes = Buffer.from(value, "utf8");
  parts.push(Buffer.from([tag, ...varint(bytes.length)]), bytes);
}

/** One Mount as the length-delimited field 1 of the response message. */
function encodeMountField(m: Mount): Buffer {
  let buf = encoded.get(m);
  if (buf) return buf;
  const parts: Buffer[] = [];
  field(0x0a, m.type, parts);
  field(0x12, m.source, parts);
  field(0x1a, m.target ?? "", parts);
  for (const o of m.options) {
    const bytes = Buffer.from(o, "utf8");
    parts.push(Buffer.from([0x22, ...varint(bytes.length)]), bytes);
  }
  const body = Buffer.concat(parts);
  buf = Buffer.concat([Buffer.from([0x0a, ...varint(body.length)]), body]);
  encoded.set(m, buf);
  return buf;
}

/** The encoded PrepareSnapshotResponse / ViewSnapshotResponse / MountsResponse. */
export function encodeMountsResponse(mounts: readonly Mount[]): Buffer {
  const parts = mounts.map(encodeMountField);
  let total = 0;
  for (const p of parts) total += p.length;
  const out = Buffer.allocUnsafe(total);
  let off = 0;
  for (const p of parts) off += p.copy(out, off);
  return out;
}
