/**
 * The Kubernetes path, driven the way kubelet drives it: a CRI client calls
 * ImageService on nix-snapshotter's socket (kubelet's
 * --image-service-endpoint) and RuntimeService on containerd's. A pod whose
 * image is `nix:0/nix/store/...-redis.tar` runs with no registry at all.
 */
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { busyboxArchive, criClients, grpcCode, hostNetworkSandbox, PAUSE, PAUSE_ENTRYPOINT, until, type CriClients } from "../lib/cri.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, redisImage, waitForPong } from "../../devenv/images.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { freePort } from "../lib/util.js";

const run = promisify(execFile);

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "nix-store", "redis-cli"] })) {
  t.test("CRI: nix:0 images through our ImageService, pods through containerd", async (t) => {
    const tmp = tempDir();
    const snAddress = path.join(tmp.path, "sn.sock");
    const root = path.join(tmp.path, "root");
    const ctdDir = path.join(tmp.path, "containerd");
    const ctdAddress = path.join(ctdDir, "containerd.sock");
    const snLog = path.join(tmp.path, "nix-snapshotter.log");
    const config = `[image_service]\nenable = true\ncontainerd_address = "${ctdAddress}"\n`;
    let daemon: DaemonProcess | undefined;
    let ctd: Containerd | undefined;
    let cri: CriClients | undefined;
    t.teardown(async () => {
      cri?.close();
      await ctd?.stop();
      await daemon?.stop();
      if (t.passing()) tmp.cleanup();
      else console.error(`logs kept in ${tmp.path}`);
    });

    // The snapshotter first: its image service answers Unavailable until
    // containerd is up, and containerd's CRI wants the nix plugin present.
    daemon = await startDaemonProcess({ root, address: snAddress, config, logFile: snLog });
    cri = criClients(snAddress, ctdAddress);
    const down = await grpcCode(cri.image.ListImages({}, { timeoutMs: 3000 }));
    t.equal(down.code, "UNAVAILABLE", "before containerd is up, forwarded calls answer Unavailable");

    ctd = await startContainerd({ dir: ctdDir, snapshotterAddress: snAddress, cri: { sandboxImage: PAUSE } });
    await until("containerd's CRI", async () => (await cri!.runtime.Version({ version: "v1" })) as unknown);
    // CRI learns of images from containerd's image events, which ctr's local
    // import sends (the Transfer service does not, in containerd 1.7).
    await new Promise((r) => setTimeout(r, 1000));
    await ctd.ctr(["images", "import", "--snapshotter", "nix", await busyboxArchive(tmp.path, "pause", PAUSE_ENTRYPOINT, PAUSE)], { namespace: "k8s.io" });
    await until("the pause image in CRI", async () => {
      const res = (await cri!.image.ListImages({})) as { images: { repoTags: string[] }[] };
      return res.images.some((i) => i.repoTags.includes(PAUSE)) ? true : undefined;
    });
    t.pass("containerd's CRI lists the pause image through our endpoint (ListImages forwarded)");

    // The redis nix image, as a store path.
    const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
    const port = await freePort();
    const built = await redisImage(path.join(tmp.path, "images"), f, port);
    const archive = (await run("nix-store", ["--add", built.archive])).stdout.trim();
    t.teardown(() => run("nix-store", ["--delete", archive]).catch(() => {}));
    const ref = `nix:0${archive}`;

    const pulls = await Promise.all([1, 2, 3].map(() => cri!.image.PullImage({ image: { image: ref } })));
    const ids = pulls.map((p) => (p as { imageRef: string }).imageRef);
    t.match(ids[0], /^sha256:[0-9a-f]{64}$/, "PullImage answers an image id");
    t.same(new Set(ids).size, 1, "three concurrent pulls agree");
    const loads = readFileSync(snLog, "utf8").split("\n").filter((l) => l.includes("loading nix image archive")).length;
    t.equal(loads, 1, "and did the work once");

    const ours = (await cri.image.ImageStatus({ image: { image: ref } })) as { image: { id: string; repoTags: string[] } | null };
    const direct = criClients(ctdAddress, ctdAddress);
    t.teardown(() => direct.close());
    const theirs = (await direct.image.ImageStatus({ image: { image: `${ref}:latest` } })) as { image: { id: string } | null };
    t.equal(ours.image?.id, ids[0], "ImageStatus through our endpoint shows it");
    t.equal(theirs.image?.id, ids[0], "and so does containerd's own CRI endpoint");
    t.ok(ours.image?.repoTags.includes(`${ref}:latest`), "tagged with the nix:0 reference");

    // The pod, as kubelet runs it: sandbox, container, start.
    const sandbox = hostNetworkSandbox("redis", `uid-${port}`, path.join(tmp.path, "pods"));
    const { podSandboxId } = (await cri.runtime.RunPodSandbox({ config: sandbox })) as { podSandboxId: string };
    const { containerId } = (await cri.runtime.CreateContainer({
      podSandboxId,
      config: { metadata: { name: "redis" }, image: { image: ref }, logPath: "redis.log" },
      sandboxConfig: sandbox,
    })) as { containerId: string };
    await cri.runtime.StartContainer({ containerId });
    t.equal(await waitForPong(port), "PONG", "redis from the Nix store answers PING with PONG");
    const status = (await cri.runtime.ContainerStatus({ containerId })) as { status: { state: string; imageRef: string } };
    t.equal(status.status.state, "CONTAINER_RUNNING");

    const sn = new SnapshotsClient({ address: snAddress });
    t.teardown(() => sn.close());
    const gcroots = async () => (await run("ls", [path.join(root, "gcroots")])).stdout.split("\n").filter(Boolean);
    t.equal((await gcroots()).length, 1, "the redis layer's store paths are rooted");

    await cri.runtime.StopContainer({ containerId, timeout: 5 });
    await cri.runtime.RemoveContainer({ containerId });
    await cri.runtime.StopPodSandbox({ podSandboxId });
    await cri.runtime.RemovePodSandbox({ podSandboxId });
    await cri.image.RemoveImage({ image: { image: ref } });
    const after = (await cri.image.ImageStatus({ image: { image: ref } })) as { image: unknown };
    t.equal(after.image, null, "RemoveImage through our endpoint removed it");
    await until("containerd's GC to remove the nix layer", async () => ((await gcroots()).length === 0 ? true : undefined), 30_000);
    t.pass("after RemoveImage and containerd's GC the GC roots are gone");

    // Bad references: a clear InvalidArgument or NotFound, nothing left.
    const before = ((await cri.image.ListImages({})) as { images: unknown[] }).images.length;
    const notImage = path.join(tmp.path, "not-an-image.tar");
    writeFileSync(notImage, "this is not an image archive\n");
    const notImagePath = (await run("nix-store", ["--add", notImage])).stdout.trim();
    t.teardown(() => run("nix-store", ["--delete", notImagePath]).catch(() => {}));
    const bad: [string, string[], RegExp][] = [
      ["nix:0/etc/passwd", ["INVALID_ARGUMENT"], /not in \/nix\/store/],
      ["nix:0/nix/store/short.tar", ["INVALID_ARGUMENT"], /32-character hash/],
      [`nix:0/nix/store/${"0".repeat(32)}-missing.tar`, ["NOT_FOUND"], /not in the Nix store/],
      [`nix:0${notImagePath}`, ["INVALID_ARGUMENT", "NOT_FOUND"], /image archive/],
    ];
    for (const [r, codes, re] of bad) {
      const res = await grpcCode(cri.image.PullImage({ image: { image: r } }));
      t.ok(codes.includes(res.code), `${r}: ${res.code}`);
      t.match(res.details, re, `${r}: the message says why`);
    }
    t.equal(((await cri.image.ListImages({})) as { images: unknown[] }).images.length, before, "no image left in containerd");
    const left: string[] = [];
    await sn.walk((i) => {
      if (i.labels["containerd.io/snapshot/nix-layer"]) left.push(i.name);
    });
    t.same(left, [], "no nix layer left in the snapshotter");
  });
}
