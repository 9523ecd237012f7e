/**
 * Progress of a push or a load: blobs and bytes done of the total, on one
 * terminal line rewritten in place. Finished blobs get a line of their own
 * (a log, printed whether or not the output is a terminal); the live line
 * is drawn only on a terminal, so logs and pipes get no control sequences.
 */

export interface TransferProgress {
  /** The work ahead: how many blobs, how many bytes. */
  plan(blobs: number, bytes: number): void;
  /** A blob of `size` bytes begins moving. */
  begin(size: number): void;
  /** Bytes of the current blob the other side has (absolute: a resumed upload may go back). */
  at(bytes: number): void;
  /** The current blob (or one that needed no moving) is done; `line` is its log line. */
  finish(size: number, line: string): void;
  /** A log line, printed above the live line. */
  note(line: string): void;
  /** Clears the live line. */
  done(): void;
}

/** Formats a byte count for humans. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

const CLEAR = "\r\x1b[K";
/** Redraws at most this often; the terminal need not see every chunk. */
const REDRAW_MS = 100;

/** Progress written to `out`; `verb` starts the live line ("pushing", "loading"). */
export function streamProgress(out: NodeJS.WritableStream & { isTTY?: boolean }, verb: string): TransferProgress {
  const tty = out.isTTY === true;
  let blobs = 0;
  let blobsDone = 0;
  let bytes = 0;
  /** Bytes of finished blobs, and of the current one so far. */
  let bytesDone = 0;
  let current = 0;
  let live = false;
  let lastDraw = 0;
  const line = () => `${verb} ${blobsDone}/${blobs} blobs, ${formatBytes(bytesDone + current)} / ${formatBytes(bytes)}`;
  const draw = (force: boolean) => {
    if (!tty) return;
    const now = Date.now();
    if (!force && now - lastDraw < REDRAW_MS) return;
    lastDraw = now;
    out.write(`${CLEAR}${line()}`);
    live = true;
  };
  return {
    plan(b, n) {
      blobs = b;
      bytes = n;
      draw(true);
    },
    begin() {
      current = 0;
      draw(true);
    },
    at(n) {
      current = n;
      draw(false);
    },
    finish(size, text) {
      blobsDone++;
      bytesDone += size;
      current = 0;
      this.note(text);
    },
    note(text) {
      out.write(`${live ? CLEAR : ""}${text}\n`);
      live = false;
      if (blobs > 0 && blobsDone < blobs) draw(true);
    },
    done() {
      if (live) out.write(CLEAR);
      live = false;
    },
  };
}
