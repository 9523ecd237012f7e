/** Small helpers shared by the integration tests. */
import { readFileSync } from "node:fs";
import type { Info, Snapshotter } from "../../src/snapshotter/snapshotter.js";

/** The last lines of a log file (for diagnostics on failure), optionally without noise. */
export function tail(file: string, lines = 40, skip?: RegExp): string {
  try {
    const all = readFileSync(file, "utf8").trimEnd().split("\n");
    return (skip ? all.filter((l) => !skip.test(l)) : all).slice(-lines).join("\n");
  } catch (err) {
    return `(cannot read ${file}: ${(err as Error).message})`;
  }
}

/** Every snapshot (matching the filters), in List order. */
export async function listAll(sn: Snapshotter, filters?: string[]): Promise<Info[]> {
  const out: Info[] = [];
  await sn.walk((i) => {
    out.push(i);
  }, filters);
  return out;
}
