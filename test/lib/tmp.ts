/**
 * Temporary directories for tests, removed at teardown after anything still
 * mounted below them is unmounted (a failed test must not leave mounts).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";

export function mountsBelow(dir: string): string[] {
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

export interface TempDir {
  path: string;
  cleanup(): void;
}

export function tempDir(prefix = "nix-snapshotter-test-", base = process.env["NIX_SNAPSHOTTER_TEST_TMP"] ?? os.tmpdir()): TempDir {
  const p = mkdtempSync(path.join(base, prefix));
  return {
    path: p,
    cleanup() {
      unmountBelow(p);
      rmSync(p, { recursive: true, force: true });
    },
  };
}
