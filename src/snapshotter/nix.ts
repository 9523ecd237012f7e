/**
 * The Nix behaviour, as a decorator over the overlay snapshotter:
 *   - Prepare of a nix layer (label containerd.io/snapshot/nix-layer) reads
 *     its store paths from the labels, realises them with one Nix call and
 *     roots them under <root>/gcroots/<snapshot id>/, atomically with the
 *     snapshot's creation;
 *   - Mounts of any snapshot above nix layers add one read-only bind mount
 *     per store path of its chain, with a target inside the rootfs;
 *   - Remove and Cleanup delete the roots, so `nix-store --gc` can collect
 *     what no image uses any more.
 *
 * Layout under <root>/gcroots/<id>/: the GC root links Nix made
 * (root, root-2, ...) and `store-paths`, the layer's store paths, one per
 * line, written last: its presence marks a nix layer whose roots are
 * complete, and it is what Mounts reads (and caches) for the chain.
 */
import { mkdir, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { FailedPreconditionError, InvalidArgumentError } from "../errors.js";
import type { Logger } from "../log.js";
import { nullLogger } from "../log.js";
import { isNixLayer, nixLayerFromLabels, parseClosureFile, type NixLayer } from "../nix/labels.js";
import type { Realiser } from "../nix/realise.js";
import { checkFileWithin, checkNoEscape, DEFAULT_STORE_DIR, parseStorePath, type StorePath } from "../nix/store-path.js";
import { removeDir, type OverlaySnapshotter } from "./overlay.js";
import type { CreateOptions, Info, Mount, Snapshotter, Usage } from "./snapshotter.js";

export interface NixOptions {
  realiser: Realiser;
  storeDir?: string;
  logger?: Logger;
}

const STORE_PATHS_FILE = "store-paths";

/** Checks at most this many paths at once (lstat), whatever the closure's size. */
const CHECK_CONCURRENCY = 32;

export function storeBindMount(p: StorePath): Mount {
  return { type: "bind", source: p, target: p, options: ["ro", "rbind"] };
}

export class NixSnapshotter implements Snapshotter {
  private readonly gcrootsDir: string;
  private readonly storeDir: string;
  private readonly realiser: Realiser;
  private readonly log: Logger;
  /** Snapshot id -> its layer's store paths (null: not a nix layer). Immutable per id. */
  private readonly storePaths = new Map<string, readonly StorePath[] | null>();
  /** Nearest parent id -> the bind mounts of its whole chain (see chainMounts). */
  private readonly bindMountsByParent = new Map<string, Mount[]>();
  /** Ids of nix layers being realised: their roots are still being made. */
  private readonly preparing = new Set<string>();

  private constructor(private readonly inner: OverlaySnapshotter, opts: NixOptions) {
    this.gcrootsDir = path.join(inner.root, "gcroots");
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
    this.realiser = opts.realiser;
    this.log = opts.logger ?? nullLogger;
  }

  static async wrap(inner: OverlaySnapshotter, opts: NixOptions): Promise<NixSnapshotter> {
    const sn = new NixSnapshotter(inner, opts);
    await mkdir(sn.gcrootsDir, { recursive: true, mode: 0o700 });
    await sn.repairHalfPrepared();
    return sn;
  }

  stat(key: string): Promise<Info> {
    return this.inner.stat(key);
  }

  update(info: Pick<Info, "name" | "labels">, fieldPaths?: string[]): Promise<Info> {
    return this.inner.update(info, fieldPaths);
  }

  usage(key: string): Promise<Usage> {
    return this.inner.usage(key);
  }

  async commit(name: string, key: string, opts?: CreateOptions): Promise<void> {
    const id = await this.inner.idOf(key);
    if (this.preparing.has(id)) {
      throw new FailedPreconditionError(`snapshot ${JSON.stringify(key)} is still being prepared (its store paths are being realised)`);
    }
    // The store paths and roots stay with the id, which a commit keeps.
    return this.inner.commit(name, key, opts);
  }

  walk(fn: (info: Info) => void | Promise<void>, filters?: string[]): Promise<void> {
    return this.inner.walk(fn, filters);
  }

  prepare(key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return this.create("active", key, parent, opts);
  }

  view(key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return this.create("view", key, parent, opts);
  }

  async mounts(key: string): Promise<Mount[]> {
    const rec = await this.inner.record(key);
    const rootfs = this.inner.mountsOf(rec);
    // A nix layer being unpacked gets no store mounts: the differ writes the
    // layer's mountpoints into its upper directory.
    if (this.preparing.has(rec.id) || (await this.layerPaths(rec.id)) !== null) return rootfs;
    return [...rootfs, ...(await this.chainMounts(rec.parentIds))];
  }

  async remove(key: string): Promise<void> {
    const id = await this.inner.idOf(key);
    await this.inner.remove(key);
    // Roots go after the snapshot, never before: a live snapshot always
    // has its paths rooted. A crash in between leaves roots Cleanup removes.
    const known = this.storePaths.get(id);
    this.storePaths.delete(id);
    this.bindMountsByParent.delete(id);
    if (known !== null) await removeDir(path.join(this.gcrootsDir, id), this.log);
  }

  async cleanup(): Promise<void> {
    await this.inner.cleanup();
    const ids = await this.inner.ids();
    for (const name of await readdir(this.gcrootsDir)) {
      if (ids.has(name)) continue;
      this.log.info("removing GC roots no snapshot references", { dir: name });
      this.storePaths.delete(name);
      this.bindMountsByParent.delete(name);
      await removeDir(path.join(this.gcrootsDir, name), this.log);
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private async create(kind: "active" | "view", key: string, parent: string, opts: CreateOptions): Promise<Mount[]> {
    const labels = opts.labels ?? {};
    const layer = nixLayerFromLabels(labels, this.storeDir);
    const rec = await this.inner.create(kind, key, parent, opts);
    const rootfs = this.inner.mountsOf(rec);
    if (!layer) {
      this.storePaths.set(rec.id, null);
      return [...rootfs, ...(await this.chainMounts(rec.parentIds))];
    }

    // Nix registers each root by the path of its link (an indirect root),
    // so the links are made in their final place, gcroots/<id>: the
    // snapshot exists first, and is removed again if realisation fails. A
    // crash in between leaves a nix layer without its store-paths file,
    // which start-up removes (repairHalfPrepared).
    const dir = path.join(this.gcrootsDir, rec.id);
    this.preparing.add(rec.id);
    try {
      const started = Date.now();
      await rm(dir, { recursive: true, force: true }); // an orphan of a crash may hold the id
      await mkdir(dir, { mode: 0o700 });
      const paths = await this.realiseLayer(layer, dir);
      const list = path.join(dir, STORE_PATHS_FILE);
      await writeFile(list + ".tmp", paths.join("\n") + "\n");
      await rename(list + ".tmp", list); // the file appears whole or not at all
      this.storePaths.set(rec.id, paths);
      this.log.info("nix layer prepared", { key, id: rec.id, storePaths: paths.length, ms: Date.now() - started });
      // A nix layer being unpacked gets no store mounts: the differ writes
      // the layer's mountpoints into its upper directory.
      return rootfs;
    } catch (err) {
      await this.inner.remove(key).catch((e: unknown) => this.log.error("cannot undo failed nix layer", { key, error: e }));
      await removeDir(dir, this.log);
      throw err;
    } finally {
      this.preparing.delete(rec.id);
    }
  }

  /**
   * Removes nix layers whose preparation a crash interrupted: active or view
   * snapshots labelled as nix layers with no store-paths file. containerd
   * saw their Prepare fail and unpacks again.
   */
  async repairHalfPrepared(): Promise<void> {
    const broken: string[] = [];
    await this.inner.walk(async (info) => {
      if (info.kind === "committed" || !isNixLayer(info.labels)) return;
      const id = await this.inner.idOf(info.name);
      if ((await this.layerPaths(id)) === null) broken.push(info.name);
    });
    for (const key of broken) {
      this.log.warn("removing nix layer whose preparation was interrupted", { key });
      await this.remove(key);
    }
  }

  /** Realises and roots a layer's paths under rootDir; returns the paths to mount. */
  private async realiseLayer(layer: NixLayer, rootDir: string): Promise<StorePath[]> {
    let paths = layer.paths;
    if (layer.closure) {
      // Fast path: one path realised and rooted keeps the whole closure
      // alive (its references are the closure); the file lists it.
      const closure = layer.closure;
      await this.realiser.realise([closure.storePath], rootDir);
      await checkNoEscape(closure.storePath, this.storeDir);
      const text = await checkFileWithin(closure)
        .then((real) => readFile(real, "utf8"))
        .catch((err: Error) => {
          if (err instanceof InvalidArgumentError) throw err;
          throw new InvalidArgumentError(`nix-closure ${closure.file} is not a readable closure file: ${err.message}`);
        });
      const listed = parseClosureFile(text, closure.file, this.storeDir);
      const inClosure = new Set(listed);
      const extra = layer.paths.filter((p) => !inClosure.has(p));
      if (extra.length > 0) await this.realiser.realise(extra, path.join(rootDir, "extra"));
      paths = [...new Set([...listed, ...extra])].sort();
    } else if (paths.length > 0) {
      await this.realiser.realise(paths, rootDir);
    }
    await this.checkPaths(paths);
    return paths;
  }

  /** Every path must exist and stay inside the store (no symlink escape). */
  private async checkPaths(paths: readonly StorePath[]): Promise<void> {
    let next = 0;
    const work = async () => {
      while (next < paths.length) {
        const p = paths[next++]!;
        try {
          await checkNoEscape(p, this.storeDir);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOENT") {
            throw new InvalidArgumentError(`store path ${p} is not in the store (listed by the image's closure, but not realised)`);
          }
          throw err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CHECK_CONCURRENCY, paths.length) }, work));
  }

  /** The layer's store paths of a snapshot id, or null when it is no nix layer. */
  private async layerPaths(id: string): Promise<readonly StorePath[] | null> {
    const cached = this.storePaths.get(id);
    if (cached !== undefined) return cached;
    if (this.preparing.has(id)) return null; // not known yet; do not cache
    let paths: StorePath[] | null = null;
    try {
      const text = await readFile(path.join(this.gcrootsDir, id, STORE_PATHS_FILE), "utf8");
      // Written by us, but parsed all the same: the type says validated.
      paths = text.split("\n").filter((l) => l !== "").map((l) => parseStorePath(l, this.storeDir));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    this.storePaths.set(id, paths);
    return paths;
  }

  /**
   * Bind mounts for every store path of a chain of parents, deduplicated and
   * sorted. The chain above a committed parent never changes, so the list
   * is computed once per nearest parent and the same Mount objects are
   * handed out again (the service adapter caches their encoding).
   */
  private async chainMounts(ids: readonly string[]): Promise<Mount[]> {
    if (ids.length === 0) return [];
    const nearest = ids[0]!;
    const cached = this.bindMountsByParent.get(nearest);
    if (cached) return cached;
    const all = new Set<StorePath>();
    for (const id of ids) {
      const paths = await this.layerPaths(id);
      if (paths) for (const p of paths) all.add(p);
    }
    const mounts = [...all].sort().map(storeBindMount);
    this.bindMountsByParent.set(nearest, mounts);
    return mounts;
  }
}
