/**
 * nix2container load: imports an image archive into containerd through its
 * gRPC APIs and unpacks it into a snapshotter, handing every layer's
 * `containerd.io/snapshot/*` annotations to the snapshotter as labels.
 * (`ctr images import` without --local=false unpacks without them, so a nix
 * layer would get no store paths.)
 *
 * Steps, all under one lease so that nothing is collected half-way and a
 * failure leaves nothing behind once the lease is deleted:
 *   1. write every blob into the content store: layers, config, then the
 *      manifest labelled `containerd.io/gc.ref.content.config` and
 *      `containerd.io/gc.ref.content.l.<i>` (containerd's images.ChildGCLabels),
 *      so the GC follows manifest -> config and layers;
 *   2. unpack the layers (src/containerd/unpack.ts);
 *   3. label the config `containerd.io/gc.ref.snapshot.<snapshotter>: <top
 *      chain ID>`, as containerd's unpacker does, so the GC follows config ->
 *      snapshots (each snapshot holds its parents);
 *   4. create or update the image record; only now is the image visible;
 *   5. delete the lease: the image record is the GC root from here on.
 * On any failure the lease is deleted synchronously instead, so the GC
 * removes the blobs and snapshots no other image uses before we return; no
 * image record was written. The lease also expires after an hour, in case
 * this process is killed before it can delete it.
 */
import { ContentClient } from "../containerd/content.js";
import { DiffClient } from "../containerd/diff.js";
import type { ContainerdContext } from "../containerd/grpc.js";
import { ImagesClient } from "../containerd/images.js";
import { LeasesClient } from "../containerd/leases.js";
import { unpackLayers } from "../containerd/unpack.js";
import { InvalidArgumentError, KindedError, UnavailableError } from "../errors.js";
import { openImageArchive } from "./archive.js";
import type { ImageArchive } from "./image-archive.js";
import { MEDIA_TYPE_OCI_MANIFEST } from "./oci.js";
import { formatBytes, type TransferProgress } from "./progress.js";

export const DEFAULT_SNAPSHOTTER = "nix";
/** Blobs written into the content store at once (without progress output). */
const WRITE_CONCURRENCY = 4;
const LEASE_EXPIRY_MS = 60 * 60 * 1000;

export interface LoadOptions {
  archive: string;
  /** Where to read the archive when not at `archive` (an open descriptor's /proc/self/fd path); messages name `archive`. */
  file?: string;
  /** containerd's socket. */
  address: string;
  namespace: string;
  snapshotter: string;
  /** The image record's name; default the reference the archive carries. */
  name?: string;
  /** One line per step, for humans. */
  log?: (line: string) => void;
  /** Blobs and bytes written into the content store; its finish() lines replace log lines for blobs. */
  progress?: TransferProgress;
  /** Aborting stops between steps; the lease is deleted as on any failure. */
  signal?: AbortSignal;
}

export interface LoadResult {
  name: string;
  digest: string;
  /** Blobs written into the content store, and those it already had. */
  blobsWritten: number;
  blobsPresent: number;
  /** Layers unpacked now, and those whose snapshot already existed. */
  layersUnpacked: number;
  layersPresent: number;
  image: "created" | "updated";
}

/**
 * Loads the archive. Blobs are streamed from the file into the content
 * store a chunk at a time (content.ts), so the memory a load takes does not
 * grow with the image: the daemon runs this for CRI pulls of nix:0 images.
 */
export async function loadImage(o: LoadOptions): Promise<LoadResult> {
  const img = await openImageArchive(o.file ?? o.archive).catch((err: Error) => {
    // Messages name the archive, not the descriptor it was read through.
    if (o.file) err.message = err.message.split(o.file).join(o.archive);
    if (err instanceof KindedError) throw err;
    throw new InvalidArgumentError(`${o.archive} is not a readable image archive: ${err.message}`);
  });
  try {
    return await loadOpened(o, img);
  } finally {
    o.progress?.done();
    await img.close();
  }
}

async function loadOpened(o: LoadOptions, img: ImageArchive): Promise<LoadResult> {
  const log = o.progress ? (line: string) => o.progress!.note(line) : (o.log ?? (() => undefined));
  const name = o.name ?? img.ref;
  if (name === undefined) throw new InvalidArgumentError(`${o.archive} names no image; give it a name (--ref)`);
  const diffIds = img.config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== img.manifest.layers.length) {
    throw new InvalidArgumentError(`${o.archive}: the config lists ${diffIds.length} diff IDs for ${img.manifest.layers.length} layers`);
  }

  const ctx: ContainerdContext = { address: o.address, namespace: o.namespace };
  const leases = new LeasesClient(ctx);
  const content = new ContentClient(ctx);
  const diff = new DiffClient(ctx);
  const images = new ImagesClient(ctx);
  const clients = [leases, content, diff, images];
  try {
    let lease;
    try {
      lease = await leases.create("nix2container-load", LEASE_EXPIRY_MS);
    } catch (err) {
      if (err instanceof UnavailableError) throw new UnavailableError(`cannot reach containerd at ${o.address}: ${err.message}`);
      throw err;
    }
    ctx.lease = lease.id;
    try {
      const result = await loadUnderLease();
      await leases.delete(lease.id);
      return result;
    } catch (err) {
      // Synchronously: the GC has taken what only this load held when we return.
      await leases.delete(lease.id, true).catch(() => undefined);
      throw err;
    }
  } finally {
    for (const c of clients) c.close();
  }

  async function loadUnderLease(): Promise<LoadResult> {
    const m = img.manifest;
    let blobsWritten = 0;
    let blobsPresent = 0;
    const blobCount = m.layers.length + 2;
    o.progress?.plan(blobCount, [...m.layers.map((l) => l.size), m.config.size, img.blob(img.manifestDigest)!.size].reduce((a, b) => a + b, 0));
    const put = async (digest: string, what: string, labels: Record<string, string> = {}) => {
      o.signal?.throwIfAborted();
      const data = img.blob(digest)!;
      o.progress?.begin(data.size);
      // A ref unique to this load: concurrent loads never contend for an ingest lock.
      const line = (await content.write(`${ctx.lease}-${digest}`, digest, data, labels, (n) => o.progress?.at(n)))
        ? (blobsWritten++, `wrote ${what} ${digest} (${formatBytes(data.size)})`)
        : await (async () => {
            // Already stored: make sure it carries our labels and our lease.
            await content.setLabels(digest, labels);
            await leases.addResource(ctx.lease!, "content", digest);
            blobsPresent++;
            return `have ${what} ${digest}`;
          })();
      if (o.progress) o.progress.finish(data.size, line);
      else log(line);
    };
    const children: Record<string, string> = { "containerd.io/gc.ref.content.config": m.config.digest };
    m.layers.forEach((l, i) => (children[`containerd.io/gc.ref.content.l.${i}`] = l.digest));
    const unpack = () =>
      unpackLayers(
        m.layers.map((l, i) => ({ desc: { mediaType: l.mediaType, digest: l.digest, size: l.size, annotations: l.annotations ?? {} }, diffId: diffIds[i]! })),
        {
          ctx,
          snapshotter: o.snapshotter,
          content,
          diff,
          leases,
          onLayer: (i, chainId, state) => log(`${state === "unpacked" ? "unpacked" : "have"} layer ${i + 1}/${m.layers.length} as ${chainId} in ${o.snapshotter}`),
          ...(o.signal ? { signal: o.signal } : {}),
        },
      );
    let unpacked: Awaited<ReturnType<typeof unpack>>;
    if (o.progress) {
      // One blob at a time: the progress line follows the current blob.
      for (const [i, l] of m.layers.entries()) await put(l.digest, `layer ${i + 1}/${m.layers.length}`);
      await put(m.config.digest, "config");
      await put(img.manifestDigest, "manifest", children);
      unpacked = await unpack();
    } else {
      // A few blobs at a time; the unpack starts once the layers are stored
      // (the lease holds whatever is written in whichever order), while the
      // config and the manifest are written.
      // Each digest once: two writes of one blob would contend for its ingest.
      const distinct = [...new Map(m.layers.map((l, i) => [l.digest, i])).entries()].map(([digest, i]) => ({ digest, i }));
      const layers = pool(distinct.length, WRITE_CONCURRENCY, (k) => put(distinct[k]!.digest, `layer ${distinct[k]!.i + 1}/${m.layers.length}`));
      const rest = Promise.all([put(m.config.digest, "config"), put(img.manifestDigest, "manifest", children)]);
      [unpacked] = await settled([layers.then(unpack), rest]);
    }
    const top = unpacked.chainIds[unpacked.chainIds.length - 1];
    if (top !== undefined) await content.setLabels(m.config.digest, { [`containerd.io/gc.ref.snapshot.${o.snapshotter}`]: top });

    o.signal?.throwIfAborted();
    const target = { mediaType: m.mediaType ?? MEDIA_TYPE_OCI_MANIFEST, digest: img.manifestDigest, size: img.blob(img.manifestDigest)!.size };
    const image = await images.put(name!, target);
    log(`${image} image ${name}`);
    return {
      name: name!,
      digest: img.manifestDigest,
      blobsWritten,
      blobsPresent,
      layersUnpacked: unpacked.unpacked,
      layersPresent: unpacked.present,
      image,
    };
  }
}

/** Runs fn(i) for i in [0, n), at most `concurrency` at once; settles once none is running, with the first failure. */
async function pool(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < n && !failed) {
      const i = next++;
      try {
        await fn(i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await settled(Array.from({ length: Math.min(concurrency, n) }, worker));
}

/**
 * Like Promise.all, but settles only once every promise has: on a failure
 * nothing is still writing under the lease when the caller deletes it.
 */
async function settled<T extends readonly unknown[]>(ps: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const rs = await Promise.allSettled(ps);
  const failure = rs.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failure) throw failure.reason;
  return rs.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}
