/**
 * What one call's labels may be: containerd's per-label bound and our own
 * per-call bounds. Apart from the metadata store so that image building
 * (nix2container) can refuse, at build time, annotations the daemon would
 * refuse on Prepare, without loading the database.
 */
import { InvalidArgumentError } from "../errors.js";

/** containerd refuses a label whose key and value together exceed this. */
export const MAX_LABEL_BYTES = 4096;
/**
 * Bounds on one call's labels. containerd sets none, but our gRPC server
 * accepts messages up to 64 MiB, and every label is stored and parsed again
 * on each List: a stranger's request must not buy unbounded work. A nix
 * layer carries one label per store path; these leave room for closures of
 * over 100,000 paths (which also carry nix-closure).
 */
export const MAX_LABELS = 131_072;
export const MAX_LABELS_TOTAL_BYTES = 16 * 1024 * 1024;

export function validateLabels(labels: Record<string, string>): void {
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) {
    throw new InvalidArgumentError(`${entries.length} labels: at most ${MAX_LABELS} are accepted per snapshot`);
  }
  let total = 0;
  for (const [k, v] of entries) {
    if (k === "") throw new InvalidArgumentError("label key must not be empty");
    const bytes = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (bytes > MAX_LABEL_BYTES) {
      throw new InvalidArgumentError(
        `label ${JSON.stringify(k.slice(0, 64))}: key and value exceed ${MAX_LABEL_BYTES} bytes`,
      );
    }
    total += bytes;
  }
  if (total > MAX_LABELS_TOTAL_BYTES) {
    throw new InvalidArgumentError(`labels total ${total} bytes: at most ${MAX_LABELS_TOTAL_BYTES} are accepted per snapshot`);
  }
}
