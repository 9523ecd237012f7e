/**
 * PullImage for `nix:0/nix/store/...tar`: the image archive is a store
 * path, so "pulling" is realising it with Nix (from the store, or a
 * substituter) and loading it into containerd under that reference, with
 * its layers unpacked by the nix snapshotter. No registry is involved.
 *
 * The daemon every container's mounts depend on runs this, so the load
 * streams the archive's blobs from the file into containerd's content store
 * (load.ts, content.ts): each pull costs a bounded amount of memory however
 * large its layers (base layers of --from-image images included), and
 * concurrent pulls of different images do not add up to their sizes.
 *
 * An archive the Nix store already holds (the common case: the node's
 * configuration or a `nix copy` put it there) is not realised by a
 * nix-store process: the puller opens the file, asks a long-running
 * `nix-store --serve` whether the path is valid, and checks that the file
 * it opened is the one at that path. The open file then keeps the bytes
 * readable until the load is done, whatever Nix's garbage collector does in
 * the meantime (and Nix's collector counts files that processes hold open as
 * roots). Any other case (not valid, not there, a file replaced under us, a
 * failed check) takes the nix-store --realise path, which substitutes what
 * is missing and roots the archive while it loads.
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { type FileHandle, mkdtemp, open, rm, stat } from "node:fs/promises";
import path from "node:path";
import { FailedPreconditionError, NotFoundError, KindedError, UnavailableError } from "../errors.js";
import { parseNixImageRef } from "../image/reference.js";
import type { Logger } from "../log.js";
import { type Realiser, summariseStderr } from "../nix/realise.js";
import type { NixPuller } from "./cri-image.js";

/** Loads an image archive into containerd (namespace, name, snapshotter are the loader's). */
export interface ImageLoader {
  /** `file`, when given, is where to read the archive (an open descriptor's /proc/self/fd path). */
  load(archive: string, opts: { namespace: string; ref: string; file?: string }): Promise<void>;
}

export interface NixImagePullerOptions {
  realiser: Realiser;
  /** Whether an archive is already valid in the Nix store; default a NixServeValidity. */
  validity?: ValidityChecker;
  loader: ImageLoader;
  /** Where the archive is rooted while it loads. */
  scratchDir: string;
  /** The image's id as containerd's CRI reports it, once CRI has seen it. */
  imageId: (ref: string) => Promise<string | undefined>;
  log: Logger;
  /** containerd namespace of Kubernetes images. */
  namespace?: string;
  /** How long to wait for CRI to list a freshly loaded image. */
  settleMs?: number;
}

export class NixImagePuller implements NixPuller {
  /** One pull per reference at a time: concurrent pulls share the work. */
  private readonly inflight = new Map<string, Promise<string>>();

  private readonly validity: ValidityChecker;

  constructor(private readonly o: NixImagePullerOptions) {
    this.validity = o.validity ?? new NixServeValidity();
  }

  async pull(ref: string): Promise<string> {
    const { archive, name } = parseNixImageRef(ref);
    let p = this.inflight.get(name);
    if (!p) {
      p = this.pullOnce(archive, name).finally(() => this.inflight.delete(name));
      this.inflight.set(name, p);
    }
    return p;
  }

  private async pullOnce(archive: string, name: string): Promise<string> {
    const held = await this.openIfValid(archive);
    if (held) {
      try {
        await this.load(archive, name, `/proc/self/fd/${held.fd}`);
      } finally {
        await held.close();
      }
      return await this.waitForId(name);
    }
    const dir = await mkdtemp(path.join(this.o.scratchDir, "pull-"));
    try {
      try {
        await this.o.realiser.realise([archive as never], dir);
      } catch (err) {
        // A Nix daemon that is down is not a missing image: let kubelet retry.
        if (err instanceof UnavailableError) throw err;
        throw new NotFoundError(`image archive ${archive} is not in the Nix store and could not be substituted: ${(err as Error).message}`);
      }
      await this.load(archive, name);
      return await this.waitForId(name);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * The archive opened, if it is a valid store path and the file opened is
   * the one at that path; undefined otherwise (realise it instead).
   */
  private async openIfValid(archive: string): Promise<FileHandle | undefined> {
    let fh: FileHandle;
    try {
      fh = await open(archive, "r");
    } catch {
      return undefined; // not there (or not readable): realising it says why
    }
    try {
      const valid = await this.validity.valid(archive).catch((err: Error) => {
        this.o.log.debug("cannot check the archive's validity; realising it", { archive, error: err.message });
        return false;
      });
      if (valid) {
        // Opened before the check: the same inode means the file read is the valid path's.
        const [held, now] = await Promise.all([fh.stat(), stat(archive)]);
        if (held.isFile() && held.dev === now.dev && held.ino === now.ino) return fh;
      }
    } catch {
      /* replaced or removed meanwhile: realise it */
    }
    await fh.close();
    return undefined;
  }

  private async load(archive: string, name: string, file?: string): Promise<void> {
    this.o.log.info("loading nix image archive", { ref: name, archive });
    try {
      await this.o.loader.load(archive, { namespace: this.o.namespace ?? "k8s.io", ref: name, ...(file ? { file } : {}) });
    } catch (err) {
      if (err instanceof KindedError) throw err;
      throw new FailedPreconditionError(`loading ${archive} into containerd failed: ${(err as Error).message}`);
    }
  }

  /** containerd's CRI learns of the image from an event; give it a moment. */
  private async waitForId(name: string): Promise<string> {
    const deadline = Date.now() + (this.o.settleMs ?? 10_000);
    // CRI usually lists it within a few ms of the image record: ask early, then back off.
    let delay = 5;
    for (;;) {
      const id = await this.o.imageId(name).catch(() => undefined);
      if (id) return id;
      if (Date.now() > deadline) throw new UnavailableError(`containerd's CRI does not list ${name} yet; retry the pull`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(Math.ceil(delay * 1.5), 500);
    }
  }
}

/** Tells whether a store path is valid (registered in the Nix store), without building or substituting it. */
export interface ValidityChecker {
  valid(storePath: string): Promise<boolean>;
}

/** nix-store --serve's protocol (Nix's serve-protocol.hh): little-endian 64-bit words, strings padded to 8 bytes. */
const SERVE_MAGIC_1 = 0x390c9deb;
const SERVE_MAGIC_2 = 0x5452eecb;
/** Protocol 2.5: the oldest whose QueryValidPaths takes the lock and substitute flags as sent here. */
const SERVE_CLIENT_VERSION = 0x205;
const CMD_QUERY_VALID_PATHS = 1;
/** A query that takes longer than this is given up (the caller realises the path instead). */
const QUERY_TIMEOUT_MS = 10_000;
/** An idle nix-store --serve exits after this; the next query starts another. */
const IDLE_MS = 30_000;

function word(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function serveString(s: string): Buffer {
  const data = Buffer.from(s);
  return Buffer.concat([word(data.length), data, Buffer.alloc((8 - (data.length % 8)) % 8)]);
}

/**
 * Asks one long-running `nix-store --serve` whether store paths are valid:
 * the same answer as `nix-store --check-validity`, from whatever store
 * nix-store is configured with, for the cost of a pipe round trip instead
 * of a process. Read-only (no --write): it never locks, roots, builds or
 * substitutes. The process exits when idle, when its stdin closes (this
 * process ending, however it ends), or when a query fails or times out;
 * the next query starts another.
 */
export class NixServeValidity implements ValidityChecker {
  private child: ChildProcessWithoutNullStreams | undefined;
  private input = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private failure: Error | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private idle: NodeJS.Timeout | undefined;

  constructor(private readonly nixStore = "nix-store") {}

  valid(storePath: string): Promise<boolean> {
    const q = this.queue.then(() => this.query(storePath));
    this.queue = q.catch(() => undefined);
    return q;
  }

  /** Stops the process now. */
  close(): void {
    clearTimeout(this.idle);
    const c = this.child;
    this.child = undefined;
    c?.stdin.end();
    c?.kill();
  }

  private async query(storePath: string): Promise<boolean> {
    clearTimeout(this.idle);
    const timer = setTimeout(() => this.fail(new Error(`${this.nixStore} --serve did not answer within ${QUERY_TIMEOUT_MS} ms`)), QUERY_TIMEOUT_MS);
    try {
      if (!this.child) await this.start();
      this.child!.stdin.write(Buffer.concat([word(CMD_QUERY_VALID_PATHS), word(0), word(0), word(1), serveString(storePath)]));
      const n = await this.readWord();
      const valid: string[] = [];
      for (let i = 0; i < n; i++) valid.push(await this.readString());
      return valid.includes(storePath);
    } catch (err) {
      this.close();
      throw err;
    } finally {
      clearTimeout(timer);
      if (this.child) this.idle = setTimeout(() => this.close(), IDLE_MS).unref();
    }
  }

  private async start(): Promise<void> {
    this.input = Buffer.alloc(0);
    this.failure = undefined;
    const child = spawn(this.nixStore, ["--serve"], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      if (this.child !== child) return;
      this.input = Buffer.concat([this.input, d]);
      this.poke();
    });
    child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
    child.once("error", (err) => this.child === child && this.fail(err));
    child.once("close", (code) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.fail(new Error(`${this.nixStore} --serve exited (${code}): ${summariseStderr(stderr)}`));
    });
    child.stdin.on("error", () => undefined); // a dead child: reported by "close"
    // Neither the process nor its pipes keep this process alive.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr] as unknown as { unref?: () => void }[]) s.unref?.();
    child.stdin.write(Buffer.concat([word(SERVE_MAGIC_1), word(SERVE_CLIENT_VERSION)]));
    const magic = await this.readWord();
    if (magic !== SERVE_MAGIC_2) throw new Error(`${this.nixStore} --serve answered ${magic.toString(16)}, not the serve protocol`);
    await this.readWord(); // the server's protocol version
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async take(n: number): Promise<Buffer> {
    while (this.input.length < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.input.subarray(0, n);
    this.input = this.input.subarray(n);
    return out;
  }

  private async readWord(): Promise<number> {
    const v = (await this.take(8)).readBigUInt64LE();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.nixStore} --serve sent a number out of range`);
    return Number(v);
  }

  private async readString(): Promise<string> {
    const len = await this.readWord();
    if (len > 4096) throw new Error(`${this.nixStore} --serve sent a ${len}-byte store path`);
    const s = (await this.take(len + ((8 - (len % 8)) % 8))).subarray(0, len).toString();
    return s;
  }
}
