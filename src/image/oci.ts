/**
 * The pieces of the OCI image spec (github.com/opencontainers/image-spec,
 * v1.1) this project reads and writes: descriptors, manifests, indexes and
 * the image config, plus the media types containerd recognises for them.
 * Field names and JSON keys follow the spec exactly, since these objects are
 * serialised as-is and their bytes are content-addressed.
 */
import { endianness } from "node:os";
import { refTag } from "./reference.js";

// --- media types -----------------------------------------------------------

/** OCI media types (image-spec media-types.md). */
export const MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
export const MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar";
export const MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
export const MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";

/**
 * Docker image manifest v2 schema 2 equivalents. containerd treats them as
 * aliases of the OCI types (images.IsLayerType / IsManifestType), and images
 * pulled from Docker Hub or loaded from `docker save` still carry them.
 */
const MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
export const MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar";
export const MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip";

export function isManifestMediaType(mt: string | undefined): boolean {
  return mt === MEDIA_TYPE_OCI_MANIFEST || mt === MEDIA_TYPE_DOCKER_MANIFEST;
}

export function isIndexMediaType(mt: string | undefined): boolean {
  return mt === MEDIA_TYPE_OCI_INDEX || mt === MEDIA_TYPE_DOCKER_MANIFEST_LIST;
}

// --- annotations -----------------------------------------------------------

/** image-spec annotations.md: the tag part of a reference, in an index. */
export const ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name";
/**
 * containerd's own index annotation holding the full image name; `ctr images
 * import` prefers it over ref.name (client/import.go imageName()).
 */
export const ANNOTATION_CONTAINERD_IMAGE_NAME = "io.containerd.image.name";

// --- structures ------------------------------------------------------------

export interface Platform {
  architecture: string;
  os: string;
  "os.version"?: string;
  "os.features"?: string[];
  variant?: string;
}

/** image-spec descriptor.md */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

/** image-spec manifest.md */
export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** image-spec image-index.md (also the shape of an OCI layout's index.json) */
export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** image-spec image-layout.md: the `oci-layout` file. */
export interface ImageLayout {
  imageLayoutVersion: string;
}

export const OCI_LAYOUT_VERSION = "1.0.0";

/** image-spec config.md: the execution parameters under "config". */
export interface ContainerConfig {
  User?: string;
  /** keys are "port/proto", values are empty objects (Go's map[string]struct{}) */
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  /** keys are paths, values are empty objects */
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  ArgsEscaped?: boolean;
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** image-spec config.md: the image config blob. */
export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  "os.version"?: string;
  "os.features"?: string[];
  variant?: string;
  config?: ContainerConfig;
  rootfs: { type: "layers"; diff_ids: string[] };
  history?: HistoryEntry[];
}

// --- helpers ---------------------------------------------------------------

/** A JSON document as written here: compact, UTF-8 (its digest is the digest of these bytes). */
export function jsonBytes(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), "utf8");
}

/**
 * An index naming one manifest. Both name annotations are set: containerd's
 * importer takes io.containerd.image.name as the image name and falls back to
 * ref.name; OCI tools (skopeo's oci: transport) look images up by ref.name.
 */
export function singleImageIndex(digest: string, size: number, platform: Platform, ref: string | undefined): Index {
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

const DIGEST_RE = /^sha256:([0-9a-f]{64})$/;

/** The hex part of a sha256 digest; throws on any other algorithm or shape. */
export function digestHex(digest: string): string {
  const m = DIGEST_RE.exec(digest);
  if (!m) throw new Error(`unsupported or malformed digest ${JSON.stringify(digest)}`);
  return m[1]!;
}

/**
 * Node's process.arch in GOARCH terms, the vocabulary of the image config's
 * "architecture" and of containerd's platform matcher.
 */
export function goArch(arch: string = process.arch): string {
  switch (arch) {
    case "x64":
      return "amd64";
    case "ia32":
      return "386";
    case "arm64":
      return "arm64";
    case "arm":
      return "arm";
    case "ppc64":
      // Node reports "ppc64" on little-endian Linux as well; the only Linux
      // ppc64 Node ships for is ppc64le.
      return endianness() === "LE" ? "ppc64le" : "ppc64";
    case "s390x":
      return "s390x";
    case "riscv64":
      return "riscv64";
    case "loong64":
      return "loong64";
    case "mips":
      return "mips";
    case "mipsel":
      return "mipsle";
    default:
      return arch;
  }
}
