/**
 * Reading image archives: an OCI image layout tar (as written by
 * archive-writer.ts, or any other, e.g. skopeo's oci-archive) or a
 * docker-archive as `docker save` writes it. Layers are never held in
 * memory: the archive's members are indexed (archive-tar.ts) and blobs are
 * handed out as streams over their ranges of the file, so memory stays
 * bounded whatever the size of the layers.
 *
 * The formats themselves are read in oci-layout.ts and docker-archive.ts;
 * which image of several is taken, in select-manifest.ts.
 */
import buffer from "node:buffer";
import { indexArchive, verifyBlob } from "./archive-tar.js";
import { openDockerArchive } from "./docker-archive.js";
import type { ImageArchive, ReadOptions } from "./image-archive.js";
import { openOciLayout } from "./oci-layout.js";
import { readSource } from "./tar-index.js";

/** An archive read whole into memory (small archives: tests and tools). */
export interface ReadImage extends Omit<ImageArchive, "blob" | "digests" | "close"> {
  /** Every blob of the image (and, for an OCI layout, every blob in it), by digest. */
  blobs: Map<string, Buffer>;
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
