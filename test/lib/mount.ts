/**
 * Performs the mounts a snapshotter returns, the way containerd's mount
 * package does (core/mount/mount_linux.go), so tests can look inside:
 * bind mounts with "ro" are remounted read-only, and an overlay whose
 * options exceed the kernel's one-page limit is mounted from the lowerdirs'
 * common parent with relative paths (how containerd mounts 128 layers).
 */
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import type { Mount } from "../../src/snapshotter/snapshotter.js";

const run = promisify(execFile);

const PAGE = 4096;

function commonDir(paths: string[]): string {
  let prefix = path.dirname(paths[0]!);
  for (const p of paths) {
    while (!(p + "/").startsWith(prefix + "/")) prefix = path.dirname(prefix);
  }
  return prefix;
}

async function mountOne(m: Mount, target: string): Promise<void> {
  if (m.type === "bind") {
    const ro = m.options.includes("ro");
    const rec = m.options.includes("rbind");
    await run("mount", ["--" + (rec ? "rbind" : "bind"), m.source, target]);
    if (ro) await run("mount", ["-o", "remount,bind,ro", target]);
    return;
  }
  let options = m.options.join(",");
  let cwd: string | undefined;
  if (m.type === "overlay" && options.length >= PAGE - 512) {
    const lower = m.options.find((o) => o.startsWith("lowerdir="))!.slice("lowerdir=".length).split(":");
    cwd = commonDir(lower);
    const rel = lower.map((l) => path.relative(cwd!, l));
    options = m.options.map((o) => (o.startsWith("lowerdir=") ? `lowerdir=${rel.join(":")}` : o)).join(",");
  }
  await run("mount", ["-t", m.type, "-o", options, m.source, target], cwd ? { cwd } : {});
}

/** Mounts the rootfs mount (no target) at root, then targeted mounts inside it. */
export async function mountAll(mounts: Mount[], root: string): Promise<void> {
  for (const m of mounts) {
    const target = m.target ? path.join(root, m.target) : root;
    await mountOne(m, target);
  }
}

export async function unmount(target: string): Promise<void> {
  await run("umount", ["-R", target]);
}

/** Mounts, runs fn, and always unmounts. */
export async function withMounts<T>(mounts: Mount[], root: string, fn: () => Promise<T>): Promise<T> {
  await mountAll(mounts, root);
  try {
    return await fn();
  } finally {
    await unmount(root);
  }
}
