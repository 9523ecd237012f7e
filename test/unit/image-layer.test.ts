/**
 * Layer tarballs: deterministic bytes, implied parent directories, whiteout
 * naming per image-spec layer.md, path validation, deterministic gzip, and
 * layers built from real host files.
 */
import { execFileSync } from "node:child_process";
import { copyFile, chmod, link, mkdir, symlink, writeFile } from "node:fs/promises";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { detectCompression, gunzip, gzip } from "../../src/image/compression.js";
import { buildLayer, normaliseLayerPath, type LayerEntry } from "../../src/image/layer.js";
import { streamTar } from "../../src/image/tar-writer.js";
import { fileEntriesFromDir } from "../lib/host-tree.js";
import { tempDir } from "../lib/tmp.js";
import { listTar } from "../lib/util.js";

const names = async (buf: Buffer) => (await listTar(buf)).map((e) => e.header.name);

const sample: LayerEntry[] = [
  { type: "file", path: "/etc/hosts", content: "127.0.0.1 localhost\n" },
  { type: "symlink", path: "bin/sh", target: "/nix/store/0000-busybox/bin/busybox" },
  { type: "dir", path: "tmp", mode: 0o1777 },
  { type: "file", path: "usr/bin/tool", content: Buffer.from([0, 1, 2, 3]), mode: 0o755, uid: 1000, gid: 100 },
  { type: "hardlink", path: "usr/bin/tool2", target: "usr/bin/tool" },
  { type: "whiteout", path: "var/cache/old" },
  { type: "opaque", path: "opt" },
];

t.test("same entries give identical bytes, whatever their order", async (t) => {
  const a = await buildLayer(sample);
  const b = await buildLayer(sample);
  const c = await buildLayer([...sample].reverse());
  t.ok(a.equals(b), "built twice");
  t.ok(a.equals(c), "entries given in another order");
  t.equal(a.length % 512, 0, "whole tar blocks");
});

t.test("entries are sorted bytewise with parents added before children", async (t) => {
  const listed = await listTar(await buildLayer(sample));
  t.same(
    listed.map((e) => e.header.name),
    [
      "bin/",
      "bin/sh",
      "etc/",
      "etc/hosts",
      "opt/",
      "opt/.wh..wh..opq",
      "tmp/",
      "usr/",
      "usr/bin/",
      "usr/bin/tool",
      "usr/bin/tool2",
      "var/",
      "var/cache/",
      "var/cache/.wh.old",
    ],
  );
  for (const e of listed) {
    t.equal(e.header.mtime.getTime(), 0, `${e.header.name}: mtime is the epoch`);
    t.equal(e.header.uname, "", `${e.header.name}: no uname`);
    t.equal(e.header.gname, "", `${e.header.name}: no gname`);
  }
  const byName = new Map(listed.map((e) => [e.header.name, e]));
  for (const implied of ["bin/", "etc/", "usr/", "usr/bin/", "var/", "var/cache/", "opt/"]) {
    const h = byName.get(implied)!.header;
    t.equal(h.type, "directory", `${implied} is a directory`);
    t.equal(h.mode, 0o755, `${implied} mode 0755`);
    t.equal(h.uid, 0, `${implied} uid 0`);
    t.equal(h.gid, 0, `${implied} gid 0`);
  }
  t.equal(byName.get("tmp/")!.header.mode, 0o1777, "explicit dir keeps its mode (sticky bit too)");
  t.equal(byName.get("etc/hosts")!.header.mode, 0o644, "default file mode 0644");
  t.equal(byName.get("etc/hosts")!.body.toString(), "127.0.0.1 localhost\n", "string content as UTF-8");
  const tool = byName.get("usr/bin/tool")!;
  t.same([tool.header.mode, tool.header.uid, tool.header.gid], [0o755, 1000, 100], "mode/uid/gid kept");
  t.same(tool.body, Buffer.from([0, 1, 2, 3]), "binary content kept");
  const sh = byName.get("bin/sh")!.header;
  t.same([sh.type, sh.linkname], ["symlink", "/nix/store/0000-busybox/bin/busybox"], "symlink target verbatim");
  const tool2 = byName.get("usr/bin/tool2")!.header;
  t.same([tool2.type, tool2.linkname, tool2.mode], ["link", "usr/bin/tool", 0o755], "hardlink names the archive path");
});

t.test("whiteouts and opaque directories are named per the OCI layer spec", async (t) => {
  const listed = await listTar(
    await buildLayer([
      { type: "whiteout", path: "toplevel" },
      { type: "whiteout", path: "/a/b/c" },
      { type: "opaque", path: "a/d/" },
    ]),
  );
  t.same(
    listed.map((e) => e.header.name),
    [".wh.toplevel", "a/", "a/b/", "a/b/.wh.c", "a/d/", "a/d/.wh..wh..opq"],
  );
  for (const e of listed.filter((e) => e.header.name.includes(".wh."))) {
    t.equal(e.header.type, "file", `${e.header.name} is a regular file`);
    t.equal(e.header.size, 0, `${e.header.name} is empty`);
  }
});

t.test("mode 0 is kept, not replaced by a default", async (t) => {
  const [e] = await listTar(await buildLayer([{ type: "file", path: "secret", content: "x", mode: 0 }]));
  t.equal(e!.header.mode, 0);
});

t.test("long and non-ASCII paths survive", async (t) => {
  const long = `${"d".repeat(120)}/${"f".repeat(110)}`;
  const unicode = "données/été.txt";
  const listed = await listTar(
    await buildLayer([
      { type: "file", path: long, content: "long" },
      { type: "file", path: unicode, content: "utf8" },
      { type: "symlink", path: "l", target: "/" + "t".repeat(150) },
    ]),
  );
  const byName = new Map(listed.map((e) => [e.header.name, e]));
  t.equal(byName.get(long)?.body.toString(), "long");
  t.equal(byName.get(unicode)?.body.toString(), "utf8");
  t.equal(byName.get("l")?.header.linkname, "/" + "t".repeat(150));
});

t.test("paths are normalised", async (t) => {
  t.equal(normaliseLayerPath("/a//b/./c/"), "a/b/c");
  t.equal(normaliseLayerPath("./x"), "x");
  t.same(await names(await buildLayer([{ type: "file", path: "//a/./b", content: "" }])), ["a/", "a/b"]);
});

t.test("invalid paths and entries are rejected, naming the path", async (t) => {
  const bad: [LayerEntry[], RegExp][] = [
    [[{ type: "file", path: "../etc/passwd", content: "" }], /"\.\.\/etc\/passwd".*\.\./],
    [[{ type: "file", path: "a/../b", content: "" }], /"a\/\.\.\/b"/],
    [[{ type: "dir", path: "/" }], /"\/".*root/],
    [[{ type: "dir", path: "" }], /""/],
    [[{ type: "dir", path: "." }], /"\."/],
    [[{ type: "file", path: "a\0b", content: "" }], /NUL/],
    [[{ type: "whiteout", path: ".." }], /"\.\."/],
    [[{ type: "hardlink", path: "x", target: "../y" }], /"\.\.\/y"/],
    [
      [
        { type: "file", path: "a/b", content: "1" },
        { type: "file", path: "/a/b/", content: "2" },
      ],
      /duplicate layer path "a\/b"/,
    ],
    [
      [
        { type: "whiteout", path: "a/b" },
        { type: "file", path: "a/.wh.b", content: "" },
      ],
      /"a\/\.wh\.b".*reserved/,
    ],
    [
      [
        { type: "file", path: "a", content: "" },
        { type: "file", path: "a/b", content: "" },
      ],
      /"a\/b" is below "a", which is a file/,
    ],
    [[{ type: "file", path: "big", content: "", uid: 0o1000000 }], /uid 262144 .*"big"/],
    [[{ type: "file", path: "neg", content: "", gid: -1 }], /gid -1 .*"neg"/],
    [[{ type: "file", path: "m", content: "", mode: 0o10000 }], /mode 4096 .*"m"/],
    [[{ type: "symlink", path: "s", target: "" }], /symlink target "" .*"s"/],
    [[{ type: "hardlink", path: "self", target: "/self" }], /"self" points to itself/],
    [
      [
        { type: "file", path: "b", content: "" },
        { type: "hardlink", path: "a", target: "b" },
      ],
      /hardlink "a" points to "b", which sorts after it/,
    ],
    [
      [
        { type: "dir", path: "d" },
        { type: "hardlink", path: "e", target: "d" },
      ],
      /hardlink "e" points to a directory/,
    ],
  ];
  for (const [entries, re] of bad) {
    await t.rejects(buildLayer(entries), re, JSON.stringify(entries));
  }
});

t.test("a hardlink may point outside the layer (to a lower layer)", async (t) => {
  const listed = await listTar(await buildLayer([{ type: "hardlink", path: "bin/ls", target: "bin/coreutils" }]));
  t.same(
    listed.map((e) => [e.header.name, e.header.type, e.header.linkname ?? null]),
    [
      ["bin/", "directory", null],
      ["bin/ls", "link", "bin/coreutils"],
    ],
  );
});

t.test("an empty layer is a valid, empty tar", async (t) => {
  const empty = await buildLayer([]);
  t.equal(empty.length, 1024, "just the end-of-archive blocks");
  t.same(await names(empty), []);
});

t.test("gzip is deterministic and round-trips", async (t) => {
  const tar = await buildLayer(sample);
  const a = await gzip(tar);
  const b = await gzip(tar);
  t.ok(a.equals(b), "same bytes twice");
  // RFC 1952 header: magic, CM=8, FLG=0 (no name), MTIME=0, XFL, OS=3 (Unix).
  t.same([...a.subarray(0, 4)], [0x1f, 0x8b, 8, 0], "no FNAME flag");
  t.equal(a.readUInt32LE(4), 0, "mtime 0");
  t.equal(a[9], 3, "OS byte 3");
  t.equal(detectCompression(a), "gzip");
  t.equal(detectCompression(tar), "none");
  t.ok((await gunzip(a)).equals(tar), "gunzip gives the tar back");

  const fast = await gzip(tar, { level: 1 });
  t.ok(fast.equals(await gzip(tar, { level: 1 })), "level 1 is deterministic too");
  const stored = await gzip(tar, { level: 0 });
  t.ok(stored.length > tar.length, "level 0 stores");
  t.ok((await gunzip(stored)).equals(tar));
  await t.rejects(gzip(tar, { level: 10 }), /gzip level 10/);
});

t.test("fileEntriesFromDir records a host tree faithfully", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const root = path.join(tmp.path, "root");
  await mkdir(path.join(root, "bin"), { recursive: true });
  await mkdir(path.join(root, "etc", "empty"), { recursive: true });
  await writeFile(path.join(root, "etc", "motd"), "hello\n");
  await chmod(path.join(root, "etc", "motd"), 0o600);
  await chmod(path.join(root, "etc", "empty"), 0o700);
  await symlink("../etc/motd", path.join(root, "bin", "motd-link"));
  await writeFile(path.join(root, "bin", "a"), "same inode");
  await link(path.join(root, "bin", "a"), path.join(root, "bin", "b"));
  const haveBusybox = existsSync("/bin/busybox");
  if (haveBusybox) {
    await copyFile("/bin/busybox", path.join(root, "bin", "busybox"));
    await chmod(path.join(root, "bin", "busybox"), 0o755);
    await symlink("busybox", path.join(root, "bin", "sh"));
  }

  const entries = await fileEntriesFromDir(root);
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  t.same(
    entries.map((e) => e.path),
    ["bin", "bin/a", "bin/b", ...(haveBusybox ? ["bin/busybox"] : []), "bin/motd-link", ...(haveBusybox ? ["bin/sh"] : []), "etc", "etc/empty", "etc/motd"],
    "every path, sorted, root excluded",
  );
  const byPath = new Map(entries.map((e) => [e.path, e]));
  t.same(byPath.get("etc/motd"), { type: "file", path: "etc/motd", content: Buffer.from("hello\n"), mode: 0o600, uid, gid });
  t.same(byPath.get("etc/empty"), { type: "dir", path: "etc/empty", mode: 0o700, uid, gid });
  t.same(byPath.get("bin/motd-link"), { type: "symlink", path: "bin/motd-link", target: "../etc/motd" });
  t.same(byPath.get("bin/b"), { type: "hardlink", path: "bin/b", target: "bin/a" }, "second name of an inode is a hardlink");

  const layer = await buildLayer(entries);
  t.ok(layer.equals(await buildLayer(await fileEntriesFromDir(root))), "deterministic from the same tree");
  const listed = new Map((await listTar(layer)).map((e) => [e.header.name, e]));
  t.equal(listed.get("bin/b")?.header.type, "link");
  if (haveBusybox) {
    t.ok(listed.get("bin/busybox")?.body.equals(readFileSync("/bin/busybox")), "busybox bytes in the layer");
    t.equal(listed.get("bin/busybox")?.header.mode, 0o755);
    t.equal(listed.get("bin/sh")?.header.linkname, "busybox");
  } else {
    console.log("# note: /bin/busybox missing, layer built without it");
  }
});

t.test("fileEntriesFromDir rejects special files", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  execFileSync("mkfifo", [path.join(tmp.path, "fifo")]);
  await t.rejects(fileEntriesFromDir(tmp.path), /unsupported file type at .*fifo/);
});

t.test("streamTar fails cleanly instead of hanging", async (t) => {
  const items = Array.from({ length: 20 }, (_, i) => ({
    header: { name: `f${i}`, type: "file" as const, size: 65536 },
    body: Buffer.alloc(65536),
  }));
  let chunks = 0;
  await t.rejects(
    streamTar(items, async () => {
      if (++chunks === 3) throw new Error("disk full");
    }),
    /disk full/,
    "a failing sink rejects",
  );
  await t.rejects(streamTar([{ header: { name: "x", type: "file", size: 5 } }], () => undefined), /"x": a file needs a body/);
  await t.rejects(
    streamTar([{ header: { name: "d/", type: "directory" }, body: Buffer.from("x") }], () => undefined),
    /"d\/": a directory has no body/,
  );
});
