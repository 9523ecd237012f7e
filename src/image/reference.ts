/**
 * Image references, parsed in one place: the names archives are written
 * under, the registry references `nix2container push` takes, and the
 * `nix:0/nix/store/...tar` references resolved from the Nix store.
 *
 * Every reference splits the same way (splitReference): an optional
 * "@digest" after the first "@", and an optional tag after the last ":"
 * that comes after the last "/" (so the port in "localhost:5000/foo" is no
 * tag). The parsers below add each use's rules on top. A reference that
 * breaks them is an InvalidArgumentError whose one line quotes it and says
 * what is wrong.
 *
 * Registry references follow the docker/distribution grammar loosely: the
 * first path component is a registry host when it contains "." or ":" or is
 * "localhost" (127.0.0.1:5000/hello:latest, ghcr.io/o/x:1); otherwise the
 * registry is Docker Hub, whose API lives at registry-1.docker.io and whose
 * one-component names live under library/. Tag defaults to "latest".
 */
import path from "node:path";
import { InvalidArgumentError } from "../errors.js";
import { parseStorePath, type StorePath } from "../nix/store-path.js";

/** A reference cut into its parts, unchecked. */
export interface ReferenceParts {
  /** Everything before the tag and digest, e.g. "localhost:5000/foo". */
  name: string;
  /** The text after the tag's ":" (possibly empty), if there is one. */
  tag?: string;
  /** The text after "@", if there is one. */
  digest?: string;
}

export function splitReference(ref: string): ReferenceParts {
  const parts: ReferenceParts = { name: ref };
  const at = ref.indexOf("@");
  if (at !== -1) {
    parts.digest = ref.slice(at + 1);
    parts.name = ref.slice(0, at);
  }
  const colon = parts.name.lastIndexOf(":");
  if (colon > parts.name.lastIndexOf("/")) {
    parts.tag = parts.name.slice(colon + 1);
    parts.name = parts.name.slice(0, colon);
  }
  return parts;
}

function invalid(ref: string, why?: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid image reference ${JSON.stringify(ref)}${why ? `: ${why}` : ""}`);
}

// --- any reference -----------------------------------------------------------

/**
 * The tag of a reference ("latest" in "docker.io/library/foo:latest" and in
 * "nix:0/nix/store/xxx.tar:latest"), ignoring any "@digest". Mirrors
 * containerd's ociReferenceName(), which stores it as
 * org.opencontainers.image.ref.name.
 */
export function refTag(ref: string): string | undefined {
  return splitReference(ref).tag;
}

/**
 * Adds ":latest" to a reference with neither tag nor digest, the default
 * docker and containerd apply; `docker load` rejects untagged RepoTags.
 */
export function withDefaultTag(ref: string): string {
  if (ref === "") throw invalid(ref, "it is empty");
  if (/\s/.test(ref)) throw invalid(ref, "it contains white space");
  const { tag, digest } = splitReference(ref);
  return digest !== undefined || tag !== undefined ? ref : `${ref}:latest`;
}

// --- registry references -----------------------------------------------------

export const DOCKER_HUB = "docker.io";
export const DOCKER_HUB_API_HOST = "registry-1.docker.io";

export interface RegistryRef {
  /** host[:port] as written (docker.io for Docker Hub). */
  registry: string;
  /** The host[:port] the API is served on. */
  apiHost: string;
  /** Repository path, e.g. "hello" or "library/redis". */
  repository: string;
  /** Tag or digest the manifest is put under. */
  reference: string;
}

const REPO_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

export function parseRegistryRef(ref: string): RegistryRef {
  if (isNixImageRef(ref)) throw invalid(ref, "a nix:0 reference names an archive in the Nix store, not a registry; pass REGISTRY/NAME:TAG");
  const { name, tag, digest } = splitReference(ref);
  let reference = "latest";
  if (digest !== undefined) {
    if (!DIGEST.test(digest)) throw invalid(ref, "the digest must be sha256:<64 hex digits>");
    if (tag !== undefined) throw invalid(ref, "give a tag or a digest, not both");
    reference = digest;
  } else if (tag !== undefined) {
    if (!TAG.test(tag)) throw invalid(ref, `invalid tag ${JSON.stringify(tag)}`);
    reference = tag;
  }
  const parts = name.split("/");
  let registry = DOCKER_HUB;
  if (parts.length > 1 && (parts[0]!.includes(".") || parts[0]!.includes(":") || parts[0] === "localhost")) {
    registry = parts.shift()!;
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift("library");
  if (parts.length === 0 || !parts.every((p) => REPO_COMPONENT.test(p))) {
    throw invalid(ref, "the repository must be lowercase components separated by /");
  }
  return { registry, apiHost: registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry, repository: parts.join("/"), reference };
}

// --- nix:0 references --------------------------------------------------------

/** The reference prefix of images resolved from the Nix store (port 0 never collides with a registry). */
export const NIX_REF_PREFIX = "nix:0";

/** The reference an archive built at `archivePath` is named by when none is given. */
export function defaultNixRef(archivePath: string): string {
  return `${NIX_REF_PREFIX}${path.resolve(archivePath)}:latest`;
}

/** A reference resolved from the Nix store: the archive's store path and the canonical name. */
export interface NixImageRef {
  archive: StorePath;
  /** nix:0<archive>:latest, the name the image is stored under. */
  name: string;
}

export function isNixImageRef(ref: string): boolean {
  return ref.startsWith(NIX_REF_PREFIX + "/");
}

/**
 * Parses `nix:0/nix/store/<hash>-<name>.tar`, optionally with `:latest`
 * (kubelet adds it to a reference without a tag). Port 0 cannot be bound,
 * so such a reference never names a real registry.
 */
export function parseNixImageRef(ref: string): NixImageRef {
  if (!isNixImageRef(ref)) throw new InvalidArgumentError(`${JSON.stringify(ref)} is not a nix image reference (nix:0/nix/store/<hash>-<name>.tar)`);
  const { name, tag, digest } = splitReference(ref);
  const p = name.slice(NIX_REF_PREFIX.length);
  if (digest !== undefined || (tag !== undefined && tag !== "latest") || p.includes(":")) {
    throw new InvalidArgumentError(`nix image reference ${JSON.stringify(ref)}: only the tag "latest" is allowed, and no digest`);
  }
  let archive: StorePath;
  try {
    archive = parseStorePath(p);
  } catch (err) {
    throw new InvalidArgumentError(`nix image reference ${JSON.stringify(ref)}: ${(err as Error).message}`);
  }
  if (!archive.endsWith(".tar")) {
    throw new InvalidArgumentError(`nix image reference ${JSON.stringify(ref)}: the store path must be an image archive (<hash>-<name>.tar)`);
  }
  return { archive, name: `${NIX_REF_PREFIX}${archive}:latest` };
}
