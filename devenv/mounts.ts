/**
 * Mounts left below a directory, and lazily unmounting them: the
 * environment's and the tests' state directories are removed only once
 * nothing is mounted below them.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Mount points at or below `dir`, deepest first. */
function mountsBelow(dir: string): string[] {
  const lines = readFileSync("/proc/self/mountinfo", "utf8").split("\n");
  const out: string[] = [];
  for (const l of lines) {
    const mp = l.split(" ")[4];
    if (mp && (mp === dir || mp.startsWith(dir + "/"))) out.push(mp.replace(/\\040/g, " "));
  }
  // Deepest first.
  return out.sort((a, b) => b.length - a.length);
}

export function unmountBelow(dir: string): void {
  for (const mp of mountsBelow(dir)) {
    try {
      execFileSync("umount", ["-l", mp], { stdio: "ignore" });
    } catch {
      /* already gone */
    }
  }
}
