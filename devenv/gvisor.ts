/**
 * gVisor (runsc) behind containerd's runc shim: the shim runs any OCI
 * runtime binary named by its BinaryName option (ctr run --runc-binary, a
 * CRI runtime's options.BinaryName), so runsc needs no shim of its own.
 * runsc takes its settings as global flags before the command the shim
 * passes; a two-line wrapper script adds them.
 *
 * Network: runsc's default (--network=sandbox, its own netstack) refuses to
 * start in the host's network namespace, and ctr gives a container a new
 * namespace with no interfaces. So: --network=none for containers without
 * a network (ctr run), --network=host for host-network containers and pods
 * (ctr run --net-host, CRI hostNetwork), which then use the host kernel's
 * stack of the namespace they run in.
 *
 * Pods: runsc puts a container whose spec says it belongs to a CRI pod
 * (annotations io.kubernetes.cri.container-type = container and
 * io.kubernetes.cri.sandbox-id) into the pod's existing sandbox, and then
 * writes the SANDBOX's pid to the pid file. That is right for gVisor's own
 * shim (containerd-shim-runsc-v1), which asks runsc for exits; the runc
 * shim instead waits for that pid, so the container's start and exit are
 * never seen (measured with runsc 20240729: StartContainer hangs). Debian
 * ships runsc without its shim, so for CRI the wrapper can drop those two
 * annotations at create: each container then gets a sandbox of its own,
 * whose pid the runc shim can wait for (pods here are host-network, so
 * they share the network either way). After such a container exits, the
 * runc shim runs `kill --all` for processes left in it; runsc answers
 * "sandbox is not running" (the sandbox went with its only container) and
 * CRI then never marks the container exited. Nothing can be left in a
 * sandbox that is gone, so the pod wrapper lets that kill succeed.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";

export type RunscNetwork = "none" | "host";

/** Extra runsc flags from RUNSC_FLAGS (e.g. "--platform=ptrace"), for hosts where the default platform fails. */
function extraFlags(): string[] {
  return (process.env["RUNSC_FLAGS"] ?? "").split(/\s+/).filter(Boolean);
}

/** Removes the CRI pod annotations from a bundle's config.json (node: no jq on a fresh machine). */
const OWN_SANDBOX_JS = `const fs = require("fs"); const f = process.argv[1]; const spec = JSON.parse(fs.readFileSync(f, "utf8")); const a = spec.annotations || {};
if (a["io.kubernetes.cri.container-type"] === "container") { delete a["io.kubernetes.cri.container-type"]; delete a["io.kubernetes.cri.sandbox-id"]; fs.writeFileSync(f, JSON.stringify(spec)); }`;

const quote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

/**
 * Writes `<dir>/runsc-<network>[-pod]`, an executable that runs runsc with
 * the network flag (and, with ownSandbox, one sandbox per CRI container, see
 * above); returns its path.
 */
export function runscWrapper(dir: string, network: RunscNetwork, opts: { ownSandbox?: boolean; runsc?: string } = {}): string {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `runsc-${network}${opts.ownSandbox ? "-pod" : ""}`);
  const flags = [`--network=${network}`, ...extraFlags()].map(quote).join(" ");
  let script = "#!/bin/sh\n# runsc behind containerd's runc shim (BinaryName), with its global flags first.\n";
  if (opts.ownSandbox) {
    script += `bundle=; prev=
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle=$a ;; esac
  case "$a" in --bundle=*) bundle=\${a#--bundle=} ;; esac
  prev=$a
done
if [ -n "$bundle" ]; then ${quote(process.execPath)} -e ${quote(OWN_SANDBOX_JS)} "$bundle/config.json" || exit 1; fi
case " $* " in *" kill --all "*) ${opts.runsc ?? "runsc"} ${flags} "$@"; exit 0 ;; esac
`;
  }
  script += `exec ${opts.runsc ?? "runsc"} ${flags} "$@"\n`;
  writeFileSync(file, script);
  chmodSync(file, 0o755);
  return file;
}

/** `runsc --version`'s first line's version, e.g. "0.0~20240729.0"; undefined when runsc is missing. */
export function runscVersion(runsc = "runsc"): string | undefined {
  try {
    return execFileSync(runsc, ["--version"], { encoding: "utf8" }).split("\n")[0]!.replace(/^runsc version\s*/, "").trim();
  } catch {
    return undefined;
  }
}
