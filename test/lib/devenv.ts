/**
 * The development environment behind the Makefile's targets: a private
 * containerd and nix-snapshotter with all state under ./build/dev, started
 * in the background and stopped by PID.
 *
 *   start-nix-snapshotter | start-containerd | stop | status
 *   run-hello | run-redis | demo
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { startContainerd } from "./containerd.js";
import { REPO, startDaemonProcess } from "./daemon.js";
import { buildFixtures, helloImage, redisImage, waitForPong, type Fixtures } from "./images.js";
import { unmountBelow } from "./tmp.js";

const run = promisify(execFile);

export const DEV = path.join(REPO, "build/dev");
export const PATHS = {
  snapshotterRoot: path.join(DEV, "nix-snapshotter"),
  snapshotterAddress: path.join(DEV, "run/nix-snapshotter.sock"),
  snapshotterLog: path.join(DEV, "nix-snapshotter.log"),
  containerdDir: path.join(DEV, "containerd"),
  containerdAddress: path.join(DEV, "containerd/containerd.sock"),
  pids: path.join(DEV, "pids"),
  fixtures: path.join(DEV, "fixtures"),
  images: path.join(DEV, "images"),
};

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

export async function startSnapshotter(): Promise<void> {
  const pid = runningPid("nix-snapshotter");
  if (pid) return console.log(`nix-snapshotter already running (pid ${pid})`);
  mkdirSync(PATHS.pids, { recursive: true });
  const d = await startDaemonProcess({
    root: PATHS.snapshotterRoot,
    address: PATHS.snapshotterAddress,
    logFile: PATHS.snapshotterLog,
    detached: true,
  });
  writeFileSync(pidFile("nix-snapshotter"), String(d.pid));
  console.log(`nix-snapshotter running (pid ${d.pid}), socket ${path.relative(REPO, PATHS.snapshotterAddress)}, log ${path.relative(REPO, PATHS.snapshotterLog)}`);
}

export async function startContainerdDev(): Promise<void> {
  const pid = runningPid("containerd");
  if (pid) return console.log(`containerd already running (pid ${pid})`);
  mkdirSync(PATHS.pids, { recursive: true });
  const c = await startContainerd({ dir: PATHS.containerdDir, snapshotterAddress: PATHS.snapshotterAddress, detached: true });
  writeFileSync(pidFile("containerd"), String(c.pid));
  console.log(`containerd running (pid ${c.pid}), socket ${path.relative(REPO, c.address)}`);
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
  unmountBelow(DEV);
}

async function ctr(args: string[]): Promise<string> {
  try {
    const { stdout } = await run("ctr", ["--address", PATHS.containerdAddress, "--namespace", "default", ...args], { timeout: 300_000 });
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
  return buildFixtures(PATHS.fixtures);
}

/** Imports through the Transfer service, the ctr path that hands layer annotations to the snapshotter. */
async function importImage(archive: string): Promise<void> {
  await ctr(["images", "import", "--local=false", "--snapshotter", "nix", archive]);
}

async function runHello(f?: Fixtures): Promise<void> {
  await ensureRunning();
  const img = await helloImage(PATHS.images, f ?? (await fixtures()));
  await importImage(img.archive);
  console.log(`$ ctr run --rm --snapshotter nix ${img.ref} hello`);
  const out = await ctr(["run", "--rm", "--snapshotter", "nix", img.ref, `hello-${process.pid}`]);
  process.stdout.write(out);
  if (out.trim() !== "Hello, world!") throw new Error(`hello printed ${JSON.stringify(out)}, not "Hello, world!"`);
}

async function runRedis(f?: Fixtures): Promise<void> {
  await ensureRunning();
  const img = await redisImage(PATHS.images, f ?? (await fixtures()), REDIS_PORT);
  await importImage(img.archive);
  await stopRedis();
  console.log(`$ ctr run -d --net-host --snapshotter nix ${img.ref} redis`);
  await ctr(["run", "-d", "--net-host", "--snapshotter", "nix", img.ref, "redis"]);
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
  async status() {
    for (const n of ["nix-snapshotter", "containerd"]) {
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
