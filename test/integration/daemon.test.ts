/**
 * The daemon as an operator meets it: flags, config errors, the socket's
 * permissions and lifecycle, systemd readiness, and graceful shutdown.
 */
import { execFile } from "node:child_process";
import { mkdirSync, statSync, writeFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { promisify } from "node:util";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { DAEMON_BIN, startDaemonProcess } from "../../devenv/daemon.js";
import { skipReason } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";

const run = promisify(execFile);

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [DAEMON_BIN, ...args], { timeout: 20_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

t.test("--version and --help", async (t) => {
  const v = await cli(["--version"]);
  t.equal(v.code, 0);
  t.match(v.stdout.trim(), /^\d+\.\d+\.\d+$/);
  const h = await cli(["--help"]);
  t.equal(h.code, 0);
  for (const flag of ["--config", "--address", "--root", "--log-level", "--version", "--help"]) t.match(h.stdout, flag);
});

t.test("bad flags and config: exit 2, one line, nothing touched", async (t) => {
  const tmp = tempDir();
  t.teardown(() => tmp.cleanup());
  const root = path.join(tmp.path, "root");
  const cases: [string[], RegExp][] = [
    [["--bogus"], /Unknown argument: bogus/],
    [["--log-level", "loud"], /Invalid values/],
    [["--config", path.join(tmp.path, "missing.toml")], /missing\.toml: config file does not exist/],
  ];
  const bad = path.join(tmp.path, "bad.toml");
  writeFileSync(bad, 'root = "/x"\nsnapshotter_root = "/y"\n');
  cases.push([["--config", bad], /bad\.toml: unknown key "snapshotter_root"/]);
  for (const [args, re] of cases) {
    const r = await cli([...args, "--root", root, "--address", path.join(tmp.path, "s.sock")]);
    t.equal(r.code, 2, `${args.join(" ")}: exit 2`);
    const lines = r.stderr.trim().split("\n");
    t.equal(lines.length, 1, `${args.join(" ")}: one line`);
    t.match(lines[0], re);
  }
  t.notOk(existsSync(root), "no state directory was created by a refused start");
});

// Declared after the unconditional tests above, so the skip is per test.
const rootOnly = skipReason("daemon socket, sd_notify and SIGTERM tests", { root: true });
{
  t.test("socket: private directory, not world-writable, stale replaced, live refused", { skip: rootOnly }, async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const address = path.join(tmp.path, "run/nested/sn.sock");
    const root = path.join(tmp.path, "root");
    const d1 = await startDaemonProcess({ root, address });
    t.equal((statSync(path.dirname(address)).mode & 0o777).toString(8), "700", "socket directory created 0700");
    const mode = statSync(address).mode & 0o777;
    t.equal(mode & 0o002, 0, `socket not world-writable (mode ${mode.toString(8)})`);
    t.equal((statSync(path.join(root, "metadata.db")).mode & 0o777).toString(8), "600", "metadata database is 0600");

    const second = await cli(["--root", path.join(tmp.path, "root2"), "--address", address]);
    t.equal(second.code, 1, "a second daemon on a live socket exits 1");
    t.match(second.stderr, /is in use by a running process/);

    const sn = new SnapshotsClient({ address });
    await sn.prepare("survivor", "");
    await sn.close();
    process.kill(d1.pid, "SIGKILL");
    await d1.exited;
    t.ok(existsSync(address), "kill -9 leaves a stale socket behind");
    const d2 = await startDaemonProcess({ root, address });
    const sn2 = new SnapshotsClient({ address });
    t.equal((await sn2.stat("survivor")).kind, "active", "restart replaced the stale socket and kept the data");
    await sn2.close();
    t.equal(await d2.stop(), 0);
    t.notOk(existsSync(address), "socket removed on clean stop");
  });

  t.test("sd_notify: READY=1 once serving, STOPPING=1 on SIGTERM", { skip: rootOnly }, async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const require = createRequire(import.meta.url);
    const { createSocket } = require("unix-dgram") as {
      createSocket(type: string, cb: (msg: Buffer) => void): { bind(p: string): void; close(): void };
    };
    const messages: string[] = [];
    const notifyPath = path.join(tmp.path, "notify.sock");
    const sock = createSocket("unix_dgram", (msg) => messages.push(msg.toString()));
    sock.bind(notifyPath);
    t.teardown(() => sock.close());
    const address = path.join(tmp.path, "sn.sock");
    const d = await startDaemonProcess({ root: path.join(tmp.path, "root"), address, env: { NOTIFY_SOCKET: notifyPath } });
    for (let i = 0; i < 100 && messages.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    t.same(messages, ["READY=1"], "READY=1 after the socket is up");
    t.equal(await d.stop(), 0);
    for (let i = 0; i < 100 && messages.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    t.same(messages, ["READY=1", "STOPPING=1"]);
  });

  t.test("SIGTERM lets an in-flight call finish", { skip: rootOnly }, async (t) => {
    const tmp = tempDir();
    t.teardown(() => tmp.cleanup());
    const address = path.join(tmp.path, "sn.sock");
    const root = path.join(tmp.path, "root");
    const d = await startDaemonProcess({ root, address });
    const sn = new SnapshotsClient({ address });
    await sn.prepare("big", "");
    // A tree large enough that measuring its usage takes a while, built on
    // tmpfs (file creation on the test disk is slow) and bound into place.
    const shm = tempDir("nix-snapshotter-shm-", "/dev/shm");
    t.teardown(() => shm.cleanup());
    await run("sh", ["-c", `cd ${shm.path} && for i in $(seq 1 40); do mkdir d$i; (cd d$i && seq 1 1000 | xargs touch); done`]);
    const big = path.join(root, "snapshots", "1", "fs", "big");
    mkdirSync(big);
    await run("mount", ["--bind", shm.path, big]);
    t.teardown(() => run("umount", [big]).catch(() => {}));
    const usage = sn.usage("big");
    await new Promise((r) => setTimeout(r, 60));
    const exited = d.stop("SIGTERM");
    const u = await usage;
    t.ok(u.inodes > 40_000, `the call in flight completed (${u.inodes} inodes)`);
    t.equal(await exited, 0, "then the daemon exited 0");
    await sn.close();
  });
}

