/**
 * The pure parts of push and load: docker config credentials,
 * WWW-Authenticate challenges, registry error bodies, chain IDs and the
 * labels a layer's snapshot gets. (The protocols themselves are exercised
 * against a real registry and containerd in test/integration/push-load.)
 */
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import t from "tap";
import { chainIds, snapshotLabels } from "../../src/containerd/unpack.js";
import { sha256Digest } from "../../src/digest.js";
import { registryErrorText } from "../../src/image/push.js";
import { credentialsAllowed, dockerConfigDir, loadCredentials, parseChallenge } from "../../src/image/registry-auth.js";
import { tempDir } from "../lib/tmp.js";

t.test("docker config credentials", async (t) => {
  const tmp = tempDir("nix2container-auth-");
  t.teardown(() => tmp.cleanup());
  const dir = path.join(tmp.path, "docker");
  mkdirSync(dir);
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  writeFileSync(
    path.join(dir, "config.json"),
    JSON.stringify({
      auths: {
        "127.0.0.1:5000": { auth: b64("alice:pa:ss") },
        "https://ghcr.io": { auth: b64("bob:token") },
        "https://index.docker.io/v1/": { auth: b64("carol:hub") },
        "plain.example": { username: "dave", password: "pw" },
      },
    }),
  );
  const env = { DOCKER_CONFIG: dir };
  t.equal(dockerConfigDir(env), dir, "DOCKER_CONFIG names the directory");
  t.equal(dockerConfigDir({ HOME: "/home/x" }), "/home/x/.docker", "else ~/.docker");
  t.same(await loadCredentials("127.0.0.1:5000", env), { username: "alice", password: "pa:ss" }, "auth: user:password, split at the first colon");
  t.same(await loadCredentials("ghcr.io", env), { username: "bob", password: "token" }, "keys with a scheme match their host");
  t.same(await loadCredentials("docker.io", env), { username: "carol", password: "hub" }, "Docker Hub's legacy key");
  t.same(await loadCredentials("plain.example", env), { username: "dave", password: "pw" }, "username and password fields");
  t.equal(await loadCredentials("other.example", env), undefined, "none for another registry");
  t.equal(await loadCredentials("127.0.0.1:5000", { DOCKER_CONFIG: path.join(tmp.path, "missing") }), undefined, "no file: no credentials");
  writeFileSync(path.join(dir, "config.json"), "{not json");
  await t.rejects(loadCredentials("x", env), /config\.json is not valid JSON/, "a broken file is an error naming it");
});

t.test("credential helpers: credHelpers, then credsStore, then auths", async (t) => {
  const tmp = tempDir("nix2container-helpers-");
  t.teardown(() => tmp.cleanup());
  const bin = path.join(tmp.path, "bin");
  mkdirSync(bin);
  const asked = path.join(tmp.path, "asked");
  // A helper per behaviour, speaking docker-credential-helpers' protocol.
  const helper = (name: string, body: string) => {
    writeFileSync(path.join(bin, `docker-credential-${name}`), `#!/bin/sh\n[ "$1" = get ] || exit 3\nread -r server\necho "${name} $server" >> ${asked}\n${body}\n`);
    chmodSync(path.join(bin, `docker-credential-${name}`), 0o755);
  };
  helper("store", `echo '{"ServerURL":"'$server'","Username":"from-store","Secret":"s1"}'`);
  helper("special", `echo '{"ServerURL":"'$server'","Username":"from-special","Secret":"s:2"}'`);
  helper("empty", `echo "credentials not found in native keychain"; exit 1`);
  helper("broken", `echo "cannot talk to the keyring" >&2; exit 2`);
  helper("token", `echo '{"Username":"<token>","Secret":"refresh"}'`);
  const dir = path.join(tmp.path, "docker");
  mkdirSync(dir);
  const config = (v: unknown) => writeFileSync(path.join(dir, "config.json"), JSON.stringify(v));
  const env = { DOCKER_CONFIG: dir, PATH: `${bin}:/usr/bin:/bin` };
  const b64 = (x: string) => Buffer.from(x).toString("base64");

  config({ auths: { "r.example": { auth: b64("file:pw") }, "q.example": {} }, credsStore: "store", credHelpers: { "s.example": "special", "n.example": "empty", "x.example": "broken", "t.example": "token" } });
  t.same(await loadCredentials("s.example", env), { username: "from-special", password: "s:2" }, "credHelpers names the helper for its registry");
  t.same(await loadCredentials("r.example", env), { username: "from-store", password: "s1" }, "credsStore wins over auths (which then holds placeholders)");
  t.same(await loadCredentials("docker.io", env), { username: "from-store", password: "s1" }, "Docker Hub through the store");
  t.equal(await loadCredentials("n.example", env), undefined, "'credentials not found' is no credentials");
  await t.rejects(loadCredentials("x.example", env), /credential helper docker-credential-broken failed for x\.example \(exit 2\): cannot talk to the keyring/, "a failing helper is one line naming it");
  await t.rejects(loadCredentials("t.example", env), /identity token/, "identity tokens are refused by name");
  t.same(
    readFileSync(asked, "utf8").trim().split("\n"),
    ["special s.example", "store r.example", "store https://index.docker.io/v1/", "empty n.example", "broken x.example", "token t.example"],
    "each helper was asked with the server URL on stdin (Docker Hub's legacy URL for docker.io)",
  );
  config({ credsStore: "missing" });
  await t.rejects(loadCredentials("r.example", env), /credential helper docker-credential-missing \(from the docker config\) is not on PATH/);
  config({ credsStore: "../../bin/sh" });
  await t.rejects(loadCredentials("r.example", env), /invalid credential helper name/, "a helper name cannot name a path");
  config({ auths: { "r.example": { auth: b64("file:pw") } } });
  t.same(await loadCredentials("r.example", env), { username: "file", password: "pw" }, "without helpers, auths");
});

t.test("where credentials may go", async (t) => {
  const reg = new URL("http://127.0.0.1:5000");
  const tls = new URL("https://registry.example");
  t.ok(credentialsAllowed(new URL("http://127.0.0.1:5000/v2/x/blobs/uploads/u"), reg, "registry"), "the registry's own origin");
  t.notOk(credentialsAllowed(new URL("http://127.0.0.1:5001/v2/x"), reg, "registry"), "not another port");
  t.notOk(credentialsAllowed(new URL("http://127.0.0.2:5000/v2/x"), reg, "registry"), "not another host");
  t.notOk(credentialsAllowed(new URL("https://blobs.example/upload"), tls, "registry"), "not an upload host elsewhere, even over https");
  t.notOk(credentialsAllowed(new URL("http://registry.example/v2/"), tls, "registry"), "not the same host over plain http when the registry speaks https");
  t.ok(credentialsAllowed(new URL("https://auth.example/token"), tls, "realm"), "a token realm over https");
  t.ok(credentialsAllowed(new URL("http://127.0.0.1:5000/token"), reg, "realm"), "a realm on the registry's own origin");
  t.notOk(credentialsAllowed(new URL("http://127.0.0.2:6000/token"), reg, "realm"), "not a plain-http realm on another host");
  t.notOk(credentialsAllowed(new URL("http://auth.example/token"), tls, "realm"), "nor one behind an https registry");
});

t.test("WWW-Authenticate challenges", async (t) => {
  t.same(parseChallenge('Basic realm="registry"'), { scheme: "basic", params: { realm: "registry" } });
  t.same(
    parseChallenge('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'),
    { scheme: "bearer", params: { realm: "https://auth.example/token", service: "registry.example", scope: "repository:a/b:pull,push" } },
    "quoted values with commas",
  );
  t.same(parseChallenge("Bearer realm=https://x/t, service=svc"), { scheme: "bearer", params: { realm: "https://x/t", service: "svc" } }, "unquoted values");
  t.same(parseChallenge('Bearer realm="a\\"b"'), { scheme: "bearer", params: { realm: 'a"b' } }, "escaped quotes");
});

t.test("registry error bodies", async (t) => {
  const body = (v: unknown) => Buffer.from(JSON.stringify(v));
  t.equal(registryErrorText(body({ errors: [{ code: "MANIFEST_INVALID", message: "manifest invalid", detail: {} }] })), "MANIFEST_INVALID: manifest invalid");
  t.equal(
    registryErrorText(body({ errors: [{ code: "MANIFEST_BLOB_UNKNOWN", message: "blob unknown to registry", detail: "sha256:x" }, { code: "DENIED", message: "no" }] })),
    "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:x); DENIED: no",
  );
  t.equal(registryErrorText(Buffer.from("<html>")), undefined, "not JSON");
  t.equal(registryErrorText(body({ errors: [] })), undefined, "no errors");
});

t.test("chain IDs and snapshot labels", async (t) => {
  const d = [sha256Digest("a"), sha256Digest("b"), sha256Digest("c")];
  const c = chainIds(d);
  t.equal(c[0], d[0], "the first chain ID is the first diff ID");
  t.equal(c[1], sha256Digest(`${d[0]} ${d[1]}`), "then sha256 of '<parent> <diff ID>'");
  t.equal(c[2], sha256Digest(`${c[1]} ${d[2]}`));
  t.same(chainIds([]), []);
  t.same(
    snapshotLabels({ "containerd.io/snapshot/nix-layer": "true", "org.opencontainers.image.title": "x", "containerd.io/snapshotter": "no" }, "sha256:c"),
    { "containerd.io/snapshot/nix-layer": "true", "containerd.io/snapshot.ref": "sha256:c" },
    "only containerd.io/snapshot/ annotations pass, plus the chain ID",
  );
});
