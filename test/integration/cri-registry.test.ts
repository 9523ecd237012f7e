/**
 * The Kubernetes path for an ORDINARY image: kubelet's ImageService calls go
 * to nix-snapshotter's socket, which forwards every non-nix:0 pull raw to
 * containerd's CRI. containerd pulls from a real registry (Debian's
 * docker-registry, plain HTTP, htpasswd basic auth) with the credentials
 * from the CRI request, and unpacks with the `nix` snapshotter (CRI's
 * snapshotter), so the layers land in our daemon as plain overlay layers.
 *
 *   - a pull with a wrong password fails through our endpoint with exactly
 *     the gRPC code containerd's own endpoint answers, the registry's 401 in
 *     its message, and leaves no image and no snapshot;
 *   - PullImage with the right credentials; ImageStatus through both
 *     endpoints agrees;
 *   - a pod runs a container from it, whose output reaches the CRI log;
 *   - after the pod is gone, RemoveImage through our endpoint and
 *     containerd's GC remove the image's snapshots from our daemon.
 *
 * containerd 1.7's CRI resolves registries through its own `config_path`
 * hosts directory, so a plain-HTTP registry needs a hosts.toml there.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { busyboxArchive, criClients, grpcCode, hostNetworkSandbox, PAUSE, PAUSE_ENTRYPOINT, until, type CriClients } from "../lib/cri.js";
import { startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { NIX2CONTAINER_BIN } from "../../devenv/images.js";
import { htpasswdFile, startRegistry, type Registry } from "../lib/registry.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { tail } from "../lib/util.js";

const run = promisify(execFile);
const USER = "criuser";
const PASSWORD = "cri-s3cret";

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "docker-registry", "htpasswd"] })) {
  t.test("CRI: an ordinary registry image pulled through our ImageService", async (t) => {
    const tmp = tempDir("nix-snapshotter-cri-registry-");
    const snAddress = path.join(tmp.path, "sn.sock");
    const root = path.join(tmp.path, "root");
    const ctdDir = path.join(tmp.path, "containerd");
    const ctdAddress = path.join(ctdDir, "containerd.sock");
    const snLog = path.join(tmp.path, "nix-snapshotter.log");
    const config = `[image_service]\nenable = true\ncontainerd_address = "${ctdAddress}"\n`;
    let daemon: DaemonProcess | undefined;
    let ctd: Containerd | undefined;
    let reg: Registry | undefined;
    let cri: CriClients | undefined;
    let direct: CriClients | undefined;
    let sn: SnapshotsClient | undefined;
    t.teardown(async () => {
      sn?.close();
      cri?.close();
      direct?.close();
      await ctd?.stop();
      await daemon?.stop();
      await reg?.stop();
      if (t.passing()) tmp.cleanup();
      else {
        console.error(`# --- nix-snapshotter log (tail) ---\n${tail(snLog, 20)}`);
        if (reg) console.error(`# --- registry log (tail) ---\n${tail(reg.log, 20)}`);
        console.error(`logs kept in ${tmp.path}`);
      }
    });

    // The registry, with the image pushed by nix2container.
    const htpasswd = htpasswdFile(path.join(tmp.path, "htpasswd"), USER, PASSWORD);
    reg = await startRegistry({ dir: path.join(tmp.path, "registry"), auth: { htpasswd } });
    const ref = `${reg.host}/cri/echo:v1`;
    const marker = `hello from ${reg.host}`;
    // Its own layer (not the pause image's), so its snapshots are its own.
    const archive = await busyboxArchive(tmp.path, "echo", ["/bin/sh", "-c", "cat /etc/message"], ref, { "etc/message": `${marker}\n` });
    const dockerDir = path.join(tmp.path, "docker");
    mkdirSync(dockerDir, { recursive: true });
    writeFileSync(path.join(dockerDir, "config.json"), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString("base64") } } }));
    const pushed = await run(process.execPath, [NIX2CONTAINER_BIN, "push", archive, "--ref", ref, "--plain-http"], { env: { ...process.env, DOCKER_CONFIG: dockerDir } });
    t.match(pushed.stdout, /^pushed /m, "nix2container pushed the busybox image");

    // containerd's CRI resolver: plain HTTP for this host.
    const hostsDir = path.join(ctdDir, "certs.d", reg.host);
    mkdirSync(hostsDir, { recursive: true });
    writeFileSync(
      path.join(hostsDir, "hosts.toml"),
      `server = "http://${reg.host}"\n\n[host."http://${reg.host}"]\n  capabilities = ["pull", "resolve"]\n`,
    );

    daemon = await startDaemonProcess({ root, address: snAddress, config, logFile: snLog });
    ctd = await startContainerd({ dir: ctdDir, snapshotterAddress: snAddress, cri: { sandboxImage: PAUSE } });
    cri = criClients(snAddress, ctdAddress);
    direct = criClients(ctdAddress, ctdAddress);
    await until("containerd's CRI", async () => (await cri!.runtime.Version({ version: "v1" })) as unknown);
    // CRI learns of images from image events, which ctr's local import sends.
    await new Promise((r) => setTimeout(r, 1000));
    await ctd.ctr(["images", "import", "--snapshotter", "nix", await busyboxArchive(tmp.path, "pause", PAUSE_ENTRYPOINT, PAUSE)], {
      namespace: "k8s.io",
    });
    await until("the pause image in CRI", async () => {
      const res = (await cri!.image.ListImages({})) as { images: { repoTags: string[] }[] };
      return res.images.some((i) => i.repoTags.includes(PAUSE)) ? true : undefined;
    });

    sn = new SnapshotsClient({ address: snAddress });
    const snapshots = async () => {
      const names: string[] = [];
      await sn!.walk((i) => {
        names.push(i.name);
      });
      return names.sort();
    };
    const imageCount = async () => ((await cri!.image.ListImages({})) as { images: unknown[] }).images.length;

    // A wrong password: containerd's error, forwarded as is; nothing left.
    const snapsBefore = await snapshots();
    const imagesBefore = await imageCount();
    const badAuth = { username: USER, password: "wrong-password" };
    const viaOurs = await grpcCode(cri.image.PullImage({ image: { image: ref }, auth: badAuth }));
    const viaTheirs = await grpcCode(direct.image.PullImage({ image: { image: ref }, auth: badAuth }));
    t.not(viaOurs.code, "OK", `a wrong password fails through our endpoint (${viaOurs.code}: ${viaOurs.details})`);
    t.equal(viaOurs.code, viaTheirs.code, "with the gRPC code containerd's own endpoint answers");
    t.match(viaOurs.details, /401 Unauthorized|unauthorized/i, "and the registry's authentication error in the message");
    const noAuth = await grpcCode(cri.image.PullImage({ image: { image: ref } }));
    t.not(noAuth.code, "OK", `no credentials fail too (${noAuth.code})`);
    t.equal(await imageCount(), imagesBefore, "no image left in containerd");
    t.same(await snapshots(), snapsBefore, "no snapshot left in our daemon");
    t.equal(reg.count("GET", /^\/v2\/cri\/echo\/blobs\//), 0, "the registry served no blob");

    // The right credentials.
    const pulled = (await cri.image.PullImage({ image: { image: ref }, auth: { username: USER, password: PASSWORD } })) as { imageRef: string };
    t.match(pulled.imageRef, /^sha256:[0-9a-f]{64}$/, "PullImage through our endpoint answers an image id");
    const ours = (await cri.image.ImageStatus({ image: { image: ref } })) as { image: { id: string; repoTags: string[]; size: number } | null };
    const theirs = (await direct.image.ImageStatus({ image: { image: ref } })) as { image: { id: string; repoTags: string[]; size: number } | null };
    t.equal(ours.image?.id, pulled.imageRef, "ImageStatus through our endpoint shows it");
    t.same(ours.image, theirs.image, "and agrees with containerd's own endpoint");
    t.ok(ours.image?.repoTags.includes(ref), "tagged with the registry reference");
    const imageSnaps = (await snapshots()).filter((s) => !snapsBefore.includes(s));
    t.ok(imageSnaps.length >= 1, `containerd unpacked it into our snapshotter (${imageSnaps.length} new snapshot)`);

    // The pod: sandbox, container, start; the output reaches the CRI log.
    const logDir = path.join(tmp.path, "pods");
    const sandbox = hostNetworkSandbox("echo", `uid-${reg.port}`, logDir);
    const { podSandboxId } = (await cri.runtime.RunPodSandbox({ config: sandbox })) as { podSandboxId: string };
    const { containerId } = (await cri.runtime.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "echo" }, image: { image: ref }, logPath: "echo.log" },
      sandboxConfig: sandbox,
    })) as { containerId: string };
    await cri.runtime.StartContainer({ containerId });
    const exited = await until(
      "the container to exit",
      async () => {
        const s = (await cri!.runtime.ContainerStatus({ containerId })) as { status: { state: string; exitCode: number; imageRef: string } };
        return s.status.state === "CONTAINER_EXITED" ? s.status : undefined;
      },
      30_000,
    );
    t.equal(exited.exitCode, 0, "the container exited 0");
    const log = await until("the container's log line", async () => {
      const text = readFileSync(path.join(logDir, "echo.log"), "utf8");
      return text.includes(marker) ? text : undefined;
    });
    t.match(log, new RegExp(`^\\S+ stdout F ${marker}$`, "m"), "its output is in the CRI log");

    await cri.runtime.RemoveContainer({ containerId });
    await cri.runtime.StopPodSandbox({ podSandboxId });
    await cri.runtime.RemovePodSandbox({ podSandboxId });
    await cri.image.RemoveImage({ image: { image: ref } });
    t.equal(((await cri.image.ImageStatus({ image: { image: ref } })) as { image: unknown }).image, null, "RemoveImage through our endpoint removed it");
    t.equal(((await direct.image.ImageStatus({ image: { image: ref } })) as { image: unknown }).image, null, "containerd's endpoint agrees");
    await until(
      "containerd's GC to remove the image's snapshots",
      async () => {
        const now = await snapshots();
        return imageSnaps.every((s) => !now.includes(s)) ? true : undefined;
      },
      30_000,
    );
    t.pass("after RemoveImage and containerd's GC the image's snapshots are gone from our daemon");
    t.same(await snapshots(), snapsBefore, "only the pause image's snapshots remain");
  });
}
