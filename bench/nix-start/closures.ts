/**
 * The closures the benchmark starts containers from: 1 store path (a
 * statically linked hello) and many.nix with hello for larger sizes, each
 * listed by a closureInfo, built with nix-build and rooted for the run.
 */
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { REPO } from "../../devenv/daemon.js";
import { nixBuildArgs } from "../../test/lib/nix.js";
import { msBetween, now } from "../lib/stats.js";

const MANY_NIX = path.join(REPO, "test/fixtures/nix/many.nix");
const CLOSURE_INFO_NIX = path.join(REPO, "test/fixtures/nix/closure-info.nix");
const HELLO_STATIC_NIX = path.join(REPO, "bench/nix-start/hello-static.nix");
/** many.nix with withHello: n leaves + the top + hello, libc, loader. */
const MANY_EXTRA = 4;

export interface Case {
  /** Store paths in the closure (what the container sees under /nix/store). */
  size: number;
  /** What the closure is, for the report. */
  what: string;
  top: string;
  entry: string[];
  closureInfo: string;
  paths: string[];
  /** nix-build wall time (program + closure info), ms: cached after the first run. */
  buildMs: number;
  nix: Image;
  ordinary: Image;
}

export interface Image {
  archive: string;
  ref: string;
  bytes: number;
  /** Time to build the archive, ms. */
  buildMs: number;
  /** containerd's snapshot name of the single layer (its chain id = diff id). */
  chainId: string;
  annotations: Record<string, string>;
}

/** nix-build of one output, rooted at outLink for the run. */
async function nixBuild(args: string[], outLink: string, log: string): Promise<string> {
  const out = await nixBuildArgs([...args, "--max-jobs", "4", "-Q"], { outLink, log, timeoutMs: 900_000 });
  if (out.length !== 1) throw new Error(`nix-build ${args.join(" ")}: expected one output, got ${out.length}`);
  return out[0]!;
}

/**
 * The program and its closure info. Size 1 is a statically linked hello
 * (one store path, no references); larger sizes are many.nix with
 * withHello: size - 4 leaves, the top path (linking bin/hello), and the
 * dynamically linked hello with its libc and loader.
 */
export async function buildClosure(size: number, dir: string): Promise<Omit<Case, "nix" | "ordinary">> {
  const roots = path.join(dir, "gcroots");
  mkdirSync(roots, { recursive: true });
  const log = path.join(dir, "nix-build.log");
  const t0 = now();
  let top: string;
  let what: string;
  if (size === 1) {
    top = await nixBuild([HELLO_STATIC_NIX], path.join(roots, "hello-static"), log);
    what = "static hello alone";
  } else {
    if (size < MANY_EXTRA + 1) throw new Error(`closure size ${size}: many.nix with hello has at least ${MANY_EXTRA + 1} paths`);
    top = await nixBuild([MANY_NIX, "--arg", "n", String(size - MANY_EXTRA), "--arg", "withHello", "true"], path.join(roots, `many-${size}`), log);
    what = `${(size - MANY_EXTRA).toLocaleString("en-US")} leaves + top + hello, libc, loader`;
  }
  const closureInfo = await nixBuild([CLOSURE_INFO_NIX, "--arg", "storePaths", `[ ${JSON.stringify(top)} ]`], path.join(roots, `closure-${size}`), log);
  const buildMs = msBetween(t0, now());
  const paths = readFileSync(path.join(closureInfo, "store-paths"), "utf8").split("\n").filter(Boolean);
  if (paths.length !== size) throw new Error(`closure of ${top} has ${paths.length} store paths, expected ${size}`);
  return { size, what, top, entry: [`${top}/bin/hello`], closureInfo, paths, buildMs };
}
