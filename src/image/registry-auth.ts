/**
 * Registry credentials for `nix2container push` (the references themselves
 * are parsed in reference.ts).
 *
 * Credentials come from the docker CLI's config file,
 * $DOCKER_CONFIG/config.json or ~/.docker/config.json, in the docker CLI's
 * order (cli/config/configfile GetCredentialsStore):
 *   1. `credHelpers[<registry>]`: run `docker-credential-<name> get`;
 *   2. else `credsStore`: the same with that helper;
 *   3. else `auths` entries keyed by host (also "https://host",
 *      "http://host/..." and, for Docker Hub, "https://index.docker.io/v1/"),
 *      each with `auth` = base64("user:pass") or `username` and `password`.
 * A helper reads the server URL on stdin and prints
 * {"ServerURL","Username","Secret"} (docker-credential-helpers'
 * client.Get); "credentials not found" on its output means none.
 *
 * Authentication follows the distribution spec's token flow
 * (docs/spec/auth/token.md): a request answered 401 carries
 * `WWW-Authenticate: Basic realm=...` (send the credentials as basic auth)
 * or `Bearer realm=...,service=...,scope=...` (GET realm?service=&scope=
 * with the credentials as basic auth, if allowed, and send the returned
 * `token`/`access_token` as a bearer token). Where credentials may go is
 * decided in one place, credentialsAllowed() below.
 */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { InvalidArgumentError } from "../errors.js";
import { DOCKER_HUB, DOCKER_HUB_API_HOST } from "./reference.js";

const DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/";

export interface Credentials {
  username: string;
  password: string;
}

/** The docker config directory: $DOCKER_CONFIG, else ~/.docker. */
export function dockerConfigDir(env: NodeJS.ProcessEnv = process.env): string {
  return env["DOCKER_CONFIG"] || path.join(env["HOME"] || os.homedir(), ".docker");
}

function hostOfAuthKey(key: string): string {
  // "https://host/v1/", "http://host", "host"
  return key.replace(/^[a-z]+:\/\//i, "").split("/")[0]!;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string }>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

/** Helper names become part of an executable's name: keep them to what docker-credential-helpers ship. */
const HELPER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * The credentials the docker config gives for `registry`, or undefined. A
 * file that exists but cannot be parsed, or a helper that fails, is an error
 * naming it.
 */
export async function loadCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): Promise<Credentials | undefined> {
  const file = path.join(dockerConfigDir(env), "config.json");
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new InvalidArgumentError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let cfg: DockerConfigFile;
  try {
    cfg = JSON.parse(text) as DockerConfigFile;
  } catch (err) {
    throw new InvalidArgumentError(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  const serverUrl = registry === DOCKER_HUB ? DOCKER_HUB_AUTH_KEY : registry;
  const helper = cfg.credHelpers?.[registry] ?? (registry === DOCKER_HUB ? cfg.credHelpers?.[DOCKER_HUB_AUTH_KEY] : undefined) ?? cfg.credsStore;
  if (helper) {
    if (!HELPER_NAME.test(helper)) throw new InvalidArgumentError(`${file}: invalid credential helper name ${JSON.stringify(helper)}`);
    return runCredentialHelper(helper, serverUrl, env);
  }
  const auths = cfg.auths ?? {};
  const wanted = registry === DOCKER_HUB ? [DOCKER_HUB_AUTH_KEY, DOCKER_HUB, DOCKER_HUB_API_HOST, "index.docker.io"] : [registry];
  const key =
    wanted.find((w) => auths[w] !== undefined) ??
    Object.keys(auths).find((k) => wanted.includes(hostOfAuthKey(k)));
  if (key === undefined) return undefined;
  const entry = auths[key]!;
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon === -1) throw new InvalidArgumentError(`${file}: auths["${key}"].auth is not base64 of user:password`);
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  if (entry.username !== undefined && entry.password !== undefined) return { username: entry.username, password: entry.password };
  return undefined;
}

/**
 * `docker-credential-<helper> get` with the server URL on stdin. Not found
 * (the helpers print "credentials not found in native keychain" and exit 1)
 * is no credentials; any other failure is an error naming the helper.
 */
async function runCredentialHelper(helper: string, serverUrl: string, env: NodeJS.ProcessEnv = process.env): Promise<Credentials | undefined> {
  const program = `docker-credential-${helper}`;
  const { code, stdout, error } = await new Promise<{ code: number | null; stdout: string; error?: Error }>((resolve) => {
    const child = spawn(program, ["get"], { env, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => (err += c.toString("utf8")));
    child.on("error", (e) => resolve({ code: null, stdout: "", error: e }));
    child.on("close", (c) => resolve({ code: c, stdout: out || err }));
    child.stdin.on("error", () => undefined);
    child.stdin.end(serverUrl);
  });
  if (error) {
    const why = (error as NodeJS.ErrnoException).code === "ENOENT" ? "is not on PATH" : `could not run (${error.message})`;
    throw new InvalidArgumentError(`credential helper ${program} (from the docker config) ${why}`);
  }
  if (code !== 0) {
    if (/credentials not found/i.test(stdout)) return undefined;
    throw new InvalidArgumentError(`credential helper ${program} failed for ${serverUrl} (exit ${code}): ${stdout.trim().split("\n")[0] ?? ""}`);
  }
  let parsed: { Username?: unknown; Secret?: unknown };
  try {
    parsed = JSON.parse(stdout) as typeof parsed;
  } catch {
    throw new InvalidArgumentError(`credential helper ${program} printed no JSON for ${serverUrl}`);
  }
  if (typeof parsed.Username !== "string" || typeof parsed.Secret !== "string") {
    throw new InvalidArgumentError(`credential helper ${program} gave no Username and Secret for ${serverUrl}`);
  }
  // "<token>" marks an identity (OAuth refresh) token, which needs the
  // OAuth2 token flow this client does not speak.
  if (parsed.Username === "<token>") {
    throw new InvalidArgumentError(`credential helper ${program} gave an identity token for ${serverUrl}; only username and password are supported`);
  }
  return { username: parsed.Username, password: parsed.Secret };
}

/**
 * Where credentials may be sent (docker's rules, and the reason this
 * exists: a registry names its token realm and its upload locations, and a
 * hostile or compromised one must not collect the password by naming its
 * own host):
 *   - "registry": a request to the registry itself; only to its own origin
 *     (scheme, host and port), never to another upload host nor after a
 *     redirect (the caller drops the header on every redirect);
 *   - "realm": a token request; over https (any host, as Docker Hub's
 *     auth.docker.io is another host), or to the registry's own origin.
 */
export function credentialsAllowed(target: URL, registry: URL, purpose: "registry" | "realm"): boolean {
  if (target.origin === registry.origin) return true;
  return purpose === "realm" && target.protocol === "https:";
}

export function basicAuth(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/**
 * Parses a WWW-Authenticate header (RFC 7235: scheme, then comma-separated
 * key=value or key="quoted value" pairs). Takes the first challenge.
 */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z][\w-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /\s*([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)/gy;
  const rest = m[2]!;
  re.lastIndex = 0;
  let p: RegExpExecArray | null;
  while (re.lastIndex < rest.length && (p = re.exec(rest)) !== null) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, "$1") : p[3]!;
  }
  return { scheme: m[1]!.toLowerCase(), params };
}
