/**
 * Base images for `nix2container build --from-image`: how a base's config
 * and ours combine, and which base archives are taken or refused.
 */
import path from "node:path";
import t from "tap";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { mergeContainerConfig, readBaseImage } from "../../src/image/from-image.js";
import { buildLayer } from "../../src/image/layer.js";
import { goArch } from "../../src/image/oci.js";
import { sha256Digest } from "../../src/digest.js";
import { tempDir } from "../lib/tmp.js";

t.test("merging configs: ours wins per key, Env by name, maps are unions", async (t) => {
  const base = {
    Env: ["PATH=/usr/bin:/bin", "LANG=C", "BARE"],
    Entrypoint: ["/docker-entrypoint.sh"],
    Cmd: ["redis-server"],
    ExposedPorts: { "6379/tcp": {} },
    Volumes: { "/data": {} },
    Labels: { a: "base", b: "base" },
    WorkingDir: "/data",
    User: "redis",
  } as const;
  t.same(mergeContainerConfig(structuredClone(base) as never, {}), base, "an empty config keeps the base's");
  t.same(
    mergeContainerConfig(structuredClone(base) as never, { Env: ["LANG=C.UTF-8", "EXTRA=1"], Labels: { b: "ours", c: "ours" }, ExposedPorts: { "8080/tcp": {} }, WorkingDir: "/" }),
    { ...base, Env: ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "BARE", "EXTRA=1"], Labels: { a: "base", b: "ours", c: "ours" }, ExposedPorts: { "6379/tcp": {}, "8080/tcp": {} }, WorkingDir: "/" },
    "Env replaced in place by name and appended; labels and ports merged; scalars replaced",
  );
  const ownEntrypoint = mergeContainerConfig(structuredClone(base) as never, { Entrypoint: ["/bin/sh"] });
  t.same(ownEntrypoint.Entrypoint, ["/bin/sh"], "our Entrypoint replaces the base's");
  t.equal(ownEntrypoint.Cmd, undefined, "and drops the base's Cmd, written for the base's entrypoint");
  t.same(mergeContainerConfig(structuredClone(base) as never, { Entrypoint: ["/bin/sh"], Cmd: ["-c", "x"] }).Cmd, ["-c", "x"], "unless we set Cmd too");
  t.same(mergeContainerConfig(structuredClone(base) as never, { Cmd: ["sh"] }).Entrypoint, base.Entrypoint, "Cmd alone keeps the base's Entrypoint");
  t.same(base.Env, ["PATH=/usr/bin:/bin", "LANG=C", "BARE"], "the base's object is not modified");
});

t.test("readBaseImage takes an OCI layout's layers as they are", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const gz = await buildLayer([{ type: "file", path: "etc/a", content: "a" }]);
  const raw = await buildLayer([{ type: "file", path: "etc/b", content: "b" }]);
  const file = path.join(tmp.path, "base.tar");
  const w = await writeImageArchive(
    {
      layers: [{ tar: gz, annotations: { "org.example": "kept" } }, { tar: raw, compress: false }],
      config: { Cmd: ["/bin/sh"] },
      history: [{ created_by: "one" }, { created_by: "two" }],
      ref: "example.com/base:1",
    },
    file,
  );
  const base = await readBaseImage(file);
  t.same(base.layers.map((l) => [l.mediaType, l.digest, l.diffId]), [
    ["application/vnd.oci.image.layer.v1.tar+gzip", w.layerDigests[0], sha256Digest(gz)],
    ["application/vnd.oci.image.layer.v1.tar", w.layerDigests[1], sha256Digest(raw)],
  ]);
  t.same(base.layers[0]!.annotations, { "org.example": "kept" }, "layer annotations are kept (a nix base keeps its store paths)");
  t.same(base.config, { Cmd: ["/bin/sh"] });
  t.same(base.history, [{ created_by: "one" }, { created_by: "two" }]);
  t.equal(base.architecture, goArch());

  const other = goArch() === "arm64" ? "amd64" : "arm64";
  await t.rejects(readBaseImage(file, other), new RegExp(`base image .*base\\.tar: .*linux/${other}`), "another platform is refused, naming both");
  await t.rejects(readBaseImage(path.join(tmp.path, "missing.tar")), /base image .*missing\.tar: .*ENOENT/, "a missing file names the file");
});

t.test("readBaseImage refuses layers it cannot copy", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const file = path.join(tmp.path, "foreign.tar");
  const blob = Buffer.from("not really a layer");
  await writeImageArchive(
    {
      layers: [{ blob, mediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", diffId: sha256Digest("x") }],
      config: {},
    },
    file,
  );
  await t.rejects(readBaseImage(file), /layer 0 has media type application\/vnd\.docker\.image\.rootfs\.foreign\.diff\.tar\.gzip/);
});
