/**
 * One behaviour suite for every Snapshotter implementation, after
 * containerd's snapshots/testsuite: each case gets a fresh snapshotter from
 * the factory, mounts what it returns for real, and checks the filesystem
 * and metadata a container runtime relies on. Run in-process and against the
 * daemon over its socket.
 */
import { chmod, chown, mkdir, readdir, readFile, rename, rm, stat, writeFile, lstat } from "node:fs/promises";
import path from "node:path";
import type { Test } from "tap";
import { execFileSync } from "node:child_process";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../../src/errors.js";
import { MAX_LABELS, MAX_LABELS_TOTAL_BYTES } from "../../src/snapshotter/metadata.js";
import type { Snapshotter } from "../../src/snapshotter/snapshotter.js";
import { mountAll, unmount, withMounts } from "./mount.js";
import { tempDir } from "./tmp.js";
import { listAll } from "./util.js";

export interface Harness {
  sn: Snapshotter;
  /** Scratch directory for mount points; removed after the case. */
  work: string;
}

export type Factory = (work: string) => Promise<{ sn: Snapshotter; close(): Promise<void> }>;

type Case = (t: Test, h: Harness) => Promise<void>;

/** Prepares key on parent, mounts it, lets fn write, unmounts, commits as name. */
async function layer(h: Harness, name: string, parent: string, fn: (root: string) => Promise<void>): Promise<void> {
  const key = `${name}-active`;
  const mounts = await h.sn.prepare(key, parent);
  const mp = path.join(h.work, key);
  await mkdir(mp, { recursive: true });
  await withMounts(mounts, mp, () => fn(mp));
  await h.sn.commit(name, key);
}

/** Opens a view of parent, runs fn on its mounted root, removes the view. */
async function inView<T>(h: Harness, parent: string, fn: (root: string) => Promise<T>): Promise<T> {
  const key = `view-of-${parent}-${Math.random().toString(36).slice(2)}`;
  const mounts = await h.sn.view(key, parent);
  const mp = path.join(h.work, key);
  await mkdir(mp, { recursive: true });
  try {
    return await withMounts(mounts, mp, () => fn(mp));
  } finally {
    await h.sn.remove(key);
  }
}

/** Every path under root with its type, mode and content (files). */
async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const visit = async (rel: string) => {
    for (const name of (await readdir(path.join(root, rel))).sort()) {
      const r = path.join(rel, name);
      const st = await lstat(path.join(root, r));
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out[r] = `dir ${mode} ${st.uid}:${st.gid}`;
        await visit(r);
      } else if (st.isFile()) {
        out[r] = `file ${mode} ${st.uid}:${st.gid} ${await readFile(path.join(root, r), "utf8")}`;
      } else {
        out[r] = `other ${mode}`;
      }
    }
  };
  await visit("");
  return out;
}

/** The wall clock in nanoseconds, read by another process (as Go's time.Now()). */
function wallNanos(): bigint {
  return BigInt(execFileSync("date", ["+%s%N"], { encoding: "utf8" }).trim());
}

async function rejectsWith(t: Test, p: Promise<unknown>, cls: Function, what: string): Promise<void> {
  try {
    await p;
    t.fail(`${what}: expected ${cls.name}, but it succeeded`);
  } catch (err) {
    t.ok(err instanceof cls, `${what}: ${cls.name} (got ${(err as Error).constructor.name}: ${(err as Error).message})`);
  }
}


export const CASES: Record<string, Case> = {
  async Basic(t, h) {
    await layer(h, "base", "", async (root) => {
      await mkdir(path.join(root, "a/b"), { recursive: true });
      await writeFile(path.join(root, "a/b/foo"), "foo\n");
      await writeFile(path.join(root, "bar"), "bar\n");
    });
    const base = await h.sn.stat("base");
    t.equal(base.kind, "committed");
    t.equal(base.parent, "");
    t.equal(base.name, "base");

    await layer(h, "next", "base", async (root) => {
      t.equal(await readFile(path.join(root, "a/b/foo"), "utf8"), "foo\n", "lower file visible in active");
      await writeFile(path.join(root, "bar"), "bar2\n");
      await writeFile(path.join(root, "baz"), "baz\n");
    });
    const next = await h.sn.stat("next");
    t.equal(next.parent, "base", "parent recorded");
    t.equal(next.kind, "committed");

    const seen = await inView(h, "next", (root) => tree(root));
    t.same(
      Object.fromEntries(Object.entries(seen).map(([k, v]) => [k, v.split(" ").slice(-1)[0]])),
      { a: "0:0", "a/b": "0:0", "a/b/foo": "foo\n", bar: "bar2\n", baz: "baz\n" },
      "view of the chain shows the union with upper changes",
    );
    await h.sn.remove("next");
    await h.sn.remove("base");
    t.same(await listAll(h.sn), [], "nothing left");
  },

  async StatActive(t, h) {
    const mounts = await h.sn.prepare("active", "", { labels: { l: "v" } });
    t.ok(mounts.length >= 1, "prepare returns mounts");
    const info = await h.sn.stat("active");
    t.equal(info.kind, "active");
    t.equal(info.name, "active");
    t.equal(info.parent, "");
    t.same(info.labels, { l: "v" }, "labels kept");
    await rejectsWith(t, h.sn.stat("missing"), NotFoundError, "stat of a missing key");
  },

  async StatCommitted(t, h) {
    await layer(h, "c", "", async (root) => writeFile(path.join(root, "f"), "x"));
    const info = await h.sn.stat("c");
    t.equal(info.kind, "committed");
    t.equal(info.name, "c");
    await rejectsWith(t, h.sn.stat("c-active"), NotFoundError, "the active key is gone after commit");
    const usage = await h.sn.usage("c");
    t.ok(usage.inodes >= 2 && usage.size > 0, `committed usage recorded (${usage.size} bytes, ${usage.inodes} inodes)`);
  },

  async Transitivity(t, h) {
    await layer(h, "l1", "", async (root) => writeFile(path.join(root, "one"), "1"));
    await layer(h, "l2", "l1", async (root) => writeFile(path.join(root, "two"), "2"));
    await layer(h, "l3", "l2", async (root) => writeFile(path.join(root, "three"), "3"));
    const seen = await inView(h, "l3", async (root) => (await readdir(root)).sort());
    t.same(seen, ["one", "three", "two"], "every ancestor's files reach the top");
  },

  async PrepareViewFailing(t, h) {
    await layer(h, "base", "", async (root) => writeFile(path.join(root, "f"), "x"));
    await h.sn.prepare("k", "base");
    await rejectsWith(t, h.sn.view("k", "base"), AlreadyExistsError, "view with a key in use");
    await rejectsWith(t, h.sn.prepare("k", "base"), AlreadyExistsError, "prepare with a key in use");
    await rejectsWith(t, h.sn.view("v", "k"), InvalidArgumentError, "view of an active parent");
    await rejectsWith(t, h.sn.prepare("p", "nope"), NotFoundError, "prepare of a missing parent");
    await h.sn.view("v", "base");
    await rejectsWith(t, h.sn.commit("from-view", "v"), FailedPreconditionError, "commit of a view");
    await rejectsWith(t, h.sn.commit("base", "k"), AlreadyExistsError, "commit onto an existing name");
    await rejectsWith(t, h.sn.mounts("base"), FailedPreconditionError, "mounts of a committed snapshot");
    await rejectsWith(t, h.sn.mounts("nope"), NotFoundError, "mounts of a missing key");
    const left = (await listAll(h.sn)).map((i) => `${i.name}:${i.kind}`).sort();
    t.same(left, ["base:committed", "k:active", "v:view"], "failed calls created nothing");
  },

  async Update(t, h) {
    // As containerd's testsuite (checkUpdate): times are checked against a
    // wall clock read by another process (date +%s%N, nanoseconds) just
    // before and after the calls, so a clock cut to milliseconds, or one
    // running behind, fails here.
    const t1 = wallNanos();
    await h.sn.prepare("c1-a", "");
    await h.sn.commit("c1", "c1-a");
    await h.sn.prepare("c2-a", "c1");
    await h.sn.commit("c2", "c2-a");
    await h.sn.prepare("a1", "c2");
    await h.sn.prepare("a2", "");
    await h.sn.view("v1", "c2");
    await h.sn.view("v2", "");
    const t2 = wallNanos();
    const cases: [string, string, string][] = [
      ["c1", "committed", ""],
      ["c2", "committed", "c1"],
      ["a1", "active", "c2"],
      ["a2", "active", ""],
      ["v1", "view", "c2"],
      ["v2", "view", ""],
    ];
    for (const [name, kind, parent] of cases) {
      const st = await h.sn.stat(name);
      t.ok(st.created >= t1 && st.created <= t2, `${name}: created ${st.created} within [${t1}, ${t2}]`);
      t.equal(st.updated, st.created, `${name}: updated equals created before any update`);
      t.same([st.kind, st.parent, st.name], [kind, parent, name], `${name}: kind, parent, name`);
      const u1 = wallNanos();
      const up = await h.sn.update({ name, labels: { l1: "v1", l2: "v2" } });
      const u2 = wallNanos();
      t.equal(up.created, st.created, `${name}: created unchanged by Update, to the nanosecond`);
      t.ok(up.updated >= u1 && up.updated <= u2, `${name}: updated ${up.updated} within [${u1}, ${u2}]`);
      t.same([up.kind, up.parent, up.name], [kind, parent, name], `${name}: Update keeps kind, parent, name`);
      const again = await h.sn.stat(name);
      t.same([again.created, again.updated], [up.created, up.updated], `${name}: Stat returns the times Update returned`);
    }
    await h.sn.prepare("u", "", { labels: { a: "1", b: "2" } });
    let info = await h.sn.update({ name: "u", labels: { c: "3" } });
    t.same(info.labels, { c: "3" }, "no field paths: labels replaced");
    info = await h.sn.update({ name: "u", labels: { d: "4", c: "ignored?" } }, ["labels.d"]);
    t.same(info.labels, { c: "3", d: "4" }, "labels.<k> sets only that key");
    info = await h.sn.update({ name: "u", labels: {} }, ["labels.c"]);
    t.same(info.labels, { d: "4" }, "labels.<k> with no value removes it");
    info = await h.sn.update({ name: "u", labels: { x: "y" } }, ["labels"]);
    t.same(info.labels, { x: "y" }, "field path labels replaces all");
    t.same((await h.sn.stat("u")).labels, { x: "y" }, "stat sees the update");
    await rejectsWith(t, h.sn.update({ name: "u", labels: {} }, ["name"]), InvalidArgumentError, "update of an immutable field");
    await rejectsWith(t, h.sn.update({ name: "u", labels: {} }, ["parent"]), InvalidArgumentError, "update of the parent");
    await rejectsWith(t, h.sn.update({ name: "missing", labels: {} }), NotFoundError, "update of a missing snapshot");
    await rejectsWith(t, h.sn.update({ name: "u", labels: { big: "x".repeat(5000) } }), InvalidArgumentError, "label over 4096 bytes");
    t.same((await h.sn.stat("u")).labels, { x: "y" }, "refused update changed nothing");
  },

  async CommitTimes(t, h) {
    await h.sn.prepare("ct-a", "", { labels: { p: "1" } });
    const active = await h.sn.stat("ct-a");
    const c1 = wallNanos();
    await h.sn.commit("ct", "ct-a", { labels: { c: "2" } });
    const c2 = wallNanos();
    const st = await h.sn.stat("ct");
    // containerd's storage: a commit is created and updated now, with the
    // commit's own labels (the active snapshot's are not inherited).
    t.ok(st.created >= c1 && st.created <= c2 && st.created > active.created, "committed: created at the commit");
    t.equal(st.updated, st.created, "committed: updated equals created");
    t.same(st.labels, { c: "2" }, "committed: the commit's labels only");
  },

  async LabelLimits(t, h) {
    const many: Record<string, string> = {};
    for (let i = 0; i <= MAX_LABELS; i++) many[`k${i}`] = "v";
    await rejectsWith(t, h.sn.prepare("too-many", "", { labels: many }), InvalidArgumentError, `more than ${MAX_LABELS} labels`);
    const big: Record<string, string> = {};
    let total = 0;
    for (let i = 0; total <= MAX_LABELS_TOTAL_BYTES; i++) {
      big[`k${i}`] = "x".repeat(4000);
      total += `k${i}`.length + 4000;
    }
    await rejectsWith(t, h.sn.prepare("too-big", "", { labels: big }), InvalidArgumentError, `labels over ${MAX_LABELS_TOTAL_BYTES} bytes in all`);
    await h.sn.prepare("ok", "");
    await rejectsWith(t, h.sn.update({ name: "ok", labels: many }), InvalidArgumentError, "update with too many labels");
    t.same((await listAll(h.sn)).map((i) => i.name), ["ok"], "refused calls created nothing");
  },

  // Stat and Mounts answer from a read index: every write must show in the
  // very next read of the same key, also when the key is used again.
  async ReadsFollowWrites(t, h) {
    await h.sn.prepare("k", "", { labels: { a: "1" } });
    t.same((await h.sn.stat("k")).labels, { a: "1" });
    const first = await h.sn.mounts("k");
    t.same(await h.sn.mounts("k"), first, "mounts twice: the same");
    await h.sn.update({ name: "k", labels: { a: "2" } });
    t.same((await h.sn.stat("k")).labels, { a: "2" }, "stat after update");
    await h.sn.commit("n", "k", { labels: { c: "3" } });
    await rejectsWith(t, h.sn.stat("k"), NotFoundError, "stat of the active key after commit");
    await rejectsWith(t, h.sn.mounts("k"), NotFoundError, "mounts of the active key after commit");
    const n = await h.sn.stat("n");
    t.equal(n.kind, "committed", "stat of the committed name");
    t.same(n.labels, { c: "3" }, "with the commit's labels");
    await h.sn.prepare("k", "n", { labels: { b: "4" } });
    const again = await h.sn.stat("k");
    t.same([again.kind, again.parent, again.labels], ["active", "n", { b: "4" }], "the key used again is the new snapshot");
    const second = await h.sn.mounts("k");
    t.notSame(second, first, "and its mounts are the new snapshot's");
    await h.sn.remove("k");
    await rejectsWith(t, h.sn.stat("k"), NotFoundError, "stat after remove");
    await rejectsWith(t, h.sn.mounts("k"), NotFoundError, "mounts after remove");
    await h.sn.view("k", "n");
    t.equal((await h.sn.stat("k")).kind, "view", "the key used for a view");
    await h.sn.remove("k");
    await h.sn.remove("n");
    await rejectsWith(t, h.sn.stat("n"), NotFoundError, "stat of a removed committed snapshot");
  },

  async Remove(t, h) {
    await layer(h, "base", "", async (root) => writeFile(path.join(root, "f"), "x"));
    await h.sn.prepare("child", "base");
    await h.sn.view("view", "base");
    await rejectsWith(t, h.sn.remove("base"), FailedPreconditionError, "remove with children");
    await h.sn.remove("child");
    await rejectsWith(t, h.sn.remove("base"), FailedPreconditionError, "remove with a view child");
    await h.sn.remove("view");
    await h.sn.remove("base");
    await rejectsWith(t, h.sn.remove("base"), NotFoundError, "remove twice");
    t.same(await listAll(h.sn), []);
  },

  async Walk(t, h) {
    await layer(h, "c1", "", async () => {});
    await h.sn.prepare("a1", "c1", { labels: { "containerd.io/gc.root": "x", tier: "one" } });
    await h.sn.view("v1", "c1", { labels: { tier: "two" } });
    await h.sn.prepare("a2", "", { labels: { tier: "one" } });
    const names = async (filters?: string[]) => (await listAll(h.sn, filters)).map((i) => i.name).sort();
    t.same(await names(), ["a1", "a2", "c1", "v1"], "no filter: all");
    t.same(await names(["kind==committed"]), ["c1"]);
    t.same(await names(["kind==active"]), ["a1", "a2"]);
    t.same(await names(["kind==view"]), ["v1"]);
    t.same(await names(["parent==c1"]), ["a1", "v1"]);
    t.same(await names(["name==a2"]), ["a2"]);
    t.same(await names(['labels."containerd.io/gc.root"']), ["a1"], "label presence");
    t.same(await names(["labels.tier==one"]), ["a1", "a2"]);
    t.same(await names(["labels.tier==one,kind==active,parent==c1"]), ["a1"], "comma is and");
    t.same(await names(["name==a2", "name==v1"]), ["a2", "v1"], "several filters are or");
    t.same(await names(["name~=^a"]), ["a1", "a2"], "regexp");
    t.same(await names(["labels.tier!=one"]), ["c1", "v1"], "not equal matches absent too");
    await rejectsWith(t, names(["kind=="]), InvalidArgumentError, "malformed filter");
  },

  async StatInWalk(t, h) {
    for (const k of ["s1", "s2", "s3"]) await h.sn.prepare(k, "");
    const stats: string[] = [];
    await h.sn.walk(async (info) => {
      const st = await h.sn.stat(info.name);
      stats.push(st.name);
    });
    t.same(stats.sort(), ["s1", "s2", "s3"], "Stat inside Walk works");
  },

  async LayerFileUpdate(t, h) {
    await layer(h, "l1", "", async (root) => writeFile(path.join(root, "f"), "one"));
    await layer(h, "l2", "l1", async (root) => writeFile(path.join(root, "f"), "two, longer"));
    await layer(h, "l3", "l2", async (root) => writeFile(path.join(root, "f"), "3"));
    t.equal(await inView(h, "l2", (root) => readFile(path.join(root, "f"), "utf8")), "two, longer");
    t.equal(await inView(h, "l3", (root) => readFile(path.join(root, "f"), "utf8")), "3");
    t.equal(await inView(h, "l1", (root) => readFile(path.join(root, "f"), "utf8")), "one", "lower layers untouched");
  },

  async RemoveDirectoryInLowerLayer(t, h) {
    await layer(h, "l1", "", async (root) => {
      await mkdir(path.join(root, "lib/deep"), { recursive: true });
      await writeFile(path.join(root, "lib/deep/a"), "a");
      await writeFile(path.join(root, "keep"), "k");
    });
    await layer(h, "l2", "l1", async (root) => rm(path.join(root, "lib"), { recursive: true }));
    await layer(h, "l3", "l2", async (root) => {
      await mkdir(path.join(root, "lib"));
      await writeFile(path.join(root, "lib/new"), "n");
    });
    t.same(await inView(h, "l2", async (root) => (await readdir(root)).sort()), ["keep"], "directory gone");
    t.same(await inView(h, "l3", async (root) => (await readdir(path.join(root, "lib"))).sort()), ["new"], "recreated directory is opaque");
  },

  async Chown(t, h) {
    await layer(h, "l1", "", async (root) => {
      await mkdir(path.join(root, "d"));
      await writeFile(path.join(root, "d/f"), "x");
    });
    await layer(h, "l2", "l1", async (root) => {
      await chown(path.join(root, "d"), 1, 2);
      await chown(path.join(root, "d/f"), 3, 4);
    });
    const owners = await inView(h, "l2", async (root) => {
      const d = await stat(path.join(root, "d"));
      const f = await stat(path.join(root, "d/f"));
      return [d.uid, d.gid, f.uid, f.gid];
    });
    t.same(owners, [1, 2, 3, 4], "ownership changes in an upper layer survive commit");
  },

  async DirectoryPermissionOnCommit(t, h) {
    await layer(h, "l1", "", async (root) => {
      await mkdir(path.join(root, "dir-700"), { mode: 0o700 });
      await chmod(path.join(root, "dir-700"), 0o700);
      await mkdir(path.join(root, "dir-750"));
      await chmod(path.join(root, "dir-750"), 0o750);
      await chown(path.join(root, "dir-750"), 1000, 1000);
    });
    await layer(h, "l2", "l1", async (root) => {
      await mkdir(path.join(root, "dir-700/sub"));
    });
    const modes = await inView(h, "l2", async (root) => {
      const a = await stat(path.join(root, "dir-700"));
      const b = await stat(path.join(root, "dir-750"));
      return [(a.mode & 0o777).toString(8), (b.mode & 0o777).toString(8), b.uid];
    });
    t.same(modes, ["700", "750", 1000], "directory modes and owners kept across commits");
  },

  async RemoveIntermediateSnapshot(t, h) {
    await layer(h, "base", "", async (root) => writeFile(path.join(root, "b"), "b"));
    await layer(h, "mid", "base", async (root) => writeFile(path.join(root, "m"), "m"));
    await h.sn.prepare("top", "mid");
    await rejectsWith(t, h.sn.remove("mid"), FailedPreconditionError, "intermediate with a child");
    await rejectsWith(t, h.sn.remove("base"), FailedPreconditionError, "base with a child");
    await h.sn.remove("top");
    await h.sn.remove("mid");
    await h.sn.remove("base");
    t.same(await listAll(h.sn), [], "removed top-down");
  },

  async DeletedFilesInChildSnapshot(t, h) {
    await layer(h, "l1", "", async (root) => {
      await writeFile(path.join(root, "a"), "a");
      await writeFile(path.join(root, "b"), "b");
    });
    await layer(h, "l2", "l1", async (root) => rm(path.join(root, "a")));
    await layer(h, "l3", "l2", async (root) => writeFile(path.join(root, "c"), "c"));
    t.same(await inView(h, "l3", async (root) => (await readdir(root)).sort()), ["b", "c"], "deleted file stays deleted above");
  },

  async MoveFileFromLowerLayer(t, h) {
    await layer(h, "l1", "", async (root) => {
      await mkdir(path.join(root, "dir"));
      await writeFile(path.join(root, "dir/f"), "content");
    });
    await layer(h, "l2", "l1", async (root) => rename(path.join(root, "dir/f"), path.join(root, "moved")));
    const seen = await inView(h, "l2", async (root) => [await readdir(path.join(root, "dir")), await readFile(path.join(root, "moved"), "utf8")]);
    t.same(seen, [[], "content"], "moved file has its content and left its old place");
  },

  async Rename(t, h) {
    await layer(h, "l1", "", async (root) => {
      await mkdir(path.join(root, "dir1"), { mode: 0o700 });
      await mkdir(path.join(root, "somefiles"), { mode: 0o700 });
      await writeFile(path.join(root, "somefiles/f1"), "was here first!");
      await writeFile(path.join(root, "somefiles/f2"), "nothing interesting");
    });
    // Renaming a lower directory is left out on purpose, as containerd's
    // suite does for overlayfs: without redirect_dir the kernel answers
    // EXDEV and tools fall back to copying.
    await layer(h, "l2", "l1", async (root) => {
      await writeFile(path.join(root, "somefiles/f1-overwrite"), "new content 1");
      await rename(path.join(root, "somefiles/f1-overwrite"), path.join(root, "somefiles/f1"));
      await rename(path.join(root, "somefiles/f2"), path.join(root, "somefiles/f3"));
    });
    const seen = await inView(h, "l2", async (root) => tree(root));
    t.same(
      seen,
      {
        dir1: "dir 700 0:0",
        somefiles: "dir 700 0:0",
        "somefiles/f1": "file 644 0:0 new content 1",
        "somefiles/f3": "file 644 0:0 nothing interesting",
      },
      "renamed files over and out of lower files",
    );
  },

  async ViewReadonly(t, h) {
    await layer(h, "c", "", async (root) => writeFile(path.join(root, "f"), "x"));
    await layer(h, "c2", "c", async (root) => writeFile(path.join(root, "g"), "y"));
    for (const parent of ["c", "c2"]) {
      const err = await inView(h, parent, (root) => writeFile(path.join(root, "new"), "z").then(() => undefined, (e: NodeJS.ErrnoException) => e.code));
      t.equal(err, "EROFS", `writing into a view of ${parent} fails with EROFS`);
    }
  },

  async RootPermission(t, h) {
    const mounts = await h.sn.prepare("p", "");
    const mp = path.join(h.work, "p");
    await mkdir(mp);
    const mode = await withMounts(mounts, mp, async () => (await stat(mp)).mode & 0o777);
    t.equal(mode.toString(8), "755", "a new layer's root is 0755");
    await h.sn.commit("c", "p");
    const m2 = await h.sn.prepare("p2", "c");
    const mp2 = path.join(h.work, "p2");
    await mkdir(mp2);
    await withMounts(m2, mp2, async () => {
      await chmod(mp2, 0o700);
      await chown(mp2, 1000, 1000);
    });
    await h.sn.commit("c2", "p2");
    const m3 = await h.sn.prepare("p3", "c2");
    const mp3 = path.join(h.work, "p3");
    await mkdir(mp3);
    const st = await withMounts(m3, mp3, async () => stat(mp3));
    // Like containerd's overlayfs: the owner of the parent's root carries
    // over, the mode does not (an image layer's "./" entry sets it on apply).
    t.same([(st.mode & 0o777).toString(8), st.uid, st.gid], ["755", 1000, 1000], "root owner inherited from the parent");
  },

  async CloseTwice(t, h) {
    await h.sn.prepare("x-a", "");
    await h.sn.commit("x", "x-a");
    await h.sn.remove("x");
    await t.resolves(h.sn.close(), "the first close succeeds");
    await t.resolves(h.sn.close(), "the second close succeeds too");
    await t.rejects(h.sn.stat("x"), "a closed snapshotter serves no more calls");
  },

  async "128LayersMount"(t, h) {
    let parent = "";
    for (let i = 0; i < 128; i++) {
      const name = `layer-${i}`;
      const key = `${name}-active`;
      const mounts = await h.sn.prepare(key, parent);
      const mp = path.join(h.work, "m");
      await mkdir(mp, { recursive: true });
      await mountAll(mounts, mp);
      try {
        await writeFile(path.join(mp, `f${i}`), String(i));
        if (i > 0) await rm(path.join(mp, `f${i - 1}`));
        await writeFile(path.join(mp, "top"), String(i));
      } finally {
        await unmount(mp);
      }
      await h.sn.commit(name, key);
      parent = name;
    }
    const seen = await inView(h, parent, async (root) => [(await readdir(root)).sort(), await readFile(path.join(root, "top"), "utf8")]);
    t.same(seen, [["f127", "top"], "127"], "128 layers mount and show the top layer's view");
    const mounts = await h.sn.prepare("over-128", parent);
    const lower = mounts[0]!.options.find((o) => o.startsWith("lowerdir="))!;
    t.equal(lower.split(":").length, 128, "active snapshot on 128 layers has 128 lowerdirs");
  },

  // containerd's garbage collector calls Cleanup whenever it likes, also
  // while other clients Prepare: a snapshot created during a Cleanup must
  // keep its directory. In process, Cleanup starting first and Prepare in
  // the same tick hits the window between Cleanup's two reads every time.
  async CleanupDuringPrepare(t, h) {
    for (let i = 0; i < 20; i++) {
      const [, mounts] = await Promise.all([h.sn.cleanup(), h.sn.prepare(`race-${i}-active`, i === 0 ? "" : `race-${i - 1}`)]);
      t.ok(mounts.length > 0, `race-${i}: prepared during a cleanup`);
      await h.sn.commit(`race-${i}`, `race-${i}-active`);
    }
    const seen = await inView(h, "race-19", async (root) => (await readdir(root)).length);
    t.equal(seen, 0, "a view over the 20 layers prepared during cleanups mounts");
    await h.sn.cleanup();
    t.equal((await h.sn.stat("race-19")).kind, "committed", "and a later cleanup keeps them");
  },
};

/** Runs every case (or the named ones) against fresh snapshotters from factory. */
export function runSuite(t: Test, factory: Factory, only?: string[]): void {
  for (const [name, fn] of Object.entries(CASES)) {
    if (only && !only.includes(name)) continue;
    t.test(name, async (t) => {
      const tmp = tempDir();
      const { sn, close } = await factory(tmp.path);
      const work = path.join(tmp.path, "work");
      await mkdir(work);
      try {
        await fn(t, { sn, work });
      } finally {
        // The daemon's exit code is part of the verdict: close() throws on
        // a non-zero exit, and that must fail the case.
        const closing = await close().then(() => undefined, (e: unknown) => e);
        tmp.cleanup();
        t.error(closing, "closes cleanly");
      }
    });
  }
}
