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
import { Readable } from "node:stream";
import type * as grpc from "@grpc/grpc-js";
import { AlreadyExistsError } from "../errors.js";
import { contentService } from "../wire/proto.js";
import { fromStatus } from "../wire/status.js";
import { type ContainerdContext, ServiceClient } from "./grpc.js";

/**
 * Bytes that can be read, whole or from an offset, any number of times:
 * what a blob written to the content store is read from (an image
 * archive's member, a file range, a buffer).
 */
export interface BlobSource {
  readonly size: number;
  /** The bytes [start, end) (default: all), as a stream. */
  open(start?: number, end?: number): Readable;
}

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
    super(contentService(), ctx);
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
   * A BlobSource is read as a stream, one WRITE message at a time, each
   * answered before the next is read: memory stays at about one CHUNK
   * whatever the blob's size.
   */
  async write(ref: string, digest: string, data: Buffer | BlobSource, labels: Record<string, string> = {}, onBytes?: (stored: number) => void): Promise<boolean> {
    const source: BlobSource = Buffer.isBuffer(data) ? { size: data.length, open: (s = 0, e = data.length) => Readable.from([data.subarray(s, e)]) } : data;
    const size = source.size;
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

    let reader: AsyncIterator<Buffer> | undefined;
    try {
      send({ action: "STAT", ref, total: size, expected: digest });
      const stat = await next();
      // A previous attempt with the same ref may have left part of the
      // ingest; the bytes are content-addressed, so resume after them.
      let offset = Number(stat.offset);
      if (offset > size) offset = 0;
      reader = chunked(source.open(offset), CHUNK)[Symbol.asyncIterator]();
      let pending = offset < size ? (await reader.next()).value : undefined;
      for (;;) {
        const following = pending ? (await reader.next()).value : undefined;
        if (!following) break;
        send({ action: "WRITE", ref, offset, data: pending });
        const at = Number((await next()).offset);
        if (at !== offset + pending!.length) throw new Error(`content write ${ref}: containerd is at offset ${at}, expected ${offset + pending!.length}`);
        offset = at;
        onBytes?.(offset);
        pending = following;
      }
      send({ action: "COMMIT", ref, offset, data: pending ?? Buffer.alloc(0), total: size, expected: digest, labels });
      const done = await next();
      if (done.digest !== digest) throw new Error(`content write ${ref}: containerd stored ${done.digest}, expected ${digest}`);
      stream.end();
      return true;
    } catch (err) {
      stream.cancel();
      if (err instanceof AlreadyExistsError) return false;
      throw err;
    } finally {
      await reader?.return?.();
    }
  }
}

/** A stream's bytes regrouped into chunks of exactly `size` bytes (the last may be shorter). */
async function* chunked(input: Readable, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let have = 0;
  try {
    for await (const raw of input) {
      let c = raw as Buffer;
      while (c.length > 0) {
        const take = Math.min(size - have, c.length);
        parts.push(c.subarray(0, take));
        have += take;
        c = c.subarray(take);
        if (have === size) {
          yield Buffer.concat(parts);
          parts = [];
          have = 0;
        }
      }
    }
    if (have > 0) yield Buffer.concat(parts);
  } finally {
    input.destroy();
  }
}
