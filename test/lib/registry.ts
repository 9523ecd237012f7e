/**
 * A real OCI registry for tests: Debian's `docker-registry` (distribution
 * 2.8) on 127.0.0.1 with filesystem storage, started and stopped by PID,
 * with either htpasswd basic auth or token auth, and optionally TLS.
 *
 * Token auth needs an issuer. distribution verifies the token (an ES256 JWT
 * whose x5c header carries a certificate chaining to `rootcertbundle`,
 * registry/auth/token/token.go); startTokenIssuer is that issuer, checking
 * basic credentials the way a real token service does. It is the only
 * stand-in: no registry code is imitated.
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
  const key = createPrivateKey(readFileSync(o.tls.key));
  const x5c = [new X509Certificate(readFileSync(o.tls.cert)).raw.toString("base64")];
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const requests: TokenIssuer["requests"] = [];
  const server = http.createServer((req, res) => {
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
    realm: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/token`,
    requests,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
