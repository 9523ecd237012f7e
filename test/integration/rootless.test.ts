/**
 * Rootless: containerd and nix-snapshotter run by an ordinary user inside a
 * rootlesskit namespace, through the development environment's own code
 * (devenv/main.ts, what `make start-containerd` and friends run as a
 * non-root user), with realisations and GC roots going through a Nix daemon
 * that root runs on a private socket.
 *
 *   - an unprivileged user with subordinate ids (created if missing);
 *   - hello (nix image) prints Hello, world!; redis (nix image) answers PONG
 *     from the host on the port rootlesskit publishes;
 *   - an ordinary two-layer image runs on our overlay mounts (userxattr,
 *     probed at start), including removing a directory of a lower layer;
 *   - the same with overlay.driver = "fuse-overlayfs";
 *   - every daemon runs as the user; removing the images removes our GC
 *     roots (the Nix daemon lists none left in the snapshotter's root);
 *     stopping leaves no process of the user.
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import t from "tap";
import type { Test } from "tap";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { buildLayer } from "../../src/image/layer.js";
import { announceContainerd, containerdBinaries } from "../../devenv/containerd.js";
import { REPO, waitForSocket } from "../../devenv/daemon.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { freePort, tail } from "../lib/util.js";

const run = promisify(execFile);
const USER = "nixsn-rootless";
const SUBIDS = "400000-465535";
const BUSYBOX_REF = "example.com/rootless/busybox:1";

interface Account {
  uid: number;
  gid: number;
  home: string;
}

/** The test user, created with subordinate ids when missing (left in place for the next run). */
function ensureUser(): Account {
  const entry = () => execFileSync("getent", ["passwd", USER], { encoding: "utf8" }).trim();
  let line: string;
  try {
    line = entry();
  } catch {
    execFileSync("useradd", ["--create-home", "--shell", "/bin/sh", USER]);
    line = entry();
  }
  const has = (file: string) => existsSync(file) && readFileSync(file, "utf8").split("\n").some((l) => l.startsWith(`${USER}:`));
  if (!has("/etc/subuid") || !has("/etc/subgid")) execFileSync("usermod", ["--add-subuids", SUBIDS, "--add-subgids", SUBIDS, USER]);
  const f = line.split(":");
  return { uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
}

/** Runs a command as the user with a clean environment; never throws on a non-zero exit. */
async function asUser(env: Record<string, string>, cmd: string, args: string[], timeoutMs = 300_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const pairs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  try {
    const { stdout, stderr } = await run("runuser", ["-u", USER, "--", "env", "-i", ...pairs, cmd, ...args], { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string; message: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? e.message };
  }
}

/** A device the user must open (slirp4netns's tun, fuse-overlayfs's fuse); made 0666 if need be, restored at teardown. */
function openDevice(t: Test, dev: string): void {
  const mode = statSync(dev).mode & 0o777;
  if ((mode & 0o006) === 0o006) return;
  chmodSync(dev, 0o666);
  t.teardown(() => chmodSync(dev, mode));
  t.comment(`${dev} was ${mode.toString(8)}, not usable by ordinary users (no udev here): 0666 for this test`);
}

function userCanRead(env: Record<string, string>, file: string): boolean {
  try {
    execFileSync("runuser", ["-u", USER, "--", "env", "-i", ...Object.entries(env).map(([k, v]) => `${k}=${v}`), "test", "-r", file]);
    return true;
  } catch {
    return false;
  }
}

function processesOf(uid: number): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (statSync(`/proc/${pid}`).uid === uid) out.push(`${pid} ${readFileSync(`/proc/${pid}/comm`, "utf8").trim()}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

function rootsBelow(storePath: string, dir: string): string[] {
  const out = execFileSync("nix-store", ["--query", "--roots", storePath], { encoding: "utf8", maxBuffer: 16 * 1024 * 1024 });
  return out.split("\n").filter((l) => l.startsWith(dir + "/"));
}

if (
  requireOrSkip(t, {
    root: true,
    commands: ["rootlesskit", "rootlessctl", "slirp4netns", "newuidmap", "nsenter", "runuser", "useradd", "nix-daemon", "containerd", "ctr", "runc", "redis-cli", "fuse-overlayfs", "mount.fuse3"],
  })
) {
  t.test("rootless containerd and nix-snapshotter", async (t) => {
    const account = ensureUser();
    const tmp = tempDir("nix-snapshotter-rootless-");
    chmodSync(tmp.path, 0o755);
    const nixd = path.join(tmp.path, "nix-daemon");
    mkdirSync(nixd, { mode: 0o755 });
    const state = path.join(tmp.path, "user");
    mkdirSync(state);
    chownSync(state, account.uid, account.gid);
    const xdg = path.join(state, "xdg");
    const baseEnv = { HOME: account.home, USER, LOGNAME: USER, PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };

    const userns = await asUser(baseEnv, "unshare", ["--user", "true"]);
    if (userns.code !== 0) {
      const why = `this kernel refuses unprivileged user namespaces: ${userns.stderr.trim()}`;
      console.log(`SKIP: rootless: ${why}`);
      t.plan(0, why);
      tmp.cleanup();
      return;
    }
    openDevice(t, "/dev/net/tun");
    openDevice(t, "/dev/fuse");

    // The user runs the compiled code; a checkout others cannot read (under /root, say) is copied.
    let repo = REPO;
    if (!userCanRead(baseEnv, path.join(REPO, "build/devenv/main.js"))) {
      repo = path.join(tmp.path, "checkout");
      for (const p of ["package.json", "build/src", "build/devenv", "node_modules", "proto", "test/fixtures"]) cpSync(path.join(REPO, p), path.join(repo, p), { recursive: true, verbatimSymlinks: true });
      t.comment(`the checkout is not readable by ${USER}: running a copy in ${repo}`);
    }
    const devenvJs = path.join(repo, "build/devenv/main.js");

    // A Nix daemon of our own, on a private socket, stopped by PID.
    const nixSocket = path.join(nixd, "socket");
    const daemon = spawn("nix-daemon", [], { env: { ...process.env, NIX_DAEMON_SOCKET_PATH: nixSocket }, stdio: ["ignore", "ignore", "pipe"] });
    let daemonLog = "";
    daemon.stderr!.on("data", (d: Buffer) => (daemonLog = (daemonLog + d.toString()).slice(-4000)));
    t.teardown(() => {
      daemon.kill("SIGTERM");
    });
    await waitForSocket(nixSocket);

    const redisPort = await freePort();
    const userEnv = (devDir: string, extra: Record<string, string> = {}) => ({
      ...baseEnv,
      XDG_RUNTIME_DIR: xdg,
      NIX_SNAPSHOTTER_DEV_DIR: devDir,
      NIX_REMOTE: `unix://${nixSocket}`,
      REDIS_PORT: String(redisPort),
      // The containerd line under test (scripts/run-tests.sh).
      ...(process.env["CONTAINERD"] ? { CONTAINERD: process.env["CONTAINERD"] } : {}),
      ...extra,
    });
    const mkXdg = await asUser(baseEnv, "install", ["-d", "-m", "0700", xdg]);
    t.equal(mkXdg.code, 0, "the user's runtime directory");

    // Whatever happens, nothing of the user keeps running.
    t.teardown(async () => {
      for (const p of processesOf(account.uid)) {
        try {
          process.kill(Number(p.split(" ")[0]), "SIGKILL");
        } catch {
          /* gone */
        }
      }
      await sleep(200);
      tmp.cleanup();
    });

    // An ordinary image: busybox, a directory in the lower layer, a file in the upper one.
    const images = path.join(tmp.path, "images");
    mkdirSync(images, { mode: 0o755 });
    const busybox = path.join(images, "busybox.tar");
    await writeImageArchive(
      {
        layers: [
          {
            tar: await buildLayer([
              { type: "dir", path: "bin", mode: 0o755 },
              { type: "file", path: "bin/busybox", content: readFileSync("/bin/busybox"), mode: 0o755 },
              { type: "symlink", path: "bin/sh", target: "busybox" },
              { type: "dir", path: "etc/lower-dir", mode: 0o755 },
              { type: "file", path: "etc/lower-dir/file", content: "lower\n" },
            ]),
          },
          { tar: await buildLayer([{ type: "file", path: "etc/upper-file", content: "from the upper layer\n" }]) },
        ],
        config: { Entrypoint: ["/bin/sh"] },
        ref: BUSYBOX_REF,
      },
      busybox,
    );
    chmodSync(busybox, 0o644);

    const stack = async (t: Test, name: string, extra: Record<string, string>) => {
      const dev = path.join(state, name);
      const env = userEnv(dev, extra);
      const devenv = (args: string[], timeoutMs?: number) => asUser(env, process.execPath, [devenvJs, ...args], timeoutMs);
      const ok = async (args: string[], what: string, timeoutMs = 600_000) => {
        const r = await devenv(args, timeoutMs);
        t.equal(r.code, 0, `${what} (${(r.stderr || r.stdout).trim().split("\n").pop() ?? ""})`);
        return r.stdout;
      };
      t.teardown(async () => {
        if (!t.passing()) {
          console.error(`# --- ${name}: nix-snapshotter log ---\n${tail(path.join(dev, "nix-snapshotter.log"))}`);
          console.error(`# --- ${name}: containerd log ---\n${tail(path.join(dev, "containerd/containerd.log"), 40)}`);
          console.error(`# --- ${name}: rootlesskit log ---\n${tail(path.join(dev, "rootlesskit.log"))}`);
          console.error(`# --- nix-daemon (tail) ---\n${daemonLog}`);
        }
        await devenv(["stop"], 60_000);
      });

      await ok(["start-nix-snapshotter"], "start-nix-snapshotter as the user");
      await ok(["start-containerd"], "start-containerd as the user");
      announceContainerd(containerdBinaries());
      const pids = Object.fromEntries(["rootlesskit", "nix-snapshotter", "containerd"].map((n) => [n, Number(readFileSync(path.join(dev, "pids", `${n}.pid`), "utf8"))]));
      for (const [n, pid] of Object.entries(pids)) t.equal(statSync(`/proc/${pid}`).uid, account.uid, `${n} runs as ${USER}, not root`);
      const uidMap = readFileSync(`/proc/${pids["nix-snapshotter"]}/uid_map`, "utf8").trim().split("\n")[0]!.trim().split(/\s+/);
      t.same(uidMap, ["0", String(account.uid), "1"], "nix-snapshotter is uid 0 of a user namespace that maps the user");
      const log = readFileSync(path.join(dev, "nix-snapshotter.log"), "utf8");
      if (extra["OVERLAY_DRIVER"] === "fuse-overlayfs") t.notMatch(log, /userxattr/, "fuse-overlayfs: no kernel overlay probe");
      else t.match(log, /running in a user namespace: overlay mounts use userxattr/, "the daemon found the kernel's overlayfs usable with userxattr");

      const hello = await ok(["run-hello"], "run-hello");
      t.match(hello, /^Hello, world!$/m, "the hello nix image prints Hello, world!");

      if (extra["OVERLAY_DRIVER"] !== "fuse-overlayfs") {
        const redis = await ok(["run-redis"], "run-redis");
        t.match(redis, /^PONG$/m, "run-redis saw PONG");
        const { stdout } = await run("redis-cli", ["-h", "127.0.0.1", "-p", String(redisPort), "ping"], { timeout: 10_000 });
        t.equal(stdout.trim(), "PONG", `redis-cli -p ${redisPort} ping from the host (root, the host's network) answers PONG`);
        await ok(["stop-redis"], "stop-redis");
      }

      await ok(["ctr", "images", "import", "--local=false", "--snapshotter", "nix", busybox], "import an ordinary image");
      const out = await ok(
        ["ctr", "run", "--rm", "--cgroup", "", "--cpu-shares", "0", "--snapshotter", "nix", BUSYBOX_REF, `bb-${name}`, "/bin/sh", "-c", "cat /etc/upper-file; rm -r /etc/lower-dir && echo removed; ls /etc; grep ' / ' /proc/self/mountinfo"],
        "run the ordinary image",
      );
      t.match(out, /^from the upper layer\nremoved\nupper-file\n/, "both layers are there and a lower layer's directory can be removed");
      if (extra["OVERLAY_DRIVER"] === "fuse-overlayfs") t.match(out, / - fuse\.fuse-overlayfs /, "the root is a fuse-overlayfs mount");
      else t.match(out, / - overlay overlay .*userxattr/, "the root is a kernel overlay mounted with userxattr");

      // Remove everything; our roots must go with the snapshots.
      const f = JSON.parse(readFileSync(path.join(dev, "fixtures.json"), "utf8")) as { hello: string };
      const snRoots = path.join(dev, "nix-snapshotter/gcroots");
      t.ok(rootsBelow(f.hello, snRoots).length > 0, "while its image exists, the Nix daemon lists a root of hello in the snapshotter's root");
      const refs = (await ok(["ctr", "images", "ls", "-q"], "list images")).split("\n").filter(Boolean);
      await ok(["ctr", "images", "rm", "--sync", ...refs], "remove every image");
      let left = readdirSync(snRoots);
      for (let i = 0; i < 40 && left.length > 0; i++) {
        await sleep(250);
        left = readdirSync(snRoots);
      }
      t.same(left, [], "the snapshotter's GC root directories are gone");
      t.same(rootsBelow(f.hello, snRoots), [], "and Nix lists no root of hello there");

      await ok(["stop"], "stop");
      await sleep(200);
      t.same(processesOf(account.uid), [], `no process of ${USER} is left`);
    };

    await t.test("kernel overlayfs with userxattr", (t) => stack(t, "overlayfs", {}));
    await t.test("fuse-overlayfs", (t) => stack(t, "fuse", { OVERLAY_DRIVER: "fuse-overlayfs" }));
  });
}
