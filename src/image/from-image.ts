/**
 * Base images (`nix2container build --from-image`): another image's layers
 * go below the nix layer unchanged, and its config supplies the defaults the
 * nix image's config refines.
 *
 * Layers are copied byte for byte, so a registry that already has the base
 * image skips them on push and containerd shares their snapshots with the
 * base image on the node.
 */
import { openImageArchive } from "./archive.js";
import type { ImageArchive } from "./image-archive.js";
import type { PrebuiltLayerInput } from "./archive-writer.js";
import {
  type ContainerConfig,
  goArch,
  type HistoryEntry,
  MEDIA_TYPE_DOCKER_LAYER,
  MEDIA_TYPE_DOCKER_LAYER_GZIP,
  MEDIA_TYPE_OCI_LAYER,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_LAYER_ZSTD,
} from "./oci.js";

export interface BaseImage {
  /** Layers as streams over the base archive, with their digests. */
  layers: (PrebuiltLayerInput & { digest: string })[];
  /** The base's execution parameters (empty when it has none). */
  config: ContainerConfig;
  /** The base's history, when it records one. */
  history?: HistoryEntry[];
  architecture: string;
  os: string;
  variant?: string;
  /** Releases the base archive (the layers cannot be read after). */
  close(): Promise<void>;
}

/** Docker's layer media types and their OCI names; the blob bytes are the same. */
const OCI_LAYER_TYPE: Record<string, string> = {
  [MEDIA_TYPE_OCI_LAYER]: MEDIA_TYPE_OCI_LAYER,
  [MEDIA_TYPE_OCI_LAYER_GZIP]: MEDIA_TYPE_OCI_LAYER_GZIP,
  [MEDIA_TYPE_OCI_LAYER_ZSTD]: MEDIA_TYPE_OCI_LAYER_ZSTD,
  [MEDIA_TYPE_DOCKER_LAYER]: MEDIA_TYPE_OCI_LAYER,
  [MEDIA_TYPE_DOCKER_LAYER_GZIP]: MEDIA_TYPE_OCI_LAYER_GZIP,
};

/**
 * Opens a base image archive (OCI layout or docker-archive, layers
 * compressed or not) for the host's platform. Every layer is checked against
 * its digest and its diff_id (gzip and zstd layers decompressed as a
 * stream), since the new image's config repeats the base's diff_ids and
 * containerd would refuse the image only at unpack. Throws one line naming
 * the file for anything the result could not be built on.
 */
export async function readBaseImage(file: string, architecture: string = goArch()): Promise<BaseImage> {
  let img;
  try {
    img = await openImageArchive(file, { platform: { os: "linux", architecture }, diffIds: true });
  } catch (err) {
    throw new Error(`base image ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    return baseImageOf(img, file, architecture);
  } catch (err) {
    await img.close();
    throw err;
  }
}

function baseImageOf(img: ImageArchive, file: string, architecture: string): BaseImage {
  const { manifest, config } = img;
  const fail = (why: string): never => {
    throw new Error(`base image ${file}: ${why}`);
  };
  if (config.os !== "linux" || config.architecture !== architecture) {
    fail(`is for ${config.os}/${config.architecture}, the image is built for linux/${architecture}`);
  }
  const diffIds = config.rootfs?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== manifest.layers.length) {
    fail(`its config lists ${diffIds?.length ?? 0} diff_ids for ${manifest.layers.length} layers`);
  }
  const layers = manifest.layers.map((desc, i) => {
    const mediaType = OCI_LAYER_TYPE[desc.mediaType];
    if (!mediaType) fail(`layer ${i} has media type ${desc.mediaType}, which cannot be copied into an image (only tar, tar+gzip and tar+zstd layers)`);
    const blob = img.blob(desc.digest);
    if (!blob) fail(`layer ${i} blob ${desc.digest} is missing`);
    return { blob: blob!, digest: desc.digest, mediaType: mediaType!, diffId: diffIds![i]!, ...(desc.annotations ? { annotations: desc.annotations } : {}) };
  });
  return {
    layers,
    config: config.config ?? {},
    ...(Array.isArray(config.history) && config.history.length > 0 ? { history: config.history } : {}),
    architecture: config.architecture,
    os: config.os,
    ...(config.variant ? { variant: config.variant } : {}),
    close: () => img.close(),
  };
}

/** "NAME=value" -> "NAME" (a bare "NAME" names itself). */
function envName(entry: string): string {
  const eq = entry.indexOf("=");
  return eq === -1 ? entry : entry.slice(0, eq);
}

/**
 * The config of an image built on `base`, as a Dockerfile's FROM would give
 * it: every key set in `own` replaces the base's, except that Env is merged
 * by variable name (own values win, base order kept) and ExposedPorts,
 * Volumes and Labels are unions. Setting Entrypoint without Cmd drops the
 * base's Cmd, which was written as arguments for the base's entrypoint.
 */
export function mergeContainerConfig(base: ContainerConfig, own: ContainerConfig): ContainerConfig {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(own) as [keyof ContainerConfig, unknown][]) {
    if (value === undefined) continue;
    switch (key) {
      case "Env": {
        const env = [...(base.Env ?? [])];
        for (const entry of value as string[]) {
          const at = env.findIndex((e) => envName(e) === envName(entry));
          if (at === -1) env.push(entry);
          else env[at] = entry;
        }
        out.Env = env;
        break;
      }
      case "ExposedPorts":
      case "Volumes":
      case "Labels":
        out[key] = { ...(base[key] ?? {}), ...(value as object) };
        break;
      default:
        out[key] = value;
    }
  }
  if (own.Entrypoint !== undefined && own.Cmd === undefined) delete out.Cmd;
  return out as ContainerConfig;
}
