/**
 * A CRI client that drives containerd the way kubelet does: ImageService
 * calls to one endpoint (kubelet's --image-service-endpoint, ours), and
 * RuntimeService calls to containerd's socket.
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { grpcTarget } from "../../src/containerd/snapshots.js";
import { PROTO_DIR } from "../../src/service/proto.js";

const pkg = grpc.loadPackageDefinition(
  protoLoader.loadSync("cri/runtime/v1/runtime.proto", { keepCase: false, longs: Number, enums: String, defaults: true, includeDirs: [PROTO_DIR] }),
) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor; ImageService: grpc.ServiceClientConstructor } } };

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
