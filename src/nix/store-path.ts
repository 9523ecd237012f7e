/**
 * Store paths arrive as label values written by image authors on the
 * internet. They are parsed here, once, into a StorePath; nothing past this
 * boundary sees a raw string, so nothing unchecked reaches nix-store or a
 * mount.
 *
 * A store path is exactly `<storeDir>/<hash>-<name>` where hash is 32
 * characters of Nix's base32 alphabet (no e, o, u, t) and name uses the
 * characters Nix allows (libstore/path.cc: checkName), at most 211 long, not
 * starting with a dot.
 */
import { lstatSync, realpathSync } from "node:fs";
import { realpath } from "node:fs/promises";
import path from "node:path";
import { InvalidArgumentError } from "../errors.js";

declare const storePathBrand: unique symbol;
/** An absolute, validated store path such as /nix/store/<hash>-hello-2.12. */
export type StorePath = string & { readonly [storePathBrand]: true };

export const DEFAULT_STORE_DIR = "/nix/store";

const HASH_RE = /^[0-9abcdfghijklmnpqrsvwxyz]{32}$/;
const NAME_RE = /^[A-Za-z0-9+\-._?=]+$/;
const MAX_NAME = 211;

function describe(value: string): string {
  const shown = value.length > 120 ? value.slice(0, 120) + "..." : value;
  return JSON.stringify(shown);
}

/** Parses `<hash>-<name>` (a store path's basename); returns the error or undefined. */
function checkBaseName(base: string): string | undefined {
  const dash = base.indexOf("-");
  if (dash !== 32) return "expected <32-character hash>-<name>";
  if (!HASH_RE.test(base.slice(0, 32))) return "hash is not 32 characters of Nix base32";
  const name = base.slice(33);
  if (name.length === 0) return "name is empty";
  if (name.length > MAX_NAME) return `name is longer than ${MAX_NAME} characters`;
  if (name.startsWith(".")) return "name starts with a dot";
  if (!NAME_RE.test(name)) return "name has characters Nix does not allow";
  return undefined;
}

/** Parses an absolute store path. Throws InvalidArgumentError naming the value. */
export function parseStorePath(value: string, storeDir = DEFAULT_STORE_DIR): StorePath {
  const prefix = storeDir + "/";
  if (!value.startsWith(prefix)) throw new InvalidArgumentError(`invalid store path ${describe(value)}: not in ${storeDir}`);
  const base = value.slice(prefix.length);
  if (base.includes("/")) throw new InvalidArgumentError(`invalid store path ${describe(value)}: must be a top-level store path, not a path inside one`);
  const why = checkBaseName(base);
  if (why) throw new InvalidArgumentError(`invalid store path ${describe(value)}: ${why}`);
  return value as StorePath;
}

/** Parses a basename-only value (`<hash>-<name>`, the oldest label form). */
export function parseStorePathBaseName(value: string, storeDir = DEFAULT_STORE_DIR): StorePath {
  if (value.includes("/")) throw new InvalidArgumentError(`invalid store path name ${describe(value)}: must not contain "/"`);
  const why = checkBaseName(value);
  if (why) throw new InvalidArgumentError(`invalid store path name ${describe(value)}: ${why}`);
  return `${storeDir}/${value}` as StorePath;
}

/** A file inside a store path, such as closureInfo's <out>/store-paths. */
export interface StoreFile {
  storePath: StorePath;
  /** The absolute path of the file (equal to storePath when it is the path itself). */
  file: string;
}

/** Parses a store path or a path inside one; the part inside must not climb out. */
export function parseStoreFile(value: string, storeDir = DEFAULT_STORE_DIR): StoreFile {
  const prefix = storeDir + "/";
  if (!value.startsWith(prefix)) throw new InvalidArgumentError(`invalid store path ${describe(value)}: not in ${storeDir}`);
  const rest = value.slice(prefix.length);
  const slash = rest.indexOf("/");
  const storePath = parseStorePath(slash < 0 ? value : prefix + rest.slice(0, slash), storeDir);
  if (slash < 0) return { storePath, file: storePath };
  const sub = rest.slice(slash + 1).split("/");
  if (sub.some((c) => c === "" || c === "." || c === ".." || c.includes("\0"))) {
    throw new InvalidArgumentError(`invalid path ${describe(value)}: the part inside the store path must be a plain relative path`);
  }
  return { storePath, file: path.join(storePath, ...sub) };
}

/** Resolves a store file's symlinks and refuses one that leaves its store path. */
export async function checkFileWithin(f: StoreFile): Promise<string> {
  const real = await realpath(f.file);
  const base = await realpath(f.storePath);
  if (real !== base && !real.startsWith(base + path.sep)) {
    throw new InvalidArgumentError(`${f.file} leads out of ${f.storePath} (to ${real})`);
  }
  return real;
}

/**
 * Whether a store path is in the store now. One that is a symlink is
 * bind-mounted through its target: refuse it when the target leaves the
 * store (`ln -s /etc $out` would otherwise put the host's /etc into the
 * container) or is missing. Synchronous on purpose: a closure of 1,000
 * paths is looked at in a few milliseconds this way, where one promise per
 * path through libuv's thread pool took tens.
 */
export function isPresentInStore(p: StorePath, storeDir = DEFAULT_STORE_DIR): boolean {
  const st = lstatSync(p, { throwIfNoEntry: false });
  if (st === undefined) return false;
  if (!st.isSymbolicLink()) return true;
  let real: string;
  try {
    real = realpathSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new InvalidArgumentError(`store path ${p} is a symlink that leads nowhere`);
    throw err;
  }
  const realStore = realpathSync(storeDir);
  if (real !== realStore && !real.startsWith(realStore + path.sep)) {
    throw new InvalidArgumentError(`store path ${p} is a symlink that leads out of ${storeDir} (to ${real})`);
  }
  return true;
}
