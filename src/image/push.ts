/**
 * nix2container push: uploads an image archive to a registry with the OCI
 * distribution spec (github.com/opencontainers/distribution-spec, spec.md),
 * using nothing but Node's http/https:
 *
 *   GET  /v2/                                200: the API exists, credentials work
 *   HEAD /v2/<name>/blobs/<digest>           200: the registry has it, skip
 *   POST /v2/<name>/blobs/uploads/           202 + Location: an upload session
 *   PUT  <location>?digest=<digest>          201: the blob, in one request
 *   PUT  /v2/<name>/manifests/<tag>          201: the manifest's exact bytes
 *
 * Blobs go first, config and layers, then the manifest, which a registry
 * refuses while a blob it names is missing. The manifest is sent byte for
 * byte as the archive holds it, so its digest (and every digest a
 * containerd pulling it computes) equals the archive's.
 *
 * Authentication: see registry-auth.ts. Transient failures (5xx, 429,
 * connection resets and timeouts) are retried with exponential backoff, a
 * bounded number of times, per blob and for the manifest; an upload is
 * retried from a new session, since a failed session may be gone.
 */
import http from "node:http";
import https from "node:https";
import { InvalidArgumentError } from "../errors.js";
import { readImageArchive } from "./archive.js";
import { MEDIA_TYPE_OCI_MANIFEST } from "./oci.js";
import { basicAuth, type Credentials, loadCredentials, parseChallenge, parseRegistryRef, type RegistryRef } from "./registry-auth.js";

/** Why a push stopped; the CLI prints the message as its one error line. */
export class PushError extends Error {
  constructor(
    message: string,
    readonly kind: "auth" | "unreachable" | "refused" | "protocol",
  ) {
    super(message);
    this.name = "PushError";
  }
}

/** A failure worth another attempt. */
class TransientError extends Error {}

export interface PushProgress {
  /** A blob is about to be checked/uploaded. */
  blob(event: "exists" | "uploading" | "uploaded", what: string, digest: string, size: number): void;
  /** Bytes of the current upload sent so far. */
  bytes(digest: string, sent: number, size: number): void;
}

export interface PushOptions {
  archive: string;
  ref: string;
  /** Speak http:// instead of https:// (a registry on localhost without TLS). */
  plainHttp?: boolean;
  /** Environment for DOCKER_CONFIG and HOME; default process.env. */
  env?: NodeJS.ProcessEnv;
  progress?: PushProgress;
  /** Attempts per operation for transient failures; default 5. */
  attempts?: number;
  /** First backoff delay in ms (doubled each time); default 250. */
  backoffMs?: number;
  /** Per-request inactivity timeout; default 60 s. */
  timeoutMs?: number;
}

export interface PushResult {
  ref: string;
  digest: string;
  /** Blobs uploaded, and blobs the registry already had. */
  uploaded: string[];
  skipped: string[];
  bytesUploaded: number;
}

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface RequestOptions {
  method: string;
  /** A path on the registry, or an absolute URL (upload locations). */
  url: string;
  headers?: Record<string, string>;
  body?: Buffer;
  onBytes?: (sent: number) => void;
}

const NETWORK_TRANSIENT = new Set(["ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED"]);
const NETWORK_UNREACHABLE = new Set(["ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH"]);

/** The registry's error JSON ({"errors":[{code,message,detail}]}) as one line, if it sent one. */
export function registryErrorText(body: Buffer): string | undefined {
  try {
    const errors = (JSON.parse(body.toString("utf8")) as { errors?: { code?: string; message?: string; detail?: unknown }[] }).errors;
    if (!Array.isArray(errors) || errors.length === 0) return undefined;
    return errors
      .map((e) => {
        let s = [e.code, e.message].filter(Boolean).join(": ");
        // distribution serialises some details as {} (a Go error value): nothing to show.
        const detail = typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail ?? "");
        if (detail !== "" && detail !== '""' && detail !== "{}" && detail !== "null") s += ` (${detail})`;
        return s;
      })
      .join("; ");
  } catch {
    return undefined;
  }
}

/** One registry, one repository: requests with authentication attached. */
class RegistryClient {
  private authorization: string | undefined;
  private readonly base: URL;

  constructor(
    private readonly ref: RegistryRef,
    private readonly creds: Credentials | undefined,
    plainHttp: boolean,
    private readonly timeoutMs: number,
  ) {
    this.base = new URL(`${plainHttp ? "http" : "https"}://${ref.apiHost}`);
  }

  /** One HTTP exchange; network errors become PushError or TransientError. */
  private send(o: RequestOptions, authorization: string | undefined): Promise<Response> {
    const url = new URL(o.url, this.base);
    const headers: Record<string, string> = { "user-agent": "nix2container", ...o.headers };
    if (authorization) headers["authorization"] = authorization;
    if (o.body) headers["content-length"] = String(o.body.length);
    else if (o.method === "PUT" || o.method === "POST") headers["content-length"] = "0";
    const mod = url.protocol === "https:" ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method: o.method, headers, timeout: this.timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", (err) => reject(this.networkError(err, url)));
      });
      req.on("timeout", () => req.destroy(Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: "ETIMEDOUT" })));
      req.on("error", (err) => reject(this.networkError(err, url)));
      if (!o.body) {
        req.end();
        return;
      }
      // In chunks, so progress can be reported as the socket drains.
      const CHUNK = 256 * 1024;
      let off = 0;
      const pump = () => {
        while (off < o.body!.length) {
          const end = Math.min(off + CHUNK, o.body!.length);
          const ok = req.write(o.body!.subarray(off, end));
          off = end;
          o.onBytes?.(off);
          if (!ok) {
            req.once("drain", pump);
            return;
          }
        }
        req.end();
      };
      pump();
    });
  }

  private networkError(err: Error, url: URL): Error {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (NETWORK_UNREACHABLE.has(code)) return new PushError(`cannot reach registry ${url.host}: ${code} (${err.message})`, "unreachable");
    if (NETWORK_TRANSIENT.has(code)) return new TransientError(`${url.host}: ${code} (${err.message})`);
    if (url.protocol === "https:" && /wrong version number|packet length too long/i.test(err.message)) {
      return new PushError(`cannot reach registry ${url.host}: it does not speak TLS (for plain HTTP, pass --plain-http)`, "unreachable");
    }
    const oneLine = err.message.split("\n")[0]!.trim();
    if (/CERT|SELF_SIGNED|certificate/i.test(code + oneLine)) {
      return new PushError(`cannot reach registry ${url.host}: TLS: ${oneLine} (${code}; NODE_EXTRA_CA_CERTS=FILE adds a CA)`, "unreachable");
    }
    return new PushError(`cannot reach registry ${url.host}: ${code || oneLine}${code ? ` (${oneLine})` : ""}`, "unreachable");
  }

  /**
   * A request with authentication: on 401, answer the challenge once and
   * repeat; a second 401 (or a 403) is an authentication failure. 5xx and
   * 429 become TransientError; other statuses are returned.
   */
  async request(o: RequestOptions): Promise<Response> {
    let res = await this.send(o, this.authorization);
    if (res.status === 401) {
      const challenge = res.headers["www-authenticate"];
      this.authorization = await this.authenticate(Array.isArray(challenge) ? challenge[0] : challenge);
      res = await this.send(o, this.authorization);
    }
    if (res.status === 401 || res.status === 403) {
      const why = registryErrorText(res.body) ?? `HTTP ${res.status}`;
      const hint = this.creds ? `as ${this.creds.username}` : "without credentials (none for this registry in the docker config)";
      throw new PushError(`authentication to ${this.ref.registry} failed ${hint}: ${why}`, "auth");
    }
    if (res.status >= 500 || res.status === 429) {
      const url = new URL(o.url, this.base);
      throw new TransientError(`${url.host} answered ${o.method} ${url.pathname} with HTTP ${res.status} ${registryErrorText(res.body) ?? ""}`.trim());
    }
    return res;
  }

  private async authenticate(header: string | undefined): Promise<string | undefined> {
    const c = header ? parseChallenge(header) : undefined;
    if (c?.scheme === "basic") {
      if (!this.creds) throw new PushError(`${this.ref.registry} requires credentials and the docker config has none for it`, "auth");
      return basicAuth(this.creds);
    }
    if (c?.scheme === "bearer" && c.params["realm"]) {
      const realm = new URL(c.params["realm"]);
      if (c.params["service"]) realm.searchParams.set("service", c.params["service"]);
      // The challenge's scope may be just "pull"; ask for what a push needs.
      realm.searchParams.set("scope", `repository:${this.ref.repository}:pull,push`);
      const res = await this.send({ method: "GET", url: realm.toString() }, this.creds ? basicAuth(this.creds) : undefined);
      if (res.status === 401 || res.status === 403) {
        throw new PushError(`authentication to ${this.ref.registry} failed${this.creds ? ` as ${this.creds.username}` : " (no credentials)"}: the token service ${realm.host} answered HTTP ${res.status}`, "auth");
      }
      if (res.status >= 500) throw new TransientError(`token service ${realm.host}: HTTP ${res.status}`);
      let token: string | undefined;
      try {
        const json = JSON.parse(res.body.toString("utf8")) as { token?: string; access_token?: string };
        token = json.token ?? json.access_token;
      } catch {
        /* reported below */
      }
      if (res.status !== 200 || !token) throw new PushError(`token service ${realm.host} gave no token (HTTP ${res.status})`, "auth");
      return `Bearer ${token}`;
    }
    return this.authorization;
  }
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

export async function pushImage(o: PushOptions): Promise<PushResult> {
  const ref = parseRegistryRef(o.ref);
  const img = await readImageArchive(o.archive);
  const byDigest = ref.reference.startsWith("sha256:");
  if (byDigest && ref.reference !== img.manifestDigest) {
    throw new InvalidArgumentError(`${o.ref} names digest ${ref.reference}, but the archive's manifest is ${img.manifestDigest}`);
  }
  const creds = await loadCredentials(ref.registry, o.env ?? process.env);
  const client = new RegistryClient(ref, creds, o.plainHttp ?? false, o.timeoutMs ?? 60_000);
  const attempts = o.attempts ?? 5;
  const backoffMs = o.backoffMs ?? 250;
  const repo = `/v2/${ref.repository}`;
  const result: PushResult = { ref: o.ref, digest: img.manifestDigest, uploaded: [], skipped: [], bytesUploaded: 0 };

  // The spec's API version check (GET /v2/): authenticates once, up front,
  // with a response that carries the registry's error body.
  await withRetry("checking the registry's API", attempts, backoffMs, async () => {
    const res = await client.request({ method: "GET", url: "/v2/" });
    if (res.status !== 200) throw unexpected(`GET /v2/ (is ${ref.apiHost} an OCI registry?)`, res);
  });

  const blobs = [
    { what: "config", digest: img.manifest.config.digest },
    ...img.manifest.layers.map((l, i) => ({ what: `layer ${i + 1}/${img.manifest.layers.length}`, digest: l.digest })),
  ];
  for (const { what, digest } of blobs) {
    const data = img.blobs.get(digest)!;
    await withRetry(`pushing the ${what} ${digest}`, attempts, backoffMs, async () => {
      const head = await client.request({ method: "HEAD", url: `${repo}/blobs/${digest}` });
      // A redirect (to blob storage) also means the registry has it.
      if (head.status === 200 || (head.status >= 300 && head.status < 400)) {
        result.skipped.push(digest);
        o.progress?.blob("exists", what, digest, data.length);
        return;
      }
      if (head.status !== 404) throw unexpected(`HEAD blob ${digest}`, head);
      o.progress?.blob("uploading", what, digest, data.length);
      const session = await client.request({ method: "POST", url: `${repo}/blobs/uploads/` });
      const location = session.headers["location"];
      if (session.status !== 202 || !location) throw unexpected(`starting the upload of ${digest}`, session);
      const put = new URL(location, "http://placeholder");
      put.searchParams.set("digest", digest);
      const target = /^https?:\/\//.test(location) ? put.toString() : put.pathname + put.search;
      const res = await client.request({
        method: "PUT",
        url: target,
        headers: { "content-type": "application/octet-stream" },
        body: data,
        onBytes: (sent) => o.progress?.bytes(digest, sent, data.length),
      });
      if (res.status !== 201) throw unexpected(`uploading ${digest}`, res);
      result.uploaded.push(digest);
      result.bytesUploaded += data.length;
      o.progress?.blob("uploaded", what, digest, data.length);
    });
  }

  const manifestBytes = img.blobs.get(img.manifestDigest)!;
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
  return result;
}

function unexpected(what: string, res: Response): PushError {
  return new PushError(`${what}: unexpected HTTP ${res.status}${registryErrorText(res.body) ? `: ${registryErrorText(res.body)}` : ""}`, "protocol");
}

/** Formats a byte count for progress lines. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * Progress on a stream: one line per blob ("exists" or "uploaded"); on a
 * terminal, the upload in flight is also shown on a line rewritten in place.
 */
export function streamProgress(out: NodeJS.WritableStream & { isTTY?: boolean }): PushProgress & { done(): void } {
  const tty = out.isTTY === true;
  const CLEAR = "\r\x1b[K";
  let lastDraw = 0;
  let live = false;
  const short = (d: string) => d.slice(0, 19);
  return {
    blob(event, what, digest, size) {
      if (event === "uploading") {
        if (tty) {
          out.write(`${CLEAR}uploading ${what} ${short(digest)} (${formatBytes(size)})`);
          live = true;
        }
        return;
      }
      out.write(`${live ? CLEAR : ""}${event === "exists" ? "exists  " : "uploaded"} ${what} ${digest} (${formatBytes(size)})\n`);
      live = false;
    },
    bytes(digest, sent, size) {
      const now = Date.now();
      if (!tty || (now - lastDraw < 100 && sent < size)) return;
      lastDraw = now;
      out.write(`${CLEAR}uploading ${short(digest)} ${formatBytes(sent)} / ${formatBytes(size)} (${Math.floor((100 * sent) / Math.max(size, 1))}%)`);
      live = true;
    },
    done() {
      if (live) out.write(CLEAR);
      live = false;
    },
  };
}
