/**
 * The overlayfs snapshotter: directories and mount options, with metadata
 * asked of the MetaStore inside the same transaction.
 *
 * Layout under root:
 *   metadata.db            SQLite (WAL)
 *   snapshots/<id>/fs      the snapshot's upper directory
 *   snapshots/<id>/work    overlayfs workdir (active snapshots only)
 *   snapshots/new-*        directories being prepared (not yet in metadata)
 *   snapshots/rm-*         orphans Cleanup claimed and is deleting
 *
 * Crash safety: a new snapshot's directory is built under a temporary name
 * and renamed to its id inside the metadata transaction, so a kill at any
 * point leaves either a committed row with its directory, or a directory no
 * row names; a removed snapshot's row is deleted before its directory. Either
 * way the leftover is a directory with no row, which Cleanup (and start-up)
 * reclaims. No row ever points at a missing directory.
 *
 * Durability: the row's transaction is synced before the call is answered;
 * the new directory is not (three syncs per Prepare where one does, as
 * containerd's own snapshotter makes no directory sync either). What an
 * acknowledged Prepare or View made is an empty directory, so if a power
 * loss takes it while its row survives, start-up makes it again, empty, with
 * the same modes and owner: the same state the call acknowledged. (On ext4
 * and xfs the row's sync commits the journal that holds the directory
 * anyway.) A committed snapshot's files are as durable as the filesystem
 * makes them, as with containerd; a committed row whose directory is gone
 * is dropped when nothing builds on it.
 *
 * Concurrency: the daemon is one thread, and the steps that must not
 * interleave are synchronous: a create's rename and row insert run in one
 * synchronous transaction, and Cleanup reads the directory listing and the
 * ids and claims (renames) each orphan in one synchronous step, as
 * containerd's snapshotters scan inside a write transaction. No Prepare can
 * land between Cleanup's two reads, so a live directory is never claimed.
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
} from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { FailedPreconditionError, InvalidArgumentError } from "../errors.js";
import type { Logger } from "../log.js";
import { nullLogger } from "../log.js";
import { parseFilters, snapshotAdaptor } from "./filters.js";
import { MetaStore, type SnapshotRecord } from "./metadata.js";
import { computeMounts, upperPath, workPath, type SnapshotPaths } from "./mounts.js";
import { type OverlayDriver, overlayStyle, type OverlayStyle } from "./overlay-driver.js";
import type { LayerStore } from "./layer-store.js";
import type { CreateOptions, Info, Mount, Usage } from "./snapshotter.js";
import { diskUsage } from "./usage.js";

export interface OverlayOptions {
  root: string;
  /** Default "overlayfs" (the kernel's); see overlay-driver.ts. */
  driver?: OverlayDriver;
  /** Extra overlay mount options, after those the driver needs (index=off, userxattr). */
  mountOptions?: string[];
  logger?: Logger;
}

/**
 * Serves the Snapshotter contract, and the LayerStore seam for the Nix
 * decorator (layer-store.ts).
 */
export class OverlaySnapshotter implements LayerStore {
  readonly root: string;
  private readonly paths: SnapshotPaths;
  private readonly ms: MetaStore;
  private readonly style: OverlayStyle;
  private readonly log: Logger;
  /** Temporary directories of Prepare/View calls in flight: Cleanup keeps them. */
  private readonly pending = new Set<string>();
  /**
   * Read index in front of the metadata store for Stat and Mounts, by key:
   * containerd Stats every snapshot on each List and asks Mounts before
   * every container start. Filled on read, dropped by every write to the
   * key, in the same synchronous step as the write's transaction (the store
   * has one writer, this process, and its calls never yield), so a reader
   * never sees an entry older than the database. Memory only: a restart
   * starts empty and refills from the database. Entries are shared: callers
   * must not modify what stat() and record() return.
   */
  private readonly infos = new Map<string, Info>();
  private readonly records = new Map<string, SnapshotRecord>();
  private readonly mountsByRecord = new WeakMap<SnapshotRecord, Mount[]>();
  private closed = false;

  private constructor(root: string, ms: MetaStore, style: OverlayStyle, log: Logger) {
    this.root = root;
    this.paths = { snapshotsDir: path.join(root, "snapshots") };
    this.ms = ms;
    this.style = style;
    this.log = log;
  }

  static async open(opts: OverlayOptions): Promise<OverlaySnapshotter> {
    const root = path.resolve(opts.root);
    await mkdir(path.join(root, "snapshots"), { recursive: true, mode: 0o700 });
    const log = opts.logger ?? nullLogger;
    const style = await overlayStyle(opts.driver ?? "overlayfs", root, log);
    style.options.push(...(opts.mountOptions ?? []));
    const ms = new MetaStore(path.join(root, "metadata.db"));
    const sn = new OverlaySnapshotter(root, ms, style, log);
    sn.repairRowsWithoutDirectory();
    return sn;
  }

  /**
   * After a power loss a new snapshot's directory may be missing (its
   * creation never reached the disk), or a removal's row may come back
   * while its directory stayed deleted. An active snapshot or view was
   * acknowledged empty: make its directory again. A committed one had
   * content that is gone: such a row would hand containerd mounts of
   * nothing, so drop it when nothing builds on it, and say so.
   */
  private repairRowsWithoutDirectory(): void {
    const childless = this.ms.childlessIds();
    for (const { id, kind, parentId } of this.ms.shapes()) {
      if (existsSync(upperPath(this.paths, id)) && (kind !== "active" || existsSync(workPath(this.paths, id)))) continue;
      if (kind !== "committed") {
        this.log.warn("making again the empty directory of a snapshot whose creation a power loss undid", { id, kind });
        const dir = path.join(this.paths.snapshotsDir, id);
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        makeSnapshotDirs(dir, kind, parentId === undefined ? undefined : upperPath(this.paths, parentId));
        continue;
      }
      if (childless.has(id)) {
        this.log.warn("dropping snapshot whose directory is missing (interrupted by a power loss?)", { id });
        this.ms.transaction(() => this.ms.removeById(id));
      } else {
        this.log.error("snapshot directory is missing but other snapshots build on it; remove them to repair", { id });
      }
    }
  }

  /** The metadata store, for decorators that keep per-snapshot state. */
  get metadata(): MetaStore {
    return this.ms;
  }

  async stat(key: string): Promise<Info> {
    let info = this.infos.get(key);
    if (!info) {
      info = this.ms.getInfo(key).info;
      this.infos.set(key, info);
    }
    return info;
  }

  /** Drops the read index's entries of keys a write changed. */
  private forget(...keys: string[]): void {
    for (const k of keys) {
      this.infos.delete(k);
      this.records.delete(k);
    }
  }

  async update(info: Pick<Info, "name" | "labels">, fieldPaths: string[] = []): Promise<Info> {
    try {
      return this.ms.transaction(() => this.ms.updateLabels(info.name, info.labels ?? {}, fieldPaths));
    } finally {
      this.forget(info.name);
    }
  }

  async usage(key: string): Promise<Usage> {
    const { id, info, usage } = this.ms.getInfo(key);
    // Committed: recorded at commit. Active: measured now. View: nothing of
    // its own (containerd reports zero too).
    if (info.kind !== "active") return usage;
    return diskUsage(upperPath(this.paths, id));
  }

  async mounts(key: string): Promise<Mount[]> {
    return this.mountsOf(await this.record(key));
  }

  /**
   * The rootfs mounts of a record obtained from record() or create(): the
   * same objects for the same record, so their wire encoding is reused.
   */
  mountsOf(s: SnapshotRecord): Mount[] {
    let m = this.mountsByRecord.get(s);
    if (!m) {
      m = computeMounts(this.paths, s, this.style.options, this.style.type);
      this.mountsByRecord.set(s, m);
    }
    return m;
  }

  /** The id (directory name) of any snapshot. */
  async idOf(key: string): Promise<string> {
    return this.ms.getInfo(key).id;
  }

  /** The record (id, kind, parent ids) of an active snapshot or view. */
  async record(key: string): Promise<SnapshotRecord> {
    let rec = this.records.get(key);
    if (!rec) {
      rec = this.ms.getSnapshot(key);
      this.records.set(key, rec);
    }
    return rec;
  }

  async prepare(key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return this.mountsOf(await this.create("active", key, parent, opts));
  }

  async view(key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    return this.mountsOf(await this.create("view", key, parent, opts));
  }

  async commit(name: string, key: string, opts: CreateOptions = {}): Promise<void> {
    // Measure outside the transaction (it walks the tree), then commit.
    // containerd does the same walk; an active snapshot is not written to
    // while it is being committed.
    const { id, info } = this.ms.getInfo(key);
    if (info.kind !== "active") {
      throw new FailedPreconditionError(`snapshot ${JSON.stringify(key)} is not active`);
    }
    const usage = await diskUsage(upperPath(this.paths, id));
    try {
      this.ms.transaction(() => this.ms.commitActive(key, name, usage, opts.labels ?? {}));
    } finally {
      this.forget(key, name);
    }
    this.log.debug("committed", { key, name, id });
  }

  async remove(key: string): Promise<void> {
    await this.removeChecked(key);
  }

  /**
   * Removes a snapshot. `check` runs inside the transaction with its id: a
   * decorator's refusal (a nix layer still being realised) decided in the
   * same step as the removal. Returns the id.
   */
  async removeChecked(key: string, check?: (id: string) => void): Promise<string> {
    let id: string;
    try {
      ({ id } = this.ms.transaction(() => this.ms.remove(key, check)));
    } finally {
      this.forget(key);
    }
    await this.removeDir(path.join(this.paths.snapshotsDir, id));
    this.log.debug("removed", { key, id });
    return id;
  }

  /**
   * Removes the snapshot with this id, unless something builds on it: the
   * undo of a failed create. By id, so it can never hit another snapshot
   * that took the same key meanwhile.
   */
  async removeById(id: string): Promise<void> {
    let removed: boolean;
    try {
      removed = this.ms.transaction(() => this.ms.removeIfChildless(id));
    } finally {
      // The read index is by key and this removal is by id; an undo is
      // rare, so drop the whole index rather than search it.
      this.infos.clear();
      this.records.clear();
    }
    if (removed) await this.removeDir(path.join(this.paths.snapshotsDir, id));
  }

  async walk(fn: (info: Info) => void | Promise<void>, filters?: string[]): Promise<void> {
    const match = parseFilters(filters);
    const infos = this.ms.list();
    for (const info of infos) {
      if (match(snapshotAdaptor(info))) await fn(info);
    }
  }

  async cleanup(): Promise<void> {
    for (const dir of this.claimOrphans()) await this.removeDir(dir);
  }

  /**
   * The serialisation point of Cleanup: lists the directories, reads the
   * ids, and claims every orphan, all synchronously, so no Prepare, Commit
   * or Remove can run in between.
   */
  private claimOrphans(): string[] {
    const entries = readdirSync(this.paths.snapshotsDir);
    const ids = this.ms.ids();
    const keep = (name: string) => ids.has(name) || this.pending.has(name);
    return claimOrphanEntries(this.paths.snapshotsDir, entries, keep, (name) =>
      this.log.info("reclaiming directory no snapshot references", { dir: name }),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.ms.close();
  }

  /**
   * Creates an active snapshot or view; returns its record (id and parent
   * chain). `inTransaction` runs with the new id inside the creating
   * transaction (a decorator's own rows commit or fail with the snapshot).
   * Synchronous up to its return on purpose (see Concurrency above).
   */
  async create(
    kind: "active" | "view",
    key: string,
    parent: string,
    opts: CreateOptions = {},
    inTransaction?: (id: string) => void,
  ): Promise<SnapshotRecord> {
    if (key === "") throw new InvalidArgumentError("snapshot key must not be empty");
    const labels = opts.labels ?? {};
    // Synchronous on purpose: six tiny metadata syscalls cost less than six
    // trips through libuv's thread pool (measured by bench/snapshotter).
    const td = mkdtempSync(path.join(this.paths.snapshotsDir, "new-"));
    const tmpName = path.basename(td);
    this.pending.add(tmpName);
    try {
      makeSnapshotDirs(td, kind, parent === "" ? undefined : this.parentUpper(parent));
      let record: SnapshotRecord;
      try {
        record = this.ms.transaction(() => {
          const s = this.ms.createSnapshot(kind, key, parent, labels);
          inTransaction?.(s.id);
          moveIntoPlace(td, path.join(this.paths.snapshotsDir, s.id), this.log);
          return s;
        });
      } finally {
        this.forget(key);
      }
      // containerd asks Mounts of a new snapshot right away (before
      // mounting it, and again when a task starts).
      this.records.set(key, record);
      this.log.debug("created", { key, parent, kind, id: record.id });
      return record;
    } catch (err) {
      await rm(td, { recursive: true, force: true }).catch(() => {});
      throw err;
    } finally {
      this.pending.delete(tmpName);
    }
  }

  /** The parent's directory, or undefined when there is no such parent (the transaction reports it, with its code). */
  private parentUpper(parent: string): string | undefined {
    try {
      return upperPath(this.paths, this.ms.getInfo(parent).id);
    } catch {
      return undefined;
    }
  }

  private removeDir(dir: string): Promise<void> {
    return removeDir(dir, this.log);
  }
}

/** Claimed orphans are renamed to this prefix before they are deleted. */
const TRASH_PREFIX = "rm-";

/**
 * Renames every entry of dir that `keep` refuses to rm-* (a name no create
 * ever uses) and returns the claimed paths, with those an interrupted
 * earlier claim left. Synchronous, and to be called in the same
 * synchronous step as the listing and the read of what to keep: the
 * deletion of the claimed trees can then run concurrently with anything,
 * on names nothing else touches.
 */
export function claimOrphanEntries(dir: string, entries: readonly string[], keep: (name: string) => boolean, claimed: (name: string) => void): string[] {
  const out: string[] = [];
  for (const name of entries) {
    if (name.startsWith(TRASH_PREFIX)) {
      out.push(path.join(dir, name));
      continue;
    }
    if (keep(name)) continue;
    const to = path.join(dir, `${TRASH_PREFIX}${name}-${randomBytes(4).toString("hex")}`);
    try {
      renameSync(path.join(dir, name), to);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // a Remove got there first
      throw err;
    }
    claimed(name);
    out.push(to);
  }
  return out;
}

/**
 * A new snapshot's directories inside `dir`: fs, and work for an active
 * snapshot. Explicit chmod: the modes must not depend on the daemon's umask
 * (a container's "/" is fs). fs takes the owner of the parent's
 * (`parentUpper`), as containerd does, so a container's "/" keeps the
 * uid/gid its image gave it.
 */
function makeSnapshotDirs(dir: string, kind: "active" | "view", parentUpper: string | undefined): void {
  const fs = path.join(dir, "fs");
  if (kind === "active") makeDir(path.join(dir, "work"), 0o711);
  if (!makeDir(fs, 0o755) || parentUpper === undefined) return;
  let st;
  try {
    st = statSync(parentUpper);
  } catch {
    return;
  }
  if (st.uid !== 0 || st.gid !== 0) chownSync(fs, st.uid, st.gid);
}

/** mkdir with this mode whatever the umask; false when it was there already (left as it is). */
function makeDir(dir: string, mode: number): boolean {
  try {
    mkdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
  chmodSync(dir, mode);
  return true;
}

/** fsync of a directory (its entries) or file, by path. */
export function fsyncPath(p: string): void {
  const fd = openSync(p, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Renames a directory into its id-named place; runs inside a metadata
 * transaction. A directory may already sit at the target when a crash lost
 * a transaction after its rename: no row names it (the id was just
 * allocated), so it is an orphan and goes.
 */
function moveIntoPlace(from: string, to: string, log: Logger): void {
  try {
    renameSync(from, to);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
    log.warn("replacing orphan directory left by an interrupted operation", { dir: to });
    rmSync(to, { recursive: true, force: true });
    renameSync(from, to);
  }
}

/**
 * The common case, a snapshot nothing was written to (a view, an unpacked
 * layer's work dir): a few rmdir calls instead of a recursive walk.
 */
function removeEmptySnapshotDir(dir: string): boolean {
  try {
    for (const sub of ["fs", "work/work", "work", ""]) {
      try {
        rmdirSync(path.join(dir, sub));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
    return true;
  } catch {
    return false;
  }
}

/** Removes a directory whose row is gone; a failure leaves an orphan for Cleanup. */
export async function removeDir(dir: string, log: Logger): Promise<void> {
  if (removeEmptySnapshotDir(dir)) return;
  try {
    await rm(dir, { recursive: true, force: true, maxRetries: 2 });
  } catch (err) {
    // The row is gone already; the directory is now an orphan that the
    // next Cleanup reclaims. Say so rather than fail the caller.
    log.warn("failed to remove directory; Cleanup will retry", { dir, error: err });
  }
}
