/**
 * Image references (src/image/reference.ts): the one split every parser
 * shares, default tags for archive names, registry references for push,
 * and nix:0 references resolved from the Nix store.
 */
import t from "tap";
import {
  defaultNixRef,
  isNixImageRef,
  parseNixImageRef,
  parseRegistryRef,
  refTag,
  splitReference,
  withDefaultTag,
} from "../../src/image/reference.js";

const DIGEST = "sha256:" + "0".repeat(64);
const HASH = "0".repeat(32);

t.test("splitReference cuts name, tag and digest", async (t) => {
  t.same(splitReference("localhost:5000/foo"), { name: "localhost:5000/foo" }, "a port is not a tag");
  t.same(splitReference("localhost:5000/foo:1"), { name: "localhost:5000/foo", tag: "1" });
  t.same(splitReference(`foo:1@${DIGEST}`), { name: "foo", tag: "1", digest: DIGEST });
  t.same(splitReference("foo:"), { name: "foo", tag: "" }, "an empty tag is still a tag");
});

t.test("refTag and withDefaultTag follow containerd's reference rules", async (t) => {
  t.equal(refTag("docker.io/library/foo:latest"), "latest");
  t.equal(refTag("nix:0/nix/store/xxx-foo.tar:latest"), "latest");
  t.equal(refTag("localhost:5000/foo"), undefined, "a port is not a tag");
  t.equal(refTag(`foo:1@${DIGEST}`), "1");
  t.equal(withDefaultTag("docker.io/library/foo"), "docker.io/library/foo:latest");
  t.equal(withDefaultTag("localhost:5000/foo"), "localhost:5000/foo:latest");
  t.equal(withDefaultTag(`foo@${DIGEST}`), `foo@${DIGEST}`);
  t.throws(() => withDefaultTag("has space"), { name: "InvalidArgumentError", message: /invalid image reference "has space": it contains white space/ });
  t.throws(() => withDefaultTag(""), { name: "InvalidArgumentError", message: /invalid image reference "": it is empty/ });
});

t.test("parseRegistryRef", async (t) => {
  const cases: [string, string, string, string, string][] = [
    // ref, registry, apiHost, repository, reference
    ["127.0.0.1:5000/hello:latest", "127.0.0.1:5000", "127.0.0.1:5000", "hello", "latest"],
    ["127.0.0.1:5000/hello", "127.0.0.1:5000", "127.0.0.1:5000", "hello", "latest"],
    ["localhost/a/b:v1.2-x", "localhost", "localhost", "a/b", "v1.2-x"],
    ["ghcr.io/me/hello:1", "ghcr.io", "ghcr.io", "me/hello", "1"],
    ["hello", "docker.io", "registry-1.docker.io", "library/hello", "latest"],
    ["me/hello:2", "docker.io", "registry-1.docker.io", "me/hello", "2"],
    ["docker.io/redis", "docker.io", "registry-1.docker.io", "library/redis", "latest"],
    ["localhost:5000", "docker.io", "registry-1.docker.io", "library/localhost", "5000"],
    [`r.example:443/x@${DIGEST}`, "r.example:443", "r.example:443", "x", DIGEST],
  ];
  for (const [ref, registry, apiHost, repository, reference] of cases) {
    t.same(parseRegistryRef(ref), { registry, apiHost, repository, reference }, ref);
  }
  const bad: [string, RegExp][] = [
    ["Hello", /the repository must be lowercase/],
    ["127.0.0.1:5000/He llo", /the repository must be lowercase/],
    ["x:bad tag", /invalid tag "bad tag"/],
    ["x:", /invalid tag ""/],
    ["x@sha256:123", /the digest must be sha256:<64 hex digits>/],
    [`x:1@${DIGEST}`, /a tag or a digest, not both/],
    ["nix:0/nix/store/abc-x.tar:latest", /a nix:0 reference names an archive in the Nix store/],
    ["a//b", /the repository must be lowercase/],
  ];
  for (const [ref, why] of bad) {
    t.throws(() => parseRegistryRef(ref), { name: "InvalidArgumentError", message: why }, `refuses ${JSON.stringify(ref)}`);
    try {
      parseRegistryRef(ref);
    } catch (err) {
      t.notMatch((err as Error).message, /\n/, "one line");
      t.match((err as Error).message, `invalid image reference ${JSON.stringify(ref)}`, "quotes the reference");
    }
  }
});

t.test("nix:0 references", async (t) => {
  const archive = `/nix/store/${HASH}-hello.tar`;
  t.equal(defaultNixRef(archive), `nix:0${archive}:latest`);
  t.ok(isNixImageRef(`nix:0${archive}`));
  t.notOk(isNixImageRef("nix:0"), "the prefix alone is no reference");
  t.notOk(isNixImageRef("docker.io/library/hello"));
  t.same(parseNixImageRef(`nix:0${archive}`), { archive, name: `nix:0${archive}:latest` });
  t.same(parseNixImageRef(`nix:0${archive}:latest`), { archive, name: `nix:0${archive}:latest` }, "kubelet's :latest");
  const bad: [string, RegExp][] = [
    ["docker.io/library/hello", /is not a nix image reference/],
    [`nix:0${archive}:v1`, /only the tag "latest" is allowed, and no digest/],
    [`nix:0${archive}@${DIGEST}`, /only the tag "latest" is allowed, and no digest/],
    [`nix:0${archive}:latest:latest`, /only the tag "latest" is allowed, and no digest/],
    ["nix:0/etc/passwd", /not in \/nix\/store/],
    ["nix:0/nix/store/short.tar", /32-character hash/],
    [`nix:0/nix/store/${HASH}-hello`, /must be an image archive/],
    [`nix:0${archive}/inside.tar`, /top-level store path/],
  ];
  for (const [ref, why] of bad) {
    t.throws(() => parseNixImageRef(ref), { name: "InvalidArgumentError", message: why }, `refuses ${JSON.stringify(ref)}`);
  }
});
