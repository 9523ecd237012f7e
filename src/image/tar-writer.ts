/**
 * Tar encoding: items (a header and a body, or a stream of known size and
 * digest) written in order through tar-stream, to a sink or to one Buffer.
 * Layers (layer.ts) and image archives (archive-writer.ts) are both written
 * with it.
 */
import { createHash } from "node:crypto";
import type { Readable } from "node:stream";
import tarStream from "tar-stream";
import type { Header } from "tar-stream";

/** What tar-stream's pack.entry() takes: a header with at least a name. */
export type TarHeader = Partial<Header> & Pick<Header, "name">;

export interface TarItem {
  header: TarHeader;
  body?: Buffer;
  /** A file's bytes as a stream (header.size long), instead of `body`. */
  source?: { size: number; open(): Readable };
  /** With `source`: the sha256 digest the bytes must have; the tar fails otherwise. */
  digest?: string;
}

/**
 * Encodes tar items with tar-stream, handing each chunk to `sink` in order
 * (awaited, so a slow sink applies backpressure). Either side failing
 * destroys the pack so the other side never waits forever.
 */
export async function streamTar(items: Iterable<TarItem>, sink: (chunk: Buffer) => void | Promise<void>): Promise<void> {
  const pack = tarStream.pack();
  // The first failure is the cause; the other side then fails with a generic
  // "destroyed" error, which must not mask it. A sink error is recorded
  // before leaving the for-await, whose exit itself destroys the pack.
  let cause: unknown;
  // Errors reach the caller through `cause`; without a listener, streamx
  // would also raise the destroy error as an uncaught 'error' event.
  pack.on("error", () => undefined);
  const fail = (err: unknown) => {
    if (cause === undefined) cause = err;
    if (!pack.destroyed) pack.destroy(err instanceof Error ? err : new Error(String(err)));
  };
  const consumer = (async () => {
    // streamx types chunks as unknown; tar-stream only ever pushes Buffers.
    for await (const c of pack) {
      try {
        await sink(c as Buffer);
      } catch (err) {
        fail(err);
        throw err;
      }
    }
  })();
  const producer = (async () => {
    for (const { header, body, source, digest } of items) {
      // tar-stream would wait forever for the bytes of a body-less file.
      const isFile = header.type === undefined || header.type === "file" || header.type === "contiguous-file";
      if (isFile && source) {
        await streamEntry(pack, header, source, digest);
        continue;
      }
      if (isFile && !body) throw new Error(`tar item ${JSON.stringify(header.name)}: a file needs a body`);
      if (!isFile && body && body.length > 0) throw new Error(`tar item ${JSON.stringify(header.name)}: a ${header.type} has no body`);
      await new Promise<void>((resolve, reject) => {
        const cb = (err?: Error | null) => (err ? reject(err) : resolve());
        const entry = body ? pack.entry(header, body, cb) : pack.entry(header, cb);
        // Destroying the pack destroys its entry streams with the same error,
        // which `cb` already reports; keep it from also going uncaught.
        entry.on("error", () => undefined);
      });
    }
    pack.finalize();
  })();
  producer.catch(fail);
  consumer.catch(fail);
  await Promise.allSettled([producer, consumer]);
  if (cause !== undefined) throw cause;
}

/** Copies a stream into a tar entry, checking its length and, if given, its digest. */
async function streamEntry(pack: tarStream.Pack, header: TarHeader, source: { size: number; open(): Readable }, digest: string | undefined): Promise<void> {
  let entry!: ReturnType<tarStream.Pack["entry"]>;
  const finished = new Promise<void>((resolve, reject) => {
    entry = pack.entry({ ...header, size: source.size }, (err) => (err ? reject(err) : resolve()));
  });
  finished.catch(() => undefined); // awaited below
  entry.on("error", () => undefined);
  const hash = createHash("sha256");
  let n = 0;
  for await (const c of source.open()) {
    hash.update(c as Buffer);
    n += (c as Buffer).length;
    if (n > source.size) break;
    if (!entry.write(c as Buffer)) {
      await new Promise<void>((resolve, reject) => {
        // Both listeners go once either fires: a large layer waits for drain thousands of times.
        const onDrain = () => {
          entry.off("error", onError);
          resolve();
        };
        const onError = (err: Error) => {
          entry.off("drain", onDrain);
          reject(err);
        };
        entry.once("drain", onDrain);
        entry.once("error", onError);
      });
    }
  }
  if (n !== source.size) throw new Error(`tar item ${JSON.stringify(header.name)}: its source gave ${n} bytes, expected ${source.size}`);
  const got = `sha256:${hash.digest("hex")}`;
  if (digest !== undefined && got !== digest) throw new Error(`tar item ${JSON.stringify(header.name)}: its bytes have digest ${got}, expected ${digest}`);
  entry.end(undefined);
  await finished;
}

/** Encodes tar items into one Buffer. */
export async function packTar(items: Iterable<TarItem>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await streamTar(items, (c) => {
    chunks.push(c);
  });
  return Buffer.concat(chunks);
}
