/**
 * containerd's content store over gRPC (containerd.services.content.v1).
 *
 * Writing a blob follows containerd's content server
 * (services/content/contentserver Write): the first message names an
 * ingest `ref` and the expected size and digest; if the store already holds
 * that digest the server answers AlreadyExists (and adds the blob to the
 * caller's lease); otherwise STAT reports how much of the ingest exists,
 * WRITE messages append at that offset and COMMIT verifies size and digest
 * and stores the blob with its labels, all in one stream.
 */
import type * as grpc from "@grpc/grpc-js";
import { AlreadyExistsError } from "../errors.js";
import { fromStatus } from "../service/status.js";
import { loadProto, lookup } from "../service/proto.js";
import { type ContainerdContext, ServiceClient } from "./grpc.js";

/** Bytes per WRITE message; containerd accepts up to 16 MiB per message. */
const CHUNK = 1024 * 1024;

interface WriteRequest {
  action: "STAT" | "WRITE" | "COMMIT";
  ref: string;
  total?: number;
  expected?: string;
  offset?: number;
  data?: Buffer;
  labels?: Record<string, string>;
}

interface WriteResponse {
  action: string;
  offset: number;
  total: number;
  digest: string;
}

export class ContentClient extends ServiceClient {
  constructor(ctx: ContainerdContext) {
    super(lookup(loadProto("containerd/services/content/v1/content.proto"), "containerd.services.content.v1.Content"), ctx);
  }

  /** Sets (or, with an empty value, removes) the given labels and no others. */
  async setLabels(digest: string, labels: Record<string, string>): Promise<void> {
    const paths = Object.keys(labels).map((k) => `labels.${k}`);
    if (paths.length === 0) return;
    await this.unary("Update", { info: { digest, labels }, updateMask: { paths } });
  }

  /**
   * Stores `data` under `digest` with `labels`. Returns false when the store
   * already had it (its labels are then left alone: set them with setLabels).
   */
  async write(ref: string, digest: string, data: Buffer, labels: Record<string, string> = {}): Promise<boolean> {
    const stream = this.duplex<WriteRequest, WriteResponse>("Write");
    // Strictly one response per request: a queue and a wake-up are enough.
    const queue: WriteResponse[] = [];
    let failure: Error | undefined;
    let ended = false;
    let notify: (() => void) | undefined;
    const poke = () => {
      const n = notify;
      notify = undefined;
      n?.();
    };
    stream.on("data", (r: WriteResponse) => {
      queue.push(r);
      poke();
    });
    stream.on("error", (err: grpc.ServiceError) => {
      failure ??= fromStatus(err);
      ended = true;
      poke();
    });
    stream.on("end", () => {
      ended = true;
      poke();
    });
    /** The next response, or the stream's error. */
    const next = async (): Promise<WriteResponse> => {
      while (queue.length === 0 && !ended) await new Promise<void>((r) => (notify = r));
      const r = queue.shift();
      if (r) return r;
      throw failure ?? new Error(`content write ${ref}: stream ended without a response`);
    };
    const send = (req: WriteRequest) => stream.write(req);

    try {
      send({ action: "STAT", ref, total: data.length, expected: digest });
      const stat = await next();
      // A previous attempt with the same ref may have left part of the
      // ingest; the bytes are content-addressed, so resume after them.
      let offset = Number(stat.offset);
      if (offset > data.length) offset = 0;
      while (data.length - offset > CHUNK) {
        send({ action: "WRITE", ref, offset, data: data.subarray(offset, offset + CHUNK) });
        offset = Number((await next()).offset);
      }
      send({ action: "COMMIT", ref, offset, data: data.subarray(offset), total: data.length, expected: digest, labels });
      const done = await next();
      if (done.digest !== digest) throw new Error(`content write ${ref}: containerd stored ${done.digest}, expected ${digest}`);
      stream.end();
      return true;
    } catch (err) {
      stream.cancel();
      if (err instanceof AlreadyExistsError) return false;
      throw err;
    }
  }
}
