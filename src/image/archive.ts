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
 * oci-archive) and docker-archive tars as `docker save` writes them. Neither
 * side holds layers in memory: the reader indexes the tar's members
 * (tar-index.ts) and hands out blobs as streams over their ranges of the
 * file, and the writer streams base layers from their archive into the new
 * one, so memory stays bounded whatever the size of the layers.
 */
import buffer from "node:buffer";
import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, open, rename, rm, unlink } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import { detectCompression, digestStream, gzip, streamTar, type TarItem } from "./layer.js";
import { refTag, withDefaultTag } from "./reference.js";
import { type BlobSource, bufferSource, fileRange, indexTar, readSource } from "./tar-index.js";
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

function jsonBytes(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), "utf8");
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

// --- reading -----------------------------------------------------------------

/**
 * An image archive opened for reading. Its metadata (index, manifest,
 * config) is parsed and verified; blobs stay in the file and are read as
 * streams, so an archive of any size costs a bounded amount of memory.
 * close() releases the temporary file of a gzipped archive.
 */
export interface ImageArchive {
  /** index.json for an OCI layout; synthesized for a docker-archive. */
  index: Index;
  manifest: Manifest;
  manifestDigest: string;
  config: ImageConfig;
  ref?: string;
  format: "oci-layout" | "docker-archive";
  /** A blob by digest (manifest and config included), or undefined. */
  blob(digest: string): BlobSource | undefined;
  /** Digests of every blob the archive holds. */
  digests(): string[];
  close(): Promise<void>;
}

/** An archive read whole into memory (small archives: tests and tools). */
export interface ReadImage extends Omit<ImageArchive, "blob" | "digests" | "close"> {
  /** Every blob of the image (and, for an OCI layout, every blob in it), by digest. */
  blobs: Map<string, Buffer>;
}

export interface ReadOptions {
  /**
   * Which image to take when the archive holds several: the one whose name
   * (io.containerd.image.name, ref.name, or docker RepoTags) equals this.
   */
  ref?: string;
  /** Platform to prefer in a multi-platform index; default linux/goArch(). */
  platform?: Platform;
  /**
   * Also check every layer of an OCI layout against the config's diff_ids
   * (decompressing gzip and zstd). docker-archives are always checked: their
   * layer file names are not digests.
   */
  diffIds?: boolean;
}

/** Manifests, configs and indexes are JSON of a few KiB; refuse absurd ones rather than buffer them. */
const MAX_JSON_BLOB = 16 * 1024 * 1024;

/** Regular files of a tar by normalised name, with symlinks and hardlinks resolved. */
class TarFiles {
  readonly files = new Map<string, BlobSource>();
  readonly links = new Map<string, string>();

  constructor(readonly file: string) {}

  static normalise(name: string): string {
    return name.split("/").filter((s) => s !== "" && s !== ".").join("/");
  }

  /** The member `name`, following links (docker save links duplicate layers). */
  get(name: string): BlobSource | undefined {
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

  /** A small member's bytes (JSON documents). */
  async read(name: string): Promise<Buffer> {
    return readSource(this.get(name)!, MAX_JSON_BLOB, `${name} in ${this.file}`);
  }
}

/**
 * Indexes the archive's members. A docker-archive is sometimes gzipped as a
 * whole (`docker save | gzip`): that one is inflated into a temporary file
 * first (a gzip stream cannot be read from an offset), removed by `cleanup`.
 */
async function indexArchive(file: string): Promise<{ tar: TarFiles; cleanup: () => Promise<void> }> {
  const head = Buffer.alloc(4);
  {
    const fh = await open(file, "r");
    try {
      await fh.read(head, 0, 4, 0);
    } finally {
      await fh.close();
    }
  }
  let tarFile = file;
  let cleanup = async () => undefined as void;
  if (detectCompression(head) === "gzip") {
    const dir = await mkdtemp(path.join(os.tmpdir(), "nix2container-archive-"));
    cleanup = () => rm(dir, { recursive: true, force: true });
    tarFile = path.join(dir, "archive.tar");
    try {
      await pipeline(createReadStream(file), zlib.createGunzip(), createWriteStream(tarFile));
    } catch (err) {
      await cleanup();
      throw new Error(`reading image archive ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  const tar = new TarFiles(file);
  try {
    for (const [raw, m] of await indexTar(tarFile)) {
      const name = TarFiles.normalise(raw);
      if (m.type === "file") tar.files.set(name, fileRange(tarFile, m.offset, m.size));
      // Symlink targets are relative to the link's directory; hardlinks name an archive path.
      else if (m.type === "symlink" && m.linkname) tar.links.set(name, TarFiles.normalise(path.posix.join(path.posix.dirname(name), m.linkname)));
      else if (m.type === "link" && m.linkname) tar.links.set(name, TarFiles.normalise(m.linkname));
    }
  } catch (err) {
    await cleanup();
    throw new Error(`reading image archive ${file}: ${(err as Error).message}`, { cause: err });
  }
  return { tar, cleanup };
}

function parseJson<T>(buf: Buffer, what: string): T {
  try {
    return JSON.parse(buf.toString("utf8")) as T;
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * Opens an OCI-layout or docker-archive tar, verifying every blob the chosen
 * image uses (a streaming sha256 of each layer; with opts.diffIds, or for a
 * docker-archive, also of its decompressed bytes against the diff_id).
 */
export async function openImageArchive(file: string, opts: ReadOptions = {}): Promise<ImageArchive> {
  const { tar, cleanup } = await indexArchive(file);
  try {
    if (tar.has("oci-layout") && tar.has("index.json")) return await openOciLayout(tar, file, opts, cleanup);
    if (tar.has("manifest.json")) return await openDockerArchive(tar, file, opts, cleanup);
    throw new Error(
      `${file} is not an image archive: it has neither an OCI layout (oci-layout, index.json) nor a docker-archive manifest.json`,
    );
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Reads an archive whole into memory, verifying every blob it holds. For small archives. */
export async function readImageArchive(file: string, opts: ReadOptions = {}): Promise<ReadImage> {
  const a = await openImageArchive(file, opts);
  try {
    const blobs = new Map<string, Buffer>();
    for (const d of a.digests()) {
      const buf = await readSource(a.blob(d)!, buffer.constants.MAX_LENGTH, `blob ${d} in ${file}`);
      verifyBlob(d, buf, `${d} in ${file}`);
      blobs.set(d, buf);
    }
    const { index, manifest, manifestDigest, config, ref, format } = a;
    return { index, manifest, manifestDigest, config, blobs, format, ...(ref !== undefined ? { ref } : {}) };
  } finally {
    await a.close();
  }
}

const BLOB_PATH_RE = /^blobs\/(sha256)\/([0-9a-f]{64})$/;

/** Checks that `buf` hashes to `digest`; the error names the blob. */
function verifyBlob(digest: string, buf: Buffer, where: string): void {
  const actual = sha256Digest(buf);
  if (actual !== digest) throw new Error(`blob ${where} has digest ${actual}, expected ${digest}`);
}

/** Layer checks shared by both formats: the diff_id of its decompressed bytes. */
function checkDiffId(file: string, what: string, got: string | undefined, want: string | undefined): void {
  if (got !== undefined && got !== want) throw new Error(`${file}: ${what} has diff_id ${got}, config says ${want}`);
}

async function openOciLayout(tar: TarFiles, file: string, opts: ReadOptions, cleanup: () => Promise<void>): Promise<ImageArchive> {
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
async function selectManifest(
  manifests: Descriptor[],
  opts: ReadOptions,
  loadIndex: (d: Descriptor) => Promise<Index>,
): Promise<{ manifest: Descriptor; named: Descriptor } | undefined> {
  const want = opts.platform ?? { os: "linux", architecture: goArch() };
  const candidates = opts.ref === undefined ? manifests : manifests.filter((d) => nameMatches(d, opts.ref!));
  for (const named of candidates) {
    if (isManifestMediaType(named.mediaType)) return { manifest: named, named };
    if (isIndexMediaType(named.mediaType)) {
      const nested = (await loadIndex(named)).manifests.filter((d) => isManifestMediaType(d.mediaType));
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
async function openDockerArchive(tar: TarFiles, file: string, opts: ReadOptions, cleanup: () => Promise<void>): Promise<ImageArchive> {
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
  const index = indexFor(manifestDigest, manifestBytes.length, platform, ref);
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
