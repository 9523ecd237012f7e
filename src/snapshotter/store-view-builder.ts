/**
 * The store view builder, a program of its own so that the daemon's event
 * loop never waits on thousands of link calls:
 *
 *   node store-view-builder.js <dir>/.build-<id>-<random>  < store paths, one a line
 *
 * builds the tree, syncs its filesystem, renames it to <dir>/<id> and
 * prints one JSON line: {"ok":true} or {"ok":false,"code":errno,"message"}.
 * Kept free of the daemon's modules: it starts in a few tens of ms.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, closeSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, renameSync, symlinkSync, utimesSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Names of views being built start with this; never an id. */
export const BUILD_PREFIX = ".build-";

export interface BuildResult {
  ok: boolean;
  code?: string;
  message?: string;
}

/** Builds the tree at tmp (".build-<id>-<random>") from the store paths, syncs it, renames it to <id>. */
export function buildTree(tmp: string, paths: readonly string[]): void {
  const parentPid = process.ppid;
  const base = path.basename(tmp);
  if (!base.startsWith(BUILD_PREFIX) || base.lastIndexOf("-") <= BUILD_PREFIX.length) throw new Error(`${tmp}: not a build directory name`);
  const id = base.slice(BUILD_PREFIX.length, base.lastIndexOf("-"));
  mkdirSync(tmp, { mode: 0o700 });
  for (const p of paths) copyEntry(p, path.join(tmp, path.basename(p)));
  chmodSync(tmp, 0o555);
  // One syncfs for the whole tree, before the rename makes it a view.
  execFileSync("sync", ["-f", tmp]);
  // The daemon that started this build died: the next one owns the directory.
  if (process.ppid !== parentPid) throw Object.assign(new Error("the daemon exited during the build"), { code: "ESRCH" });
  renameSync(tmp, path.join(path.dirname(tmp), id));
  const fd = openSync(path.dirname(tmp), "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Directories recreated (mode and times of the store's), files hard-linked, symlinks recreated. */
function copyEntry(src: string, dst: string): void {
  const st = lstatSync(src);
  if (st.isDirectory()) {
    mkdirSync(dst, { mode: 0o700 });
    for (const name of readdirSync(src)) copyEntry(path.join(src, name), path.join(dst, name));
    chmodSync(dst, st.mode & 0o7777);
    utimesSync(dst, st.atime, st.mtime);
  } else if (st.isSymbolicLink()) {
    symlinkSync(readlinkSync(src), dst);
  } else {
    linkSync(src, dst);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  let res: BuildResult;
  try {
    const paths = readFileSync(0, "utf8").split("\n").filter(Boolean);
    buildTree(process.argv[2]!, paths);
    res = { ok: true };
  } catch (err) {
    res = { ok: false, ...((err as NodeJS.ErrnoException).code ? { code: (err as NodeJS.ErrnoException).code } : {}), message: (err as Error).message };
  }
  process.stdout.write(`${JSON.stringify(res)}\n`);
}
