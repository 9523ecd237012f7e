/**
 * Image archives: deterministic OCI layout + docker manifest.json writer,
 * reader for both OCI layouts and docker-archives, digest verification, and
 * (when skopeo is installed) that a third-party tool reads what we write.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import zlib from "node:zlib";
import t from "tap";
import { openImageArchive, readImageArchive } from "../../src/image/archive.js";
import { buildImage, writeImageArchive, type ImageInput, type TarLayerInput } from "../../src/image/archive-writer.js";
import { detectCompression, digestStream, gzip } from "../../src/image/compression.js";
import { buildLayer } from "../../src/image/layer.js";
import { packTar, type TarItem } from "../../src/image/tar-writer.js";
import { bufferSource, fileRange, indexTar, readSource } from "../../src/image/tar-index.js";
import {
  ANNOTATION_CONTAINERD_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  goArch,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_LAYER,
  MEDIA_TYPE_OCI_LAYER_GZIP,
  MEDIA_TYPE_OCI_LAYER_ZSTD,
  MEDIA_TYPE_OCI_MANIFEST,
} from "../../src/image/oci.js";
import { sha256Digest } from "../../src/digest.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { listTar } from "../lib/util.js";

/** Rewrites a tar, letting `edit` change any member's content. */
async function rewriteTar(buf: Buffer, edit: (name: string, body: Buffer) => Buffer): Promise<Buffer> {
  const items: TarItem[] = [];
  for (const { header, body } of await listTar(buf)) {
    const b = header.type === "file" ? edit(header.name, body) : undefined;
    items.push({ header: { ...header, ...(b ? { size: b.length } : {}) }, ...(b ? { body: b } : {}) });
  }
  return packTar(items);
}

const fileItem = (name: string, body: Buffer | string): TarItem => {
  const b = typeof body === "string" ? Buffer.from(body) : body;
  return { header: { name, type: "file", mode: 0o644, size: b.length, mtime: new Date(0) }, body: b };
};

const hex = (digest: string) => digest.slice("sha256:".length);

async function sampleImage(ref = "docker.io/library/hello:1.0"): Promise<Omit<ImageInput, "layers"> & { layers: TarLayerInput[] }> {
  const base = await buildLayer([
    { type: "file", path: "bin/hello", content: "#!/bin/sh\necho hello\n", mode: 0o755 },
    { type: "dir", path: "tmp", mode: 0o1777 },
  ]);
  const top = await buildLayer([
    { type: "file", path: "etc/motd", content: "hi\n" },
    { type: "whiteout", path: "tmp" },
  ]);
  return {
    ref,
    layers: [
      { tar: base, annotations: { "containerd.io/snapshot/nix-store-path": "/nix/store/aaaa-hello", "b.second": "2" } },
      { tar: top, compress: false },
    ],
    config: {
      Cmd: ["/bin/hello"],
      Env: ["PATH=/bin", "LANG=C.UTF-8"],
      WorkingDir: "/",
      User: "1000:1000",
      Labels: { "z.last": "1", "a.first": "2" },
      ExposedPorts: { "8080/tcp": {} },
      StopSignal: "SIGTERM",
    },
    history: [{ created_by: "nix-snapshotter test" }, { created_by: "nix-snapshotter test" }],
  };
}

t.test("write then read gives the image back", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const file = path.join(tmp.path, "hello.tar");
  const input = await sampleImage();
  const w = await writeImageArchive(input, file);

  t.same(w.diffIds, input.layers.map((l) => sha256Digest(l.tar)), "diff_ids are the uncompressed tars' digests");
  t.equal(w.layerDigests[1], w.diffIds[1], "uncompressed layer: blob digest is the diff_id");
  t.not(w.layerDigests[0], w.diffIds[0], "compressed layer: blob digest differs");
  t.equal(w.ref, "docker.io/library/hello:1.0");

  const r = await readImageArchive(file);
  t.equal(r.format, "oci-layout");
  t.equal(r.ref, "docker.io/library/hello:1.0");
  t.equal(r.manifestDigest, w.manifestDigest);
  t.equal(r.manifest.mediaType, MEDIA_TYPE_OCI_MANIFEST);
  t.same(r.manifest.config, { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: w.configDigest, size: r.blobs.get(w.configDigest)!.length });
  t.same(
    r.manifest.layers.map((l) => [l.mediaType, l.digest, l.annotations ?? null]),
    [
      [MEDIA_TYPE_OCI_LAYER_GZIP, w.layerDigests[0], { "b.second": "2", "containerd.io/snapshot/nix-store-path": "/nix/store/aaaa-hello" }],
      [MEDIA_TYPE_OCI_LAYER, w.layerDigests[1], null],
    ],
    "layer descriptors carry the annotations",
  );
  t.same(Object.keys(r.manifest.layers[0]!.annotations!), ["b.second", "containerd.io/snapshot/nix-store-path"], "annotation keys sorted");
  t.equal(r.config.architecture, goArch());
  t.equal(r.config.os, "linux");
  t.equal(r.config.created, "1970-01-01T00:00:01Z");
  t.same(r.config.rootfs, { type: "layers", diff_ids: w.diffIds });
  t.same(r.config.config?.Cmd, ["/bin/hello"]);
  t.same(r.config.config?.Env, ["PATH=/bin", "LANG=C.UTF-8"], "Env order kept");
  t.same(Object.keys(r.config.config!.Labels!), ["a.first", "z.last"], "label keys sorted");
  t.same(r.config.history, input.history);
  t.ok((await gzip(input.layers[0]!.tar)).equals(r.blobs.get(w.layerDigests[0]!)!), "layer 0 stored gzipped");
  t.ok(input.layers[1]!.tar.equals(r.blobs.get(w.layerDigests[1]!)!), "layer 1 stored as is");

  t.equal(r.index.mediaType, MEDIA_TYPE_OCI_INDEX);
  t.equal(r.index.manifests.length, 1);
  t.same(r.index.manifests[0]!.annotations, {
    [ANNOTATION_CONTAINERD_IMAGE_NAME]: "docker.io/library/hello:1.0",
    [ANNOTATION_REF_NAME]: "1.0",
  });
  t.same(r.index.manifests[0]!.platform, { architecture: goArch(), os: "linux" });
});

t.test("archives are deterministic, sorted and docker-loadable in shape", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const a = path.join(tmp.path, "a.tar");
  const b = path.join(tmp.path, "b.tar");
  const wa = await writeImageArchive(await sampleImage(), a);
  const wb = await writeImageArchive(await sampleImage(), b);
  t.equal(wa.manifestDigest, wb.manifestDigest, "same manifest digest");
  const bytes = readFileSync(a);
  t.ok(bytes.equals(readFileSync(b)), "byte-identical archive files");

  // Labels given in a different insertion order still give the same config.
  const reordered = await sampleImage();
  reordered.config.Labels = { "a.first": "2", "z.last": "1" };
  t.equal((await buildImage(reordered)).configDigest, wa.configDigest, "map key order does not matter");

  const listed = await listTar(bytes);
  const blobNames = [wa.configDigest, wa.manifestDigest, ...wa.layerDigests].map((d) => `blobs/sha256/${hex(d)}`).sort();
  t.same(
    listed.map((e) => e.header.name),
    ["blobs/", "blobs/sha256/", ...blobNames, "index.json", "manifest.json", "oci-layout"],
  );
  for (const e of listed) {
    t.equal(e.header.mtime.getTime(), 0, `${e.header.name}: mtime 0`);
    t.same([e.header.uid, e.header.gid, e.header.uname, e.header.gname], [0, 0, "", ""], `${e.header.name}: owned by root, unnamed`);
  }
  const member = (n: string) => listed.find((e) => e.header.name === n)!.body;
  t.same(JSON.parse(member("oci-layout").toString()), { imageLayoutVersion: "1.0.0" });
  t.same(JSON.parse(member("manifest.json").toString()), [
    {
      Config: `blobs/sha256/${hex(wa.configDigest)}`,
      RepoTags: ["docker.io/library/hello:1.0"],
      Layers: wa.layerDigests.map((d) => `blobs/sha256/${hex(d)}`),
    },
  ]);
  t.equal(sha256Digest(member(`blobs/sha256/${hex(wa.manifestDigest)}`)), wa.manifestDigest);
  t.equal(member(`blobs/sha256/${hex(wa.manifestDigest)}`).length, wa.manifestSize);
});

t.test("references: default tag, nix-style names, unnamed images", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const img = await sampleImage();

  const untagged = await buildImage({ ...img, ref: "docker.io/library/hello" });
  t.equal(untagged.ref, "docker.io/library/hello:latest");
  t.equal(untagged.index.manifests[0]!.annotations?.[ANNOTATION_REF_NAME], "latest");

  const nixRef = "nix:0/nix/store/1234abcd-hello.tar:latest";
  const nixFile = path.join(tmp.path, "nix.tar");
  await writeImageArchive({ ...img, ref: nixRef }, nixFile);
  const nix = await readImageArchive(nixFile);
  t.same(nix.index.manifests[0]!.annotations, { [ANNOTATION_CONTAINERD_IMAGE_NAME]: nixRef, [ANNOTATION_REF_NAME]: "latest" });
  t.equal(nix.ref, nixRef);

  const { ref: _ignored, ...noRef } = img;
  const anonFile = path.join(tmp.path, "anon.tar");
  await writeImageArchive(noRef, anonFile);
  const anon = await readImageArchive(anonFile);
  t.equal(anon.ref, undefined);
  t.equal(anon.index.manifests[0]!.annotations, undefined, "no name annotations");
  const docker = JSON.parse((await listTar(readFileSync(anonFile))).find((e) => e.header.name === "manifest.json")!.body.toString());
  t.same(docker[0].RepoTags, []);
});

t.test("extraConfig adds fields but cannot override ours; compressed input layers are refused", async (t) => {
  const img = await sampleImage();
  const built = await buildImage({ ...img, extraConfig: { "os.features": ["x"], variant2: "v" }, architecture: "arm64", variant: "v8" });
  t.same(built.config["os.features"], ["x"]);
  t.equal(built.config.architecture, "arm64");
  t.same(built.index.manifests[0]!.platform, { architecture: "arm64", os: "linux", variant: "v8" });
  await t.rejects(buildImage({ ...img, extraConfig: { rootfs: {} } }), /extraConfig\.rootfs/);
  await t.rejects(buildImage({ ...img, layers: [{ tar: await gzip(img.layers[0]!.tar) }] }), /layer 0: .*uncompressed/);
});

t.test("a failed write leaves neither a partial archive nor a temp file", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  // A non-empty directory in the way makes the final rename fail.
  const target = path.join(tmp.path, "out.tar");
  mkdirSync(path.join(target, "occupied"), { recursive: true });
  await t.rejects(writeImageArchive(await sampleImage(), target));
  t.same(readdirSync(tmp.path), ["out.tar"], "only the pre-existing directory remains");
  await t.rejects(writeImageArchive(await sampleImage(), path.join(tmp.path, "no-such-dir", "x.tar")), { code: "ENOENT" });
});

t.test("a tampered blob is detected, naming it", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const good = path.join(tmp.path, "good.tar");
  const w = await writeImageArchive(await sampleImage(), good);
  const victim = `blobs/sha256/${hex(w.layerDigests[1]!)}`;
  const bad = path.join(tmp.path, "bad.tar");
  writeFileSync(
    bad,
    await rewriteTar(readFileSync(good), (name, body) => {
      if (name !== victim) return body;
      const b = Buffer.from(body);
      b[0] = b[0]! ^ 0xff;
      return b;
    }),
  );
  await t.rejects(readImageArchive(bad), new RegExp(`blob ${victim} in .*bad\\.tar has digest sha256:[0-9a-f]{64}, expected ${w.layerDigests[1]}`));

  // A blob the manifest names but the archive lacks.
  const missing = path.join(tmp.path, "missing.tar");
  const items: TarItem[] = (await listTar(readFileSync(good)))
    .filter((e) => e.header.name !== `blobs/sha256/${hex(w.configDigest)}`)
    .map((e) => ({ header: e.header, ...(e.header.type === "file" ? { body: e.body } : {}) }));
  writeFileSync(missing, await packTar(items));
  await t.rejects(readImageArchive(missing), new RegExp(`config blob ${w.configDigest} is missing`));
});

t.test("a gzipped archive and a non-archive", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const plain = path.join(tmp.path, "img.tar");
  const w = await writeImageArchive(await sampleImage(), plain);
  const gz = path.join(tmp.path, "img.tar.gz");
  writeFileSync(gz, await promisify(zlib.gzip)(readFileSync(plain)));
  t.equal((await readImageArchive(gz)).manifestDigest, w.manifestDigest, "docker save | gzip style archives read");

  const other = path.join(tmp.path, "other.tar");
  writeFileSync(other, await packTar([fileItem("hello.txt", "hi")]));
  await t.rejects(readImageArchive(other), /not an image archive/);
  const garbage = path.join(tmp.path, "garbage.tar");
  writeFileSync(garbage, Buffer.alloc(2048, 7));
  await t.rejects(readImageArchive(garbage), /reading image archive .*garbage\.tar/);
});

/**
 * A docker-archive the way `docker save` (before Docker 25) writes it:
 * "<id>/layer.tar" members, "<config-hex>.json", a symlinked duplicate layer,
 * and a gzip-compressed layer (docker load accepts those too).
 */
async function dockerArchive(opts: { breakDiffId?: boolean; breakConfigName?: boolean } = {}) {
  const l1 = await buildLayer([{ type: "file", path: "a", content: "layer one" }]);
  const l2 = await buildLayer([{ type: "file", path: "b", content: "layer two" }]);
  const l2gz = await gzip(l2);
  const config = {
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/a"] },
    rootfs: { type: "layers", diff_ids: [sha256Digest(l1), sha256Digest(l2), opts.breakDiffId ? sha256Digest("x") : sha256Digest(l1)] },
  };
  const configBytes = Buffer.from(JSON.stringify(config));
  const configName = `${hex(sha256Digest(opts.breakConfigName ? "other" : configBytes))}.json`;
  const id1 = "1".repeat(64);
  const id2 = "2".repeat(64);
  const id3 = "3".repeat(64);
  const manifest = [{ Config: configName, RepoTags: ["example.com/app:v2"], Layers: [`${id1}/layer.tar`, `${id2}/layer.tar`, `${id3}/layer.tar`] }];
  const dir = (name: string): TarItem => ({ header: { name, type: "directory", mode: 0o755, mtime: new Date(0) } });
  const tar = await packTar([
    dir(`${id1}/`),
    fileItem(`${id1}/layer.tar`, l1),
    dir(`${id2}/`),
    fileItem(`${id2}/layer.tar`, l2gz),
    dir(`${id3}/`),
    { header: { name: `${id3}/layer.tar`, type: "symlink", linkname: `../${id1}/layer.tar`, mtime: new Date(0) } },
    fileItem(configName, configBytes),
    fileItem("manifest.json", JSON.stringify(manifest)),
    fileItem("repositories", JSON.stringify({ "example.com/app": { v2: id3 } })),
  ]);
  return { tar, l1, l2, l2gz, configBytes };
}

t.test("a docker-archive is read into a synthesized OCI manifest", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const d = await dockerArchive();
  const file = path.join(tmp.path, "docker.tar");
  writeFileSync(file, d.tar);
  const r = await readImageArchive(file);
  t.equal(r.format, "docker-archive");
  t.equal(r.ref, "example.com/app:v2");
  t.same(r.manifest.config, { mediaType: MEDIA_TYPE_OCI_CONFIG, digest: sha256Digest(d.configBytes), size: d.configBytes.length });
  t.same(
    r.manifest.layers,
    [
      { mediaType: MEDIA_TYPE_OCI_LAYER, digest: sha256Digest(d.l1), size: d.l1.length },
      { mediaType: MEDIA_TYPE_OCI_LAYER_GZIP, digest: sha256Digest(d.l2gz), size: d.l2gz.length },
      { mediaType: MEDIA_TYPE_OCI_LAYER, digest: sha256Digest(d.l1), size: d.l1.length },
    ],
    "blobs as they are, media type by magic bytes, symlinked duplicate resolved",
  );
  t.equal(sha256Digest(r.blobs.get(r.manifestDigest)!), r.manifestDigest, "synthesized manifest is among the blobs");
  t.same(JSON.parse(r.blobs.get(r.manifestDigest)!.toString()), r.manifest);
  t.ok(r.blobs.get(sha256Digest(d.l2gz))!.equals(d.l2gz));
  t.same(r.index.manifests[0]!.annotations, { [ANNOTATION_CONTAINERD_IMAGE_NAME]: "example.com/app:v2", [ANNOTATION_REF_NAME]: "v2" });
  t.same(r.index.manifests[0]!.platform, { architecture: "amd64", os: "linux" });
  t.equal(r.config.config?.Cmd?.[0], "/a");

  await t.rejects(readImageArchive(file, { ref: "example.com/app:v3" }), /no image tagged "example.com\/app:v3"/);
  t.equal((await readImageArchive(file, { ref: "example.com/app:v2" })).ref, "example.com/app:v2");
});

t.test("docker-archive integrity: diff_ids and digest-named configs are checked", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const badDiff = path.join(tmp.path, "bad-diff.tar");
  writeFileSync(badDiff, (await dockerArchive({ breakDiffId: true })).tar);
  await t.rejects(readImageArchive(badDiff), /layer "3{64}\/layer\.tar" has diff_id sha256:[0-9a-f]{64}, config says/);
  const badConfig = path.join(tmp.path, "bad-config.tar");
  writeFileSync(badConfig, (await dockerArchive({ breakConfigName: true })).tar);
  await t.rejects(readImageArchive(badConfig), /blob [0-9a-f]{64}\.json in .*bad-config\.tar has digest/);
});

t.test("skopeo reads what we write", async (t) => {
  if (!requireOrSkip(t, { commands: ["skopeo"] })) return;
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const file = path.join(tmp.path, "img.tar");
  const w = await writeImageArchive(await sampleImage(), file);
  const manifestBlob = (await readImageArchive(file)).blobs.get(w.manifestDigest)!;
  const skopeo = (...args: string[]) => execFileSync("skopeo", args, { encoding: "utf8" });

  t.equal(skopeo("inspect", "--raw", `oci-archive:${file}`), manifestBlob.toString(), "oci-archive: our manifest, byte for byte");
  t.equal(skopeo("inspect", "--raw", `oci-archive:${file}:1.0`), manifestBlob.toString(), "found by ref.name");

  const viaDocker = JSON.parse(skopeo("inspect", `docker-archive:${file}`));
  t.same(viaDocker.Layers, w.diffIds, "docker-archive: our manifest.json's layers");
  t.same(viaDocker.Env, ["PATH=/bin", "LANG=C.UTF-8"]);
  t.equal(viaDocker.Architecture, goArch());

  // skopeo copy re-reads every blob and checks digests; then read its output.
  const out = path.join(tmp.path, "resaved.tar");
  skopeo("copy", "--quiet", `oci-archive:${file}`, `docker-archive:${out}:example.com/resaved:x`);
  const r = await readImageArchive(out);
  t.equal(r.format, "docker-archive");
  t.equal(r.ref, "example.com/resaved:x");
  t.same(r.config.rootfs.diff_ids, w.diffIds, "a real docker-archive reads back with the same diff_ids");
  t.same(
    r.manifest.layers.map((l) => l.mediaType),
    [MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER],
    "skopeo writes docker-archive layers uncompressed",
  );

  // An OCI archive written by skopeo (ref.name only, no containerd name).
  const skopeoOci = path.join(tmp.path, "skopeo-oci.tar");
  skopeo("copy", "--quiet", `docker-archive:${file}`, `oci-archive:${skopeoOci}:from-skopeo`);
  const s = await readImageArchive(skopeoOci);
  t.equal(s.format, "oci-layout");
  t.equal(s.ref, "from-skopeo", "ref.name when there is no io.containerd.image.name");
  t.same(s.config.rootfs.diff_ids, w.diffIds);
  t.equal(s.manifest.layers.length, 2);

  const ociDir = path.join(tmp.path, "oci-dir");
  // --preserve-digests: otherwise skopeo gzips the uncompressed layer.
  skopeo("copy", "--quiet", "--preserve-digests", `oci-archive:${file}`, `oci:${ociDir}:copied`);
  const index = JSON.parse(readFileSync(path.join(ociDir, "index.json"), "utf8"));
  t.equal(index.manifests[0].digest, w.manifestDigest, "copied unchanged into an OCI dir");
});

t.test("the tar index finds members by offset: long names, links, empty files", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const long = `${"d".repeat(120)}/${"f".repeat(90)}`;
  const file = path.join(tmp.path, "x.tar");
  writeFileSync(
    file,
    await packTar([
      fileItem(long, "long name"),
      fileItem("empty", ""),
      fileItem("a/b", "bee"),
      { header: { name: "a/link", type: "symlink", linkname: "b", mtime: new Date(0) } },
      { header: { name: "hard", type: "link", linkname: "a/b", mtime: new Date(0) } },
    ]),
  );
  const index = await indexTar(file);
  const read = async (name: string) => (await readSource(fileRange(file, index.get(name)!.offset, index.get(name)!.size), 1024, name)).toString();
  t.equal(await read(long), "long name", "a PAX long name maps to its bytes");
  t.equal(await read("empty"), "", "an empty file");
  t.equal(await read("a/b"), "bee");
  t.same([index.get("a/link")?.type, index.get("a/link")?.linkname], ["symlink", "b"]);
  t.same([index.get("hard")?.type, index.get("hard")?.linkname], ["link", "a/b"]);
  t.equal((await readSource(fileRange(file, index.get("a/b")!.offset, 3), 3, "x")).toString(), "bee");
  const chunks: Buffer[] = [];
  for await (const c of fileRange(file, index.get(long)!.offset, 9).open(5, 9)) chunks.push(c as Buffer);
  t.equal(Buffer.concat(chunks).toString(), "name", "a sub-range");

  const truncated = path.join(tmp.path, "truncated.tar");
  writeFileSync(truncated, readFileSync(file).subarray(0, index.get("a/b")!.offset + 1));
  await t.rejects(indexTar(truncated), /past the end of the file/, "a member running past the end");
});

t.test("a prebuilt layer streamed from a file must have its digest", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const layer = await buildLayer([{ type: "file", path: "x", content: "x" }]);
  const layerFile = path.join(tmp.path, "layer.tar");
  writeFileSync(layerFile, layer);
  const src = fileRange(layerFile, 0, layer.length);
  const out = path.join(tmp.path, "out.tar");
  const ok = await writeImageArchive({ layers: [{ blob: src, digest: sha256Digest(layer), diffId: sha256Digest(layer), mediaType: MEDIA_TYPE_OCI_LAYER }], config: {} }, out);
  t.same(ok.layerDigests, [sha256Digest(layer)], "streamed in under its digest");
  t.ok((await readImageArchive(out)).blobs.get(sha256Digest(layer))!.equals(layer), "byte for byte");
  const bad = path.join(tmp.path, "bad.tar");
  await t.rejects(
    writeImageArchive({ layers: [{ blob: src, digest: sha256Digest("other"), diffId: sha256Digest(layer), mediaType: MEDIA_TYPE_OCI_LAYER }], config: {} }, bad),
    /its bytes have digest sha256:[0-9a-f]{64}, expected/,
  );
  t.notOk(readdirSync(tmp.path).some((n) => n.startsWith("bad") || n.startsWith(".bad")), "and no archive, not even a temporary one, is left");
});

t.test("zstd layers are checked against their diff_ids like gzip ones", async (t) => {
  if (!requireOrSkip(t, { commands: ["zstd"] })) return;
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const tar = await buildLayer([{ type: "file", path: "z", content: "zstd ".repeat(1000) }]);
  const zst = execFileSync("zstd", ["-q", "-c"], { input: tar });
  t.equal(detectCompression(zst), "zstd");
  const d = await digestStream(bufferSource(zst).open(), { uncompressed: true });
  t.same(d, { digest: sha256Digest(zst), size: zst.length, diffId: sha256Digest(tar), compression: "zstd" }, "decompressed as a stream: digest and diff_id");

  const archive = async (diffId: string) => {
    const configBytes = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [diffId] } }));
    const file = path.join(tmp.path, `docker-${diffId.slice(7, 15)}.tar`);
    writeFileSync(
      file,
      await packTar([
        fileItem("l/layer.tar", zst),
        fileItem("config.json", configBytes),
        fileItem("manifest.json", JSON.stringify([{ Config: "config.json", RepoTags: ["example.com/z:1"], Layers: ["l/layer.tar"] }])),
      ]),
    );
    return file;
  };
  const good = await readImageArchive(await archive(sha256Digest(tar)));
  t.same(good.manifest.layers[0], { mediaType: MEDIA_TYPE_OCI_LAYER_ZSTD, digest: sha256Digest(zst), size: zst.length }, "a docker-archive's zstd layer is typed and kept");
  await t.rejects(readImageArchive(await archive(sha256Digest("wrong"))), /layer "l\/layer\.tar" has diff_id sha256:[0-9a-f]{64}, config says sha256:/, "a wrong diff_id is refused");

  // An OCI layout base (--from-image): its zstd layer is checked too.
  const oci = path.join(tmp.path, "oci.tar");
  await writeImageArchive({ layers: [{ blob: zst, mediaType: MEDIA_TYPE_OCI_LAYER_ZSTD, diffId: sha256Digest("wrong") }], config: {} }, oci);
  await t.rejects(openImageArchive(oci, { diffIds: true }), /layer 0 \(sha256:[0-9a-f]{64}\) has diff_id sha256:[0-9a-f]{64}, config says/, "an OCI layout's zstd layer with a wrong diff_id, when asked");
  const fine = path.join(tmp.path, "oci-fine.tar");
  await writeImageArchive({ layers: [{ blob: zst, mediaType: MEDIA_TYPE_OCI_LAYER_ZSTD, diffId: sha256Digest(tar) }], config: {} }, fine);
  const opened = await openImageArchive(fine, { diffIds: true });
  t.equal(opened.manifest.layers[0]!.mediaType, MEDIA_TYPE_OCI_LAYER_ZSTD, "and a right one passes");
  await opened.close();
});
