/**
 * Temporary directories for tests, removed at teardown after anything still
 * mounted below them is unmounted (a failed test must not leave mounts).
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { unmountBelow } from "../../devenv/mounts.js";

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
