/**
 * What reading an image archive gives and takes: the shapes archive.ts
 * hands out and its two readers (oci-layout.ts, docker-archive.ts) fill in.
 */
import type { BlobSource } from "../containerd/content.js";
import type { ImageConfig, Index, Manifest, Platform } from "./oci.js";

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
