import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import t from "tap";
import { applyFlags, ConfigError, DEFAULTS, loadConfigFile } from "../../src/config/config.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "config-test-"));
function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

t.test("defaults when the default file is absent", async (t) => {
  const cfg = await loadConfigFile(path.join(dir, "absent.toml"), false);
  t.same(cfg, { ...DEFAULTS, imageService: { ...DEFAULTS.imageService } });
  t.equal(cfg.address, "/run/nix-snapshotter/nix-snapshotter.sock");
  t.equal(cfg.root, "/var/lib/containerd/io.containerd.snapshotter.v1.nix");
  t.equal(cfg.imageService.enable, true);
  t.equal(cfg.imageService.containerdAddress, "/run/containerd/containerd.sock");
  t.equal(cfg.externalBuilder, undefined);
  t.equal(cfg.overlay.driver, "overlayfs");
  t.equal(cfg.storeView, "tree");
});

t.test("an explicitly named file must exist", async (t) => {
  await t.rejects(loadConfigFile(path.join(dir, "absent.toml"), true), { message: /absent\.toml: config file does not exist/ });
});

t.test("every key is read", async (t) => {
  const cfg = await loadConfigFile(
    file(
      "full.toml",
      `address = "/run/x.sock"\nroot = "/var/lib/x"\nexternal_builder = "/bin/builder"\nstore_view = "binds"\n[image_service]\nenable = false\ncontainerd_address = "/run/c.sock"\n[overlay]\ndriver = "fuse-overlayfs"\n`,
    ),
    true,
  );
  t.same(cfg, { address: "/run/x.sock", root: "/var/lib/x", externalBuilder: "/bin/builder", imageService: { enable: false, containerdAddress: "/run/c.sock" }, overlay: { driver: "fuse-overlayfs" }, storeView: "binds" });
});

t.test("bad files are refused with one line naming file and key", async (t) => {
  const cases: [string, RegExp][] = [
    ["typo = 1\n", /bad\.toml: unknown key "typo"/],
    ["[image_service]\nenabled = true\n", /unknown key "image_service\.enabled"/],
    ["root = 5\n", /key "root" must be a string, got number/],
    ["[image_service]\nenable = \"yes\"\n", /key "image_service\.enable" must be a boolean, got string/],
    ["image_service = 1\n", /key "image_service" must be a table/],
    ["root = \"relative/dir\"\n", /key "root" must be an absolute path/],
    ["root = \"\"\n", /key "root" must not be empty/],
    ["root = \n", /bad\.toml:1:\d+: invalid TOML/],
    ["[overlay]\ndriver = \"aufs\"\n", /key "overlay\.driver" must be one of "overlayfs", "fuse-overlayfs", got "aufs"/],
    ["store_view = \"links\"\n", /key "store_view" must be one of "tree", "binds", got "links"/],
  ];
  for (const [text, re] of cases) {
    const err = await loadConfigFile(file("bad.toml", text), true).catch((e: unknown) => e);
    t.ok(err instanceof ConfigError, `${JSON.stringify(text)} is a ConfigError`);
    t.match((err as Error).message, re);
    t.notMatch((err as Error).message, /\n/, "one line");
  }
});

t.test("flags override the file; relative paths resolve", async (t) => {
  const cfg = await loadConfigFile(file("f.toml", `address = "/run/x.sock"\nroot = "/var/lib/x"\n`), true);
  applyFlags(cfg, { address: "/tmp/a.sock", root: "rel" });
  t.equal(cfg.address, "/tmp/a.sock");
  t.equal(cfg.root, path.resolve("rel"));
  t.throws(() => applyFlags(cfg, { root: "" }), { message: "--root must not be empty" });
  applyFlags(cfg, { storeView: "binds" });
  t.equal(cfg.storeView, "binds", "--store-view sets the store view");
  t.throws(() => applyFlags(cfg, { storeView: "tre" }), { message: '--store-view must be one of "tree", "binds", got "tre"' });
});
