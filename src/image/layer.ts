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
import path from "node:path";
import { packTar, type TarHeader } from "./tar-writer.js";

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
const WHITEOUT_PREFIX = ".wh.";
const OPAQUE_WHITEOUT = ".wh..wh..opq";

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

/**
 * Builds an uncompressed layer tarball. Deterministic: sorted entries, mtime
 * 0, empty uname/gname, so the same entries always give identical bytes.
 */
export async function buildLayer(entries: LayerEntry[]): Promise<Buffer> {
  const records = planLayer(entries);
  return packTar(records.map((r) => ({ header: headerFor(r), ...(r.body ? { body: r.body } : {}) })));
}
