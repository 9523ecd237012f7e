/**
 * Transactional snapshot metadata in SQLite: ids, kinds, parents, labels and
 * recorded usage. It knows nothing of directories or mounts; the overlay
 * snapshotter asks it inside a transaction and does its filesystem step in
 * the same transaction, so the two commit or fail together.
 *
 * The rules are containerd's (core/snapshots/storage): keys are unique across
 * kinds, a parent must exist and be committed, only an active snapshot can be
 * committed, a snapshot with children cannot be removed, and a committed
 * snapshot keeps its id (and so its directory) when it changes name.
 *
 * Reads run as plain statements, outside any transaction: the daemon is
 * the database's only writer and its statements run synchronously on one
 * thread, so no write can land between the statements of a synchronous
 * read (a Stat costs one statement, not three).
 */
import Database from "better-sqlite3";
import { chmodSync } from "node:fs";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from "../errors.js";
import { nowMicros } from "./clock.js";
import type { Info, Kind, Usage } from "./snapshotter.js";
import { validateLabels } from "./label-limits.js";

/** What the overlay layer needs to compute mounts: the id chain. */
export interface SnapshotRecord {
  id: string;
  kind: Kind;
  /** Parent ids, nearest first. */
  parentIds: string[];
}

interface Row {
  id: number;
  key: string;
  parent_id: number | null;
  kind: number;
  labels: string;
  /** Microseconds since the Unix epoch (schema 2; milliseconds in schema 1). */
  created: number;
  updated: number;
  size: number;
  inodes: number;
}

const KIND_CODE: Record<Kind, number> = { view: 1, active: 2, committed: 3 };
const CODE_KIND: Record<number, Kind> = { 1: "view", 2: "active", 3: "committed" };

export { MAX_LABEL_BYTES, MAX_LABELS, MAX_LABELS_TOTAL_BYTES, validateLabels } from "./label-limits.js";

/**
 * 1: the first release. 2: times in microseconds (were milliseconds); the
 * nix_layers table (a nix layer's state and store paths, which schema 1
 * kept in gcroots/<id>/store-paths files and a label).
 */
export const SCHEMA_VERSION = 2;

/** A nix layer's state: being realised (its roots incomplete), or ready. */
export type NixLayerState = "preparing" | "ready";

export interface NixLayerRecord {
  state: NixLayerState;
  /** The layer's store paths (validated when written), sorted. */
  paths: string[];
}

const NIX_STATE_CODE: Record<NixLayerState, number> = { preparing: 1, ready: 2 };
const CODE_NIX_STATE: Record<number, NixLayerState> = { 1: "preparing", 2: "ready" };

export class MetaStore {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<MetaStore["prepareStatements"]>;
  /** One reusable transaction wrapper (building one per call is measurable). */
  private readonly runInTransaction: Database.Transaction<(fn: () => unknown) => unknown>;

  /** The schema version the file had when opened (0: new). */
  readonly openedVersion: number;

  constructor(file: string) {
    this.db = new Database(file);
    chmodSync(file, 0o600);
    // WAL with FULL sync: every write transaction is on disk before the call
    // that made it is answered. containerd records a snapshot in its own
    // (synced) database once we answer Prepare or Commit, so a transaction
    // lost to a power loss would leave containerd naming a snapshot we
    // forgot, and start-up would reclaim its directory as an orphan. The
    // cost is one fsync of the log per write call (measured by
    // bench/snapshotter); reads never sync.
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.pragma("foreign_keys = ON");
    this.openedVersion = this.db.pragma("user_version", { simple: true }) as number;
    this.migrate();
    this.stmts = this.prepareStatements();
    this.runInTransaction = this.db.transaction((fn: () => unknown) => fn());
  }

  private migrate(): void {
    const version = this.openedVersion;
    if (version > SCHEMA_VERSION) {
      throw new Error(
        `metadata database schema ${version} is newer than this nix-snapshotter understands (${SCHEMA_VERSION}); upgrade nix-snapshotter`,
      );
    }
    if (version === SCHEMA_VERSION) return;
    // One transaction: a crash part-way leaves schema `version` untouched.
    this.db.transaction(() => {
      if (version === 0) {
        // AUTOINCREMENT: ids are never reused, so a directory left behind by
        // a crash can never be mistaken for a newer snapshot's.
        this.db.exec(`
          CREATE TABLE snapshots (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            key       TEXT NOT NULL UNIQUE,
            parent_id INTEGER REFERENCES snapshots(id),
            kind      INTEGER NOT NULL,
            labels    TEXT NOT NULL DEFAULT '{}',
            created   INTEGER NOT NULL,
            updated   INTEGER NOT NULL,
            size      INTEGER NOT NULL DEFAULT 0,
            inodes    INTEGER NOT NULL DEFAULT 0
          );
          CREATE INDEX snapshots_parent ON snapshots(parent_id);`);
      } else {
        // Schema 1 kept milliseconds.
        this.db.exec("UPDATE snapshots SET created = created * 1000, updated = updated * 1000");
      }
      // A nix layer's state lives with its snapshot (same transaction, gone
      // with it). Nothing a client can Update decides it.
      this.db.exec(`
        CREATE TABLE nix_layers (
          id    INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
          state INTEGER NOT NULL,
          paths TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE legacy_import (pending INTEGER NOT NULL);`);
      // Schema 1 kept nix layers outside the database: the Nix decorator
      // imports them (importLegacyNixLayers) and clears this mark.
      if (version === 1) this.db.exec("INSERT INTO legacy_import (pending) VALUES (1)");
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    }).immediate();
  }

  private prepareStatements() {
    const db = this.db;
    return {
      byKey: db.prepare<[string], Row>("SELECT * FROM snapshots WHERE key = ?"),
      keyById: db.prepare<[number], { key: string }>("SELECT key FROM snapshots WHERE id = ?"),
      insert: db.prepare<[string, number | null, number, string, number, number]>(
        "INSERT INTO snapshots (key, parent_id, kind, labels, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      chain: db.prepare<[number], { id: number }>(`
        WITH RECURSIVE chain(id, parent_id, depth) AS (
          SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
          UNION ALL
          SELECT s.id, s.parent_id, chain.depth + 1
            FROM snapshots s JOIN chain ON s.id = chain.parent_id
        )
        SELECT id FROM chain WHERE depth > 0 ORDER BY depth`),
      hasChild: db.prepare<[number], { one: number }>(
        "SELECT 1 AS one FROM snapshots WHERE parent_id = ? LIMIT 1",
      ),
      remove: db.prepare<[number]>("DELETE FROM snapshots WHERE id = ?"),
      commit: db.prepare<[string, number, string, number, number, number, number, number]>(
        "UPDATE snapshots SET key = ?, kind = ?, labels = ?, created = ?, updated = ?, size = ?, inodes = ? WHERE id = ?",
      ),
      setLabels: db.prepare<[string, number, number]>(
        "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
      ),
      all: db.prepare<[], Row>("SELECT * FROM snapshots ORDER BY key"),
      allIds: db.prepare<[], { id: number }>("SELECT id FROM snapshots"),
      shapes: db.prepare<[], { id: number; kind: number; parent_id: number | null }>("SELECT id, kind, parent_id FROM snapshots"),
      childless: db.prepare<[], { id: number }>(
        "SELECT id FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent_id = s.id)",
      ),
      kindById: db.prepare<[number], { kind: number }>("SELECT kind FROM snapshots WHERE id = ?"),
      nixInsert: db.prepare<[number, number, string]>("INSERT INTO nix_layers (id, state, paths) VALUES (?, ?, ?)"),
      nixReady: db.prepare<[string, number]>(`UPDATE nix_layers SET state = ${NIX_STATE_CODE.ready}, paths = ? WHERE id = ?`),
      nixGet: db.prepare<[number], { state: number; paths: string }>("SELECT state, paths FROM nix_layers WHERE id = ?"),
      nixPreparing: db.prepare<[], { id: number }>(`SELECT id FROM nix_layers WHERE state = ${NIX_STATE_CODE.preparing}`),
      legacyPending: db.prepare<[], { pending: number }>("SELECT pending FROM legacy_import LIMIT 1"),
      legacyDone: db.prepare("DELETE FROM legacy_import"),
    };
  }

  /**
   * Runs fn in one write transaction (BEGIN IMMEDIATE). fn is synchronous on
   * purpose: better-sqlite3 has one connection, and an await inside a
   * transaction would let another request's statements join it.
   */
  transaction<T>(fn: () => T): T {
    return this.runInTransaction.immediate(fn) as T;
  }

  private row(key: string): Row {
    const row = this.stmts.byKey.get(key);
    if (!row) throw new NotFoundError(`snapshot ${JSON.stringify(key)} does not exist`);
    return row;
  }

  private info(row: Row): Info {
    let parent = "";
    if (row.parent_id !== null) {
      parent = this.stmts.keyById.get(row.parent_id)?.key ?? "";
    }
    return {
      name: row.key,
      parent,
      kind: CODE_KIND[row.kind]!,
      labels: JSON.parse(row.labels) as Record<string, string>,
      created: microsToNanos(row.created),
      updated: microsToNanos(row.updated),
    };
  }

  getInfo(key: string): { id: string; info: Info; usage: Usage } {
    const row = this.row(key);
    return { id: String(row.id), info: this.info(row), usage: { size: row.size, inodes: row.inodes } };
  }

  /** The record of an active snapshot or view (what mounts are computed from). */
  getSnapshot(key: string): SnapshotRecord {
    const row = this.row(key);
    const kind = CODE_KIND[row.kind]!;
    if (kind === "committed") {
      throw new FailedPreconditionError(`snapshot ${JSON.stringify(key)} is committed: only active snapshots and views have mounts`);
    }
    return { id: String(row.id), kind, parentIds: this.parentIds(row.id) };
  }

  private parentIds(id: number): string[] {
    return this.stmts.chain.all(id).map((r) => String(r.id));
  }

  createSnapshot(kind: "active" | "view", key: string, parent: string, labels: Record<string, string>): SnapshotRecord {
    if (key === "") throw new InvalidArgumentError("snapshot key must not be empty");
    validateLabels(labels);
    let parentId: number | null = null;
    if (parent !== "") {
      const p = this.stmts.byKey.get(parent);
      if (!p) throw new NotFoundError(`parent snapshot ${JSON.stringify(parent)} does not exist`);
      if (CODE_KIND[p.kind] !== "committed") {
        throw new InvalidArgumentError(`parent ${JSON.stringify(parent)} is not a committed snapshot`);
      }
      parentId = p.id;
    }
    if (this.stmts.byKey.get(key)) throw new AlreadyExistsError(`snapshot ${JSON.stringify(key)} already exists`);
    const now = nowMicros();
    const res = this.stmts.insert.run(key, parentId, KIND_CODE[kind], JSON.stringify(labels), now, now);
    const id = Number(res.lastInsertRowid);
    return { id: String(id), kind, parentIds: parentId === null ? [] : [String(parentId), ...this.parentIds(parentId)] };
  }

  commitActive(key: string, name: string, usage: Usage, labels: Record<string, string>): string {
    if (name === "") throw new InvalidArgumentError("committed snapshot name must not be empty");
    validateLabels(labels);
    if (this.stmts.byKey.get(name)) throw new AlreadyExistsError(`snapshot ${JSON.stringify(name)} already exists`);
    const row = this.stmts.byKey.get(key);
    if (!row) throw new NotFoundError(`active snapshot ${JSON.stringify(key)} does not exist`);
    if (CODE_KIND[row.kind] !== "active") {
      throw new FailedPreconditionError(`snapshot ${JSON.stringify(key)} is not active`);
    }
    // As containerd: a commit is a new snapshot in time (created = updated =
    // now) that keeps its id, and its labels are the commit's own.
    const now = nowMicros();
    this.stmts.commit.run(name, KIND_CODE.committed, JSON.stringify(labels), now, now, usage.size, usage.inodes, row.id);
    return String(row.id);
  }

  /**
   * Removes the record; refuses one with children. `check` runs first with
   * the id (a decorator's own refusal, in the same transaction). Returns
   * its id and kind.
   */
  remove(key: string, check?: (id: string) => void): { id: string; kind: Kind } {
    const row = this.row(key);
    check?.(String(row.id));
    if (this.stmts.hasChild.get(row.id)) {
      throw new FailedPreconditionError(`cannot remove snapshot ${JSON.stringify(key)}: it has children`);
    }
    this.stmts.remove.run(row.id);
    return { id: String(row.id), kind: CODE_KIND[row.kind]! };
  }

  /**
   * Removes the record with this id unless something builds on it. By id,
   * not key: undoing a failed Prepare must never remove another snapshot
   * that took the key since. Returns whether a row went.
   */
  removeIfChildless(id: string): boolean {
    if (this.stmts.hasChild.get(Number(id))) return false;
    return this.stmts.remove.run(Number(id)).changes > 0;
  }

  /** Records a nix layer being realised; runs in the snapshot's creating transaction. */
  addNixLayer(id: string): void {
    this.stmts.nixInsert.run(Number(id), NIX_STATE_CODE.preparing, "");
  }

  /** Marks a nix layer ready with its store paths. */
  setNixLayerReady(id: string, paths: readonly string[]): void {
    if (this.stmts.nixReady.run(paths.join("\n"), Number(id)).changes !== 1) {
      throw new NotFoundError(`nix layer ${id} no longer exists`);
    }
  }

  /** A snapshot's nix layer state, or undefined when it is no nix layer. */
  nixLayer(id: string): NixLayerRecord | undefined {
    const r = this.stmts.nixGet.get(Number(id));
    if (!r) return undefined;
    return { state: CODE_NIX_STATE[r.state]!, paths: r.paths === "" ? [] : r.paths.split("\n") };
  }

  /** Ids of nix layers still being realised (at start-up: interrupted). */
  preparingNixLayers(): string[] {
    return this.stmts.nixPreparing.all().map((r) => String(r.id));
  }

  /** Whether a schema 1 database still waits for its nix layers to be imported. */
  legacyImportPending(): boolean {
    return (this.stmts.legacyPending.get()?.pending ?? 0) === 1;
  }

  /** Imports schema 1's nix layers and clears the mark, in one transaction. */
  importLegacyNixLayers(layers: { id: string; state: NixLayerState; paths: string[] }[]): void {
    this.transaction(() => {
      for (const l of layers) {
        if (!this.stmts.kindById.get(Number(l.id))) continue;
        this.stmts.nixInsert.run(Number(l.id), NIX_STATE_CODE[l.state], l.paths.join("\n"));
      }
      this.stmts.legacyDone.run();
    });
  }

  updateLabels(name: string, labels: Record<string, string>, fieldPaths: string[]): Info {
    const row = this.row(name);
    const current = JSON.parse(row.labels) as Record<string, string>;
    let next: Record<string, string>;
    if (fieldPaths.length === 0) {
      next = { ...labels };
    } else {
      next = { ...current };
      for (const path of fieldPaths) {
        if (path.startsWith("labels.")) {
          const k = path.slice("labels.".length);
          const v = labels[k];
          // An empty or absent value removes the label, as containerd does.
          if (v === undefined || v === "") delete next[k];
          else next[k] = v;
        } else if (path === "labels") {
          next = { ...labels };
        } else {
          throw new InvalidArgumentError(`cannot update field ${JSON.stringify(path)} of snapshot ${JSON.stringify(name)}: only labels are mutable`);
        }
      }
    }
    for (const k of Object.keys(next)) if (next[k] === "") delete next[k];
    validateLabels(next);
    this.stmts.setLabels.run(JSON.stringify(next), nowMicros(), row.id);
    return this.info(this.row(name));
  }

  /** All snapshots, sorted by key. */
  list(): Info[] {
    const rows = this.stmts.all.all();
    const keys = new Map<number, string>();
    for (const r of rows) keys.set(r.id, r.key);
    return rows.map((row) => ({
      name: row.key,
      parent: row.parent_id === null ? "" : keys.get(row.parent_id) ?? "",
      kind: CODE_KIND[row.kind]!,
      labels: JSON.parse(row.labels) as Record<string, string>,
      created: microsToNanos(row.created),
      updated: microsToNanos(row.updated),
    }));
  }

  /** Ids of snapshots that no other snapshot has as parent. */
  childlessIds(): Set<string> {
    return new Set(this.stmts.childless.all().map((r) => String(r.id)));
  }

  /** Every row's id, kind and parent id (start-up's check of the directories). */
  shapes(): { id: string; kind: Kind; parentId: string | undefined }[] {
    return this.stmts.shapes.all().map((r) => ({ id: String(r.id), kind: CODE_KIND[r.kind]!, parentId: r.parent_id === null ? undefined : String(r.parent_id) }));
  }

  /** Deletes a row by id (start-up repair of a row whose directory is gone). */
  removeById(id: string): void {
    this.stmts.remove.run(Number(id));
  }

  /** Every id in use (directory names that Cleanup must keep). */
  ids(): Set<string> {
    return new Set(this.stmts.allIds.all().map((r) => String(r.id)));
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

function microsToNanos(us: number): bigint {
  return BigInt(us) * 1000n;
}
