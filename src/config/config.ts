/**
 * The daemon's configuration: defaults, the TOML file, and command-line
 * flags on top (flags win). Every key is checked here, once, so the rest of
 * the program receives a typed, absolute-path Config and never a raw value.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { OVERLAY_DRIVERS, type OverlayDriver } from "../snapshotter/overlay-driver.js";
import { STORE_VIEW_MODES, type StoreViewMode } from "../snapshotter/store-view.js";

export interface ImageServiceConfig {
  /** Serve CRI ImageService on the daemon's socket. */
  enable: boolean;
  /** containerd's socket, for forwarded CRI calls and image loads. */
  containerdAddress: string;
}

export interface Config {
  address: string;
  root: string;
  /** A program run as `<builder> <outLink> <storePath>` instead of nix-store --realise. */
  externalBuilder: string | undefined;
  imageService: ImageServiceConfig;
  overlay: { driver: OverlayDriver };
  /** How containers see the store: one bind of a per-layer tree of hard links, or one bind per store path. */
  storeView: StoreViewMode;
}

export const DEFAULT_CONFIG_PATH = "/etc/nix-snapshotter/config.toml";

export const DEFAULTS: Readonly<Config> = Object.freeze({
  address: "/run/nix-snapshotter/nix-snapshotter.sock",
  root: "/var/lib/containerd/io.containerd.snapshotter.v1.nix",
  externalBuilder: undefined,
  imageService: Object.freeze({
    enable: true,
    containerdAddress: "/run/containerd/containerd.sock",
  }),
  overlay: Object.freeze({ driver: "overlayfs" as OverlayDriver }),
  storeView: "tree" as StoreViewMode,
});

/** A configuration problem, reported as one line naming the file and key. */
export class ConfigError extends Error {}

type Kind = "string" | "boolean" | "path";

interface KeySpec {
  kind: Kind;
  /** For strings with a fixed set of values. */
  oneOf?: readonly string[];
  set: (c: Config, v: string | boolean) => void;
}

/** TOML key (dotted for tables) -> how to read it. */
const KEYS: Record<string, KeySpec> = {
  address: { kind: "path", set: (c, v) => (c.address = v as string) },
  root: { kind: "path", set: (c, v) => (c.root = v as string) },
  external_builder: { kind: "string", set: (c, v) => (c.externalBuilder = (v as string) || undefined) },
  "image_service.enable": { kind: "boolean", set: (c, v) => (c.imageService.enable = v as boolean) },
  "image_service.containerd_address": { kind: "path", set: (c, v) => (c.imageService.containerdAddress = v as string) },
  "overlay.driver": { kind: "string", oneOf: OVERLAY_DRIVERS, set: (c, v) => (c.overlay.driver = v as OverlayDriver) },
  store_view: { kind: "string", oneOf: STORE_VIEW_MODES, set: (c, v) => (c.storeView = v as StoreViewMode) },
};

const TABLES = new Set(["image_service", "overlay"]);

export function defaultConfig(): Config {
  return { ...DEFAULTS, imageService: { ...DEFAULTS.imageService }, overlay: { ...DEFAULTS.overlay } };
}

function typeName(v: unknown): string {
  if (Array.isArray(v)) return "array";
  if (v instanceof Date) return "date";
  return typeof v === "object" && v !== null ? "table" : typeof v;
}

/** Applies a parsed TOML document onto cfg, refusing unknown keys and wrong types. */
export function applyToml(cfg: Config, doc: Record<string, unknown>, source: string): Config {
  const visit = (obj: Record<string, unknown>, prefix: string) => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (!prefix && TABLES.has(k)) {
        if (typeName(v) !== "table") throw new ConfigError(`${source}: key "${key}" must be a table, got ${typeName(v)}`);
        visit(v as Record<string, unknown>, key);
        continue;
      }
      const spec = KEYS[key];
      if (!spec) throw new ConfigError(`${source}: unknown key "${key}" (known keys: ${Object.keys(KEYS).join(", ")})`);
      const want = spec.kind === "boolean" ? "boolean" : "string";
      if (typeof v !== want) throw new ConfigError(`${source}: key "${key}" must be a ${want}, got ${typeName(v)}`);
      if (spec.kind === "path") checkPath(v as string, `${source}: key "${key}"`);
      if (spec.oneOf && !spec.oneOf.includes(v as string)) {
        throw new ConfigError(`${source}: key "${key}" must be one of ${spec.oneOf.map((o) => JSON.stringify(o)).join(", ")}, got ${JSON.stringify(v)}`);
      }
      spec.set(cfg, v as string | boolean);
    }
  };
  visit(doc, "");
  return cfg;
}

function checkPath(p: string, what: string): void {
  if (p === "") throw new ConfigError(`${what} must not be empty`);
  if (!path.isAbsolute(p)) throw new ConfigError(`${what} must be an absolute path, got ${JSON.stringify(p)}`);
  if (p.includes("\0")) throw new ConfigError(`${what} contains a NUL byte`);
}

/**
 * Reads the TOML file. A missing file is fine at the default location (the
 * defaults apply) and an error where the operator named it explicitly.
 */
export async function loadConfigFile(file: string, explicit: boolean): Promise<Config> {
  const cfg = defaultConfig();
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !explicit) return cfg;
    if (code === "ENOENT") throw new ConfigError(`${file}: config file does not exist`);
    throw new ConfigError(`${file}: cannot read config file: ${(err as Error).message}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split("\n")[0];
      throw new ConfigError(`${file}:${err.line}:${err.column}: invalid TOML: ${first}`);
    }
    throw new ConfigError(`${file}: invalid TOML: ${(err as Error).message}`);
  }
  return applyToml(cfg, doc, file);
}

export interface FlagOverrides {
  address?: string | undefined;
  root?: string | undefined;
  storeView?: string | undefined;
}

/** Flags override the file; relative paths are taken from the working directory. */
export function applyFlags(cfg: Config, flags: FlagOverrides): Config {
  if (flags.address !== undefined) {
    if (flags.address === "") throw new ConfigError("--address must not be empty");
    cfg.address = path.resolve(flags.address);
  }
  if (flags.root !== undefined) {
    if (flags.root === "") throw new ConfigError("--root must not be empty");
    cfg.root = path.resolve(flags.root);
  }
  if (flags.storeView !== undefined) {
    if (!(STORE_VIEW_MODES as readonly string[]).includes(flags.storeView)) {
      throw new ConfigError(`--store-view must be one of ${STORE_VIEW_MODES.map((o) => JSON.stringify(o)).join(", ")}, got ${JSON.stringify(flags.storeView)}`);
    }
    cfg.storeView = flags.storeView as StoreViewMode;
  }
  return cfg;
}
