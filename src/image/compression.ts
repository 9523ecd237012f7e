/**
 * Layer compression: deterministic gzip, detecting gzip and zstd by their
 * magic bytes, decompressing either as a stream, and digesting a blob and
 * its uncompressed bytes (the diff_id) in one pass.
 */
import { createHash } from "node:crypto";
import { PassThrough, type Readable, Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { promisify } from "node:util";
import zlib from "node:zlib";
import { Decompress as ZstdDecompress } from "fzstd";

export interface GzipOptions {
  /** zlib level 0-9, default 6 (zlib's and Go's gzip.DefaultCompression). */
  level?: number;
}

const gzipAsync = promisify(zlib.gzip);
const gunzipAsync = promisify(zlib.gunzip);

/**
 * Deterministic gzip: Node's zlib writes a fixed header (no file name,
 * mtime 0, OS byte 3) and the deflate stream depends only on the input and
 * the level. Caveat: a different zlib version could in principle deflate the
 * same input differently, so digests are stable per Node/zlib release.
 */
export async function gzip(buf: Buffer, opts: GzipOptions = {}): Promise<Buffer> {
  const level = opts.level ?? 6;
  if (!Number.isInteger(level) || level < 0 || level > 9) throw new Error(`invalid gzip level ${level}: must be 0-9`);
  return gzipAsync(buf, { level });
}

export async function gunzip(buf: Buffer): Promise<Buffer> {
  return gunzipAsync(buf);
}

export type Compression = "gzip" | "zstd" | "none";

/** Detects compression by magic bytes, as containerd's compression.DetectCompression does. */
export function detectCompression(buf: Uint8Array): Compression {
  if (buf.length >= 3 && buf[0] === 0x1f && buf[1] === 0x8b && buf[2] === 0x08) return "gzip";
  if (buf.length >= 4 && buf[0] === 0x28 && buf[1] === 0xb5 && buf[2] === 0x2f && buf[3] === 0xfd) return "zstd";
  return "none";
}

/**
 * zstd as a stream transform. Node 20's zlib has no zstd; fzstd is a
 * dependency-free decoder that keeps only the frame's window in memory.
 */
class ZstdTransform extends Transform {
  private readonly d = new ZstdDecompress((chunk) => {
    // Copy: the decoder may reuse its output buffer for the next block.
    this.push(Buffer.from(chunk));
  });

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.d.push(chunk);
      cb();
    } catch (err) {
      cb(new Error(`zstd: ${(err as Error).message}`));
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.d.push(new Uint8Array(0), true);
      cb();
    } catch (err) {
      cb(new Error(`zstd: ${(err as Error).message}`));
    }
  }
}

/** A transform that undoes `compression`. */
function decompressor(compression: Compression): Transform {
  if (compression === "gzip") return zlib.createGunzip();
  if (compression === "zstd") return new ZstdTransform();
  return new PassThrough();
}

/**
 * The sha256 digest of a stream of bytes and, when it is compressed, of its
 * decompressed bytes (a layer's diff_id), in one pass with bounded memory.
 * Compression is detected from the first bytes, as containerd does.
 */
export async function digestStream(input: Readable, opts: { uncompressed?: boolean } = {}): Promise<{ digest: string; size: number; diffId?: string; compression?: Compression }> {
  const outer = createHash("sha256");
  let size = 0;
  if (!opts.uncompressed) {
    for await (const c of input) {
      outer.update(c as Buffer);
      size += (c as Buffer).length;
    }
    return { digest: `sha256:${outer.digest("hex")}`, size };
  }
  const inner = createHash("sha256");
  const it = (input as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  // Enough leading bytes to tell the compression.
  let first = Buffer.alloc(0);
  let eof = false;
  while (first.length < 4) {
    const n = await it.next();
    if (n.done) {
      eof = true;
      break;
    }
    first = Buffer.concat([first, n.value]);
  }
  const compression = detectCompression(first);
  const decompress = decompressor(compression);
  const done = pipeline(decompress, async function (src: AsyncIterable<Buffer>) {
    for await (const c of src) inner.update(c);
  });
  done.catch(() => undefined); // awaited below
  const feed = async (c: Buffer) => {
    outer.update(c);
    size += c.length;
    if (decompress.write(c)) return;
    await Promise.race([new Promise((r) => decompress.once("drain", r)), done]);
  };
  try {
    await feed(first);
    while (!eof) {
      const n = await it.next();
      if (n.done) break;
      await feed(n.value);
    }
    decompress.end();
    await done;
  } catch (err) {
    decompress.destroy();
    await it.return?.();
    throw err;
  }
  return { digest: `sha256:${outer.digest("hex")}`, size, diffId: `sha256:${inner.digest("hex")}`, compression };
}
