/**
 * The members of an image archive's tar, by normalised name, with links
 * resolved and a whole-file gzip undone; and the checks both archive
 * formats make on what they read from it.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, open, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import { detectCompression } from "./compression.js";
import { sha256Digest } from "../digest.js";
import type { BlobSource } from "../containerd/content.js";
import { fileRange, indexTar, readSource } from "./tar-index.js";

/** Manifests, configs and indexes are JSON of a few KiB; refuse absurd ones rather than buffer them. */
export const MAX_JSON_BLOB = 16 * 1024 * 1024;

/** Regular files of a tar by normalised name, with symlinks and hardlinks resolved. */
export class TarFiles {
  readonly files = new Map<string, BlobSource>();
  readonly links = new Map<string, string>();

  constructor(readonly file: string) {}

  static normalise(name: string): string {
    return name.split("/").filter((s) => s !== "" && s !== ".").join("/");
  }

  /** The member `name`, following links (docker save links duplicate layers). */
  get(name: string): BlobSource | undefined {
    let n = TarFiles.normalise(name);
    for (let hops = 0; hops < 16; hops++) {
      const f = this.files.get(n);
      if (f) return f;
      const l = this.links.get(n);
      if (l === undefined) return undefined;
      n = l;
    }
    return undefined;
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  /** A small member's bytes (JSON documents). */
  async read(name: string): Promise<Buffer> {
    return readSource(this.get(name)!, MAX_JSON_BLOB, `${name} in ${this.file}`);
  }
}

/**
 * Indexes the archive's members. A docker-archive is sometimes gzipped as a
 * whole (`docker save | gzip`): that one is inflated into a temporary file
 * first (a gzip stream cannot be read from an offset), removed by `cleanup`.
 */
export async function indexArchive(file: string): Promise<{ tar: TarFiles; cleanup: () => Promise<void> }> {
  const head = Buffer.alloc(4);
  {
    const fh = await open(file, "r");
    try {
      await fh.read(head, 0, 4, 0);
    } finally {
      await fh.close();
    }
  }
  let tarFile = file;
  let cleanup = async () => undefined as void;
  if (detectCompression(head) === "gzip") {
    const dir = await mkdtemp(path.join(os.tmpdir(), "nix2container-archive-"));
    cleanup = () => rm(dir, { recursive: true, force: true });
    tarFile = path.join(dir, "archive.tar");
    try {
      await pipeline(createReadStream(file), zlib.createGunzip(), createWriteStream(tarFile));
    } catch (err) {
      await cleanup();
      throw new Error(`reading image archive ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  const tar = new TarFiles(file);
  try {
    for (const [raw, m] of await indexTar(tarFile)) {
      const name = TarFiles.normalise(raw);
      if (m.type === "file") tar.files.set(name, fileRange(tarFile, m.offset, m.size));
      // Symlink targets are relative to the link's directory; hardlinks name an archive path.
      else if (m.type === "symlink" && m.linkname) tar.links.set(name, TarFiles.normalise(path.posix.join(path.posix.dirname(name), m.linkname)));
      else if (m.type === "link" && m.linkname) tar.links.set(name, TarFiles.normalise(m.linkname));
    }
  } catch (err) {
    await cleanup();
    throw new Error(`reading image archive ${file}: ${(err as Error).message}`, { cause: err });
  }
  return { tar, cleanup };
}

export function parseJson<T>(buf: Buffer, what: string): T {
  try {
    return JSON.parse(buf.toString("utf8")) as T;
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/** A blob of an OCI layout, named by its digest. */
export const BLOB_PATH_RE = /^blobs\/(sha256)\/([0-9a-f]{64})$/;

/** Checks that `buf` hashes to `digest`; the error names the blob. */
export function verifyBlob(digest: string, buf: Buffer, where: string): void {
  const actual = sha256Digest(buf);
  if (actual !== digest) throw new Error(`blob ${where} has digest ${actual}, expected ${digest}`);
}
