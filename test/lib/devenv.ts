/**
 * The development environment behind the Makefile's targets: a private
 * containerd and nix-snapshotter with all state under ./build/dev, started
 * in the background and stopped by PID.
 *
 *   start-nix-snapshotter | start-containerd | stop | status
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { startContainerd } from "./containerd.js";
import { REPO, startDaemonProcess } from "./daemon.js";
import { unmountBelow } from "./tmp.js";

export const DEV = path.join(REPO, "build/dev");
export const PATHS = {
  snapshotterRoot: path.join(DEV, "nix-snapshotter"),
  snapshotterAddress: path.join(DEV, "run/nix-snapshotter.sock"),
  snapshotterLog: path.join(DEV, "nix-snapshotter.log"),
  containerdDir: path.join(DEV, "containerd"),
  containerdAddress: path.join(DEV, "containerd/containerd.sock"),
  pids: path.join(DEV, "pids"),
};

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
  // containerd first: it holds the snapshotter's mounts and connections.
  await stopOne("containerd");
  await stopOne("nix-snapshotter");
  unmountBelow(DEV);
}

const commands: Record<string, () => Promise<void>> = {
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
