/**
 * The peer of a nix image in the pull benchmarks: the same store paths as an
 * ordinary image, one layer per store path (what nixpkgs' dockerTools
 * layered images do), so containerd pulls and unpacks every byte.
 */
import { lstatSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import type { PrebuiltLayerInput } from "../../src/image/archive-writer.js";
import { gzip } from "../../src/image/compression.js";
import { buildLayer, type LayerEntry } from "../../src/image/layer.js";
import { MEDIA_TYPE_OCI_LAYER_GZIP } from "../../src/image/oci.js";
import { sha256Digest } from "../../src/digest.js";
import { fileEntriesFromDir } from "../../test/lib/host-tree.js";

/** The layer entries of one store path, under nix/store/<name>. */
export async function storePathEntries(storePath: string): Promise<LayerEntry[]> {
  const base = `nix/store/${path.basename(storePath)}`;
  const out: LayerEntry[] = [
    { type: "dir", path: "nix", mode: 0o755 },
    { type: "dir", path: "nix/store", mode: 0o755 },
  ];
  const st = lstatSync(storePath);
  if (st.isSymbolicLink()) return [...out, { type: "symlink", path: base, target: readlinkSync(storePath) }];
  if (st.isFile()) return [...out, { type: "file", path: base, content: readFileSync(storePath), mode: st.mode & 0o7777 }];
  out.push({ type: "dir", path: base, mode: st.mode & 0o7777 });
  for (const e of await fileEntriesFromDir(storePath)) {
    const p = `${base}/${e.path}`;
    out.push(e.type === "hardlink" ? { ...e, path: p, target: `${base}/${e.target}` } : { ...e, path: p });
  }
  return out;
}

/**
 * Gzip layers of store paths, each built once however many images use it,
 * so images sharing store paths share the layer blobs byte for byte.
 */
export class StorePathLayers {
  private readonly cache = new Map<string, Promise<PrebuiltLayerInput>>();

  constructor(private readonly gzipLevel = 6) {}

  layer(storePath: string): Promise<PrebuiltLayerInput> {
    let l = this.cache.get(storePath);
    if (!l) {
      l = (async () => {
        const tar = await buildLayer(await storePathEntries(storePath));
        return { blob: await gzip(tar, { level: this.gzipLevel }), mediaType: MEDIA_TYPE_OCI_LAYER_GZIP, diffId: sha256Digest(tar) };
      })();
      this.cache.set(storePath, l);
    }
    return l;
  }

  /** One layer per store path, in the order given. */
  async layers(storePaths: readonly string[]): Promise<PrebuiltLayerInput[]> {
    const out: PrebuiltLayerInput[] = [];
    for (const p of storePaths) out.push(await this.layer(p));
    return out;
  }
}
