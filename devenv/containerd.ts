/**
 * A private containerd (1.7 or 2.x) for tests, benchmarks and the development
 * environment: its own config, root, state and socket under one directory,
 * the `nix` proxy snapshotter plugin pointed at our socket, started and
 * stopped by PID. Never the system instance.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { closeSync, createWriteStream, existsSync, mkdirSync, openSync, rmdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { goArch } from "../src/image/oci.js";
import { REPO, waitForSocket } from "./daemon.js";

const run = promisify(execFile);

export interface ContainerdOptions {
  /** Everything of this instance lives below this directory. */
  dir: string;
  /** The nix-snapshotter socket for the `nix` proxy plugin. */
  snapshotterAddress: string;
  /** More proxy snapshotters: plugin name -> socket. */
  proxySnapshotters?: Record<string, string>;
  /** Enable the CRI plugin (with the settings a nix snapshotter needs). */
  cri?: {
    sandboxImage: string;
    snapshotter?: string;
    hostsDir?: string;
    /** 2.x only: how CRI pulls images (see criConfigV3); default "transfer". */
    pull?: "transfer" | "local";
  };
  /** Write this config version instead of the one for the binary's major (2.x reads and migrates version 2). */
  configVersion?: ConfigVersion;
  /** 2.x: export enable_remote_snapshot_annotations from the nix proxy plugin (default true). */
  remoteSnapshotAnnotations?: boolean;
  /** Runtimes besides runc, for CRI (runtime_handler) and ctr (--runtime). */
  runtimes?: ExtraRuntime[];
  /** Which containerd to run; default containerdBinaries() (the CONTAINERD variable). */
  binaries?: ContainerdBinaries;
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
  readonly binaries: ContainerdBinaries;
  readonly dir: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Runs ctr against this instance; resolves with stdout. */
  ctr(args: string[], opts?: { namespace?: string; timeoutMs?: number; input?: string }): Promise<string>;
  stop(): Promise<void>;
}

/**
 * The containerd line to run, from CONTAINERD: "1.7" (default) is the
 * system's containerd on PATH; "2" the one scripts/fetch-containerd2.sh
 * unpacked under build/containerd-2 (never installed). The version is read
 * from the binary itself, and the config rendered for its major version.
 */
export interface ContainerdBinaries {
  /** "1.7" or "2", as selected. */
  readonly line: string;
  /** Where containerd, ctr and containerd-shim-runc-v2 are; undefined: PATH. */
  readonly binDir: string | undefined;
  /** `containerd --version`'s version, e.g. "1.7.24~ds1" or "2.1.9+unknown". */
  readonly version: string;
  readonly major: number;
}

export const CONTAINERD2_DIR = path.join(REPO, "build/containerd-2/usr/bin");

const binariesCache = new Map<string, ContainerdBinaries>();

export function containerdBinaries(line: string = process.env["CONTAINERD"] || "1.7"): ContainerdBinaries {
  const cached = binariesCache.get(line);
  if (cached) return cached;
  let binDir: string | undefined;
  if (line === "2") binDir = CONTAINERD2_DIR;
  else if (line !== "1.7") throw new Error(`CONTAINERD=${line}: use 1.7 (the system's containerd) or 2 (build/containerd-2)`);
  const exe = binDir ? path.join(binDir, "containerd") : "containerd";
  if (binDir && !existsSync(exe)) throw new Error(`CONTAINERD=2: ${path.relative(REPO, exe)} is missing; run scripts/fetch-containerd2.sh`);
  // "containerd github.com/containerd/containerd/v2 2.1.9+unknown <commit>"
  const version = (execFileSync(exe, ["--version"], { encoding: "utf8" }).split(/\s+/)[2] ?? "").replace(/^v/, "");
  const major = Number(version.split(".")[0]);
  if (!(major >= 1)) throw new Error(`${exe} --version: cannot read a version from it`);
  const b = { line, binDir, version, major };
  binariesCache.set(line, b);
  return b;
}

/** Names the containerd a test runs on stdout; scripts/run-tests.sh collects these lines. */
export function announceContainerd(b: ContainerdBinaries, version: ConfigVersion = nativeConfigVersion(b)): void {
  console.log(`CONTAINERD: ${b.version} (config version ${version})`);
}

/** The config file schema: 2 for containerd 1.x, 3 (introduced by 2.0) for 2.x. */
export type ConfigVersion = 2 | 3;

export function nativeConfigVersion(b: ContainerdBinaries): ConfigVersion {
  return b.major >= 2 ? 3 : 2;
}

/** Runs ctr/containerd of this line: absolute when unpacked, its directory first on PATH (for the shim). */
export function binaryEnv(b: ContainerdBinaries): NodeJS.ProcessEnv {
  return b.binDir ? { ...process.env, PATH: `${b.binDir}:${process.env["PATH"] ?? "/usr/bin:/bin"}` } : process.env;
}

export function binary(b: ContainerdBinaries, name: "containerd" | "ctr"): string {
  return b.binDir ? path.join(b.binDir, name) : name;
}

/**
 * A runtime for CRI's runtime_handler and ctr's --runtime: runc's shim
 * running another OCI runtime binary (e.g. gVisor's runsc) via BinaryName.
 */
export interface ExtraRuntime {
  handler: string;
  binaryName: string;
  /** The runtime's state directory (the shim passes --root); default /run/containerd/runc/<namespace>, shared by every containerd. */
  root?: string;
}

/** Plugins this private instance never needs (and whose host-global sockets or devices it must not touch). */
function disabledPlugins(b: ContainerdBinaries, cri: boolean): string[] {
  const ids = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"];
  if (b.major >= 2) {
    // NRI is on by default in 2.x and listens on /var/run/nri/nri.sock, one per host.
    ids.push("io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri");
    if (!cri) ids.push("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime");
  } else {
    ids.push("io.containerd.snapshotter.v1.aufs");
    if (!cri) ids.push("io.containerd.grpc.v1.cri");
  }
  return ids;
}

/**
 * The config file for this instance, in the schema of its containerd:
 * version 2 for 1.7, version 3 for 2.x (docs/containerd.md has the table of
 * keys for each line).
 */
export function containerdConfig(o: ContainerdOptions, b: ContainerdBinaries, version: ConfigVersion = nativeConfigVersion(b)): string {
  const d = o.dir;
  const v3 = version === 3;
  const q = (s: string) => JSON.stringify(s);
  let cfg = `version = ${v3 ? 3 : 2}
root = "${d}/root"
state = "${d}/state"
disabled_plugins = [${disabledPlugins(b, !!o.cri).map(q).join(", ")}]

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
`;
  if (b.major >= 2 && o.remoteSnapshotAnnotations !== false) {
    cfg += `  # 2.x: containerd's docs ask remote snapshotters to export this for the
  # Transfer service; on 2.1 layer annotations arrive without it too
  # (annotation-paths.test.ts checks both), it adds containerd's own labels.
  [proxy_plugins.nix.exports]
    enable_remote_snapshot_annotations = "true"
`;
  }
  for (const [name, address] of Object.entries(o.proxySnapshotters ?? {})) {
    cfg += `\n[proxy_plugins.${JSON.stringify(name)}]\n  type = "snapshot"\n  address = "${address}"\n`;
  }
  cfg += `
# The Transfer service unpacks only for the platform/snapshotter pairs listed
# here; it is also the ctr path that hands layer annotations to the snapshotter.
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/${goArch()}"
  snapshotter = "nix"
[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/${goArch()}"
  snapshotter = "overlayfs"
`;
  for (const name of Object.keys(o.proxySnapshotters ?? {})) {
    cfg += `[[plugins."io.containerd.transfer.v1.local".unpack_config]]\n  platform = "linux/${goArch()}"\n  snapshotter = ${JSON.stringify(name)}\n`;
  }
  if (o.cri) cfg += v3 ? criConfigV3(o, o.cri) : criConfigV2(o, o.cri);
  return cfg;
}

type CriOptions = NonNullable<ContainerdOptions["cri"]>;

function runtimeTables(prefix: string, runtimes: ExtraRuntime[]): string {
  if (runtimes.length === 0) return "";
  // 1.7 drops its built-in runc entry once the runtimes table is written, and
  // then refuses default_runtime_name = "runc": name it again.
  return `  [${prefix}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
` + runtimes
    .map(
      (r) => `  [${prefix}.containerd.runtimes.${r.handler}]
    runtime_type = "io.containerd.runc.v2"
  [${prefix}.containerd.runtimes.${r.handler}.options]
    BinaryName = "${r.binaryName}"
${r.root ? `    Root = "${r.root}"\n` : ""}`,
    )
    .join("");
}

function criConfigV2(o: ContainerdOptions, cri: CriOptions): string {
  const p = `plugins."io.containerd.grpc.v1.cri"`;
  return `
[${p}]
  sandbox_image = "${cri.sandboxImage}"
  # runc cannot raise a sandbox's OOM score without CAP_SYS_RESOURCE here.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [${p}.containerd]
    snapshotter = "${cri.snapshotter ?? "nix"}"
    # Hand layer annotations to the snapshotter as labels on unpack.
    disable_snapshot_annotations = false
${runtimeTables(p, o.runtimes ?? [])}  [${p}.registry]
    config_path = "${cri.hostsDir ?? `${o.dir}/certs.d`}"
`;
}

function criConfigV3(o: ContainerdOptions, cri: CriOptions): string {
  const images = `plugins."io.containerd.cri.v1.images"`;
  const runtime = `plugins."io.containerd.cri.v1.runtime"`;
  // "transfer" (2.1's default): CRI pulls through the Transfer service, which
  // passes annotations because of the proxy plugin's export above.
  // "local": disable_snapshot_annotations = false, which makes 2.1 fall back
  // to the client-side pull that adds annotations itself (containerd logs it).
  const local = (cri.pull ?? "transfer") === "local";
  return `
[${images}]
  snapshotter = "${cri.snapshotter ?? "nix"}"
${local ? "  disable_snapshot_annotations = false\n" : ""}  [${images}.pinned_images]
    sandbox = "${cri.sandboxImage}"
  [${images}.registry]
    config_path = "${cri.hostsDir ?? `${o.dir}/certs.d`}"

[${runtime}]
  # runc cannot raise a sandbox's OOM score without CAP_SYS_RESOURCE here.
  restrict_oom_score_adj = true
  disable_apparmor = true
${runtimeTables(runtime, o.runtimes ?? [])}`;
}

export async function startContainerd(o: ContainerdOptions): Promise<Containerd> {
  const b = o.binaries ?? containerdBinaries();
  mkdirSync(o.dir, { recursive: true });
  const configFile = path.join(o.dir, "config.toml");
  const version = o.configVersion ?? nativeConfigVersion(b);
  writeFileSync(configFile, containerdConfig(o, b, version));
  if (!o.detached) announceContainerd(b, version);
  const env = binaryEnv(b);
  const address = path.join(o.dir, "containerd.sock");
  const logFile = path.join(o.dir, "containerd.log");
  let child: ChildProcess;
  let log: ReturnType<typeof createWriteStream> | undefined;
  const wrap = o.wrap ?? [];
  const [cmd, ...argv] = [...wrap, binary(b, "containerd"), "--config", configFile] as string[] as [string, ...string[]];
  if (o.detached) {
    const fd = openSync(logFile, "a");
    child = spawn(cmd, argv, { stdio: ["ignore", fd, fd], detached: true, env });
    closeSync(fd);
    child.unref();
  } else {
    log = createWriteStream(logFile, { flags: "a" });
    child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], env });
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
    binaries: b,
    dir: o.dir,
    pid: child.pid!,
    child,
    async ctr(args, opts = {}) {
      const [ctrCmd, ...ctrArgs] = [...wrap, binary(b, "ctr"), "--address", address] as string[] as [string, ...string[]];
      const p = run(ctrCmd, [...ctrArgs, "--namespace", opts.namespace ?? "default", ...args], {
        timeout: opts.timeoutMs ?? 120_000,
        env,
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
