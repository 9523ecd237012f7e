/**
 * The daemon's gRPC server on one unix socket: the socket's directory is
 * created 0700, a stale socket from a crashed run is replaced (a live one is
 * refused), the socket is never world-writable, and stopping lets in-flight
 * calls finish before the listener goes away.
 */
import * as grpc from "@grpc/grpc-js";
import { chmod, lstat, mkdir, unlink } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { Logger } from "../log.js";
import { SERVER_OPTIONS } from "../wire/channel.js";

export interface RunningServer {
  readonly address: string;
  /** Stops accepting, waits for in-flight calls (up to graceMs), removes the socket. */
  stop(graceMs?: number): Promise<void>;
}

/** Resolves true when something accepts connections on the socket. */
function socketIsLive(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(p);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

async function clearStaleSocket(address: string): Promise<void> {
  let st;
  try {
    st = await lstat(address);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new Error(`${address} exists and is not a socket; remove it or choose another --address`);
  }
  if (await socketIsLive(address)) {
    throw new Error(`${address} is in use by a running process (another nix-snapshotter?); stop it or choose another --address`);
  }
  await unlink(address);
}

export async function listen(
  address: string,
  register: (server: grpc.Server) => void,
  log: Logger,
): Promise<RunningServer> {
  await mkdir(path.dirname(address), { recursive: true, mode: 0o700 });
  await clearStaleSocket(address);

  const server = new grpc.Server(SERVER_OPTIONS);
  register(server);

  // Bind under a tight umask so the socket is never briefly world-writable,
  // then open it to the group, as containerd's own socket is (0660).
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${address}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  } finally {
    process.umask(oldMask);
  }
  await chmod(address, 0o660);
  log.info("serving", { address });

  let stopped: Promise<void> | undefined;
  return {
    address,
    stop(graceMs = 10_000) {
      stopped ??= (async () => {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            log.warn("in-flight calls did not finish in time; closing them", { graceMs });
            server.forceShutdown();
            resolve();
          }, graceMs);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        await unlink(address).catch(() => {});
      })();
      return stopped;
    },
  };
}
