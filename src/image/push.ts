/**
 * nix2container push: uploads an image archive to a registry with the OCI
 * distribution spec (github.com/opencontainers/distribution-spec, spec.md):
 *
 *   GET   /v2/                                 200: the API exists, credentials work
 *   HEAD  /v2/<name>/blobs/<digest>            200: the registry has it, skip
 *   POST  /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>
 *                                              201: mounted from another repository
 *                                              202 + Location: an upload session instead
 *   PUT   <location>?digest=<digest>           201: a blob in one request, or
 *   PATCH <location> (Content-Range)           202 + Location + Range: one chunk,
 *   GET   <location>                           204 + Range: what the registry has,
 *   PUT   <location>?digest=<digest>           201: the end of a chunked upload
 *   PUT   /v2/<name>/manifests/<tag>           201: the manifest's exact bytes
 *
 * Blobs go first, config and layers, then the manifest, which a registry
 * refuses while a blob it names is missing. The manifest is sent byte for
 * byte as the archive holds it, so its digest (and every digest a
 * containerd pulling it computes) equals the archive's.
 *
 * Blobs are read from the archive file as streams, never whole. A blob
 * larger than the chunk size goes up in PATCH chunks; when a connection
 * drops mid-chunk, the upload's status (GET <location>, its Range) says
 * where to go on from, so only the lost chunk is sent again. Repositories
 * of the same registry that already hold a blob (blob-locations.ts, and
 * --mount-from) are asked to mount it first.
 *
 * HTTP, authentication and redirects: registry-client.ts. Transient
 * failures (5xx, 429, connection resets and timeouts) are retried with
 * exponential backoff, a bounded number of times, per blob and for the
 * manifest.
 */
import { InvalidArgumentError } from "../errors.js";
import { openImageArchive } from "./archive.js";
import type { ImageArchive } from "./image-archive.js";
import { BlobLocations, blobLocationsFile } from "./blob-locations.js";
import { MEDIA_TYPE_OCI_MANIFEST } from "./oci.js";
import { formatBytes, type TransferProgress } from "./progress.js";
import { parseRegistryRef } from "./reference.js";
import { loadCredentials } from "./registry-auth.js";
import { PushError, RegistryClient, registryErrorText, type Response, TransientError } from "./registry-client.js";
import { readSource } from "./tar-index.js";

export { PushError, registryErrorText } from "./registry-client.js";

export const DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024;

export interface PushOptions {
  archive: string;
  ref: string;
  /** Speak http:// instead of https:// (a registry on localhost without TLS). */
  plainHttp?: boolean;
  /** Environment for DOCKER_CONFIG, HOME, XDG_CACHE_HOME and credential helpers; default process.env. */
  env?: NodeJS.ProcessEnv;
  progress?: TransferProgress;
  /** Attempts per operation for transient failures; default 5. */
  attempts?: number;
  /** First backoff delay in ms (doubled each time); default 250. */
  backoffMs?: number;
  /** Per-request inactivity timeout; default 60 s. */
  timeoutMs?: number;
  /** Blobs larger than this go up in PATCH chunks of this size; 0: always in one PUT. Default 64 MiB. */
  chunkSize?: number;
  /** Repositories of the same registry to try mounting blobs from, besides those remembered. */
  mountFrom?: string[];
  /** Remember where blobs were pushed, and mount from there (default true). */
  blobLocations?: boolean;
}

export interface PushResult {
  ref: string;
  digest: string;
  /** Blobs uploaded, mounted from another repository, and already present. */
  uploaded: string[];
  mounted: string[];
  skipped: string[];
  bytesUploaded: number;
  /** Chunks sent again after a dropped connection. */
  resumed: number;
}

async function withRetry<T>(what: string, attempts: number, backoffMs: number, fn: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof TransientError)) throw err;
      if (i >= attempts) throw new PushError(`${what}: giving up after ${attempts} attempts: ${err.message}`, "unreachable");
      await new Promise((r) => setTimeout(r, backoffMs * 2 ** (i - 1)));
    }
  }
}

function unexpected(what: string, res: Response): PushError {
  return new PushError(`${what}: unexpected HTTP ${res.status}${registryErrorText(res.body) ? `: ${registryErrorText(res.body)}` : ""}`, "protocol");
}

function header(res: Response, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** The end of a Range header "0-<last>" as the next offset. */
function rangeEnd(res: Response): number | undefined {
  const m = /^(?:bytes=)?0-(\d+)$/.exec(header(res, "range") ?? "");
  return m ? Number(m[1]) + 1 : undefined;
}

/** An upload location with ?digest= added, keeping its own query (distribution's _state). */
function withDigest(location: string, digest: string): string {
  const u = new URL(location, "http://relative.invalid");
  u.searchParams.set("digest", digest);
  return u.host === "relative.invalid" ? u.pathname + u.search : u.toString();
}

export async function pushImage(o: PushOptions): Promise<PushResult> {
  const ref = parseRegistryRef(o.ref);
  const env = o.env ?? process.env;
  const img: ImageArchive = await openImageArchive(o.archive);
  try {
    const byDigest = ref.reference.startsWith("sha256:");
    if (byDigest && ref.reference !== img.manifestDigest) {
      throw new InvalidArgumentError(`${o.ref} names digest ${ref.reference}, but the archive's manifest is ${img.manifestDigest}`);
    }
    const mountFrom = (o.mountFrom ?? []).map((r) => {
      try {
        return parseRegistryRef(`${ref.registry}/${r}`).repository;
      } catch {
        throw new InvalidArgumentError(`invalid --mount-from repository ${JSON.stringify(r)}: lowercase components separated by /, without a tag`);
      }
    });
    const locations = o.blobLocations === false ? undefined : await BlobLocations.load(blobLocationsFile(env));
    const blobs = [
      { what: "config", desc: img.manifest.config },
      ...img.manifest.layers.map((l, i) => ({ what: `layer ${i + 1}/${img.manifest.layers.length}`, desc: l })),
    ];
    const sourcesOf = (digest: string) => [...new Set([...mountFrom, ...(locations?.sources(ref.registry, digest, ref.repository) ?? [])])].filter((r) => r !== ref.repository);
    const mountRepos = [...new Set(blobs.flatMap((b) => sourcesOf(b.desc.digest)))];
    const creds = await loadCredentials(ref.registry, env);
    const client = new RegistryClient(ref, creds, o.plainHttp ?? false, o.timeoutMs ?? 60_000, mountRepos.map((r) => `repository:${r}:pull`));
    const attempts = o.attempts ?? 5;
    const backoffMs = o.backoffMs ?? 250;
    const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const repo = `/v2/${ref.repository}`;
    const result: PushResult = { ref: o.ref, digest: img.manifestDigest, uploaded: [], mounted: [], skipped: [], bytesUploaded: 0, resumed: 0 };
    const progress = o.progress;

    // The spec's API version check (GET /v2/): authenticates once, up front,
    // with a response that carries the registry's error body.
    await withRetry("checking the registry's API", attempts, backoffMs, async () => {
      const res = await client.request({ method: "GET", url: "/v2/" });
      if (res.status !== 200) throw unexpected(`GET /v2/ (is ${ref.apiHost} an OCI registry?)`, res);
    });
    progress?.plan(blobs.length, blobs.reduce((n, b) => n + b.desc.size, 0));

    for (const { what, desc } of blobs) {
      const { digest, size } = desc;
      const source = img.blob(digest)!;
      const done = (list: string[], verb: string) => {
        list.push(digest);
        locations?.add(ref.registry, digest, ref.repository);
        progress?.finish(size, `${verb} ${what} ${digest} (${formatBytes(size)})`);
      };
      await withRetry(`pushing the ${what} ${digest}`, attempts, backoffMs, async () => {
        // Redirects (to blob storage) are followed: a 200 there means the registry has it.
        const head = await client.request({ method: "HEAD", url: `${repo}/blobs/${digest}`, followRedirects: true });
        if (head.status === 200) return done(result.skipped, "exists  ");
        if (head.status !== 404) throw unexpected(`HEAD blob ${digest}`, head);

        let session: Response | undefined;
        for (const from of sourcesOf(digest)) {
          const m = await client.request({ method: "POST", url: `${repo}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}` });
          if (m.status === 201) return done(result.mounted, "mounted ");
          // 202: the registry could not mount it and opened an upload session instead.
          if (m.status === 202) {
            session = m;
            break;
          }
        }
        session ??= await client.request({ method: "POST", url: `${repo}/blobs/uploads/` });
        const location = header(session, "location");
        if (session.status !== 202 || !location) throw unexpected(`starting the upload of ${digest}`, session);
        progress?.begin(size);

        if (chunkSize <= 0 || size <= chunkSize) {
          const res = await client.request({
            method: "PUT",
            url: withDigest(location, digest),
            headers: { "content-type": "application/octet-stream" },
            body: { source, start: 0, end: size },
            onBytes: (sent) => progress?.at(sent),
            followRedirects: true,
          });
          if (res.status !== 201) throw unexpected(`uploading ${digest}`, res);
        } else {
          await chunkedUpload(location);
        }
        result.bytesUploaded += size;
        done(result.uploaded, "uploaded");

        async function chunkedUpload(first: string): Promise<void> {
          let loc = first;
          let offset = 0;
          let failures = 0;
          while (offset < size) {
            const end = Math.min(offset + chunkSize, size);
            let res: Response;
            try {
              res = await client.request({
                method: "PATCH",
                url: loc,
                headers: { "content-type": "application/octet-stream", "content-range": `${offset}-${end - 1}` },
                body: { source, start: offset, end },
                onBytes: (sent) => progress?.at(offset + sent),
              });
            } catch (err) {
              if (!(err instanceof TransientError) || ++failures >= attempts) throw err;
              // Where is the upload now? The registry's own record decides.
              await new Promise((r) => setTimeout(r, backoffMs * 2 ** (failures - 1)));
              const status = await client.request({ method: "GET", url: loc });
              // Gone or invalid: the whole blob again, from a new session (withRetry).
              if (status.status !== 204) throw new TransientError(`the upload of ${digest} was lost (HTTP ${status.status}) after: ${err.message}`);
              // distribution answers "0-0" for an empty upload as for one
              // byte; what we had confirmed tells them apart.
              const reported = rangeEnd(status);
              offset = reported === undefined || (reported === 1 && offset === 0) ? offset : reported;
              loc = header(status, "location") ?? loc;
              result.resumed++;
              progress?.at(offset);
              continue;
            }
            if (res.status !== 202) throw unexpected(`uploading ${digest} bytes ${offset}-${end - 1}`, res);
            const next = rangeEnd(res);
            if (next !== undefined && next !== end) throw new PushError(`uploading ${digest}: the registry has ${next} bytes after a chunk ending at ${end}`, "protocol");
            offset = end;
            loc = header(res, "location") ?? loc;
          }
          const res = await client.request({ method: "PUT", url: withDigest(loc, digest), followRedirects: true });
          if (res.status !== 201) throw unexpected(`finishing the upload of ${digest}`, res);
        }
      });
    }

    const manifestBytes = await readSource(img.blob(img.manifestDigest)!, 16 * 1024 * 1024, "the manifest");
    await withRetry("pushing the manifest", attempts, backoffMs, async () => {
      const res = await client.request({
        method: "PUT",
        url: `${repo}/manifests/${ref.reference}`,
        headers: { "content-type": img.manifest.mediaType ?? MEDIA_TYPE_OCI_MANIFEST },
        body: manifestBytes,
      });
      if (res.status !== 201) {
        const why = registryErrorText(res.body) ?? `HTTP ${res.status}`;
        throw new PushError(`registry ${ref.registry} refused the manifest for ${ref.repository}${byDigest ? "@" : ":"}${ref.reference}: ${why}`, "refused");
      }
      const said = res.headers["docker-content-digest"];
      if (typeof said === "string" && said !== img.manifestDigest) {
        throw new PushError(`registry ${ref.registry} stored the manifest as ${said}, expected ${img.manifestDigest}`, "protocol");
      }
    });
    await locations?.save();
    return result;
  } finally {
    o.progress?.done();
    await img.close();
  }
}
