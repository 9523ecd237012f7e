/**
 * Making store paths present and keeping them alive. One nix-store
 * invocation realises every path of a layer (substituting what is missing
 * from the configured substituters) and adds a GC root for each under the
 * given directory: far cheaper than one process per path. Nix registers
 * each root link as an indirect root (gcroots/auto), so deleting the
 * directory is all it takes to let `nix-store --gc` collect the paths.
 *
 * With an external builder configured, the builder is called instead, as
 * `<builder> <outLink> <storePath>`, once per path; it must leave a symlink
 * at outLink pointing at the realised storePath (and may root it however it
 * likes, e.g. `nix build --out-link outLink storePath`).
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { FailedPreconditionError } from "../errors.js";
import type { StorePath } from "./store-path.js";

export interface Realiser {
  /** Realises paths and roots them under rootDir (an existing, empty directory). */
  realise(paths: readonly StorePath[], rootDir: string): Promise<void>;
}

interface Result {
  code: number | null;
  stderr: string;
}

function runProcess(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"], env: env ?? process.env });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-16_384);
    });
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stderr }));
  });
}

/** The last meaningful lines of a tool's stderr, on one line. */
export function summariseStderr(stderr: string): string {
  const lines = stderr
    .replace(/\x1b\[[0-9;]*m/g, "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("warning: "));
  return lines.slice(-3).join("; ") || "(no output)";
}

export class NixStoreRealiser implements Realiser {
  constructor(private readonly nixStore = "nix-store") {}

  async realise(paths: readonly StorePath[], rootDir: string): Promise<void> {
    if (paths.length === 0) return;
    const args = ["--realise", "--add-root", path.join(rootDir, "root"), ...paths];
    let res: Result;
    try {
      res = await runProcess(this.nixStore, args);
    } catch (err) {
      throw new FailedPreconditionError(`cannot run ${this.nixStore}: ${(err as Error).message} (is Nix installed and on PATH?)`);
    }
    if (res.code !== 0) {
      const what = paths.length === 1 ? paths[0] : `${paths.length} store paths (${paths[0]}, ...)`;
      throw new FailedPreconditionError(`nix-store --realise of ${what} failed: ${summariseStderr(res.stderr)}`);
    }
  }
}

/** Calls `<builder> <outLink> <storePath>` per path, a few at a time. */
export class ExternalBuilderRealiser implements Realiser {
  constructor(
    private readonly builder: string,
    private readonly concurrency = 4,
  ) {}

  async realise(paths: readonly StorePath[], rootDir: string): Promise<void> {
    let next = 0;
    const work = async () => {
      while (next < paths.length) {
        const p = paths[next++]!;
        const outLink = path.join(rootDir, path.basename(p));
        let res: Result;
        try {
          res = await runProcess(this.builder, [outLink, p]);
        } catch (err) {
          throw new FailedPreconditionError(`cannot run external builder ${this.builder}: ${(err as Error).message}`);
        }
        if (res.code !== 0) {
          throw new FailedPreconditionError(`external builder ${this.builder} failed for ${p} (exit ${res.code}): ${summariseStderr(res.stderr)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, paths.length) }, work));
  }
}
