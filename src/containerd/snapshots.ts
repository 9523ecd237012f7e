/**
 * A Snapshotter over gRPC: talks containerd.services.snapshots.v1 to either
 * a proxy snapshotter's socket (ours) or containerd's own snapshots service,
 * where `snapshotter` picks the backend ("nix", "overlayfs") and the
 * namespace travels as gRPC metadata, as containerd's Go client sends it.
 */
import * as grpc from "@grpc/grpc-js";
import { channelOptions, grpcTarget } from "../wire/channel.js";
import { fromWireInfo, fromWireMount, fromWireUsage, toWireInfo, type WireInfo, type WireMount, type WireUsage } from "../wire/convert.js";
import { snapshotsService } from "../wire/proto.js";
import { fromStatus } from "../wire/status.js";
import type { CreateOptions, Info, Mount, Snapshotter, Usage } from "../snapshotter/snapshotter.js";

export interface SnapshotsClientOptions {
  /** Unix socket path (or a grpc-js target such as "unix:/run/x.sock"). */
  address: string;
  /** The snapshotter name containerd's service dispatches on; ignored by a proxy. */
  snapshotter?: string;
  /** containerd namespace, sent as the containerd-namespace header. */
  namespace?: string;
  /** A connection of its own (grpc-js otherwise shares one per target within a process). */
  ownConnection?: boolean;
}

export class SnapshotsClient implements Snapshotter {
  private readonly client: grpc.Client;
  private readonly snapshotter: string;
  private readonly metadata: grpc.Metadata;

  constructor(opts: SnapshotsClientOptions) {
    const Ctor = snapshotsService();
    this.client = new Ctor(grpcTarget(opts.address), grpc.credentials.createInsecure(), channelOptions(opts));
    this.snapshotter = opts.snapshotter ?? "";
    this.metadata = new grpc.Metadata();
    if (opts.namespace) this.metadata.set("containerd-namespace", opts.namespace);
  }

  private call<Res>(method: string, req: object, signal?: AbortSignal): Promise<Res> {
    return new Promise((resolve, reject) => {
      const fn = (this.client as unknown as Record<string, Function>)[method]!;
      const call = fn.call(this.client, { snapshotter: this.snapshotter, ...req }, this.metadata, (err: grpc.ServiceError | null, res: Res) => {
        signal?.removeEventListener("abort", cancel);
        if (err) reject(fromStatus(err));
        else resolve(res);
      }) as grpc.ClientUnaryCall;
      // A caller that gives up cancels the call; the server stops its work.
      const cancel = () => call.cancel();
      if (signal?.aborted) cancel();
      else signal?.addEventListener("abort", cancel, { once: true });
    });
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

  walk(fn: (info: Info) => void | Promise<void>, filters: string[] = []): Promise<void> {
    return new Promise((resolve, reject) => {
      const stream = (this.client as unknown as Record<string, Function>)["List"]!.call(
        this.client,
        { snapshotter: this.snapshotter, filters },
        this.metadata,
      ) as grpc.ClientReadableStream<{ info: WireInfo[] }>;
      const infos: Info[] = [];
      stream.on("data", (msg: { info: WireInfo[] }) => {
        for (const w of msg.info) infos.push(fromWireInfo(w));
      });
      stream.on("error", (err) => reject(fromStatus(err)));
      stream.on("end", () => {
        (async () => {
          for (const info of infos) await fn(info);
        })().then(resolve, reject);
      });
    });
  }

  async cleanup(): Promise<void> {
    await this.call("Cleanup", {});
  }

  async close(): Promise<void> {
    this.client.close();
  }

  /** Resolves once the channel is connected (or rejects after the deadline). */
  waitForReady(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
    });
  }
}
