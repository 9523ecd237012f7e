/**
 * Nix layer labels, as containerd hands a layer's annotations to the
 * snapshotter on Prepare during unpack (every annotation whose key starts
 * with containerd.io/snapshot/). Three generations of images exist; all are
 * read:
 *   containerd.io/snapshot/nix-layer: "true"              marks a nix layer
 *   containerd.io/snapshot/nix-closure: /nix/store/...    a file listing the closure
 *   containerd.io/snapshot/nix-store-path.<N>: /nix/store/<hash>-<name>
 *   containerd.io/snapshot/nix/store.<N>: <hash>-<name>   (the oldest images)
 */
import { InvalidArgumentError } from "../errors.js";
import { parseStoreFile, parseStorePath, parseStorePathBaseName, type StoreFile, type StorePath } from "./store-path.js";

export const NIX_LAYER_LABEL = "containerd.io/snapshot/nix-layer";
export const NIX_CLOSURE_LABEL = "containerd.io/snapshot/nix-closure";
export const NIX_STORE_PATH_LABEL_PREFIX = "containerd.io/snapshot/nix-store-path.";
export const NIX_STORE_BASENAME_LABEL_PREFIX = "containerd.io/snapshot/nix/store.";

/**
 * The most store-path labels a layer without a nix-closure label may carry:
 * each may be realised and rooted on its own, so the bound keeps a hostile image
 * from making one Prepare do unbounded work. With nix-closure, one path is
 * rooted for the whole closure and the per-path labels only add to it;
 * then the metadata store's per-call label limits are the bound.
 */
export const MAX_STORE_PATH_LABELS = 16_384;

/** A closure file larger than this is refused (about 300,000 store paths). */
export const MAX_CLOSURE_FILE_BYTES = 32 * 1024 * 1024;

export interface NixLayer {
  /** The closure file (a store path, or a file inside one), when the image names one. */
  closure?: StoreFile;
  /** Store paths named one per label, deduplicated and sorted. */
  paths: StorePath[];
}

export function isNixLayer(labels: Record<string, string>): boolean {
  return labels[NIX_LAYER_LABEL] !== undefined;
}

/**
 * Reads a nix layer's store paths from its labels; undefined for any other
 * layer. Every value is validated; the first bad one refuses the whole layer.
 */
export function nixLayerFromLabels(labels: Record<string, string>, storeDir?: string): NixLayer | undefined {
  const marker = labels[NIX_LAYER_LABEL];
  if (marker === undefined) return undefined;
  if (marker !== "true") {
    throw new InvalidArgumentError(`label ${NIX_LAYER_LABEL} must be "true", got ${JSON.stringify(marker.slice(0, 64))}`);
  }
  const closure = labels[NIX_CLOSURE_LABEL];
  const paths = new Set<StorePath>();
  let count = 0;
  for (const [key, value] of Object.entries(labels)) {
    let parsed: StorePath | undefined;
    if (key.startsWith(NIX_STORE_PATH_LABEL_PREFIX)) parsed = labelValue(key, () => parseStorePath(value, storeDir));
    else if (key.startsWith(NIX_STORE_BASENAME_LABEL_PREFIX)) parsed = labelValue(key, () => parseStorePathBaseName(value, storeDir));
    if (parsed === undefined) continue;
    if (++count > MAX_STORE_PATH_LABELS && closure === undefined) {
      throw new InvalidArgumentError(`nix layer has more than ${MAX_STORE_PATH_LABELS} store path labels; use a ${NIX_CLOSURE_LABEL} label for large closures`);
    }
    paths.add(parsed);
  }
  const layer: NixLayer = { paths: [...paths].sort() };
  if (closure !== undefined) {
    try {
      layer.closure = parseStoreFile(closure, storeDir);
    } catch (err) {
      throw new InvalidArgumentError(`label ${NIX_CLOSURE_LABEL}: ${(err as Error).message}`);
    }
  }
  return layer;
}

function labelValue(key: string, parse: () => StorePath): StorePath {
  try {
    return parse();
  } catch (err) {
    throw new InvalidArgumentError(`label ${key}: ${(err as Error).message}`);
  }
}

/** Parses a closure file (closureInfo's store-paths: one store path per line). */
export function parseClosureFile(text: string, file: string, storeDir?: string): StorePath[] {
  const out = new Set<StorePath>();
  let line = 0;
  for (const raw of text.split("\n")) {
    line++;
    const v = raw.trim();
    if (v === "") continue;
    try {
      out.add(parseStorePath(v, storeDir));
    } catch (err) {
      throw new InvalidArgumentError(`closure file ${file}, line ${line}: ${(err as Error).message}`);
    }
  }
  return [...out].sort();
}
