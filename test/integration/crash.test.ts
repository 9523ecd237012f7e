/**
 * Crash safety: kill -9 the daemon in the middle of a burst of Prepare,
 * Commit and Remove calls, restart it, and check that no committed snapshot
 * was lost, no metadata row points at a missing directory, and every
 * directory no row names is reclaimed. And a power loss, simulated by
 * deleting the directories whose creation a lost journal would undo.
 */
import Database from "better-sqlite3";
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { CancelledError, UnavailableError } from "../../src/errors.js";
import { startDaemonProcess } from "../../devenv/daemon.js";
import { withMounts } from "../lib/mount.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const ROUNDS = 6;
const WORKERS = 6;

interface Ledger {
  /** Committed names whose Commit returned OK and that were not removed after. */
  committed: Set<string>;
  /** Failures other than the daemon dying under a call. */
  errors: string[];
}

/** Each worker loops prepare -> commit -> (sometimes) remove until stopped. */
async function worker(sn: SnapshotsClient, id: string, ledger: Ledger, stop: { now: boolean }): Promise<void> {
  let i = 0;
  let parent = "";
  while (!stop.now) {
    const key = `${id}-active-${i}`;
    const name = `${id}-committed-${i}`;
    try {
      await sn.prepare(key, parent, { labels: { worker: id } });
      await sn.commit(name, key);
      ledger.committed.add(name);
      if (i % 3 === 2) {
        // Remove a leaf now and then, so removals are in flight at the kill.
        await sn.prepare(`${key}-leaf`, name);
        await sn.remove(`${key}-leaf`);
      }
      if (i % 5 === 4 && parent !== "") {
        // Remove the newest leaf of the chain sometimes. From the moment the
        // call is sent the snapshot may be gone: it leaves the ledger first.
        ledger.committed.delete(name);
        await sn.remove(name);
      } else {
        parent = name;
      }
    } catch (err) {
      // The daemon dying under a call is the point (Unavailable, or
      // Cancelled when the stream breaks); anything else is a failure.
      if (!(err instanceof UnavailableError || err instanceof CancelledError)) {
        ledger.errors.push(`${key}: ${(err as Error).constructor.name}: ${(err as Error).message}`);
      }
      return;
    }
    i++;
  }
}

function rowsAndDirs(root: string): { ids: Set<string>; dirs: string[] } {
  const db = new Database(path.join(root, "metadata.db"), { readonly: true });
  const ids = new Set((db.prepare("SELECT id FROM snapshots").all() as { id: number }[]).map((r) => String(r.id)));
  db.close();
  return { ids, dirs: readdirSync(path.join(root, "snapshots")).sort() };
}

if (requireOrSkip(t, { root: true })) {
  t.test("kill -9 during a burst, restart: nothing committed lost, no dangling rows, orphans reclaimed", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    const ledger: Ledger = { committed: new Set(), errors: [] };

    for (let round = 0; round < ROUNDS; round++) {
      const daemon = await startDaemonProcess({ root, address });
      const sn = new SnapshotsClient({ address });

      // After the restart: the previous round's state must be whole.
      const { ids, dirs } = rowsAndDirs(root);
      const missing = [...ids].filter((id) => !existsSync(path.join(root, "snapshots", id, "fs")));
      t.same(missing, [], `round ${round}: every row has its directory`);
      t.same(dirs.filter((d) => !ids.has(d)), [], `round ${round}: no orphan directory survives start-up`);
      const present = new Set<string>();
      await sn.walk((i) => {
        if (i.kind === "committed") present.add(i.name);
      });
      const lost = [...ledger.committed].filter((n) => !present.has(n));
      t.same(lost, [], `round ${round}: all ${ledger.committed.size} acknowledged commits survived`);
      // A commit in flight at the kill may have landed without its
      // acknowledgement: adopt what is there as the new truth.
      for (const n of present) ledger.committed.add(n);

      const stop = { now: false };
      const workers = Array.from({ length: WORKERS }, (_, w) => worker(sn, `r${round}w${w}`, ledger, stop));
      // Kill at a different moment each round, mid-burst.
      await new Promise((r) => setTimeout(r, 150 + round * 97));
      process.kill(daemon.pid, "SIGKILL");
      await daemon.exited;
      stop.now = true;
      await Promise.all(workers);
      await sn.close();
    }
    t.ok(ledger.committed.size > 0, `the burst committed ${ledger.committed.size} snapshots in all`);
    t.same(ledger.errors, [], "no call failed for any reason but the kill");

    // Final restart and an explicit Cleanup over gRPC.
    const daemon = await startDaemonProcess({ root, address });
    const sn = new SnapshotsClient({ address });
    await sn.cleanup();
    const { ids, dirs } = rowsAndDirs(root);
    t.same(dirs, [...ids].sort(), "after Cleanup: directories are exactly the snapshots' ids");
    await sn.close();
    t.equal(await daemon.stop(), 0, "daemon exits 0 on SIGTERM");
  });
  t.test("power loss took new directories: start-up makes active and view ones again, empty; drops a childless committed one", async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const root = path.join(tmp.path, "root");
    const address = path.join(tmp.path, "sn.sock");
    let daemon = await startDaemonProcess({ root, address });
    let sn = new SnapshotsClient({ address });
    // A failed assertion must not leave the daemon (and this file) running.
    t.teardown(async () => {
      await sn.close();
      await daemon.stop("SIGKILL");
    });
    await sn.prepare("base-active", "");
    const baseFs = path.join(root, "snapshots", rowId(root, "base-active"), "fs");
    writeFileSync(path.join(baseFs, "hello"), "from the base\n");
    // An image whose "/" belongs to someone else: its children's must too.
    chownSync(baseFs, 1234, 5678);
    await sn.commit("base", "base-active");
    await sn.prepare("active", "base");
    await sn.view("view", "base");
    await sn.prepare("no-work", "base");
    await sn.prepare("leaf-active", "base");
    await sn.commit("leaf", "leaf-active");
    await sn.close();
    t.equal(await daemon.stop(), 0, "daemon stopped");

    const dir = (key: string) => path.join(root, "snapshots", rowId(root, key));
    const [activeDir, viewDir, noWorkDir, leafDir] = ["active", "view", "no-work", "leaf"].map(dir) as [string, string, string, string];
    rmSync(activeDir, { recursive: true });
    rmSync(viewDir, { recursive: true });
    rmSync(path.join(noWorkDir, "work"), { recursive: true });
    rmSync(leafDir, { recursive: true });
    // An untouched sibling: its contents must stay as they are.
    mkdirSync(path.join(noWorkDir, "fs", "kept"));

    daemon = await startDaemonProcess({ root, address });
    sn = new SnapshotsClient({ address });
    const mode = (p: string) => (statSync(p).mode & 0o7777).toString(8);
    t.equal(mode(path.join(activeDir, "fs")), "755", "active: fs made again, 0755");
    t.equal(mode(path.join(activeDir, "work")), "711", "active: work made again, 0711");
    t.same(readdirSync(path.join(activeDir, "fs")), [], "active: fs is empty, as Prepare acknowledged it");
    const st = statSync(path.join(activeDir, "fs"));
    t.same([st.uid, st.gid], [1234, 5678], "active: fs has the parent's owner again");
    t.ok(existsSync(path.join(viewDir, "fs")), "view: fs made again");
    t.notOk(existsSync(path.join(viewDir, "work")), "view: no work directory (a view never has one)");
    t.equal(mode(path.join(noWorkDir, "work")), "711", "a lost work directory alone is made again");
    t.same(readdirSync(path.join(noWorkDir, "fs")), ["kept"], "what survived beside it is left alone");

    const names: string[] = [];
    await sn.walk((i) => void names.push(i.name));
    t.same(names.sort(), ["active", "base", "no-work", "view"], "the childless committed snapshot whose files are gone was dropped");
    mkdirSync(path.join(tmp.path, "mnt"));
    await withMounts(await sn.mounts("active"), path.join(tmp.path, "mnt"), async () => {
      t.equal(readFileSync(path.join(tmp.path, "mnt", "hello"), "utf8"), "from the base\n", "the remade active snapshot mounts over its parent");
      writeFileSync(path.join(tmp.path, "mnt", "new"), "written");
    });
    t.ok(existsSync(path.join(activeDir, "fs", "new")), "and takes writes in its remade upper directory");
    await sn.close();
    t.equal(await daemon.stop(), 0, "daemon exits 0 on SIGTERM");
  });
}

/** A snapshot's id (its directory's name), read from the metadata file of a stopped daemon. */
function rowId(root: string, key: string): string {
  const db = new Database(path.join(root, "metadata.db"), { readonly: true });
  try {
    const row = db.prepare("SELECT id FROM snapshots WHERE key = ?").get(key) as { id: number } | undefined;
    if (!row) throw new Error(`no snapshot ${key}`);
    return String(row.id);
  } finally {
    db.close();
  }
}
