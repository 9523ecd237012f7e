import { createRequire } from "node:module";

/** The package version, read from package.json (three levels above build/src/cli). */
export function version(): string {
  const require = createRequire(import.meta.url);
  return (require("../../../package.json") as { version: string }).version;
}
