/**
 * Fault soaks against the real daemon (a child process, real Nix, real
 * overlay directories): shared by the bounded CI test
 * (test/integration/trust.test.ts) and the longer runs of bench/soak.
 *
 *   clientLoad      many clients, each on its own connection, run
 *                   Prepare/Mounts/Usage/Commit/View/Remove with Cleanup
 *                   mixed in; every call must succeed and every live
 *                   snapshot keep its directory.
 *   nixDeleteRace   nix layers are prepared while a loop deletes their
 *                   store paths (`nix-store --delete`, only paths this run
 *                   built); no path of a live layer may ever be missing.
 *   killRounds      kill -9 during a burst of plain and nix layers, then
 *                   restart: no acknowledged commit lost, every nix layer
 *                   rooted and present, nothing half-prepared left.
 */
import Database from "better-sqlite3";
import { execFile } from "node:child_process";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { UnavailableError, CancelledError } from "../../src/errors.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { closureOf, nixBuild, prelude } from "./nix.js";
import { nixLabels } from "./nix-layer.js";

const run = promisify(execFile);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function message(err: unknown): string {
  return `${(err as Error).constructor?.name ?? "Error"}: ${(err as Error).message ?? String(err)}`;
}

/** Rows of the daemon's database and its snapshot directories (read-only; WAL allows it while the daemon runs). */
export function rowsAndDirs(root: string): { ids: Set<string>; dirs: string[]; preparing: number; nixIds: Set<string> } {
  const db = new Database(path.join(root, "metadata.db"), { readonly: true });
  try {
    const ids = new Set((db.prepare("SELECT id FROM snapshots").all() as { id: number }[]).map((r) => String(r.id)));
    const nix = db.prepare("SELECT id, state FROM nix_layers").all() as { id: number; state: number }[];
    return {
      ids,
      dirs: readdirSync(path.join(root, "snapshots")).sort(),
      preparing: nix.filter((r) => r.state === 1).length,
      nixIds: new Set(nix.map((r) => String(r.id))),
    };
  } finally {
    db.close();
  }
}

/** Ids of live rows whose directory is missing. */
export function rowsWithoutDirectory(root: string): string[] {
  const { ids } = rowsAndDirs(root);
  return [...ids].filter((id) => !existsSync(path.join(root, "snapshots", id, "fs")));
}

export interface LoadResult {
  ops: number;
  cleanups: number;
  errors: string[];
  /** Rows found without their directory, checked after the load. */
  lostDirectories: string[];
}

/**
 * `clients` connections each loop: Prepare on a shared base, Mounts,
 * Usage (walks the directory: fails if it was reclaimed), Commit, Stat,
 * View of the commit, Mounts, Remove both; `cleanupShare` of the
 * iterations call Cleanup instead.
 */
export async function clientLoad(o: { address: string; root: string; clients: number; durationMs: number; cleanupShare: number }): Promise<LoadResult> {
  const admin = new SnapshotsClient({ address: o.address });
  await admin.prepare("load-base-a", "");
  await admin.commit("load-base", "load-base-a");
  const res: LoadResult = { ops: 0, cleanups: 0, errors: [], lostDirectories: [] };
  const deadline = Date.now() + o.durationMs;
  let seed = 1;
  const random = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const client = async (c: number) => {
    const sn = new SnapshotsClient({ address: o.address, ownConnection: true });
    try {
      for (let i = 0; Date.now() < deadline; i++) {
        const op = async <T>(p: Promise<T>): Promise<T> => {
          const v = await p;
          res.ops++;
          return v;
        };
        try {
          if (random() < o.cleanupShare) {
            await op(sn.cleanup());
            res.cleanups++;
            continue;
          }
          const a = `load-${c}-${i}-a`;
          const name = `load-${c}-${i}`;
          await op(sn.prepare(a, "load-base", { labels: { client: String(c) } }));
          await op(sn.mounts(a));
          await op(sn.usage(a));
          await op(sn.commit(name, a));
          await op(sn.stat(name));
          await op(sn.view(`${name}-v`, name));
          await op(sn.mounts(`${name}-v`));
          await op(sn.remove(`${name}-v`));
          await op(sn.usage(name));
          await op(sn.remove(name));
        } catch (err) {
          res.errors.push(`client ${c}: ${message(err)}`);
          if (res.errors.length > 50) return;
        }
      }
    } finally {
      await sn.close();
    }
  };
  await Promise.all(Array.from({ length: o.clients }, (_, c) => client(c)));
  await admin.cleanup();
  res.lostDirectories = rowsWithoutDirectory(o.root);
  // Every client removed what it made: the base must be removable now.
  await admin.remove("load-base").catch((err: unknown) => res.errors.push(`removing the base at the end: ${message(err)}`));
  await admin.close();
  return res;
}

/**
 * Closures this run built, one per worker: three paths each, and with
 * `wide`, one more worker whose closure is wide's leaves plus their top
 * (test/fixtures/nix/many.nix): a layer large enough that Prepare roots
 * only its tops (ROOT_TOPS_FROM in src/nix/realise.ts).
 */
export interface NixFixture {
  closures: string[][];
  /** A binary cache holding them (file://), so deleted paths can be substituted again. */
  cacheDir: string;
  /** NIX_CONFIG for a daemon that substitutes from the cache. */
  nixConfig: string;
}

export async function buildNixFixture(n: number, nonce: string, cacheDir: string, wide?: number): Promise<NixFixture> {
  const exprs = Array.from({ length: n }, (_, i) => {
    const tag = `w${i}`;
    return `(let data = mk "soak-${tag}-data" "echo ${tag} > $out";
         lib = mk "soak-${tag}-lib" "mkdir -p $out; echo \${data} > $out/ref";
         app = mk "soak-${tag}-app" "mkdir -p $out/bin; echo \${lib} > $out/bin/app";
     in app)`;
  });
  if (wide !== undefined) exprs.push(`(import ${JSON.stringify(path.join(REPO, "test/fixtures/nix/many.nix"))} { n = ${wide}; salt = nonce; })`);
  const apps = await nixBuild(`${prelude(nonce)} [ ${exprs.join(" ")} ]`);
  const closures = await Promise.all(apps.map((a) => closureOf(a)));
  try {
    await run("nix", ["copy", "--to", `file://${cacheDir}?compression=none`, ...apps], { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    throw new Error(`nix copy failed: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`);
  }
  return { closures, cacheDir, nixConfig: `substituters = file://${cacheDir}\nrequire-sigs = false\nnarinfo-cache-negative-ttl = 0` };
}

/** Deletes the fixture's paths where nothing roots them (the end of a run). */
export async function deleteFixture(f: NixFixture): Promise<void> {
  for (const c of f.closures) await run("nix-store", ["--delete", ...c]).catch(() => {});
}

export interface RaceResult {
  layers: number;
  /** Successful `nix-store --delete` runs (paths really deleted meanwhile). */
  deletions: number;
  deleteAttempts: number;
  /** Store paths found missing while a layer holding them was live. */
  missingWhileLive: string[];
  errors: string[];
}

/**
 * Each worker owns one closure: it prepares a nix layer of it, checks every
 * path, commits, prepares a container above (Mounts checks the store
 * again), checks once more, removes both, and starts over. A delete loop
 * runs `nix-store --delete` on every worker's closure throughout, so
 * between two layers a worker's paths are really deleted and its next
 * Prepare substitutes them while deletions keep coming.
 */
export async function nixDeleteRace(o: { address: string; fixture: NixFixture; durationMs: number }): Promise<RaceResult> {
  const res: RaceResult = { layers: 0, deletions: 0, deleteAttempts: 0, missingWhileLive: [], errors: [] };
  const deadline = Date.now() + o.durationMs;
  let stopDeleting = false;
  const deleter = (async () => {
    while (!stopDeleting) {
      for (const c of o.fixture.closures) {
        res.deleteAttempts++;
        try {
          await run("nix-store", ["--delete", ...c]);
          res.deletions++;
        } catch {
          /* alive: a layer roots it */
        }
      }
    }
  })();
  const check = (paths: readonly string[], when: string) => {
    for (const p of paths) if (!existsSync(p)) res.missingWhileLive.push(`${p} (${when})`);
  };
  const worker = async (w: number) => {
    const sn = new SnapshotsClient({ address: o.address, ownConnection: true });
    const paths = o.fixture.closures[w]!;
    try {
      for (let i = 0; Date.now() < deadline; i++) {
        const key = `race-${w}-${i}`;
        try {
          await sn.prepare(`${key}-extract`, "", { labels: nixLabels(paths) });
          check(paths, "after Prepare");
          await sn.commit(key, `${key}-extract`);
          const mounts = await sn.prepare(`${key}-ctr`, key);
          check(mounts.filter((m) => m.target).map((m) => m.source), "after the container's Prepare");
          await sleep(20);
          check(paths, "while a container runs");
          await sn.remove(`${key}-ctr`);
          await sn.remove(key);
          res.layers++;
        } catch (err) {
          res.errors.push(`worker ${w}: ${message(err)}`);
          if (res.errors.length > 20) return;
        }
      }
    } finally {
      await sn.close();
    }
  };
  await Promise.all(o.fixture.closures.map((_, w) => worker(w)));
  stopDeleting = true;
  await deleter;
  return res;
}

export interface KillResult {
  rounds: number;
  acknowledged: number;
  lost: string[];
  nixLayersChecked: number;
  /** Problems found after a restart: rows without directories, orphans, unrooted or missing paths. */
  damage: string[];
  errors: string[];
}

/**
 * kill -9 mid-burst, `rounds` times. Workers prepare and commit plain
 * layers and nix layers (their fixture closure); after each restart every
 * acknowledged commit must be there, and every committed nix layer must
 * have its store paths present and rooted by links in gcroots/<id>.
 */
export async function killRounds(o: {
  root: string;
  address: string;
  fixture: NixFixture;
  rounds: number;
  workers: number;
  /** The kill comes between this and twice this after the burst starts. */
  killAfterMs: number;
  config?: string;
}): Promise<KillResult> {
  const res: KillResult = { rounds: 0, acknowledged: 0, lost: [], nixLayersChecked: 0, damage: [], errors: [] };
  const committed = new Map<string, readonly string[] | null>(); // name -> nix paths (null: plain)
  const env = { NIX_CONFIG: o.fixture.nixConfig };
  for (let round = 0; round <= o.rounds; round++) {
    const daemon: DaemonProcess = await startDaemonProcess({ root: o.root, address: o.address, env, config: o.config });
    const sn = new SnapshotsClient({ address: o.address });
    // The previous round's state must be whole.
    const present = new Map<string, string>();
    await sn.walk((i) => {
      if (i.kind === "committed") present.set(i.name, i.name);
    });
    for (const name of committed.keys()) if (!present.has(name)) res.lost.push(`round ${round}: ${name}`);
    const { ids, dirs, preparing, nixIds } = rowsAndDirs(o.root);
    for (const id of ids) if (!existsSync(path.join(o.root, "snapshots", id, "fs"))) res.damage.push(`round ${round}: row ${id} has no directory`);
    for (const d of dirs) if (!ids.has(d)) res.damage.push(`round ${round}: orphan directory ${d} survived start-up`);
    if (preparing > 0) res.damage.push(`round ${round}: ${preparing} half-prepared nix layers survived start-up`);
    await sn.cleanup();
    for (const g of readdirSync(path.join(o.root, "gcroots"))) if (!nixIds.has(g)) res.damage.push(`round ${round}: orphan root directory ${g} survived Cleanup`);
    // Store views: only complete views of existing nix layers (a killed build leaves .build-*, which start-up removes).
    const views = path.join(o.root, "store-views");
    for (const v of existsSync(views) ? readdirSync(views) : []) if (!nixIds.has(v)) res.damage.push(`round ${round}: store view entry ${v} survived Cleanup`);
    for (const [name, paths] of committed) {
      if (!paths || !present.has(name)) continue;
      res.nixLayersChecked++;
      const mounts = await sn.prepare(`check-${round}-${name}`, name);
      const store = mounts.filter((m) => m.target);
      // A store view (one bind onto the store) shows its entries; per-path binds their sources.
      const sources =
        store.length === 1 && store[0]!.target === "/nix/store" ? readdirSync(store[0]!.source).map((b) => `/nix/store/${b}`).sort() : store.map((m) => m.source);
      if (sources.join(" ") !== [...paths].sort().join(" ")) res.damage.push(`round ${round}: ${name} mounts ${sources.length} store paths, expected ${paths.length}`);
      for (const p of paths) if (!existsSync(p)) res.damage.push(`round ${round}: ${p} of ${name} is missing`);
      await sn.remove(`check-${round}-${name}`);
    }
    for (const name of present.keys()) if (!committed.has(name)) committed.set(name, null); // landed unacknowledged
    if (round === o.rounds) {
      // Every committed nix layer's paths are rooted by links of ours.
      for (const id of nixIds) {
        const dir = path.join(o.root, "gcroots", id);
        const targets = existsSync(dir) ? rootTargets(dir) : [];
        if (targets.length === 0) res.damage.push(`nix layer ${id} has no root links`);
      }
      await sn.close();
      const code = await daemon.stop();
      if (code !== 0) res.errors.push(`daemon exited ${code} on SIGTERM`);
      break;
    }

    let stop = false;
    const worker = async (w: number) => {
      const paths = o.fixture.closures[w % o.fixture.closures.length]!;
      for (let i = 0; !stop; i++) {
        const name = `r${round}w${w}-${i}`;
        const nix = i % 3 === 1;
        try {
          await sn.prepare(`${name}-a`, "", { labels: nix ? nixLabels(paths) : { worker: String(w) } });
          await sn.commit(name, `${name}-a`);
          committed.set(name, nix ? paths : null);
          res.acknowledged++;
          if (i % 4 === 3) {
            committed.delete(name); // gone from the moment the call is sent
            await sn.remove(name);
          }
        } catch (err) {
          if (err instanceof UnavailableError || err instanceof CancelledError || stop) return; // the daemon died under us
          res.errors.push(`round ${round} worker ${w}: ${message(err)}`);
          return;
        }
      }
    };
    const workers = Array.from({ length: o.workers }, (_, w) => worker(w));
    await sleep(o.killAfterMs + ((round * 211) % o.killAfterMs));
    process.kill(daemon.pid, "SIGKILL");
    await daemon.exited;
    stop = true;
    await Promise.all(workers);
    await sn.close();
    res.rounds++;
  }
  return res;
}

/** The store paths the symlinks below dir point at. */
export function rootTargets(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isSymbolicLink()) out.push(readlinkSync(p));
    else if (e.isDirectory()) out.push(...rootTargets(p));
  }
  return out;
}
