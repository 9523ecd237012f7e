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
 */
import Database from "better-sqlite3";
import { chmodSync } from "node:fs";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from "../errors.js";
import type { Info, Kind, Usage } from "./snapshotter.js";

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
  created: number;
  updated: number;
  size: number;
  inodes: number;
}

const KIND_CODE: Record<Kind, number> = { view: 1, active: 2, committed: 3 };
const CODE_KIND: Record<number, Kind> = { 1: "view", 2: "active", 3: "committed" };

/** containerd refuses a label whose key and value together exceed this. */
export const MAX_LABEL_BYTES = 4096;

const SCHEMA_VERSION = 1;

export class MetaStore {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<MetaStore["prepareStatements"]>;
  /** One reusable transaction wrapper (building one per call is measurable). */
  private readonly runInTransaction: Database.Transaction<(fn: () => unknown) => unknown>;

  constructor(file: string) {
    this.db = new Database(file);
    chmodSync(file, 0o600);
    // WAL: a commit is one append. NORMAL sync by default: every commit
    // survives a process crash (kill -9), and the database is never
    // corrupted; on power loss the last transactions may roll back, which
    // for creating and removing snapshots leaves a directory without a row,
    // or a row without a directory, both repaired at start-up. Commits and
    // label updates, whose loss would contradict containerd's own durable
    // metadata, are synced (durable: true). An fsync per call blocks the
    // event loop for a fraction of a millisecond, the daemon's largest cost.
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.migrate();
    this.stmts = this.prepareStatements();
    this.runInTransaction = this.db.transaction((fn: () => unknown) => fn());
  }

  private migrate(): void {
    const version = this.db.pragma("user_version", { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new Error(
        `metadata database schema ${version} is newer than this nix-snapshotter understands (${SCHEMA_VERSION}); upgrade nix-snapshotter`,
      );
    }
    if (version === SCHEMA_VERSION) return;
    // AUTOINCREMENT: ids are never reused, so a directory left behind by a
    // crash can never be mistaken for a newer snapshot's.
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS snapshots (
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
      CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
      PRAGMA user_version = ${SCHEMA_VERSION};
    `);
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
      chainRows: db.prepare<[number], { id: number; key: string; labels: string }>(`
        WITH RECURSIVE chain(id, parent_id, depth) AS (
          SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
          UNION ALL
          SELECT s.id, s.parent_id, chain.depth + 1
            FROM snapshots s JOIN chain ON s.id = chain.parent_id
        )
        SELECT s.id, s.key, s.labels FROM chain JOIN snapshots s ON s.id = chain.id
         WHERE chain.depth > 0 ORDER BY chain.depth`),
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
      childless: db.prepare<[], { id: number }>(
        "SELECT id FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent_id = s.id)",
      ),
    };
  }

  /**
   * Runs fn in one write transaction (BEGIN IMMEDIATE). fn is synchronous on
   * purpose: better-sqlite3 has one connection, and an await inside a
   * transaction would let another request's statements join it.
   */
  transaction<T>(fn: () => T, opts: { durable?: boolean } = {}): T {
    if (!opts.durable) return this.runInTransaction.immediate(fn) as T;
    // In WAL mode, FULL syncs the log at this commit (and with it every
    // earlier commit still unsynced).
    this.db.pragma("synchronous = FULL");
    try {
      return this.runInTransaction.immediate(fn) as T;
    } finally {
      this.db.pragma("synchronous = NORMAL");
    }
  }

  /**
   * A consistent read of several statements. The daemon is the database's
   * only writer and its statements run synchronously on one thread, so a
   * synchronous fn cannot interleave with a write: no transaction is needed,
   * and a Stat costs one statement, not three.
   */
  read<T>(fn: () => T): T {
    return fn();
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
      created: new Date(row.created),
      updated: new Date(row.updated),
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
    const now = Date.now();
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
    const now = Date.now();
    this.stmts.commit.run(name, KIND_CODE.committed, JSON.stringify(labels), now, now, usage.size, usage.inodes, row.id);
    return String(row.id);
  }

  /** Removes the record; refuses one with children. Returns its id and kind. */
  remove(key: string): { id: string; kind: Kind } {
    const row = this.row(key);
    if (this.stmts.hasChild.get(row.id)) {
      throw new FailedPreconditionError(`cannot remove snapshot ${JSON.stringify(key)}: it has children`);
    }
    this.stmts.remove.run(row.id);
    return { id: String(row.id), kind: CODE_KIND[row.kind]! };
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
    this.stmts.setLabels.run(JSON.stringify(next), Date.now(), row.id);
    return this.info(this.row(name));
  }

  /** The snapshot and its parents, nearest first, with their labels. */
  chainLinks(key: string): { id: string; key: string; labels: Record<string, string> }[] {
    const row = this.row(key);
    const links = [{ id: String(row.id), key: row.key, labels: JSON.parse(row.labels) as Record<string, string> }];
    for (const r of this.stmts.chainRows.all(row.id)) {
      links.push({ id: String(r.id), key: r.key, labels: JSON.parse(r.labels) as Record<string, string> });
    }
    return links;
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
      created: new Date(row.created),
      updated: new Date(row.updated),
    }));
  }

  /** Ids of snapshots that no other snapshot has as parent. */
  childlessIds(): Set<string> {
    return new Set(this.stmts.childless.all().map((r) => String(r.id)));
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

export function validateLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (k === "") throw new InvalidArgumentError("label key must not be empty");
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_BYTES) {
      throw new InvalidArgumentError(
        `label ${JSON.stringify(k.slice(0, 64))}: key and value exceed ${MAX_LABEL_BYTES} bytes`,
      );
    }
  }
}
