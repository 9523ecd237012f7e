/**
 * Writing image archives: one tar file holding an image, as `ctr images
 * import`, `skopeo copy oci-archive:` and `docker load` take it.
 *
 * The writer emits an OCI image layout (image-spec image-layout.md:
 * `oci-layout`, `index.json`, `blobs/sha256/<hex>`) plus a docker-style
 * `manifest.json` pointing into the same blobs, so one file serves both
 * worlds. containerd prefers the OCI layout whenever `oci-layout` is present
 * (images/archive/importer.go ImportIndex), docker's legacy loader only looks
 * at manifest.json. Everything is deterministic: same input, same bytes.
 * Base layers are streamed from their archive into the new one, never held
 * in memory.
 */
import { randomBytes } from "node:crypto";
import { open, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { detectCompression, gzip } from "./compression.js";
import type { DockerArchiveManifest } from "./docker-archive.js";
import {
  type ContainerConfig,
  type Descriptor,
  digestHex,
  goArch,
  type HistoryEntry,
  type ImageConfig,
  type ImageLayout,
  type Index,
  jsonBytes,
  type Manifest,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_LAYER,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_MANIFEST,
  OCI_LAYOUT_VERSION,
  type Platform,
  singleImageIndex,
} from "./oci.js";
import { sha256Digest } from "../digest.js";
import { refTag, withDefaultTag } from "./reference.js";
import type { BlobSource } from "../containerd/content.js";
import { streamTar, type TarItem } from "./tar-writer.js";

/** A layer built here from its uncompressed tar. */
export interface TarLayerInput {
  /** The uncompressed layer tar (its sha256 is the diff_id). */
  tar: Buffer;
  /** Default true: store the layer as tar+gzip. */
  compress?: boolean;
  /** gzip level when compressing, default 6. */
  gzipLevel?: number;
  /** Layer descriptor annotations (how nix store paths reach the snapshotter). */
  annotations?: Record<string, string>;
}

/**
 * A layer taken over byte for byte from another image (a base image's
 * layers): re-compressing would change its digest, and registries and
 * containerd could no longer share it with the base.
 */
export interface PrebuiltLayerInput {
  /** The layer blob exactly as stored (compressed or not). */
  blob: Buffer | BlobSource;
  /**
   * The blob's digest; required for a BlobSource, whose bytes are hashed as
   * they are copied and the archive refused if they differ.
   */
  digest?: string;
  /** An OCI layer media type matching the blob's compression. */
  mediaType: string;
  /** sha256 of the uncompressed tar, from the base image's rootfs.diff_ids. */
  diffId: string;
  annotations?: Record<string, string>;
}

export type LayerInput = TarLayerInput | PrebuiltLayerInput;

export interface ImageInput {
  layers: LayerInput[];
  /** The execution parameters ("config" in the image config). */
  config: ContainerConfig;
  /**
   * Full image name, e.g. "docker.io/library/foo:latest" or
   * "nix:0/nix/store/xxx-foo.tar:latest"; ":latest" is added when it has
   * neither tag nor digest. Without it the image is written unnamed.
   */
  ref?: string;
  /** Default "1970-01-01T00:00:01Z": fixed, so rebuilds are identical. */
  created?: string;
  /** GOARCH, default goArch() of this host. */
  architecture?: string;
  /** Default "linux". */
  os?: string;
  variant?: string;
  author?: string;
  history?: HistoryEntry[];
  /** More top-level image config fields; may not repeat a field set above. */
  extraConfig?: Record<string, unknown>;
  /** Manifest annotations. */
  annotations?: Record<string, string>;
}

export interface WrittenImage {
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  /** Digests of the layer blobs as stored (compressed or not). */
  layerDigests: string[];
  /** sha256 of each uncompressed layer tar, as in rootfs.diff_ids. */
  diffIds: string[];
  /** The reference written into the archive, after withDefaultTag(). */
  ref?: string;
}

/** An image assembled: its blobs, keyed by digest (base layers left in their file), and metadata. */
export interface BuiltImage extends WrittenImage {
  manifest: Manifest;
  config: ImageConfig;
  /** The index.json of an OCI layout holding just this image. */
  index: Index;
  blobs: Map<string, Buffer | VerifiedSource>;
}

/** A blob left in another file, with the digest its bytes must have. */
export interface VerifiedSource {
  source: BlobSource;
  digest: string;
}

export const DEFAULT_CREATED = "1970-01-01T00:00:01Z";

/** Copy of a string map with keys in bytewise order, like Go's encoding/json. */
function sortedRecord<V>(r: Record<string, V>): Record<string, V> {
  const out: Record<string, V> = {};
  for (const k of Object.keys(r).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) out[k] = r[k]!;
  return out;
}

function nonEmpty<V>(r: Record<string, V> | undefined): Record<string, V> | undefined {
  return r && Object.keys(r).length > 0 ? sortedRecord(r) : undefined;
}

/**
 * The container config in spec field order with its maps sorted, so the
 * bytes (and the config digest) do not depend on how the caller built it.
 */
function canonicalContainerConfig(c: ContainerConfig): ContainerConfig {
  const known: ContainerConfig = {
    User: c.User,
    ExposedPorts: nonEmpty(c.ExposedPorts),
    Env: c.Env,
    Entrypoint: c.Entrypoint,
    Cmd: c.Cmd,
    Volumes: nonEmpty(c.Volumes),
    WorkingDir: c.WorkingDir,
    Labels: nonEmpty(c.Labels),
    StopSignal: c.StopSignal,
    ArgsEscaped: c.ArgsEscaped,
  };
  // Fields this type does not model (Healthcheck, OnBuild, ...) pass through.
  const extra = sortedRecord(
    Object.fromEntries(Object.entries(c as Record<string, unknown>).filter(([k]) => !(k in known))),
  );
  return { ...known, ...extra };
}

/** Builds every blob of an image, deterministically; prebuilt layers in files stay there. */
export async function buildImage(image: ImageInput): Promise<BuiltImage> {
  const blobs = new Map<string, Buffer | VerifiedSource>();
  const layerDescs: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const [i, layer] of image.layers.entries()) {
    if ("blob" in layer) {
      let digest: string;
      let size: number;
      if (Buffer.isBuffer(layer.blob)) {
        digest = sha256Digest(layer.blob);
        size = layer.blob.length;
        blobs.set(digest, layer.blob);
      } else {
        if (!layer.digest) throw new Error(`layer ${i}: a prebuilt layer read from a file needs its digest`);
        digest = layer.digest;
        size = layer.blob.size;
        blobs.set(digest, { source: layer.blob, digest });
      }
      diffIds.push(layer.diffId);
      const annotations = nonEmpty(layer.annotations);
      layerDescs.push({ mediaType: layer.mediaType, digest, size, ...(annotations ? { annotations } : {}) });
      continue;
    }
    if (detectCompression(layer.tar) !== "none") {
      throw new Error(`layer ${i}: LayerInput.tar must be an uncompressed tar (its digest is the diff_id)`);
    }
    diffIds.push(sha256Digest(layer.tar));
    const compress = layer.compress ?? true;
    const blob = compress ? await gzip(layer.tar, { level: layer.gzipLevel ?? 6 }) : layer.tar;
    const digest = sha256Digest(blob);
    blobs.set(digest, blob);
    const annotations = nonEmpty(layer.annotations);
    layerDescs.push({
      mediaType: compress ? MEDIA_TYPE_OCI_LAYER_GZIP : MEDIA_TYPE_OCI_LAYER,
      digest,
      size: blob.length,
      ...(annotations ? { annotations } : {}),
    });
  }

  const architecture = image.architecture ?? goArch();
  const os = image.os ?? "linux";
  const config: ImageConfig = {
    created: image.created ?? DEFAULT_CREATED,
    author: image.author,
    architecture,
    variant: image.variant,
    os,
    config: canonicalContainerConfig(image.config),
    rootfs: { type: "layers", diff_ids: diffIds },
    history: image.history,
  };
  for (const [k, v] of Object.entries(sortedRecord(image.extraConfig ?? {}))) {
    if (k in config) throw new Error(`extraConfig.${k} would override a field the image writer sets`);
    (config as unknown as Record<string, unknown>)[k] = v;
  }
  const configBytes = jsonBytes(config);
  const configDigest = sha256Digest(configBytes);
  blobs.set(configDigest, configBytes);

  const manifestAnnotations = nonEmpty(image.annotations);
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    config: { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: configDigest, size: configBytes.length },
    layers: layerDescs,
    ...(manifestAnnotations ? { annotations: manifestAnnotations } : {}),
  };
  const manifestBytes = jsonBytes(manifest);
  const manifestDigest = sha256Digest(manifestBytes);
  blobs.set(manifestDigest, manifestBytes);

  const ref = image.ref === undefined ? undefined : withDefaultTag(image.ref);
  const platform: Platform = { architecture, os, ...(image.variant ? { variant: image.variant } : {}) };
  const index = singleImageIndex(manifestDigest, manifestBytes.length, platform, ref);

  return {
    manifestDigest,
    manifestSize: manifestBytes.length,
    configDigest,
    layerDigests: layerDescs.map((d) => d.digest),
    diffIds,
    ...(ref !== undefined ? { ref } : {}),
    manifest,
    config,
    index,
    blobs,
  };
}

function blobPath(digest: string): string {
  return `blobs/sha256/${digestHex(digest)}`;
}

/** The archive's tar items, sorted by name, all with mtime 0 and root owner. */
function archiveItems(built: BuiltImage): TarItem[] {
  const docker: DockerArchiveManifest[] = [
    {
      Config: blobPath(built.configDigest),
      // Digest-only references cannot be docker tags.
      RepoTags: built.ref !== undefined && refTag(built.ref) !== undefined ? [built.ref] : [],
      Layers: built.layerDigests.map(blobPath),
    },
  ];
  const layout: ImageLayout = { imageLayoutVersion: OCI_LAYOUT_VERSION };
  const files = new Map<string, Buffer | VerifiedSource>();
  for (const [digest, blob] of built.blobs) files.set(blobPath(digest), blob);
  files.set("index.json", jsonBytes(built.index));
  files.set("manifest.json", jsonBytes(docker));
  files.set("oci-layout", jsonBytes(layout));

  const common = { mtime: new Date(0), uid: 0, gid: 0, uname: "", gname: "" };
  const items: TarItem[] = [
    { header: { ...common, name: "blobs/", type: "directory", mode: 0o040755 } },
    { header: { ...common, name: "blobs/sha256/", type: "directory", mode: 0o040755 } },
  ];
  const names = [...files.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  for (const name of names) {
    const body = files.get(name)!;
    if (Buffer.isBuffer(body)) items.push({ header: { ...common, name, type: "file", mode: 0o100644, size: body.length }, body });
    else items.push({ header: { ...common, name, type: "file", mode: 0o100644, size: body.source.size }, source: body.source, digest: body.digest });
  }
  return items;
}

/**
 * Writes `image` as an archive at `outFile`. The tar goes to a temporary file
 * in the same directory, is fsynced, then renamed over `outFile`, so readers
 * see either the old file or the complete new one, never half an archive.
 */
export async function writeImageArchive(image: ImageInput, outFile: string): Promise<WrittenImage> {
  const built = await buildImage(image);
  const tmp = path.join(path.dirname(outFile), `.${path.basename(outFile)}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`);
  const fh = await open(tmp, "wx", 0o644);
  try {
    try {
      await streamTar(archiveItems(built), async (chunk) => {
        await fh.write(chunk);
      });
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, outFile);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  const { manifestDigest, manifestSize, configDigest, layerDigests, diffIds, ref } = built;
  return { manifestDigest, manifestSize, configDigest, layerDigests, diffIds, ...(ref !== undefined ? { ref } : {}) };
}
