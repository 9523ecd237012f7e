/**
 * The behaviour suite against the overlay snapshotter in-process and against
 * the nix-snapshotter daemon over its unix socket (real gRPC, real mounts).
 */
import path from "node:path";
import t from "tap";
import { SnapshotsClient } from "../../src/containerd/snapshots.js";
import { OverlaySnapshotter } from "../../src/snapshotter/overlay.js";
import { startDaemonProcess } from "../../devenv/daemon.js";
import { requireOrSkip } from "../lib/require.js";
import { runSuite } from "../lib/suite.js";

if (requireOrSkip(t, { root: true })) {
  t.test("in-process overlay snapshotter", async (t) => {
    runSuite(t, async (dir) => {
      const sn = await OverlaySnapshotter.open({ root: path.join(dir, "root") });
      return { sn, close: () => sn.close() };
    });
  });

  t.test("daemon over gRPC", async (t) => {
    runSuite(t, async (dir) => {
      const address = path.join(dir, "run", "nix-snapshotter.sock");
      const daemon = await startDaemonProcess({ root: path.join(dir, "root"), address });
      const sn = new SnapshotsClient({ address });
      return {
        sn,
        close: async () => {
          await sn.close();
          const code = await daemon.stop();
          if (code !== 0) throw new Error(`daemon exited with ${code}`);
        },
      };
    });
  });
}
