/**
 * systemd's readiness protocol (sd_notify(3)): a datagram to the unix socket
 * named by NOTIFY_SOCKET. Node has no unix datagram sockets, hence the small
 * native unix-dgram module. Without NOTIFY_SOCKET this does nothing.
 */
import { createRequire } from "node:module";
import type { Logger } from "../log.js";

interface DgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, cb?: (err?: Error) => void): void;
  on(event: "error", cb: (err: Error) => void): void;
  close(): void;
}

export async function sdNotify(state: string, log?: Logger): Promise<boolean> {
  let socketPath = process.env["NOTIFY_SOCKET"];
  if (!socketPath) return false;
  // "@name" is a socket in the abstract namespace.
  if (socketPath.startsWith("@")) socketPath = "\0" + socketPath.slice(1);
  const require = createRequire(import.meta.url);
  const { createSocket } = require("unix-dgram") as { createSocket(type: "unix_dgram"): DgramSocket };
  const sock = createSocket("unix_dgram");
  const msg = Buffer.from(state);
  return new Promise((resolve) => {
    sock.on("error", (err) => {
      log?.warn("sd_notify failed", { state, error: err });
      sock.close();
      resolve(false);
    });
    sock.send(msg, 0, msg.length, socketPath!, (err) => {
      if (err) log?.warn("sd_notify failed", { state, error: err });
      sock.close();
      resolve(!err);
    });
  });
}
