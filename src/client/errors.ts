/**
 * Client errors: one class per condition, each with a `code`, a `name` and the gRPC error as
 * `cause`. Conflict, read-conflict, disconnected and locked are transient (MISSION §2.8).
 */
import * as grpc from '@grpc/grpc-js';
import { decodeStatusDetails } from '../proto';
import type { ErrorDetail__Output } from '../generated/zeoraft/v1/ErrorDetail';

export class ZeoRaftError extends Error {
  readonly code: string = 'ZEORAFT_ERROR';
  readonly transient: boolean = false;
  constructor(
    message: string,
    readonly grpcCode?: grpc.status,
    readonly detail?: ErrorDetail__Output,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A store or delete based on a stale serial. `currentData` lets the application resolve it. */
export class ConflictError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_CONFLICT';
  override readonly transient = true;
  get oid(): Buffer | undefined {
    return this.detail?.oid;
  }
  get expectedSerial(): Buffer | undefined {
    return this.detail?.expectedSerial;
  }
  get actualSerial(): Buffer | undefined {
    return this.detail?.actualSerial;
  }
  get currentData(): Buffer | undefined {
    return this.detail?.currentData;
  }
}
export class ReadConflictError extends ConflictError {
  override readonly code = 'ZEORAFT_READ_CONFLICT' as any;
}
export class UndoConflictError extends ConflictError {
  override readonly code = 'ZEORAFT_UNDO_CONFLICT' as any;
}
export class LockedError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_LOCKED';
  override readonly transient = true;
}
/** ZODB's POSKeyError: the object (or revision) does not exist. Not transient. */
export class NotFoundError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_NOT_FOUND';
}
export class HistoryPackedError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_HISTORY_PACKED';
}
export class ReadOnlyError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_READ_ONLY';
}
/** No usable node right now (no leader, node down, node behind): retry, possibly elsewhere. */
export class DisconnectedError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_DISCONNECTED';
  override readonly transient = true;
}
export class InvalidArgumentError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_INVALID_ARGUMENT';
}
export class LimitError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_LIMIT';
}
export class AuthError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_AUTH';
}
export class TransactionError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_TRANSACTION';
}

/** Map a gRPC error to the matching client error. */
export function fromGrpcError(e: grpc.ServiceError): ZeoRaftError {
  const detail = decodeStatusDetails(e.metadata);
  const msg = e.details || e.message;
  const opts = { cause: e };
  switch (detail?.kind) {
    case 'CONFLICT':
      return new ConflictError(msg, e.code, detail, opts);
    case 'READ_CONFLICT':
      return new ReadConflictError(msg, e.code, detail, opts);
    case 'UNDO_CONFLICT':
      return new UndoConflictError(msg, e.code, detail, opts);
    case 'LOCKED':
      return new LockedError(msg, e.code, detail, opts);
    case 'HISTORY_PACKED':
      return new HistoryPackedError(msg, e.code, detail, opts);
    case 'READ_ONLY':
      return new ReadOnlyError(msg, e.code, detail, opts);
    case 'SESSION_EXPIRED':
      return new SessionExpiredError(msg, e.code, detail, opts);
    case 'SEQUENCE_OLD':
      return new SequenceOldError(msg, e.code, detail, opts);
    default:
  }
  switch (e.code) {
    case grpc.status.NOT_FOUND:
      return new NotFoundError(msg, e.code, detail, opts);
    case grpc.status.UNAVAILABLE:
    case grpc.status.DEADLINE_EXCEEDED:
    case grpc.status.CANCELLED:
      return new DisconnectedError(msg, e.code, detail, opts);
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidArgumentError(msg, e.code, detail, opts);
    case grpc.status.RESOURCE_EXHAUSTED:
      return new LimitError(msg, e.code, detail, opts);
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.UNAUTHENTICATED:
      return new AuthError(msg, e.code, detail, opts);
    case grpc.status.FAILED_PRECONDITION:
      return new TransactionError(msg, e.code, detail, opts);
    default:
      return new ZeoRaftError(msg, e.code, detail, opts);
  }
}

/**
 * The cluster forgot the commit's session (storage.proto CommitRequest): whether an earlier
 * attempt of a retried commit was applied cannot be known. Not transient.
 */
export class SessionExpiredError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_SESSION_EXPIRED';
}
/** A later commit of the session was applied already; this attempt was not. Not transient. */
export class SequenceOldError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_SEQUENCE_OLD';
}

/**
 * A commit (or a voted transaction's finish) could not be confirmed within the retry window, or
 * its session was forgotten before a retry: it may or may not have committed. Not transient —
 * retrying the work could apply it twice.
 */
export class CommitUnknownError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_COMMIT_UNKNOWN';
}
/** The ClientStorage was closed. */
export class ClientClosedError extends ZeoRaftError {
  override readonly code = 'ZEORAFT_CLOSED';
}

/** Whether retrying may succeed: conflicts, locks and disconnections (MISSION §2.8). */
export function isTransient(e: unknown): boolean {
  return e instanceof ZeoRaftError && e.transient;
}
