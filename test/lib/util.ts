/** Small helpers shared by the tests. */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import net from "node:net";
import tarStream from "tar-stream";
import type { Header } from "tar-stream";
import type { Info, Snapshotter } from "../../src/snapshotter/snapshotter.js";

/** The last lines of a log file (for diagnostics on failure), optionally without noise. */
export function tail(file: string, lines = 40, skip?: RegExp): string {
  try {
    const all = readFileSync(file, "utf8").trimEnd().split("\n");
    return (skip ? all.filter((l) => !skip.test(l)) : all).slice(-lines).join("\n");
  } catch (err) {
    return `(cannot read ${file}: ${(err as Error).message})`;
  }
}

/** Every snapshot (matching the filters), in List order. */
export async function listAll(sn: Snapshotter, filters?: string[]): Promise<Info[]> {
  const out: Info[] = [];
  await sn.walk((i) => {
    out.push(i);
  }, filters);
  return out;
}

/** A directory's entries, sorted; none when it does not exist. */
export function entries(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

/** A TCP port nothing listens on right now (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface TarMember {
  header: Header;
  body: Buffer;
}

/** Every member of an uncompressed tar, in order, with its contents. */
export async function listTar(buf: Buffer): Promise<TarMember[]> {
  const extract = tarStream.extract();
  const out: TarMember[] = [];
  extract.end(buf);
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    out.push({ header: entry.header, body: Buffer.concat(chunks) });
  }
  return out;
}
