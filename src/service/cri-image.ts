/**
 * CRI ImageService (runtime.v1) on the daemon's socket, for kubelet's
 * --image-service-endpoint. PullImage of a `nix:0/nix/store/...tar`
 * reference is resolved from the Nix store; every other call, and every
 * other pull, goes to containerd's CRI as raw bytes, so fields this
 * project does not model (the pod sandbox config, new CRI fields) arrive
 * untouched.
 */
import * as grpc from "@grpc/grpc-js";
import type * as protoLoader from "@grpc/proto-loader";
import { isNixImageRef } from "../image/reference.js";
import type { Logger } from "../log.js";
import { channelOptions, grpcTarget } from "../wire/channel.js";
import { loadDefinition } from "../wire/proto.js";
import { toStatus } from "../wire/status.js";

const SERVICE = "runtime.v1.ImageService";
const METHODS = ["ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"] as const;
type Method = (typeof METHODS)[number];

const identity = (b: Buffer) => b;

let codecCache: protoLoader.ServiceDefinition | undefined;

/** Encoders and decoders of the modelled messages (proto/cri/runtime/v1/image.proto). */
function codecs(): protoLoader.ServiceDefinition {
  if (codecCache) return codecCache;
  codecCache = loadDefinition("cri/runtime/v1/image.proto")[SERVICE] as protoLoader.ServiceDefinition;
  return codecCache;
}

/** A service definition that hands handlers the undecoded request bytes. */
function rawServiceDefinition(): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  for (const m of METHODS) {
    def[m] = {
      path: `/${SERVICE}/${m}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    };
  }
  return def;
}

/** Calls containerd's CRI with raw bytes. */
export class CriForwarder {
  private readonly client: grpc.Client;

  constructor(containerdAddress: string) {
    this.client = new grpc.Client(grpcTarget(containerdAddress), grpc.credentials.createInsecure(), channelOptions());
  }

  call(method: Method, req: Buffer, metadata = new grpc.Metadata(), deadline?: grpc.Deadline): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(`/${SERVICE}/${method}`, identity, identity, req, metadata, deadline ? { deadline } : {}, (err, res) =>
        err ? reject(err) : resolve(res!),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}

/** Resolves a nix reference into an image known to containerd; returns the image id. */
export interface NixPuller {
  pull(ref: string): Promise<string>;
}

export interface CriImageServiceOptions {
  forwarder: CriForwarder;
  puller: NixPuller;
  log: Logger;
}

export function addCriImageService(server: grpc.Server, o: CriImageServiceOptions): void {
  const c = codecs();
  const log = o.log.with({ service: "cri-image" });

  const forward = (m: Method): grpc.handleUnaryCall<Buffer, Buffer> => (call, callback) => {
    const deadline = call.getDeadline();
    o.forwarder.call(m, call.request, call.metadata, deadline === Infinity ? undefined : deadline).then(
      (res) => callback(null, res),
      (err: grpc.ServiceError) => {
        log.debug(`${m} forwarded call failed`, { code: grpc.status[err.code], error: err.details });
        callback(err, null);
      },
    );
  };

  const pull: grpc.handleUnaryCall<Buffer, Buffer> = (call, callback) => {
    let ref: string;
    try {
      const req = c.PullImage!.requestDeserialize(call.request) as { image?: { image?: string } };
      ref = req.image?.image ?? "";
    } catch (err) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: `cannot decode PullImageRequest: ${(err as Error).message}` }, null);
      return;
    }
    if (!isNixImageRef(ref)) {
      forward("PullImage")(call, callback);
      return;
    }
    const started = Date.now();
    o.puller.pull(ref).then(
      (id) => {
        log.info("pulled nix image", { ref, id, ms: Date.now() - started });
        callback(null, c.PullImage!.responseSerialize({ imageRef: id }));
      },
      (err: unknown) => {
        const status = toStatus(err);
        log.warn("nix image pull failed", { ref, code: grpc.status[status.code!], error: status.details });
        callback(status as grpc.ServiceError, null);
      },
    );
  };

  server.addService(rawServiceDefinition(), {
    ListImages: forward("ListImages"),
    ImageStatus: forward("ImageStatus"),
    PullImage: pull,
    RemoveImage: forward("RemoveImage"),
    ImageFsInfo: forward("ImageFsInfo"),
  });
}

/** Asks containerd's CRI for an image's id (undefined when CRI does not know it yet). */
export async function criImageId(f: CriForwarder, ref: string): Promise<string | undefined> {
  const c = codecs();
  const req = c.ImageStatus!.requestSerialize({ image: { image: ref } }) as Buffer;
  const res = c.ImageStatus!.responseDeserialize(await f.call("ImageStatus", req)) as { image?: { id?: string } | null };
  return res.image?.id || undefined;
}
