/**
 * The demo and test images: Nix fixture closures (test/fixtures) built with
 * real Nix, turned into nix images by the real nix2container CLI.
 */
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { REPO } from "./daemon.js";

const run = promisify(execFile);

export const NIX2CONTAINER_BIN = path.join(REPO, "build/src/cli/nix2container.js");

export interface Fixtures {
  hello: string;
  busybox: string;
  "hello-closure": string;
  redis: string;
  "redis-closure": string;
  many: string;
  [name: string]: string;
}

/** Builds the fixture closures (GC roots under outDir); returns name -> store path. */
export async function buildFixtures(outDir: string, env: Record<string, string> = {}): Promise<Fixtures> {
  mkdirSync(outDir, { recursive: true });
  const { stdout } = await run("sh", [path.join(REPO, "test/fixtures/build-fixtures.sh"), outDir], {
    env: { ...process.env, ...env },
    maxBuffer: 16 * 1024 * 1024,
    timeout: 900_000,
  });
  const out: Record<string, string> = {};
  for (const line of stdout.split("\n")) {
    const [name, p] = line.split(" ");
    if (name && p) out[name] = p;
  }
  return out as Fixtures;
}

export interface NixImageSpec {
  /** Directory for the config file and the archive. */
  dir: string;
  name: string;
  /** A closureInfo output (its store-paths file is the closure). */
  closureInfo: string;
  config: Record<string, unknown>;
  copyToRoot?: string[];
  ref?: string;
}

/** Runs `nix2container build`; returns the archive path and its reference. */
export async function buildNixImageArchive(spec: NixImageSpec): Promise<{ archive: string; ref: string }> {
  mkdirSync(spec.dir, { recursive: true });
  const configFile = path.join(spec.dir, `${spec.name}-config.json`);
  writeFileSync(configFile, JSON.stringify(spec.config));
  const archive = path.join(spec.dir, `${spec.name}.tar`);
  const args = [NIX2CONTAINER_BIN, "build", "--config", configFile, "--closure", path.join(spec.closureInfo, "store-paths"), archive];
  if (spec.copyToRoot) {
    const ctr = path.join(spec.dir, `${spec.name}-copy-to-root.json`);
    writeFileSync(ctr, JSON.stringify(spec.copyToRoot));
    args.push("--copy-to-root", ctr);
  }
  if (spec.ref) args.push("--ref", spec.ref);
  const { stdout } = await run(process.execPath, args);
  return { archive, ref: stdout.split(" ")[0]! };
}

/** redis-server flags for a container on a read-only-friendly root without persistence. */
export function redisArgs(port: number): string[] {
  return ["--port", String(port), "--bind", "127.0.0.1", "--protected-mode", "no", "--save", "", "--appendonly", "no"];
}

export async function helloImage(dir: string, f: Fixtures) {
  return buildNixImageArchive({ dir, name: "hello", closureInfo: f["hello-closure"], config: { Entrypoint: [`${f.hello}/bin/hello`] } });
}

export async function redisImage(dir: string, f: Fixtures, port = 6379) {
  return buildNixImageArchive({
    dir,
    name: "redis",
    closureInfo: f["redis-closure"],
    config: { Entrypoint: [`${f.redis}/bin/redis-server`], Cmd: redisArgs(port), ExposedPorts: { [`${port}/tcp`]: {} } },
  });
}

/** Polls `redis-cli -p port ping` until PONG or the deadline. */
export async function waitForPong(port: number, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    try {
      const { stdout } = await run("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "ping"], { timeout: 2000 });
      last = stdout.trim();
      if (last === "PONG") return last;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`redis on port ${port} did not answer PONG within ${timeoutMs} ms (last: ${last})`);
}
