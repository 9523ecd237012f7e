/**
 * A Snapshotter over gRPC: talks containerd.services.snapshots.v1 to either
 * a proxy snapshotter's socket (ours) or containerd's own snapshots service,
 * where `snapshotter` picks the backend ("nix", "overlayfs") and the
 * namespace (and lease, if any) travel as gRPC metadata, as containerd's Go
 * client sends them. The unpacker (unpack.ts) drives containerd's service
 * with it; tests and benchmarks drive our daemon.
 */
import type { CreateOptions, Info, Mount, Snapshotter, Usage } from "../snapshotter/snapshotter.js";
import { fromWireInfo, fromWireMount, fromWireUsage, toWireInfo, type WireInfo, type WireMount, type WireUsage } from "../wire/convert.js";
import { snapshotsService } from "../wire/proto.js";
import { ServiceClient } from "./grpc.js";

export interface SnapshotsClientOptions {
  /** Unix socket path (or a grpc-js target such as "unix:/run/x.sock"). */
  address: string;
  /** The snapshotter name containerd's service dispatches on; ignored by a proxy. */
  snapshotter?: string;
  /** containerd namespace, sent as the containerd-namespace header. */
  namespace?: string;
  /** containerd lease the snapshots created belong to, sent as the containerd-lease header. */
  lease?: string;
  /** A connection of its own (grpc-js otherwise shares one per target within a process). */
  ownConnection?: boolean;
}

export class SnapshotsClient extends ServiceClient implements Snapshotter {
  private readonly snapshotter: string;

  constructor(opts: SnapshotsClientOptions) {
    super(snapshotsService(), { address: opts.address, namespace: opts.namespace ?? "", ...(opts.lease ? { lease: opts.lease } : {}) }, opts);
    this.snapshotter = opts.snapshotter ?? "";
  }

  private call<Res>(method: string, req: object, signal?: AbortSignal): Promise<Res> {
    return this.unary<Res>(method, { snapshotter: this.snapshotter, ...req }, signal);
  }

  async stat(key: string): Promise<Info> {
    const res = await this.call<{ info: WireInfo }>("Stat", { key });
    return fromWireInfo(res.info);
  }

  async update(info: Pick<Info, "name" | "labels">, fieldPaths: string[] = []): Promise<Info> {
    const wire = toWireInfo({ ...info, parent: "", kind: "active", created: 0n, updated: 0n });
    const res = await this.call<{ info: WireInfo }>("Update", {
      info: { name: wire.name, labels: wire.labels },
      updateMask: fieldPaths.length ? { paths: fieldPaths } : null,
    });
    return fromWireInfo(res.info);
  }

  async usage(key: string): Promise<Usage> {
    return fromWireUsage(await this.call<WireUsage>("Usage", { key }));
  }

  async mounts(key: string): Promise<Mount[]> {
    const res = await this.call<{ mounts: WireMount[] }>("Mounts", { key });
    return res.mounts.map(fromWireMount);
  }

  async prepare(key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    const res = await this.call<{ mounts: WireMount[] }>("Prepare", { key, parent, labels: opts.labels ?? {} }, opts.signal);
    return res.mounts.map(fromWireMount);
  }

  async view(key: string, parent: string, opts: CreateOptions = {}): Promise<Mount[]> {
    const res = await this.call<{ mounts: WireMount[] }>("View", { key, parent, labels: opts.labels ?? {} }, opts.signal);
    return res.mounts.map(fromWireMount);
  }

  async commit(name: string, key: string, opts: CreateOptions = {}): Promise<void> {
    await this.call("Commit", { name, key, labels: opts.labels ?? {} });
  }

  async remove(key: string): Promise<void> {
    await this.call("Remove", { key });
  }

  /** The whole listing arrives before `fn` sees the first snapshot. */
  async walk(fn: (info: Info) => void | Promise<void>, filters: string[] = []): Promise<void> {
    const batches = await this.collect<{ info: WireInfo[] }>("List", { snapshotter: this.snapshotter, filters });
    for (const batch of batches) for (const w of batch.info) await fn(fromWireInfo(w));
  }

  async cleanup(): Promise<void> {
    await this.call("Cleanup", {});
  }

  override async close(): Promise<void> {
    super.close();
  }
}
