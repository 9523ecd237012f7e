/**
 * Hand-written protobuf encoding of the responses on the hot paths, which
 * proto-loader's dynamic messages make cost more than the call itself:
 *
 * - Prepare, View, Mounts: `repeated containerd.types.Mount mounts = 1`.
 *   A container above a large closure gets a thousand bind mounts per call;
 *   the snapshotters hand out the same Mount objects each time, so each
 *   one's encoding is computed once and a response is a concatenation.
 * - Stat, and List's batches: `containerd.services.snapshots.v1.Info`.
 *   containerd Stats every snapshot of the backend on each List.
 *
 *   Mount:     1 type, 2 source, 3 target, 4 options (repeated): strings
 *   Info:      1 name, 2 parent (strings), 3 kind (enum), 4 created_at,
 *              5 updated_at (Timestamp), 6 labels (map<string, string>)
 *   Timestamp: 1 seconds (int64), 2 nanos (int32)
 *
 * test/unit/wire-codec.test.ts checks every encoder against proto-loader's
 * decoder of the same .proto files.
 */
import type { Mount } from "../snapshotter/snapshotter.js";
import type { WireInfo, WireTimestamp } from "./convert.js";

// Each message is sized first, then written into one buffer: no
// intermediate chunks (a first version that joined chunks was twice as slow
// as proto-loader on List batches). Every field number here is below 16, so
// a tag is one byte: field << 3 | wire type (0 varint, 2 length-delimited).

function varintSize(n: number): number {
  if (n < 0) return 10; // int64 two's complement
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function putVarint(buf: Buffer, off: number, n: number): number {
  if (n < 0) {
    let b = BigInt.asUintN(64, BigInt(n));
    while (b > 0x7fn) {
      buf[off++] = Number(b & 0x7fn) | 0x80;
      b >>= 7n;
    }
    buf[off++] = Number(b);
    return off;
  }
  while (n >= 128) {
    buf[off++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[off++] = n;
  return off;
}

/** Size of a length-delimited field whose body has `len` bytes. */
const lenField = (len: number) => 1 + varintSize(len) + len;

function putLenHeader(buf: Buffer, off: number, field: number, len: number): number {
  buf[off++] = (field << 3) | 2;
  return putVarint(buf, off, len);
}

function putString(buf: Buffer, off: number, field: number, s: string, bytes: number): number {
  off = putLenHeader(buf, off, field, bytes);
  return off + buf.write(s, off, bytes, "utf8");
}

function putUint(buf: Buffer, off: number, field: number, n: number): number {
  buf[off++] = field << 3;
  return putVarint(buf, off, n);
}

// ---------------------------------------------------------------- mounts

const encodedMounts = new WeakMap<Mount, Buffer>();

/** One Mount as the length-delimited field 1 of the response message. */
function encodeMountField(m: Mount): Buffer {
  let buf = encodedMounts.get(m);
  if (buf) return buf;
  const target = m.target ?? "";
  const tl = Buffer.byteLength(m.type), sl = Buffer.byteLength(m.source), gl = Buffer.byteLength(target);
  const ol = m.options.map((o) => Buffer.byteLength(o));
  // proto3 leaves out empty strings, but not the elements of a repeated field.
  let body = (tl ? lenField(tl) : 0) + (sl ? lenField(sl) : 0) + (gl ? lenField(gl) : 0);
  for (const l of ol) body += lenField(l);
  buf = Buffer.allocUnsafe(lenField(body));
  let off = putLenHeader(buf, 0, 1, body);
  if (tl) off = putString(buf, off, 1, m.type, tl);
  if (sl) off = putString(buf, off, 2, m.source, sl);
  if (gl) off = putString(buf, off, 3, target, gl);
  m.options.forEach((o, i) => (off = putString(buf!, off, 4, o, ol[i]!)));
  encodedMounts.set(m, buf);
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

// ---------------------------------------------------------------- infos

const KIND_NUMBER: Record<string, number> = { UNKNOWN: 0, VIEW: 1, ACTIVE: 2, COMMITTED: 3 };

function timestampSize(t: WireTimestamp): number {
  return (t.seconds ? 1 + varintSize(t.seconds) : 0) + (t.nanos ? 1 + varintSize(t.nanos) : 0);
}

function putTimestamp(buf: Buffer, off: number, field: number, t: WireTimestamp, size: number): number {
  off = putLenHeader(buf, off, field, size);
  if (t.seconds) off = putUint(buf, off, 1, t.seconds);
  if (t.nanos) off = putUint(buf, off, 2, t.nanos);
  return off;
}

/** An Info message's own bytes (without tag and length). */
export function encodeInfo(info: WireInfo): Buffer {
  const nl = Buffer.byteLength(info.name), pl = Buffer.byteLength(info.parent);
  const kind = KIND_NUMBER[info.kind] ?? 0;
  const c = info.createdAt, u = info.updatedAt;
  const cs = c ? timestampSize(c) : 0, us = u ? timestampSize(u) : 0;
  const labels = Object.entries(info.labels);
  // A map entry is a message { 1 key, 2 value }, both always written.
  const ll = labels.map(([k, v]) => [Buffer.byteLength(k), Buffer.byteLength(v)] as const);
  let size = (nl ? lenField(nl) : 0) + (pl ? lenField(pl) : 0) + (kind ? 2 : 0) + (c ? lenField(cs) : 0) + (u ? lenField(us) : 0);
  for (const [kl, vl] of ll) size += lenField(lenField(kl) + lenField(vl));
  const buf = Buffer.allocUnsafe(size);
  let off = 0;
  if (nl) off = putString(buf, off, 1, info.name, nl);
  if (pl) off = putString(buf, off, 2, info.parent, pl);
  if (kind) off = putUint(buf, off, 3, kind);
  if (c) off = putTimestamp(buf, off, 4, c, cs);
  if (u) off = putTimestamp(buf, off, 5, u, us);
  labels.forEach(([k, v], i) => {
    const [kl, vl] = ll[i]!;
    off = putLenHeader(buf, off, 6, lenField(kl) + lenField(vl));
    off = putString(buf, off, 1, k, kl);
    off = putString(buf, off, 2, v, vl);
  });
  return buf;
}

/** StatSnapshotResponse and UpdateSnapshotResponse: `Info info = 1`. */
export function encodeInfoResponse(info: Buffer): Buffer {
  return encodeListResponse([info]);
}

/** ListSnapshotsResponse: `repeated Info info = 1`. */
export function encodeListResponse(infos: readonly Buffer[]): Buffer {
  let size = 0;
  for (const i of infos) size += lenField(i.length);
  const buf = Buffer.allocUnsafe(size);
  let off = 0;
  for (const i of infos) {
    off = putLenHeader(buf, off, 1, i.length);
    off += i.copy(buf, off);
  }
  return buf;
}
