/**
 * What every client of containerd's gRPC API shares: the socket, the
 * namespace and the lease, both sent as gRPC metadata on every call
 * (containerd's namespaces/grpc.go reads `containerd-namespace`,
 * leases/grpc.go reads `containerd-lease`), and errors mapped back to the
 * core's typed errors (NotFound, AlreadyExists, ...) by src/wire/status.ts.
 */
import * as grpc from "@grpc/grpc-js";
import { channelOptions, grpcTarget } from "../wire/channel.js";
import { fromStatus } from "../wire/status.js";

export const DEFAULT_CONTAINERD_ADDRESS = "/run/containerd/containerd.sock";
export const DEFAULT_NAMESPACE = "default";

/** One connection's context: which containerd, which namespace, which lease (if any). */
export interface ContainerdContext {
  address: string;
  namespace: string;
  /** Set once a lease exists; everything created afterwards belongs to it. */
  lease?: string;
}

export function callMetadata(ctx: ContainerdContext): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("containerd-namespace", ctx.namespace);
  if (ctx.lease) md.set("containerd-lease", ctx.lease);
  return md;
}

/** A grpc-js client of one containerd service, with promise-returning unary calls. */
export class ServiceClient {
  readonly client: grpc.Client;

  constructor(
    ctor: grpc.ServiceClientConstructor,
    readonly ctx: ContainerdContext,
  ) {
    this.client = new ctor(grpcTarget(ctx.address), grpc.credentials.createInsecure(), channelOptions());
  }

  unary<Res>(method: string, req: object): Promise<Res> {
    return new Promise((resolve, reject) => {
      const fn = (this.client as unknown as Record<string, Function>)[method];
      if (!fn) throw new Error(`no gRPC method ${method}`);
      fn.call(this.client, req, callMetadata(this.ctx), (err: grpc.ServiceError | null, res: Res) => {
        if (err) reject(fromStatus(err));
        else resolve(res);
      });
    });
  }

  /** A bidirectional stream (content Write). */
  duplex<Req, Res>(method: string): grpc.ClientDuplexStream<Req, Res> {
    const fn = (this.client as unknown as Record<string, Function>)[method];
    if (!fn) throw new Error(`no gRPC method ${method}`);
    return fn.call(this.client, callMetadata(this.ctx)) as grpc.ClientDuplexStream<Req, Res>;
  }

  close(): void {
    this.client.close();
  }
}

/** containerd's wire descriptor (containerd.types.Descriptor). */
export interface WireDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}
