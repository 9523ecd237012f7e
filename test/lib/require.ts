/**
 * Preconditions for tests that need root, mounts or external programs. When
 * one is missing the test is skipped with the reason printed, never passed.
 */
import { execFileSync } from "node:child_process";
import type { Test } from "tap";

export function have(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Returns a reason to skip, or undefined when everything is there. */
export function missing(opts: { root?: boolean; commands?: string[] }): string | undefined {
  if (opts.root && process.getuid?.() !== 0) return "needs root (mounts)";
  for (const c of opts.commands ?? []) if (!have(c)) return `needs ${c} on PATH (run scripts/setup.sh)`;
  return undefined;
}

/** Skips the whole file with a printed reason when preconditions are not met. */
export function requireOrSkip(t: Test, opts: { root?: boolean; commands?: string[] }): boolean {
  const reason = missing(opts);
  if (reason) {
    console.log(`SKIP: ${t.name}: ${reason}`);
    t.plan(0, reason);
    return false;
  }
  return true;
}

/**
 * For a file whose tests are partly unconditional: the reason to skip the
 * others (printed once), or false. Pass it as a test's `skip` option; unlike
 * requireOrSkip it may be used after other tests were declared.
 */
export function skipReason(what: string, opts: { root?: boolean; commands?: string[] }): string | false {
  const reason = missing(opts);
  if (!reason) return false;
  console.log(`SKIP: ${what}: ${reason}`);
  return reason;
}
