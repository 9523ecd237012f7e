/**
 * The kernel's share of per-path bind mounts: bench/nix-start/mountcost.c,
 * compiled with gcc at run time, makes and unmakes the binds containerd's
 * mount code makes, in a private mount namespace on a tmpfs.
 */
import { execFile } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { REPO } from "../../devenv/daemon.js";

const exec = promisify(execFile);

export interface MountCost {
  n: number;
  /** µs, as printed by mountcost.c. */
  mount: number;
  rbind: number;
  unshare: number;
  unshare_exit: number;
  detach: number;
  umount: number;
  base_unshare: number;
  base_unshare_exit: number;
}

/** Compiles bench/nix-start/mountcost.c; undefined (and why) when there is no C compiler. */
export async function compileMountCost(dir: string): Promise<{ bin?: string; why?: string }> {
  const bin = path.join(dir, "mountcost");
  try {
    await exec("gcc", ["-O2", "-o", bin, path.join(REPO, "bench/nix-start/mountcost.c")]);
    return { bin };
  } catch (err) {
    return { why: `cannot compile bench/nix-start/mountcost.c: ${((err as { stderr?: string }).stderr || (err as Error).message).trim().slice(0, 300)}` };
  }
}

/** Runs mountcost over the store paths reps times (each in its own private mount namespace on a tmpfs). */
export async function measureMountCost(bin: string, paths: string[], dir: string, reps: number): Promise<MountCost[]> {
  const out: MountCost[] = [];
  const work = path.join(dir, `mountcost-${paths.length}`);
  mkdirSync(work, { recursive: true });
  for (let i = 0; i < reps; i++) {
    const res = await new Promise<string>((resolve, reject) => {
      const child = execFile(bin, [work], { timeout: 120_000 }, (err, stdout, stderr) => (err ? reject(new Error(`mountcost: ${stderr || err.message}`)) : resolve(stdout)));
      child.stdin!.end(paths.join("\n") + "\n");
    });
    out.push(JSON.parse(res) as MountCost);
  }
  return out;
}
