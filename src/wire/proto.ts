/**
 * Loads the wire-compatible .proto files under proto/ (shipped with the
 * package), with one set of proto-loader options for every service we
 * serve or call: field names are camelCased, int64 arrive as numbers,
 * enums as their names, unset fields as their defaults.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

/** proto/ sits three levels above build/src/wire/. */
const PROTO_DIR = fileURLToPath(new URL("../../../proto", import.meta.url));

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

const definitions = new Map<string, protoLoader.PackageDefinition>();
const packages = new Map<string, grpc.GrpcObject>();

/**
 * The message codecs of a .proto file (relative to PROTO_DIR, or to one of
 * `includeDirs`, which are searched first).
 */
export function loadDefinition(file: string, includeDirs: readonly string[] = []): protoLoader.PackageDefinition {
  const id = [file, ...includeDirs].join("\0");
  let def = definitions.get(id);
  if (!def) {
    def = protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs: [...includeDirs, PROTO_DIR] });
    definitions.set(id, def);
  }
  return def;
}

/** A .proto file as grpc-js client constructors and service definitions. */
export function loadProto(file: string, includeDirs: readonly string[] = []): grpc.GrpcObject {
  const id = [file, ...includeDirs].join("\0");
  let obj = packages.get(id);
  if (!obj) {
    obj = grpc.loadPackageDefinition(loadDefinition(file, includeDirs));
    packages.set(id, obj);
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

/** The grpc-js client constructor (and, as .service, the definition) of a service in a .proto file. */
function serviceOf(file: string, service: string): grpc.ServiceClientConstructor {
  return lookup(loadProto(file), service);
}

export const snapshotsService = () => serviceOf("containerd/services/snapshots/v1/snapshots.proto", "containerd.services.snapshots.v1.Snapshots");
export const contentService = () => serviceOf("containerd/services/content/v1/content.proto", "containerd.services.content.v1.Content");
export const diffService = () => serviceOf("containerd/services/diff/v1/diff.proto", "containerd.services.diff.v1.Diff");
export const imagesService = () => serviceOf("containerd/services/images/v1/images.proto", "containerd.services.images.v1.Images");
export const leasesService = () => serviceOf("containerd/services/leases/v1/leases.proto", "containerd.services.leases.v1.Leases");
