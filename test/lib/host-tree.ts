/**
 * Layer entries from a host directory, for tests and benchmarks that build
 * images from trees on disk.
 */
import { lstat, readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";
import type { LayerEntry } from "../../src/image/layer.js";

/**
 * Walks a host directory (lstat: symlinks are recorded, never followed) into
 * layer entries rooted at `dir`, keeping mode bits, uid/gid, symlink targets
 * and file contents. Files that share an inode become one file plus
 * hardlinks to the bytewise-first path, which is the order buildLayer writes.
 * Device nodes, fifos and sockets are rejected: LayerEntry cannot carry them.
 * Reads every file into memory; meant for small trees (tests, fixtures).
 */
export async function fileEntriesFromDir(dir: string): Promise<LayerEntry[]> {
  const found: { rel: string; abs: string }[] = [];
  async function walk(abs: string, rel: string): Promise<void> {
    const names = await readdir(abs);
    for (const n of names) {
      const childRel = rel ? `${rel}/${n}` : n;
      const childAbs = path.join(abs, n);
      found.push({ rel: childRel, abs: childAbs });
      const st = await lstat(childAbs);
      if (st.isDirectory()) await walk(childAbs, childRel);
    }
  }
  await walk(dir, "");
  found.sort((a, b) => Buffer.compare(Buffer.from(a.rel, "utf8"), Buffer.from(b.rel, "utf8")));

  const firstPathOfInode = new Map<string, string>();
  const entries: LayerEntry[] = [];
  for (const { rel, abs } of found) {
    const st = await lstat(abs);
    const mode = st.mode & 0o7777;
    if (st.isDirectory()) {
      entries.push({ type: "dir", path: rel, mode, uid: st.uid, gid: st.gid });
    } else if (st.isSymbolicLink()) {
      entries.push({ type: "symlink", path: rel, target: await readlink(abs) });
    } else if (st.isFile()) {
      if (st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        const first = firstPathOfInode.get(key);
        if (first !== undefined) {
          entries.push({ type: "hardlink", path: rel, target: first });
          continue;
        }
        firstPathOfInode.set(key, rel);
      }
      entries.push({ type: "file", path: rel, content: await readFile(abs), mode, uid: st.uid, gid: st.gid });
    } else {
      throw new Error(`unsupported file type at ${abs}: only directories, regular files and symlinks can go in a layer`);
    }
  }
  return entries;
}
