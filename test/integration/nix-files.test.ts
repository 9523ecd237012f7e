/**
 * The Nix side of the project (flake.nix, pkgs/, modules/): every .nix file
 * parses; pkgs/buildImage.nix builds real images with real Nix (a small
 * package set, test/nix-eval/mini-pkgs.nix, stands in for nixpkgs, with the
 * compiled nix2container); and, given a checkout of nixpkgs' lib in
 * NIXPKGS_LIB, every module evaluates with enable = true and generates
 * configs that the daemon's config loader and containerd accept.
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { stringify as tomlStringify } from "smol-toml";
import t from "tap";
import { applyToml, defaultConfig } from "../../src/config/config.js";
import { readImageArchive } from "../../src/image/archive.js";
import { REPO } from "../lib/daemon.js";
import { nonce } from "../lib/nix.js";
import { have, requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);
const NIX_EVAL = path.join(REPO, "test/nix-eval");
const CHECK = path.join(NIX_EVAL, "check.sh");
const IMAGES = path.join(NIX_EVAL, "images.nix");
const NIX2CONTAINER = path.join(REPO, "build/src/cli/nix2container.js");
const MODULES_SKIP = "module evaluation needs NIXPKGS_LIB (a checkout of nixpkgs' lib)";

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

  const nixpkgsLib = process.env["NIXPKGS_LIB"];
  if (!nixpkgsLib) console.log(`SKIP: ${MODULES_SKIP}`);

  t.test("modules evaluate with nixpkgs' lib", { skip: nixpkgsLib ? false : MODULES_SKIP }, async (t) => {
    const evalJson = async (file: string, attr: string) =>
      JSON.parse(
        await sh("nix-instantiate", ["--eval", "--strict", "--json", "--read-write-mode", path.join(NIX_EVAL, file), "--arg", "nixpkgsLib", nixpkgsLib!, "-A", attr]),
      ) as unknown;

    t.test("check.sh modules", async (t) => {
      const out = await sh("bash", [CHECK, "modules"], { NIXPKGS_LIB: nixpkgsLib! });
      t.match(out, /^ok: eval-modules\.nix: \d+ checks hold$/m);
      t.match(out, /^ok: eval-package\.nix: \d+ checks hold$/m);
      t.match(out, /^ok: eval-flake\.nix: \d+ checks hold$/m);
      t.match(out, /^ok: eval-tests\.nix: \d+ checks hold$/m);
      t.notMatch(out, /FAIL|SKIP/);
    });

    t.test("module checks", async (t) => {
      t.same(await evalJson("eval-modules.nix", "failures"), [], "no failed check");
      t.ok((await evalJson("eval-modules.nix", "checks")) as number > 100, "over a hundred checks ran");
    });

    t.test("package checks", async (t) => {
      t.same(await evalJson("eval-package.nix", "failures"), [], "no failed check");
    });

    t.test("flake outputs and default.nix", async (t) => {
      t.same(await evalJson("eval-flake.nix", "failures"), [], "no failed check");
    });

    t.test("NixOS test nodes and scripts", async (t) => {
      t.same(await evalJson("eval-tests.nix", "failures"), [], "no failed check");
    });

    const generated = (await evalJson("eval-modules.nix", "generated")) as {
      nixSnapshotter: Record<string, Record<string, unknown>>;
      containerd: Record<string, string>;
    };

    t.test("the generated config.toml files are accepted by the daemon", async (t) => {
      for (const [name, doc] of Object.entries(generated.nixSnapshotter)) {
        // Through TOML and back, as the daemon reads it.
        const cfg = applyToml(defaultConfig(), JSON.parse(JSON.stringify(doc)) as Record<string, unknown>, `${name}.toml`);
        t.equal(cfg.address, doc["address"] ?? defaultConfig().address, `${name}: address`);
        t.ok(tomlStringify(doc).length > 0, `${name}: renders as TOML`);
      }
      const custom = applyToml(defaultConfig(), generated.nixSnapshotter["custom"]!, "custom.toml");
      t.equal(custom.externalBuilder, "/etc/nix-snapshotter/builder");
      t.equal(custom.imageService.enable, false);
    });

    const containerdSkip = have("containerd") ? false : "needs containerd on PATH";
    t.test("the generated containerd configs are accepted by containerd", { skip: containerdSkip }, async (t) => {
      const tmp = tempDir("nix-files-containerd-");
      t.teardown(() => tmp.cleanup());
      for (const [name, json] of Object.entries(generated.containerd)) {
        const file = path.join(tmp.path, `${name}.toml`);
        writeFileSync(file, tomlStringify(JSON.parse(json) as Record<string, unknown>));
        const dump = await sh("containerd", ["--config", file, "config", "dump"]);
        t.match(dump, /\[proxy_plugins\.nix\]/, `${name}: proxy plugin nix`);
        t.match(dump, /address = "\/run\/nix-snapshotter\/nix-snapshotter\.sock"/, `${name}: at the snapshotter's socket`);
        t.match(dump, /snapshotter = "nix"/, `${name}: CRI snapshotter nix`);
        t.match(dump, /disable_snapshot_annotations = false/, `${name}: annotations reach the snapshotter`);
      }
    });
  });
}
