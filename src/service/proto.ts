/**
 * Loads the wire-compatible .proto files under proto/ (shipped with the
 * package) into grpc-js service definitions. Field names are camelCased;
 * int64 arrive as numbers; enums as their names.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

/** proto/ sits three levels above build/src/service/. */
export const PROTO_DIR = fileURLToPath(new URL("../../../proto", import.meta.url));

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

const cache = new Map<string, grpc.GrpcObject>();

export function loadProto(file: string): grpc.GrpcObject {
  let obj = cache.get(file);
  if (!obj) {
    const def = protoLoader.loadSync(file, LOADER_OPTIONS);
    obj = grpc.loadPackageDefinition(def);
    cache.set(file, obj);
  }
  return obj;
}

/** Walks a dotted package path ("containerd.services.snapshots.v1.Snapshots"). */
export function lookup<T>(obj: grpc.GrpcObject, dotted: string): T {
  let cur: unknown = obj;
  for (const part of dotted.split(".")) {
    cur = (cur as Record<string, unknown>)[part];
    if (cur === undefined) throw new Error(`proto: ${dotted} not found`);
  }
  return cur as T;
}

export function snapshotsService(): grpc.ServiceClientConstructor {
  return lookup(loadProto("containerd/services/snapshots/v1/snapshots.proto"), "containerd.services.snapshots.v1.Snapshots");
}
