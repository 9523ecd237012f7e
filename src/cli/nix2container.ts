#!/usr/bin/env node
/**
 * nix2container: builds nix images (OCI archives whose packages come from
 * the Nix store). Parses flags and calls src/image; nothing else.
 */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { SnapshotterError } from "../errors.js";
import { buildNixImage } from "../image/build.js";
import { version } from "./version.js";

class UsageError extends Error {}

async function main(): Promise<number> {
  await yargs(hideBin(process.argv))
    .scriptName("nix2container")
    .usage("$0 <command> [flags]\n\nBuilds, pushes and loads images whose packages come from the Nix store.")
    .command(
      "build <out>",
      "build a nix image as an OCI archive",
      (y) =>
        y
          .positional("out", { type: "string", demandOption: true, description: "the archive to write" })
          .option("config", { type: "string", demandOption: true, description: "image config JSON (Entrypoint, Cmd, Env, ...)" })
          .option("closure", { type: "string", demandOption: true, description: "file listing the closure's store paths, one per line" })
          .option("copy-to-root", { type: "string", description: "JSON list of store paths linked into /" })
          .option("ref", { type: "string", description: "image reference (default nix:0<absolute out>:latest)" }),
      async (argv) => {
        const img = await buildNixImage({
          configFile: argv.config,
          closureFile: argv.closure,
          copyToRootFile: argv["copy-to-root"],
          ref: argv.ref,
          out: argv.out!,
        });
        process.stdout.write(`${img.ref ?? ""} ${img.manifestDigest}\n`);
      },
    )
    .demandCommand(1, "a command is required (see --help)")
    .version(version())
    .help()
    .alias("help", "h")
    .strict()
    .fail((msg, err) => {
      if (err) throw err;
      throw new UsageError(msg.replace(/\s*\n\s*/g, " "));
    })
    .parseAsync();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`nix2container: ${msg}\n`);
    // 2: usage or input the caller must fix; 1: anything else.
    process.exit(err instanceof UsageError || err instanceof SnapshotterError ? 2 : 1);
  },
);
