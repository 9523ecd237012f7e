/**
 * Helpers for benchmarks that drive a private containerd with `ctr`:
 * timing a child process to its first stdout byte and to its exit, reading
 * containerd's event stream with its timestamps, forcing a
 * synchronous garbage collection, and removing what a run left in a
 * namespace. Every process started here is tracked and stopped by PID.
 */
import * as grpc from "@grpc/grpc-js";
import { spawn, type ChildProcess } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { grpcTarget } from "../../src/wire/channel.js";
import { type Containerd, killTasks } from "../../devenv/containerd.js";
import { msBetween, now } from "./stats.js";

/** Children started by this module and still running, by PID. */
const running = new Map<number, ChildProcess>();

/** Stops (SIGKILL) every child this module started that still runs. */
export function killStartedProcesses(): void {
  for (const [pid, child] of running) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }
  running.clear();
}

export interface TimedProcess {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall clock (ms since the epoch, Date.now() resolution) at spawn. */
  startWallMs: number;
  /** From spawn to the first stdout byte, ms (NaN when nothing came). */
  firstByteMs: number;
  /** From spawn to exit, ms. */
  totalMs: number;
}

/**
 * Runs cmd with args and times it on the monotonic clock: spawn to the first
 * byte on stdout, and spawn to exit. Rejects only when the process cannot
 * be started or overruns timeoutMs (then it is killed).
 */
export function timeProcess(cmd: string, args: string[], opts: { timeoutMs?: number; maxOutput?: number } = {}): Promise<TimedProcess> {
  const maxOutput = opts.maxOutput ?? 1 << 20;
  return new Promise((resolve, reject) => {
    const startWallMs = Date.now();
    const t0 = now();
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    if (child.pid !== undefined) running.set(child.pid, child);
    let firstByteMs = NaN;
    let exitMs = NaN;
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, opts.timeoutMs ?? 120_000);
    child.stdout!.on("data", (d: Buffer) => {
      if (Number.isNaN(firstByteMs)) firstByteMs = msBetween(t0, now());
      if (stdout.length < maxOutput) stdout += d.toString();
    });
    child.stderr!.on("data", (d: Buffer) => {
      if (stderr.length < maxOutput) stderr += d.toString();
    });
    child.once("exit", () => {
      exitMs = msBetween(t0, now());
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      if (child.pid !== undefined) running.delete(child.pid);
      reject(new Error(`cannot run ${cmd}: ${err.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (child.pid !== undefined) running.delete(child.pid);
      if (timedOut) {
        reject(new Error(`${cmd} ${args.join(" ")}: killed after ${opts.timeoutMs ?? 120_000} ms; stderr: ${stderr.trim().slice(-2000)}`));
        return;
      }
      resolve({ code, signal, stdout, stderr, startWallMs, firstByteMs, totalMs: Number.isNaN(exitMs) ? msBetween(t0, now()) : exitMs });
    });
  });
}

// ---------------------------------------------------------------- events

export interface ContainerdEvent {
  /** The envelope's timestamp (set by its publisher), ms since the epoch. */
  wallMs: number;
  namespace: string;
  topic: string;
  /**
   * The event's short string fields (ids, keys, snapshotter names) as a
   * JSON list, e.g. ["run-1","/run/containerd/..."]: enough to find the
   * container or snapshot an event belongs to.
   */
  body: string;
}

/** A minimal protobuf reader: the fields of one message, in order. */
function* protoFields(buf: Buffer): Generator<{ no: number; varint?: number; bytes?: Buffer }> {
  let i = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (i >= buf.length) throw new Error("truncated varint");
      const b = buf[i++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const no = Math.floor(key / 8);
    switch (key & 7) {
      case 0:
        yield { no, varint: varint() };
        break;
      case 1:
        i += 8;
        break;
      case 2: {
        const len = varint();
        yield { no, bytes: buf.subarray(i, i + len) };
        i += len;
        break;
      }
      case 5:
        i += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${key & 7}`);
    }
  }
}

/**
 * containerd.services.events.v1.Envelope:
 *   1 timestamp (google.protobuf.Timestamp: 1 seconds, 2 nanos), 2 namespace,
 *   3 topic, 4 event (google.protobuf.Any: 1 type_url, 2 value).
 * Of the event itself only its top-level length-delimited fields of up to
 * 1 KiB are kept, as strings: a task's create event carries its whole
 * rootfs mount list, which is never looked at.
 */
export function decodeEnvelope(buf: Buffer): ContainerdEvent {
  let wallMs = NaN;
  let namespace = "";
  let topic = "";
  const strings: string[] = [];
  for (const f of protoFields(buf)) {
    if (f.no === 1 && f.bytes) {
      let sec = 0;
      let nanos = 0;
      for (const t of protoFields(f.bytes)) {
        if (t.no === 1) sec = t.varint ?? 0;
        else if (t.no === 2) nanos = t.varint ?? 0;
      }
      wallMs = sec * 1000 + nanos / 1e6;
    } else if (f.no === 2 && f.bytes) {
      namespace = f.bytes.toString("utf8");
    } else if (f.no === 3 && f.bytes) {
      topic = f.bytes.toString("utf8");
    } else if (f.no === 4 && f.bytes) {
      for (const a of protoFields(f.bytes)) {
        if (a.no !== 2 || !a.bytes) continue;
        for (const e of protoFields(a.bytes)) if (e.bytes && e.bytes.length <= 1024) strings.push(e.bytes.toString("utf8"));
      }
    }
  }
  return { wallMs, namespace, topic, body: JSON.stringify(strings) };
}

/**
 * A subscriber to containerd's event stream (Events.Subscribe over gRPC,
 * decoded here: a `ctr events` process would spend a core turning every
 * task-create event, mount list and all, into JSON, beside the runs being
 * measured). Keeps every event of every namespace (bounded).
 */
export class ContainerdEvents {
  readonly events: ContainerdEvent[] = [];
  private readonly client: grpc.Client;
  private readonly call: grpc.ClientReadableStream<Buffer>;
  private readonly ended: Promise<void>;
  private error?: Error;

  private constructor(address: string) {
    this.client = new grpc.Client(grpcTarget(address), grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": 64 << 20 });
    const id = (b: Buffer) => b;
    // SubscribeRequest { repeated string filters = 1; }: none.
    this.call = this.client.makeServerStreamRequest("/containerd.services.events.v1.Events/Subscribe", id, id, Buffer.alloc(0));
    this.call.on("data", (b: Buffer) => {
      try {
        this.events.push(decodeEnvelope(b));
      } catch (err) {
        this.error ??= err as Error;
      }
      if (this.events.length > 100_000) this.events.splice(0, 50_000);
    });
    this.ended = new Promise((resolve) => {
      this.call.on("error", (err: grpc.ServiceError) => {
        if (err.code !== grpc.status.CANCELLED) this.error ??= err;
        resolve();
      });
      this.call.on("end", () => resolve());
    });
  }

  /**
   * Subscribes and waits until the subscription is live: it creates
   * namespace `namespace` (which must not exist yet) and waits for that
   * event, labelling the namespace again while none shows up.
   */
  static async start(ctrd: Containerd, namespace: string, timeoutMs = 15_000): Promise<ContainerdEvents> {
    const ev = new ContainerdEvents(ctrd.address);
    const deadline = Date.now() + timeoutMs;
    await ctrd.ctr(["namespaces", "create", namespace]);
    for (let i = 0; ; i++) {
      if (ev.events.some((e) => e.topic.startsWith("/namespaces/") && e.body.includes(`"${namespace}"`))) return ev;
      if (Date.now() > deadline || ev.error) {
        await ev.stop();
        throw new Error(`containerd events: no event seen within ${timeoutMs} ms${ev.error ? ` (${ev.error.message})` : ""}`);
      }
      await sleep(100);
      if (i % 5 === 4) await ctrd.ctr(["namespaces", "label", namespace, `bench.ready=${i}`]);
    }
  }

  /** Events of one container (matched by its id among the event's fields) in a namespace. */
  forContainer(namespace: string, id: string): ContainerdEvent[] {
    const needle = `"${id}"`;
    return this.events.filter((e) => e.namespace === namespace && e.body.includes(needle));
  }

  /** Waits until pred holds for the events of one container, or the deadline. */
  async waitFor(namespace: string, id: string, pred: (evs: ContainerdEvent[]) => boolean, timeoutMs = 5_000): Promise<ContainerdEvent[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const evs = this.forContainer(namespace, id);
      if (pred(evs) || Date.now() > deadline) return evs;
      await sleep(20);
    }
  }

  /** Waits until some event satisfies pred (or the deadline); returns every event that does. */
  async waitForAny(pred: (e: ContainerdEvent) => boolean, timeoutMs = 5_000): Promise<ContainerdEvent[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const evs = this.events.filter(pred);
      if (evs.length > 0 || Date.now() > deadline) return evs;
      await sleep(20);
    }
  }

  /** Drops the events kept so far. */
  clear(): void {
    this.events.length = 0;
  }

  async stop(): Promise<void> {
    this.call.cancel();
    await this.ended;
    this.client.close();
  }
}

// ---------------------------------------------------------------- garbage collection

/**
 * containerd's garbage collector, run synchronously: a lease created and
 * deleted with sync = true (containerd.services.leases.v1.Leases Create and
 * Delete, encoded by hand: one or two fields each). Waits for the backend
 * removals too, through the proxy for `nix`.
 */
export class SyncGc {
  private readonly client: grpc.Client;
  private readonly md = new grpc.Metadata();
  private seq = 0;

  constructor(address: string, namespace: string) {
    this.client = new grpc.Client(grpcTarget(address), grpc.credentials.createInsecure());
    this.md.set("containerd-namespace", namespace);
  }

  private static stringField(field: number, v: string): Buffer {
    const b = Buffer.from(v);
    if (b.length > 127) throw new Error("lease id too long");
    return Buffer.concat([Buffer.from([(field << 3) | 2, b.length]), b]);
  }

  private unary(method: string, body: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/containerd.services.leases.v1.Leases/${method}`,
        (b: Buffer) => b,
        (b: Buffer) => b,
        body,
        this.md,
        (err) => (err ? reject(new Error(`Leases.${method}: ${err.message}`)) : resolve()),
      );
    });
  }

  async collect(): Promise<void> {
    const id = SyncGc.stringField(1, `bench-gc-${process.pid}-${++this.seq}`);
    await this.unary("Create", id);
    await this.unary("Delete", Buffer.concat([id, Buffer.from([(2 << 3) | 0, 1])]));
  }

  close(): void {
    this.client.close();
  }
}

// ---------------------------------------------------------------- cleanup

/**
 * Kills every task (killTasks), then deletes every container and image of
 * a namespace. Best effort: a benchmark's teardown must go on whatever
 * fails here.
 */
export async function clearNamespace(ctrd: Containerd, namespace: string, log: (msg: string) => void = () => {}): Promise<void> {
  const opts = { namespace, timeoutMs: 20_000 };
  const lines = async (args: string[]) => (await ctrd.ctr(args, opts)).split("\n").filter(Boolean);
  await killTasks(ctrd, namespace);
  try {
    for (const id of await lines(["containers", "ls", "-q"])) await ctrd.ctr(["containers", "rm", id], opts).catch(() => undefined);
    const images = await lines(["images", "ls", "-q"]);
    if (images.length) await ctrd.ctr(["images", "rm", "--sync", ...images], { ...opts, timeoutMs: 120_000 }).catch(() => undefined);
  } catch (err) {
    log(`clearing namespace ${namespace}: ${(err as Error).message}`);
  }
}
