/**
 * A private containerd (>= 1.7) for tests, benchmarks and the development
 * environment: its own config, root, state and socket under one directory,
 * the `nix` proxy snapshotter plugin pointed at our socket, started and
 * stopped by PID. Never the system instance.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { closeSync, createWriteStream, mkdirSync, openSync, rmdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { goArch } from "../../src/image/oci.js";
import { waitForSocket } from "./daemon.js";

const run = promisify(execFile);

export interface ContainerdOptions {
  /** Everything of this instance lives below this directory. */
  dir: string;
  /** The nix-snapshotter socket for the `nix` proxy plugin. */
  snapshotterAddress: string;
  /** More proxy snapshotters: plugin name -> socket. */
  proxySnapshotters?: Record<string, string>;
  /** Enable the CRI plugin (with the settings a nix snapshotter needs). */
  cri?: { sandboxImage: string; snapshotter?: string; hostsDir?: string };
  logLevel?: string;
  /** Leave it running after this process exits (development environment). */
  detached?: boolean;
  /**
   * A command that runs containerd and ctr, e.g. nsenter into a rootlesskit
   * namespace; it must exec its argument (same PID) so stop() reaches it.
   */
  wrap?: string[];
}

export interface Containerd {
  readonly address: string;
  readonly dir: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Runs ctr against this instance; resolves with stdout. */
  ctr(args: string[], opts?: { namespace?: string; timeoutMs?: number; input?: string }): Promise<string>;
  stop(): Promise<void>;
}

export function containerdConfig(o: ContainerdOptions): string {
  const d = o.dir;
  const disabled = ['"io.containerd.snapshotter.v1.btrfs"', '"io.containerd.snapshotter.v1.zfs"', '"io.containerd.snapshotter.v1.devmapper"', '"io.containerd.snapshotter.v1.aufs"', '"io.containerd.tracing.processor.v1.otlp"', '"io.containerd.internal.v1.tracing"'];
  if (!o.cri) disabled.push('"io.containerd.grpc.v1.cri"');
  let cfg = `version = 2
root = "${d}/root"
state = "${d}/state"
disabled_plugins = [${disabled.join(", ")}]

[grpc]
  address = "${d}/containerd.sock"

# Not /opt/containerd: rootless, it is not writable.
[plugins."io.containerd.internal.v1.opt"]
  path = "${d}/opt"

[ttrpc]
  address = "${d}/containerd.sock.ttrpc"

[debug]
  level = "${o.logLevel ?? "info"}"

[proxy_plugins.nix]
  type = "snapshot"
  address = "${o.snapshotterAddress}"
${Object.entries(o.proxySnapshotters ?? {})
  .map(([name, address]) => `\n[proxy_plugins.${JSON.stringify(name)}]\n  type = "snapshot"\n  address = "${address}"\n`)
  .join("")}
# The Transfer service (ctr images import --local=false, ctr pull without
# --local) unpacks only for the platform/snapshotter pairs listed here; it is
# also the ctr path that hands layer annotations to the snapshotter.
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/${goArch()}"
  snapshotter = "nix"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/${goArch()}"
  snapshotter = "overlayfs"
`;
  if (o.cri) {
    cfg += `
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${o.cri.sandboxImage}"
  # runc cannot raise a sandbox's OOM score without CAP_SYS_RESOURCE here.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "${o.cri.snapshotter ?? "nix"}"
    # Hand layer annotations to the snapshotter as labels on unpack.
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "${o.cri.hostsDir ?? `${d}/certs.d`}"
`;
  }
  return cfg;
}

export async function startContainerd(o: ContainerdOptions): Promise<Containerd> {
  mkdirSync(o.dir, { recursive: true });
  const configFile = path.join(o.dir, "config.toml");
  writeFileSync(configFile, containerdConfig(o));
  const address = path.join(o.dir, "containerd.sock");
  const logFile = path.join(o.dir, "containerd.log");
  let child: ChildProcess;
  let log: ReturnType<typeof createWriteStream> | undefined;
  const wrap = o.wrap ?? [];
  const [cmd, ...argv] = [...wrap, "containerd", "--config", configFile] as string[] as [string, ...string[]];
  if (o.detached) {
    const fd = openSync(logFile, "a");
    child = spawn(cmd, argv, { stdio: ["ignore", fd, fd], detached: true });
    closeSync(fd);
    child.unref();
  } else {
    log = createWriteStream(logFile, { flags: "a" });
    child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
  }
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await Promise.race([
    waitForSocket(address, 30_000),
    exited.then(() => {
      throw new Error(`containerd exited before serving; see ${logFile}`);
    }),
  ]);
  return {
    address,
    dir: o.dir,
    pid: child.pid!,
    child,
    async ctr(args, opts = {}) {
      const [ctrCmd, ...ctrArgs] = [...wrap, "ctr", "--address", address] as string[] as [string, ...string[]];
      const p = run(ctrCmd, [...ctrArgs, "--namespace", opts.namespace ?? "default", ...args], {
        timeout: opts.timeoutMs ?? 120_000,
        maxBuffer: 64 * 1024 * 1024,
      });
      if (opts.input !== undefined) {
        p.child.stdin!.end(opts.input);
      }
      try {
        return (await p).stdout;
      } catch (err) {
        const e = err as { stderr?: string; message: string };
        throw new Error(`ctr ${args.join(" ")}: ${(e.stderr || e.message).trim()}`);
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      log?.end();
    },
  };
}

/**
 * Kills and deletes every task of a namespace (a failed test's tasks would
 * keep shims and mounts alive), then removes runc's state directory for it,
 * /run/containerd/runc/<namespace>, which every containerd on the host
 * shares. Best effort: teardown goes on whatever fails here.
 */
export async function killTasks(ctrd: Containerd, namespace: string): Promise<void> {
  const opts = { namespace, timeoutMs: 20_000 };
  try {
    for (const id of (await ctrd.ctr(["tasks", "ls", "-q"], opts)).split("\n").filter(Boolean)) {
      await ctrd.ctr(["tasks", "kill", "-s", "SIGKILL", id], opts).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200));
      await ctrd.ctr(["tasks", "rm", "-f", id], opts).catch(() => undefined);
    }
  } catch {
    /* containerd already gone */
  }
  try {
    rmdirSync(path.join("/run/containerd/runc", namespace));
  } catch {
    /* never created, or not empty (another instance uses it) */
  }
}
