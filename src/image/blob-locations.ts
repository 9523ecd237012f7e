/**
 * Which repositories of a registry a blob was pushed to, remembered across
 * pushes, so that pushing the same layers to another repository of that
 * registry can ask for a cross-repository mount (distribution spec, "Mounting
 * a blob from another repository") instead of uploading them again. Docker
 * keeps the same kind of record (distribution/metadata V2Metadata), skopeo
 * its blob-info cache.
 *
 * A small JSON file, $XDG_CACHE_HOME/nix2container/blob-locations.json
 * (default ~/.cache/...): {"<registry>": {"<digest>": ["<repository>", ...]}}.
 * It is only a hint: a wrong or stale entry costs one mount request that the
 * registry answers by starting an ordinary upload. So it is read leniently
 * and written atomically (temporary file, rename), and never fails a push.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

/** Repositories remembered per blob, most recent first. */
const PER_BLOB = 4;
/** Blobs remembered per registry, oldest forgotten first. */
const PER_REGISTRY = 20_000;

type Table = Record<string, Record<string, string[]>>;

export function blobLocationsFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env["XDG_CACHE_HOME"] || path.join(env["HOME"] || os.homedir(), ".cache");
  return path.join(base, "nix2container", "blob-locations.json");
}

export class BlobLocations {
  private constructor(
    private readonly file: string,
    private readonly table: Table,
  ) {}

  static async load(file: string): Promise<BlobLocations> {
    let table: Table = {};
    try {
      const parsed = JSON.parse(await readFile(file, "utf8")) as unknown;
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) table = parsed as Table;
    } catch {
      // Missing or unreadable: start afresh (it is a cache).
    }
    return new BlobLocations(file, table);
  }

  /** Repositories of `registry` known to hold `digest`, other than `exclude`. */
  sources(registry: string, digest: string, exclude: string): string[] {
    const repos = this.table[registry]?.[digest];
    return Array.isArray(repos) ? repos.filter((r) => typeof r === "string" && r !== exclude) : [];
  }

  add(registry: string, digest: string, repository: string): void {
    const reg = (this.table[registry] ??= {});
    const repos = [repository, ...(reg[digest] ?? []).filter((r) => r !== repository)].slice(0, PER_BLOB);
    // Re-insert so that insertion order is recency order.
    delete reg[digest];
    reg[digest] = repos;
    const keys = Object.keys(reg);
    for (const k of keys.slice(0, Math.max(0, keys.length - PER_REGISTRY))) delete reg[k];
  }

  /** Writes the file; failures are ignored (the next push just uploads). */
  async save(): Promise<void> {
    try {
      await mkdir(path.dirname(this.file), { recursive: true });
      const tmp = `${this.file}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
      await writeFile(tmp, JSON.stringify(this.table));
      await rename(tmp, this.file);
    } catch {
      /* a cache */
    }
  }
}
