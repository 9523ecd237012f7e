/**
 * Reading an OCI image layout tar (image-spec image-layout.md): oci-layout,
 * index.json and blobs/sha256/<hex>, every blob the chosen image uses
 * checked against its digest.
 */
import type { ImageArchive, ReadOptions } from "./image-archive.js";
import { BLOB_PATH_RE, MAX_JSON_BLOB, parseJson, type TarFiles, verifyBlob } from "./archive-tar.js";
import { digestStream } from "./compression.js";
import {
  ANNOTATION_CONTAINERD_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  type Descriptor,
  digestHex,
  type ImageConfig,
  type ImageLayout,
  type Index,
  type Manifest,
  OCI_LAYOUT_VERSION,
} from "./oci.js";
import { selectManifest } from "./select-manifest.js";
import type { BlobSource } from "../containerd/content.js";
import { readSource } from "./tar-index.js";

/** A layer's diff_id, when computed, must be the one the config lists. */
function checkDiffId(file: string, what: string, got: string | undefined, want: string | undefined): void {
  if (got !== undefined && got !== want) throw new Error(`${file}: ${what} has diff_id ${got}, config says ${want}`);
}

export async function openOciLayout(tar: TarFiles, file: string, opts: ReadOptions, cleanup: () => Promise<void>): Promise<ImageArchive> {
  const layout = parseJson<ImageLayout>(await tar.read("oci-layout"), `${file}: oci-layout`);
  if (layout.imageLayoutVersion !== OCI_LAYOUT_VERSION) {
    throw new Error(`${file}: unsupported OCI layout version ${JSON.stringify(layout.imageLayoutVersion)}`);
  }
  // Blobs by the digest their name claims; unsupported algorithms are left
  // out and reported only if the image actually refers to them.
  const blobs = new Map<string, BlobSource>();
  for (const name of [...tar.files.keys(), ...tar.links.keys()]) {
    const m = BLOB_PATH_RE.exec(name);
    const src = m ? tar.get(name) : undefined;
    if (m && src) blobs.set(`${m[1]}:${m[2]}`, src);
  }
  const blob = (desc: Descriptor, what: string): BlobSource => {
    const b = blobs.get(desc.digest);
    if (!b) throw new Error(`${file}: ${what} blob ${desc.digest} is missing`);
    if (desc.size !== b.size) throw new Error(`${file}: ${what} blob ${desc.digest} has size ${b.size}, descriptor says ${desc.size}`);
    return b;
  };
  const json = async <T>(desc: Descriptor, what: string): Promise<T> => {
    const where = `blobs/sha256/${digestHex(desc.digest)} in ${file}`;
    const buf = await readSource(blob(desc, what), MAX_JSON_BLOB, `${what} ${where}`);
    verifyBlob(desc.digest, buf, where);
    return parseJson<T>(buf, `${file}: ${what} ${desc.digest}`);
  };

  const index = parseJson<Index>(await tar.read("index.json"), `${file}: index.json`);
  if (!Array.isArray(index.manifests)) throw new Error(`${file}: index.json has no manifests`);
  const top = await selectManifest(index.manifests, opts, (d) => json<Index>(d, "index"));
  if (!top) throw new Error(`${file}: no image manifest${opts.ref ? ` named ${JSON.stringify(opts.ref)}` : ""} in index.json`);

  const manifest = await json<Manifest>(top.manifest, "manifest");
  const config = await json<ImageConfig>(manifest.config, "config");
  const diffIds = config.rootfs?.diff_ids ?? [];
  for (const [i, l] of manifest.layers.entries()) {
    const where = `blobs/sha256/${digestHex(l.digest)} in ${file}`;
    // Foreign (non-distributable) layers are fetched elsewhere, not unpacked from here.
    const foreign = /foreign|nondistributable/.test(l.mediaType);
    const d = await digestStream(blob(l, `layer ${i}`).open(), { uncompressed: opts.diffIds === true && !foreign });
    if (d.digest !== l.digest) throw new Error(`blob ${where} has digest ${d.digest}, expected ${l.digest}`);
    checkDiffId(file, `layer ${i} (${l.digest})`, d.diffId, diffIds[i]);
  }
  const ref = top.named.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME] ?? top.named.annotations?.[ANNOTATION_REF_NAME];
  return {
    index,
    manifest,
    manifestDigest: top.manifest.digest,
    config,
    ...(ref !== undefined ? { ref } : {}),
    format: "oci-layout",
    blob: (d) => blobs.get(d),
    digests: () => [...blobs.keys()],
    close: cleanup,
  };
}
