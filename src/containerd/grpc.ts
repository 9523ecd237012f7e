/**
 * What every client of containerd's gRPC API shares: the socket, the
 * namespace and the lease, both sent as gRPC metadata on every call
 * (containerd's namespaces/grpc.go reads `containerd-namespace`,
 * leases/grpc.go reads `containerd-lease`), and errors mapped back to the
 * core's typed errors (NotFound, AlreadyExists, ...) by src/wire/status.ts.
 */
import * as grpc from "@grpc/grpc-js";
import { type ChannelOptions, channelOptions, grpcTarget } from "../wire/channel.js";
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

function callMetadata(ctx: ContainerdContext): grpc.Metadata {
  const md = new grpc.Metadata();
  // containerd's services need a namespace; our daemon's does without.
  if (ctx.namespace) md.set("containerd-namespace", ctx.namespace);
  if (ctx.lease) md.set("containerd-lease", ctx.lease);
  return md;
}

type Method = (...args: unknown[]) => unknown;

/** A grpc-js client of one containerd service (or our daemon's snapshots service), with promise-returning calls. */
export class ServiceClient {
  readonly client: grpc.Client;

  constructor(
    ctor: grpc.ServiceClientConstructor,
    readonly ctx: ContainerdContext,
    channel: ChannelOptions = {},
  ) {
    this.client = new ctor(grpcTarget(ctx.address), grpc.credentials.createInsecure(), channelOptions(channel));
  }

  private method(name: string): Method {
    const fn = (this.client as unknown as Record<string, Method>)[name];
    if (!fn) throw new Error(`no gRPC method ${name}`);
    return fn.bind(this.client);
  }

  /** One request, one response; aborting `signal` cancels the call (the server stops its work). */
  unary<Res>(method: string, req: object, signal?: AbortSignal): Promise<Res> {
    return new Promise((resolve, reject) => {
      const call = this.method(method)(req, callMetadata(this.ctx), (err: grpc.ServiceError | null, res: Res) => {
        signal?.removeEventListener("abort", cancel);
        if (err) reject(fromStatus(err));
        else resolve(res);
      }) as grpc.ClientUnaryCall;
      const cancel = () => call.cancel();
      if (signal?.aborted) cancel();
      else signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  /** A response stream (snapshots List), collected; errors mapped as unary's. */
  collect<Res>(method: string, req: object): Promise<Res[]> {
    return new Promise((resolve, reject) => {
      const stream = this.method(method)(req, callMetadata(this.ctx)) as grpc.ClientReadableStream<Res>;
      const out: Res[] = [];
      stream.on("data", (msg: Res) => out.push(msg));
      stream.on("error", (err) => reject(fromStatus(err)));
      stream.on("end", () => resolve(out));
    });
  }

  /** A bidirectional stream (content Write). */
  duplex<Req, Res>(method: string): grpc.ClientDuplexStream<Req, Res> {
    return this.method(method)(callMetadata(this.ctx)) as grpc.ClientDuplexStream<Req, Res>;
  }

  /** Resolves once the channel is connected (or rejects after the deadline). */
  waitForReady(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
    });
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
