/**
 * containerd's diff service over gRPC (containerd.services.diff.v1): Apply
 * reads a layer blob from containerd's content store (in the caller's
 * namespace), decompresses it, mounts the given mounts inside containerd
 * and extracts the layer onto them, returning the uncompressed digest.
 */
import type { Mount } from "../snapshotter/snapshotter.js";
import { diffService } from "../wire/proto.js";
import { type ContainerdContext, ServiceClient, type WireDescriptor } from "./grpc.js";

export class DiffClient extends ServiceClient {
  constructor(ctx: ContainerdContext) {
    super(diffService(), ctx);
  }

  /** Applies the layer `diff` onto `mounts`; resolves with the applied (uncompressed) descriptor. */
  async apply(diff: WireDescriptor, mounts: readonly Mount[]): Promise<WireDescriptor> {
    const res = await this.unary<{ applied: WireDescriptor }>("Apply", { diff, mounts });
    return { ...res.applied, size: Number(res.applied.size) };
  }
}
