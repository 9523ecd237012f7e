/**
 * A real OCI registry for tests: Debian's `docker-registry` (distribution
 * 2.8) on 127.0.0.1 with filesystem storage, started and stopped by PID,
 * with either htpasswd basic auth or token auth, and optionally TLS.
 *
 * Token auth needs an issuer. distribution verifies the token (an ES256 JWT
 * whose x5c header carries a certificate chaining to `rootcertbundle`,
 * registry/auth/token/token.go); startTokenIssuer is that issuer, checking
 * basic credentials the way a real token service does, served over https
 * as token services are (credentials go to a realm on another origin only
 * over https).
 *
 * Faults and fronts a real registry cannot be made to show, each a small
 * loopback server the test starts: startCapturingRealm (a token realm on
 * another host that records what it is sent), startFront (a front that
 * redirects blob requests or hands out upload locations on another host, as
 * registries behind CDNs and blob stores do, and can drop a connection
 * mid-upload). No registry code is imitated: every blob and manifest still
 * goes to and from the real registry.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createPrivateKey, sign, X509Certificate } from "node:crypto";
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "./util.js";

export interface TlsFiles {
  cert: string;
  key: string;
}

/** A self-signed P-256 certificate for 127.0.0.1 (also its own CA). */
export function makeCert(dir: string): TlsFiles {
  mkdirSync(dir, { recursive: true });
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
      "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
    { stdio: "ignore" },
  );
  return { cert, key };
}

export function htpasswdFile(file: string, user: string, password: string): string {
  writeFileSync(file, execFileSync("htpasswd", ["-Bbn", user, password]));
  return file;
}

export type RegistryAuth = { htpasswd: string } | { token: { realm: string; service: string; issuer: string; rootCertBundle: string } };

export interface RegistryOptions {
  dir: string;
  /** Storage root; default <dir>/data. */
  storage?: string;
  auth: RegistryAuth;
  tls?: TlsFiles;
}

export interface RegistryResponse {
  method: string;
  uri: string;
  status: number;
  /** Body bytes the registry wrote (http.response.written). */
  written: number;
}

/** The "response completed" lines of distribution's log. */
function parseResponses(log: string): RegistryResponse[] {
  const out: RegistryResponse[] = [];
  for (const line of readFileSync(log, "utf8").split("\n")) {
    if (!/msg="response completed/.test(line)) continue;
    const field = (name: string) => new RegExp(` ${name.replace(/\./g, "\\.")}="?([^"\\s]+)"?`).exec(line)?.[1];
    out.push({
      method: field("http.request.method") ?? "",
      uri: field("http.request.uri") ?? "",
      status: Number(field("http.response.status") ?? 0),
      written: Number(field("http.response.written") ?? 0),
    });
  }
  return out;
}

export interface Registry {
  /** host:port */
  readonly host: string;
  readonly port: number;
  readonly log: string;
  readonly pid: number;
  /** Requests the registry completed, by method and a URI pattern (from its access log). */
  count(method: string, uri: RegExp, status?: number): number;
  /** Every request the registry completed so far, in order (from its log). */
  responses(): RegistryResponse[];
  stop(): Promise<void>;
}

function config(o: RegistryOptions, port: number): string {
  let cfg = `version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${o.storage ?? path.join(o.dir, "data")}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
`;
  if (o.tls) cfg += `  tls:\n    certificate: ${o.tls.cert}\n    key: ${o.tls.key}\n`;
  if ("htpasswd" in o.auth) {
    cfg += `auth:\n  htpasswd:\n    realm: nix2container-test\n    path: ${o.auth.htpasswd}\n`;
  } else {
    const t = o.auth.token;
    cfg += `auth:\n  token:\n    realm: ${t.realm}\n    service: ${t.service}\n    issuer: ${t.issuer}\n    rootcertbundle: ${t.rootCertBundle}\n`;
  }
  return cfg;
}

/** Resolves once the registry answers /v2/ at all (401 included). */
async function waitForHttp(url: string, child: ChildProcess, log: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}) before serving: ${readFileSync(log, "utf8").slice(-2000)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const mod = url.startsWith("https:") ? https : http;
      const req = mod.get(url, { rejectUnauthorized: false, timeout: 1000 }, (res) => {
        res.resume();
        resolve(true);
      });
      req.on("error", () => resolve(false));
      req.on("timeout", () => req.destroy());
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`docker-registry did not answer ${url} within ${timeoutMs} ms; see ${log}`);
    await sleep(50);
  }
}

export async function startRegistry(o: RegistryOptions): Promise<Registry> {
  mkdirSync(o.dir, { recursive: true });
  const port = await freePort();
  const configFile = path.join(o.dir, "config.yml");
  writeFileSync(configFile, config(o, port));
  const log = path.join(o.dir, "registry.log");
  const fd = openSync(log, "a");
  const child = spawn("docker-registry", ["serve", configFile], { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await waitForHttp(`${o.tls ? "https" : "http"}://127.0.0.1:${port}/v2/`, child, log);
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    log,
    pid: child.pid!,
    count(method, uri, status) {
      return parseResponses(log).filter((r) => r.method === method && uri.test(r.uri) && (status === undefined || r.status === status)).length;
    },
    responses: () => parseResponses(log),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

export interface TokenIssuer {
  readonly realm: string;
  /** Each token request: its scope and whether its credentials were right. */
  readonly requests: { scope: string; service: string; authorized: boolean }[];
  stop(): Promise<void>;
}

/**
 * A token service for distribution's token auth (docs/spec/auth/token.md):
 * GET <realm>?service=&scope= with basic credentials answers
 * {"token": <JWT>} granting the scope's actions, or 401.
 */
export async function startTokenIssuer(o: { tls: TlsFiles; issuer: string; user: string; password: string }): Promise<TokenIssuer> {
  const tlsOpts = { cert: readFileSync(o.tls.cert), key: readFileSync(o.tls.key) };
  const key = createPrivateKey(readFileSync(o.tls.key));
  const x5c = [new X509Certificate(readFileSync(o.tls.cert)).raw.toString("base64")];
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const requests: TokenIssuer["requests"] = [];
  const server = https.createServer(tlsOpts, (req, res) => {
    const url = new URL(req.url ?? "/", "http://issuer");
    const scope = url.searchParams.get("scope") ?? "";
    const service = url.searchParams.get("service") ?? "";
    const authorized = req.headers.authorization === `Basic ${Buffer.from(`${o.user}:${o.password}`).toString("base64")}`;
    requests.push({ scope, service, authorized });
    if (!authorized) {
      res.writeHead(401, { "content-type": "application/json" }).end('{"details":"wrong credentials"}');
      return;
    }
    // scope "repository:<name>:<actions>"
    const [type, name, actions] = scope.split(":");
    const now = Math.floor(Date.now() / 1000);
    const header = b64({ typ: "JWT", alg: "ES256", x5c });
    const claims = b64({
      iss: o.issuer,
      sub: o.user,
      aud: service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: `${now}-${requests.length}`,
      access: type && name && actions ? [{ type, name, actions: actions.split(",") }] : [],
    });
    // JWS ES256: the raw r||s signature (RFC 7518 3.4).
    const signature = sign("sha256", Buffer.from(`${header}.${claims}`), { key, dsaEncoding: "ieee-p1363" }).toString("base64url");
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token: `${header}.${claims}.${signature}`, expires_in: 300 }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    realm: `https://127.0.0.1:${(server.address() as net.AddressInfo).port}/token`,
    requests,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

export interface CapturingRealm {
  readonly realm: string;
  /** The Authorization header of every request (undefined when none was sent). */
  readonly authorizations: (string | undefined)[];
  stop(): Promise<void>;
}

/**
 * A token realm on another loopback address (127.0.0.2: another host as far
 * as origins go) over plain http, that records every Authorization header
 * and grants nothing: what a hostile registry would name to collect a
 * password.
 */
export async function startCapturingRealm(address = "127.0.0.2"): Promise<CapturingRealm> {
  const authorizations: (string | undefined)[] = [];
  const server = http.createServer((req, res) => {
    authorizations.push(req.headers.authorization);
    res.writeHead(401, { "content-type": "application/json" }).end('{"details":"no"}');
  });
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(0, address, resolve));
  return {
    realm: `http://${address}:${(server.address() as net.AddressInfo).port}/token`,
    authorizations,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

export interface FrontRequest {
  method: string;
  url: string;
  authorization?: string;
}

export interface FrontOptions {
  /** host:port of the registry (plain http) behind the front. */
  target: string;
  /** Answer blob HEAD/GET and upload PUTs with a 307 to this base URL (the same path there). */
  redirectBlobsTo?: string;
  /** Rewrite the Location of new upload sessions to this base URL (an upload host of its own). */
  uploadsAt?: string;
  /** Sent to the registry in place of whatever Authorization the client sent (a blob store honouring its own URLs). */
  authorization?: string;
  /**
   * Drop the connection of the PATCH whose Content-Range starts at this
   * offset, once 256 KiB of its body arrived and before the registry sees
   * any of it (a connection lost between client and front). Once.
   */
  dropPatchAt?: number;
  address?: string;
}

export interface Front {
  readonly url: string;
  readonly host: string;
  readonly requests: FrontRequest[];
  /** Connections dropped so far. */
  dropped: number;
  stop(): Promise<void>;
}

/** A plain-http front for a registry; see FrontOptions. Host headers pass through, so the registry's Locations name the front. */
export async function startFront(o: FrontOptions): Promise<Front> {
  const requests: FrontRequest[] = [];
  let dropAt = o.dropPatchAt;
  const front: Front = {
    url: "",
    host: "",
    requests,
    dropped: 0,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
  const blobPath = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/;
  const uploadPath = /^\/v2\/.+\/blobs\/uploads\/[^/?]+/;
  const server = http.createServer((req, res) => {
    const url = req.url ?? "/";
    requests.push({ method: req.method ?? "", url, ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}) });
    const pathname = url.split("?")[0]!;
    if (o.redirectBlobsTo && (((req.method === "HEAD" || req.method === "GET") && blobPath.test(pathname)) || (req.method === "PUT" && uploadPath.test(pathname)))) {
      req.resume();
      res.writeHead(307, { location: `${o.redirectBlobsTo}${url}`, "content-length": "0" }).end();
      return;
    }
    const start = Number(/^(\d+)-/.exec(String(req.headers["content-range"] ?? ""))?.[1] ?? -1);
    if (req.method === "PATCH" && dropAt !== undefined && start === dropAt) {
      dropAt = undefined;
      let seen = 0;
      req.on("data", (c: Buffer) => {
        seen += c.length;
        if (seen > 256 * 1024 && !req.socket.destroyed) {
          front.dropped++;
          req.socket.destroy();
        }
      });
      return;
    }
    forward();

    function forward(): void {
      const headers = { ...req.headers };
      if (o.authorization) headers.authorization = o.authorization;
      const up = http.request({ host: o.target.split(":")[0], port: Number(o.target.split(":")[1]), method: req.method, path: url, headers }, (r) => {
        const h = { ...r.headers };
        if (o.uploadsAt && req.method === "POST" && r.statusCode === 202 && typeof h.location === "string") {
          const loc = new URL(h.location, `http://${req.headers.host}`);
          h.location = `${o.uploadsAt}${loc.pathname}${loc.search}`;
        }
        res.writeHead(r.statusCode ?? 502, h);
        r.pipe(res);
      });
      up.on("error", () => res.destroy());
      req.pipe(up);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, o.address ?? "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  (front as { host: string }).host = `${o.address ?? "127.0.0.1"}:${port}`;
  (front as { url: string }).url = `http://${front.host}`;
  return front;
}
