/**
 * How a CRI pull of `nix:0/nix/store/...tar` gets its archive, observed
 * for real: the daemon's nix-store is a wrapper on its PATH that records
 * every call and runs the real one.
 *   - an archive that is valid in the Nix store is loaded without a
 *     `nix-store --realise` (one long-running `nix-store --serve` answers
 *     the validity question); when that check fails, it is realised;
 *   - an archive that is not in the store is realised: substituted from a
 *     binary cache;
 *   - a file at the archive's store path that Nix does not hold valid (left
 *     by an interrupted substitution, say) is not trusted: the archive is
 *     realised, Nix replaces the file, and the pull loads the real archive.
 */
import { execFile } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { startContainerd, type Containerd } from "../../devenv/containerd.js";
import { criClients, PAUSE, until, type CriClients } from "../lib/cri.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, redisImage } from "../../devenv/images.js";
import { isValid } from "../lib/nix.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "nix-store", "nix"] })) {
  t.test("nix:0 pulls: valid archives are not realised, others are", async (t) => {
    const tmp = tempDir();
    const snAddress = path.join(tmp.path, "sn.sock");
    const ctdDir = path.join(tmp.path, "containerd");
    const ctdAddress = path.join(ctdDir, "containerd.sock");
    const snLog = path.join(tmp.path, "nix-snapshotter.log");
    let daemon: DaemonProcess | undefined;
    let ctd: Containerd | undefined;
    let cri: CriClients | undefined;
    const added: string[] = [];
    t.teardown(async () => {
      cri?.close();
      await ctd?.stop();
      await daemon?.stop();
      for (const p of added) await run("nix-store", ["--delete", p]).catch(() => {});
      if (t.passing()) tmp.cleanup();
      else console.error(`logs kept in ${tmp.path}`);
    });

    // The nix-store the daemon finds first: records its arguments, runs the real one.
    const real = (await run("sh", ["-c", "command -v nix-store"])).stdout.trim();
    const bin = path.join(tmp.path, "bin");
    const calls = path.join(tmp.path, "nix-store-calls");
    mkdirSync(bin);
    // While the file `broken` exists, its --serve fails as a broken Nix would.
    const broken = path.join(tmp.path, "broken");
    writeFileSync(
      path.join(bin, "nix-store"),
      `#!/bin/sh\nprintf '%s\\n' "$*" >> '${calls}'\n[ "$1" = --serve ] && [ -e '${broken}' ] && { echo "error: broken" >&2; exit 1; }\nexec '${real}' "$@"\n`,
    );
    chmodSync(path.join(bin, "nix-store"), 0o755);
    writeFileSync(calls, "");
    const callsSince = (from: number) => readFileSync(calls, "utf8").split("\n").filter(Boolean).slice(from);
    const callCount = () => callsSince(0).length;

    // Three store paths of the same image archive (different names): one
    // stays valid, two are deleted after being copied into a binary cache.
    const f = await buildFixtures(path.join(REPO, "build/test-fixtures"), { MANY_N: "1000" });
    const built = await redisImage(path.join(tmp.path, "images"), f);
    const storeAdd = async (name: string) => {
      const file = path.join(tmp.path, "images", name);
      copyFileSync(built.archive, file);
      const p = (await run("nix-store", ["--add", file])).stdout.trim();
      added.push(p);
      return p;
    };
    const valid = await storeAdd("valid-redis.tar");
    const unchecked = await storeAdd("unchecked-redis.tar");
    const absent = await storeAdd("absent-redis.tar");
    const junk = await storeAdd("junk-redis.tar");
    const cache = path.join(tmp.path, "cache");
    await run("nix", ["copy", "--to", `file://${cache}?compression=none`, absent, junk]);
    await run("nix-store", ["--delete", absent, junk]);
    t.notOk(await isValid(absent), "the absent archive is not in the store");
    // What an interrupted substitution leaves: a file Nix does not hold valid.
    writeFileSync(junk, "half an archive");
    t.notOk(await isValid(junk), "the junk file's path is not valid");

    daemon = await startDaemonProcess({
      root: path.join(tmp.path, "root"),
      address: snAddress,
      config: `[image_service]\nenable = true\ncontainerd_address = "${ctdAddress}"\n`,
      logFile: snLog,
      env: { PATH: `${bin}:${process.env["PATH"] ?? ""}`, NIX_CONFIG: `substituters = file://${cache}\nrequire-sigs = false` },
    });
    ctd = await startContainerd({ dir: ctdDir, snapshotterAddress: snAddress, cri: { sandboxImage: PAUSE } });
    cri = criClients(snAddress, ctdAddress);
    await until("containerd's CRI", async () => (await cri!.runtime.Version({ version: "v1" })) as unknown);
    const direct = criClients(ctdAddress, ctdAddress);
    t.teardown(() => direct.close());

    const pull = async (archive: string) => {
      const from = callCount();
      const res = (await cri!.image.PullImage({ image: { image: `nix:0${archive}` } })) as { imageRef: string };
      const status = (await direct.image.ImageStatus({ image: { image: `nix:0${archive}:latest` } })) as { image: { id: string } | null };
      return { id: res.imageRef, listed: status.image?.id, calls: callsSince(from).filter((c) => c.includes(archive)) };
    };

    writeFileSync(broken, "");
    const u = await pull(unchecked);
    t.equal(u.listed, u.id, "when nix-store --serve fails, the pull of a valid archive still loads it");
    t.ok(u.calls.some((c) => c.startsWith("--realise")), "realising it with nix-store --realise");
    rmSync(broken);

    const v = await pull(valid);
    t.match(v.id, /^sha256:[0-9a-f]{64}$/, "the valid archive's pull answers an image id");
    t.equal(v.listed, v.id, "containerd's CRI lists it");
    t.same(v.calls, [], "no nix-store call named the valid archive: it was not realised");
    t.ok(callsSince(0).includes("--serve"), "a nix-store --serve answered whether it is valid");
    const again = await pull(valid);
    t.equal(again.id, v.id, "pulling it again answers the same id");
    t.same(callsSince(0).filter((c) => c === "--serve").length, 2, "from the same nix-store --serve (one after the broken one)");

    const a = await pull(absent);
    t.equal(a.listed, a.id, "the absent archive's pull loads it");
    t.ok(a.calls.some((c) => c.startsWith("--realise")), "it was realised with nix-store --realise");
    t.ok(await isValid(absent), "and is valid in the store now (substituted)");

    const j = await pull(junk);
    t.equal(j.listed, j.id, "the pull of a path holding a file Nix does not hold valid loads the image");
    t.ok(j.calls.some((c) => c.startsWith("--realise")), "that path was realised, not trusted");
    t.ok(await isValid(junk), "and is valid in the store now");
    t.equal(j.id, v.id, "the image is the real archive's, not the junk's");
  });
}
