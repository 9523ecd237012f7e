/**
 * gVisor: containers from this snapshotter under the real runsc, behind
 * containerd's runc shim (test/lib/gvisor.ts).
 *
 *   - a nix image runs under runsc and its /nix/store holds exactly the
 *     image's closure, nothing else of the host's store;
 *   - an ordinary (non-nix) image runs under runsc;
 *   - a CRI pod with runtime_handler "runsc" runs a `nix:0` image pulled
 *     through our ImageService, and sees exactly its closure.
 *
 * That the sandbox is gVisor, not the host kernel, is checked each time:
 * gVisor answers uname with its own kernel release, not the host's.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { killTasks, startContainerd, type Containerd } from "../../devenv/containerd.js";
import { busyboxArchive, criClients, hostNetworkSandbox, PAUSE, PAUSE_ENTRYPOINT, until, type CriClients } from "../lib/cri.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { runscVersion, runscWrapper } from "../../devenv/gvisor.js";
import { buildFixtures, buildNixImageArchive } from "../../devenv/images.js";
import { closureInfoOf, closureList, storeListing } from "../lib/nix.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);
const NAMESPACE = `gvisor-${randomBytes(3).toString("hex")}`;
const newId = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;
const HOST_RELEASE = os.release();

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "runsc", "nix-build", "nix-store", "busybox"] })) {
  t.test("gVisor (runsc) runs nix and ordinary images", async (t) => {
    const version = runscVersion()!;
    console.log(`RUNSC: ${version}`);
    const tmp = tempDir();
    const snAddress = path.join(tmp.path, "sn.sock");
    const ctdDir = path.join(tmp.path, "containerd");
    const ctdAddress = path.join(ctdDir, "containerd.sock");
    const snLog = path.join(tmp.path, "nix-snapshotter.log");
    let daemon: DaemonProcess | undefined;
    let ctd: Containerd | undefined;
    let cri: CriClients | undefined;
    t.teardown(async () => {
      cri?.close();
      if (ctd) {
        await killTasks(ctd, NAMESPACE);
        await ctd.stop();
      }
      await daemon?.stop();
      if (t.passing()) tmp.cleanup();
      else console.error(`logs kept in ${tmp.path}`);
    });

    const none = runscWrapper(tmp.path, "none");
    // runsc's state apart from runc's (/run/containerd/runc/<namespace> is shared by every containerd).
    const runscRoot = path.join(tmp.path, "runsc-ctr");
    const pod = runscWrapper(tmp.path, "host", { ownSandbox: true });
    const config = `[image_service]\nenable = true\ncontainerd_address = "${ctdAddress}"\n`;
    daemon = await startDaemonProcess({ root: path.join(tmp.path, "root"), address: snAddress, config, logFile: snLog });
    ctd = await startContainerd({
      dir: ctdDir,
      snapshotterAddress: snAddress,
      cri: { sandboxImage: PAUSE },
      runtimes: [{ handler: "runsc", binaryName: pod, root: path.join(tmp.path, "runsc-cri") }],
    });
    const c = ctd;
    const ctr = (args: string[]) => c.ctr(args, { namespace: NAMESPACE, timeoutMs: 180_000 });
    t.comment(`runsc ${version}, containerd ${c.binaries.version}; logs in ${tmp.path}`);

    const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
    const info = await closureInfoOf([f.busybox, f.hello]);
    const closure = closureList(info);
    const img = await buildNixImageArchive({ dir: path.join(tmp.path, "images"), name: "gvisor-bb-hello", closureInfo: info, config: { Entrypoint: [`${f.hello}/bin/hello`] } });
    await ctr(["images", "import", "--local=false", "--snapshotter", "nix", img.archive]);

    await t.test("a nix image under runsc sees exactly its closure", async (t) => {
      const sh = `${f.busybox}/bin/sh`;
      const out = await ctr(["run", "--rm", "--runc-binary", none, "--runc-root", runscRoot, "--snapshotter", "nix", img.ref, newId("ls"), sh, "-c", `uname -r; ${f.busybox}/bin/ls -1A /nix/store`]);
      const [release, ...listing] = out.split("\n");
      t.not(release, HOST_RELEASE, `the kernel inside is gVisor's (${release}), not the host's (${HOST_RELEASE})`);
      t.same(storeListing(listing.join("\n")), closure, `/nix/store lists the ${closure.length} closure paths and nothing else`);
      t.equal(await ctr(["run", "--rm", "--runc-binary", none, "--runc-root", runscRoot, "--snapshotter", "nix", img.ref, newId("hello")]), "Hello, world!\n", "its entrypoint (hello) prints Hello, world!");
    });

    await t.test("an ordinary image under runsc", async (t) => {
      const ref = "localhost/nix-snapshotter-test/gvisor-busybox:1";
      const archive = await busyboxArchive(tmp.path, "gvisor-busybox", ["/bin/sh"], ref, { "etc/greeting": "hello from an ordinary layer\n" });
      await ctr(["images", "import", "--local=false", "--snapshotter", "nix", archive]);
      const out = await ctr(["run", "--rm", "--runc-binary", none, "--runc-root", runscRoot, "--snapshotter", "nix", ref, newId("bb"), "/bin/sh", "-c", "uname -r; cat /etc/greeting; test -e /nix && echo has-nix || echo no-nix"]);
      const [release, greeting, nix] = out.split("\n");
      t.not(release, HOST_RELEASE, `the kernel inside is gVisor's (${release})`);
      t.equal(greeting, "hello from an ordinary layer", "the image's file is there");
      t.equal(nix, "no-nix", "an ordinary image gets no /nix");
    });

    await t.test("a CRI pod with runtime_handler runsc runs a nix:0 image", async (t) => {
      cri = criClients(snAddress, ctdAddress);
      await until("containerd's CRI", async () => (await cri!.runtime.Version({ version: "v1" })) as unknown);
      await new Promise((r) => setTimeout(r, 1000));
      await c.ctr(["images", "import", "--local", "--snapshotter", "nix", await busyboxArchive(tmp.path, "pause", PAUSE_ENTRYPOINT, PAUSE)], { namespace: "k8s.io" });
      await until("the pause image in CRI", async () => {
        const res = (await cri!.image.ListImages({})) as { images: { repoTags: string[] }[] };
        return res.images.some((i) => i.repoTags.includes(PAUSE)) ? true : undefined;
      });
      const stored = (await run("nix-store", ["--add", img.archive])).stdout.trim();
      t.teardown(() => run("nix-store", ["--delete", stored]).catch(() => {}));
      const ref = `nix:0${stored}`;
      await cri!.image.PullImage({ image: { image: ref } });

      const logDir = path.join(tmp.path, "pods");
      const sandbox = hostNetworkSandbox("gvisor", `uid-${randomBytes(4).toString("hex")}`, logDir);
      const { podSandboxId } = (await cri!.runtime.RunPodSandbox({ config: sandbox, runtimeHandler: "runsc" })) as { podSandboxId: string };
      try {
        const { containerId } = (await cri!.runtime.CreateContainer({
          podSandboxId,
          config: {
            metadata: { name: "ls" },
            image: { image: ref },
            command: [`${f.busybox}/bin/sh`],
            args: ["-c", `uname -r; ${f.busybox}/bin/ls -1A /nix/store`],
            logPath: "ls.log",
          },
          sandboxConfig: sandbox,
        })) as { containerId: string };
        await cri!.runtime.StartContainer({ containerId });
        const status = await until(
          "the container to exit",
          async () => {
            const s = (await cri!.runtime.ContainerStatus({ containerId })) as { status: { state: string; exitCode: number } };
            return s.status.state === "CONTAINER_EXITED" ? s.status : undefined;
          },
          60_000,
        );
        t.equal(status.exitCode, 0, "the container exits 0");
        // CRI log lines: "<time> <stream> F <line>".
        const lines = readFileSync(path.join(logDir, "ls.log"), "utf8").split("\n").filter(Boolean);
        const stdout = lines.filter((l) => l.split(" ")[1] === "stdout").map((l) => l.split(" ").slice(3).join(" "));
        const [release, ...listing] = stdout;
        t.not(release, HOST_RELEASE, `the pod's kernel is gVisor's (${release}), not the host's`);
        t.same(storeListing(listing.join("\n")), closure, `the pod's /nix/store lists exactly the ${closure.length} closure paths`);
        await cri!.runtime.RemoveContainer({ containerId });
      } finally {
        await cri!.runtime.StopPodSandbox({ podSandboxId }, { timeoutMs: 60_000 });
        await cri!.runtime.RemovePodSandbox({ podSandboxId }, { timeoutMs: 60_000 });
      }
    });
  });
}
