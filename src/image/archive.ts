/**
 * Image archives: one tar file holding an image, as `ctr images import`,
 * `skopeo copy oci-archive:` and `docker load` take it.
 *
 * The writer emits an OCI image layout (image-spec image-layout.md:
 * `oci-layout`, `index.json`, `blobs/sha256/<hex>`) plus a docker-style
 * `manifest.json` pointing into the same blobs, so one file serves both
 * worlds. containerd prefers the OCI layout whenever `oci-layout` is present
 * (images/archive/importer.go ImportIndex), docker's legacy loader only looks
 * at manifest.json. Everything is deterministic: same input, same bytes.
 *
 * The reader accepts that layout (or any OCI layout tar, e.g. skopeo's
 * oci-archive) and docker-archive tars as `docker save` writes them. It holds
 * every blob in memory, which is fine for images up to a few hundred MB; a
 * streaming reader would be needed beyond that.
 */
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, rename, unlink } from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import tarStream from "tar-stream";
import { detectCompression, gunzip, gzip, streamTar, type TarItem } from "./layer.js";
import {
  ANNOTATION_CONTAINERD_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  type ContainerConfig,
  type Descriptor,
  digestHex,
  goArch,
  type HistoryEntry,
  type ImageConfig,
  type ImageLayout,
  type Index,
  isIndexMediaType,
  isManifestMediaType,
  type Manifest,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_LAYER,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_LAYER_ZSTD,
  MEDIA_TYPE_OCI_MANIFEST,
  OCI_LAYOUT_VERSION,
  type Platform,
  sha256Digest,
} from "./oci.js";

// --- references --------------------------------------------------------------

/**
 * The tag of a reference ("latest" in "docker.io/library/foo:latest" and in
 * "nix:0/nix/store/xxx.tar:latest"): the text after the last ":" that comes
 * after the last "/", ignoring any "@digest". Mirrors containerd's
 * ociReferenceName(), which stores it as org.opencontainers.image.ref.name.
 */
export function refTag(ref: string): string | undefined {
  const at = ref.indexOf("@");
  const name = at === -1 ? ref : ref.slice(0, at);
  const colon = name.lastIndexOf(":");
  return colon > name.lastIndexOf("/") ? name.slice(colon + 1) : undefined;
}

/**
 * Adds ":latest" to a reference with neither tag nor digest, the default
 * docker and containerd apply; `docker load` rejects untagged RepoTags.
 */
export function withDefaultTag(ref: string): string {
  if (ref === "" || /\s/.test(ref)) throw new Error(`invalid image reference ${JSON.stringify(ref)}`);
  return ref.includes("@") || refTag(ref) !== undefined ? ref : `${ref}:latest`;
}

// --- writing -----------------------------------------------------------------

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
  blob: Buffer;
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

/** An image assembled in memory: its blobs, keyed by digest, and metadata. */
export interface BuiltImage extends WrittenImage {
  manifest: Manifest;
  config: ImageConfig;
  /** The index.json of an OCI layout holding just this image. */
  index: Index;
  blobs: Map<string, Buffer>;
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

function jsonBytes(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), "utf8");
}

/** Builds every blob of an image in memory, deterministically. */
export async function buildImage(image: ImageInput): Promise<BuiltImage> {
  const blobs = new Map<string, Buffer>();
  const layerDescs: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const [i, layer] of image.layers.entries()) {
    if ("blob" in layer) {
      const digest = sha256Digest(layer.blob);
      blobs.set(digest, layer.blob);
      diffIds.push(layer.diffId);
      const annotations = nonEmpty(layer.annotations);
      layerDescs.push({ mediaType: layer.mediaType, digest, size: layer.blob.length, ...(annotations ? { annotations } : {}) });
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
  const index = indexFor(manifestDigest, manifestBytes.length, platform, ref);

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

/**
 * An index naming one manifest. Both name annotations are set: containerd's
 * importer takes io.containerd.image.name as the image name and falls back to
 * ref.name; OCI tools (skopeo's oci: transport) look images up by ref.name.
 */
function indexFor(digest: string, size: number, platform: Platform, ref: string | undefined): Index {
  const annotations: Record<string, string> = {};
  if (ref !== undefined) {
    annotations[ANNOTATION_CONTAINERD_IMAGE_NAME] = ref;
    const tag = refTag(ref);
    if (tag !== undefined) annotations[ANNOTATION_REF_NAME] = tag;
  }
  const desc: Descriptor = {
    mediaType: MEDIA_TYPE_OCI_MANIFEST,
    digest,
    size,
    ...(Object.keys(annotations).length > 0 ? { annotations } : {}),
    platform,
  };
  return { schemaVersion: 2, mediaType: MEDIA_TYPE_OCI_INDEX, manifests: [desc] };
}

/** docker-archive manifest.json: one entry per image. */
interface DockerArchiveManifest {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
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
  const files = new Map<string, Buffer>();
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
    items.push({ header: { ...common, name, type: "file", mode: 0o100644, size: body.length }, body });
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

// --- reading -----------------------------------------------------------------

export interface ReadImage {
  /** index.json for an OCI layout; synthesized for a docker-archive. */
  index: Index;
  manifest: Manifest;
  manifestDigest: string;
  config: ImageConfig;
  /** Every blob of the image (and, for an OCI layout, every blob in it), by digest. */
  blobs: Map<string, Buffer>;
  ref?: string;
  format: "oci-layout" | "docker-archive";
}

export interface ReadOptions {
  /**
   * Which image to take when the archive holds several: the one whose name
   * (io.containerd.image.name, ref.name, or docker RepoTags) equals this.
   */
  ref?: string;
  /** Platform to prefer in a multi-platform index; default linux/goArch(). */
  platform?: Platform;
}

/** Regular files of a tar by normalised name, with symlinks and hardlinks resolved. */
class TarFiles {
  readonly files = new Map<string, Buffer>();
  readonly links = new Map<string, string>();

  static normalise(name: string): string {
    return name.split("/").filter((s) => s !== "" && s !== ".").join("/");
  }

  /** The content of `name`, following links (docker save links duplicate layers). */
  get(name: string): Buffer | undefined {
    let n = TarFiles.normalise(name);
    for (let hops = 0; hops < 16; hops++) {
      const f = this.files.get(n);
      if (f) return f;
      const l = this.links.get(n);
      if (l === undefined) return undefined;
      n = l;
    }
    return undefined;
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }
}

async function readTar(file: string): Promise<TarFiles> {
  const out = new TarFiles();
  // A docker-archive is sometimes gzipped as a whole (`docker save | gzip`).
  const head = Buffer.alloc(4);
  {
    const fh = await open(file, "r");
    try {
      await fh.read(head, 0, 4, 0);
    } finally {
      await fh.close();
    }
  }
  const stages: (Readable | zlib.Gunzip)[] = [createReadStream(file)];
  if (detectCompression(head) === "gzip") stages.push(zlib.createGunzip());

  const extract = tarStream.extract();
  const feeding = pipeline([...stages, extract as unknown as NodeJS.WritableStream]);
  feeding.catch(() => undefined); // observed below; avoid an unhandled rejection meanwhile
  try {
    for await (const entry of extract) {
      const h = entry.header;
      const name = TarFiles.normalise(h.name);
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      if (h.type === "file" || h.type === "contiguous-file") {
        out.files.set(name, Buffer.concat(chunks));
      } else if (h.type === "symlink" && h.linkname) {
        // Symlink targets are relative to the link's directory; hardlinks name an archive path.
        out.links.set(name, TarFiles.normalise(path.posix.join(path.posix.dirname(name), h.linkname)));
      } else if (h.type === "link" && h.linkname) {
        out.links.set(name, TarFiles.normalise(h.linkname));
      }
    }
  } catch (err) {
    for (const s of stages) s.destroy();
    throw new Error(`reading image archive ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    await feeding;
  } catch (err) {
    throw new Error(`reading image archive ${file}: ${(err as Error).message}`, { cause: err });
  }
  return out;
}

function parseJson<T>(buf: Buffer, what: string): T {
  try {
    return JSON.parse(buf.toString("utf8")) as T;
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/** Reads an OCI-layout or docker-archive tar, verifying every blob it uses. */
export async function readImageArchive(file: string, opts: ReadOptions = {}): Promise<ReadImage> {
  const tar = await readTar(file);
  if (tar.has("oci-layout") && tar.has("index.json")) return readOciLayout(tar, file, opts);
  if (tar.has("manifest.json")) return readDockerArchive(tar, file, opts);
  throw new Error(
    `${file} is not an image archive: it has neither an OCI layout (oci-layout, index.json) nor a docker-archive manifest.json`,
  );
}

const BLOB_PATH_RE = /^blobs\/(sha256)\/([0-9a-f]{64})$/;

/** Checks that `buf` hashes to `digest`; the error names the blob. */
function verifyBlob(digest: string, buf: Buffer, where: string): void {
  const actual = sha256Digest(buf);
  if (actual !== digest) throw new Error(`blob ${where} has digest ${actual}, expected ${digest}`);
}

function readOciLayout(tar: TarFiles, file: string, opts: ReadOptions): ReadImage {
  const layout = parseJson<ImageLayout>(tar.get("oci-layout")!, `${file}: oci-layout`);
  if (layout.imageLayoutVersion !== OCI_LAYOUT_VERSION) {
    throw new Error(`${file}: unsupported OCI layout version ${JSON.stringify(layout.imageLayoutVersion)}`);
  }
  // Verify every blob by its name. Unsupported algorithms are left out and
  // reported only if the image actually refers to them.
  const blobs = new Map<string, Buffer>();
  for (const name of [...tar.files.keys(), ...tar.links.keys()]) {
    const m = BLOB_PATH_RE.exec(name);
    if (!m) continue;
    const digest = `${m[1]}:${m[2]}`;
    const buf = tar.get(name)!;
    verifyBlob(digest, buf, `${name} in ${file}`);
    blobs.set(digest, buf);
  }
  const blob = (desc: Descriptor, what: string): Buffer => {
    const b = blobs.get(desc.digest);
    if (!b) throw new Error(`${file}: ${what} blob ${desc.digest} is missing`);
    if (desc.size !== b.length) throw new Error(`${file}: ${what} blob ${desc.digest} has size ${b.length}, descriptor says ${desc.size}`);
    return b;
  };

  const index = parseJson<Index>(tar.get("index.json")!, `${file}: index.json`);
  if (!Array.isArray(index.manifests)) throw new Error(`${file}: index.json has no manifests`);
  const top = selectManifest(index.manifests, opts, (d) => parseJson<Index>(blob(d, "index"), `${file}: index ${d.digest}`));
  if (!top) throw new Error(`${file}: no image manifest${opts.ref ? ` named ${JSON.stringify(opts.ref)}` : ""} in index.json`);

  const manifest = parseJson<Manifest>(blob(top.manifest, "manifest"), `${file}: manifest ${top.manifest.digest}`);
  const config = parseJson<ImageConfig>(blob(manifest.config, "config"), `${file}: config ${manifest.config.digest}`);
  for (const [i, l] of manifest.layers.entries()) blob(l, `layer ${i}`);
  const ref = top.named.annotations?.[ANNOTATION_CONTAINERD_IMAGE_NAME] ?? top.named.annotations?.[ANNOTATION_REF_NAME];
  return {
    index,
    manifest,
    manifestDigest: top.manifest.digest,
    config,
    blobs,
    ...(ref !== undefined ? { ref } : {}),
    format: "oci-layout",
  };
}

function nameMatches(d: Descriptor, ref: string): boolean {
  const a = d.annotations ?? {};
  return a[ANNOTATION_CONTAINERD_IMAGE_NAME] === ref || a[ANNOTATION_REF_NAME] === ref;
}

function platformMatches(p: Platform | undefined, want: Platform): boolean {
  if (!p) return false;
  return p.os === want.os && p.architecture === want.architecture && (!want.variant || p.variant === want.variant);
}

/**
 * Picks one image manifest from an index: the named one if opts.ref is set,
 * descending into nested indexes (multi-platform images) and preferring the
 * wanted platform there, else the first manifest. Returns the manifest's
 * descriptor and the top-level descriptor that carried the name.
 */
function selectManifest(
  manifests: Descriptor[],
  opts: ReadOptions,
  loadIndex: (d: Descriptor) => Index,
): { manifest: Descriptor; named: Descriptor } | undefined {
  const want = opts.platform ?? { os: "linux", architecture: goArch() };
  const candidates = opts.ref === undefined ? manifests : manifests.filter((d) => nameMatches(d, opts.ref!));
  for (const named of candidates) {
    if (isManifestMediaType(named.mediaType)) return { manifest: named, named };
    if (isIndexMediaType(named.mediaType)) {
      const nested = loadIndex(named).manifests.filter((d) => isManifestMediaType(d.mediaType));
      const pick = nested.find((d) => platformMatches(d.platform, want)) ?? nested[0];
      if (pick) return { manifest: pick, named };
    }
  }
  return undefined;
}

const HEX_JSON_RE = /^([0-9a-f]{64})\.json$/;

/**
 * A docker-archive as `docker save` writes it: manifest.json naming a config
 * and layer tars by path (`<id>/layer.tar`, or `blobs/sha256/<hex>` since
 * Docker 25). An OCI manifest is synthesized with the layer blobs as they
 * are, typed by their magic bytes.
 */
async function readDockerArchive(tar: TarFiles, file: string, opts: ReadOptions): Promise<ReadImage> {
  const entries = parseJson<DockerArchiveManifest[]>(tar.get("manifest.json")!, `${file}: manifest.json`);
  if (!Array.isArray(entries) || entries.length === 0) throw new Error(`${file}: manifest.json lists no images`);
  const entry = opts.ref === undefined ? entries[0] : entries.find((e) => (e.RepoTags ?? []).includes(opts.ref!));
  if (!entry) throw new Error(`${file}: no image tagged ${JSON.stringify(opts.ref)} in manifest.json`);

  const member = (p: string, what: string): Buffer => {
    const b = tar.get(p);
    if (!b) throw new Error(`${file}: ${what} ${JSON.stringify(p)} named in manifest.json is missing`);
    // Where the file name is a content digest, hold the content to it.
    const normal = TarFiles.normalise(p);
    const blobName = BLOB_PATH_RE.exec(normal);
    const jsonName = HEX_JSON_RE.exec(normal);
    if (blobName) verifyBlob(`${blobName[1]}:${blobName[2]}`, b, `${normal} in ${file}`);
    else if (jsonName) verifyBlob(`sha256:${jsonName[1]}`, b, `${normal} in ${file}`);
    return b;
  };

  const blobs = new Map<string, Buffer>();
  const configBytes = member(entry.Config, "config");
  const configDigest = sha256Digest(configBytes);
  blobs.set(configDigest, configBytes);
  const config = parseJson<ImageConfig>(configBytes, `${file}: config ${entry.Config}`);
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== entry.Layers.length) {
    throw new Error(`${file}: config lists ${diffIds.length} diff_ids but manifest.json ${entry.Layers.length} layers`);
  }

  const layers: Descriptor[] = [];
  for (const [i, p] of entry.Layers.entries()) {
    const b = member(p, `layer ${i}`);
    const digest = sha256Digest(b);
    blobs.set(digest, b);
    const compression = detectCompression(b);
    // Layer file names of old archives are v1 ids, not digests, so the only
    // integrity check is the config's diff_id of the uncompressed tar (what
    // `docker load` checks too). zstd cannot be inflated by Node 20: skipped.
    if (compression !== "zstd") {
      const diffId = compression === "gzip" ? sha256Digest(await gunzip(b)) : digest;
      if (diffId !== diffIds[i]) throw new Error(`${file}: layer ${JSON.stringify(p)} has diff_id ${diffId}, config says ${diffIds[i]}`);
    }
    layers.push({
      mediaType:
        compression === "gzip" ? MEDIA_TYPE_OCI_LAYER_GZIP : compression === "zstd" ? MEDIA_TYPE_OCI_LAYER_ZSTD : MEDIA_TYPE_OCI_LAYER,
      digest,
      size: b.length,
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
  blobs.set(manifestDigest, manifestBytes);

  const ref = opts.ref ?? entry.RepoTags?.[0];
  const platform: Platform = {
    architecture: config.architecture,
    os: config.os,
    ...(config.variant ? { variant: config.variant } : {}),
  };
  const index = indexFor(manifestDigest, manifestBytes.length, platform, ref);
  return { index, manifest, manifestDigest, config, blobs, ...(ref !== undefined ? { ref } : {}), format: "docker-archive" };
}
