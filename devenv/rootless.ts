/**
 * A rootlesskit namespace for running containerd and nix-snapshotter as an
 * ordinary user: a user namespace (the user is uid 0 in it, the subordinate
 * ids of /etc/subuid and /etc/subgid map the rest), a mount namespace, and a
 * network namespace whose traffic slirp4netns carries and whose ports
 * rootlesskit publishes on the host.
 *
 * The namespace is held open by a `sleep` that rootlesskit starts; the
 * daemons and every ctr call enter it with nsenter (which execs, so the PID
 * we see is the daemon's). Stopping rootlesskit ends the namespace.
 *
 * Inside, /run is a tmpfs whose entries link to the host's (--copy-up):
 * /run/containerd, where ctr and the shims keep fifos and runc its state,
 * is replaced by a directory of our own, bind-mounted from the state dir.
 */
import { execFile, spawn } from "node:child_process";
import { accessSync, closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface RootlessNamespace {
  /** rootlesskit's PID (the parent, in the host's namespaces). */
  readonly pid: number;
  /** The PID (host view) of the process holding the namespaces. */
  readonly childPid: number;
  /** Prefix for a command to run inside: nsenter into the namespaces. */
  readonly wrap: string[];
  /** Forwards host 127.0.0.1:port to the namespace's port (a process listening on its 127.0.0.1). */
  publish(port: number): Promise<void>;
}

/** rootlesskit's own files (child_pid, api.sock) below the state directory. */
function kitDir(stateDir: string): string {
  return path.join(stateDir, "rootlesskit");
}

function nsenterPrefix(childPid: number): string[] {
  return ["nsenter", "--target", String(childPid), "--user", "--mount", "--net", "--preserve-credentials"];
}

/** An existing namespace's handle, from its state directory and rootlesskit's PID. */
export function attachRootlessNamespace(stateDir: string, pid: number): RootlessNamespace {
  const childPid = Number(readFileSync(path.join(kitDir(stateDir), "child_pid"), "utf8").trim());
  const api = path.join(kitDir(stateDir), "api.sock");
  return {
    pid,
    childPid,
    wrap: nsenterPrefix(childPid),
    async publish(port) {
      const spec = `127.0.0.1:${port}:${port}/tcp`;
      const { stdout } = await run("rootlessctl", ["--socket", api, "list-ports"]);
      // "ID  PROTO  PARENTIP  PARENTPORT  CHILDIP  CHILDPORT"
      if (stdout.split("\n").some((l) => new RegExp(`\\btcp\\s+127\\.0\\.0\\.1\\s+${port}\\s`).test(l))) return;
      await run("rootlessctl", ["--socket", api, "add-ports", spec]);
    },
  };
}

export interface StartOptions {
  stateDir: string;
  /** rootlesskit's output (it logs little); default: discarded. */
  logFile?: string;
  /** Outlive this process (the development environment). */
  detached?: boolean;
}

/** Starts rootlesskit and waits until its namespace can be entered. */
export async function startRootlessNamespace(o: StartOptions): Promise<RootlessNamespace> {
  try {
    accessSync("/dev/net/tun", constants.R_OK | constants.W_OK);
  } catch {
    throw new Error("slirp4netns cannot open /dev/net/tun: as root, chmod 0666 /dev/net/tun (udev does this on most systems; see docs/rootless.md)");
  }
  // A crashed run leaves child_pid and api.sock behind; rootlesskit wants its own.
  rmSync(kitDir(o.stateDir), { recursive: true, force: true });
  const runContainerd = path.join(o.stateDir, "run-containerd");
  mkdirSync(runContainerd, { recursive: true, mode: 0o700 });
  const holder = 'set -e; rm -f /run/containerd; mkdir -p /run/containerd; mount --bind "$1" /run/containerd; exec sleep infinity';
  const args = [
    `--state-dir=${kitDir(o.stateDir)}`,
    "--net=slirp4netns",
    "--mtu=65520",
    // Containers must not reach the host's own 127.0.0.1 services.
    "--disable-host-loopback",
    "--port-driver=builtin",
    "--copy-up=/etc",
    "--copy-up=/run",
    "--propagation=rslave",
    "sh",
    "-c",
    holder,
    "rootless-namespace",
    runContainerd,
  ];
  const fd = openSync(o.logFile ?? "/dev/null", "a");
  const child = spawn("rootlesskit", args, { stdio: ["ignore", fd, fd], detached: o.detached ?? false });
  closeSync(fd);
  if (o.detached) child.unref();
  let exited = false;
  child.once("exit", () => (exited = true));
  const childPidFile = path.join(kitDir(o.stateDir), "child_pid");
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) {
      const log = o.logFile && existsSync(o.logFile) ? readFileSync(o.logFile, "utf8").trim().split("\n").slice(-5).join("; ") : "";
      throw new Error(`rootlesskit exited before its namespace was ready${log ? `: ${log}` : ""}`);
    }
    if (existsSync(childPidFile) && existsSync(path.join(kitDir(o.stateDir), "api.sock"))) {
      const ns = attachRootlessNamespace(o.stateDir, child.pid!);
      // The holder's bind mount of /run/containerd is the last step of its setup.
      try {
        await run(ns.wrap[0]!, [...ns.wrap.slice(1), "sh", "-c", `grep -q " /run/containerd " /proc/self/mountinfo`]);
        return ns;
      } catch {
        /* not yet */
      }
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`rootlesskit's namespace was not ready within 20 s (state in ${kitDir(o.stateDir)})`);
    }
    await sleep(50);
  }
}

/** Ends a namespace: rootlesskit, then (if it lingers) the holder. */
export async function stopRootlessNamespace(ns: Pick<RootlessNamespace, "pid" | "childPid">): Promise<void> {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  for (const pid of [ns.pid, ns.childPid]) {
    if (!alive(pid)) continue;
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
    if (alive(pid)) process.kill(pid, "SIGKILL");
  }
}
