/**
 * A nix image: an ordinary OCI image whose one nix layer carries no package
 * bytes, only
 *   - an empty mountpoint per store path (a directory, or an empty file for
 *     a store path that is a file), where the snapshotter's bind mounts land;
 *   - the copyToRoot symlinks (e.g. /bin/hello -> /nix/store/...-hello/bin/hello),
 *     dangling until the store paths are mounted;
 * and annotations naming the store paths, which containerd hands to the
 * snapshotter as labels when it unpacks the layer.
 */
import { lstat, readdir, stat } from "node:fs/promises";
import path from "node:path";
import { InvalidArgumentError } from "../errors.js";
import { NIX_CLOSURE_LABEL, NIX_LAYER_LABEL, NIX_STORE_PATH_LABEL_PREFIX } from "../nix/labels.js";
import type { StorePath } from "../nix/store-path.js";
import type { LayerEntry } from "./layer.js";
import type { ContainerConfig } from "./oci.js";

/** Mountpoints for every store path: a directory, or an empty file. */
export async function mountpointEntries(storePaths: readonly StorePath[]): Promise<LayerEntry[]> {
  const out: LayerEntry[] = [];
  for (const p of storePaths) {
    let st;
    try {
      st = await stat(p); // follows a symlinked store path to what a bind mount would see
    } catch {
      throw new InvalidArgumentError(`store path ${p} is in the closure but not in the store (build or realise it first)`);
    }
    const rel = p.slice(1);
    out.push(st.isDirectory() ? { type: "dir", path: rel, mode: 0o555 } : { type: "file", path: rel, content: "", mode: 0o444 });
  }
  return out;
}

/**
 * The copyToRoot tree: every directory of each root path is recreated,
 * every file or symlink becomes a symlink to its store location. Two roots
 * providing the same file is an error naming both (as buildEnv would).
 */
export async function copyToRootEntries(roots: readonly StorePath[]): Promise<LayerEntry[]> {
  const entries = new Map<string, { entry: LayerEntry; from: StorePath }>();
  const visit = async (root: StorePath, rel: string): Promise<void> => {
    const abs = rel === "" ? root : path.join(root, rel);
    const st = await lstat(abs);
    if (st.isDirectory()) {
      if (rel !== "") {
        const prev = entries.get(rel);
        if (prev && prev.entry.type !== "dir") {
          throw new InvalidArgumentError(`copyToRoot: /${rel} is a directory in ${root} but not in ${prev.from}`);
        }
        if (!prev) entries.set(rel, { entry: { type: "dir", path: rel, mode: 0o755 }, from: root });
      }
      for (const name of (await readdir(abs)).sort()) await visit(root, rel === "" ? name : path.join(rel, name));
      return;
    }
    if (rel === "") {
      throw new InvalidArgumentError(`copyToRoot: ${root} is not a directory`);
    }
    const prev = entries.get(rel);
    if (prev) throw new InvalidArgumentError(`copyToRoot: /${rel} is provided by both ${prev.from} and ${root}`);
    entries.set(rel, { entry: { type: "symlink", path: rel, target: abs }, from: root });
  };
  for (const r of roots) await visit(r, "");
  return [...entries.values()].map((e) => e.entry);
}

/** Layer annotations: the marker, one per store path, and the closure file when it is in the store. */
export function nixLayerAnnotations(storePaths: readonly StorePath[], closureFile?: string): Record<string, string> {
  const a: Record<string, string> = { [NIX_LAYER_LABEL]: "true" };
  storePaths.forEach((p, i) => (a[`${NIX_STORE_PATH_LABEL_PREFIX}${i}`] = p));
  if (closureFile) a[NIX_CLOSURE_LABEL] = closureFile;
  return a;
}

const CONFIG_KEYS = [
  "User",
  "ExposedPorts",
  "Env",
  "Entrypoint",
  "Cmd",
  "Volumes",
  "WorkingDir",
  "Labels",
  "StopSignal",
  "ArgsEscaped",
  // Docker's extensions, kept when present.
  "Healthcheck",
  "OnBuild",
  "Shell",
] as const;

/**
 * Reads an image config (the OCI "config" object). Keys match
 * case-insensitively, as Go's JSON decoding does in other nix2container
 * tools, so `{"entrypoint": [...]}` and `{"Entrypoint": [...]}` both work;
 * unknown keys are refused, naming the key.
 */
export function parseImageConfig(json: unknown, source: string): ContainerConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new InvalidArgumentError(`${source}: image config must be a JSON object`);
  }
  const byLower = new Map<string, string>(CONFIG_KEYS.map((k) => [k.toLowerCase(), k]));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(json)) {
    const key = byLower.get(k.toLowerCase());
    if (!key) throw new InvalidArgumentError(`${source}: unknown image config key "${k}" (known: ${CONFIG_KEYS.join(", ")})`);
    if (v === null) continue;
    checkType(key, v, source);
    out[key] = v;
  }
  return out as ContainerConfig;
}

function checkType(key: string, v: unknown, source: string): void {
  const fail = (want: string) => {
    throw new InvalidArgumentError(`${source}: image config key "${key}" must be ${want}`);
  };
  const strings = (x: unknown) => Array.isArray(x) && x.every((e) => typeof e === "string");
  switch (key) {
    case "Env":
    case "Entrypoint":
    case "Cmd":
    case "OnBuild":
    case "Shell":
      if (!strings(v)) fail("a list of strings");
      break;
    case "User":
    case "WorkingDir":
    case "StopSignal":
      if (typeof v !== "string") fail("a string");
      break;
    case "ArgsEscaped":
      if (typeof v !== "boolean") fail("a boolean");
      break;
    case "Labels":
      if (typeof v !== "object" || Array.isArray(v) || !Object.values(v as object).every((e) => typeof e === "string")) fail("an object of strings");
      break;
    case "ExposedPorts":
    case "Volumes":
    case "Healthcheck":
      if (typeof v !== "object" || Array.isArray(v)) fail("an object");
      break;
  }
}
