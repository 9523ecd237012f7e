/**
 * The one place where core errors become gRPC status codes (the server's
 * replies) and status codes become core errors (every client's failures).
 * The codes are those containerd's errdefs map to and from
 * (errdefs/grpc.go): containerd's unpacker, for one, relies on
 * AlreadyExists to skip a layer that is already there.
 */
import * as grpc from "@grpc/grpc-js";
import {
  AlreadyExistsError,
  CancelledError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  KindedError,
  UnavailableError,
  UnimplementedError,
  type ErrorKind,
} from "../errors.js";

const CODE: Record<ErrorKind, grpc.status> = {
  "not-found": grpc.status.NOT_FOUND,
  "already-exists": grpc.status.ALREADY_EXISTS,
  "failed-precondition": grpc.status.FAILED_PRECONDITION,
  "invalid-argument": grpc.status.INVALID_ARGUMENT,
  unavailable: grpc.status.UNAVAILABLE,
  unimplemented: grpc.status.UNIMPLEMENTED,
  cancelled: grpc.status.CANCELLED,
};

export function toStatus(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof KindedError) return { code: CODE[err.kind], details: err.message };
  const message = err instanceof Error ? err.message : String(err);
  return { code: grpc.status.UNKNOWN, details: message };
}

/** Maps a gRPC error from a peer back to the core's typed errors. */
export function fromStatus(err: unknown): Error {
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e?.code !== "number") return err instanceof Error ? err : new Error(String(err));
  const msg = e.details || e.message || "";
  switch (e.code) {
    case grpc.status.NOT_FOUND:
      return new NotFoundError(msg);
    case grpc.status.ALREADY_EXISTS:
      return new AlreadyExistsError(msg);
    case grpc.status.FAILED_PRECONDITION:
      return new FailedPreconditionError(msg);
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidArgumentError(msg);
    case grpc.status.UNAVAILABLE:
      return new UnavailableError(msg);
    case grpc.status.UNIMPLEMENTED:
      return new UnimplementedError(msg);
    case grpc.status.CANCELLED:
    case grpc.status.DEADLINE_EXCEEDED:
      return new CancelledError(msg);
    default:
      return new Error(msg);
  }
}
