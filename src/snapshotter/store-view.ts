/**
 * Store views: for a nix layer, one directory at <root>/store-views/<id>/
 * that mirrors every store path of the layer's chain as a tree of hard
 * links. Directories are recreated with the store's modes and times,
 * regular files are hard links (the store's own inodes: the same page
 * cache, nothing copied), symlinks are recreated. A container above the
 * layer then gets ONE read-only bind of the view onto /nix/store instead of
 * one bind per store path, so starting it costs the same whatever the size
 * of its closure; it still sees exactly its closure and nothing else.
 *
 * A view is built once per nix layer, in a child process (the walk is
 * thousands of synchronous link calls that must not hold up the daemon),
 * under .build-<id>-<random>, synced to disk, then renamed to <id>: a
 * directory named by an id is always complete. A crash leaves only a
 * .build-* directory, which Cleanup removes with views whose layer is gone.
 *
 * Linking needs the store and the views on one mount: EXDEV (another
 * filesystem), EPERM (fs.protected_hardlinks refusing files of another
 * user, as rootless) and EMLINK (a file with too many links) make the
 * layer's containers fall back to per-path bind mounts. On NixOS the store
 * is a read-only bind mount of itself, so link() says EXDEV although both
 * are on one filesystem: then the view is built in a private mount
 * namespace where that bind mount is lazily unmounted.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "../log.js";
import { claimOrphanEntries, removeDir } from "./overlay.js";
import { BUILD_PREFIX, type BuildResult } from "./store-view-builder.js";

/** The builder program (compiled beside this module). */
const BUILDER = fileURLToPath(new URL("./store-view-builder.js", import.meta.url));

export const STORE_VIEW_MODES = ["tree", "binds"] as const;
export type StoreViewMode = (typeof STORE_VIEW_MODES)[number];

/** errno codes after which linking cannot work on this host: no more views are tried. */
const HOST_WIDE = new Set(["EXDEV", "EPERM"]);

export class StoreViews {
  readonly dir: string;
  /** Builds in flight by layer id. */
  private readonly building = new Map<string, { done: Promise<void>; child?: ChildProcess; tmp: string }>();
  /** Layers whose view could not be built (this run): their containers get binds. */
  private readonly failed = new Set<string>();
  /** Set once linking proved impossible on this host; the warn line said why. */
  private disabled: string | undefined;

  constructor(
    root: string,
    private readonly storeDir: string,
    private readonly log: Logger,
  ) {
    this.dir = path.join(root, "store-views");
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  pathOf(id: string): string {
    return path.join(this.dir, id);
  }

  /** The view of layer id exists (complete: only a finished build is renamed to an id). */
  isReady(id: string): boolean {
    return existsSync(this.pathOf(id));
  }

  /**
   * Starts building the view of layer id over these store paths unless it
   * exists, is being built, failed before, or linking is impossible here.
   * Returns when the build has ended (views are optional: never throws).
   */
  ensure(id: string, paths: readonly string[]): Promise<void> {
    const inflight = this.building.get(id);
    if (inflight) return inflight.done;
    if (this.disabled !== undefined || this.failed.has(id) || this.isReady(id)) return Promise.resolve();
    const tmp = path.join(this.dir, `${BUILD_PREFIX}${id}-${randomBytes(4).toString("hex")}`);
    const entry: { done: Promise<void>; child?: ChildProcess; tmp: string } = { done: Promise.resolve(), tmp };
    entry.done = this.build(id, [...paths], tmp, entry)
      .catch((err: unknown) => {
        this.failed.add(id);
        this.log.warn(`store view of nix layer ${id} not built, its containers get one bind mount per store path`, { id, error: err });
      })
      .finally(() => this.building.delete(id));
    this.building.set(id, entry);
    return entry.done;
  }

  /** Waits for every build in flight (tests and benchmarks; close). */
  async settled(): Promise<void> {
    while (this.building.size > 0) await Promise.all([...this.building.values()].map((b) => b.done));
  }

  /** Stops a build of id, if any, and removes the view. For Remove, after the snapshot is gone. */
  async remove(id: string): Promise<void> {
    const b = this.building.get(id);
    if (b) {
      b.child?.kill("SIGKILL");
      await b.done;
    }
    this.failed.delete(id);
    if (existsSync(this.pathOf(id))) await removeDir(this.pathOf(id), this.log);
  }

  /** Stops every build (the daemon is closing); what they leave, Cleanup removes. */
  async close(): Promise<void> {
    for (const b of this.building.values()) b.child?.kill("SIGKILL");
    await this.settled();
  }

  /**
   * Removes what no nix layer owns: views of removed layers, builds a
   * crash interrupted. `isLayer` says whether an id is a nix layer; to be
   * called in the same synchronous step as the read behind it.
   */
  claimOrphans(isLayer: (id: string) => boolean): string[] {
    const inflight = new Set([...this.building.values()].map((b) => path.basename(b.tmp)));
    return claimOrphanEntries(this.dir, readdirSync(this.dir), (name) => inflight.has(name) || (!name.startsWith(BUILD_PREFIX) && isLayer(name)), (name) => {
      this.log.info(name.startsWith(BUILD_PREFIX) ? "removing an interrupted store view build" : "removing store view no nix layer references", { dir: name });
    });
  }

  private async build(id: string, paths: string[], tmp: string, entry: { child?: ChildProcess }): Promise<void> {
    const started = Date.now();
    let res = await this.runBuilder(paths, tmp, false, entry);
    if (!res.ok && res.code === "EXDEV" && this.sameDevice()) {
      // One filesystem, two mounts: the store is a bind mount (NixOS).
      this.log.debug("store view: link() crosses a mount on one filesystem; building without the store's bind mount", { id });
      rmSync(tmp, { recursive: true, force: true });
      res = await this.runBuilder(paths, tmp, true, entry);
      // No private mount namespace here, or the store is no bind mount: still across filesystems.
      if (!res.ok && res.code === undefined) res = { ok: false, code: "EXDEV", message: `link() crosses a mount, and building without the store's bind mount failed: ${res.message ?? ""}` };
    }
    if (res.ok) {
      this.log.info("store view built", { id, storePaths: paths.length, ms: Date.now() - started });
      return;
    }
    await removeDir(tmp, this.log);
    const reason = `${res.code ?? "error"}: ${res.message ?? "the store view builder failed"}`;
    if (res.code !== undefined && HOST_WIDE.has(res.code)) {
      if (this.disabled === undefined) {
        this.disabled = reason;
        this.log.warn(`store views unavailable, containers get one bind mount per store path (${explain(res.code)})`, { reason });
      }
      return;
    }
    this.failed.add(id);
    if (res.code === "SIGKILL") return; // stopped by Remove or close
    this.log.warn(`store view of nix layer ${id} not built, its containers get one bind mount per store path (${explain(res.code)})`, { id, reason });
  }

  private sameDevice(): boolean {
    try {
      return statSync(this.storeDir).dev === statSync(this.dir).dev;
    } catch {
      return false;
    }
  }

  /** Runs the builder program, the paths on its stdin; its last stdout line is a BuildResult. */
  private runBuilder(paths: string[], tmp: string, privateMounts: boolean, entry: { child?: ChildProcess }): Promise<BuildResult> {
    const node = [process.execPath, BUILDER, tmp];
    const argv = privateMounts
      ? ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", 'umount -l "$0" && exec "$@"', this.storeDir, ...node]
      : node;
    return new Promise((resolve) => {
      const child = spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
      entry.child = child;
      child.stdin.on("error", () => {}); // a builder that died early: its result says why
      child.stdin.end(paths.join("\n"));
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.on("error", (e) => resolve({ ok: false, code: (e as NodeJS.ErrnoException).code, message: e.message }));
      child.on("close", (code, signal) => {
        const last = out.trim().split("\n").pop() ?? "";
        try {
          if (last) return resolve(JSON.parse(last) as BuildResult);
        } catch {
          /* not ours: below */
        }
        if (signal) return resolve({ ok: false, code: signal, message: `builder killed by ${signal}` });
        resolve({ ok: false, message: `builder exited with ${code}: ${err.trim().split("\n").pop() ?? ""}` });
      });
    });
  }
}

function explain(code: string | undefined): string {
  switch (code) {
    case "EXDEV":
      return "the Nix store is on another filesystem than the snapshotter root";
    case "EPERM":
      return "hard links to store files are not permitted here (fs.protected_hardlinks, rootless)";
    case "EMLINK":
      return "a store file has the most hard links its filesystem allows";
    default:
      return "see reason";
  }
}
