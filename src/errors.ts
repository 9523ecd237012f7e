/**
 * Typed errors of the core. They mirror containerd's errdefs so that the one
 * place that speaks gRPC (src/wire/status.ts) can map each class to the
 * status code containerd maps back on its side; the core never sees a code.
 */
export abstract class SnapshotterError extends Error {
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

export class NotFoundError extends SnapshotterError {
  readonly kind = "not-found" as const;
}
export class AlreadyExistsError extends SnapshotterError {
  readonly kind = "already-exists" as const;
}
export class FailedPreconditionError extends SnapshotterError {
  readonly kind = "failed-precondition" as const;
}
export class InvalidArgumentError extends SnapshotterError {
  readonly kind = "invalid-argument" as const;
}
export class UnavailableError extends SnapshotterError {
  readonly kind = "unavailable" as const;
}
export class UnimplementedError extends SnapshotterError {
  readonly kind = "unimplemented" as const;
}
/** The caller gave up (cancelled or timed out); the work was stopped and undone. */
export class CancelledError extends SnapshotterError {
  readonly kind = "cancelled" as const;
}
