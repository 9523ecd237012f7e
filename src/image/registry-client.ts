/**
 * HTTP to one registry repository (OCI distribution spec), using nothing but
 * Node's http/https: authentication (registry-auth.ts), redirects, bodies
 * streamed from files, and the mapping of failures onto PushError (one line
 * for the user) or TransientError (worth another attempt).
 *
 * Credentials go only where credentialsAllowed() says: the Authorization
 * header is attached to requests to the registry's own origin, never to an
 * upload location on another host, never after a redirect (CDNs and blob
 * stores authorise the redirect URL itself); the token realm gets the
 * password only over https or on the registry's own origin.
 */
import http from "node:http";
import https from "node:https";
import type { RegistryRef } from "./reference.js";
import { basicAuth, type Credentials, credentialsAllowed, parseChallenge } from "./registry-auth.js";
import type { BlobSource } from "../containerd/content.js";

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
export class TransientError extends Error {}

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The URL that answered (after redirects). */
  url: URL;
}

/** A request body: bytes in memory, or a range of a blob read as a stream. */
export type Body = Buffer | { source: BlobSource; start: number; end: number };

export interface RequestOptions {
  method: string;
  /** A path on the registry, or an absolute URL (upload locations). */
  url: string;
  headers?: Record<string, string>;
  body?: Body;
  /** Bytes of the body sent so far. */
  onBytes?: (sent: number) => void;
  /** Follow 301/302/303/307/308 (blob HEAD, GET and upload PUT do). */
  followRedirects?: boolean;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
/** Response bodies of registries are error JSON or tokens; refuse to buffer more. */
const MAX_RESPONSE_BODY = 4 * 1024 * 1024;
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

function bodyLength(b: Body): number {
  return Buffer.isBuffer(b) ? b.length : b.end - b.start;
}

/** One registry, one repository: requests with authentication attached where it may go. */
export class RegistryClient {
  private authorization: string | undefined;
  readonly base: URL;
  /** Why the token realm got no credentials, for the error if the registry then refuses. */
  private withheld: string | undefined;

  constructor(
    private readonly ref: RegistryRef,
    private readonly creds: Credentials | undefined,
    plainHttp: boolean,
    private readonly timeoutMs: number,
    /** More token scopes to ask for (pull on the repositories blobs are mounted from). */
    private readonly extraScopes: string[] = [],
  ) {
    this.base = new URL(`${plainHttp ? "http" : "https"}://${ref.apiHost}`);
  }

  /** One HTTP exchange; network errors become PushError or TransientError. */
  private send(method: string, url: URL, o: RequestOptions, authorization: string | undefined): Promise<Response> {
    const headers: Record<string, string> = { "user-agent": "nix2container", ...o.headers };
    if (authorization) headers["authorization"] = authorization;
    if (o.body) headers["content-length"] = String(bodyLength(o.body));
    else if (method === "PUT" || method === "POST" || method === "PATCH") headers["content-length"] = "0";
    const mod = url.protocol === "https:" ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method, headers, timeout: this.timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on("data", (c: Buffer) => {
          n += c.length;
          if (n <= MAX_RESPONSE_BODY) chunks.push(c);
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), url }));
        res.on("error", (err) => reject(this.networkError(err, url)));
      });
      req.on("timeout", () => req.destroy(Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: "ETIMEDOUT" })));
      req.on("error", (err) => reject(this.networkError(err, url)));
      const body = o.body;
      if (!body) {
        req.end();
        return;
      }
      if (Buffer.isBuffer(body)) {
        req.end(body);
        o.onBytes?.(body.length);
        return;
      }
      // Streamed from the file with backpressure: memory stays at a few
      // chunks whatever the size of the blob.
      const stream = body.source.open(body.start, body.end);
      let sent = 0;
      stream.on("data", (c: Buffer) => {
        sent += c.length;
        o.onBytes?.(sent);
        if (!req.write(c)) {
          stream.pause();
          req.once("drain", () => stream.resume());
        }
      });
      stream.on("end", () => req.end());
      stream.on("error", (err) => req.destroy(err));
      req.on("close", () => stream.destroy());
    });
  }

  private networkError(err: Error, url: URL): Error {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (NETWORK_UNREACHABLE.has(code)) return new PushError(`cannot reach registry ${url.host}: ${code} (${err.message})`, "unreachable");
    if (NETWORK_TRANSIENT.has(code) || /socket hang up/.test(err.message)) return new TransientError(`${url.host}: ${code || "connection closed"} (${err.message})`);
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
   * A request with authentication: on 401 from the registry, answer the
   * challenge once and repeat; a second 401 (or a 403) is an authentication
   * failure. Redirects are followed, when asked, without credentials. 5xx
   * and 429 become TransientError; other statuses are returned.
   */
  async request(o: RequestOptions): Promise<Response> {
    let url = new URL(o.url, this.base);
    let method = o.method;
    let res = await this.send(method, url, o, this.authFor(url));
    if (res.status === 401 && credentialsAllowed(url, this.base, "registry")) {
      const challenge = res.headers["www-authenticate"];
      this.authorization = await this.authenticate(Array.isArray(challenge) ? challenge[0] : challenge);
      res = await this.send(method, url, o, this.authorization);
    }
    for (let hops = 0; o.followRedirects && REDIRECTS.has(res.status) && typeof res.headers.location === "string"; hops++) {
      if (hops >= MAX_REDIRECTS) throw new PushError(`${o.method} ${new URL(o.url, this.base).pathname}: more than ${MAX_REDIRECTS} redirects`, "protocol");
      url = new URL(res.headers.location, url);
      if (res.status === 303 && method !== "HEAD") method = "GET";
      // Never across a redirect: the target authorises its own URL.
      res = await this.send(method, url, method === "GET" && o.method !== "GET" ? { ...o, body: undefined } : o, undefined);
    }
    if (res.status === 401 || res.status === 403) {
      const why = registryErrorText(res.body) ?? `HTTP ${res.status}`;
      const hint = this.creds ? `as ${this.creds.username}` : "without credentials (none for this registry in the docker config)";
      const withheld = this.withheld ? `; ${this.withheld}` : "";
      throw new PushError(`authentication to ${this.ref.registry} failed ${hint}: ${why}${withheld}`, "auth");
    }
    if (res.status >= 500 || res.status === 429) {
      throw new TransientError(`${res.url.host} answered ${method} ${res.url.pathname} with HTTP ${res.status} ${registryErrorText(res.body) ?? ""}`.trim());
    }
    return res;
  }

  private authFor(url: URL): string | undefined {
    return credentialsAllowed(url, this.base, "registry") ? this.authorization : undefined;
  }

  private async authenticate(header: string | undefined): Promise<string | undefined> {
    const c = header ? parseChallenge(header) : undefined;
    if (c?.scheme === "basic") {
      if (!this.creds) throw new PushError(`${this.ref.registry} requires credentials and the docker config has none for it`, "auth");
      return basicAuth(this.creds);
    }
    if (c?.scheme === "bearer" && c.params["realm"]) {
      let realm: URL;
      try {
        realm = new URL(c.params["realm"]);
      } catch {
        throw new PushError(`${this.ref.registry} names an invalid token realm ${JSON.stringify(c.params["realm"])}`, "protocol");
      }
      if (realm.protocol !== "https:" && realm.protocol !== "http:") {
        throw new PushError(`${this.ref.registry} names a token realm that is not http(s): ${realm.protocol}`, "protocol");
      }
      if (c.params["service"]) realm.searchParams.set("service", c.params["service"]);
      // The challenge's scope may be just "pull"; ask for what a push needs,
      // and pull on every repository a blob may be mounted from.
      realm.searchParams.set("scope", `repository:${this.ref.repository}:pull,push`);
      for (const s of this.extraScopes) realm.searchParams.append("scope", s);
      let auth: string | undefined;
      if (this.creds) {
        if (credentialsAllowed(realm, this.base, "realm")) auth = basicAuth(this.creds);
        else this.withheld = `the credentials were not sent to the token service ${realm.origin}, which is neither https nor the registry itself`;
      }
      const res = await this.send("GET", realm, { method: "GET", url: realm.toString() }, auth);
      if (res.status === 401 || res.status === 403) {
        const how = this.creds ? (auth ? ` as ${this.creds.username}` : ` (${this.withheld})`) : " (no credentials)";
        throw new PushError(`authentication to ${this.ref.registry} failed${how}: the token service ${realm.host} answered HTTP ${res.status}`, "auth");
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
