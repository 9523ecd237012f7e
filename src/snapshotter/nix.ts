/**
 * The Nix behaviour, as a decorator over the overlay snapshotter (through
 * the LayerStore seam, layer-store.ts):
 *   - Prepare of a nix layer (label containerd.io/snapshot/nix-layer) reads
 *     its store paths from the labels, realises them with one Nix call and
 *     roots them under <root>/gcroots/<snapshot id>/ (see realise.ts: only
 *     the tops of a set already in the store need a root);
 *   - Mounts of any snapshot above nix layers add the store: with the
 *     "tree" setting (the default) one read-only bind of the topmost nix
 *     layer's store view (store-view.ts) onto /nix/store, once that view is
 *     built; otherwise, and with "binds", one read-only bind mount per store
 *     path of its chain, with a target inside the rootfs, after checking
 *     every one is in the store (never a bind of nothing);
 *   - Commit of a nix layer starts building its store view in the
 *     background; Remove deletes it after the snapshot;
 *   - Remove and Cleanup delete the roots, so `nix-store --gc` can collect
 *     what no image uses any more.
 *
 * A nix layer's state lives in the metadata database (table nix_layers),
 * written in the transaction that creates the snapshot ("preparing") and
 * set "ready" with its store paths once every path is realised, rooted and
 * present. Whether a snapshot is a nix layer, and what start-up repair
 * removes, is read from there, never from labels a client can Update.
 * gcroots/<id>/ holds only the root links Nix made (root, root-2, ...;
 * extra/ and again-N/ for paths rooted by later calls).
 */
import { existsSync } from "node:fs";
import { mkdir, open, readdir, rm, unlink } from "node:fs/promises";
import { readdirSync } from "node:fs";
import path from "node:path";
import { CancelledError, FailedPreconditionError, InvalidArgumentError, UnavailableError } from "../errors.js";
import type { Logger } from "../log.js";
import { nullLogger } from "../log.js";
import { isNixLayer, MAX_CLOSURE_FILE_BYTES, nixLayerFromLabels, parseClosureFile, type NixLayer } from "../nix/labels.js";
import { waitForGarbageCollector } from "../nix/gc-lock.js";
import { queryRequisites, type Realiser } from "../nix/realise.js";
import { checkFileWithin, DEFAULT_STORE_DIR, isPresentInStore, parseStorePath, type StoreFile, type StorePath } from "../nix/store-path.js";
import { validateLabels, type MetaStore } from "./metadata.js";
import type { LayerStore } from "./layer-store.js";
import { claimOrphanEntries, fsyncPath, removeDir } from "./overlay.js";
import type { CreateOptions, Info, Mount, Snapshotter, Usage } from "./snapshotter.js";
import { StoreViews, type StoreViewMode } from "./store-view.js";

export interface NixOptions {
  realiser: Realiser;
  storeDir?: string;
  logger?: Logger;
  /** How containers see the store: one bind of a store view ("tree", the default) or one bind per path ("binds"). */
  storeView?: StoreViewMode;
}

/** Schema 1 kept a layer's store paths in this file under gcroots/<id>/. */
const LEGACY_STORE_PATHS_FILE = "store-paths";

/** Store paths looked at (lstat) between two yields to other calls: about a millisecond's work. */
const CHECK_BATCH = 250;

/**
 * Realisations of paths that vanished right after they were rooted (a
 * collector that began before the root existed) before Prepare gives up.
 */
const MAX_REALISE_ATTEMPTS = 3;


export function storeBindMount(p: StorePath): Mount {
  return { type: "bind", source: p, target: p, options: ["ro", "rbind"] };
}

export class NixSnapshotter implements Snapshotter {
  private readonly gcrootsDir: string;
  private readonly storeDir: string;
  private readonly realiser: Realiser;
  private readonly log: Logger;
  private readonly ms: MetaStore;
  /** Snapshot id -> its ready layer's store paths (null: not a nix layer). Immutable per id. */
  private readonly storePaths = new Map<string, readonly StorePath[] | null>();
  /** Nearest parent id -> the bind mounts of its whole chain (see chainMounts). */
  private readonly bindMountsByParent = new Map<string, Mount[]>();
  /** Realisations in flight by snapshot id: close() stops them. */
  private readonly inflight = new Map<string, AbortController>();
  private readonly storeView: StoreViewMode;
  /** Store views of nix layers (used with storeView "tree"). */
  readonly views: StoreViews;
  /** Nix layer id -> the one mount of its store view. */
  private readonly viewMounts = new Map<string, Mount[]>();

  private constructor(private readonly inner: LayerStore, opts: NixOptions) {
    this.gcrootsDir = path.join(inner.root, "gcroots");
    this.storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
    this.realiser = opts.realiser;
    this.log = opts.logger ?? nullLogger;
    this.ms = inner.metadata;
    this.storeView = opts.storeView ?? "tree";
    this.views = new StoreViews(inner.root, this.storeDir, this.log);
  }

  static async wrap(inner: LayerStore, opts: NixOptions): Promise<NixSnapshotter> {
    const sn = new NixSnapshotter(inner, opts);
    await mkdir(sn.gcrootsDir, { recursive: true, mode: 0o700 });
    await sn.views.init();
    if (sn.ms.legacyImportPending()) await sn.importLegacyLayers();
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
    // A layer only ever goes from preparing to ready, so a check now holds.
    if (this.ms.nixLayer(id)?.state === "preparing") {
      throw new FailedPreconditionError(`snapshot ${JSON.stringify(key)} is still being prepared (its store paths are being realised)`);
    }
    // The chain is read while the snapshot is still active (record() gives
    // active snapshots and views only); a commit keeps the id and parents.
    const viewOf = this.storeView === "tree" && this.layerPaths(id) !== null ? await this.inner.record(key) : undefined;
    // The store paths and roots stay with the id, which a commit keeps.
    await this.inner.commit(name, key, opts);
    // Build the layer's store view now, off the Prepare path: containers
    // started before it is ready get per-path binds.
    if (viewOf) void this.views.ensure(id, this.pathsOfChain([viewOf.id, ...viewOf.parentIds]));
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
    // A nix layer itself gets no store mounts: while it is unpacked the
    // differ writes the layer's mountpoints into its upper directory.
    if (this.layerPaths(rec.id) !== null) return rootfs;
    return [...rootfs, ...this.storeMounts(rec.parentIds, key)];
  }

  async remove(key: string): Promise<void> {
    const id = await this.inner.removeChecked(key, (id) => {
      if (this.ms.nixLayer(id)?.state === "preparing") {
        throw new FailedPreconditionError(`cannot remove snapshot ${JSON.stringify(key)}: its store paths are still being realised`);
      }
    });
    // Roots go after the snapshot, never before: a live snapshot always
    // has its paths rooted. A crash in between leaves roots Cleanup removes.
    const known = this.storePaths.get(id);
    this.storePaths.delete(id);
    this.bindMountsByParent.delete(id);
    this.viewMounts.delete(id);
    if (known !== null) {
      await removeDir(path.join(this.gcrootsDir, id), this.log);
      await this.views.remove(id);
    }
  }

  async cleanup(): Promise<void> {
    await this.inner.cleanup();
    for (const dir of this.claimOrphanRoots()) await removeDir(dir, this.log);
    const views = this.views.claimOrphans((id) => this.ms.nixLayer(id) !== undefined);
    for (const dir of views) await removeDir(dir, this.log);
  }

  /**
   * As the overlay's claimOrphans, for gcroots/: list, read the ids, and
   * rename each directory no snapshot owns, in one synchronous step, so a
   * nix Prepare (whose row exists before its root directory does) is never
   * caught between the two reads. A renamed link no longer roots anything.
   */
  private claimOrphanRoots(): string[] {
    const entries = readdirSync(this.gcrootsDir);
    const ids = this.ms.ids();
    return claimOrphanEntries(this.gcrootsDir, entries, (name) => ids.has(name), (name) => {
      this.log.info("removing GC roots no snapshot references", { dir: name });
      this.storePaths.delete(name);
      this.bindMountsByParent.delete(name);
      this.viewMounts.delete(name);
    });
  }

  async close(): Promise<void> {
    for (const ac of this.inflight.values()) ac.abort();
    await this.views.close();
    return this.inner.close();
  }

  private async create(kind: "active" | "view", key: string, parent: string, opts: CreateOptions): Promise<Mount[]> {
    const labels = opts.labels ?? {};
    validateLabels(labels); // bounds first: the nix labels are parsed next
    const layer = nixLayerFromLabels(labels, this.storeDir);
    if (!layer) {
      const rec = await this.inner.create(kind, key, parent, opts);
      this.storePaths.set(rec.id, null);
      try {
        return [...this.inner.mountsOf(rec), ...this.storeMounts(rec.parentIds, key)];
      } catch (err) {
        await this.inner.removeById(rec.id);
        throw err;
      }
    }

    // Nix registers each root by the path of its link (an indirect root),
    // so the links are made in their final place, gcroots/<id>: the
    // snapshot and its "preparing" record exist first (one transaction),
    // and are removed again if realisation fails or the caller gives up. A
    // crash in between leaves a preparing layer, which start-up removes.
    const rec = await this.inner.create(kind, key, parent, opts, (id) => this.ms.addNixLayer(id));
    const dir = path.join(this.gcrootsDir, rec.id);
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    if (opts.signal?.aborted) stop.abort();
    this.inflight.set(rec.id, stop);
    try {
      const started = Date.now();
      await rm(dir, { recursive: true, force: true }); // an orphan of a crash may hold the id
      await mkdir(dir, { mode: 0o700 });
      const paths = await this.realiseLayer(layer, dir, stop.signal);
      // The links are on disk before the layer is ready.
      fsyncPath(dir);
      this.ms.transaction(() => this.ms.setNixLayerReady(rec.id, paths));
      this.storePaths.set(rec.id, paths);
      this.log.info("nix layer prepared", { key, id: rec.id, storePaths: paths.length, ms: Date.now() - started });
      return this.inner.mountsOf(rec);
    } catch (err) {
      // Every child has exited by now (the realiser settles after them), so
      // no root link can appear after this.
      await this.inner.removeById(rec.id).catch((e: unknown) => this.log.error("cannot undo failed nix layer", { key, id: rec.id, error: e }));
      await removeDir(dir, this.log);
      if (err instanceof CancelledError) this.log.info("nix layer cancelled by the caller; undone", { key, id: rec.id });
      throw err;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      this.inflight.delete(rec.id);
    }
  }

  /**
   * Removes nix layers whose preparation a crash interrupted (state
   * "preparing" in the database) with their roots. containerd saw their
   * Prepare fail and unpacks again.
   */
  private async repairHalfPrepared(): Promise<void> {
    for (const id of this.ms.preparingNixLayers()) {
      this.log.warn("removing nix layer whose preparation was interrupted", { id });
      await this.inner.removeById(id);
      await removeDir(path.join(this.gcrootsDir, id), this.log);
    }
  }

  /**
   * Schema 1 (the first release) marked a ready nix layer by its
   * gcroots/<id>/store-paths file, and a half-prepared one by a nix-layer
   * label without that file. Import both into nix_layers once, then drop
   * the files.
   */
  private async importLegacyLayers(): Promise<void> {
    const layers: { id: string; state: "preparing" | "ready"; paths: string[] }[] = [];
    const ready = new Set<string>();
    for (const id of await readdir(this.gcrootsDir)) {
      const file = path.join(this.gcrootsDir, id, LEGACY_STORE_PATHS_FILE);
      let text: string;
      try {
        text = await readBounded(file, MAX_CLOSURE_FILE_BYTES);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR") continue;
        throw err;
      }
      const paths = text.split("\n").filter((l) => l !== "").map((l) => parseStorePath(l, this.storeDir));
      layers.push({ id, state: "ready", paths });
      ready.add(id);
    }
    await this.inner.walk(async (info) => {
      if (info.kind === "committed" || !isNixLayer(info.labels)) return;
      const id = await this.inner.idOf(info.name);
      if (!ready.has(id)) layers.push({ id, state: "preparing", paths: [] });
    });
    this.ms.importLegacyNixLayers(layers);
    this.log.info("imported nix layers of a schema 1 root", { ready: ready.size, interrupted: layers.length - ready.size });
    for (const id of ready) await unlink(path.join(this.gcrootsDir, id, LEGACY_STORE_PATHS_FILE)).catch(() => {});
  }

  /** Realises and roots a layer's paths under rootDir; returns the paths to mount, all present. */
  private async realiseLayer(layer: NixLayer, rootDir: string, signal: AbortSignal): Promise<StorePath[]> {
    let paths = layer.paths;
    if (layer.closure) {
      // Fast path: one path realised and rooted keeps alive everything it
      // refers to; the file lists what to mount. Anything listed beyond
      // the rooted path's own closure is realised and rooted on its own.
      const closure = layer.closure;
      let kept: Set<string> | undefined;
      if (this.realiser.realiseClosure) kept = await this.realiser.realiseClosure(closure.storePath, rootDir, signal);
      else await this.realiser.realise([closure.storePath], rootDir, signal);
      // Refuses a symlink out of the store; a missing path is reported by
      // the read of its closure file, next.
      isPresentInStore(closure.storePath, this.storeDir);
      const listed = parseClosureFile(await readClosureFile(closure), closure.file, this.storeDir);
      const all = [...new Set([...listed, ...layer.paths])].sort();
      kept ??= await queryRequisites(closure.storePath, signal);
      const extra = kept ? all.filter((p) => !kept.has(p)) : all;
      if (extra.length > 0) {
        const extraDir = path.join(rootDir, "extra");
        await mkdir(extraDir);
        await this.realiser.realise(extra, extraDir, signal);
        fsyncPath(extraDir);
      }
      paths = all;
    } else if (paths.length > 0) {
      await this.realiser.realise(paths, rootDir, signal);
    }
    await this.ensurePresent(paths, rootDir, signal);
    return paths;
  }

  /**
   * Every path must be in the store now that it is rooted (and none may be
   * a symlink out of it: isPresentInStore). A collection
   * that began before the roots existed may still delete what was just
   * realised (Nix 2.8): wait for it to end, look, and realise again what
   * vanished (rooted afresh; no later collection can take it).
   */
  private async ensurePresent(paths: readonly StorePath[], rootDir: string, signal: AbortSignal): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      await waitForGarbageCollector(signal);
      const missing = await this.missingFromStore(paths);
      if (missing.length === 0) return;
      if (attempt >= MAX_REALISE_ATTEMPTS) {
        throw new UnavailableError(`${missing.length} store paths (${missing[0]}, ...) vanished from the store right after they were rooted, ${attempt} times; is something deleting store paths by force?`);
      }
      this.log.warn("store paths vanished after rooting (a concurrent garbage collection); realising again", { missing: missing.length, first: missing[0] });
      const again = path.join(rootDir, `again-${attempt}`);
      await mkdir(again);
      await this.realiser.realise(missing, again, signal);
      fsyncPath(again);
    }
  }

  /** The paths not in the store; yields to other calls between batches. */
  private async missingFromStore(paths: readonly StorePath[]): Promise<StorePath[]> {
    const missing: StorePath[] = [];
    for (let i = 0; i < paths.length; i++) {
      if (i > 0 && i % CHECK_BATCH === 0) await new Promise((resolve) => setImmediate(resolve));
      if (!isPresentInStore(paths[i]!, this.storeDir)) missing.push(paths[i]!);
    }
    return missing;
  }

  /**
   * The store paths of a snapshot id's nix layer, or null when it is no
   * nix layer; an empty list for a layer still being prepared.
   */
  private layerPaths(id: string): readonly StorePath[] | null {
    const cached = this.storePaths.get(id);
    if (cached !== undefined) return cached;
    const rec = this.ms.nixLayer(id);
    if (rec === undefined) {
      this.storePaths.set(id, null);
      return null;
    }
    if (rec.state === "preparing") return []; // not known yet; do not cache
    // Written by us, but parsed all the same: the type says validated.
    const paths = rec.paths.map((p) => parseStorePath(p, this.storeDir));
    this.storePaths.set(id, paths);
    return paths;
  }

  /**
   * Bind mounts for every store path of a chain of parents, deduplicated and
   * sorted. The chain above a committed parent never changes, so the list
   * is computed once per nearest parent and the same Mount objects are
   * handed out again (the service adapter caches their encoding).
   */
  private chainMounts(ids: readonly string[]): Mount[] {
    if (ids.length === 0) return [];
    const nearest = ids[0]!;
    const cached = this.bindMountsByParent.get(nearest);
    if (cached) return cached;
    const mounts = this.pathsOfChain(ids).map(storeBindMount);
    this.bindMountsByParent.set(nearest, mounts);
    return mounts;
  }

  /** The store paths of every nix layer among ids, deduplicated and sorted. */
  private pathsOfChain(ids: readonly string[]): StorePath[] {
    const all = new Set<StorePath>();
    for (const id of ids) {
      const paths = this.layerPaths(id);
      if (paths) for (const p of paths) all.add(p);
    }
    return [...all].sort();
  }

  /**
   * The store mounts of a snapshot whose parents are ids (nearest first):
   * with "tree", one read-only bind of the topmost nix layer's store view
   * onto the store (the view covers every nix layer below it too), when
   * that view is built; else, or with "binds", one bind per store path.
   * A view not built yet is started here (layers committed before views
   * existed, or whose build a restart interrupted).
   */
  private storeMounts(ids: readonly string[], key: string): Mount[] {
    if (this.storeView === "tree") {
      const at = ids.findIndex((id) => this.layerPaths(id) !== null);
      if (at < 0) return [];
      const top = ids[at]!;
      // A view, once there, stays until its layer is removed (which drops
      // this entry): only layers without one cost a look at the disk.
      const cached = this.viewMounts.get(top);
      if (cached) return cached;
      if (this.views.isReady(top)) {
        const m: Mount[] = [{ type: "bind", source: this.views.pathOf(top), target: this.storeDir, options: ["ro", "rbind"] }];
        this.viewMounts.set(top, m);
        return m;
      }
      void this.views.ensure(top, this.pathsOfChain(ids.slice(at)));
    }
    return this.checkedChainMounts(ids, key);
  }

  /**
   * chainMounts, after checking that every source is in the store: a bind
   * of a missing path would fail inside runc with a confusing error, or
   * worse, mount nothing. One existsSync per path (a cached dentry, about a
   * microsecond each).
   */
  private checkedChainMounts(ids: readonly string[], key: string): Mount[] {
    const mounts = this.chainMounts(ids);
    for (const m of mounts) {
      if (!existsSync(m.source)) {
        throw new FailedPreconditionError(
          `store path ${m.source} of a nix layer below ${JSON.stringify(key)} is missing from the Nix store although it is rooted (deleted by force?); remove the image and pull it again`,
        );
      }
    }
    return mounts;
  }
}

/** Reads a closure file after checking it stays in its store path and is not too large. */
async function readClosureFile(closure: StoreFile): Promise<string> {
  try {
    return await readBounded(await checkFileWithin(closure), MAX_CLOSURE_FILE_BYTES);
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err;
    throw new InvalidArgumentError(`nix-closure ${closure.file} is not a readable closure file: ${(err as Error).message}`);
  }
}

/** Reads a text file of at most max bytes; a larger one is refused before it is read. */
async function readBounded(file: string, max: number): Promise<string> {
  const fh = await open(file, "r");
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`${file} is not a regular file`);
    if (st.size > max) throw new InvalidArgumentError(`${file} is ${st.size} bytes; at most ${max} are read`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const { bytesRead } = await fh.read(buf, off, st.size - off, off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off).toString("utf8");
  } finally {
    await fh.close();
  }
}
