#!/usr/bin/env node
/**
 * nix-snapshotter: the containerd proxy snapshotter daemon. Parses flags and
 * the config file, starts the daemon, and handles signals; nothing else.
 */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { applyFlags, ConfigError, DEFAULT_CONFIG_PATH, loadConfigFile } from "../config/config.js";
import { createLogger, LEVELS, type Level } from "../log.js";
import { startDaemon } from "../service/daemon.js";
import { sdNotify } from "../service/sdnotify.js";
import { version } from "./version.js";

async function main(): Promise<number> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName("nix-snapshotter")
    .usage("$0 [flags]\n\nA containerd snapshotter that runs containers straight from the Nix store.")
    .option("config", { alias: "c", type: "string", description: "path to the TOML config file", default: DEFAULT_CONFIG_PATH })
    .option("address", { alias: "a", type: "string", description: "unix socket to serve on (overrides the config file)" })
    .option("root", { type: "string", description: "state directory (overrides the config file)" })
    .option("store-view", { type: "string", description: 'how containers see the store: "tree" (one bind of a per-layer tree of hard links) or "binds" (one bind per store path); overrides the config file' })
    .option("log-level", { alias: "l", type: "string", choices: LEVELS as unknown as string[], default: "info", description: "log level" })
    .version(version())
    .alias("version", "v")
    .help()
    .alias("help", "h")
    .strict()
    .fail((msg, err) => {
      // yargs writes multi-line messages; an operator's log wants one line.
      throw new ConfigError((msg || err?.message || "invalid arguments").replace(/\s*\n\s*/g, " "));
    })
    .parseAsync();

  const explicit = process.argv.slice(2).some((a) => a === "-c" || a === "--config" || a.startsWith("--config="));
  const cfg = applyFlags(await loadConfigFile(argv.config, explicit), { address: argv.address, root: argv.root, storeView: argv["store-view"] });
  const log = createLogger(argv["log-level"] as Level);
  log.info("starting nix-snapshotter", { version: version(), root: cfg.root, address: cfg.address, storeView: cfg.storeView });

  const daemon = await startDaemon(cfg, log);
  await sdNotify("READY=1", log);

  await new Promise<void>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      log.info("stopping", { signal: sig });
      resolve();
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
  });
  await sdNotify("STOPPING=1", log);
  await daemon.stop();
  log.info("stopped");
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`nix-snapshotter: ${msg}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  },
);
