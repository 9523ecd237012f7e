/**
 * Serves any Snapshotter as containerd.services.snapshots.v1.Snapshots: the
 * protocol containerd speaks to a proxy snapshotter. The messages' encoding
 * and the error mapping come from src/wire/, which the clients share.
 */
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../log.js";
import type { Info, Snapshotter } from "../snapshotter/snapshotter.js";
import { encodeInfo, encodeInfoResponse, encodeListResponse, encodeMountsResponse } from "../wire/codec.js";
import { toWireInfo, toWireUsage, type WireInfo } from "../wire/convert.js";
import { snapshotsService } from "../wire/proto.js";
import { toStatus } from "../wire/status.js";

/** The responses codec.ts encodes: their bytes pass through. */
function withPreEncodedResponses(def: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = { ...def };
  for (const m of ["Prepare", "View", "Mounts", "Stat", "Update", "List"]) {
    out[m] = { ...def[m]!, responseSerialize: (v: unknown) => v as Buffer };
  }
  return out;
}

/**
 * An Info's encoding, kept for as long as the Info object lives: the
 * overlay snapshotter's read index hands out the same object until the
 * snapshot changes.
 */
const encodedInfos = new WeakMap<Info, Buffer>();

function infoBytes(info: Info): Buffer {
  let b = encodedInfos.get(info);
  if (!b) {
    b = encodeInfo(toWireInfo(info));
    encodedInfos.set(info, b);
  }
  return b;
}

/** containerd's snapshots service sends List results in batches of this size. */
const LIST_BATCH = 100;

type Unary<Req, Res> = grpc.handleUnaryCall<Req, Res>;

export function addSnapshotsService(server: grpc.Server, sn: Snapshotter, log: Logger): void {
  const namespace = (call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>) =>
    (call.metadata.get("containerd-namespace")[0] as string | undefined) ?? undefined;

  function unary<Req, Res>(
    method: string,
    keyOf: (req: Req) => string | undefined,
    fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  ): Unary<Req, Res> {
    return (call, callback) => {
      const started = process.hrtime.bigint();
      const key = keyOf(call.request);
      fn(call.request, call).then(
        (res) => {
          if (log.enabled("debug")) {
            const ms = Number(process.hrtime.bigint() - started) / 1e6;
            log.debug(method, { key, namespace: namespace(call), ms: ms.toFixed(2) });
          }
          callback(null, res);
        },
        (err: unknown) => {
          const status = toStatus(err);
          // NotFound/AlreadyExists are the protocol at work (the unpacker
          // probes with Stat and Prepare); anything unknown is a fault.
          const level = status.code === grpc.status.UNKNOWN ? "error" : "debug";
          log[level](`${method} failed`, { key, namespace: namespace(call), code: grpc.status[status.code!], error: status.details });
          callback(status as grpc.ServiceError, null);
        },
      );
    };
  }

  interface KeyReq { key: string }
  interface CreateReq { key: string; parent: string; labels: Record<string, string> }

  /** Prepare and View may realise store paths: a caller that gives up (cancel, deadline) stops that work. */
  function abortedWith(call: grpc.ServerUnaryCall<unknown, unknown>): AbortSignal {
    const ac = new AbortController();
    call.once("cancelled", () => ac.abort());
    return ac.signal;
  }

  const handlers: grpc.UntypedServiceImplementation = {
    Prepare: unary<CreateReq, Buffer>("prepare", (r) => r.key, async (r, call) =>
      encodeMountsResponse(await sn.prepare(r.key, r.parent, { labels: r.labels, signal: abortedWith(call) })),
    ),
    View: unary<CreateReq, Buffer>("view", (r) => r.key, async (r, call) =>
      encodeMountsResponse(await sn.view(r.key, r.parent, { labels: r.labels, signal: abortedWith(call) })),
    ),
    Mounts: unary<KeyReq, Buffer>("mounts", (r) => r.key, async (r) => encodeMountsResponse(await sn.mounts(r.key))),
    Commit: unary<{ name: string; key: string; labels: Record<string, string> }, unknown>("commit", (r) => r.key, async (r) => {
      await sn.commit(r.name, r.key, { labels: r.labels });
      return {};
    }),
    Remove: unary<KeyReq, unknown>("remove", (r) => r.key, async (r) => {
      await sn.remove(r.key);
      return {};
    }),
    Stat: unary<KeyReq, Buffer>("stat", (r) => r.key, async (r) => encodeInfoResponse(infoBytes(await sn.stat(r.key)))),
    Update: unary<{ info: WireInfo | null; updateMask: { paths: string[] } | null }, Buffer>(
      "update",
      (r) => r.info?.name,
      async (r) => {
        const info = r.info ?? { name: "", labels: {} };
        const updated = await sn.update({ name: info.name, labels: info.labels ?? {} }, r.updateMask?.paths ?? []);
        return encodeInfoResponse(infoBytes(updated));
      },
    ),
    Usage: unary<KeyReq, unknown>("usage", (r) => r.key, async (r) => {
      return toWireUsage(await sn.usage(r.key));
    }),
    Cleanup: unary<unknown, unknown>("cleanup", () => undefined, async () => {
      await sn.cleanup();
      return {};
    }),
    List: (call: grpc.ServerWritableStream<{ filters: string[] }, unknown>) => {
      let batch: Buffer[] = [];
      sn.walk((info) => {
        // Not infoBytes(): walk's Info objects are new on every List, and
        // keeping their bytes in the WeakMap costs more than it saves.
        batch.push(encodeInfo(toWireInfo(info)));
        if (batch.length >= LIST_BATCH) {
          call.write(encodeListResponse(batch));
          batch = [];
        }
      }, call.request.filters).then(
        () => {
          if (batch.length > 0) call.write(encodeListResponse(batch));
          log.debug("list", { namespace: namespace(call), filters: call.request.filters.join(" | ") || undefined });
          call.end();
        },
        (err: unknown) => {
          const status = toStatus(err);
          log.debug("list failed", { code: grpc.status[status.code!], error: status.details });
          call.emit("error", status);
        },
      );
    },
  };
  server.addService(withPreEncodedResponses(snapshotsService().service), handlers);
}
