/**
 * Nix layers in-process, for tests: the snapshotter stack the daemon builds
 * (overlay under the Nix decorator) and the labels containerd hands over for
 * a nix layer. The label keys are written out, not imported from src/: they
 * are the wire contract the tests hold the code to.
 */
import { NixStoreRealiser, type Realiser } from "../../src/nix/realise.js";
import { NixSnapshotter, type NixOptions } from "../../src/snapshotter/nix.js";
import { OverlaySnapshotter } from "../../src/snapshotter/overlay.js";

export const NIX_LAYER = "containerd.io/snapshot/nix-layer";
export const NIX_PATH_LABEL = "containerd.io/snapshot/nix-store-path.";

/** The daemon's snapshotter stack on `root`, realising with nix-store unless told otherwise. */
export async function openNixSnapshotter(root: string, realiser: Realiser = new NixStoreRealiser(), opts: Omit<NixOptions, "realiser"> = {}): Promise<NixSnapshotter> {
  const overlay = await OverlaySnapshotter.open({ root });
  return NixSnapshotter.wrap(overlay, { realiser, ...opts });
}

/** Labels of a nix layer naming these store paths one per label. */
export function nixLabels(paths: readonly string[]): Record<string, string> {
  const labels: Record<string, string> = { [NIX_LAYER]: "true" };
  paths.forEach((p, i) => (labels[`${NIX_PATH_LABEL}${i}`] = p));
  return labels;
}
