/**
 * Wall-clock time in microseconds. containerd keeps snapshot times in
 * nanoseconds and its snapshotter test suite checks that Update's `updated`
 * lies between two time.Now() readings taken around the call, so a clock
 * cut to milliseconds (Date.now()) fails it. Node has no microsecond wall
 * clock, so this one anchors the monotonic clock (process.hrtime) to the
 * instant Date.now() ticks to a new millisecond, and re-anchors when the
 * two drift apart by more than a millisecond (the wall clock was stepped).
 */

let anchorWallUs = 0;
let anchorHrNs = 0n;
let last = 0;

function anchor(): void {
  // Spin until the millisecond changes: at that instant the wall clock is
  // exactly on a millisecond boundary (at most one loop iteration late).
  const start = Date.now();
  let ms = start;
  while (ms === start) ms = Date.now();
  anchorHrNs = process.hrtime.bigint();
  anchorWallUs = ms * 1000;
}

/** Microseconds since the Unix epoch; strictly increasing across calls. */
export function nowMicros(): number {
  if (anchorHrNs === 0n) anchor();
  let us = anchorWallUs + Number((process.hrtime.bigint() - anchorHrNs) / 1000n);
  const wallMs = Date.now();
  if (us < wallMs * 1000 || us >= (wallMs + 2) * 1000) {
    anchor();
    us = anchorWallUs + Number((process.hrtime.bigint() - anchorHrNs) / 1000n);
  }
  // Two calls in the same microsecond still order (created < updated).
  last = us > last ? us : last + 1;
  return last;
}
