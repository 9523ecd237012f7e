/**
 * Which image manifest of an index to take: the one named by the caller,
 * and within a multi-platform image the wanted platform.
 */
import { ANNOTATION_CONTAINERD_IMAGE_NAME, ANNOTATION_REF_NAME, type Descriptor, goArch, type Index, isIndexMediaType, isManifestMediaType, type Platform } from "./oci.js";
import type { ReadOptions } from "./image-archive.js";

function nameMatches(d: Descriptor, ref: string): boolean {
  const a = d.annotations ?? {};
  return a[ANNOTATION_CONTAINERD_IMAGE_NAME] === ref || a[ANNOTATION_REF_NAME] === ref;
}

function platformMatches(p: Platform | undefined, want: Platform): boolean {
  if (!p) return false;
  return p.os === want.os && p.architecture === want.architecture && (!want.variant || p.variant === want.variant);
}

/**
 * Picks one image manifest from an index: the named one if opts.ref is set,
 * descending into nested indexes (multi-platform images) and preferring the
 * wanted platform there, else the first manifest. Returns the manifest's
 * descriptor and the top-level descriptor that carried the name.
 */
export async function selectManifest(
  manifests: Descriptor[],
  opts: ReadOptions,
  loadIndex: (d: Descriptor) => Promise<Index>,
): Promise<{ manifest: Descriptor; named: Descriptor } | undefined> {
  const want = opts.platform ?? { os: "linux", architecture: goArch() };
  const candidates = opts.ref === undefined ? manifests : manifests.filter((d) => nameMatches(d, opts.ref!));
  for (const named of candidates) {
    if (isManifestMediaType(named.mediaType)) return { manifest: named, named };
    if (isIndexMediaType(named.mediaType)) {
      const nested = (await loadIndex(named)).manifests.filter((d) => isManifestMediaType(d.mediaType));
      const pick = nested.find((d) => platformMatches(d.platform, want)) ?? nested[0];
      if (pick) return { manifest: pick, named };
    }
  }
  return undefined;
}
