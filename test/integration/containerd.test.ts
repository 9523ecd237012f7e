/**
 * Under a real containerd, the `nix` proxy snapshotter must give containers
 * exactly the root filesystem containerd's builtin `overlayfs` gives them.
 *
 * One multi-layer image (busybox base; overwrites, whiteouts, an opaque
 * directory, chmod/chown; renames across layers, a changed symlink, type
 * changes) is imported for both snapshotters and run with `ctr run`; a
 * script inside lists every path of the root filesystem with type, mode,
 * owner, size, link count, symlink target and file checksum. The two
 * listings must be identical, and a set of expected facts is checked on its
 * own so that two equally wrong listings cannot pass.
 *
 * Then: our daemon is restarted under a running containerd and a new
 * container must still start; a read-only rootfs must refuse writes; and
 * after removing containers and images, containerd's GC must leave our
 * daemon with no snapshots and an empty snapshots directory.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { buildLayer, type LayerEntry } from "../../src/image/layer.js";
import type { Info } from "../../src/snapshotter/snapshotter.js";
import { killTasks, startContainerd, type Containerd } from "../../devenv/containerd.js";
import { startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { requireOrSkip } from "../lib/require.js";
import { listAll, tail } from "../lib/util.js";
import { tempDir } from "../lib/tmp.js";

const IMAGE = "docker.io/library/nstest:1";
// A namespace and container ids of our own: runc's state (/run/containerd/runc/<ns>/<id>)
// and shim sockets are shared with any other containerd on this host.
const NAMESPACE = `nstest-${randomBytes(3).toString("hex")}`;
const newId = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

// --- the image ----------------------------------------------------------------

const APPLETS = ["sh", "ls", "cat", "find", "stat", "md5sum", "sort", "xargs", "touch", "echo", "test", "["];
const CONFIG_CONF = "# moved from /etc to /etc/app in layer 3\nkey = value\n";
const NOTES = "private notes of uid 1000\n";

function layer1(busybox: Buffer): LayerEntry[] {
  return [
    { type: "dir", path: "bin", mode: 0o755 },
    { type: "file", path: "bin/busybox", content: busybox, mode: 0o755 },
    ...APPLETS.map((a): LayerEntry => ({ type: "symlink", path: `bin/${a}`, target: "busybox" })),
    // Mount points for the runtime's /proc, /dev, /sys, /run (a read-only
    // rootfs cannot have them created).
    ...["proc", "dev", "sys", "run"].map((d): LayerEntry => ({ type: "dir", path: d, mode: 0o755 })),
    { type: "dir", path: "etc", mode: 0o755 },
    { type: "file", path: "etc/passwd", content: "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\nwww:x:33:33::/srv:/bin/sh\n" },
    { type: "file", path: "etc/group", content: "root:x:0:\nstaff:x:50:\nwww:x:33:\nuser:x:1000:\n" },
    { type: "file", path: "etc/motd", content: "welcome v1\n" },
    { type: "file", path: "etc/config.conf", content: CONFIG_CONF, mode: 0o640 },
    { type: "file", path: "etc/empty", content: "" },
    { type: "file", path: "etc/name with space", content: "spaces\n" },
    { type: "symlink", path: "etc/alternatives/editor", target: "/bin/vi-old" },
    { type: "dir", path: "tmp", mode: 0o1777 },
    { type: "dir", path: "root", mode: 0o700 },
    { type: "file", path: "root/.profile", content: "export PS1='# '\n", mode: 0o600 },
    { type: "dir", path: "home/user", mode: 0o750, uid: 1000, gid: 1000 },
    { type: "file", path: "home/user/notes.txt", content: NOTES, mode: 0o640, uid: 1000, gid: 1000 },
    { type: "file", path: "usr/bin/suid-tool", content: "#!/bin/sh\necho suid\n", mode: 0o4755 },
    { type: "file", path: "usr/bin/sgid-tool", content: "#!/bin/sh\necho sgid\n", mode: 0o2755, gid: 50 },
    { type: "file", path: "usr/bin/no-perms", content: "nobody may read this\n", mode: 0 },
    { type: "dir", path: "usr/lib64", mode: 0o755 },
    { type: "file", path: "usr/lib64/libold.so", content: "old lib\n" },
    { type: "file", path: "usr/share/doc/readme", content: "read me\n", mode: 0o444 },
    { type: "hardlink", path: "usr/share/doc/readme-link", target: "usr/share/doc/readme" },
    { type: "file", path: "data/keep", content: "kept\n" },
    { type: "hardlink", path: "data/keep.link", target: "data/keep" },
    { type: "file", path: "delete-me.txt", content: "doomed\n" },
    { type: "file", path: "var/old-dir/x", content: "x\n" },
    { type: "file", path: "var/old-dir/sub/y", content: "y\n" },
    { type: "file", path: "var/lib/state", content: "state\n", mode: 0o644 },
    { type: "file", path: "opt/app/one", content: "one\n" },
    { type: "file", path: "opt/app/two", content: "two\n" },
    { type: "file", path: "opt/app/sub/three", content: "three\n" },
    { type: "file", path: "opt/tool", content: "a file that becomes a directory\n" },
    { type: "dir", path: "srv", mode: 0o755 },
    { type: "file", path: "srv/www/index.html", content: "<p>hi</p>\n" },
  ];
}

function layer2(): LayerEntry[] {
  return [
    { type: "file", path: "etc/motd", content: "welcome v2\n" }, // overwrite
    { type: "file", path: "etc/added.conf", content: "added in layer 2\n" },
    { type: "file", path: "new-dir/nested/file", content: "new\n", mode: 0o600 },
    { type: "whiteout", path: "delete-me.txt" },
    { type: "whiteout", path: "var/old-dir" }, // a whole directory
    { type: "file", path: "var/lib/state", content: "state\n", mode: 0o600, uid: 1000, gid: 1000 }, // chmod + chown
    { type: "dir", path: "srv", mode: 0o711, uid: 33, gid: 33 }, // chmod + chown of a directory only
    { type: "file", path: "data/keep.link", content: "no longer a link\n" }, // breaks the hardlink
    { type: "opaque", path: "opt/app" },
    { type: "file", path: "opt/app/new-only", content: "only this\n" },
  ];
}

function layer3(): LayerEntry[] {
  return [
    // Renames: whiteout the old path, add the new one with the same content.
    { type: "whiteout", path: "etc/config.conf" },
    { type: "file", path: "etc/app/config.conf", content: CONFIG_CONF, mode: 0o640 }, // into a new directory
    // Re-emit the parent as it is: buildLayer would add a missing parent as
    // 0755 root:root, which (correctly) changes it.
    { type: "dir", path: "home/user", mode: 0o750, uid: 1000, gid: 1000 },
    { type: "whiteout", path: "home/user/notes.txt" },
    { type: "file", path: "home/user/notes-old.txt", content: NOTES, mode: 0o640, uid: 1000, gid: 1000 },
    { type: "symlink", path: "etc/alternatives/editor", target: "/bin/vi-new" }, // symlink changed
    { type: "dir", path: "opt/tool", mode: 0o755 }, // file -> directory
    { type: "file", path: "opt/tool/run", content: "#!/bin/sh\n", mode: 0o755 },
    { type: "whiteout", path: "usr/lib64" },
    { type: "symlink", path: "usr/lib64", target: "lib" }, // directory -> symlink
  ];
}

// --- what runs inside the container --------------------------------------------

const PRUNE = "\\( -path /proc -o -path /sys -o -path /dev -o -path /run \\) -prune -o";
/**
 * Every path of the root filesystem (not the runtime's /proc, /dev, /sys,
 * /run mounts): type, octal mode, uid, gid and, for non-directories, size,
 * link count and symlink target (directory sizes and link counts depend on
 * the backing filesystem, not the image). Then checksums of every regular
 * file, and facts the listing cannot show. No times, no inode numbers.
 */
const LIST_SCRIPT = `
busybox find / -xdev ${PRUNE} -print | busybox sort | while IFS= read -r f; do
  if [ -d "$f" ] && [ ! -L "$f" ]; then
    busybox stat -c '%n|%F|%a|%u|%g' "$f"
  else
    busybox stat -c '%n|%F|%a|%u|%g|%s|%h|%N' "$f"
  fi
done
echo '== md5'
busybox find / -xdev ${PRUNE} -type f -print | busybox sort | while IFS= read -r f; do busybox md5sum "$f"; done
echo '== facts'
a=$(busybox stat -c %i /usr/share/doc/readme); b=$(busybox stat -c %i /usr/share/doc/readme-link)
[ "$a" = "$b" ] && echo 'readme hardlink: same inode' || echo 'readme hardlink: different inodes'
a=$(busybox stat -c %i /data/keep); b=$(busybox stat -c %i /data/keep.link)
[ "$a" = "$b" ] && echo 'keep hardlink: same inode' || echo 'keep hardlink: different inodes'
echo "motd: $(busybox cat /etc/motd)"
echo "opt/app: $(busybox ls -A /opt/app | busybox xargs)"
echo "var: $(busybox ls -A /var | busybox xargs)"
echo "root: $(busybox ls -A / | busybox xargs)"
echo '== end'
`;

/** As busybox md5sum prints it (not a security use). */
function md5(data: string | Buffer): string {
  return createHash("md5").update(data).digest("hex");
}

// --- helpers ------------------------------------------------------------------


/** Retries `fn` until it succeeds or `ms` have passed; rethrows the last error. */
async function retryFor<T>(ms: number, fn: () => Promise<T>): Promise<{ value: T; attempts: number }> {
  const deadline = Date.now() + ms;
  for (let attempts = 1; ; attempts++) {
    try {
      return { value: await fn(), attempts };
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(500);
    }
  }
}

// --- the test -------------------------------------------------------------------

if (requireOrSkip(t, { root: true, commands: ["containerd", "ctr", "runc", "busybox"] })) {
  t.test("nix and overlayfs give containers the same root filesystem", async (t) => {
    const tmp = tempDir("nix-snapshotter-ctrd-");
    const snRoot = path.join(tmp.path, "sn/root");
    const snAddress = path.join(tmp.path, "sn/run/nix-snapshotter.sock");
    const snLog = path.join(tmp.path, "sn/daemon.log");
    const ctrdDir = path.join(tmp.path, "containerd");
    const ctrdLog = path.join(ctrdDir, "containerd.log");

    let daemon: DaemonProcess | undefined;
    let ctrd: Containerd | undefined;
    t.teardown(async () => {
      if (!t.passing()) {
        console.error(`# --- nix-snapshotter log ${snLog} (tail) ---\n${tail(snLog)}`);
        console.error(`# --- containerd log ${ctrdLog} (tail) ---\n${tail(ctrdLog, 60, /msg="loading plugin/)}`);
      }
      if (ctrd) {
        await killTasks(ctrd, NAMESPACE);
        await ctrd.stop();
      }
      if (daemon) {
        await daemon.stop("SIGTERM", 10_000);
      }
      tmp.cleanup();
    });

    daemon = await startDaemonProcess({ root: snRoot, address: snAddress, logFile: snLog, logLevel: "debug" });
    ctrd = await startContainerd({ dir: ctrdDir, snapshotterAddress: snAddress, logLevel: "info" });
    const c = ctrd;
    const ctr = (args: string[], timeoutMs = 60_000) => c.ctr(args, { namespace: NAMESPACE, timeoutMs });
    t.comment(`state in ${tmp.path}; logs: ${snLog}, ${ctrdLog}`);

    // Build and import the image for both snapshotters.
    const archive = path.join(tmp.path, "nstest.tar");
    const busybox = readFileSync("/bin/busybox");
    await writeImageArchive(
      {
        layers: [{ tar: await buildLayer(layer1(busybox)) }, { tar: await buildLayer(layer2()) }, { tar: await buildLayer(layer3()) }],
        config: { Env: ["PATH=/bin:/usr/bin"], Cmd: ["/bin/sh"], WorkingDir: "/" },
        ref: IMAGE,
      },
      archive,
    );
    for (const sn of ["nix", "overlayfs"]) {
      await ctr(["images", "import", "--snapshotter", sn, archive]);
    }
    t.match(await ctr(["images", "ls", "-q"]), IMAGE, "image imported");

    const viaContainerd = new SnapshotsClient({ address: c.address, snapshotter: "nix", namespace: NAMESPACE });
    const direct = new SnapshotsClient({ address: snAddress });
    t.teardown(async () => {
      await viaContainerd.close();
      await direct.close();
    });
    const unpacked = await listAll(viaContainerd);
    t.equal(unpacked.filter((i) => i.kind === "committed").length, 3, "containerd unpacked 3 committed layers into nix");
    t.equal((await listAll(direct)).filter((i) => i.kind === "committed").length, 3, "our daemon holds them");
    const viaContainerdOverlay = new SnapshotsClient({ address: c.address, snapshotter: "overlayfs", namespace: NAMESPACE });
    t.teardown(() => viaContainerdOverlay.close());
    t.equal((await listAll(viaContainerdOverlay)).filter((i) => i.kind === "committed").length, 3, "and 3 into overlayfs");

    const listings: Record<string, string> = {};
    await t.test("ctr run: identical root filesystems", async (t) => {
      for (const sn of ["nix", "overlayfs"]) {
        listings[sn] = await ctr(["run", "--rm", "--snapshotter", sn, IMAGE, newId(`list-${sn}`), "/bin/sh", "-c", LIST_SCRIPT]);
        t.match(listings[sn], /== end\n$/, `${sn}: the listing script ran to the end`);
      }
      t.equal(listings["nix"], listings["overlayfs"], "nix listing equals overlayfs listing");
    });

    await t.test("expected facts hold (not two equally wrong listings)", async (t) => {
      const out = listings["nix"] ?? "";
      const lines = new Set(out.split("\n"));
      const has = (line: string, msg: string) => t.ok(lines.has(line), `${msg}: ${line}`);
      const lacks = (re: RegExp, msg: string) => t.notMatch(out, re, msg);
      // The root and the busybox base.
      has("/|directory|755|0|0", "root directory 0755 root:root");
      has(`/bin/busybox|regular file|755|0|0|${busybox.length}|1|/bin/busybox`, "busybox copied whole");
      has("/bin/sh|symbolic link|777|0|0|7|1|'/bin/sh' -> 'busybox'", "applet symlink");
      has(`${md5(busybox)}  /bin/busybox`, "busybox checksum");
      // Modes and owners.
      has("/tmp|directory|1777|0|0", "sticky /tmp");
      has("/root|directory|700|0|0", "private /root");
      has("/usr/bin/suid-tool|regular file|4755|0|0|20|1|/usr/bin/suid-tool", "setuid bit kept");
      has("/usr/bin/sgid-tool|regular file|2755|0|50|20|1|/usr/bin/sgid-tool", "setgid bit and group kept");
      has("/usr/bin/no-perms|regular file|0|0|0|21|1|/usr/bin/no-perms", "mode 0 kept");
      has("/home/user|directory|750|1000|1000", "owner 1000:1000 kept");
      has("/etc/empty|regular empty file|644|0|0|0|1|/etc/empty", "empty file");
      has("/etc/name with space|regular file|644|0|0|7|1|/etc/name with space", "name with a space");
      // Layer 2.
      has(`${md5("welcome v2\n")}  /etc/motd`, "overwritten file has the new content");
      has("motd: welcome v2", "overwritten file read back");
      has("/etc/added.conf|regular file|644|0|0|17|1|/etc/added.conf", "added file");
      has("/new-dir/nested/file|regular file|600|0|0|4|1|/new-dir/nested/file", "file in a new directory");
      lacks(/^\/delete-me\.txt/m, "whiteouted file is absent");
      lacks(/^\/var\/old-dir/m, "whiteouted directory and its contents are absent");
      has("var: lib", "/var holds only lib");
      lacks(/\.wh\./, "no whiteout file is visible");
      has("/var/lib/state|regular file|600|1000|1000|6|1|/var/lib/state", "chmod + chown of a file");
      has("/srv|directory|711|33|33", "chmod + chown of a directory");
      has("/srv/www/index.html|regular file|644|0|0|10|1|/srv/www/index.html", "children of a re-emitted directory stay");
      has("opt/app: new-only", "opaque directory holds only the new content");
      lacks(/^\/opt\/app\/(one|two|sub)/m, "opaque directory hides the lower contents");
      has("readme hardlink: same inode", "hardlink inside a layer");
      has("/usr/share/doc/readme|regular file|444|0|0|8|2|/usr/share/doc/readme", "hardlink count 2");
      has("keep hardlink: different inodes", "a hardlink overwritten by an upper layer is broken");
      has(`${md5("no longer a link\n")}  /data/keep.link`, "overwritten hardlink has the new content");
      has(`${md5("kept\n")}  /data/keep`, "its former partner keeps the old content");
      // Layer 3.
      lacks(/^\/etc\/config\.conf/m, "renamed file is gone from the old path");
      has(`/etc/app/config.conf|regular file|640|0|0|${CONFIG_CONF.length}|1|/etc/app/config.conf`, "renamed file at the new path, in a new directory");
      has(`${md5(CONFIG_CONF)}  /etc/app/config.conf`, "renamed file keeps its content");
      lacks(/^\/home\/user\/notes\.txt/m, "renamed notes gone from the old path");
      has(`/home/user/notes-old.txt|regular file|640|1000|1000|${NOTES.length}|1|/home/user/notes-old.txt`, "renamed notes keep owner and mode");
      has("/etc/alternatives/editor|symbolic link|777|0|0|11|1|'/etc/alternatives/editor' -> '/bin/vi-new'", "symlink target changed");
      has("/opt/tool|directory|755|0|0", "file replaced by a directory");
      has("/opt/tool/run|regular file|755|0|0|10|1|/opt/tool/run", "with its content");
      has("/usr/lib64|symbolic link|777|0|0|3|1|'/usr/lib64' -> 'lib'", "directory replaced by a symlink");
      lacks(/^\/usr\/lib64\//m, "nothing of the replaced directory shows through");
      has("root: bin data dev etc home new-dir opt proc root run srv sys tmp usr var", "top level of the root filesystem");
    });

    await t.test("read-only rootfs refuses writes", async (t) => {
      const out = await ctr([
        "run", "--rm", "--read-only", "--snapshotter", "nix", IMAGE, newId("ro"),
        "/bin/sh", "-c", "busybox touch /x 2>/dev/null && echo writable || echo readonly; busybox touch /tmp/x 2>/dev/null && echo tmp-writable || echo tmp-readonly",
      ]);
      t.equal(out, "readonly\ntmp-readonly\n", "nothing in the rootfs is writable");
      const rw = await ctr(["run", "--rm", "--snapshotter", "nix", IMAGE, newId("rw"), "/bin/sh", "-c", "busybox touch /x && echo writable"]);
      t.equal(rw, "writable\n", "while a normal container can write");
    });

    await t.test("containerd reconnects after our daemon restarts", async (t) => {
      const code = await daemon!.stop("SIGTERM");
      t.equal(code, 0, "daemon stopped cleanly on SIGTERM");
      daemon = await startDaemonProcess({ root: snRoot, address: snAddress, logFile: snLog, logLevel: "debug" });
      const { value: out, attempts } = await retryFor(15_000, () =>
        ctr(["run", "--rm", "--snapshotter", "nix", IMAGE, newId("restart"), "/bin/sh", "-c", "busybox cat /etc/motd"], 20_000),
      );
      t.equal(out, "welcome v2\n", "a new container starts from the nix image after the restart");
      t.comment(`ctr run succeeded after ${attempts} attempt(s)`);
      const again = await ctr(["run", "--rm", "--snapshotter", "nix", IMAGE, newId("list-after"), "/bin/sh", "-c", LIST_SCRIPT]);
      t.equal(again, listings["nix"], "same root filesystem after the restart");
    });

    await t.test("removing containers and images leaves our daemon empty", async (t) => {
      // `ctr run --rm` removes its container and snapshot; failed attempts may leave some.
      for (const id of (await ctr(["containers", "ls", "-q"])).split("\n").filter(Boolean)) {
        await ctr(["containers", "rm", id]);
      }
      await ctr(["images", "rm", "--sync", IMAGE]);
      // --sync waits for the GC; give a slow snapshotter cleanup a bounded grace anyway.
      let left: Info[] = [];
      let dirs: string[] = [];
      const snapshotsDir = path.join(snRoot, "snapshots");
      const deadline = Date.now() + 10_000;
      for (;;) {
        left = await listAll(direct);
        dirs = existsSync(snapshotsDir) ? readdirSync(snapshotsDir) : [];
        if ((left.length === 0 && dirs.length === 0) || Date.now() > deadline) break;
        await sleep(250);
      }
      t.same(left.map((i) => `${i.kind} ${i.name}`), [], "our daemon lists no snapshots");
      t.ok(existsSync(snapshotsDir), `${snapshotsDir} exists`);
      t.same(dirs, [], `${snapshotsDir} is empty`);
      t.same(await listAll(viaContainerd), [], "containerd lists no nix snapshots");
      t.same(await listAll(viaContainerdOverlay), [], "nor overlayfs ones");
    });
  });
}
