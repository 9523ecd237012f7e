/**
 * A CRI pull of a nix:0 image does not load the archive into the daemon's
 * heap. The image is built with `nix2container build --from-image` on a base
 * whose one layer is 500 MiB; kubelet's PullImage goes to our ImageService,
 * which realises the archive and streams its blobs into containerd's content
 * store. The daemon's peak resident memory (VmHWM in /proc/<pid>/status,
 * reset just before the pull through /proc/<pid>/clear_refs) must stay
 * within a fixed 128 MiB of what it was before: a daemon that buffered the
 * layer would need 500 MiB more. Why not less: V8 collects Buffer memory
 * (external to its heap) only once about 64 MiB of it has been allocated
 * since the last collection (its external-memory limit), so the garbage of
 * any streaming copy alone can reach that much before it is freed; runs
 * here measured 44 to 81 MiB of growth.
 *
 * The layer's bytes are one random MiB repeated: gzip's 32 KiB window
 * cannot shrink them, and they cost nothing to make. Disk use is bounded by
 * deleting each intermediate file as soon as the next one exists (the layer
 * tar, the base archive, the built archive once it is in the Nix store);
 * the store path is deleted at the end.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { promisify } from "node:util";
import t from "tap";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { digestStream } from "../../src/image/compression.js";
import { streamTar } from "../../src/image/tar-writer.js";
import { MEDIA_TYPE_OCI_LAYER } from "../../src/image/oci.js";
import { fileRange } from "../../src/image/tar-index.js";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { criClients, PAUSE, until, type CriClients } from "../lib/cri.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, NIX2CONTAINER_BIN } from "../../devenv/images.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);

const MiB = 1024 * 1024;
const LAYER_FILE_SIZE = 500 * MiB;
/** The bound: the daemon's peak may grow by at most this much over the pull. */
const HEADROOM = 128 * MiB;

/** kB fields of /proc/<pid>/status, in bytes. */
function procStatus(pid: number, field: "VmHWM" | "VmRSS"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** A layer tar holding one file of `size` bytes: a random MiB, repeated. */
async function bigLayer(file: string, size: number): Promise<void> {
  const block = randomBytes(MiB);
  const source = {
    size,
    open: () =>
      Readable.from(
        (function* () {
          for (let off = 0; off < size; off += MiB) yield off + MiB <= size ? block : block.subarray(0, size - off);
        })(),
      ),
  };
  const fh = await open(file, "w");
  try {
    await streamTar(
      [
        { header: { name: "data/", type: "directory", mode: 0o755, mtime: new Date(0) } },
        { header: { name: "data/big.bin", type: "file", mode: 0o644, size, mtime: new Date(0) }, source },
      ],
      async (chunk) => {
        await fh.write(chunk);
      },
    );
  } finally {
    await fh.close();
  }
}

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "nix-store", "nix-build"] })) {
  t.test("CRI pull of a nix:0 image with a 500 MiB base layer: the daemon's peak RSS stays within a fixed bound", async (t) => {
    const tmp = tempDir("nix-snapshotter-pull-memory-");
    const snAddress = path.join(tmp.path, "sn.sock");
    const ctdDir = path.join(tmp.path, "containerd");
    const ctdAddress = path.join(ctdDir, "containerd.sock");
    const snLog = path.join(tmp.path, "nix-snapshotter.log");
    let daemon: DaemonProcess | undefined;
    let ctd: Containerd | undefined;
    let cri: CriClients | undefined;
    let storePath: string | undefined;
    t.teardown(async () => {
      cri?.close();
      await ctd?.stop();
      await daemon?.stop();
      if (storePath) await run("nix-store", ["--delete", storePath]).catch(() => undefined);
      if (!t.passing()) console.error(`# nix-snapshotter log:\n${readFileSync(snLog, "utf8").slice(-3000)}`);
      tmp.cleanup();
    });

    // The image: base layer tar -> base archive -> nix image on it -> Nix store.
    const layerTar = path.join(tmp.path, "layer.tar");
    await bigLayer(layerTar, LAYER_FILE_SIZE);
    const layerSize = statSync(layerTar).size;
    const { digest } = await digestStream(fileRange(layerTar, 0, layerSize).open());
    const baseArchive = path.join(tmp.path, "base.tar");
    await writeImageArchive(
      { layers: [{ blob: fileRange(layerTar, 0, layerSize), digest, diffId: digest, mediaType: MEDIA_TYPE_OCI_LAYER }], config: { Cmd: ["/bin/true"] }, ref: "example.com/big-base:1" },
      baseArchive,
    );
    rmSync(layerTar);
    const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
    const configFile = path.join(tmp.path, "config.json");
    writeFileSync(configFile, JSON.stringify({ Entrypoint: ["/bin/true"] }));
    const built = path.join(tmp.path, "big-nix-image.tar");
    await run(process.execPath, [NIX2CONTAINER_BIN, "build", "--config", configFile, "--closure", path.join(f["hello-closure"], "store-paths"), "--from-image", baseArchive, built]);
    rmSync(baseArchive);
    t.ok(statSync(built).size > LAYER_FILE_SIZE, `the nix image archive holds the base layer (${(statSync(built).size / MiB).toFixed(0)} MiB)`);
    storePath = (await run("nix-store", ["--add", built])).stdout.trim();
    rmSync(built);
    const ref = `nix:0${storePath}`;

    daemon = await startDaemonProcess({ root: path.join(tmp.path, "root"), address: snAddress, logFile: snLog, config: `[image_service]\nenable = true\ncontainerd_address = "${ctdAddress}"\n` });
    ctd = await startContainerd({ dir: ctdDir, snapshotterAddress: snAddress, cri: { sandboxImage: PAUSE } });
    cri = criClients(snAddress, ctdAddress);
    await until("containerd's CRI", async () => (await cri!.runtime.Version({ version: "v1" })) as unknown);

    // Warm up every code path of a pull with a small image first, so the
    // measured growth is the big pull's alone.
    const small = (await run(process.execPath, [NIX2CONTAINER_BIN, "build", "--config", configFile, "--closure", path.join(f["hello-closure"], "store-paths"), path.join(tmp.path, "small.tar")])).stdout;
    t.match(small, /sha256:/, "a small nix image built");
    const smallPath = (await run("nix-store", ["--add", path.join(tmp.path, "small.tar")])).stdout.trim();
    t.teardown(() => run("nix-store", ["--delete", smallPath]).catch(() => undefined));
    await cri.image.PullImage({ image: { image: `nix:0${smallPath}` } });

    const pid = daemon.pid;
    // Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5)).
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    const before = procStatus(pid, "VmHWM");
    const res = (await cri.image.PullImage({ image: { image: ref } }, { timeoutMs: 600_000 })) as { imageRef: string };
    const peak = procStatus(pid, "VmHWM");
    t.match(res.imageRef, /^sha256:[0-9a-f]{64}$/, "PullImage answers an image id");
    const status = (await cri.image.ImageStatus({ image: { image: ref } })) as { image?: { size?: number | string } };
    t.ok(Number(status.image?.size ?? 0) >= LAYER_FILE_SIZE, `containerd's CRI reports the image with its ${(Number(status.image?.size ?? 0) / MiB).toFixed(0)} MiB`);
    const figure = `peak RSS ${(peak / MiB).toFixed(1)} MiB, ${((peak - before) / MiB).toFixed(1)} MiB above the ${(before / MiB).toFixed(1)} MiB before the pull`;
    console.log(`# cri-pull-memory: ${figure}`);
    t.ok(peak <= before + HEADROOM, `the daemon's ${figure}: within ${HEADROOM / MiB} MiB`);
  });
}
