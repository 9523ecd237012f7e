/**
 * Unpacks an image's layers into a snapshotter through containerd's APIs,
 * the way containerd's own unpacker does it (pkg/unpack/unpacker.go in 1.7):
 *
 *   for layer n with diff ID d(n):  chainID(n) = sha256(chainID(n-1) + " " + d(n))
 *   - Stat(chainID) exists: the layer is already unpacked, skip it;
 *   - Prepare("extract-<random> <chainID>", parent chainID(n-1), labels)
 *     where labels are the layer's `containerd.io/snapshot/*` annotations
 *     plus `containerd.io/snapshot.ref: <chainID>`: this is how a layer's
 *     annotations reach the snapshotter (and what `ctr`'s local import and
 *     pull never do);
 *   - diff Apply(layer, mounts): containerd extracts the blob onto them and
 *     returns the uncompressed digest, which must equal d(n);
 *   - Commit(chainID, key, same labels); AlreadyExists means a concurrent
 *     unpack won, which is as good;
 *   - label the layer blob `containerd.io/uncompressed: d(n)`.
 * A failed step removes the extraction snapshot. Everything runs under the
 * caller's lease (the context's lease header), so the committed snapshots
 * are safe from the GC until something else references them.
 */
import { randomBytes } from "node:crypto";
import { AlreadyExistsError, NotFoundError } from "../errors.js";
import { sha256Digest } from "../digest.js";
import type { Mount } from "../snapshotter/snapshotter.js";
import type { ContentClient } from "./content.js";
import type { DiffClient } from "./diff.js";
import type { ContainerdContext, WireDescriptor } from "./grpc.js";
import type { LeasesClient } from "./leases.js";
import { SnapshotsClient } from "./snapshots.js";

/** Annotations with this prefix are handed to the snapshotter (snapshots.FilterInheritedLabels). */
export const INHERITED_LABEL_PREFIX = "containerd.io/snapshot/";
/** The chain ID a snapshot is being unpacked for (remote snapshotters key on it). */
export const SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref";
/** On a layer blob: its uncompressed digest, once an Apply has verified it. */
export const UNCOMPRESSED_LABEL = "containerd.io/uncompressed";

/** image-spec identity.ChainID: the first diff ID, then sha256("<parent> <diff ID>"). */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(out.length === 0 ? d : sha256Digest(`${out[out.length - 1]} ${d}`));
  return out;
}

/** The labels containerd's unpacker gives a layer's snapshot. */
export function snapshotLabels(annotations: Record<string, string> | undefined, chainId: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(annotations ?? {})) if (k.startsWith(INHERITED_LABEL_PREFIX)) labels[k] = v;
  labels[SNAPSHOT_REF_LABEL] = chainId;
  return labels;
}

/** Whether containerd's snapshotter has the snapshot. */
async function exists(sn: SnapshotsClient, key: string): Promise<boolean> {
  try {
    await sn.stat(key);
    return true;
  } catch (err) {
    if (err instanceof NotFoundError) return false;
    throw err;
  }
}

export interface UnpackLayer {
  /** The layer blob as the manifest describes it (annotations included). */
  desc: WireDescriptor;
  /** Its diff ID from the image config. */
  diffId: string;
}

export interface UnpackOptions {
  ctx: ContainerdContext;
  snapshotter: string;
  content: ContentClient;
  diff: DiffClient;
  leases: LeasesClient;
  /** Told about each layer when it is done. */
  onLayer?: (i: number, chainId: string, state: "unpacked" | "present") => void;
  signal?: AbortSignal;
}

export interface UnpackResult {
  chainIds: string[];
  unpacked: number;
  present: number;
}

function withContext<E extends Error>(err: E, prefix: string): E {
  err.message = `${prefix}: ${err.message}`;
  return err;
}

export async function unpackLayers(layers: readonly UnpackLayer[], o: UnpackOptions): Promise<UnpackResult> {
  const chain = chainIds(layers.map((l) => l.diffId));
  // Under the context's lease: the snapshots are safe from the GC.
  const sn = new SnapshotsClient({ ...o.ctx, snapshotter: o.snapshotter });
  const result: UnpackResult = { chainIds: chain, unpacked: 0, present: 0 };
  try {
    for (const [i, layer] of layers.entries()) {
      o.signal?.throwIfAborted();
      const chainId = chain[i]!;
      const parent = i === 0 ? "" : chain[i - 1]!;
      try {
        const state = await unpackOne(sn, layer, chainId, parent, o);
        result[state]++;
        o.onLayer?.(i, chainId, state);
      } catch (err) {
        throw err instanceof Error ? withContext(err, `unpacking layer ${i + 1}/${layers.length} (${layer.desc.digest}) into ${o.snapshotter}`) : err;
      }
    }
  } finally {
    await sn.close();
  }
  return result;
}

async function unpackOne(sn: SnapshotsClient, layer: UnpackLayer, chainId: string, parent: string, o: UnpackOptions): Promise<"unpacked" | "present"> {
  const present = async () => {
    // Hold it under our lease until the image record references it.
    await o.leases.addResource(o.ctx.lease!, `snapshots/${o.snapshotter}`, chainId);
    return "present" as const;
  };
  if (await exists(sn, chainId)) return present();

  const labels = snapshotLabels(layer.desc.annotations, chainId);
  let key = "";
  let mounts: Mount[] | undefined;
  for (let attempt = 1; attempt <= 3 && !mounts; attempt++) {
    // containerd's snapshots.UnpackKeyFormat: "extract-<unique> <chainID>".
    key = `extract-${randomBytes(8).toString("base64url")} ${chainId}`;
    try {
      mounts = await sn.prepare(key, parent, { labels });
    } catch (err) {
      // A key collision, or another unpack of the same chain finished first.
      if (!(err instanceof AlreadyExistsError)) throw err;
      if (await exists(sn, chainId)) return present();
    }
  }
  if (!mounts) throw new Error(`could not prepare an extraction snapshot for ${chainId}`);

  let committed = false;
  try {
    o.signal?.throwIfAborted();
    const applied = await o.diff.apply({ mediaType: layer.desc.mediaType, digest: layer.desc.digest, size: layer.desc.size }, mounts);
    if (applied.digest !== layer.diffId) {
      throw new Error(`the layer's uncompressed digest is ${applied.digest}, the image config says ${layer.diffId}`);
    }
    try {
      await sn.commit(chainId, key, { labels });
      committed = true;
    } catch (err) {
      // Another unpack committed the same chain first: as good as ours.
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
  } finally {
    if (!committed) await sn.remove(key).catch(() => undefined);
  }
  if (!committed) return present();
  await o.content.setLabels(layer.desc.digest, { [UNCOMPRESSED_LABEL]: layer.diffId });
  return "unpacked";
}
