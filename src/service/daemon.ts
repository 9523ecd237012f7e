/**
 * Wiring: builds the snapshotter stack from a Config and serves it. The CLI
 * calls this; so do tests that want an in-process daemon.
 */
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import type { Config } from "../config/config.js";
import { loadImage } from "../image/load.js";
import type { Logger } from "../log.js";
import { ExternalBuilderRealiser, NixStoreRealiser } from "../nix/realise.js";
import { NixSnapshotter } from "../snapshotter/nix.js";
import { OverlaySnapshotter } from "../snapshotter/overlay.js";
import { inUserNamespace } from "../userns.js";
import type { Snapshotter } from "../snapshotter/snapshotter.js";
import { addCriImageService, CriForwarder, criImageId, type CriImageServiceOptions } from "./cri-image.js";
import { NixImagePuller } from "./nix-pull.js";
import { listen, type RunningServer } from "./server.js";
import { addSnapshotsService } from "./snapshots.js";

export interface Daemon {
  readonly snapshotter: Snapshotter;
  readonly server: RunningServer;
  /** Graceful: in-flight calls finish, then the database is closed. */
  stop(): Promise<void>;
}

/**
 * Rootless (inside a user namespace) the store belongs to someone else:
 * realisations and GC roots must go through the Nix daemon. Nix would
 * take the namespace's uid 0 for root, so say it unless the operator did.
 */
function useNixDaemonWhenRootless(log: Logger): void {
  if (!inUserNamespace()) return;
  if (process.env["NIX_REMOTE"]) {
    log.info("running in a user namespace; Nix store from NIX_REMOTE", { nix_remote: process.env["NIX_REMOTE"] });
    return;
  }
  process.env["NIX_REMOTE"] = "daemon";
  log.info("running in a user namespace: Nix operations go through the Nix daemon (NIX_REMOTE=daemon)");
}

export async function startDaemon(cfg: Config, log: Logger): Promise<Daemon> {
  useNixDaemonWhenRootless(log);
  const overlay = await OverlaySnapshotter.open({ root: cfg.root, driver: cfg.overlay.driver, logger: log });
  const realiser = cfg.externalBuilder ? new ExternalBuilderRealiser(cfg.externalBuilder) : new NixStoreRealiser();
  const snapshotter = await NixSnapshotter.wrap(overlay, { realiser, logger: log, storeView: cfg.storeView });
  try {
    // A crash may have left directories no snapshot references: reclaim
    // them before serving, so the first client sees a tidy root.
    await snapshotter.cleanup();
    const cri = cfg.imageService.enable ? await imageService(cfg, log) : undefined;
    const server = await listen(
      cfg.address,
      (s) => {
        addSnapshotsService(s, snapshotter, log);
        if (cri) addCriImageService(s, cri);
      },
      log,
    );
    let stopping: Promise<void> | undefined;
    return {
      snapshotter,
      server,
      stop() {
        stopping ??= (async () => {
          await server.stop();
          cri?.forwarder.close();
          await snapshotter.close();
        })();
        return stopping;
      },
    };
  } catch (err) {
    await snapshotter.close();
    throw err;
  }
}

/**
 * The CRI ImageService: nix:0 pulls are realised with Nix and loaded into
 * containerd's k8s.io namespace, unpacked by the proxy plugin named "nix"
 * (the name the containerd configuration in the docs gives it); everything
 * else is forwarded to containerd's CRI.
 */
async function imageService(cfg: Config, log: Logger): Promise<CriImageServiceOptions> {
  const containerd = cfg.imageService.containerdAddress;
  const forwarder = new CriForwarder(containerd);
  // Archives are rooted here while they load; apart from gcroots/, which
  // Cleanup prunes to the snapshots' ids.
  const scratchDir = path.join(cfg.root, "pulls");
  await rm(scratchDir, { recursive: true, force: true });
  await mkdir(scratchDir, { recursive: true, mode: 0o700 });
  const puller = new NixImagePuller({
    realiser: new NixStoreRealiser(),
    loader: {
      load: async (archive, { namespace, ref, file }) => {
        await loadImage({ archive, ...(file ? { file } : {}), address: containerd, namespace, snapshotter: "nix", name: ref });
      },
    },
    scratchDir,
    imageId: (ref) => criImageId(forwarder, ref),
    log,
  });
  log.info("serving the CRI image service", { containerd });
  return { forwarder, puller, log };
}
