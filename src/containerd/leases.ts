/**
 * containerd's leases over gRPC (containerd.services.leases.v1). Content,
 * ingests and snapshots created by a call carrying the lease's id (the
 * containerd-lease header, see grpc.ts) are kept from the GC until the lease
 * is deleted; deleting it lets the GC take whatever nothing else references.
 */
import { randomBytes } from "node:crypto";
import { leasesService } from "../wire/proto.js";
import { type ContainerdContext, ServiceClient } from "./grpc.js";

/** containerd's GC drops a lease whose label holds a time in the past (metadata/gc.go). */
export const LEASE_EXPIRE_LABEL = "containerd.io/gc.expire";

export interface Lease {
  id: string;
  labels: Record<string, string>;
}

export class LeasesClient extends ServiceClient {
  constructor(ctx: ContainerdContext) {
    super(leasesService(), ctx);
  }

  /**
   * A new lease named `<prefix>-<random>`. With `expireMs` it also carries
   * an expiry, so a process killed before deleting it cannot pin its
   * resources forever (containerd's own client uses 24 h).
   */
  async create(prefix: string, expireMs?: number): Promise<Lease> {
    const id = `${prefix}-${randomBytes(6).toString("hex")}`;
    const labels: Record<string, string> = {};
    if (expireMs !== undefined) labels[LEASE_EXPIRE_LABEL] = new Date(Date.now() + expireMs).toISOString().replace(/\.\d+Z$/, "Z");
    const res = await this.unary<{ lease: Lease }>("Create", { id, labels });
    return { id: res.lease.id, labels: res.lease.labels ?? {} };
  }

  /** With sync, returns after the garbage collection the deletion triggers. */
  async delete(id: string, sync = false): Promise<void> {
    await this.unary("Delete", { id, sync });
  }

  /** type: "content" (id a digest) or "snapshots/<snapshotter>" (id a key). */
  async addResource(lease: string, type: string, id: string): Promise<void> {
    await this.unary("AddResource", { id: lease, resource: { id, type } });
  }
}
