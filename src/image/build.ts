/**
 * nix2container build: turns an image config, a closure file and optional
 * copyToRoot store paths into an OCI image archive with one nix layer.
 * Every input is read and validated before anything is written; the archive
 * appears whole or not at all.
 */
import { readFile, realpath } from "node:fs/promises";
import { InvalidArgumentError } from "../errors.js";
import { NIX_CLOSURE_LABEL, nixLayerFromLabels, parseClosureFile } from "../nix/labels.js";
import { validateLabels } from "../snapshotter/label-limits.js";
import { DEFAULT_STORE_DIR, parseStorePath, type StorePath } from "../nix/store-path.js";
import { DEFAULT_CREATED, type LayerInput, writeImageArchive, type WrittenImage } from "./archive-writer.js";
import { type BaseImage, mergeContainerConfig, readBaseImage } from "./from-image.js";
import { buildLayer } from "./layer.js";
import { copyToRootEntries, mountpointEntries, nixLayerAnnotations, parseImageConfig } from "./nix-image.js";
import { defaultNixRef } from "./reference.js";

export interface BuildOptions {
  /** JSON file with the image config ("config" object of the OCI image config). */
  configFile: string;
  /** Newline-separated store paths: the image's runtime closure. */
  closureFile: string;
  /** JSON file: a list of store paths whose trees are linked into "/". */
  copyToRootFile?: string;
  /** An image archive whose layers go below the nix layer and whose config gives the defaults. */
  fromImageFile?: string;
  ref?: string;
  out: string;
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    throw new InvalidArgumentError(`cannot read ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

async function readJson(file: string, what: string): Promise<unknown> {
  const text = await readText(file, what);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`${what} ${file} is not valid JSON: ${(err as Error).message}`);
  }
}

/** The store path a file lives in, when it lives in the store. */
async function inStore(file: string): Promise<string | undefined> {
  const real = await realpath(file);
  return real.startsWith(DEFAULT_STORE_DIR + "/") ? real : undefined;
}

/**
 * containerd hands the layer's annotations to the snapshotter as labels:
 * refuse, now, an image whose labels nix-snapshotter would refuse on
 * Prepare (the same rules, from the same modules).
 */
function checkDaemonAccepts(annotations: Record<string, string>, closureFile: string): void {
  try {
    validateLabels(annotations);
    nixLayerFromLabels(annotations);
  } catch (err) {
    const hint = annotations[NIX_CLOSURE_LABEL] === undefined ? "; give a closure file that is in the Nix store (closureInfo's store-paths) so the image can name it in a nix-closure annotation" : "";
    throw new InvalidArgumentError(`closure ${closureFile}: nix-snapshotter would refuse this image's nix layer: ${(err as Error).message}${hint}`);
  }
}

export async function buildNixImage(o: BuildOptions): Promise<WrittenImage> {
  const config = parseImageConfig(await readJson(o.configFile, "image config"), o.configFile);
  let closure = parseClosureFile(await readText(o.closureFile, "closure file"), o.closureFile);
  // The config file itself may be a store path listed in the closure (it is
  // an input of the image); the container has no use for it.
  const configInStore = await inStore(o.configFile);
  closure = closure.filter((p) => p !== configInStore);

  let copyToRoot: StorePath[] = [];
  if (o.copyToRootFile) {
    const list = await readJson(o.copyToRootFile, "copyToRoot list");
    if (!Array.isArray(list) || !list.every((e) => typeof e === "string")) {
      throw new InvalidArgumentError(`copyToRoot list ${o.copyToRootFile} must be a JSON list of store paths`);
    }
    copyToRoot = list.map((p) => {
      try {
        return parseStorePath(p);
      } catch (err) {
        throw new InvalidArgumentError(`copyToRoot list ${o.copyToRootFile}: ${(err as Error).message}`);
      }
    });
    const inClosure = new Set<string>(closure);
    const missing = copyToRoot.filter((p) => !inClosure.has(p));
    if (missing.length > 0) {
      throw new InvalidArgumentError(`copyToRoot path ${missing[0]} is not in the closure ${o.closureFile}: the links would dangle`);
    }
  }

  let base: BaseImage | undefined;
  if (o.fromImageFile) {
    try {
      base = await readBaseImage(o.fromImageFile);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message, { cause: err });
    }
  }

  try {
    const annotations = nixLayerAnnotations(closure, await inStore(o.closureFile));
    checkDaemonAccepts(annotations, o.closureFile);
    const entries = [...(await mountpointEntries(closure)), ...(await copyToRootEntries(copyToRoot))];
    const nixLayer: LayerInput = { tar: await buildLayer(entries), annotations };
    return await writeImageArchive(
      {
        layers: [...(base?.layers ?? []), nixLayer],
        config: base ? mergeContainerConfig(base.config, config) : config,
        // A base's history describes its layers; one more entry describes ours.
        ...(base?.history ? { history: [...base.history, { created: DEFAULT_CREATED, created_by: "nix2container build", comment: "nix store paths" }] } : {}),
        ...(base?.variant ? { variant: base.variant } : {}),
        ref: o.ref ?? defaultNixRef(o.out),
      },
      o.out,
    );
  } finally {
    await base?.close();
  }
}
