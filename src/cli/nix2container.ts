#!/usr/bin/env node
/**
 * nix2container: builds nix images (OCI archives whose packages come from
 * the Nix store), pushes them to registries and loads them into containerd.
 * Parses flags and calls src/image; nothing else.
 */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { DEFAULT_CONTAINERD_ADDRESS, DEFAULT_NAMESPACE } from "../containerd/grpc.js";
import { KindedError } from "../errors.js";
import { buildNixImage } from "../image/build.js";
import { DEFAULT_SNAPSHOTTER, loadImage } from "../image/load.js";
import { formatBytes, streamProgress } from "../image/progress.js";
import { DEFAULT_CHUNK_SIZE, PushError, pushImage } from "../image/push.js";
import { version } from "./version.js";

class UsageError extends Error {}

/**
 * 2: usage or input the caller must fix; for push, 3: authentication
 * failed, 4: registry unreachable, 5: the registry refused the manifest or
 * answered unexpectedly; 1: anything else (containerd errors included).
 */
function exitCode(err: unknown): number {
  if (err instanceof PushError) return { auth: 3, unreachable: 4, refused: 5, protocol: 5 }[err.kind];
  if (err instanceof UsageError || (err instanceof KindedError && err.kind === "invalid-argument")) return 2;
  return 1;
}

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
          .option("from-image", { type: "string", description: "base image archive (OCI layout or docker-archive) whose layers go first" })
          .option("ref", { type: "string", description: "image reference (default nix:0<absolute out>:latest)" }),
      async (argv) => {
        const img = await buildNixImage({
          configFile: argv.config,
          closureFile: argv.closure,
          copyToRootFile: argv["copy-to-root"],
          fromImageFile: argv["from-image"],
          ref: argv.ref,
          out: argv.out!,
        });
        process.stdout.write(`${img.ref ?? ""} ${img.manifestDigest}\n`);
      },
    )
    .command(
      "push <archive>",
      "push an image archive to a registry (OCI distribution API)",
      (y) =>
        y
          .positional("archive", { type: "string", demandOption: true, description: "the image archive (from build)" })
          .option("ref", { type: "string", demandOption: true, description: "where to push: REGISTRY/NAME[:TAG], e.g. 127.0.0.1:5000/hello:latest" })
          .option("plain-http", { type: "boolean", default: false, description: "speak http:// instead of https://" })
          .option("chunk-size", {
            type: "number",
            default: DEFAULT_CHUNK_SIZE / 1024 / 1024,
            description: "blobs larger than this many MiB go up in chunks of that size (PATCH, resumed after a dropped connection); 0: one PUT per blob",
          })
          .option("mount-from", {
            type: "string",
            array: true,
            description: "another repository of the same registry to mount blobs from before uploading them (repeatable; repositories this host pushed to are tried too)",
          }),
      async (argv) => {
        const chunkMiB = argv["chunk-size"];
        if (!Number.isFinite(chunkMiB) || chunkMiB < 0) throw new UsageError(`--chunk-size must be a number of MiB >= 0, got ${argv["chunk-size"]}`);
        const r = await pushImage({
          archive: argv.archive!,
          ref: argv.ref,
          plainHttp: argv["plain-http"],
          chunkSize: Math.round(chunkMiB * 1024 * 1024),
          mountFrom: argv["mount-from"] ?? [],
          progress: streamProgress(process.stdout, "pushing"),
        });
        const n = r.uploaded.length + r.mounted.length + r.skipped.length;
        const resent = r.resumed > 0 ? `; ${r.resumed} chunk${r.resumed === 1 ? "" : "s"} sent again after a dropped connection` : "";
        process.stdout.write(
          `pushed ${r.ref} ${r.digest}: uploaded ${r.uploaded.length} of ${n} blobs (${formatBytes(r.bytesUploaded)}), ${r.mounted.length} mounted, ${r.skipped.length} already present${resent}\n`,
        );
      },
    )
    .command(
      "load <archive>",
      "import an image archive into containerd and unpack it, handing layer annotations to the snapshotter",
      (y) =>
        y
          .positional("archive", { type: "string", demandOption: true, description: "the image archive (from build)" })
          .option("address", { type: "string", description: `containerd's socket [env CONTAINERD_ADDRESS, default ${DEFAULT_CONTAINERD_ADDRESS}]` })
          .option("namespace", { type: "string", description: `containerd namespace [env CONTAINERD_NAMESPACE, default ${DEFAULT_NAMESPACE}]` })
          .option("snapshotter", { type: "string", default: DEFAULT_SNAPSHOTTER, description: "snapshotter to unpack into" })
          .option("ref", { type: "string", description: "image name to store it under (default: the archive's reference)" }),
      async (argv) => {
        // Ctrl-C stops between steps; load then deletes its lease like on any failure.
        const abort = new AbortController();
        const onSignal = () => abort.abort(new Error("interrupted"));
        process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
        const r = await loadImage({
          archive: argv.archive!,
          address: argv.address ?? (process.env["CONTAINERD_ADDRESS"] || DEFAULT_CONTAINERD_ADDRESS),
          namespace: argv.namespace ?? (process.env["CONTAINERD_NAMESPACE"] || DEFAULT_NAMESPACE),
          snapshotter: argv.snapshotter,
          ...(argv.ref !== undefined ? { name: argv.ref } : {}),
          progress: streamProgress(process.stdout, "loading"),
          signal: abort.signal,
        });
        process.stdout.write(
          `loaded ${r.name} ${r.digest}: ${r.blobsWritten} blobs written, ${r.blobsPresent} present; ${r.layersUnpacked} layers unpacked, ${r.layersPresent} present\n`,
        );
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
    process.exit(exitCode(err));
  },
);
