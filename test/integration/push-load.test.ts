/**
 * Nix images end to end: `nix2container build`, `push` to a real registry
 * (Debian's docker-registry, distribution 2.8), containerd pulling it back
 * through the path that hands layer annotations to the snapshotter, and
 * `nix2container load` doing the same with no registry at all.
 *
 *   - push over TLS with htpasswd basic auth: skopeo sees our exact manifest
 *     (digest and nix annotations); a second push uploads no blob (our
 *     counters and the registry's own log agree);
 *   - push over plain HTTP with the bearer-token flow (the registry verifies
 *     the issued JWT itself);
 *   - containerd's Transfer service pulls it (ctr images pull --local=false
 *     --platform ...), the nix layer reaches our daemon with its labels
 *     (GC roots made, store paths recorded), and `ctr run` prints Hello, world!;
 *   - `nix2container load` imports and unpacks into a fresh namespace with
 *     labels, survives a forced GC, is idempotent, and is collected with
 *     the image;
 *   - failures are one line, a documented exit code, and leave nothing:
 *     wrong password, no credentials, token refused, registry down, unknown
 *     host, a registry that keeps answering 5xx (bounded retries), a
 *     registry that refuses the manifest, bad build inputs, and a load whose
 *     second layer our snapshotter refuses (no image record, no lease, no
 *     content, no snapshot once the GC ran).
 *
 * containerd 1.7's Transfer service ignores ctr's --plain-http (it always
 * speaks https, remotes/docker ConfigureDefaultRegistries without
 * WithPlainHTTP) and only unpacks when --platform is given, so the pulled
 * registry serves TLS with a self-signed certificate that containerd trusts
 * through SSL_CERT_FILE.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import t from "tap";
import type { Test } from "tap";
import { chainIds } from "../../src/containerd/unpack.js";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { readImageArchive } from "../../src/image/archive.js";
import { writeImageArchive } from "../../src/image/archive-writer.js";
import { gzip } from "../../src/image/compression.js";
import { buildLayer, type LayerEntry } from "../../src/image/layer.js";
import { packTar, type TarItem } from "../../src/image/tar-writer.js";
import { goArch, type Manifest } from "../../src/image/oci.js";
import { sha256Digest } from "../../src/digest.js";
import type { Info } from "../../src/snapshotter/snapshotter.js";
import { killTasks, startContainerd, type Containerd } from "../../devenv/containerd.js";
import { REPO, startDaemonProcess, type DaemonProcess } from "../../devenv/daemon.js";
import { buildFixtures, helloImage, NIX2CONTAINER_BIN, type Fixtures } from "../../devenv/images.js";
import { layerStorePaths } from "../lib/nix.js";
import { type Front, type FrontOptions, htpasswdFile, makeCert, type Registry, startCapturingRealm, startFront, startRegistry, startTokenIssuer, type TokenIssuer } from "../lib/registry.js";
import { requireOrSkip } from "../lib/require.js";
import { tempDir } from "../lib/tmp.js";
import { entries, freePort, listAll, tail } from "../lib/util.js";

const run = promisify(execFile);

const FIXTURES_DIR = path.join(REPO, "build/test-fixtures");
const USER = "nixuser";
const PASSWORD = "s3cret-pass";
const LAYER_LABEL = "containerd.io/snapshot/nix-layer";
const PATH_LABEL = "containerd.io/snapshot/nix-store-path.";
const REF_LABEL = "containerd.io/snapshot.ref";

const suffix = randomBytes(3).toString("hex");
/** Namespaces of our own; runc state under /run/containerd/runc/<ns> is shared with other containerds. */
const NS = { pull: `pl-pull-${suffix}`, load: `pl-load-${suffix}`, bad: `pl-bad-${suffix}`, race: `pl-race-${suffix}`, from: `pl-from-${suffix}` };
const newId = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs the built nix2container CLI; never throws on a non-zero exit. */
async function n2c(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const t0 = Date.now();
  try {
    const { stdout, stderr } = await run(process.execPath, [NIX2CONTAINER_BIN, ...args], {
      env: { ...process.env, ...env },
      timeout: 300_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr, ms: Date.now() - t0 };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "", ms: Date.now() - t0 };
  }
}

/** The error contract: exit code `code`, exactly one stderr line, "nix2container: ..." matching `want`. */
function failsWith(t: Test, r: CliResult, code: number, want: RegExp, what: string): void {
  t.equal(r.code, code, `${what}: exit code ${code}`);
  const lines = r.stderr.split("\n").filter((l) => l !== "");
  t.equal(lines.length, 1, `${what}: exactly one line on stderr (${JSON.stringify(r.stderr.slice(0, 400))})`);
  t.match(lines[0] ?? "", /^nix2container: /, `${what}: the line names the program`);
  t.match(lines[0] ?? "", want, `${what}: and says what went wrong`);
}

/** A docker config directory holding `auths` for the given hosts. */
function dockerConfig(dir: string, auths: Record<string, string>): string {
  mkdirSync(dir, { recursive: true });
  const entries = Object.fromEntries(Object.entries(auths).map(([host, userPass]) => [host, { auth: Buffer.from(userPass).toString("base64") }]));
  writeFileSync(path.join(dir, "config.json"), JSON.stringify({ auths: entries }));
  return dir;
}

async function skopeo(args: string[]): Promise<string> {
  try {
    return (await run("skopeo", args, { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 })).stdout;
  } catch (err) {
    throw new Error(`skopeo ${args.join(" ")}: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim()}`);
  }
}

/** An OCI layout archive whose one manifest is `manifest`, with the blobs it names. */
async function writeRawArchive(file: string, manifest: Manifest, blobs: Map<string, Buffer>, ref: string): Promise<string> {
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const digest = sha256Digest(manifestBytes);
  const index = {
    schemaVersion: 2,
    manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", digest, size: manifestBytes.length, annotations: { "io.containerd.image.name": ref } }],
  };
  const files = new Map<string, Buffer>([
    ["oci-layout", Buffer.from('{"imageLayoutVersion":"1.0.0"}')],
    ["index.json", Buffer.from(JSON.stringify(index))],
    [`blobs/sha256/${digest.slice(7)}`, manifestBytes],
  ]);
  for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) files.set(`blobs/sha256/${d.slice(7)}`, blobs.get(d)!);
  const items: TarItem[] = [...files].map(([name, body]) => ({ header: { name, type: "file", mode: 0o644, size: body.length, mtime: new Date(0) }, body }));
  writeFileSync(file, await packTar(items));
  return digest;
}

/**
 * A docker-archive as `docker save` writes it ("<id>/layer.tar" members,
 * "<config hex>.json"), with gzip-compressed layers, the way a base image
 * reaches `nix2container build --from-image` from outside the project.
 */
async function writeDockerArchive(file: string, o: { layers: LayerEntry[][]; config: Record<string, unknown>; repoTag: string; architecture?: string }): Promise<string[]> {
  const tars = await Promise.all(o.layers.map((l) => buildLayer(l)));
  const blobs = await Promise.all(tars.map((tar) => gzip(tar)));
  const config = Buffer.from(
    JSON.stringify({
      architecture: o.architecture ?? goArch(),
      os: "linux",
      config: o.config,
      rootfs: { type: "layers", diff_ids: tars.map((tar) => sha256Digest(tar)) },
      history: tars.map(() => ({ created_by: "base image layer" })),
    }),
  );
  const configName = `${sha256Digest(config).slice(7)}.json`;
  const ids = blobs.map((_, i) => String(i + 1).repeat(64));
  const item = (name: string, body: Buffer): TarItem => ({ header: { name, type: "file", mode: 0o644, size: body.length, mtime: new Date(0) }, body });
  writeFileSync(
    file,
    await packTar([
      ...blobs.map((b, i) => item(`${ids[i]}/layer.tar`, b)),
      item(configName, config),
      item("manifest.json", Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [o.repoTag], Layers: ids.map((id) => `${id}/layer.tar`) }]))),
    ]),
  );
  return blobs.map((b) => sha256Digest(b));
}

if (
  requireOrSkip(t, {
    root: true,
    commands: ["containerd", "ctr", "runc", "nix-build", "nix-store", "docker-registry", "htpasswd", "skopeo", "openssl", "gcc", "patchelf"],
  })
) {
  const started = Date.now();
  let fixtures: Fixtures;
  t.before(async () => {
    // Same arguments as the other suites, so the fixtures are shared and not rebuilt.
    fixtures = await buildFixtures(FIXTURES_DIR, { MANY_N: "1000" });
  });
  t.teardown(() => {
    console.log(`# push-load: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });

  t.test("push, pull and load nix images", async (t) => {
    const f = fixtures;
    const tmp = tempDir("nix-snapshotter-pushload-");
    const snRoot = path.join(tmp.path, "sn/root");
    const snAddress = path.join(tmp.path, "sn/run/nix-snapshotter.sock");
    const snLog = path.join(tmp.path, "sn/daemon.log");
    const ctrdDir = path.join(tmp.path, "containerd");
    const ctrdLog = path.join(ctrdDir, "containerd.log");
    const imagesDir = path.join(tmp.path, "images");
    mkdirSync(imagesDir, { recursive: true });

    let daemon: DaemonProcess | undefined;
    let ctrd: Containerd | undefined;
    let direct: SnapshotsClient | undefined;
    const registries: Registry[] = [];
    let issuer: TokenIssuer | undefined;
    t.teardown(async () => {
      if (!t.passing()) {
        console.error(`# --- nix-snapshotter log ${snLog} (tail) ---\n${tail(snLog)}`);
        console.error(`# --- containerd log ${ctrdLog} (tail) ---\n${tail(ctrdLog, 60, /msg="loading plugin/)}`);
        for (const r of registries) console.error(`# --- registry log ${r.log} (tail) ---\n${tail(r.log, 20)}`);
      }
      await direct?.close();
      for (const r of registries) await r.stop();
      await issuer?.stop();
      if (ctrd) {
        for (const ns of Object.values(NS)) await killTasks(ctrd, ns);
        await ctrd.stop();
      }
      await daemon?.stop("SIGTERM", 10_000);
      tmp.cleanup();
    });

    // --- the stack ---------------------------------------------------------------
    const tls = makeCert(path.join(tmp.path, "tls"));
    const htpasswd = htpasswdFile(path.join(tmp.path, "htpasswd"), USER, PASSWORD);
    const basicReg = await startRegistry({ dir: path.join(tmp.path, "reg-basic"), auth: { htpasswd }, tls });
    registries.push(basicReg);
    issuer = await startTokenIssuer({ tls, issuer: "nix2container-test-issuer", user: USER, password: PASSWORD });
    const tokenAuth = { realm: issuer.realm, service: "nix2container-test", issuer: "nix2container-test-issuer", rootCertBundle: tls.cert };
    const tokenReg = await startRegistry({ dir: path.join(tmp.path, "reg-token"), auth: { token: tokenAuth } });
    registries.push(tokenReg);
    // Storage below a regular file: every storage operation fails, the registry answers 500.
    writeFileSync(path.join(tmp.path, "not-a-directory"), "");
    const brokenReg = await startRegistry({ dir: path.join(tmp.path, "reg-broken"), storage: path.join(tmp.path, "not-a-directory/data"), auth: { htpasswd } });
    registries.push(brokenReg);

    daemon = await startDaemonProcess({ root: snRoot, address: snAddress, logFile: snLog, logLevel: "debug" });
    // containerd's registry client trusts the system roots; SSL_CERT_FILE replaces them for this process.
    const savedCertFile = process.env["SSL_CERT_FILE"];
    process.env["SSL_CERT_FILE"] = tls.cert;
    try {
      ctrd = await startContainerd({ dir: ctrdDir, snapshotterAddress: snAddress, logLevel: "info" });
    } finally {
      if (savedCertFile === undefined) delete process.env["SSL_CERT_FILE"];
      else process.env["SSL_CERT_FILE"] = savedCertFile;
    }
    direct = new SnapshotsClient({ address: snAddress });
    const c = ctrd;
    const ctr = (ns: string, args: string[], timeoutMs = 120_000) => c.ctr(args, { namespace: ns, timeoutMs });
    const snapshotsOf = async (ns: string): Promise<Info[]> => (await listAll(direct!)).filter((i) => i.name.startsWith(`${ns}/`));
    t.comment(`state in ${tmp.path}; registries ${basicReg.host} (TLS, basic), ${tokenReg.host} (HTTP, token), ${brokenReg.host} (HTTP, broken storage)`);

    const goodConfig = dockerConfig(path.join(tmp.path, "docker-good"), { [basicReg.host]: `${USER}:${PASSWORD}`, [tokenReg.host]: `${USER}:${PASSWORD}`, [brokenReg.host]: `${USER}:${PASSWORD}` });
    // The blob-location cache (cross-repository mounts) lives in the test's own directory.
    const pushEnv = { DOCKER_CONFIG: goodConfig, NODE_EXTRA_CA_CERTS: tls.cert, XDG_CACHE_HOME: path.join(tmp.path, "cache") };

    // --- build ---------------------------------------------------------------------
    const hello = await helloImage(imagesDir, f);
    const built = await readImageArchive(hello.archive);
    const helloClosure = readFileSync(path.join(f["hello-closure"], "store-paths"), "utf8").split("\n").filter(Boolean).sort();
    const diffId = built.config.rootfs.diff_ids[0]!;
    const [chainId] = chainIds(built.config.rootfs.diff_ids);

    await t.test("building twice gives the same manifest digest", async (t) => {
      // Elsewhere: the default reference (in index.json only) differs, the manifest must not.
      const elsewhere = await helloImage(path.join(imagesDir, "again"), f);
      t.not(elsewhere.ref, hello.ref, "a build elsewhere has another default reference");
      t.equal((await readImageArchive(elsewhere.archive)).manifestDigest, built.manifestDigest, `same manifest digest ${built.manifestDigest}`);
      const first = readFileSync(hello.archive);
      const same = await helloImage(imagesDir, f);
      t.equal(same.ref, hello.ref, "rebuilt to the same path: same reference");
      t.ok(readFileSync(same.archive).equals(first), "and a byte-identical archive");
      t.equal(built.manifest.layers.length, 1, "one nix layer");
      const ann = built.manifest.layers[0]!.annotations ?? {};
      t.equal(ann[LAYER_LABEL], "true", "marked as a nix layer");
      t.same(Object.entries(ann).filter(([k]) => k.startsWith(PATH_LABEL)).map(([, v]) => v).sort(), helloClosure, "annotated with the hello closure");
    });

    // --- push ------------------------------------------------------------------------
    const basicRef = `${basicReg.host}/hello:latest`;
    const uploads = (r: Registry, repo: string) => r.count("POST", new RegExp(`^/v2/${repo}/blobs/uploads/$`), 202);
    const creds = ["--tls-verify=false", "--creds", `${USER}:${PASSWORD}`];

    await t.test("push over TLS with basic auth: the registry holds our exact manifest", async (t) => {
      const r = await n2c(["push", hello.archive, "--ref", basicRef], pushEnv);
      t.equal(r.code, 0, `push exits 0 (${r.stderr.trim()})`);
      t.match(r.stdout, new RegExp(`^pushed ${basicRef} ${built.manifestDigest}: uploaded 2 of 2 blobs .*, 0 mounted, 0 already present$`, "m"), "summary: both blobs uploaded");
      t.match(r.stdout, /^uploaded config sha256:[0-9a-f]{64} /m, "a plain log line per blob when stdout is not a terminal");
      t.notMatch(r.stdout, /\x1b\[/, "no terminal control sequences in plain output");
      t.equal(uploads(basicReg, "hello"), 2, "the registry's log shows 2 upload sessions");

      const raw = await skopeo(["inspect", ...creds, "--raw", `docker://${basicRef}`]);
      t.equal(sha256Digest(Buffer.from(raw)), built.manifestDigest, "skopeo --raw: the manifest bytes hash to our digest");
      t.equal(raw, built.blobs.get(built.manifestDigest)!.toString("utf8"), "byte for byte the archive's manifest");
      const m = JSON.parse(raw) as Manifest;
      t.equal(m.mediaType, "application/vnd.oci.image.manifest.v1+json", "an OCI manifest");
      t.equal(m.layers[0]?.annotations?.[LAYER_LABEL], "true", "the nix-layer annotation survived the registry");
      t.same(Object.entries(m.layers[0]?.annotations ?? {}).filter(([k]) => k.startsWith(PATH_LABEL)).map(([, v]) => v).sort(), helloClosure, "and every store path annotation");
      const info = JSON.parse(await skopeo(["inspect", ...creds, `docker://${basicRef}`])) as { Digest: string; Architecture: string };
      t.equal(info.Digest, built.manifestDigest, "skopeo inspect reports our manifest digest");
      t.equal(info.Architecture, goArch(), "and this host's architecture");
    });

    await t.test("a second push uploads no blob", async (t) => {
      const headsBefore = basicReg.count("HEAD", /^\/v2\/hello\/blobs\/sha256:/, 200);
      const r = await n2c(["push", hello.archive, "--ref", basicRef], pushEnv);
      t.equal(r.code, 0, "push exits 0");
      t.match(r.stdout, new RegExp(`^pushed ${basicRef} ${built.manifestDigest}: uploaded 0 of 2 blobs \\(0 B\\), 0 mounted, 2 already present$`, "m"), "summary: 0 uploaded, 2 present");
      t.equal((r.stdout.match(/^exists +(config|layer 1\/1) sha256:/gm) ?? []).length, 2, "one 'exists' line per blob");
      t.equal(uploads(basicReg, "hello"), 2, "the registry saw no new upload session");
      t.equal(basicReg.count("HEAD", /^\/v2\/hello\/blobs\/sha256:/, 200) - headsBefore, 2, "only two HEADs, both answered 200");
    });

    await t.test("pushing the same image to another repository mounts every blob: zero uploads", async (t) => {
      const mountsBefore = basicReg.count("POST", /^\/v2\/nix\/hello\/blobs\/uploads\/\?.*mount=/, 201);
      const other = await n2c(["push", hello.archive, "--ref", `${basicReg.host}/nix/hello:v2`], pushEnv);
      t.equal(other.code, 0, `push to another repository exits 0 (${other.stderr.trim()})`);
      t.match(other.stdout, /uploaded 0 of 2 blobs \(0 B\), 2 mounted, 0 already present/, "summary: both blobs mounted");
      t.equal((other.stdout.match(/^mounted +(config|layer 1\/1) sha256:/gm) ?? []).length, 2, "one 'mounted' line per blob");
      t.equal(basicReg.count("POST", /^\/v2\/nix\/hello\/blobs\/uploads\/\?.*mount=/, 201) - mountsBefore, 2, "the registry's log: two mounts answered 201 Created");
      t.equal(uploads(basicReg, "nix/hello"), 0, "and zero upload sessions for nix/hello");
      t.equal(basicReg.count("PUT", /^\/v2\/nix\/hello\/blobs\/uploads\//), 0, "no blob bytes were PUT there");
      t.equal(basicReg.count("PATCH", /^\/v2\/nix\/hello\/blobs\/uploads\//), 0, "nor PATCHed");
      const raw = await skopeo(["inspect", ...creds, "--raw", `docker://${basicReg.host}/nix/hello:v2`]);
      t.equal(sha256Digest(Buffer.from(raw)), built.manifestDigest, "skopeo reads the same manifest from the second repository");
      const dir = path.join(tmp.path, "skopeo-copy");
      await skopeo(["copy", "--src-tls-verify=false", "--src-creds", `${USER}:${PASSWORD}`, `docker://${basicReg.host}/nix/hello:v2`, `oci:${dir}:x`]);
      t.equal(readFileSync(path.join(dir, "blobs/sha256", built.manifest.layers[0]!.digest.slice(7))).length, built.manifest.layers[0]!.size, "and copies the mounted layer's bytes back out");

      const fresh = { ...pushEnv, XDG_CACHE_HOME: path.join(tmp.path, "cache-fresh") };
      const explicit = await n2c(["push", hello.archive, "--ref", `${basicReg.host}/nix/third:v1`, "--mount-from", "hello"], fresh);
      t.match(explicit.stdout, /uploaded 0 of 2 blobs \(0 B\), 2 mounted/, "--mount-from mounts without a remembered location");
      t.equal(uploads(basicReg, "nix/third"), 0, "zero upload sessions there too");
    });

    await t.test("on a terminal, push shows progress in place", async (t) => {
      // script(1) runs the push on a pseudo-terminal, so stdout is a TTY.
      const cmd = [process.execPath, NIX2CONTAINER_BIN, "push", hello.archive, "--ref", `${basicReg.host}/tty/hello:latest`].map((a) => `'${a}'`).join(" ");
      // A cache of its own: nothing remembered, so the blobs are uploaded, not mounted.
      const env = { ...process.env, ...pushEnv, XDG_CACHE_HOME: path.join(tmp.path, "cache-tty") };
      const { stdout } = await run("script", ["-qec", cmd, "/dev/null"], { env, timeout: 60_000 });
      t.match(stdout, /\r\x1b\[Kpushing 0\/2 blobs, 0 B \/ \d/, "one line drawn in place: blobs and bytes of the total");
      t.match(stdout, /\r\x1b\[Kpushing 1\/2 blobs, /, "redrawn as blobs finish");
      t.match(stdout, /\r\x1b\[Kuploaded +(config|layer 1\/1) sha256:/, "finished blobs get a line of their own above it");
      t.match(stdout, /pushed \S+ sha256:[0-9a-f]{64}: uploaded 2 of 2 blobs/, "and the summary");
    });

    await t.test("containerd pulls it through the Transfer service; the nix layer reaches our daemon with its labels", async (t) => {
      const rootsBefore = entries(path.join(snRoot, "gcroots"));
      const out = await ctr(NS.pull, ["images", "pull", "--local=false", "--platform", `linux/${goArch()}`, "--user", `${USER}:${PASSWORD}`, "--snapshotter", "nix", basicRef], 300_000);
      // ctr prints "Completed pull" last, but may exit before that line under load; "saved" is the image stored.
      t.match(out, /Completed pull|\tsaved\t/, "ctr images pull completed");
      const images = await ctr(NS.pull, ["images", "ls"]);
      t.match(images, new RegExp(`^${basicRef.replace(/[.]/g, "\\.")}\\s+\\S+\\s+${built.manifestDigest}`, "m"), "containerd's image record points at our manifest digest");
      const snaps = await snapshotsOf(NS.pull);
      t.equal(snaps.length, 1, "our daemon holds one snapshot for the pull namespace");
      t.equal(snaps[0]?.kind, "committed", "committed");
      t.equal(snaps[0]?.labels[LAYER_LABEL], "true", "with the nix-layer label");
      t.equal(snaps[0]?.labels[REF_LABEL], chainId, "and containerd.io/snapshot.ref = the layer's chain ID");
      const newRoots = entries(path.join(snRoot, "gcroots")).filter((r) => !rootsBefore.includes(r));
      t.equal(newRoots.length, 1, "one new GC root directory");
      t.same(layerStorePaths(snRoot, newRoots[0] ?? "none"), helloClosure, "the layer's recorded store paths are the hello closure");
      t.equal(await ctr(NS.pull, ["run", "--rm", "--snapshotter", "nix", basicRef, newId("pulled")]), "Hello, world!\n", "ctr run prints Hello, world!");
    });

    await t.test("push over plain HTTP with the bearer-token flow", async (t) => {
      const ref = `${tokenReg.host}/hello:latest`;
      const r = await n2c(["push", hello.archive, "--ref", ref, "--plain-http"], pushEnv);
      t.equal(r.code, 0, `push exits 0 (${r.stderr.trim()})`);
      t.match(r.stdout, /uploaded 2 of 2 blobs/, "both blobs uploaded");
      t.ok(issuer!.requests.length >= 1, `the token service was asked (${issuer!.requests.length} time(s))`);
      t.ok(
        issuer!.requests.every((q) => q.authorized && q.scope === "repository:hello:pull,push" && q.service === "nix2container-test"),
        "with our credentials, the push scope and the registry's service",
      );
      t.equal(uploads(tokenReg, "hello"), 2, "the registry accepted 2 uploads with the token");
      const raw = await skopeo(["inspect", ...creds, "--raw", `docker://${ref}`]);
      t.equal(sha256Digest(Buffer.from(raw)), built.manifestDigest, "skopeo sees our manifest there too");
      const again = await n2c(["push", hello.archive, "--ref", ref, "--plain-http"], pushEnv);
      t.match(again.stdout, /uploaded 0 of 2 blobs/, "a second push uploads nothing");
      const noTls = await n2c(["push", hello.archive, "--ref", ref], pushEnv);
      failsWith(t, noTls, 4, /cannot reach registry 127\.0\.0\.1:\d+: it does not speak TLS \(for plain HTTP, pass --plain-http\)/, "https to a plain HTTP registry");
    });

    // --- credential safety and registry parity ------------------------------------------
    await t.test("a token realm on another host over plain http never sees the registry's password", async (t) => {
      const basic = Buffer.from(`${USER}:${PASSWORD}`).toString("base64");
      // Another loopback address, and another host name for the same loopback address.
      for (const [address, realmHost] of [["127.0.0.2", "127.0.0.2"], ["127.0.0.1", "localhost"]] as const) {
        const capture = await startCapturingRealm(address);
        const realm = capture.realm.replace(`//${address}:`, `//${realmHost}:`);
        const hostile = await startRegistry({ dir: path.join(tmp.path, `reg-hostile-${realmHost}`), auth: { token: { ...tokenAuth, realm } } });
        registries.push(hostile);
        try {
          const env = { ...pushEnv, DOCKER_CONFIG: dockerConfig(path.join(tmp.path, `docker-hostile-${realmHost}`), { [hostile.host]: `${USER}:${PASSWORD}` }) };
          const r = await n2c(["push", hello.archive, "--ref", `${hostile.host}/hello:latest`, "--plain-http"], env);
          failsWith(t, r, 3, new RegExp(`the credentials were not sent to the token service http://${realmHost}:\\d+, which is neither https nor the registry itself`), `realm on ${realmHost}`);
          t.ok(capture.authorizations.length >= 1, `the realm on ${realmHost} was asked (${capture.authorizations.length} time(s))`);
          t.same(capture.authorizations, capture.authorizations.map(() => undefined), `with no Authorization header at all`);
          const seen = capture.authorizations.join(" ");
          t.notOk(seen.includes(basic) || seen.includes(PASSWORD), "the password never reached it");
          t.equal(hostile.count("POST", /\/blobs\/uploads\//), 0, "and nothing was uploaded");
        } finally {
          await capture.stop();
        }
      }
      // The https realm of the token registry did get them (the flow above): ask once more and look.
      const asked = issuer!.requests.length;
      const r = await n2c(["push", hello.archive, "--ref", `${tokenReg.host}/hello:realm`, "--plain-http"], pushEnv);
      t.equal(r.code, 0, "the https realm on another origin is sent the credentials, as docker does");
      t.ok(issuer!.requests.slice(asked).some((q) => q.authorized), "and accepted them");
    });

    await t.test("credentials from a credential helper (credsStore, credHelpers)", async (t) => {
      const bin = path.join(tmp.path, "helper-bin");
      mkdirSync(bin, { recursive: true });
      const asked = path.join(tmp.path, "helper-asked");
      writeFileSync(
        path.join(bin, "docker-credential-n2ctest"),
        `#!/bin/sh\n[ "$1" = get ] || exit 3\nread -r server\necho "$server" >> ${asked}\necho '{"ServerURL":"'"$server"'","Username":"${USER}","Secret":"${PASSWORD}"}'\n`,
        { mode: 0o755 },
      );
      const dir = path.join(tmp.path, "docker-helper");
      mkdirSync(dir, { recursive: true });
      const env = { ...pushEnv, DOCKER_CONFIG: dir, PATH: `${bin}:${process.env["PATH"] ?? ""}` };
      writeFileSync(path.join(dir, "config.json"), JSON.stringify({ auths: { [basicReg.host]: {} }, credsStore: "n2ctest" }));
      const r = await n2c(["push", hello.archive, "--ref", `${basicReg.host}/helper/hello:store`], env);
      t.equal(r.code, 0, `push with credsStore exits 0 (${r.stderr.trim()})`);
      writeFileSync(path.join(dir, "config.json"), JSON.stringify({ credsStore: "absent", credHelpers: { [basicReg.host]: "n2ctest" } }));
      const r2 = await n2c(["push", hello.archive, "--ref", `${basicReg.host}/helper/hello:helpers`], env);
      t.equal(r2.code, 0, `push with credHelpers (over a credsStore that does not exist) exits 0 (${r2.stderr.trim()})`);
      t.same(readFileSync(asked, "utf8").trim().split("\n"), [basicReg.host, basicReg.host], "the helper was asked for the registry, once per push");
      const raw = await skopeo(["inspect", ...creds, "--raw", `docker://${basicReg.host}/helper/hello:helpers`]);
      t.equal(sha256Digest(Buffer.from(raw)), built.manifestDigest, "skopeo reads the manifest back");
      writeFileSync(path.join(dir, "config.json"), JSON.stringify({ credsStore: "absent" }));
      failsWith(t, await n2c(["push", hello.archive, "--ref", `${basicReg.host}/helper/hello:x`], env), 2, /credential helper docker-credential-absent \(from the docker config\) is not on PATH/, "a helper that is not installed");
    });

    // Fronts for the plain-HTTP registry: a CDN-like blob host that honours
    // its own URLs (it adds the registry credentials itself, as a signed URL
    // would be honoured), and the fronts the client talks to.
    const plainReg = await startRegistry({ dir: path.join(tmp.path, "reg-plain"), auth: { htpasswd } });
    registries.push(plainReg);
    const basicHeader = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString("base64")}`;
    const fronts: Front[] = [];
    t.teardown(async () => {
      for (const f of fronts) await f.stop();
    });
    const front = async (o: Omit<FrontOptions, "target">) => {
      const f = await startFront({ target: plainReg.host, ...o });
      fronts.push(f);
      return f;
    };
    const blobHost = await front({ authorization: basicHeader, address: "127.0.0.2" });
    const frontEnv = (f: Front) => ({ ...pushEnv, DOCKER_CONFIG: dockerConfig(path.join(tmp.path, `docker-front-${f.host.replace(/[.:]/g, "-")}`), { [f.host]: `${USER}:${PASSWORD}` }) });
    const plainCreds = ["--tls-verify=false", "--creds", `${USER}:${PASSWORD}`];

    await t.test("a registry that redirects blob HEAD, GET and PUT elsewhere: followed, without credentials", async (t) => {
      const redirecting = await front({ redirectBlobsTo: blobHost.url });
      const ref = `${redirecting.host}/redir/hello:latest`;
      const r = await n2c(["push", hello.archive, "--ref", ref, "--plain-http"], frontEnv(redirecting));
      t.equal(r.code, 0, `push exits 0 (${r.stderr.trim()})`);
      t.match(r.stdout, /uploaded 2 of 2 blobs/, "both blobs uploaded through the redirects");
      const viaBlobHost = blobHost.requests.filter((q) => q.url.startsWith("/v2/redir/"));
      t.ok(viaBlobHost.some((q) => q.method === "HEAD") && viaBlobHost.some((q) => q.method === "PUT"), "the blob host got the HEADs and the upload PUTs");
      t.equal(viaBlobHost.filter((q) => q.authorization !== undefined).length, 0, "and not one Authorization header");
      t.ok(redirecting.requests.some((q) => q.authorization === basicHeader), "while the registry's own origin got the credentials");
      t.equal(plainReg.count("PUT", /^\/v2\/redir\/hello\/blobs\/uploads\/.*digest=sha256/, 201), 2, "the registry stored both blobs");
      const raw = await skopeo(["inspect", ...plainCreds, "--raw", `docker://${plainReg.host}/redir/hello:latest`]);
      t.equal(sha256Digest(Buffer.from(raw)), built.manifestDigest, "skopeo reads the manifest back from the registry itself");
      const again = await n2c(["push", hello.archive, "--ref", ref, "--plain-http"], frontEnv(redirecting));
      t.match(again.stdout, /uploaded 0 of 2 blobs \(0 B\), 0 mounted, 2 already present/, "a redirected HEAD answered 200 means present");
    });

    await t.test("an upload location on another host gets no credentials", async (t) => {
      const elsewhere = await front({ uploadsAt: blobHost.url });
      const before = blobHost.requests.length;
      const r = await n2c(["push", hello.archive, "--ref", `${elsewhere.host}/elsewhere/hello:latest`, "--plain-http"], frontEnv(elsewhere));
      t.equal(r.code, 0, `push exits 0 (${r.stderr.trim()})`);
      const uploads = blobHost.requests.slice(before).filter((q) => q.method === "PUT");
      t.equal(uploads.length, 2, "both blobs were PUT to the upload host");
      t.equal(uploads.filter((q) => q.authorization !== undefined).length, 0, "without an Authorization header");
      t.equal(elsewhere.requests.filter((q) => q.method === "PUT" && /\/blobs\/uploads\//.test(q.url)).length, 0, "none went to the registry's origin");
    });

    await t.test("chunked uploads: PATCH chunks, and a dropped connection resumes from the registry's Range", async (t) => {
      // A 3.5 MiB layer of random bytes, pushed in 1 MiB chunks.
      const layerTar = await buildLayer([{ type: "file", path: "random.bin", content: randomBytes(3.5 * 1024 * 1024) }]);
      const bigArchive = path.join(imagesDir, "big.tar");
      const w = await writeImageArchive({ layers: [{ tar: layerTar, compress: false }], config: { Cmd: ["/x"] }, ref: "example.com/big:1" }, bigArchive);
      const chunks = Math.ceil(layerTar.length / (1024 * 1024));

      const direct = await front({});
      const r = await n2c(["push", bigArchive, "--ref", `${direct.host}/chunked/plain:1`, "--plain-http", "--chunk-size", "1"], frontEnv(direct));
      t.equal(r.code, 0, `push exits 0 (${r.stderr.trim()})`);
      t.equal(plainReg.count("PATCH", /^\/v2\/chunked\/plain\/blobs\/uploads\//, 202), chunks, `the registry took ${chunks} PATCH chunks for the layer`);
      t.equal(plainReg.count("PUT", /^\/v2\/chunked\/plain\/blobs\/uploads\/.*digest=/, 201), 2, "and two closing PUTs (the config goes in one)");

      // The second chunk's connection drops: the registry holds the first, and says so.
      const dropping = await front({ dropPatchAt: 1024 * 1024 });
      const d = await n2c(["push", bigArchive, "--ref", `${dropping.host}/chunked/drop:1`, "--plain-http", "--chunk-size", "1"], frontEnv(dropping));
      t.equal(d.code, 0, `push through a dropped connection exits 0 (${d.stderr.trim()})`);
      t.equal(dropping.dropped, 1, "the front dropped one PATCH mid-body");
      t.match(d.stdout, /1 chunk sent again after a dropped connection/, "the summary says one chunk was sent again");
      t.equal(plainReg.count("GET", /^\/v2\/chunked\/drop\/blobs\/uploads\//, 204), 1, "the upload's status was asked once");
      t.equal(plainReg.count("PATCH", /^\/v2\/chunked\/drop\/blobs\/uploads\//, 202), chunks, "the registry saw each chunk exactly once: nothing before the drop was sent again");
      t.equal(plainReg.count("POST", /^\/v2\/chunked\/drop\/blobs\/uploads\/$/, 202), 2, "one upload session per blob: the session was resumed, not restarted");
      const out = path.join(tmp.path, "skopeo-big");
      await skopeo(["copy", "--preserve-digests", "--dest-oci-accept-uncompressed-layers", "--src-tls-verify=false", "--src-creds", `${USER}:${PASSWORD}`, `docker://${plainReg.host}/chunked/drop:1`, `oci:${out}:x`]);
      t.ok(readFileSync(path.join(out, "blobs/sha256", w.layerDigests[0]!.slice(7))).equals(layerTar), "skopeo copies the layer back out byte for byte");
    });

    // --- push failures ------------------------------------------------------------------
    await t.test("push failures: one line, a documented exit code, nothing half-written", async (t) => {
      const tagGone = async (ref: string) =>
        skopeo(["inspect", ...creds, "--raw", `docker://${ref}`]).then(
          () => false,
          (e: Error) => /manifest unknown|not found|MANIFEST_UNKNOWN/i.test(e.message),
        );
      const before = uploads(basicReg, "hello");

      const wrong = await n2c(["push", hello.archive, "--ref", `${basicReg.host}/hello:wrongpw`], {
        ...pushEnv,
        DOCKER_CONFIG: dockerConfig(path.join(tmp.path, "docker-wrong"), { [basicReg.host]: `${USER}:wrong` }),
      });
      failsWith(t, wrong, 3, new RegExp(`authentication to ${basicReg.host} failed as ${USER}: UNAUTHORIZED: authentication required`), "wrong password (basic)");
      t.ok(await tagGone(`${basicReg.host}/hello:wrongpw`), "wrong password: no tag was written");
      t.equal(uploads(basicReg, "hello"), before, "wrong password: no upload was started");

      const none = await n2c(["push", hello.archive, "--ref", `${basicReg.host}/hello:nocreds`], { ...pushEnv, DOCKER_CONFIG: path.join(tmp.path, "docker-empty") });
      failsWith(t, none, 3, /requires credentials and the docker config has none for it/, "no credentials");

      const asked = issuer!.requests.length;
      const wrongToken = await n2c(["push", hello.archive, "--ref", `${tokenReg.host}/hello:wrongpw`, "--plain-http"], {
        ...pushEnv,
        DOCKER_CONFIG: dockerConfig(path.join(tmp.path, "docker-wrong-token"), { [tokenReg.host]: `${USER}:wrong` }),
      });
      failsWith(t, wrongToken, 3, /authentication to 127\.0\.0\.1:\d+ failed as nixuser: the token service 127\.0\.0\.1:\d+ answered HTTP 401/, "wrong password (token)");
      t.ok(issuer!.requests.slice(asked).every((q) => !q.authorized), "the token service refused the wrong password");

      const closed = await freePort();
      const down = await n2c(["push", hello.archive, "--ref", `127.0.0.1:${closed}/hello:latest`, "--plain-http"], pushEnv);
      failsWith(t, down, 4, new RegExp(`^nix2container: cannot reach registry 127\\.0\\.0\\.1:${closed}: ECONNREFUSED`), "registry down");
      t.ok(down.ms < 10_000, `registry down: fails fast (${down.ms} ms)`);

      const unknown = await n2c(["push", hello.archive, "--ref", "no-such-registry.invalid:5000/hello:latest"], pushEnv);
      failsWith(t, unknown, 4, /cannot reach registry no-such-registry\.invalid:5000: (ENOTFOUND|EAI_AGAIN) /, "unknown host");

      const broken = await n2c(["push", hello.archive, "--ref", `${brokenReg.host}/hello:latest`, "--plain-http"], pushEnv);
      failsWith(t, broken, 4, /pushing the config sha256:[0-9a-f]{64}: giving up after 5 attempts: 127\.0\.0\.1:\d+ answered HEAD \/v2\/hello\/blobs\/sha256:[0-9a-f]{64} with HTTP 500/, "a registry answering 500");
      t.equal(brokenReg.count("HEAD", /^\/v2\/hello\/blobs\//, 500), 5, "5 attempts reached the registry");
      t.ok(broken.ms >= 3_500, `with backoff between them (${broken.ms} ms >= 0.25+0.5+1+2 s)`);

      // A manifest media type distribution 2.8 does not know (the withdrawn OCI artifact manifest): 400 MANIFEST_INVALID.
      const artifact = { ...structuredClone(built.manifest), mediaType: "application/vnd.oci.artifact.manifest.v1+json" };
      const artifactArchive = path.join(imagesDir, "artifact.tar");
      await writeRawArchive(artifactArchive, artifact, built.blobs, "example.com/artifact:1");
      const refused = await n2c(["push", artifactArchive, "--ref", `${basicReg.host}/refused:v1`], pushEnv);
      failsWith(t, refused, 5, new RegExp(`registry ${basicReg.host} refused the manifest for refused:v1: MANIFEST_INVALID: manifest invalid$`), "manifest refused");
      t.ok(await tagGone(`${basicReg.host}/refused:v1`), "manifest refused: no tag was written");
      t.equal(basicReg.count("PUT", /^\/v2\/refused\/manifests\/v1$/, 400), 1, "manifest refused: one attempt (a 4xx is not retried)");

      // A layer descriptor with a non-http URL: distribution fails the manifest with a 500,
      // which is retried like any 5xx and then reported with the registry's error codes.
      const withUrl = structuredClone(built.manifest);
      withUrl.layers[0]!.urls = ["ftp://example.com/layer"];
      const urlArchive = path.join(imagesDir, "with-url.tar");
      await writeRawArchive(urlArchive, withUrl, built.blobs, "example.com/with-url:1");
      const failing = await n2c(["push", urlArchive, "--ref", `${basicReg.host}/refused:v2`], pushEnv);
      failsWith(t, failing, 4, /pushing the manifest: giving up after 5 attempts: .*HTTP 500 .*MANIFEST_BLOB_UNKNOWN: blob unknown to registry/, "manifest failing with 500");
      t.ok(await tagGone(`${basicReg.host}/refused:v2`), "manifest failing with 500: no tag was written");

      const badRef = await n2c(["push", hello.archive, "--ref", "127.0.0.1:5000/Hello:latest"], pushEnv);
      failsWith(t, badRef, 2, /invalid image reference "127\.0\.0\.1:5000\/Hello:latest": the repository must be lowercase/, "an invalid reference");
      const nixRef = await n2c(["push", hello.archive, "--ref", hello.ref], pushEnv);
      failsWith(t, nixRef, 2, /a nix:0 reference names an archive in the Nix store, not a registry/, "a nix:0 reference");
    });

    // --- build failures ------------------------------------------------------------------
    await t.test("build failures: one line, exit 2, no archive", async (t) => {
      const dir = path.join(tmp.path, "bad-build");
      mkdirSync(dir, { recursive: true });
      const config = path.join(dir, "config.json");
      writeFileSync(config, JSON.stringify({ Entrypoint: [`${f.hello}/bin/hello`] }));
      const missingPath = `/nix/store/${"0".repeat(32)}-not-built`;
      const cases: { name: string; config: string; closure: string; want: RegExp }[] = [
        { name: "missing closure path", config, closure: `${f.hello}\n${missingPath}\n`, want: new RegExp(`store path ${missingPath} is in the closure but not in the store`) },
        { name: "non-store path in the closure", config, closure: `${f.hello}\n/etc/passwd\n`, want: /closure file .*, line 2: .*\/etc\/passwd/ },
        { name: "unreadable config", config: path.join(dir, "no-such-config.json"), closure: `${f.hello}\n`, want: /cannot read image config .*no-such-config\.json: ENOENT/ },
        { name: "config that is a directory", config: dir, closure: `${f.hello}\n`, want: /cannot read image config .*: EISDIR/ },
      ];
      for (const c of cases) {
        const closure = path.join(dir, `closure-${c.name.replace(/\W+/g, "-")}`);
        writeFileSync(closure, c.closure);
        const out = path.join(dir, `${c.name.replace(/\W+/g, "-")}.tar`);
        const r = await n2c(["build", "--config", c.config, "--closure", closure, out]);
        failsWith(t, r, 2, c.want, c.name);
        t.notOk(existsSync(out), `${c.name}: no archive written`);
      }
      t.same(entries(dir).filter((e) => e.endsWith(".tar") || e.includes(".tmp-")), [], "no archive and no temporary file left");
    });

    // --- load ----------------------------------------------------------------------------
    const loadEnv = { CONTAINERD_ADDRESS: c.address, CONTAINERD_NAMESPACE: NS.load };

    await t.test("nix2container load: no registry, a fresh namespace, labels reach the snapshotter", async (t) => {
      const rootsBefore = entries(path.join(snRoot, "gcroots"));
      const r = await n2c(["load", hello.archive], loadEnv);
      t.equal(r.code, 0, `load exits 0 (${r.stderr.trim()})`);
      t.match(r.stdout, new RegExp(`^loaded ${hello.ref.replace(/[.]/g, "\\.")} ${built.manifestDigest}: 3 blobs written, 0 present; 1 layers unpacked, 0 present$`, "m"), "summary line");
      t.match(await ctr(NS.load, ["images", "ls"]), new RegExp(`${hello.ref.replace(/[.]/g, "\\.")}\\s+\\S+\\s+${built.manifestDigest}`), "the image record points at our manifest");
      t.equal((await ctr(NS.load, ["leases", "ls", "-q"])).trim(), "", "no lease left");
      const snaps = await snapshotsOf(NS.load);
      t.equal(snaps.length, 1, "our daemon holds one snapshot for the namespace");
      t.equal(snaps[0]?.labels[LAYER_LABEL], "true", "with the nix-layer label");
      t.equal(snaps[0]?.labels[REF_LABEL], chainId, "and the chain ID as containerd.io/snapshot.ref");
      t.same(
        Object.entries(snaps[0]?.labels ?? {}).filter(([k]) => k.startsWith(PATH_LABEL)).map(([, v]) => v).sort(),
        helloClosure,
        "and every store path label",
      );
      const newRoots = entries(path.join(snRoot, "gcroots")).filter((x) => !rootsBefore.includes(x));
      t.equal(newRoots.length, 1, "one new GC root directory");
      t.ok(layerStorePaths(snRoot, newRoots[0] ?? "none"), "a ready nix layer with its store paths recorded");

      const content = await ctr(NS.load, ["content", "ls"]);
      t.match(content, new RegExp(`${built.manifestDigest}.*containerd\\.io/gc\\.ref\\.content\\.config=${built.manifest.config.digest}`), "manifest labelled for the GC: config");
      t.match(content, new RegExp(`${built.manifestDigest}.*containerd\\.io/gc\\.ref\\.content\\.l\\.0=${built.manifest.layers[0]!.digest}`), "manifest labelled for the GC: layer");
      t.match(content, new RegExp(`${built.manifest.config.digest}.*containerd\\.io/gc\\.ref\\.snapshot\\.nix=${chainId}`), "config labelled with the top snapshot");
      t.match(content, new RegExp(`${built.manifest.layers[0]!.digest}.*containerd\\.io/uncompressed=${diffId}`), "layer labelled with its diff ID");

      t.equal(await ctr(NS.load, ["run", "--rm", "--snapshotter", "nix", hello.ref, newId("loaded")]), "Hello, world!\n", "ctr run prints Hello, world!");

      // A garbage collection now must keep everything: only the labels hold it.
      const lease = (await ctr(NS.load, ["leases", "create"])).trim().split(/\s+/)[0]!;
      await ctr(NS.load, ["leases", "rm", "--sync", lease]);
      t.equal((await snapshotsOf(NS.load)).length, 1, "after a forced GC the snapshot is still there");
      t.equal((await ctr(NS.load, ["content", "ls", "-q"])).split("\n").filter(Boolean).length, 3, "and the 3 blobs");
      t.equal(await ctr(NS.load, ["run", "--rm", "--snapshotter", "nix", hello.ref, newId("after-gc")]), "Hello, world!\n", "and the image still runs");

      const again = await n2c(["load", hello.archive, "--address", c.address, "--namespace", NS.load, "--snapshotter", "nix"]);
      t.equal(again.code, 0, "loading again exits 0");
      t.match(again.stdout, /: 0 blobs written, 3 present; 0 layers unpacked, 1 present$/m, "and writes and unpacks nothing");
      t.equal((await snapshotsOf(NS.load)).length, 1, "still one snapshot");

      const renamed = await n2c(["load", hello.archive, "--ref", `example.com/renamed/hello:${suffix}`], loadEnv);
      t.equal(renamed.code, 0, "loading under another name (--ref) exits 0");
      t.match(await ctr(NS.load, ["images", "ls"]), new RegExp(`^example\\.com/renamed/hello:${suffix}\\s+\\S+\\s+${built.manifestDigest}`, "m"), "a second image record, same manifest");
      t.equal((await snapshotsOf(NS.load)).length, 1, "sharing the one snapshot");
    });

    await t.test("on a terminal, load shows progress in place", async (t) => {
      const cmd = [process.execPath, NIX2CONTAINER_BIN, "load", hello.archive, "--ref", `example.com/tty/hello:${suffix}`].map((a) => `'${a}'`).join(" ");
      const { stdout } = await run("script", ["-qec", cmd, "/dev/null"], { env: { ...process.env, ...loadEnv }, timeout: 120_000 });
      t.match(stdout, /\r\x1b\[Kloading 0\/3 blobs, 0 B \/ \d/, "one line drawn in place: blobs and bytes of the total");
      t.match(stdout, /\r\x1b\[K(wrote|have) layer 1\/1 sha256:/, "finished blobs get a line of their own above it");
      t.match(stdout, /loaded example\.com\/tty\/hello/, "and the summary");
      const plain = await n2c(["load", hello.archive, "--ref", `example.com/tty/hello:${suffix}`], loadEnv);
      t.notMatch(plain.stdout, /\x1b\[/, "not on a terminal: no control sequences");
      t.match(plain.stdout, /^have layer 1\/1 sha256:/m, "but the same log lines");
      await ctr(NS.load, ["images", "rm", `example.com/tty/hello:${suffix}`]);
    });

    await t.test("two loads at once into a fresh namespace both succeed with one snapshot", async (t) => {
      const env = { CONTAINERD_ADDRESS: c.address, CONTAINERD_NAMESPACE: NS.race };
      const [a, b] = await Promise.all([n2c(["load", hello.archive], env), n2c(["load", hello.archive], env)]);
      t.equal(a.code, 0, `first load exits 0 (${a.stderr.trim()})`);
      t.equal(b.code, 0, `second load exits 0 (${b.stderr.trim()})`);
      t.comment(`summaries: ${[a, b].map((r) => r.stdout.trim().split("\n").pop()).join(" | ")}`);
      const viaContainerd = new SnapshotsClient({ address: c.address, snapshotter: "nix", namespace: NS.race });
      try {
        t.same((await listAll(viaContainerd)).map((i) => `${i.kind} ${i.name}`), [`committed ${chainId}`], "containerd holds one snapshot: the chain, committed");
      } finally {
        await viaContainerd.close();
      }
      // A loser's extraction snapshot is removed from containerd's metadata at
      // once but from the backend only by the next GC (metadata/snapshot.go).
      const ours = await snapshotsOf(NS.race);
      t.equal(ours.filter((i) => i.kind === "committed").length, 1, `our daemon holds one committed snapshot (${ours.map((i) => i.kind).join(", ")})`);
      t.equal((await ctr(NS.race, ["leases", "ls", "-q"])).trim(), "", "no lease left");
      t.equal(await ctr(NS.race, ["run", "--rm", "--snapshotter", "nix", hello.ref, newId("race")]), "Hello, world!\n", "the image runs");
      await ctr(NS.race, ["images", "rm", "--sync", hello.ref]);
      t.same((await snapshotsOf(NS.race)).map((i) => i.name), [], "and is collected with its image");
    });

    await t.test("a load that fails midway leaves nothing behind", async (t) => {
      const ref = `example.com/pushload/bad:${suffix}`;
      const archive = path.join(imagesDir, "bad.tar");
      await writeImageArchive(
        {
          layers: [
            { tar: await buildLayer([{ type: "file", path: "etc/base", content: `base ${suffix}\n` }]) },
            { tar: await buildLayer([{ type: "dir", path: "nix/store", mode: 0o755 }]), annotations: { [LAYER_LABEL]: "true", [`${PATH_LABEL}0`]: "/etc" } },
          ],
          config: { Entrypoint: ["/bin/sh"] },
          ref,
        },
        archive,
      );
      const daemonBefore = (await listAll(direct!)).length;
      const r = await n2c(["load", archive, "--address", c.address, "--namespace", NS.bad]);
      failsWith(t, r, 2, /unpacking layer 2\/2 \(sha256:[0-9a-f]{64}\) into nix: label containerd\.io\/snapshot\/nix-store-path\.0: invalid store path "\/etc": not in \/nix\/store/, "bad second layer");
      t.match(r.stdout, /^unpacked layer 1\/2 /m, "the first layer had been unpacked");
      t.equal((await ctr(NS.bad, ["images", "ls", "-q"])).trim(), "", "no image record");
      t.equal((await ctr(NS.bad, ["leases", "ls", "-q"])).trim(), "", "no lease");
      t.equal((await ctr(NS.bad, ["content", "ls", "-q"])).trim(), "", "no content: the GC took every blob");
      // The lease was deleted with sync; give the snapshotter's removal a bounded grace anyway.
      let left = await snapshotsOf(NS.bad);
      for (let i = 0; i < 40 && left.length > 0; i++) {
        await sleep(250);
        left = await snapshotsOf(NS.bad);
      }
      t.same(left.map((i) => `${i.kind} ${i.name}`), [], "our daemon holds no snapshot of the failed load");
      t.equal((await listAll(direct!)).length, daemonBefore, "nor any other new one");
      const viaContainerd = new SnapshotsClient({ address: c.address, snapshotter: "nix", namespace: NS.bad });
      try {
        t.same(await listAll(viaContainerd), [], "containerd's snapshot metadata for the namespace is empty");
      } finally {
        await viaContainerd.close();
      }
    });

    await t.test("load failures without containerd, and bad archives", async (t) => {
      const gone = await n2c(["load", hello.archive, "--address", path.join(tmp.path, "no-such.sock")]);
      failsWith(t, gone, 1, /cannot reach containerd at .*no-such\.sock/, "containerd not running");
      const notArchive = path.join(imagesDir, "not-an-archive.tar");
      writeFileSync(notArchive, "hello");
      const bad = await n2c(["load", notArchive, "--address", c.address, "--namespace", NS.bad]);
      t.not(bad.code, 0, "a file that is no archive fails");
      t.equal(bad.stderr.trim().split("\n").length, 1, `with one line (${bad.stderr.trim()})`);
    });

    await t.test("fromImage: the base's layers go first, byte for byte, and the image runs with both", async (t) => {
      const dir = path.join(imagesDir, "from");
      mkdirSync(dir, { recursive: true });
      const baseLayers: LayerEntry[][] = [
        [
          { type: "dir", path: "bin", mode: 0o755 },
          { type: "file", path: "bin/busybox", content: readFileSync("/bin/busybox"), mode: 0o755 },
          { type: "symlink", path: "bin/sh", target: "busybox" },
        ],
        [{ type: "file", path: "etc/base-file", content: `from the base ${suffix}\n` }],
      ];
      const baseConfig = { Env: ["PATH=/bin", "BASE=base"], Cmd: ["/bin/sh"], Labels: { "org.example.base": "yes" } };
      const dockerBase = path.join(dir, "base-docker.tar");
      const baseDigests = await writeDockerArchive(dockerBase, { layers: baseLayers, config: baseConfig, repoTag: `example.com/base:${suffix}` });
      const configFile = path.join(dir, "config.json");
      writeFileSync(configFile, JSON.stringify({ Entrypoint: [`${f.hello}/bin/hello`], Env: ["PATH=/bin:/usr/bin", "NIX=nix"], Labels: { "org.example.own": "yes" } }));
      const closureFile = path.join(f["hello-closure"], "store-paths");
      const ref = `example.com/pushload/from:${suffix}`;
      const build = (base: string, out: string) => n2c(["build", "--config", configFile, "--closure", closureFile, "--from-image", base, "--ref", ref, out]);

      const out = path.join(dir, "derived.tar");
      const r = await build(dockerBase, out);
      t.equal(r.code, 0, `build --from-image a docker-archive exits 0 (${r.stderr.trim()})`);
      const img = await readImageArchive(out);
      t.same(img.manifest.layers.map((l) => l.digest).slice(0, 2), baseDigests, "the base's two layers come first, with the base's own digests");
      t.same(img.manifest.layers.map((l) => l.mediaType), ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+gzip"], "as OCI gzip layers");
      t.same(img.manifest.layers.map((l) => l.annotations?.[LAYER_LABEL] ?? null), [null, null, "true"], "only the last layer is a nix layer");
      t.same(img.config.config?.Env, ["PATH=/bin:/usr/bin", "BASE=base", "NIX=nix"], "Env merged by name: ours replaces PATH, the base's BASE stays");
      t.equal(img.config.config?.Cmd, undefined, "our Entrypoint drops the base's Cmd");
      t.same(img.config.config?.Labels, { "org.example.base": "yes", "org.example.own": "yes" }, "labels are the union");
      t.equal(img.config.history?.length, 3, "the base's history plus one entry for the nix layer");

      const again = path.join(dir, "derived-again.tar");
      t.equal((await build(dockerBase, again)).code, 0, "building again exits 0");
      t.ok(readFileSync(again).equals(readFileSync(out)), "and gives a byte-identical archive");

      const env = { CONTAINERD_ADDRESS: c.address, CONTAINERD_NAMESPACE: NS.from };
      const loaded = await n2c(["load", out], env);
      t.equal(loaded.code, 0, `load exits 0 (${loaded.stderr.trim()})`);
      t.match(loaded.stdout, /: 5 blobs written, 0 present; 3 layers unpacked, 0 present$/m, "three layers unpacked");
      const runIn = (args: string[]) => ctr(NS.from, ["run", "--rm", "--snapshotter", "nix", ref, newId("from"), ...args]);
      t.equal(await runIn([]), "Hello, world!\n", "the entrypoint from the nix layer prints Hello, world!");
      t.equal(await runIn(["/bin/sh", "-c", "cat /etc/base-file; echo $BASE $NIX"]), `from the base ${suffix}\nbase nix\n`, "the base's files and both images' Env are there");
      const store = await runIn(["/bin/busybox", "ls", "-1A", "/nix/store"]);
      t.same(store.split("\n").filter(Boolean).map((b) => `/nix/store/${b}`).sort(), helloClosure, "/nix/store holds the nix layer's closure");
      const snaps = await snapshotsOf(NS.from);
      t.equal(snaps.filter((i) => i.kind === "committed").length, 3, "three committed snapshots");
      t.equal(snaps.filter((i) => i.labels[LAYER_LABEL] === "true").length, 1, "one of them the nix layer");

      // An OCI layout base with uncompressed layers, as `skopeo copy oci-archive:` may hold.
      const ociBase = path.join(dir, "base-oci.tar");
      const ociWritten = await writeImageArchive(
        { layers: await Promise.all(baseLayers.map(async (l) => ({ tar: await buildLayer(l), compress: false }))), config: baseConfig, ref: `example.com/base-oci:${suffix}` },
        ociBase,
      );
      const fromOci = path.join(dir, "derived-oci.tar");
      const r2 = await build(ociBase, fromOci);
      t.equal(r2.code, 0, `build --from-image an OCI layout exits 0 (${r2.stderr.trim()})`);
      const img2 = await readImageArchive(fromOci);
      t.same(img2.manifest.layers.slice(0, 2).map((l) => [l.mediaType, l.digest]), ociWritten.layerDigests.map((d) => ["application/vnd.oci.image.layer.v1.tar", d]), "uncompressed base layers stay uncompressed");
      t.same(img2.config.rootfs.diff_ids, img.config.rootfs.diff_ids, "same diff_ids as from the compressed base: the same filesystem");

      // A registry that has the base already is sent only what is new.
      const baseRef = `${basicReg.host}/fromimg:base`;
      const derivedRef = `${basicReg.host}/fromimg:derived`;
      const pushedBase = await n2c(["push", ociBase, "--ref", baseRef], pushEnv);
      t.equal(pushedBase.code, 0, `pushing the base exits 0 (${pushedBase.stderr.trim()})`);
      const pushedDerived = await n2c(["push", fromOci, "--ref", derivedRef], pushEnv);
      t.equal(pushedDerived.code, 0, `pushing the derived image exits 0 (${pushedDerived.stderr.trim()})`);
      // The nix layer is hello's, pushed to another repository earlier: mounted from there.
      t.match(pushedDerived.stdout, /uploaded 1 of 4 blobs .*, 1 mounted, 2 already present$/m, "only the config is uploaded; the base layers are already there, the nix layer is mounted");
      await ctr(NS.from, ["images", "rm", "--sync", ref]);
      t.same((await snapshotsOf(NS.from)).map((i) => i.name), [], "removing the image collects all three snapshots");
    });

    await t.test("fromImage failures: one line, exit 2, no archive", async (t) => {
      const dir = path.join(imagesDir, "from-bad");
      mkdirSync(dir, { recursive: true });
      const configFile = path.join(dir, "config.json");
      writeFileSync(configFile, JSON.stringify({ Entrypoint: [`${f.hello}/bin/hello`] }));
      const notArchive = path.join(dir, "not-an-archive.tar");
      writeFileSync(notArchive, "this is not a tar file at all");
      const foreign = path.join(dir, "foreign-arch.tar");
      const otherArch = goArch() === "arm64" ? "amd64" : "arm64";
      await writeDockerArchive(foreign, { layers: [[{ type: "file", path: "etc/x", content: "x" }]], config: {}, repoTag: "example.com/arm:1", architecture: otherArch });
      const cases: { name: string; base: string; want: RegExp }[] = [
        { name: "missing base", base: path.join(dir, "no-such-base.tar"), want: /base image .*no-such-base\.tar: .*ENOENT/ },
        { name: "not an archive", base: notArchive, want: /base image .*not-an-archive\.tar: / },
        { name: "another architecture", base: foreign, want: new RegExp(`base image .*foreign-arch\\.tar: is for linux/${otherArch}, the image is built for linux/${goArch()}`) },
      ];
      for (const c of cases) {
        const out = path.join(dir, `out-${c.name.replace(/\W+/g, "-")}.tar`);
        const r = await n2c(["build", "--config", configFile, "--closure", path.join(f["hello-closure"], "store-paths"), "--from-image", c.base, out]);
        failsWith(t, r, 2, c.want, c.name);
        t.notOk(existsSync(out), `${c.name}: no archive written`);
      }
    });

    await t.test("removing the images lets containerd's GC take our snapshots", async (t) => {
      await ctr(NS.load, ["images", "rm", "--sync", hello.ref]);
      t.equal((await snapshotsOf(NS.load)).length, 1, "while another image record needs it, the snapshot stays");
      await ctr(NS.load, ["images", "rm", "--sync", `example.com/renamed/hello:${suffix}`]);
      await ctr(NS.pull, ["images", "rm", "--sync", basicRef]);
      let left: Info[] = [];
      for (let i = 0; i < 40; i++) {
        left = [...(await snapshotsOf(NS.load)), ...(await snapshotsOf(NS.pull))];
        if (left.length === 0) break;
        await sleep(250);
      }
      t.same(left.map((i) => i.name), [], "no snapshot of ours is left for either namespace");
      t.same(entries(path.join(snRoot, "gcroots")), [], "no GC root directory is left");
      t.equal(statSync(path.join(snRoot, "snapshots")).isDirectory(), true, "the snapshots directory exists");
      t.same(entries(path.join(snRoot, "snapshots")), [], "and is empty");
    });
  });
}
