/**
 * The two images of a closure: the nix image (nix2container build: one
 * layer of mountpoints, store paths in annotations) and an ordinary image
 * of one layer holding the real files of every store path.
 */
import { statSync } from "node:fs";
import { lstat, readFile, readlink } from "node:fs/promises";
import path from "node:path";
import { readImageArchive } from "../../src/image/archive.js";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { buildLayer, type LayerEntry } from "../../src/image/layer.js";
import { fileEntriesFromDir } from "../../test/lib/host-tree.js";
import { buildNixImageArchive } from "../../devenv/images.js";
import { msBetween, now } from "../lib/stats.js";
import type { Case, Image } from "./closures.js";

/** Layer entries holding the real files of store paths, at their /nix/store places. */
async function storeEntries(paths: string[]): Promise<LayerEntry[]> {
  const out: LayerEntry[] = [];
  for (const p of paths) {
    const rel = p.slice(1);
    const st = await lstat(p);
    if (st.isDirectory()) {
      out.push({ type: "dir", path: rel, mode: st.mode & 0o7777 });
      for (const e of await fileEntriesFromDir(p)) {
        const under = `${rel}/${e.path}`;
        if (e.type === "hardlink") out.push({ ...e, path: under, target: `${rel}/${e.target}` });
        else out.push({ ...e, path: under } as LayerEntry);
      }
    } else if (st.isSymbolicLink()) {
      out.push({ type: "symlink", path: rel, target: await readlink(p) });
    } else {
      out.push({ type: "file", path: rel, content: await readFile(p), mode: st.mode & 0o7777 });
    }
  }
  return out;
}

async function describeArchive(archive: string, ref: string, buildMs: number): Promise<Image> {
  const img = await readImageArchive(archive);
  const chainId = img.config.rootfs?.diff_ids?.[0];
  if (!chainId || img.manifest.layers.length !== 1) throw new Error(`${archive}: expected an image of one layer`);
  return { archive, ref, bytes: statSync(archive).size, buildMs, chainId, annotations: img.manifest.layers[0]!.annotations ?? {} };
}

export async function buildImages(c: Omit<Case, "nix" | "ordinary">, dir: string): Promise<Case> {
  const t0 = now();
  const nix = await buildNixImageArchive({
    dir,
    name: `nix-${c.size}`,
    closureInfo: c.closureInfo,
    config: { Entrypoint: c.entry },
    ref: `docker.io/bench/nix-start:nix-${c.size}`,
  });
  const nixMs = msBetween(t0, now());
  const t1 = now();
  const ordRef = `docker.io/bench/nix-start:ordinary-${c.size}`;
  const ordArchive = path.join(dir, `ordinary-${c.size}.tar`);
  await writeImageArchive({ layers: [{ tar: await buildLayer(await storeEntries(c.paths)) }], config: { Entrypoint: c.entry }, ref: ordRef }, ordArchive);
  const ordMs = msBetween(t1, now());
  return { ...c, nix: await describeArchive(nix.archive, nix.ref, nixMs), ordinary: await describeArchive(ordArchive, ordRef, ordMs) };
}
