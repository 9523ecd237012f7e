/**
 * Which overlay filesystem containerd is told to mount, and with which
 * options, decided once at start.
 *
 *   overlayfs       the kernel's. Run as root: trusted.* xattrs, index=off.
 *                   Run rootless (inside a user namespace, e.g. rootlesskit):
 *                   the kernel (>= 5.11) keeps overlay metadata in user.*
 *                   xattrs when mounted with `userxattr`; whether this kernel
 *                   takes it is found out by mounting a probe overlay.
 *   fuse-overlayfs  the FUSE implementation, for kernels that refuse overlayfs
 *                   in a user namespace. containerd mounts type
 *                   "fuse3.fuse-overlayfs" through the mount.fuse3 helper
 *                   (packages fuse3 and fuse-overlayfs).
 *
 * We never mount container filesystems ourselves: containerd and its shims
 * do, from the mounts we return. The probe is the only mount made here.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { Logger } from "../log.js";
import { inUserNamespace } from "../userns.js";

const run = promisify(execFile);

export const OVERLAY_DRIVERS = ["overlayfs", "fuse-overlayfs"] as const;
export type OverlayDriver = (typeof OVERLAY_DRIVERS)[number];

/** What computeMounts needs: the mount type and the options every overlay mount carries. */
export interface OverlayStyle {
  type: string;
  options: string[];
}

/** Mounts a one-layer overlay with `userxattr` in a scratch directory; true if the kernel took it. */
export async function probeUserXattr(scratch: string): Promise<boolean> {
  const dirs = ["lower", "upper", "work", "merged"].map((d) => path.join(scratch, d));
  await rm(scratch, { recursive: true, force: true });
  for (const d of dirs) await mkdir(d, { recursive: true });
  const [lower, upper, work, merged] = dirs as [string, string, string, string];
  try {
    await run("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${lower},upperdir=${upper},workdir=${work},userxattr`, merged]);
  } catch {
    return false;
  } finally {
    await run("umount", [merged]).catch(() => undefined);
    await rm(scratch, { recursive: true, force: true }).catch(() => undefined);
  }
  return true;
}

/** The overlay style for a driver on this machine; `root` hosts the probe's scratch directory. */
export async function overlayStyle(driver: OverlayDriver, root: string, log: Logger): Promise<OverlayStyle> {
  if (driver === "fuse-overlayfs") return { type: "fuse3.fuse-overlayfs", options: [] };
  const options: string[] = [];
  // index=off as containerd: with the index feature on, overlayfs refuses
  // to mount a lower layer that was mounted before with another upper.
  if (existsSync("/sys/module/overlay/parameters/index")) options.push("index=off");
  if (inUserNamespace()) {
    // A daemon killed mid-probe leaves its scratch directory behind.
    for (const name of await readdir(root).catch(() => [] as string[])) {
      if (name.startsWith(".probe-")) await rm(path.join(root, name), { recursive: true, force: true }).catch(() => undefined);
    }
    if (await probeUserXattr(path.join(root, `.probe-${process.pid}`))) {
      options.push("userxattr");
      log.info("running in a user namespace: overlay mounts use userxattr");
    } else {
      log.warn("running in a user namespace and this kernel does not mount overlayfs with userxattr; set overlay.driver = \"fuse-overlayfs\" in the config");
    }
  }
  return { type: "overlay", options };
}
