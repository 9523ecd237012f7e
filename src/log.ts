/**
 * Structured, levelled logs: one logfmt line per event on stderr, the format
 * containerd itself writes (time=... level=... msg=... key=value), so the
 * daemon's lines read and grep like containerd's in the same journal.
 */
export type Level = "debug" | "info" | "warn" | "error";

export const LEVELS: readonly Level[] = ["debug", "info", "warn", "error"];

const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export type Fields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  with(fields: Fields): Logger;
  enabled(level: Level): boolean;
}

function quote(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === "string" ? v : JSON.stringify(v) ?? String(v);
  return /^[A-Za-z0-9_./:@+-]+$/.test(s) ? s : JSON.stringify(s);
}

export function formatLine(level: Level, msg: string, fields: Fields, now = new Date()): string {
  let line = `time=${now.toISOString()} level=${level} msg=${JSON.stringify(msg)}`;
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    line += ` ${k}=${quote(v)}`;
  }
  return line;
}

export function createLogger(
  level: Level = "info",
  write: (line: string) => void = (l) => process.stderr.write(l + "\n"),
  base: Fields = {},
): Logger {
  const min = RANK[level];
  const emit = (l: Level, msg: string, fields?: Fields) => {
    if (RANK[l] < min) return;
    write(formatLine(l, msg, { ...base, ...fields }));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    with: (fields) => createLogger(level, write, { ...base, ...fields }),
    enabled: (l) => RANK[l] >= min,
  };
}

/** For library use and tests that want silence. */
export const nullLogger: Logger = createLogger("error", () => {});
