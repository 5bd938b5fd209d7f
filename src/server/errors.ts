/**
 * Turning failures into gRPC statuses. Every error a client sees has the fitting status code, a
 * message that says what was wrong, and (where a client acts on it) an ErrorDetail trailer.
 */
import * as grpc from '@grpc/grpc-js';
import { ErrorDetailInput, ErrorKind, STATUS_DETAILS_KEY, encodeStatusDetails } from '../proto';
import { StorageError, StorageErrorKind } from '../storage/errors';

export class RpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly detail?: ErrorDetailInput,
  ) {
    super(message);
    this.name = 'RpcError';
  }
}

export const invalid = (message: string): RpcError =>
  new RpcError(grpc.status.INVALID_ARGUMENT, message, { kind: 'INVALID' });

export const unavailable = (message: string, leaderHint = ''): RpcError =>
  new RpcError(grpc.status.UNAVAILABLE, message, {
    kind: 'NOT_LEADER',
    leaderHint,
    transient: true,
  });

/** The write may or may not have committed: the node or its leader went away mid-flight. */
export const outcomeUnknown = (
  message: string,
  code: grpc.status = grpc.status.UNAVAILABLE,
): RpcError => new RpcError(code, message, { kind: 'OUTCOME_UNKNOWN', transient: true });

/** Whether an error says for certain that a command was not appended to the log (safe to retry). */
export function definitelyNotAppended(e: unknown): boolean {
  return (
    e instanceof RpcError && e.code === grpc.status.UNAVAILABLE && e.detail?.kind === 'NOT_LEADER'
  );
}

export const readOnly = (message: string): RpcError =>
  new RpcError(grpc.status.PERMISSION_DENIED, message, { kind: 'READ_ONLY' });

/** A limit was hit; `transient` when the same request may succeed later (a node-wide budget). */
export const limit = (name: string, message: string, transient = false): RpcError =>
  new RpcError(grpc.status.RESOURCE_EXHAUSTED, `limit ${name} exceeded: ${message}`, {
    kind: 'LIMIT',
    ...(transient ? { transient } : {}),
  });

const STORAGE_CODES: Record<StorageErrorKind, [grpc.status, ErrorKind]> = {
  CONFLICT: [grpc.status.ABORTED, 'CONFLICT'],
  READ_CONFLICT: [grpc.status.ABORTED, 'READ_CONFLICT'],
  UNDO_CONFLICT: [grpc.status.ABORTED, 'UNDO_CONFLICT'],
  LOCKED: [grpc.status.ABORTED, 'LOCKED'],
  NOT_FOUND: [grpc.status.NOT_FOUND, 'NOT_FOUND'],
  HISTORY_PACKED: [grpc.status.FAILED_PRECONDITION, 'HISTORY_PACKED'],
  UNKNOWN_TRANSACTION: [grpc.status.FAILED_PRECONDITION, 'INVALID'],
  INVALID: [grpc.status.INVALID_ARGUMENT, 'INVALID'],
  DUPLICATE_ID: [grpc.status.ALREADY_EXISTS, 'INVALID'],
  UNAVAILABLE: [grpc.status.UNAVAILABLE, 'NOT_LEADER'],
  SESSION_EXPIRED: [grpc.status.FAILED_PRECONDITION, 'SESSION_EXPIRED'],
  SEQUENCE_OLD: [grpc.status.FAILED_PRECONDITION, 'SEQUENCE_OLD'],
  LIMIT: [grpc.status.RESOURCE_EXHAUSTED, 'LIMIT'],
};

export function fromStorageError(e: StorageError): RpcError {
  const [code, kind] = STORAGE_CODES[e.kind];
  return new RpcError(code, e.message, {
    kind,
    oid: e.conflict?.oid,
    expectedSerial: e.conflict?.expected,
    actualSerial: e.conflict?.actual,
    currentData: e.conflict?.currentData,
    transient: e.transient,
  });
}

/** Any thrown value as a grpc ServiceError (unexpected errors become INTERNAL, never a crash). */
export function toServiceError(e: unknown): Partial<grpc.ServiceError> {
  let err: RpcError;
  if (e instanceof RpcError) err = e;
  else if (e instanceof StorageError) err = fromStorageError(e);
  else
    err = new RpcError(
      grpc.status.INTERNAL,
      `internal error: ${e instanceof Error ? e.message : String(e)}`,
    );
  const metadata = new grpc.Metadata();
  if (err.detail)
    metadata.set(STATUS_DETAILS_KEY, encodeStatusDetails(err.code, err.message, err.detail));
  return { code: err.code, details: err.message, metadata };
}
