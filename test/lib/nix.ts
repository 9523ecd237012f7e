/**
 * Real Nix for tests: builds small derivations from expressions (no nixpkgs:
 * builtins.derivation and /bin/sh) and asks the store about paths.
 */
import Database from "better-sqlite3";
import { execFile } from "node:child_process";
import { appendFileSync, readFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { REPO } from "../../devenv/daemon.js";

const run = promisify(execFile);

/** nix-build -E EXPR --no-out-link; returns the output paths. */
export async function nixBuild(expr: string): Promise<string[]> {
  return nixBuildArgs(["-E", expr]);
}

/**
 * nix-build ARGS; returns the output paths. With outLink, the result is
 * rooted there (else --no-out-link); with log, Nix's stderr is appended to it.
 */
export async function nixBuildArgs(args: string[], opts: { outLink?: string; log?: string; timeoutMs?: number } = {}): Promise<string[]> {
  const link = opts.outLink ? ["--out-link", opts.outLink] : ["--no-out-link"];
  try {
    const { stdout, stderr } = await run("nix-build", [...args, ...link], { maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 600_000 });
    if (opts.log) appendFileSync(opts.log, stderr);
    return stdout.split("\n").filter((l) => l !== "");
  } catch (err) {
    throw new Error(`nix-build ${args.join(" ").slice(0, 300)} failed: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().slice(-2000)}`);
  }
}

/** The store-paths file of a closureInfo output, as a sorted list. */
export function closureList(closureInfo: string): string[] {
  return readFileSync(path.join(closureInfo, "store-paths"), "utf8").split("\n").filter((l) => l !== "").sort();
}

/** `ls -1A /nix/store` output as absolute store paths, sorted. */
export function storeListing(out: string): string[] {
  return out.split("\n").filter((l) => l !== "").map((b) => `/nix/store/${b}`).sort();
}

/** The closureInfo function (rootPaths, storePaths) of the fixtures. */
export const CLOSURE_INFO_NIX = path.join(REPO, "test/fixtures/nix/closure-info.nix");

/** A closureInfo (test/fixtures/nix/closure-info.nix) over existing store paths. */
export async function closureInfoOf(storePaths: string[]): Promise<string> {
  const [info] = await nixBuild(`import ${CLOSURE_INFO_NIX} { storePaths = [ ${storePaths.map((p) => JSON.stringify(p)).join(" ")} ]; }`);
  return info!;
}

/** A Nix expression prelude defining `mk name script` and `nonce`. */
export function prelude(nonce: string): string {
  return `let
    nonce = "${nonce}";
    mk = name: script: builtins.derivation {
      inherit name;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" script ];
      NONCE = nonce;
      PATH = "/usr/bin:/bin";
    };
  in`;
}

export async function closureOf(p: string): Promise<string[]> {
  const { stdout } = await run("nix-store", ["-qR", p]);
  return stdout.split("\n").filter((l) => l !== "").sort();
}

export async function isValid(p: string): Promise<boolean> {
  try {
    await run("nix-store", ["--check-validity", p]);
    return true;
  } catch {
    return false;
  }
}

/**
 * The GC roots that keep a path alive, directly or through a path that
 * refers to it (nix-store --query --roots); much cheaper than asking for
 * every dead path of a large store.
 */
export async function rootsOf(p: string): Promise<string[]> {
  const { stdout } = await run("nix-store", ["--query", "--roots", p], { maxBuffer: 16 * 1024 * 1024 });
  return stdout
    .split("\n")
    .filter((l) => l.includes(" -> "))
    .map((l) => l.split(" -> ")[0]!)
    .sort();
}

/** Paths of the list that no root below dir keeps alive. */
export async function unrootedBelow(paths: string[], dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    if (!(await rootsOf(p)).some((r) => r.startsWith(dir + "/"))) out.push(p);
  }
  return out;
}

/** Deletes paths if nothing keeps them alive; resolves false when Nix refuses. */
export async function tryDelete(paths: string[]): Promise<boolean> {
  try {
    await run("nix-store", ["--delete", ...paths]);
    return true;
  } catch {
    return false;
  }
}

export function nonce(): string {
  return `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/**
 * A nix layer's store paths as the daemon recorded them (table nix_layers
 * of its metadata database, read-only: fine while the daemon runs), or
 * undefined when the snapshot id is no nix layer or not ready.
 */
export function layerStorePaths(snapshotterRoot: string, id: string): string[] | undefined {
  const db = new Database(path.join(snapshotterRoot, "metadata.db"), { readonly: true });
  try {
    const row = db.prepare("SELECT state, paths FROM nix_layers WHERE id = ?").get(Number(id)) as { state: number; paths: string } | undefined;
    return row && row.state === 2 ? row.paths.split("\n").filter(Boolean).sort() : undefined;
  } finally {
    db.close();
  }
}
