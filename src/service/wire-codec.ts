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
import type { WireInfo, WireTimestamp } from "./snapshots.js";

/** Tag bytes: field number << 3 | wire type (0 varint, 2 length-delimited). */
const LEN = (field: number) => (field << 3) | 2;
const VARINT = (field: number) => field << 3;

/** Writes protobuf fields into a list of chunks; bytes() joins them. */
class Writer {
  private readonly chunks: Buffer[] = [];
  private scratch: number[] = [];
  length = 0;

  private flushScratch(): void {
    if (this.scratch.length === 0) return;
    this.chunks.push(Buffer.from(this.scratch));
    this.length += this.scratch.length;
    this.scratch = [];
  }

  varint(n: number | bigint): void {
    if (typeof n === "number" && n >= 0 && n <= 0xffffffff) {
      while (n > 0x7f) {
        this.scratch.push((n & 0x7f) | 0x80);
        n >>>= 7;
      }
      this.scratch.push(n);
      return;
    }
    // int64 beyond 32 bits, or negative (two's complement, ten bytes).
    let b = BigInt.asUintN(64, BigInt(n));
    while (b > 0x7fn) {
      this.scratch.push(Number(b & 0x7fn) | 0x80);
      b >>= 7n;
    }
    this.scratch.push(Number(b));
  }

  /** A length-delimited field with these bytes. */
  bytes(field: number, b: Buffer): void {
    this.scratch.push(LEN(field));
    this.varint(b.length);
    this.flushScratch();
    this.chunks.push(b);
    this.length += b.length;
  }

  /** A string field; proto3 leaves out empty ones unless `always` (map entries, repeated). */
  string(field: number, s: string, always = false): void {
    if (s === "" && !always) return;
    this.bytes(field, Buffer.from(s, "utf8"));
  }

  /** A varint field; proto3 leaves out zero. */
  uint(field: number, n: number | bigint): void {
    if (n === 0 || n === 0n) return;
    this.scratch.push(VARINT(field));
    this.varint(n);
  }

  /** A nested message, always written (present, even when empty). */
  message(field: number, fill: (w: Writer) => void): void {
    const inner = new Writer();
    fill(inner);
    this.bytes(field, inner.finish());
  }

  finish(): Buffer {
    this.flushScratch();
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
  }
}

// ---------------------------------------------------------------- mounts

const encodedMounts = new WeakMap<Mount, Buffer>();

/** One Mount as the length-delimited field 1 of the response message. */
function encodeMountField(m: Mount): Buffer {
  let buf = encodedMounts.get(m);
  if (buf) return buf;
  const w = new Writer();
  w.message(1, (b) => {
    b.string(1, m.type);
    b.string(2, m.source);
    b.string(3, m.target ?? "");
    for (const o of m.options) b.string(4, o, true);
  });
  buf = w.finish();
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

function timestamp(w: Writer, field: number, t: WireTimestamp | null | undefined): void {
  if (!t) return;
  w.message(field, (b) => {
    b.uint(1, t.seconds);
    b.uint(2, t.nanos);
  });
}

/** An Info message's own bytes (without tag and length). */
export function encodeInfo(info: WireInfo): Buffer {
  const w = new Writer();
  w.string(1, info.name);
  w.string(2, info.parent);
  w.uint(3, KIND_NUMBER[info.kind] ?? 0);
  timestamp(w, 4, info.createdAt);
  timestamp(w, 5, info.updatedAt);
  for (const [k, v] of Object.entries(info.labels)) {
    // A map entry is a message { 1 key, 2 value }.
    w.message(6, (e) => {
      e.string(1, k, true);
      e.string(2, v, true);
    });
  }
  return w.finish();
}

/** StatSnapshotResponse and UpdateSnapshotResponse: `Info info = 1`. */
export function encodeInfoResponse(info: Buffer): Buffer {
  const w = new Writer();
  w.bytes(1, info);
  return w.finish();
}

/** ListSnapshotsResponse: `repeated Info info = 1`. */
export function encodeListResponse(infos: readonly Buffer[]): Buffer {
  const w = new Writer();
  for (const i of infos) w.bytes(1, i);
  return w.finish();
}
