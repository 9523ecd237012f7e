/**
 * The development environment behind the Makefile's targets: a private
 * containerd and nix-snapshotter with all state under ./build/dev (or
 * $NIX_SNAPSHOTTER_DEV_DIR), started in the background and stopped by PID.
 *
 * Run as root it is rootful. Run as an ordinary user it is rootless: both
 * daemons run inside one rootlesskit namespace (devenv/rootless.ts),
 * Nix work goes through the Nix daemon, containers run without cgroups of
 * their own (a user cannot create them without delegation), and run-redis
 * publishes its port on the host's 127.0.0.1.
 *
 * CONTAINERD=1.7|2 picks the containerd line (devenv/containerd.ts);
 * RUNTIME=runsc runs the demo containers under gVisor (devenv/gvisor.ts).
 *
 *   start-nix-snapshotter | start-containerd | stop | status
 *   run-hello | run-redis | demo | nsenter CMD... | ctr ARGS...
 */
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { binary, binaryEnv, containerdBinaries, startContainerd, type ContainerdBinaries } from "./containerd.js";
import { REPO, startDaemonProcess } from "./daemon.js";
import { runscWrapper, type RunscNetwork } from "./gvisor.js";
import { buildFixtures, helloImage, redisImage, waitForPong, type Fixtures } from "./images.js";
import { attachRootlessNamespace, type RootlessNamespace, startRootlessNamespace, stopRootlessNamespace } from "./rootless.js";
import { unmountBelow } from "./mounts.js";

const run = promisify(execFile);

export const DEV = path.resolve(process.env["NIX_SNAPSHOTTER_DEV_DIR"] ?? path.join(REPO, "build/dev"));
/** An ordinary user gets the rootless environment. */
export const ROOTLESS = process.getuid?.() !== 0;
export const PATHS = {
  snapshotterRoot: path.join(DEV, "nix-snapshotter"),
  snapshotterAddress: path.join(DEV, "run/nix-snapshotter.sock"),
  snapshotterLog: path.join(DEV, "nix-snapshotter.log"),
  containerdDir: path.join(DEV, "containerd"),
  containerdAddress: path.join(DEV, "containerd/containerd.sock"),
  pids: path.join(DEV, "pids"),
  /** The containerd line (CONTAINERD) the running containerd was started with. */
  containerdLine: path.join(DEV, "containerd/line"),
  fixtures: path.join(DEV, "fixtures"),
  images: path.join(DEV, "images"),
  rootless: path.join(DEV, "rootless"),
};

/** Rootless containers stay in the caller's cgroup: no cgroup path, no CPU shares to set. */
const RUN_FLAGS = ROOTLESS ? ["--cgroup", "", "--cpu-shares", "0"] : [];

/** RUNTIME: "runc" (default) or "runsc" (gVisor, behind the runc shim). */
const RUNTIME = process.env["RUNTIME"] || "runc";

/** ctr run flags for RUNTIME; network is the container's ("none": its own empty namespace, "host": --net-host). */
function runtimeFlags(network: RunscNetwork): string[] {
  if (RUNTIME === "runc") return [];
  if (RUNTIME !== "runsc") throw new Error(`RUNTIME=${RUNTIME}: use runc or runsc`);
  if (ROOTLESS) throw new Error("RUNTIME=runsc: the development environment runs gVisor as root only");
  // runsc's state apart from runc's /run/containerd/runc/<namespace>, which every containerd shares.
  return ["--runc-binary", runscWrapper(path.join(DEV, "runsc"), network), "--runc-root", path.join(DEV, "runsc/state")];
}

/** The port the demo's redis listens on (host network). */
export const REDIS_PORT = Number(process.env["REDIS_PORT"] ?? 6379);

function pidFile(name: string): string {
  return path.join(PATHS.pids, `${name}.pid`);
}

function runningPid(name: string): number | undefined {
  const f = pidFile(name);
  if (!existsSync(f)) return undefined;
  const pid = Number(readFileSync(f, "utf8").trim());
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    rmSync(f, { force: true });
    return undefined;
  }
}

/** The daemon's config: this containerd for the image service; OVERLAY_DRIVER picks the overlay driver. */
function snapshotterConfig(): string {
  let toml = `[image_service]\ncontainerd_address = ${JSON.stringify(PATHS.containerdAddress)}\n`;
  const driver = process.env["OVERLAY_DRIVER"];
  if (driver) toml += `[overlay]\ndriver = ${JSON.stringify(driver)}\n`;
  return toml;
}

/** A path for messages: relative inside the repository, absolute elsewhere. */
function shown(p: string): string {
  const rel = path.relative(REPO, p);
  return rel.startsWith("..") ? p : rel;
}

/** The running rootless namespace; undefined when rootful; an error when rootless and not started. */
function runningNamespace(): RootlessNamespace | undefined {
  if (!ROOTLESS) return undefined;
  const pid = runningPid("rootlesskit");
  if (!pid) throw new Error("the rootless environment is not running: make start-containerd first");
  return attachRootlessNamespace(PATHS.rootless, pid);
}

/** The rootless namespace, started if needed; undefined when rootful. */
async function namespace(): Promise<RootlessNamespace | undefined> {
  if (!ROOTLESS) return undefined;
  const pid = runningPid("rootlesskit");
  if (pid) return attachRootlessNamespace(PATHS.rootless, pid);
  mkdirSync(PATHS.pids, { recursive: true });
  const ns = await startRootlessNamespace({ stateDir: PATHS.rootless, logFile: path.join(DEV, "rootlesskit.log"), detached: true });
  writeFileSync(pidFile("rootlesskit"), String(ns.pid));
  console.log(`rootlesskit namespace running (pid ${ns.pid}): containerd and nix-snapshotter run inside as uid 0 of a user namespace`);
  return ns;
}

export async function startSnapshotter(): Promise<void> {
  const pid = runningPid("nix-snapshotter");
  if (pid) return console.log(`nix-snapshotter already running (pid ${pid})`);
  mkdirSync(PATHS.pids, { recursive: true });
  const d = await startDaemonProcess({
    root: PATHS.snapshotterRoot,
    address: PATHS.snapshotterAddress,
    logFile: PATHS.snapshotterLog,
    config: snapshotterConfig(),
    detached: true,
    ...(ROOTLESS ? { wrap: (await namespace())!.wrap } : {}),
  });
  writeFileSync(pidFile("nix-snapshotter"), String(d.pid));
  console.log(`nix-snapshotter running (pid ${d.pid}), socket ${shown(PATHS.snapshotterAddress)}, log ${shown(PATHS.snapshotterLog)}`);
}

export async function startContainerdDev(): Promise<void> {
  const pid = runningPid("containerd");
  if (pid) return console.log(`containerd already running (pid ${pid})`);
  mkdirSync(PATHS.pids, { recursive: true });
  const ns = await namespace();
  const c = await startContainerd({ dir: PATHS.containerdDir, snapshotterAddress: PATHS.snapshotterAddress, detached: true, ...(ns ? { wrap: ns.wrap } : {}) });
  writeFileSync(pidFile("containerd"), String(c.pid));
  writeFileSync(PATHS.containerdLine, c.binaries.line);
  console.log(`containerd ${c.binaries.version} running (pid ${c.pid}), socket ${shown(c.address)}`);
}

async function stopOne(name: string): Promise<void> {
  const pid = runningPid(name);
  if (!pid) return;
  process.kill(pid, "SIGTERM");
  for (let i = 0; i < 200; i++) {
    await new Promise((r) => setTimeout(r, 50));
    try {
      process.kill(pid, 0);
    } catch {
      rmSync(pidFile(name), { force: true });
      console.log(`stopped ${name} (pid ${pid})`);
      return;
    }
  }
  process.kill(pid, "SIGKILL");
  rmSync(pidFile(name), { force: true });
  console.log(`killed ${name} (pid ${pid}): it did not stop within 10 s`);
}

export async function stopAll(): Promise<void> {
  if (runningPid("containerd")) await stopRedis().catch(() => {});
  // containerd first: it holds the snapshotter's mounts and connections.
  await stopOne("containerd");
  await stopOne("nix-snapshotter");
  await stopNamespace();
  unmountBelow(DEV);
}

async function stopNamespace(): Promise<void> {
  const kit = runningPid("rootlesskit");
  if (!kit) return;
  await stopRootlessNamespace(attachRootlessNamespace(PATHS.rootless, kit));
  rmSync(pidFile("rootlesskit"), { force: true });
  console.log(`stopped the rootlesskit namespace (pid ${kit})`);
}

/** ctr against the dev containerd; rootless, from inside the namespace (its fifos live there). */
/** The binaries of the running containerd's line (ctr of the same line), else CONTAINERD's. */
function devBinaries(): ContainerdBinaries {
  const line = runningPid("containerd") && existsSync(PATHS.containerdLine) ? readFileSync(PATHS.containerdLine, "utf8").trim() : undefined;
  return containerdBinaries(line);
}

async function ctr(args: string[]): Promise<string> {
  const b = devBinaries();
  const [cmd, ...argv] = [...(runningNamespace()?.wrap ?? []), binary(b, "ctr"), "--address", PATHS.containerdAddress, "--namespace", "default", ...args] as string[] as [string, ...string[]];
  try {
    const { stdout } = await run(cmd, argv, { timeout: 300_000, env: binaryEnv(b) });
    return stdout;
  } catch (err) {
    throw new Error(`ctr ${args.join(" ")}: ${((err as { stderr?: string }).stderr || (err as Error).message).trim()}`);
  }
}

/** Starts what is not running (snapshotter first: containerd's CRI wants it up). */
async function ensureRunning(): Promise<string[]> {
  const started: string[] = [];
  if (!runningPid("nix-snapshotter")) {
    await startSnapshotter();
    started.push("nix-snapshotter");
  }
  if (!runningPid("containerd")) {
    await startContainerdDev();
    started.push("containerd");
  }
  return started;
}

async function fixtures(): Promise<Fixtures> {
  console.log("building the hello and redis closures with Nix (test/fixtures)...");
  const f = await buildFixtures(PATHS.fixtures);
  // Which store paths the environment uses, for tools and tests.
  writeFileSync(path.join(DEV, "fixtures.json"), JSON.stringify(f, null, 2) + "\n");
  return f;
}

/** Imports through the Transfer service, the ctr path that hands layer annotations to the snapshotter. */
async function importImage(archive: string): Promise<void> {
  await ctr(["images", "import", "--local=false", "--snapshotter", "nix", archive]);
}

async function runHello(f?: Fixtures): Promise<void> {
  await ensureRunning();
  const img = await helloImage(PATHS.images, f ?? (await fixtures()));
  await importImage(img.archive);
  const rt = runtimeFlags("none");
  console.log(`$ ctr run --rm ${rt.length ? "--runc-binary runsc-none " : ""}--snapshotter nix ${img.ref} hello`);
  const out = await ctr(["run", "--rm", ...RUN_FLAGS, ...rt, "--snapshotter", "nix", img.ref, `hello-${process.pid}`]);
  process.stdout.write(out);
  if (out.trim() !== "Hello, world!") throw new Error(`hello printed ${JSON.stringify(out)}, not "Hello, world!"`);
}

async function runRedis(f?: Fixtures): Promise<void> {
  await ensureRunning();
  const img = await redisImage(PATHS.images, f ?? (await fixtures()), REDIS_PORT);
  await importImage(img.archive);
  await stopRedis();
  const rt = runtimeFlags("host");
  console.log(`$ ctr run -d --net-host ${rt.length ? "--runc-binary runsc-host " : ""}--snapshotter nix ${img.ref} redis`);
  await ctr(["run", "-d", "--net-host", ...RUN_FLAGS, ...rt, "--snapshotter", "nix", img.ref, "redis"]);
  // Rootless, the host network of the container is the namespace's: publish the port.
  await runningNamespace()?.publish(REDIS_PORT);
  const pong = await waitForPong(REDIS_PORT);
  console.log(`$ redis-cli -p ${REDIS_PORT} ping\n${pong}`);
}

async function stopRedis(): Promise<void> {
  const containers = await ctr(["containers", "ls", "-q"]);
  if (!containers.split("\n").includes("redis")) return;
  await ctr(["tasks", "kill", "-s", "SIGKILL", "redis"]).catch(() => {});
  for (let i = 0; i < 50; i++) {
    const tasks = await ctr(["tasks", "ls"]);
    if (!/^redis\s+\d+\s+RUNNING/m.test(tasks)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await ctr(["tasks", "rm", "-f", "redis"]).catch(() => {});
  await ctr(["containers", "rm", "redis"]);
}

/** The quick start: start, build, run hello and redis, stop what was started. */
async function demo(): Promise<void> {
  const hadNamespace = runningPid("rootlesskit") !== undefined;
  const started = await ensureRunning();
  try {
    const f = await fixtures();
    await runHello(f);
    await runRedis(f);
    await stopRedis();
    console.log("demo finished: both containers ran their packages straight from the Nix store");
  } finally {
    if (started.includes("containerd")) await stopOne("containerd");
    if (started.includes("nix-snapshotter")) await stopOne("nix-snapshotter");
    if (!hadNamespace) await stopNamespace();
    if (started.length > 0) unmountBelow(DEV);
  }
}

const commands: Record<string, () => Promise<void>> = {
  "run-hello": () => runHello(),
  "run-redis": () => runRedis(),
  demo,
  "start-nix-snapshotter": startSnapshotter,
  "start-containerd": startContainerdDev,
  stop: stopAll,
  "stop-redis": stopRedis,
  /** A command inside the environment's namespaces (rootless), or just the command (rootful). */
  async nsenter() {
    const argv = process.argv.slice(3);
    if (argv.length === 0) argv.push(process.env["SHELL"] ?? "sh");
    const [cmd, ...rest] = [...(runningNamespace()?.wrap ?? []), ...argv] as string[] as [string, ...string[]];
    const code = await new Promise<number>((resolve, reject) => {
      const child = spawn(cmd, rest, { stdio: "inherit", env: { ...process.env, CONTAINERD_ADDRESS: PATHS.containerdAddress } });
      child.once("error", reject);
      child.once("exit", (c, sig) => resolve(c ?? (sig ? 128 : 1)));
    });
    if (code !== 0) process.exit(code);
  },
  /** ctr with the environment's socket (and namespace, rootless). */
  async ctr() {
    process.stdout.write(await ctr(process.argv.slice(3)));
  },
  async status() {
    for (const n of [...(ROOTLESS ? ["rootlesskit"] : []), "nix-snapshotter", "containerd"]) {
      const pid = runningPid(n);
      console.log(`${n}: ${pid ? `running (pid ${pid})` : "stopped"}`);
    }
  },
};

export async function runCommand(extra: Record<string, () => Promise<void>>): Promise<void> {
  const all = { ...commands, ...extra };
  const cmd = process.argv[2] ?? "";
  const fn = all[cmd];
  if (!fn) {
    console.error(`usage: devenv {${Object.keys(all).join("|")}}`);
    process.exit(2);
  }
  try {
    await fn();
  } catch (err) {
    console.error(`${cmd}: ${(err as Error).message}`);
    process.exit(1);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runCommand({});
}
