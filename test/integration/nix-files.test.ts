/**
 * The Nix side of the project (flake.nix, pkgs/, modules/): every .nix file
 * parses; pkgs/buildImage.nix builds real images with real Nix (a small
 * package set, test/nix-eval/mini-pkgs.nix, stands in for nixpkgs, with the
 * compiled nix2container); and, with the nixpkgs and Home Manager sources of
 * nixos-24.11 and nixos-26.05 in NIX_SOURCES, the NixOS and Home Manager
 * modules evaluate against their real option declarations, every command of
 * every generated unit and script resolves, and each era's containerd (1.7,
 * 2.x) and the daemon read the configuration files generated for them.
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { parse as parseToml } from "smol-toml";
import t from "tap";
import { applyToml, defaultConfig } from "../../src/config/config.js";
import { readImageArchive } from "../../src/image/archive.js";
import { REPO } from "../../devenv/daemon.js";
import { nonce } from "../lib/nix.js";
import { have, requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { CommandChecker } from "../lib/unit-commands.js";

const run = promisify(execFile);
const NIX_EVAL = path.join(REPO, "test/nix-eval");
const CHECK = path.join(NIX_EVAL, "check.sh");
const IMAGES = path.join(NIX_EVAL, "images.nix");
const NIX2CONTAINER = path.join(REPO, "build/src/cli/nix2container.js");
const MODULES_SKIP = "module evaluation needs NIX_SOURCES (the nixpkgs and Home Manager sources, see test/nix-eval/harness.nix)";

const LAYER = "containerd.io/snapshot/nix-layer";
const PATH_LABEL = "containerd.io/snapshot/nix-store-path.";
const CLOSURE_LABEL = "containerd.io/snapshot/nix-closure";

const BIG = { maxBuffer: 64 * 1024 * 1024, timeout: 900_000 };

interface ImagesInfo {
  namedImage: string;
  namedOut: string;
  namedName: string;
  byNixImage: string;
  byNixOut: string;
  byNixName: string;
  hello: string;
  busybox: string;
  namedConfigFile: string;
  namedClosure: string;
  byNixClosure: string;
}

async function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { ...BIG, env: { ...process.env, ...env } });
    return stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(" ")} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

function imageArgs(salt: string): string[] {
  return [IMAGES, "--argstr", "nix2containerBin", NIX2CONTAINER, "--argstr", "salt", salt];
}

/** nix-build the attributes of images.nix; out-links (GC roots) under dir. */
async function buildImages(dir: string, salt: string, attrs: string[], extra: string[] = []): Promise<string[]> {
  const out = await sh("nix-build", [...imageArgs(salt), ...attrs.flatMap((a) => ["-A", a]), "--out-link", path.join(dir, `result-${salt}`), ...extra]);
  return out.split("\n").filter((l) => l !== "");
}

async function imagesInfo(salt: string): Promise<ImagesInfo> {
  return JSON.parse(await sh("nix-instantiate", ["--eval", "--strict", "--json", ...imageArgs(salt), "-A", "info"])) as ImagesInfo;
}

async function closure(paths: string[]): Promise<string[]> {
  return (await sh("nix-store", ["-qR", ...paths])).split("\n").filter((l) => l !== "").sort();
}

function storePathLabels(annotations: Record<string, string>): string[] {
  return Object.entries(annotations)
    .filter(([k]) => k.startsWith(PATH_LABEL))
    .map(([, v]) => v)
    .sort();
}

if (requireOrSkip(t, { commands: ["nix-build", "nix-instantiate", "nix-store"] })) {
  t.test("every .nix file parses", async (t) => {
    const out = await sh("bash", [CHECK, "parse"]);
    t.match(out, /^ok: \d+ \.nix files parse$/m);
    t.notMatch(out, /FAIL/);
  });

  const fixtureMissing = ["gcc", "patchelf", "ldd"].find((c) => !have(c)) ?? (existsSync("/bin/busybox") ? undefined : "/bin/busybox");
  const buildSkip = !existsSync(NIX2CONTAINER)
    ? `needs ${NIX2CONTAINER} (npm run build)`
    : fixtureMissing
      ? `needs ${fixtureMissing} for the fixture closures (run scripts/setup.sh)`
      : false;
  if (buildSkip) console.log(`SKIP: buildImage: ${buildSkip}`);

  t.test("buildImage builds nix images with real Nix", { skip: buildSkip }, async (t) => {
    const tmp = tempDir("nix-files-");
    t.teardown(() => tmp.cleanup());
    const salt = nonce();
    const [named, byNix, registryScript, registryScriptRenamed, containerdScript, containerdScriptDefault] = await buildImages(tmp.path, salt, [
      "named",
      "byNix",
      "registryScript",
      "registryScriptRenamed",
      "containerdScript",
      "containerdScriptDefault",
    ]);
    const info = await imagesInfo(salt);
    t.equal(named, info.namedOut, "the named archive is the derivation's output");
    t.equal(byNix, info.byNixOut, "the nix-resolved archive is the derivation's output");
    t.match(named!, /-nix-image-Hello\.tar$/, "store name from the image name's basename");
    t.match(byNix!, /-nix-image-hello\.tar$/);

    t.test("passthru.image", async (t) => {
      t.equal(info.namedImage, "example.com/demo/hello:v1", "name:tag, the name lower-cased");
      t.equal(info.byNixImage, `nix:0${info.byNixOut}`, "resolvedByNix: nix:0<archive>");
      t.equal(info.namedName, "Example.com/Demo/Hello", "passthru.name is the given name");
    });

    t.test("the named image", async (t) => {
      const img = await readImageArchive(named!);
      t.equal(img.format, "oci-layout");
      t.equal(img.ref, "example.com/demo/hello:v1", "reference from name and tag");
      t.equal(img.manifest.layers.length, 1, "one nix layer");
      const a = img.manifest.layers[0]!.annotations ?? {};
      t.equal(a[LAYER], "true");
      t.equal(a[CLOSURE_LABEL], realpathSync(path.join(info.namedClosure, "store-paths")), "nix-closure: closureInfo's store-paths");
      const want = (await closure([info.namedConfigFile, info.busybox, info.hello])).filter((p) => p !== info.namedConfigFile);
      t.same(storePathLabels(a), want, "one label per store path of the closure, without the config file");
      t.ok(want.includes(info.hello) && want.includes(info.busybox), "entrypoint and copyToRoot paths are in the closure");
      t.ok(want.length >= 4, "hello's libc and loader come along");
      t.same(img.config.config?.Entrypoint, [`${info.hello}/bin/hello`], "entrypoint (lower-case key accepted)");
      t.same(img.config.config?.Env, ["GREETING=hi"]);

      const layerFile = path.join(tmp.path, "layer.tgz");
      writeFileSync(layerFile, img.blobs.get(img.manifest.layers[0]!.digest)!);
      const listing = await sh("tar", ["-tzvf", layerFile]);
      t.match(listing, new RegExp(`bin/sh -> ${info.busybox}/bin/sh`), "copyToRoot links /bin/sh to busybox");
      t.match(listing, new RegExp(`${info.hello.slice(1)}/?\\n`), "a mountpoint for hello");
      t.notMatch(listing, new RegExp(info.namedConfigFile.slice(1)), "no mountpoint for the config file");

      const refs = (await sh("nix-store", ["-q", "--references", named!])).split("\n");
      t.ok(refs.includes(info.namedClosure), "the archive refers to its closure info (so copying it copies the closure)");
    });

    t.test("the nix-resolved image", async (t) => {
      const img = await readImageArchive(byNix!);
      t.equal(img.ref, `${info.byNixImage}:latest`, "reference nix:0<archive>:latest");
      const a = img.manifest.layers[0]!.annotations ?? {};
      t.equal(a[CLOSURE_LABEL], realpathSync(path.join(info.byNixClosure, "store-paths")));
      t.ok(storePathLabels(a).includes(info.hello));
      t.notOk(storePathLabels(a).includes(info.busybox), "no copyToRoot: no busybox");
    });

    t.test("an image on another (fromImage)", async (t) => {
      const [based] = await buildImages(tmp.path, salt, ["based"]);
      const base = await readImageArchive(named!);
      const img = await readImageArchive(based!);
      t.equal(img.manifest.layers.length, 2, "the base's layer and its own");
      t.same(img.manifest.layers[0], base.manifest.layers[0], "the base's layer first, descriptor and annotations unchanged");
      t.equal(img.manifest.layers[1]!.annotations?.[LAYER], "true", "then its own nix layer");
      t.same(img.config.config?.Entrypoint, [`${info.hello}/bin/hello`], "the base's entrypoint is inherited");
      t.same(img.config.config?.Env, ["GREETING=hi", "EXTRA=1"], "Env: the base's, then its own");
      const refs = (await sh("nix-store", ["-q", "--references", based!])).split("\n");
      t.ok(refs.includes(info.hello) && refs.includes(info.busybox), "its archive refers to the base's store paths, so copying it copies them");
    });

    t.test("copyToRegistry and copyToContainerd scripts", async (t) => {
      const script = (p: string, name: string) => readFileSync(path.join(p, "bin", name), "utf8");
      t.match(script(registryScript!, "copy-to-registry"), `nix2container push ${named} --ref 'example.com/demo/hello:v1' --plain-http "$@"`);
      t.match(script(registryScriptRenamed!, "copy-to-registry"), `nix2container push ${named} --ref 'localhost:5000/other:t2' "$@"`);
      t.notMatch(script(registryScriptRenamed!, "copy-to-registry"), "--plain-http");
      t.match(
        script(containerdScript!, "copy-to-containerd"),
        `nix2container load ${byNix} --address "$XDG_RUNTIME_DIR/containerd/containerd.sock" --namespace "k8s.io" "$@"`,
      );
      t.match(
        script(containerdScriptDefault!, "copy-to-containerd"),
        `nix2container load ${byNix} --address "/run/containerd/containerd.sock" --namespace "default" "$@"`,
      );
    });

    t.test("building again gives the same image", async (t) => {
      const first = await readImageArchive(named!);
      const firstByNix = await readImageArchive(byNix!);
      // Same derivations, rebuilt: Nix compares the outputs byte for byte.
      await buildImages(tmp.path, salt, ["named", "byNix"], ["--check"]);
      t.pass("nix-build --check: the rebuilt archives are identical");
      // Another nix2container derivation: new archives, same manifests.
      const salt2 = nonce();
      const [named2, byNix2] = await buildImages(tmp.path, salt2, ["named", "byNix"]);
      t.not(named2, named, "a fresh build (another archive store path)");
      const second = await readImageArchive(named2!);
      const secondByNix = await readImageArchive(byNix2!);
      t.equal(second.manifestDigest, first.manifestDigest, "same manifest digest");
      t.equal(second.ref, first.ref, "same reference");
      t.equal(secondByNix.manifestDigest, firstByNix.manifestDigest, "same manifest digest for the nix-resolved image");
      t.equal(secondByNix.ref, `nix:0${byNix2}:latest`, "its reference names its own archive");
    });
  });

  // The module evaluation runs against the nixpkgs and Home Manager sources
  // in NIX_SOURCES (.ci/run sets it); CI must never skip it.
  const sources = process.env["NIX_SOURCES"];
  const modulesSkip = sources ? false : MODULES_SKIP;
  if (!sources) {
    if (process.env["CI"] === "true") t.fail(`CI: ${MODULES_SKIP}`);
    else console.log(`SKIP: ${MODULES_SKIP}`);
  }

  t.test("modules evaluate against the nixpkgs and Home Manager sources of 24.11 and 26.05", { skip: modulesSkip }, async (t) => {
    const evalJson = async (file: string, attr: string) =>
      JSON.parse(
        await sh("nix-instantiate", ["--eval", "--strict", "--json", "--read-write-mode", path.join(NIX_EVAL, file), "--arg", "sources", sources!, "-A", attr], {
          NIX_SOURCES: sources!,
        }),
      ) as unknown;

    t.test("check.sh modules", async (t) => {
      const out = await sh("bash", [CHECK, "modules"], { NIX_SOURCES: sources! });
      for (const f of ["eval-modules", "eval-tests", "eval-package", "eval-flake"]) {
        t.match(out, new RegExp(`^ok: ${f}\\.nix: \\d+ checks hold$`, "m"), `${f}.nix`);
      }
      t.notMatch(out, /FAIL|SKIP/);
    });

    t.test("without the sources, check.sh fails in CI and skips elsewhere", async (t) => {
      const env = { ...process.env, NIX_SOURCES: "" };
      const ci = await run("bash", [CHECK, "modules"], { env: { ...env, CI: "true" } }).then(
        () => "exit 0",
        (e: { stdout?: string; code?: number }) => `exit ${e.code}: ${e.stdout ?? ""}`,
      );
      t.match(ci, /^exit 1: FAIL: modules: NIX_SOURCES is not set/);
      const { stdout } = await run("bash", [CHECK, "modules"], { env: { ...env, CI: "" } });
      t.match(stdout, /^SKIP: module evaluation needs NIX_SOURCES/);
    });

    t.test("module, test, package and flake checks", async (t) => {
      t.same(await evalJson("eval-modules.nix", "failures"), [], "modules: no failed check");
      t.ok((await evalJson("eval-modules.nix", "checks")) as number > 500, "modules: over 500 checks ran");
      t.same(await evalJson("eval-tests.nix", "failures"), [], "NixOS tests: no failed check");
      t.same(await evalJson("eval-package.nix", "failures"), [], "package: no failed check");
      t.same(await evalJson("eval-flake.nix", "failures"), [], "flake outputs: no failed check");
    });

    const report = (await evalJson("eval-modules.nix", "report")) as Record<string, EraReport>;

    t.test("every command of every unit and script resolves", async (t) => {
      for (const [era, r] of Object.entries(report)) {
        for (const [name, c] of Object.entries(r.configurations)) {
          const checker = new CommandChecker();
          const units = { ...c.units, ...Object.fromEntries(Object.entries(c.userUnits).map(([n, u]) => [`user ${n}`, u])) };
          t.ok(Object.keys(units).length > 0, `${era} ${name}: has units`);
          for (const [unit, text] of Object.entries(units)) {
            checker.checkUnit(unit, text);
            if (/\/bin\/nix-snapshotter /.test(text)) checker.requireOnPath(unit, text, ["nix-store", "mount", "umount"]);
          }
          t.same(checker.problems, [], `${era} ${name}: every command resolves`);
        }
      }
    });

    t.test("the checker finds a missing command", async (t) => {
      // The rootless unit as it was: nsenter's `cat` on a PATH of nix only.
      const c = report["24.11"]!.configurations["rlOneLine"]!;
      const checker = new CommandChecker();
      const unit = c.userUnits["nix-snapshotter.service"]!;
      const nsenter = /(\/nix\/store\/[0-9a-z]{32}-containerd-nsenter)\/bin/.exec(unit)![1]!;
      const text = (JSON.parse(readFileSync(nsenter, "utf8")) as { scripts: Record<string, string> }).scripts["containerd-nsenter"]!;
      checker.checkScript("nsenter", "probe", text.replace(/\/nix\/store\/[0-9a-z]{32}-coreutils\/bin\/cat/, "cat"), []);
      t.match(checker.problems, [{ message: /^cat is not on its PATH/ }]);
      const checker2 = new CommandChecker();
      checker2.requireOnPath("snapshotter", 'Environment="PATH=/nix/store/00000000000000000000000000000000-x/bin"', ["mount"]);
      t.equal(checker2.problems.length, 1, "a daemon without mount on its PATH is found");
    });

    t.test("the generated config.toml files are accepted by the daemon", async (t) => {
      for (const [era, r] of Object.entries(report)) {
        for (const [name, c] of Object.entries(r.configurations)) {
          if (c.snapshotterToml === null) continue;
          const doc = parseToml(c.snapshotterToml) as Record<string, unknown>;
          const cfg = applyToml(defaultConfig(), doc, `${era}-${name}.toml`);
          t.equal(cfg.address, (doc["address"] as string | undefined) ?? defaultConfig().address, `${era} ${name}: address`);
        }
      }
      const custom = report["26.05"]!.configurations["custom"]!;
      const cfg = applyToml(defaultConfig(), parseToml(custom.snapshotterToml!) as Record<string, unknown>, "custom.toml");
      t.equal(cfg.externalBuilder, "/etc/nix-snapshotter/builder");
      t.equal(cfg.imageService.enable, false);
    });

    t.test("k3s drop-ins are YAML k3s reads", async (t) => {
      for (const [era, r] of Object.entries(report)) {
        const etc = r.configurations["k3sNix"]!.etc;
        const dropIn = JSON.parse(etc["rancher/k3s/config.yaml.d/50-nix-snapshotter-containerd.yaml"]!) as Record<string, unknown>;
        t.same(dropIn, {
          "container-runtime-endpoint": "unix:///run/containerd/containerd.sock",
          "kubelet-arg+": ["image-service-endpoint=unix:///run/nix-snapshotter/nix-snapshotter.sock"],
        }, `${era}: k3s on containerd, nix-snapshotter as image service`);
      }
    });

    // Each era's containerd reads its configuration: 1.7 (the system's) for
    // 24.11, 2.x (unpacked under build/containerd-2 by scripts/setup.sh) for
    // 26.05.
    const containerd2 = path.join(REPO, "build/containerd-2/usr/bin/containerd");
    const binaryFor = (major: number): string | undefined =>
      major >= 2 ? (existsSync(containerd2) ? containerd2 : undefined) : have("containerd") ? "containerd" : undefined;
    for (const era of ["24.11", "26.05"]) {
      const major = Number((report[era]?.containerdVersion ?? "0").split(".")[0]);
      const bin = binaryFor(major);
      const skip = bin ? false : major >= 2 ? `needs containerd 2.x at ${containerd2}` : "needs containerd on PATH";
      if (skip) console.log(`SKIP: ${era} containerd configs: ${skip}`);
      t.test(`${era}: the rendered containerd configs are read by containerd ${major}.x`, { skip }, async (t) => {
        const version = (await sh(bin!, ["--version"])).trim();
        t.comment(version);
        t.match(version, new RegExp(` v?${major}\\.`), `it is containerd ${major}.x`);
        const tmp = tempDir("nix-files-containerd-");
        t.teardown(() => tmp.cleanup());
        for (const [name, c] of Object.entries(report[era]!.configurations)) {
          for (const [which, toml] of [["rootful", c.containerdToml], ["rootless", c.rootlessContainerdToml]] as const) {
            if (toml === null) continue;
            const file = path.join(tmp.path, `${name}-${which}.toml`);
            writeFileSync(file, toml);
            const { stdout: dump, stderr } = await run(bin!, ["--config", file, "config", "dump"], BIG);
            const label = `${era} ${name} (${which})`;
            t.match(dump, /\[proxy_plugins\.nix\]/, `${label}: proxy plugin nix`);
            t.match(dump, /address = ['"]\/run\/(nix-snapshotter|custom)\/[a-z-]+\.sock['"]/, `${label}: at the snapshotter's socket`);
            t.match(dump, /snapshotter = ['"]nix['"]/, `${label}: CRI snapshotter nix`);
            t.match(dump, /disable_snapshot_annotations = false/, `${label}: annotations reach the snapshotter`);
            t.match(dump, /enable_remote_snapshot_annotations = ['"]true['"]/, `${label}: the Transfer service hands annotations to the proxy`);
            if (major >= 2 && name !== "version2") {
              t.notMatch(stderr, /migrat/i, `${label}: a version 3 file, nothing to migrate`);
              // nixpkgs' own module still writes version 2 keys (its CNI
              // bin_dir default and an empty `containerd` table under
              // io.containerd.grpc.v1.cri); containerd 2.x ignores them with
              // a warning, and reads the CNI default the modules add in
              // version 3 form. No key of the modules' own may be ignored.
              const unknown = [...stderr.matchAll(/Ignoring unknown key.*key=(\S+) plugin=(\S+)/g)].map((m) => `${m[2]} ${m[1]}`);
              const nixpkgsOwn = ["io.containerd.grpc.v1.cri cni", "io.containerd.grpc.v1.cri containerd"];
              t.same(unknown.filter((k) => !nixpkgsOwn.includes(k)), [], `${label}: no other ignored keys`);
            }
          }
        }
      });
    }
  });
}

interface EraReport {
  containerdVersion: string;
  configurations: Record<string, {
    units: Record<string, string>;
    userUnits: Record<string, string>;
    containerdToml: string | null;
    rootlessContainerdToml: string | null;
    snapshotterToml: string | null;
    etc: Record<string, string>;
  }>;
}
