/**
 * Reading a docker-archive (`docker save`): manifest.json naming a config
 * and layer tars, turned into the OCI manifest and index the rest of the
 * code works with.
 */
import type { ImageArchive, ReadOptions } from "./image-archive.js";
import { BLOB_PATH_RE, MAX_JSON_BLOB, parseJson, TarFiles, verifyBlob } from "./archive-tar.js";
import { digestStream } from "./compression.js";
import {
  type Descriptor,
  type ImageConfig,
  jsonBytes,
  type Manifest,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_LAYER_ZSTD,
  MEDIA_TYPE_OCI_MANIFEST,
  type Platform,
  singleImageIndex,
} from "./oci.js";
import { sha256Digest } from "../digest.js";
import type { BlobSource } from "../containerd/content.js";
import { bufferSource, readSource } from "./tar-index.js";

/** docker-archive manifest.json: one entry per image. */
export interface DockerArchiveManifest {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
}

const HEX_JSON_RE = /^([0-9a-f]{64})\.json$/;

/**
 * A docker-archive as `docker save` writes it: manifest.json naming a config
 * and layer tars by path (`<id>/layer.tar`, or `blobs/sha256/<hex>` since
 * Docker 25). An OCI manifest is synthesized with the layer blobs as they
 * are, typed by their magic bytes.
 */
export async function openDockerArchive(tar: TarFiles, file: string, opts: ReadOptions, cleanup: () => Promise<void>): Promise<ImageArchive> {
  const entries = parseJson<DockerArchiveManifest[]>(await tar.read("manifest.json"), `${file}: manifest.json`);
  if (!Array.isArray(entries) || entries.length === 0) throw new Error(`${file}: manifest.json lists no images`);
  const entry = opts.ref === undefined ? entries[0] : entries.find((e) => (e.RepoTags ?? []).includes(opts.ref!));
  if (!entry) throw new Error(`${file}: no image tagged ${JSON.stringify(opts.ref)} in manifest.json`);

  const member = (p: string, what: string): BlobSource => {
    const b = tar.get(p);
    if (!b) throw new Error(`${file}: ${what} ${JSON.stringify(p)} named in manifest.json is missing`);
    return b;
  };
  /** Where the file name is a content digest, the content must match it. */
  const nameDigest = (p: string): string | undefined => {
    const normal = TarFiles.normalise(p);
    const blobName = BLOB_PATH_RE.exec(normal);
    const jsonName = HEX_JSON_RE.exec(normal);
    return blobName ? `${blobName[1]}:${blobName[2]}` : jsonName ? `sha256:${jsonName[1]}` : undefined;
  };

  const blobs = new Map<string, BlobSource>();
  const configBytes = await readSource(member(entry.Config, "config"), MAX_JSON_BLOB, `${file}: config ${entry.Config}`);
  const configDigest = sha256Digest(configBytes);
  const claimed = nameDigest(entry.Config);
  if (claimed) verifyBlob(claimed, configBytes, `${TarFiles.normalise(entry.Config)} in ${file}`);
  blobs.set(configDigest, bufferSource(configBytes));
  const config = parseJson<ImageConfig>(configBytes, `${file}: config ${entry.Config}`);
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== entry.Layers.length) {
    throw new Error(`${file}: config lists ${diffIds.length} diff_ids but manifest.json ${entry.Layers.length} layers`);
  }

  const layers: Descriptor[] = [];
  for (const [i, p] of entry.Layers.entries()) {
    const src = member(p, `layer ${i}`);
    // Layer file names of old archives are v1 ids, not digests, so the only
    // integrity check is the config's diff_id of the uncompressed tar (what
    // `docker load` checks too), for gzip and zstd layers alike.
    const d = await digestStream(src.open(), { uncompressed: true });
    const claimedLayer = nameDigest(p);
    if (claimedLayer && claimedLayer !== d.digest) {
      throw new Error(`blob ${TarFiles.normalise(p)} in ${file} has digest ${d.digest}, expected ${claimedLayer}`);
    }
    if (d.diffId !== diffIds[i]) throw new Error(`${file}: layer ${JSON.stringify(p)} has diff_id ${d.diffId}, config says ${diffIds[i]}`);
    blobs.set(d.digest, src);
    layers.push({
      mediaType:
        d.compression === "gzip" ? MEDIA_TYPE_OCI_LAYER_GZIP : d.compression === "zstd" ? MEDIA_TYPE_OCI_LAYER_ZSTD : MEDIA_TYPE_OCI_LAYER,
      digest: d.digest,
      size: src.size,
    });
  }

  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    config: { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: configDigest, size: configBytes.length },
    layers,
  };
  const manifestBytes = jsonBytes(manifest);
  const manifestDigest = sha256Digest(manifestBytes);
  blobs.set(manifestDigest, bufferSource(manifestBytes));

  const ref = opts.ref ?? entry.RepoTags?.[0];
  const platform: Platform = {
    architecture: config.architecture,
    os: config.os,
    ...(config.variant ? { variant: config.variant } : {}),
  };
  const index = singleImageIndex(manifestDigest, manifestBytes.length, platform, ref);
  return {
    index,
    manifest,
    manifestDigest,
    config,
    ...(ref !== undefined ? { ref } : {}),
    format: "docker-archive",
    blob: (d) => blobs.get(d),
    digests: () => [...blobs.keys()],
    close: cleanup,
  };
}
