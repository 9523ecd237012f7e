/**
 * Deterministic layer tarballs. The same entries always give the same bytes,
 * so the same image always gets the same layer digests, diff_ids and manifest
 * digest: containerd then dedups content and snapshots across rebuilds, which
 * is the whole point of building images from the Nix store.
 *
 * Layer semantics follow image-spec layer.md: paths are relative to the root
 * filesystem, deletions are whiteout files named ".wh.<name>" next to the
 * deleted entry, and ".wh..wh..opq" inside a directory makes it opaque (hides
 * everything below it from lower layers).
 */
import { createHash } from "node:crypto";
import { promisify } from "node:util";
import { lstat, readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";
import { PassThrough, type Readable, Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import { Decompress as ZstdDecompress } from "fzstd";
import tarStream from "tar-stream";
import type { Header } from "tar-stream";

/** What tar-stream's pack.entry() takes: a header with at least a name. */
export type TarHeader = Partial<Header> & Pick<Header, "name">;

export type LayerEntry =
  | { type: "dir"; path: string; mode?: number; uid?: number; gid?: number }
  | { type: "file"; path: string; content: Buffer | string; mode?: number; uid?: number; gid?: number }
  | { type: "symlink"; path: string; target: string }
  | { type: "hardlink"; path: string; target: string }
  /** Deletes `path` from lower layers: tar entry "<dir>/.wh.<name>". */
  | { type: "whiteout"; path: string }
  /** Makes directory `path` opaque: tar entry "<path>/.wh..wh..opq". */
  | { type: "opaque"; path: string };

/** image-spec layer.md "Whiteouts". */
export const WHITEOUT_PREFIX = ".wh.";
export const OPAQUE_WHITEOUT = ".wh..wh..opq";

const DEFAULT_DIR_MODE = 0o755;
const DEFAULT_FILE_MODE = 0o644;
const SYMLINK_MODE = 0o777;

// File-type bits. tar-stream replaces a falsy mode with its default
// (pack.js: `if (!header.mode)`) and then masks with 07777 when encoding, so
// or-ing the type bits in keeps an explicit mode 0 as 0.
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/**
 * Largest uid/gid tar-stream can store: it writes 6 octal digits and has no
 * PAX fallback for ids, so anything larger would silently become 0777777.
 */
const MAX_TAR_ID = 0o777777;

/** Fixed mtime (the Unix epoch) on every entry, for determinism. */
const EPOCH = new Date(0);

/**
 * Normalises a root-relative path: strips leading "/" and "./", collapses
 * "//" and "." segments, drops a trailing "/". Rejects "..", NUL and the
 * root itself with an error naming the path, since a layer entry must name
 * something strictly below the root.
 */
export function normaliseLayerPath(p: string): string {
  if (p.includes("\0")) throw new Error(`invalid layer path ${JSON.stringify(p)}: contains NUL`);
  const parts: string[] = [];
  for (const seg of p.split("/")) {
    if (seg === "" || seg === ".") continue;
    if (seg === "..") throw new Error(`invalid layer path ${JSON.stringify(p)}: contains ".."`);
    parts.push(seg);
  }
  if (parts.length === 0) throw new Error(`invalid layer path ${JSON.stringify(p)}: names the root`);
  return parts.join("/");
}

/** One tar entry before encoding; `name` is normalised, without trailing "/". */
interface TarRecord {
  name: string;
  kind: "dir" | "file" | "symlink" | "hardlink";
  mode: number;
  uid: number;
  gid: number;
  body?: Buffer;
  linkname?: string;
  /** Where it came from, for error messages. */
  origin: string;
}

function checkId(what: string, v: number | undefined, p: string): number {
  const n = v ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > MAX_TAR_ID) {
    throw new Error(`invalid ${what} ${n} for layer path ${JSON.stringify(p)}: must be an integer in 0..${MAX_TAR_ID}`);
  }
  return n;
}

function checkMode(v: number | undefined, dflt: number, p: string): number {
  const n = v ?? dflt;
  if (!Number.isInteger(n) || n < 0 || n > 0o7777) {
    throw new Error(`invalid mode ${n} for layer path ${JSON.stringify(p)}: must be permission bits in 0..07777`);
  }
  return n;
}

function checkNotWhiteoutName(name: string, original: string): void {
  if (path.posix.basename(name).startsWith(WHITEOUT_PREFIX)) {
    throw new Error(
      `invalid layer path ${JSON.stringify(original)}: names starting with "${WHITEOUT_PREFIX}" are reserved for whiteouts (use a whiteout/opaque entry)`,
    );
  }
}

function toRecord(e: LayerEntry): TarRecord {
  const name = normaliseLayerPath(e.path);
  const origin = `${e.type} ${JSON.stringify(e.path)}`;
  switch (e.type) {
    case "dir":
      checkNotWhiteoutName(name, e.path);
      return {
        name,
        kind: "dir",
        mode: checkMode(e.mode, DEFAULT_DIR_MODE, e.path),
        uid: checkId("uid", e.uid, e.path),
        gid: checkId("gid", e.gid, e.path),
        origin,
      };
    case "file":
      checkNotWhiteoutName(name, e.path);
      return {
        name,
        kind: "file",
        mode: checkMode(e.mode, DEFAULT_FILE_MODE, e.path),
        uid: checkId("uid", e.uid, e.path),
        gid: checkId("gid", e.gid, e.path),
        body: typeof e.content === "string" ? Buffer.from(e.content, "utf8") : e.content,
        origin,
      };
    case "symlink":
      checkNotWhiteoutName(name, e.path);
      if (e.target === "" || e.target.includes("\0")) {
        throw new Error(`invalid symlink target ${JSON.stringify(e.target)} for layer path ${JSON.stringify(e.path)}`);
      }
      // The target is stored verbatim: absolute targets are resolved against
      // the container's root at run time, relative ones against the link.
      return { name, kind: "symlink", mode: SYMLINK_MODE, uid: 0, gid: 0, linkname: e.target, origin };
    case "hardlink": {
      checkNotWhiteoutName(name, e.path);
      // A tar hardlink names another entry by its archive path; containerd
      // resolves it below the extraction root (archive/tar.go hardlinkRootPath).
      const target = normaliseLayerPath(e.target);
      if (target === name) throw new Error(`hardlink ${JSON.stringify(e.path)} points to itself`);
      return { name, kind: "hardlink", mode: DEFAULT_FILE_MODE, uid: 0, gid: 0, linkname: target, origin };
    }
    case "whiteout": {
      const dir = path.posix.dirname(name);
      const base = path.posix.basename(name);
      checkNotWhiteoutName(name, e.path);
      const wh = WHITEOUT_PREFIX + base;
      // Whiteouts are empty regular files; their mode is never looked at.
      return { name: dir === "." ? wh : `${dir}/${wh}`, kind: "file", mode: 0, uid: 0, gid: 0, body: Buffer.alloc(0), origin };
    }
    case "opaque":
      checkNotWhiteoutName(name, e.path);
      return { name: `${name}/${OPAQUE_WHITEOUT}`, kind: "file", mode: 0, uid: 0, gid: 0, body: Buffer.alloc(0), origin };
  }
}

function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

function parentsOf(name: string): string[] {
  const out: string[] = [];
  let i = name.indexOf("/");
  while (i !== -1) {
    out.push(name.slice(0, i));
    i = name.indexOf("/", i + 1);
  }
  return out;
}

/**
 * Validates entries and expands them into the sorted list of tar records,
 * with missing parent directories added.
 */
function planLayer(entries: LayerEntry[]): TarRecord[] {
  const byName = new Map<string, TarRecord>();
  for (const e of entries) {
    const r = toRecord(e);
    const prev = byName.get(r.name);
    if (prev) throw new Error(`duplicate layer path ${JSON.stringify(r.name)} (${prev.origin} and ${r.origin})`);
    byName.set(r.name, r);
  }

  // Parents: an explicit one must be a directory; a missing one is added
  // (0755 root:root) so that extractors never have to invent it with their
  // own defaults, which differ between tools.
  for (const r of [...byName.values()]) {
    for (const parent of parentsOf(r.name)) {
      const p = byName.get(parent);
      if (!p) {
        byName.set(parent, { name: parent, kind: "dir", mode: DEFAULT_DIR_MODE, uid: 0, gid: 0, origin: "implied parent" });
      } else if (p.kind !== "dir") {
        throw new Error(`layer path ${JSON.stringify(r.name)} is below ${JSON.stringify(parent)}, which is a ${p.kind}, not a dir`);
      }
    }
  }

  // Bytewise order. A parent is a strict prefix of its children, so it always
  // sorts before them: extractors see every directory before its contents.
  const records = [...byName.values()].sort((a, b) => byteCompare(a.name, b.name));

  // A tar hardlink can only point at an entry already extracted. A target
  // outside this layer is allowed (it may come from a lower layer; containerd
  // applies onto the mounted parent view), one inside must come first.
  for (const r of records) {
    if (r.kind !== "hardlink") continue;
    const target = byName.get(r.linkname!);
    if (!target) continue;
    if (target.kind === "dir") throw new Error(`hardlink ${JSON.stringify(r.name)} points to a directory ${JSON.stringify(r.linkname)}`);
    if (byteCompare(target.name, r.name) > 0) {
      throw new Error(`hardlink ${JSON.stringify(r.name)} points to ${JSON.stringify(r.linkname)}, which sorts after it; swap link and target`);
    }
    // Like GNU tar, give the link entry its target's metadata.
    r.mode = target.mode;
    r.uid = target.uid;
    r.gid = target.gid;
  }
  return records;
}

function headerFor(r: TarRecord): TarHeader {
  const common = { uid: r.uid, gid: r.gid, mtime: EPOCH, uname: "", gname: "" };
  switch (r.kind) {
    case "dir":
      // Trailing "/" on directory names, as GNU tar, Docker and containerd write them.
      return { ...common, name: r.name + "/", type: "directory", mode: S_IFDIR | r.mode, size: 0 };
    case "file":
      return { ...common, name: r.name, type: "file", mode: S_IFREG | r.mode, size: r.body!.length };
    case "symlink":
      return { ...common, name: r.name, type: "symlink", mode: S_IFLNK | r.mode, size: 0, linkname: r.linkname! };
    case "hardlink":
      return { ...common, name: r.name, type: "link", mode: S_IFREG | r.mode, size: 0, linkname: r.linkname! };
  }
}

export interface TarItem {
  header: TarHeader;
  body?: Buffer;
  /** A file's bytes as a stream (header.size long), instead of `body`. */
  source?: { size: number; open(): Readable };
  /** With `source`: the sha256 digest the bytes must have; the tar fails otherwise. */
  digest?: string;
}

/**
 * Encodes tar items with tar-stream, handing each chunk to `sink` in order
 * (awaited, so a slow sink applies backpressure). Either side failing
 * destroys the pack so the other side never waits forever.
 */
export async function streamTar(items: Iterable<TarItem>, sink: (chunk: Buffer) => void | Promise<void>): Promise<void> {
  const pack = tarStream.pack();
  // The first failure is the cause; the other side then fails with a generic
  // "destroyed" error, which must not mask it. A sink error is recorded
  // before leaving the for-await, whose exit itself destroys the pack.
  let cause: unknown;
  // Errors reach the caller through `cause`; without a listener, streamx
  // would also raise the destroy error as an uncaught 'error' event.
  pack.on("error", () => undefined);
  const fail = (err: unknown) => {
    if (cause === undefined) cause = err;
    if (!pack.destroyed) pack.destroy(err instanceof Error ? err : new Error(String(err)));
  };
  const consumer = (async () => {
    // streamx types chunks as unknown; tar-stream only ever pushes Buffers.
    for await (const c of pack) {
      try {
        await sink(c as Buffer);
      } catch (err) {
        fail(err);
        throw err;
      }
    }
  })();
  const producer = (async () => {
    for (const { header, body, source, digest } of items) {
      // tar-stream would wait forever for the bytes of a body-less file.
      const isFile = header.type === undefined || header.type === "file" || header.type === "contiguous-file";
      if (isFile && source) {
        await streamEntry(pack, header, source, digest);
        continue;
      }
      if (isFile && !body) throw new Error(`tar item ${JSON.stringify(header.name)}: a file needs a body`);
      if (!isFile && body && body.length > 0) throw new Error(`tar item ${JSON.stringify(header.name)}: a ${header.type} has no body`);
      await new Promise<void>((resolve, reject) => {
        const cb = (err?: Error | null) => (err ? reject(err) : resolve());
        const entry = body ? pack.entry(header, body, cb) : pack.entry(header, cb);
        // Destroying the pack destroys its entry streams with the same error,
        // which `cb` already reports; keep it from also going uncaught.
        entry.on("error", () => undefined);
      });
    }
    pack.finalize();
  })();
  producer.catch(fail);
  consumer.catch(fail);
  await Promise.allSettled([producer, consumer]);
  if (cause !== undefined) throw cause;
}

/** Copies a stream into a tar entry, checking its length and, if given, its digest. */
async function streamEntry(pack: tarStream.Pack, header: TarHeader, source: { size: number; open(): Readable }, digest: string | undefined): Promise<void> {
  let entry!: ReturnType<tarStream.Pack["entry"]>;
  const finished = new Promise<void>((resolve, reject) => {
    entry = pack.entry({ ...header, size: source.size }, (err) => (err ? reject(err) : resolve()));
  });
  finished.catch(() => undefined); // awaited below
  entry.on("error", () => undefined);
  const hash = createHash("sha256");
  let n = 0;
  for await (const c of source.open()) {
    hash.update(c as Buffer);
    n += (c as Buffer).length;
    if (n > source.size) break;
    if (!entry.write(c as Buffer)) {
      await new Promise<void>((resolve, reject) => {
        // Both listeners go once either fires: a large layer waits for drain thousands of times.
        const onDrain = () => {
          entry.off("error", onError);
          resolve();
        };
        const onError = (err: Error) => {
          entry.off("drain", onDrain);
          reject(err);
        };
        entry.once("drain", onDrain);
        entry.once("error", onError);
      });
    }
  }
  if (n !== source.size) throw new Error(`tar item ${JSON.stringify(header.name)}: its source gave ${n} bytes, expected ${source.size}`);
  const got = `sha256:${hash.digest("hex")}`;
  if (digest !== undefined && got !== digest) throw new Error(`tar item ${JSON.stringify(header.name)}: its bytes have digest ${got}, expected ${digest}`);
  entry.end(undefined);
  await finished;
}

/** Encodes tar items into one Buffer. */
export async function packTar(items: Iterable<TarItem>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await streamTar(items, (c) => {
    chunks.push(c);
  });
  return Buffer.concat(chunks);
}

/**
 * Builds an uncompressed layer tarball. Deterministic: sorted entries, mtime
 * 0, empty uname/gname, so the same entries always give identical bytes.
 */
export async function buildLayer(entries: LayerEntry[]): Promise<Buffer> {
  const records = planLayer(entries);
  return packTar(records.map((r) => ({ header: headerFor(r), ...(r.body ? { body: r.body } : {}) })));
}

// --- compression -----------------------------------------------------------

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
export function decompressor(compression: Compression): Transform {
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

// --- from the host filesystem ---------------------------------------------

/**
 * Walks a host directory (lstat: symlinks are recorded, never followed) into
 * layer entries rooted at `dir`, keeping mode bits, uid/gid, symlink targets
 * and file contents. Files that share an inode become one file plus
 * hardlinks to the bytewise-first path, which is the order buildLayer writes.
 * Device nodes, fifos and sockets are rejected: LayerEntry cannot carry them.
 * Reads every file into memory; meant for small trees (tests, fixtures).
 */
export async function fileEntriesFromDir(dir: string): Promise<LayerEntry[]> {
  const found: { rel: string; abs: string }[] = [];
  async function walk(abs: string, rel: string): Promise<void> {
    const names = await readdir(abs);
    for (const n of names) {
      const childRel = rel ? `${rel}/${n}` : n;
      const childAbs = path.join(abs, n);
      found.push({ rel: childRel, abs: childAbs });
      const st = await lstat(childAbs);
      if (st.isDirectory()) await walk(childAbs, childRel);
    }
  }
  await walk(dir, "");
  found.sort((a, b) => byteCompare(a.rel, b.rel));

  const firstPathOfInode = new Map<string, string>();
  const entries: LayerEntry[] = [];
  for (const { rel, abs } of found) {
    const st = await lstat(abs);
    const mode = st.mode & 0o7777;
    if (st.isDirectory()) {
      entries.push({ type: "dir", path: rel, mode, uid: st.uid, gid: st.gid });
    } else if (st.isSymbolicLink()) {
      entries.push({ type: "symlink", path: rel, target: await readlink(abs) });
    } else if (st.isFile()) {
      if (st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        const first = firstPathOfInode.get(key);
        if (first !== undefined) {
          entries.push({ type: "hardlink", path: rel, target: first });
          continue;
        }
        firstPathOfInode.set(key, rel);
      }
      entries.push({ type: "file", path: rel, content: await readFile(abs), mode, uid: st.uid, gid: st.gid });
    } else {
      throw new Error(`unsupported file type at ${abs}: only directories, regular files and symlinks can go in a layer`);
    }
  }
  return entries;
}
