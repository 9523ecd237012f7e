/**
 * Whether this process runs rootless, inside a user namespace (rootlesskit,
 * a rootless container): then the Nix store and /dev belong to ids the
 * namespace does not map, and some mounts need other options.
 */
import { readFileSync } from "node:fs";

/**
 * True inside a user namespace other than the initial one: the initial
 * namespace maps the whole 32-bit id range onto itself.
 */
export function inUserNamespace(uidMap: string = readFileSync("/proc/self/uid_map", "utf8")): boolean {
  const lines = uidMap.trim().split("\n");
  if (lines.length !== 1) return true;
  const [inside, outside, count] = lines[0]!.trim().split(/\s+/);
  return !(inside === "0" && outside === "0" && count === "4294967295");
}
