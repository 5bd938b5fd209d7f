/**
 * Turning failures into gRPC statuses: the one place where domain errors (domain-errors.ts) and
 * storage errors (storage/errors.ts) meet gRPC status codes. Every error a client sees has the
 * fitting status code, a message that says what was wrong, and (where a client acts on it) an
 * ErrorDetail trailer. Transport code (the gRPC adapters, listeners, peer transport, security's
 * interceptor) may build an RpcError directly; the rest of the node throws domain errors.
 */
import * as grpc from '@grpc/grpc-js';
import type { ErrorDetail__Output } from '../generated/zeoraft/v1/ErrorDetail';
import { ErrorDetailInput, ErrorKind, STATUS_DETAILS_KEY, encodeStatusDetails } from '../proto';
import { StorageError, StorageErrorKind } from '../storage/errors';
import * as domain from './domain-errors';
import { DomainError, type DomainErrorCode } from './domain-errors';

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

/** The status and ErrorDetail kind of each domain error code (variants in fromDomainError). */
const DOMAIN_CODES: Record<DomainErrorCode, [grpc.status, ErrorKind | undefined]> = {
  NOT_LEADER: [grpc.status.UNAVAILABLE, 'NOT_LEADER'],
  OUTCOME_UNKNOWN: [grpc.status.UNAVAILABLE, 'OUTCOME_UNKNOWN'],
  DEADLINE_EXCEEDED: [grpc.status.DEADLINE_EXCEEDED, undefined],
  LIMIT_EXCEEDED: [grpc.status.RESOURCE_EXHAUSTED, 'LIMIT'],
  READ_ONLY: [grpc.status.PERMISSION_DENIED, 'READ_ONLY'],
  UNAUTHENTICATED: [grpc.status.UNAUTHENTICATED, undefined],
  PERMISSION_DENIED: [grpc.status.PERMISSION_DENIED, undefined],
  INVALID_ARGUMENT: [grpc.status.INVALID_ARGUMENT, 'INVALID'],
  UNKNOWN_STORAGE: [grpc.status.NOT_FOUND, 'INVALID'],
  REFUSED: [grpc.status.FAILED_PRECONDITION, 'INVALID'],
  CANCELLED: [grpc.status.CANCELLED, undefined],
};

/** A domain error as its gRPC status; a refusal relayed from the leader keeps its own. */
export function fromDomainError(e: DomainError): RpcError {
  if (e.relayed instanceof RpcError) return e.relayed;
  const [status, kind] = DOMAIN_CODES[e.code];
  // A deadline that passed while a command was unplaced or in flight is DEADLINE_EXCEEDED.
  const code =
    e.timedOut && (e.code === 'NOT_LEADER' || e.code === 'OUTCOME_UNKNOWN')
      ? grpc.status.DEADLINE_EXCEEDED
      : status;
  if (!kind) return new RpcError(code, e.message);
  return new RpcError(code, e.message, {
    kind,
    ...(e.leaderHint ? { leaderHint: e.leaderHint } : {}),
    ...(e.transient ? { transient: true } : {}),
  });
}

/**
 * A status a peer answered with (the leader refusing a forwarded command) as a domain error that
 * maps back to exactly that status and detail, with `leaderHint` for the client.
 */
export function domainErrorFromStatus(
  code: grpc.status,
  message: string,
  detail: ErrorDetail__Output | undefined,
  leaderHint: string,
): DomainError {
  const relayed = new RpcError(code, message, detail && { ...detail, leaderHint });
  const timedOut = code === grpc.status.DEADLINE_EXCEEDED;
  const options = { relayed, leaderHint, transient: detail?.transient ?? false, timedOut };
  // The status decides whether the command may have been appended (and may be retried); the
  // detail's kind, when there is one, says more within that.
  const kind = detail?.kind;
  let dc: DomainErrorCode;
  if (code === grpc.status.UNAVAILABLE || timedOut)
    dc =
      kind === 'NOT_LEADER'
        ? 'NOT_LEADER'
        : kind === 'OUTCOME_UNKNOWN' || !timedOut
          ? 'OUTCOME_UNKNOWN'
          : 'DEADLINE_EXCEEDED';
  else if (kind === 'READ_ONLY' && code === grpc.status.PERMISSION_DENIED) dc = 'READ_ONLY';
  else dc = STATUS_CODES.get(code) ?? 'REFUSED';
  return new DomainError(dc, message, options);
}

/** The domain code of a relayed status without a more telling ErrorDetail kind. */
const STATUS_CODES = new Map<grpc.status, DomainErrorCode>([
  [grpc.status.DEADLINE_EXCEEDED, 'DEADLINE_EXCEEDED'],
  [grpc.status.RESOURCE_EXHAUSTED, 'LIMIT_EXCEEDED'],
  [grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED'],
  [grpc.status.UNAUTHENTICATED, 'UNAUTHENTICATED'],
  [grpc.status.INVALID_ARGUMENT, 'INVALID_ARGUMENT'],
  [grpc.status.NOT_FOUND, 'UNKNOWN_STORAGE'],
  [grpc.status.CANCELLED, 'CANCELLED'],
]);

export const invalid = (message: string): RpcError =>
  fromDomainError(domain.invalidArgument(message));

export const unavailable = (message: string, leaderHint = ''): RpcError =>
  fromDomainError(domain.notLeader(message, leaderHint));

export const readOnly = (message: string): RpcError => fromDomainError(domain.readOnly(message));

/** A limit was hit; `transient` when the same request may succeed later (a node-wide budget). */
export const limit = (name: string, message: string, transient = false): RpcError =>
  fromDomainError(domain.limitExceeded(name, message, transient));

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

/** Any thrown value as an RpcError (unexpected errors become INTERNAL). */
export function toRpcError(e: unknown): RpcError {
  if (e instanceof RpcError) return e;
  if (e instanceof DomainError) return fromDomainError(e);
  if (e instanceof StorageError) return fromStorageError(e);
  return new RpcError(
    grpc.status.INTERNAL,
    `internal error: ${e instanceof Error ? e.message : String(e)}`,
  );
}

/** Any thrown value as a grpc ServiceError (unexpected errors become INTERNAL, never a crash). */
export function toServiceError(e: unknown): Partial<grpc.ServiceError> {
  const err = toRpcError(e);
  const metadata = new grpc.Metadata();
  if (err.detail)
    metadata.set(STATUS_DETAILS_KEY, encodeStatusDetails(err.code, err.message, err.detail));
  return { code: err.code, details: err.message, metadata };
}
