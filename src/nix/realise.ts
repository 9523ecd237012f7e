/**
 * Making store paths present and keeping them alive. One nix-store
 * invocation realises the paths of a layer (substituting what is missing
 * from the configured substituters) and adds GC roots for them under the
 * given directory: far cheaper than one process per path. Nix registers
 * each root link as an indirect root (gcroots/auto), so deleting the
 * directory is all it takes to let `nix-store --gc` collect the paths.
 *
 * Nix keeps a rooted path's whole closure alive, and a valid path's
 * references are always valid. So when every path of a set is already in
 * the store, rooting its tops (the paths no other path of the set refers
 * to; usually one) keeps all of it alive: one `nix-store --dump-db` call
 * reads the set's references, and the roots cost a handful of links
 * instead of one per path (Nix's per-root cost dominates a large layer).
 * Below ROOT_TOPS_FROM paths one root each costs less than that extra
 * process. When a path is missing (or Nix cannot say), every path is
 * realised and rooted, as the substitution needs.
 *
 * With an external builder configured, the builder is called instead, as
 * `<builder> <outLink> <storePath>`, once per path; it must leave a symlink
 * at outLink pointing at the realised storePath (and may root it however it
 * likes, e.g. `nix build --out-link outLink storePath`).
 *
 * Every child runs in its own process group: a caller that gives up (the
 * AbortSignal) stops the whole tree (SIGTERM, SIGKILL after a grace
 * period), and the call settles only once the child has exited, so nothing
 * it does can land after the caller undid its work.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { CancelledError, FailedPreconditionError, UnavailableError } from "../errors.js";
import type { StorePath } from "./store-path.js";

export interface Realiser {
  /**
   * Realises paths and keeps every one alive with roots under rootDir
   * (an existing, empty directory): a root per path, or per path whose
   * closure holds others. When signal aborts, the work is stopped and the promise
   * rejects with CancelledError once no child process is left.
   */
  realise(paths: readonly StorePath[], rootDir: string, signal?: AbortSignal): Promise<void>;
  /**
   * As realise() of one path, and also answers its closure (every path
   * its root keeps alive; undefined when that cannot be read), in one
   * step. Realisers that cannot do both at once leave it out: callers then
   * realise and query apart (queryRequisites).
   */
  realiseClosure?(p: StorePath, rootDir: string, signal?: AbortSignal): Promise<Set<string> | undefined>;
}

interface Result {
  code: number | null;
  stderr: string;
  /** With captureStdout: everything the child wrote there (undefined past maxStdout bytes). */
  stdout?: string;
}

/** SIGTERM lets nix-store release its locks; a child that ignores it gets SIGKILL after this. */
const KILL_GRACE_MS = 5_000;

export function runProcess(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; signal?: AbortSignal; captureStdout?: boolean; maxStdout?: number } = {},
): Promise<Result> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) return reject(new CancelledError(`${cmd}: cancelled before it started`));
    const child = spawn(cmd, args, { stdio: ["ignore", opts.captureStdout ? "pipe" : "ignore", "pipe"], env: opts.env ?? process.env, detached: true });
    let stderr = "";
    const chunks: Buffer[] = [];
    let stdoutBytes = 0;
    const maxStdout = opts.maxStdout ?? 64 * 1024 * 1024;
    child.stdout?.on("data", (d: Buffer) => {
      stdoutBytes += d.length;
      if (stdoutBytes <= maxStdout) chunks.push(d);
    });
    let killTimer: NodeJS.Timeout | undefined;
    const kill = (sig: NodeJS.Signals) => {
      try {
        process.kill(-child.pid!, sig); // the whole group: a builder's own children too
      } catch {
        /* already gone */
      }
    };
    const onAbort = () => {
      kill("SIGTERM");
      killTimer = setTimeout(() => kill("SIGKILL"), KILL_GRACE_MS);
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.stderr!.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-16_384);
    });
    child.once("error", (err) => {
      opts.signal?.removeEventListener("abort", onAbort);
      reject(err);
    });
    child.once("close", (code) => {
      opts.signal?.removeEventListener("abort", onAbort);
      clearTimeout(killTimer);
      // A group member that outlived the leader (a builder's background
      // job) must not outlive the call either.
      if (opts.signal?.aborted) {
        kill("SIGKILL");
        reject(new CancelledError(`${cmd} stopped: the caller gave up`));
      } else {
        const stdout = opts.captureStdout && stdoutBytes <= maxStdout ? Buffer.concat(chunks).toString("utf8") : undefined;
        resolve({ code, stderr, ...(stdout !== undefined ? { stdout } : {}) });
      }
    });
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

/**
 * From this many paths on, only a set's tops are rooted: one root costs
 * Nix about a fifth of a millisecond, the process that finds the tops
 * about 50 ms, so below this a root per path is cheaper.
 */
export const ROOT_TOPS_FROM = 256;

/** Nix's words when it cannot reach the Nix daemon (NIX_REMOTE=daemon). */
const DAEMON_DOWN = /cannot connect to (?:socket|daemon)|daemon-socket\/socket.*(?:Connection refused|No such file)/i;

/** The error for a failed nix-store realisation of paths, from its stderr. */
function realiseFailed(paths: readonly StorePath[], stderr: string): Error {
  const what = paths.length === 1 ? paths[0] : `${paths.length} store paths (${paths[0]}, ...)`;
  const why = summariseStderr(stderr);
  if (DAEMON_DOWN.test(stderr)) {
    return new UnavailableError(`nix-store --realise of ${what}: the Nix daemon is not reachable (${why}); start nix-daemon`);
  }
  return new FailedPreconditionError(`nix-store --realise of ${what} failed: ${why}`);
}

export class NixStoreRealiser implements Realiser {
  constructor(
    private readonly nixStore = "nix-store",
    private readonly env?: NodeJS.ProcessEnv,
  ) {}

  async realise(paths: readonly StorePath[], rootDir: string, signal?: AbortSignal): Promise<void> {
    if (paths.length === 0) return;
    const rooted = paths.length >= ROOT_TOPS_FROM ? ((await this.topsIfValid(paths, signal)) ?? paths) : paths;
    const args = ["--realise", "--add-root", path.join(rootDir, "root"), ...rooted];
    const res = await this.run(args, signal);
    if (res.code !== 0) throw realiseFailed(paths, res.stderr);
  }

  /**
   * One nix-store process where realise() and queryRequisites() took two:
   * `--query --requisites --force-realise --add-root` realises the path,
   * roots it as realise() does, then prints its closure. The Prepare of a
   * layer with a nix-closure label pays one process start, not two.
   */
  async realiseClosure(p: StorePath, rootDir: string, signal?: AbortSignal): Promise<Set<string> | undefined> {
    const args = ["--query", "--requisites", "--force-realise", "--add-root", path.join(rootDir, "root"), p];
    const res = await this.run(args, signal, true);
    if (res.code !== 0) throw realiseFailed([p], res.stderr);
    if (res.stdout === undefined) return undefined;
    const closure = new Set(res.stdout.split("\n").filter((l) => l !== ""));
    return closure.has(p) ? closure : undefined;
  }

  /**
   * The tops of a set of store paths when every one is valid: the paths no
   * other path of the set refers to, whose closures hold the whole set.
   * Undefined when a path is not valid or Nix's answer cannot be read.
   */
  async topsIfValid(paths: readonly StorePath[], signal?: AbortSignal): Promise<StorePath[] | undefined> {
    const res = await this.run(["--dump-db", ...paths], signal, true);
    if (res.code !== 0 || res.stdout === undefined) return undefined;
    const refs = parseDumpDb(res.stdout);
    if (!refs) return undefined;
    const referenced = new Set<string>();
    for (const p of paths) {
      const r = refs.get(p);
      if (!r) return undefined;
      for (const q of r) if (q !== p) referenced.add(q);
    }
    const tops = paths.filter((p) => !referenced.has(p));
    return tops.length > 0 ? tops : undefined;
  }

  private async run(args: string[], signal: AbortSignal | undefined, captureStdout = false): Promise<Result> {
    try {
      return await runProcess(this.nixStore, args, { env: this.env, signal, captureStdout });
    } catch (err) {
      if (err instanceof CancelledError) throw err;
      throw new FailedPreconditionError(`cannot run ${this.nixStore}: ${(err as Error).message} (is Nix installed and on PATH?)`);
    }
  }
}

/**
 * Each path's references from `nix-store --dump-db` output (Nix's
 * registration format: per path its name, hash, size, deriver, the number
 * of references and one line each). Undefined when the text is not that.
 */
export function parseDumpDb(text: string): Map<string, string[]> | undefined {
  const lines = text.split("\n");
  const out = new Map<string, string[]>();
  let i = 0;
  while (i < lines.length) {
    const p = lines[i]!;
    if (p === "" && i === lines.length - 1) break;
    if (!p.startsWith("/") || i + 4 >= lines.length) return undefined;
    const n = Number(lines[i + 4]);
    if (!Number.isInteger(n) || n < 0 || i + 5 + n > lines.length) return undefined;
    out.set(p, lines.slice(i + 5, i + 5 + n));
    i += 5 + n;
  }
  return out;
}

/**
 * Calls `<builder> <outLink> <storePath>` per path, a few at a time. The
 * first failure stops the others (their process groups are killed) and the
 * call settles once every builder has exited.
 */
export class ExternalBuilderRealiser implements Realiser {
  constructor(
    private readonly builder: string,
    private readonly concurrency = 4,
  ) {}

  async realise(paths: readonly StorePath[], rootDir: string, signal?: AbortSignal): Promise<void> {
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) stop.abort();
    let next = 0;
    let failure: unknown;
    const work = async () => {
      while (next < paths.length && !stop.signal.aborted) {
        const p = paths[next++]!;
        const outLink = path.join(rootDir, path.basename(p));
        let res: Result;
        try {
          res = await runProcess(this.builder, [outLink, p], { signal: stop.signal });
        } catch (err) {
          if (err instanceof CancelledError) return;
          throw new FailedPreconditionError(`cannot run external builder ${this.builder}: ${(err as Error).message}`);
        }
        if (res.code !== 0) {
          throw new FailedPreconditionError(`external builder ${this.builder} failed for ${p} (exit ${res.code}): ${summariseStderr(res.stderr)}`);
        }
      }
    };
    const workers = Array.from({ length: Math.min(this.concurrency, paths.length) }, () =>
      work().catch((err: unknown) => {
        failure ??= err;
        stop.abort();
      }),
    );
    try {
      await Promise.all(workers);
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    if (failure !== undefined) throw failure;
    if (signal?.aborted) throw new CancelledError(`external builder ${this.builder} stopped: the caller gave up`);
  }
}

/** The closure of a store path (nix-store --query --requisites), or undefined when Nix cannot say. */
export async function queryRequisites(p: StorePath, signal?: AbortSignal, nixStore = "nix-store"): Promise<Set<string> | undefined> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new CancelledError("cancelled"));
    const child = spawn(nixStore, ["--query", "--requisites", p], { stdio: ["ignore", "pipe", "ignore"], detached: true });
    const chunks: Buffer[] = [];
    const onAbort = () => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        /* gone */
      }
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (d: Buffer) => chunks.push(d));
    child.once("error", () => resolve(undefined));
    child.once("close", (code) => {
      signal?.removeEventListener("abort", onAbort);
      if (signal?.aborted) return reject(new CancelledError("nix-store --query stopped: the caller gave up"));
      if (code !== 0) return resolve(undefined);
      resolve(new Set(Buffer.concat(chunks).toString().split("\n").filter((l) => l !== "")));
    });
  });
}
