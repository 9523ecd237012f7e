/**
 * Starts the real nix-snapshotter daemon (the built CLI) as a child process
 * with private root and socket, for the development environment, tests and
 * benchmarks.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, createWriteStream, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../..", import.meta.url));
export const DAEMON_BIN = path.join(REPO, "build/src/cli/nix-snapshotter.js");

export interface DaemonOptions {
  root: string;
  /** The daemon's entry point (default: this build's CLI); another release's, to test upgrades. */
  bin?: string;
  address: string;
  /** Extra TOML appended to the private config file. */
  config?: string;
  logLevel?: string;
  logFile?: string;
  env?: Record<string, string>;
  /** Leave it running after this process exits (development environment); needs logFile. */
  detached?: boolean;
  /**
   * A command that runs the daemon, e.g. nsenter into a rootlesskit
   * namespace; it must exec its argument (same PID) so stop() reaches it.
   */
  wrap?: string[];
}

export interface DaemonProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the exit code (or signal name). */
  readonly exited: Promise<number | string>;
  /** Sends `signal` (default SIGTERM); with graceMs, SIGKILL if still running after that long. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number | string>;
}

export function waitForSocket(p: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (!existsSync(p)) return retry(new Error(`socket ${p} did not appear`));
      const c = net.connect(p);
      c.once("connect", () => {
        c.destroy();
        resolve();
      });
      c.once("error", retry);
    };
    const retry = (err: Error) => {
      if (Date.now() > deadline) reject(new Error(`timed out waiting for ${p}: ${err.message}`));
      else setTimeout(attempt, 25);
    };
    attempt();
  });
}

export async function startDaemonProcess(opts: DaemonOptions): Promise<DaemonProcess> {
  // Beside the root, not the socket: the daemon itself must create the
  // socket's directory (0700).
  const configFile = `${opts.root}.config.toml`;
  mkdirSync(path.dirname(configFile), { recursive: true });
  writeFileSync(configFile, opts.config ?? "");
  const args = [opts.bin ?? DAEMON_BIN, "--config", configFile, "--root", opts.root, "--address", opts.address, "--log-level", opts.logLevel ?? "info"];
  let child: ChildProcess;
  let log: ReturnType<typeof createWriteStream> | undefined;
  let stderr = "";
  const [cmd, ...argv] = [...(opts.wrap ?? []), process.execPath, ...args] as string[] as [string, ...string[]];
  if (opts.detached) {
    const fd = openSync(opts.logFile ?? "/dev/null", "a");
    child = spawn(cmd, argv, { stdio: ["ignore", fd, fd], env: { ...process.env, ...opts.env }, detached: true });
    closeSync(fd);
    child.unref();
  } else {
    child = spawn(cmd, argv, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...opts.env } });
    log = opts.logFile ? createWriteStream(opts.logFile, { flags: "a" }) : undefined;
    child.stderr!.on("data", (d: Buffer) => {
      if (log) log.write(d);
      stderr = (stderr + d.toString()).slice(-8192);
    });
  }
  const exited = new Promise<number | string>((resolve) =>
    child.once("exit", (code, sig) => {
      log?.end();
      resolve(code ?? sig ?? -1);
    }),
  );
  try {
    await Promise.race([
      waitForSocket(opts.address),
      exited.then((code) => {
        // Detached, its output went to the log file.
        const said = opts.detached && opts.logFile && existsSync(opts.logFile) ? readFileSync(opts.logFile, "utf8").trim().split("\n").pop() ?? "" : stderr.trim();
        throw new Error(`nix-snapshotter exited (${code}) before serving: ${said}`);
      }),
    ]);
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
  return {
    child,
    pid: child.pid!,
    exited,
    async stop(signal: NodeJS.Signals = "SIGTERM", graceMs?: number) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = graceMs === undefined ? undefined : setTimeout(() => child.kill("SIGKILL"), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
