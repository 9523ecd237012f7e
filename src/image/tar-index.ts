/**
 * Where each member of a tar file lies, without reading the members: image
 * archives hold layers of hundreds of MiB, and the daemon that loads them
 * must not hold them in its heap. Only the 512-byte headers (and the PAX and
 * GNU long-name records, which are small) are read; a member's bytes are
 * read later, as a stream over its range of the file.
 *
 * Format: POSIX.1-2001 ustar headers (name 0..100, size 124..136 in octal or
 * GNU base-256, checksum 148..156, typeflag 156, linkname 157..257, magic
 * "ustar" at 257, prefix 345..500), PAX extended headers ('x': records
 * "<len> <key>=<value>\n" overriding path, linkpath and size of the next
 * member; 'g' global records are ignored) and GNU long names ('L', 'K').
 * Bodies are padded to 512 bytes; two zero blocks end the archive.
 */
import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { Readable } from "node:stream";
import type { BlobSource } from "../containerd/content.js";

const BLOCK = 512;
/** PAX and GNU long-name records larger than this are not metadata a sane archive writes. */
const MAX_META = 1024 * 1024;

/** A range of a file. */
export function fileRange(file: string, offset: number, size: number): BlobSource {
  return {
    size,
    open(start = 0, end = size) {
      if (start < 0 || end > size || start > end) throw new RangeError(`range ${start}..${end} outside 0..${size}`);
      if (start === end) return Readable.from([]);
      return createReadStream(file, { start: offset + start, end: offset + end - 1 });
    },
  };
}

/** Bytes in memory, as a BlobSource. */
export function bufferSource(buf: Buffer): BlobSource {
  return {
    size: buf.length,
    open(start = 0, end = buf.length) {
      return Readable.from(start === end ? [] : [buf.subarray(start, end)]);
    },
  };
}

/** Reads a whole source into memory; refuses one larger than `limit`. */
export async function readSource(src: BlobSource, limit: number, what: string): Promise<Buffer> {
  if (src.size > limit) throw new Error(`${what} is ${src.size} bytes, more than the ${limit} this reader takes`);
  const chunks: Buffer[] = [];
  for await (const c of src.open()) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export interface TarMember {
  type: "file" | "symlink" | "link" | "directory" | "other";
  /** Byte offset of the body in the file, and its length. */
  offset: number;
  size: number;
  linkname?: string;
}

function cstring(b: Buffer, start: number, end: number): string {
  const nul = b.indexOf(0, start);
  return b.toString("utf8", start, nul === -1 || nul > end ? end : nul);
}

function parseSize(b: Buffer): number {
  const f = b.subarray(124, 136);
  // GNU base-256: the high bit of the first byte set; the rest big-endian.
  if (f[0]! & 0x80) {
    let n = f[0]! & 0x7f;
    for (let i = 1; i < f.length; i++) n = n * 256 + f[i]!;
    return n;
  }
  const s = cstring(f, 0, f.length).trim();
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) throw new Error(`bad size field ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function checksumOk(b: Buffer): boolean {
  const want = cstring(b, 148, 156).trim();
  if (!/^[0-7]+$/.test(want)) return false;
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
  return sum === parseInt(want, 8);
}

function parsePax(buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let off = 0;
  while (off < buf.length) {
    const sp = buf.indexOf(0x20, off);
    if (sp === -1) break;
    const len = parseInt(buf.toString("ascii", off, sp), 10);
    if (!Number.isFinite(len) || len <= 0 || off + len > buf.length) throw new Error("bad PAX record");
    const rec = buf.toString("utf8", sp + 1, off + len - 1);
    const eq = rec.indexOf("=");
    if (eq !== -1) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    off += len;
  }
  return out;
}

async function readAt(fh: FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got === len ? buf : buf.subarray(0, got);
}

/**
 * The members of the tar file `file` by name (as written, leading "./" and
 * duplicate slashes kept: the caller normalises). A later member of the same
 * name replaces an earlier one, as extracting would. Throws on a header
 * whose checksum is wrong or a member that runs past the end of the file.
 */
export async function indexTar(file: string): Promise<Map<string, TarMember>> {
  const out = new Map<string, TarMember>();
  const fh = await open(file, "r");
  try {
    const fileSize = (await fh.stat()).size;
    let pos = 0;
    let pax: Record<string, string> = {};
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const h = await readAt(fh, pos, BLOCK);
      if (h.length === 0) break; // no end-of-archive blocks: accepted, as GNU tar does
      if (h.length < BLOCK) throw new Error(`truncated tar header at byte ${pos}`);
      if (h.every((x) => x === 0)) break;
      if (!checksumOk(h)) throw new Error(`invalid tar header at byte ${pos} (checksum mismatch)`);
      const flag = String.fromCharCode(h[156]!);
      let size = parseSize(h);
      if (pax["size"] !== undefined) size = Number(pax["size"]);
      const body = pos + BLOCK;
      if (!Number.isSafeInteger(size) || size < 0 || body + size > fileSize) {
        throw new Error(`tar member at byte ${pos} claims ${size} bytes, past the end of the file`);
      }
      pos = body + Math.ceil(size / BLOCK) * BLOCK;
      if (flag === "x" || flag === "g" || flag === "L" || flag === "K") {
        if (size > MAX_META) throw new Error(`tar metadata record at byte ${body - BLOCK} is ${size} bytes`);
        const meta = await readAt(fh, body, size);
        if (flag === "x") pax = { ...pax, ...parsePax(meta) };
        else if (flag === "L") longName = cstring(meta, 0, meta.length);
        else if (flag === "K") longLink = cstring(meta, 0, meta.length);
        continue;
      }
      // POSIX ustar ("ustar\0"): a name prefix at 345; GNU's old format
      // ("ustar  ") keeps other fields there.
      const ustar = h.toString("ascii", 257, 262) === "ustar" && h[262] === 0;
      const prefix = ustar ? cstring(h, 345, 500) : "";
      let name = cstring(h, 0, 100);
      if (prefix) name = `${prefix}/${name}`;
      name = pax["path"] ?? longName ?? name;
      const linkname = pax["linkpath"] ?? longLink ?? cstring(h, 157, 257);
      pax = {};
      longName = longLink = undefined;
      const type =
        flag === "0" || flag === "\0" || flag === "7"
          ? "file"
          : flag === "2"
            ? "symlink"
            : flag === "1"
              ? "link"
              : flag === "5"
                ? "directory"
                : "other";
      out.set(name, { type, offset: body, size: type === "file" ? size : 0, ...(linkname ? { linkname } : {}) });
    }
  } finally {
    await fh.close();
  }
  return out;
}
