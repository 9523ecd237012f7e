/**
 * Wiring: builds the snapshotter stack from a Config and serves it. The CLI
 * calls this; so do tests that want an in-process daemon.
 */
import type { Config } from "../config/config.js";
import type { Logger } from "../log.js";
import { ExternalBuilderRealiser, NixStoreRealiser } from "../nix/realise.js";
import { NixSnapshotter } from "../snapshotter/nix.js";
import { OverlaySnapshotter } from "../snapshotter/overlay.js";
import type { Snapshotter } from "../snapshotter/snapshotter.js";
import { listen, type RunningServer } from "./server.js";
import { addSnapshotsService } from "./snapshots.js";

export interface Daemon {
  readonly snapshotter: Snapshotter;
  readonly server: RunningServer;
  /** Graceful: in-flight calls finish, then the database is closed. */
  stop(): Promise<void>;
}

export async function startDaemon(cfg: Config, log: Logger): Promise<Daemon> {
  const overlay = await OverlaySnapshotter.open({ root: cfg.root, logger: log });
  const realiser = cfg.externalBuilder ? new ExternalBuilderRealiser(cfg.externalBuilder) : new NixStoreRealiser();
  const snapshotter = await NixSnapshotter.wrap(overlay, { realiser, logger: log });
  try {
    // A crash may have left directories no snapshot references: reclaim
    // them before serving, so the first client sees a tidy root.
    await snapshotter.cleanup();
    const server = await listen(cfg.address, (s) => addSnapshotsService(s, snapshotter, log), log);
    let stopping: Promise<void> | undefined;
    return {
      snapshotter,
      server,
      stop() {
        stopping ??= (async () => {
          await server.stop();
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
