/**
 * Typed errors of the core. Each carries a kind that mirrors containerd's
 * errdefs: the one place that speaks gRPC (src/wire/status.ts) maps the
 * kind to the status code containerd maps back on its side, and back again
 * for a peer's reply; nix2container reads it for its exit code. The core
 * never sees a code.
 */

/** An error carrying a gRPC-like kind. */
export abstract class KindedError extends Error {
  abstract readonly kind: ErrorKind;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export type ErrorKind =
  | "not-found"
  | "already-exists"
  | "failed-precondition"
  | "invalid-argument"
  | "unavailable"
  | "unimplemented"
  | "cancelled";

export class NotFoundError extends KindedError {
  readonly kind = "not-found" as const;
}
export class AlreadyExistsError extends KindedError {
  readonly kind = "already-exists" as const;
}
export class FailedPreconditionError extends KindedError {
  readonly kind = "failed-precondition" as const;
}
export class InvalidArgumentError extends KindedError {
  readonly kind = "invalid-argument" as const;
}
export class UnavailableError extends KindedError {
  readonly kind = "unavailable" as const;
}
export class UnimplementedError extends KindedError {
  readonly kind = "unimplemented" as const;
}
/** The caller gave up (cancelled or timed out); the work was stopped and undone. */
export class CancelledError extends KindedError {
  readonly kind = "cancelled" as const;
}
