/**
 * What every benchmark's main.js shares: its flags (--quick, --json FILE,
 * --help), the root check, one teardown whoever asks first (a signal or
 * the end of the run), the report on stdout and as JSON for bench/run.sh,
 * and the daemons' log tails when a run fails.
 */
import { existsSync, readdirSync, readFileSync, readlinkSync, statfsSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { msBetween, now, type BenchReport } from "./stats.js";

export interface BenchOptions {
  quick: boolean;
  json?: string;
  /** Values of the benchmark's own string flags, by flag name. */
  extra: Record<string, string | undefined>;
}

/**
 * Parses the flags; prints usage and exits on --help. `quickMeans`
 * completes "--quick ..."; `extra` adds string flags: name -> [ARG, help].
 */
export function benchOptions(quickMeans = "fewer repetitions (a smoke run)", extra: Record<string, [string, string]> = {}): BenchOptions {
  const { values } = parseArgs({
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
      ...Object.fromEntries(Object.keys(extra).map((k) => [k, { type: "string" as const }])),
    },
    strict: true,
  });
  if (values.help) {
    const own = Object.entries(extra);
    process.stdout.write(
      `usage: main.js [--quick] [--json FILE]${own.map(([k, [arg]]) => ` [--${k} ${arg}]`).join("")}\n` +
        `  --quick      ${quickMeans}\n` +
        "  --json FILE  also write the report as JSON (for bench/run.sh)\n" +
        own.map(([k, [arg, help]]) => `  --${k} ${arg}  ${help}\n`).join(""),
    );
    process.exit(0);
  }
  const v = values as Record<string, string | boolean | undefined>;
  return {
    quick: v["quick"] === true,
    ...(typeof v["json"] === "string" ? { json: v["json"] } : {}),
    extra: Object.fromEntries(Object.keys(extra).map((k) => [k, typeof v[k] === "string" ? (v[k] as string) : undefined])),
  };
}

/** The file system type of a path, for the report ("ext4", "tmpfs", ...). */
export function fsType(p: string): string {
  const magic: Record<number, string> = { 0xef53: "ext4", 0x58465342: "xfs", 0x9123683e: "btrfs", 0x01021994: "tmpfs", 0x794c7630: "overlayfs" };
  try {
    const t = statfsSync(p).type;
    return magic[t] ?? `0x${t.toString(16)}`;
  } catch {
    return "unknown";
  }
}

/**
 * Removes the links Nix keeps in /nix/var/nix/gcroots/auto for indirect
 * roots (nix-store --add-root) below `dir`, once `dir` is gone; Nix would
 * drop the dangling links itself at its next collection. Returns how many.
 */
export function removeStaleAutoRoots(dir: string): number {
  const auto = "/nix/var/nix/gcroots/auto";
  let removed = 0;
  let names: string[];
  try {
    names = readdirSync(auto);
  } catch {
    return 0;
  }
  for (const n of names) {
    const link = path.join(auto, n);
    try {
      if (readlinkSync(link).startsWith(dir + "/")) {
        unlinkSync(link);
        removed++;
      }
    } catch {
      /* not a link, or gone */
    }
  }
  return removed;
}

/** A preflight answer when one of the compiled programs is missing. */
export function missingBuild(files: readonly string[]): string | undefined {
  const missing = files.find((f) => !existsSync(f));
  return missing === undefined ? undefined : `${missing} is missing: build first (npx tsc -p .)`;
}

/** The last lines of a log file, or a note that there is none. */
export function tailFile(file: string, lines = 20): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

export interface BenchMain<E> {
  /** bench/<name>: used in messages. */
  name: string;
  opts: BenchOptions;
  /** Why this machine cannot run the benchmark, checked before anything starts. */
  preflight?: () => string | undefined;
  /** Creates the run's state (temp dirs); nothing that needs stopping yet. */
  init: () => E;
  run: (env: E) => Promise<BenchReport>;
  /** Stops everything the run started; called exactly once. */
  teardown: (env: E) => Promise<void>;
  /** Logs worth showing when the run fails: title -> file. */
  logs?: (env: E) => Record<string, string>;
}

/** Runs a benchmark as a process: exit 0 with a report, 1 on failure, 2 if it cannot run, 130 on a signal. */
export function benchMain<E>(b: BenchMain<E>): void {
  const say = (msg: string) => process.stderr.write(`bench/${b.name}: ${msg}\n`);
  const main = async (): Promise<number> => {
    const why = process.getuid?.() !== 0 ? "must run as root (it starts containerd and nix-snapshotter)" : b.preflight?.();
    if (why) {
      say(why);
      return 2;
    }
    const env = b.init();
    let stopping: Promise<void> | undefined;
    const stopAll = () => (stopping ??= b.teardown(env));
    let interrupted = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (interrupted) return;
      interrupted = true;
      say(`${sig}: stopping what the benchmark started`);
      stopAll().finally(() => process.exit(130));
    };
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    process.once("SIGHUP", onSignal);

    const started = now();
    try {
      const rep = await b.run(env);
      rep.meta = { ...rep.meta, seconds: Math.round(msBetween(started, now()) / 1000) };
      process.stdout.write(`## ${rep.title}\n\n${rep.markdown}`);
      if (b.opts.json) writeFileSync(b.opts.json, JSON.stringify(rep, null, 2) + "\n");
      say(`done in ${rep.meta["seconds"]} s`);
      return 0;
    } catch (err) {
      if (interrupted) return 130;
      say(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      for (const [title, file] of Object.entries(b.logs?.(env) ?? {})) process.stderr.write(`--- ${title} ${file} (tail) ---\n${tailFile(file)}\n`);
      return 1;
    } finally {
      await stopAll();
    }
  };
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      say(String(err));
      process.exit(1);
    },
  );
}

