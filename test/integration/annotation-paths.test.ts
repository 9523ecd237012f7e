/**
 * Which of containerd's paths hand a nix layer's annotations to the
 * snapshotter as labels, on the containerd line under test (CONTAINERD).
 * docs/containerd.md tables the answers; this file keeps them true.
 *
 *   - ctr images import through the Transfer service: labels arrive;
 *   - ctr images import --local (ctr's own unpacker): no labels;
 *   - ctr images pull --local (ctr's own unpacker): no labels;
 *   - CRI PullImage from a registry: labels arrive. On 1.7 with
 *     disable_snapshot_annotations = false; on 2.x both ways CRI can pull:
 *     through the Transfer service (2.1's default; the proxy plugin exports
 *     enable_remote_snapshot_annotations) and the local pull 2.1 falls back
 *     to when disable_snapshot_annotations = false is set; and on 2.x the
 *     Transfer service passes the layer's annotations whether or not the
 *     proxy plugin exports enable_remote_snapshot_annotations (checked on
 *     2.1.9: the export only adds containerd's remote-snapshot labels).
 *
 * The Transfer service's pull from a registry is proven in
 * push-load.test.ts (it needs TLS on 1.7), and so is our own loader
 * (nix2container load), which unpacks as containerd's Go client does.
 *
 * Each path runs in its own containerd namespace: containerd keeps
 * snapshots per namespace and names them "<namespace>/<n>/<key>" in the
 * snapshotter, so each namespace's nix layer is its own snapshot here.
 * Each containerd gets its own nix-snapshotter.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import type { Test } from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import type { Info } from "../../src/snapshotter/snapshotter.js";
import { containerdBinaries, startContainerd, type Containerd } from "../../devenv/containerd.js";
import { criClients, PAUSE, until } from "../lib/cri.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, helloImage, NIX2CONTAINER_BIN } from "../../devenv/images.js";
import { htpasswdFile, startRegistry, type Registry } from "../lib/registry.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { listAll } from "../lib/util.js";

const run = promisify(execFile);
const USER = "annotations";
const PASSWORD = "annotations-s3cret";
const LAYER_LABEL = "containerd.io/snapshot/nix-layer";
const PATH_LABEL = "containerd.io/snapshot/nix-store-path.";
/** containerd 2.1's message when a CRI setting makes it pull without the Transfer service. */
const FALLBACK = /Falling back to local image pull mode/;

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "nix-build", "nix-store", "docker-registry", "htpasswd"] })) {
  t.test("annotation paths", async (t) => {
    const tmp = tempDir("nix-snapshotter-annotations-");
    let reg: Registry | undefined;
    t.teardown(async () => {
      await reg?.stop();
      if (t.passing()) tmp.cleanup();
      else console.error(`logs kept in ${tmp.path}`);
    });
    const bins = containerdBinaries();
    const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
    const hello = await helloImage(path.join(tmp.path, "images"), f);
    reg = await startRegistry({ dir: path.join(tmp.path, "registry"), auth: { htpasswd: htpasswdFile(path.join(tmp.path, "htpasswd"), USER, PASSWORD) } });
    const remote = `${reg.host}/annotations/hello:1`;
    const dockerDir = path.join(tmp.path, "docker");
    mkdirSync(dockerDir, { recursive: true });
    writeFileSync(path.join(dockerDir, "config.json"), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString("base64") } } }));
    await run(process.execPath, [NIX2CONTAINER_BIN, "push", hello.archive, "--ref", remote, "--plain-http"], { env: { ...process.env, DOCKER_CONFIG: dockerDir } });

    interface Stack {
      c: Containerd;
      sn: SnapshotsClient;
    }

    /** Our daemon's committed nix-layer snapshot of a containerd namespace: does it carry the nix labels? */
    async function labelled(s: Stack, namespace: string): Promise<boolean> {
      const mine = (await listAll(s.sn)).filter((i: Info) => i.name.startsWith(`${namespace}/`) && i.kind === "committed");
      if (mine.length !== 1) throw new Error(`namespace ${namespace}: ${mine.length} committed snapshots, want the one nix layer`);
      const labels = mine[0]!.labels;
      const paths = Object.keys(labels).filter((k) => k.startsWith(PATH_LABEL)).length;
      return labels[LAYER_LABEL] === "true" && paths > 0;
    }

    const hostsDir = (dir: string) => {
      const d = path.join(dir, "certs.d", reg!.host);
      mkdirSync(d, { recursive: true });
      writeFileSync(path.join(d, "hosts.toml"), `server = "http://${reg!.host}"\n\n[host."http://${reg!.host}"]\n  capabilities = ["pull", "resolve"]\n`);
      return path.dirname(d);
    };

    /** A nix-snapshotter and a containerd with CRI using it (pull: how 2.x's CRI pulls). */
    async function withStack(name: string, pull: "transfer" | "local" | undefined, fn: (s: Stack) => Promise<void>, exportAnnotations = true, configVersion?: 2): Promise<void> {
      const dir = path.join(tmp.path, name);
      const snAddress = path.join(dir, "sn.sock");
      let daemon: DaemonProcess | undefined;
      let c: Containerd | undefined;
      let sn: SnapshotsClient | undefined;
      try {
        daemon = await startDaemonProcess({ root: path.join(dir, "root"), address: snAddress, logFile: path.join(dir, "nix-snapshotter.log") });
        sn = new SnapshotsClient({ address: snAddress });
        c = await startContainerd({ dir: path.join(dir, "containerd"), snapshotterAddress: snAddress, cri: { sandboxImage: PAUSE, hostsDir: hostsDir(dir), ...(pull ? { pull } : {}) }, remoteSnapshotAnnotations: exportAnnotations, ...(configVersion ? { configVersion } : {}) });
        await fn({ c, sn });
      } finally {
        await c?.stop();
        await sn?.close();
        await daemon?.stop();
      }
    }

    const ctrPaths = async (t: Test, s: Stack) => {
      await s.c.ctr(["images", "import", "--local=false", "--snapshotter", "nix", hello.archive], { namespace: "transfer-import" });
      t.ok(await labelled(s, "transfer-import"), "ctr images import --local=false (Transfer service): the nix layer gets its labels");
      await s.c.ctr(["images", "import", "--local", "--snapshotter", "nix", hello.archive], { namespace: "local-import" });
      t.notOk(await labelled(s, "local-import"), "ctr images import --local: the nix layer gets no labels");
      await s.c.ctr(["images", "pull", "--local", "--plain-http", "--user", `${USER}:${PASSWORD}`, "--snapshotter", "nix", remote], { namespace: "local-pull" });
      t.notOk(await labelled(s, "local-pull"), "ctr images pull --local: the nix layer gets no labels");
    };

    /** CRI PullImage on containerd's own endpoint, in CRI's namespace k8s.io. */
    const criPull = async (t: Test, s: Stack, how: string) => {
      const cri = criClients(s.c.address, s.c.address);
      try {
        await until("containerd's CRI", async () => (await cri.runtime.Version({ version: "v1" })) as unknown);
        await cri.image.PullImage({ image: { image: remote }, auth: { username: USER, password: PASSWORD } });
        t.ok(await labelled(s, "k8s.io"), `CRI PullImage (${how}): the nix layer gets its labels`);
      } finally {
        cri.close();
      }
    };

    if (bins.major < 2) {
      await t.test(`containerd ${bins.version}`, async (t) => {
        await withStack("ctd", undefined, async (s) => {
          await ctrPaths(t, s);
          await criPull(t, s, "disable_snapshot_annotations = false");
        });
      });
    } else {
      await t.test(`containerd ${bins.version}: ctr, and CRI through the Transfer service`, async (t) => {
        await withStack("ctd-transfer", "transfer", async (s) => {
          await ctrPaths(t, s);
          await criPull(t, s, "Transfer service, enable_remote_snapshot_annotations exported");
          t.notMatch(readFileSync(path.join(s.c.dir, "containerd.log"), "utf8"), FALLBACK, "and containerd did not fall back to local pulls");
        });
      });
      await t.test(`containerd ${bins.version}: CRI with disable_snapshot_annotations = false`, async (t) => {
        await withStack("ctd-local", "local", async (s) => {
          await criPull(t, s, "local pull");
          t.match(readFileSync(path.join(s.c.dir, "containerd.log"), "utf8"), FALLBACK, "containerd logs that it fell back to local image pulls");
        });
      });
      await t.test(`containerd ${bins.version}: without enable_remote_snapshot_annotations`, async (t) => {
        await withStack(
          "ctd-no-export",
          "transfer",
          async (s) => {
            await s.c.ctr(["images", "import", "--local=false", "--snapshotter", "nix", hello.archive], { namespace: "transfer-import" });
            // The export adds containerd's own remote-snapshot labels (image
            // reference, layer digest); the layer's annotations come without it.
            t.ok(await labelled(s, "transfer-import"), "Transfer import: the nix layer still gets its labels");
            const cri = criClients(s.c.address, s.c.address);
            try {
              await until("containerd's CRI", async () => (await cri.runtime.Version({ version: "v1" })) as unknown);
              await cri.image.PullImage({ image: { image: remote }, auth: { username: USER, password: PASSWORD } });
              t.ok(await labelled(s, "k8s.io"), "CRI PullImage through the Transfer service: the nix layer still gets its labels");
            } finally {
              cri.close();
            }
          },
          false,
        );
      });
      await t.test(`containerd ${bins.version}: a version 2 config file`, async (t) => {
        // 2.x migrates a version 2 file in memory; measured on 2.1.9, the CRI
        // snapshotter of [plugins."io.containerd.grpc.v1.cri".containerd] does
        // not survive it: CRI unpacks with overlayfs, and nix layers lose their store.
        const snapshotterOf = async (s: Stack) => {
          const cri = criClients(s.c.address, s.c.address);
          try {
            await until("containerd's CRI", async () => (await cri.runtime.Version({ version: "v1" })) as unknown);
            const fs = (await cri.image.ImageFsInfo({})) as { imageFilesystems: { fsId: { mountpoint: string } }[] };
            return fs.imageFilesystems[0]?.fsId.mountpoint.replace(/.*io\.containerd\.snapshotter\.v1\./, "");
          } finally {
            cri.close();
          }
        };
        await withStack("ctd-v3", undefined, async (s) => {
          t.equal(await snapshotterOf(s), "nix", "version 3: CRI's image filesystem is the nix snapshotter's");
        });
        await withStack(
          "ctd-v2",
          "local",
          async (s) => {
            t.match(readFileSync(path.join(s.c.dir, "containerd.log"), "utf8"), /Configuration migrated from version 2/, "version 2: containerd warns that it migrated the file");
            t.equal(await snapshotterOf(s), "overlayfs", "and CRI's snapshotter is overlayfs, not nix: write version 3 for 2.x");
          },
          true,
          2,
        );
      });
    }
  });
}
