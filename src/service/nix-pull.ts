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
 */
import { mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import { FailedPreconditionError, NotFoundError, KindedError, UnavailableError } from "../errors.js";
import { parseNixImageRef } from "../image/nix-image.js";
import type { Logger } from "../log.js";
import type { Realiser } from "../nix/realise.js";
import type { NixPuller } from "./cri-image.js";

/** Loads an image archive into containerd (namespace, name, snapshotter are the loader's). */
export interface ImageLoader {
  load(archive: string, opts: { namespace: string; ref: string }): Promise<void>;
}

export interface NixImagePullerOptions {
  realiser: Realiser;
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

  constructor(private readonly o: NixImagePullerOptions) {}

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
    const dir = await mkdtemp(path.join(this.o.scratchDir, "pull-"));
    try {
      try {
        await this.o.realiser.realise([archive as never], dir);
      } catch (err) {
        // A Nix daemon that is down is not a missing image: let kubelet retry.
        if (err instanceof UnavailableError) throw err;
        throw new NotFoundError(`image archive ${archive} is not in the Nix store and could not be substituted: ${(err as Error).message}`);
      }
      this.o.log.info("loading nix image archive", { ref: name, archive });
      try {
        await this.o.loader.load(archive, { namespace: this.o.namespace ?? "k8s.io", ref: name });
      } catch (err) {
        if (err instanceof KindedError) throw err;
        throw new FailedPreconditionError(`loading ${archive} into containerd failed: ${(err as Error).message}`);
      }
      return await this.waitForId(name);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** containerd's CRI learns of the image from an event; give it a moment. */
  private async waitForId(name: string): Promise<string> {
    const deadline = Date.now() + (this.o.settleMs ?? 10_000);
    let delay = 20;
    for (;;) {
      const id = await this.o.imageId(name).catch(() => undefined);
      if (id) return id;
      if (Date.now() > deadline) throw new UnavailableError(`containerd's CRI does not list ${name} yet; retry the pull`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }
}
