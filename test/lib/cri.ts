/**
 * A CRI client that drives containerd the way kubelet does: ImageService
 * calls to one endpoint (kubelet's --image-service-endpoint, ours), and
 * RuntimeService calls to containerd's socket.
 */
import * as grpc from "@grpc/grpc-js";
import { chmodSync, copyFileSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { buildLayer } from "../../src/image/layer.js";
import { grpcTarget } from "../../src/wire/channel.js";
import { loadProto } from "../../src/wire/proto.js";
import { fileEntriesFromDir } from "./host-tree.js";

/** The CRI RuntimeService the tests drive containerd with (test/proto/, next to the ImageService in proto/). */
const TEST_PROTO_DIR = fileURLToPath(new URL("../../../test/proto", import.meta.url));
const pkg = loadProto("cri/runtime/v1/runtime.proto", [TEST_PROTO_DIR]) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor; ImageService: grpc.ServiceClientConstructor } } };

type Call = (req: object, opts?: { timeoutMs?: number }) => Promise<Record<string, unknown>>;

function promisify(client: grpc.Client, methods: string[]): Record<string, Call> {
  const out: Record<string, Call> = {};
  for (const m of methods) {
    out[m] = (req, opts = {}) =>
      new Promise((resolve, reject) => {
        const fn = (client as unknown as Record<string, Function>)[m]!;
        fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + (opts.timeoutMs ?? 120_000) }, (err: grpc.ServiceError | null, res: Record<string, unknown>) =>
          err ? reject(err) : resolve(res),
        );
      });
  }
  return out;
}

export interface CriClients {
  image: Record<"ListImages" | "ImageStatus" | "PullImage" | "RemoveImage" | "ImageFsInfo", Call>;
  runtime: Record<
    "Version" | "RunPodSandbox" | "StopPodSandbox" | "RemovePodSandbox" | "CreateContainer" | "StartContainer" | "StopContainer" | "RemoveContainer" | "ContainerStatus",
    Call
  >;
  close(): void;
}

export function criClients(imageEndpoint: string, runtimeEndpoint: string): CriClients {
  const opts = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };
  const img = new pkg.runtime.v1.ImageService(grpcTarget(imageEndpoint), grpc.credentials.createInsecure(), opts);
  const rt = new pkg.runtime.v1.RuntimeService(grpcTarget(runtimeEndpoint), grpc.credentials.createInsecure(), opts);
  return {
    image: promisify(img, ["ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"]) as CriClients["image"],
    runtime: promisify(rt, [
      "Version",
      "RunPodSandbox",
      "StopPodSandbox",
      "RemovePodSandbox",
      "CreateContainer",
      "StartContainer",
      "StopContainer",
      "RemoveContainer",
      "ContainerStatus",
    ]) as CriClients["runtime"],
    close() {
      img.close();
      rt.close();
    },
  };
}

/** A host-network pod sandbox config, as kubelet sends for hostNetwork: true (no hostname). */
export function hostNetworkSandbox(name: string, uid: string, logDir: string): Record<string, unknown> {
  return {
    metadata: { name, uid, namespace: "default", attempt: 0 },
    logDirectory: logDir,
    labels: { "io.kubernetes.pod.name": name },
    linux: { securityContext: { namespaceOptions: { network: "NODE", pid: "CONTAINER", ipc: "POD" } } },
  };
}

/** The sandbox image of the CRI tests, built locally (no registry). */
export const PAUSE = "localhost/nix-snapshotter-test/pause:1";
export const PAUSE_ENTRYPOINT = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

/**
 * A one-layer busybox image archive; `files` (path -> content) make its
 * layer differ from other busybox images' (identical layers share a snapshot).
 */
export async function busyboxArchive(dir: string, name: string, entrypoint: string[], ref: string, files: Record<string, string> = {}): Promise<string> {
  const root = path.join(dir, `${name}-root`);
  mkdirSync(path.join(root, "bin"), { recursive: true });
  copyFileSync("/bin/busybox", path.join(root, "bin/busybox"));
  chmodSync(path.join(root, "bin/busybox"), 0o755);
  symlinkSync("busybox", path.join(root, "bin/sh"));
  for (const [p, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
    writeFileSync(path.join(root, p), content);
  }
  const archive = path.join(dir, `${name}.tar`);
  await writeImageArchive({ layers: [{ tar: await buildLayer(await fileEntriesFromDir(root)) }], config: { Entrypoint: entrypoint }, ref }, archive);
  return archive;
}

/** The gRPC status name a call ends with ("OK" when it succeeds), and its message. */
export async function grpcCode(p: Promise<unknown>): Promise<{ code: string; details: string }> {
  try {
    await p;
    return { code: "OK", details: "" };
  } catch (err) {
    const e = err as grpc.ServiceError;
    return { code: grpc.status[e.code] ?? String(e.code), details: e.details };
  }
}

/** Polls fn until it returns something other than undefined. */
export async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
