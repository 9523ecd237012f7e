/**
 * Disk usage of a directory tree as containerd's continuity fs.DiskUsage
 * counts it: allocated blocks (st_blocks * 512) and inodes, each hard-linked
 * inode once.
 */
import { lstat, readdir } from "node:fs/promises";
import path from "node:path";
import type { Usage } from "./snapshotter.js";

export async function diskUsage(root: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  const visit = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      inodes++;
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      // Depth-first, one directory at a time: bounded work in flight however
      // large the tree.
      for (const name of await readdir(p)) await visit(path.join(p, name));
    }
  };
  await visit(root);
  return { size, inodes };
}
