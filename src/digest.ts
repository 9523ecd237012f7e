/**
 * Content digests as OCI and containerd spell them. A leaf: the image
 * model, the archive readers and writers and containerd's unpacker (chain
 * IDs) all name content by these.
 */
import { createHash } from "node:crypto";

/** The OCI digest string ("sha256:<hex>") of some bytes. */
export function sha256Digest(buf: Buffer | Uint8Array | string): string {
  return "sha256:" + createHash("sha256").update(buf).digest("hex");
}
