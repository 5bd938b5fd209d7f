/**
 * Domain errors: what the node's application layer (storage-api.ts, the replicators, limits,
 * applied-index waits) reports, each condition with a code and no protocol in it. The store's own
 * errors (conflicts with their detail, not found, packed-away history, undo conflicts, unknown
 * transaction, ...) are StorageError (storage/errors.ts). Each protocol maps both in one file:
 * gRPC statuses and the ErrorDetail trailer in server/errors.ts, ZODB exceptions in zeo/errors.ts.
 */
import { StorageError } from '../storage/errors';

export type DomainErrorCode =
  /** This node cannot take the request and did not pass it on: retry (at `leaderHint` if known). */
  | 'NOT_LEADER'
  /** A write may or may not have committed: its node or leader went away mid-flight. */
  | 'OUTCOME_UNKNOWN'
  /** Not done by the request's deadline (a wait for an applied index, a read index). */
  | 'DEADLINE_EXCEEDED'
  /** A configured limit was hit; `limit` names it (max_txn_bytes, max_subscribers, ...). */
  | 'LIMIT_EXCEEDED'
  /** A write to a read-only node, storage, key or connection. */
  | 'READ_ONLY'
  /** The caller is not who it must be (no key, a revoked key). */
  | 'UNAUTHENTICATED'
  /** The caller may not do this. */
  | 'PERMISSION_DENIED'
  /** A malformed request value; the message names the field. */
  | 'INVALID_ARGUMENT'
  /** No storage of that name on this cluster. */
  | 'UNKNOWN_STORAGE'
  /** The Raft core refused the request in its present state (a membership change). */
  | 'REFUSED'
  /** The client went away or cancelled. */
  | 'CANCELLED';

export interface DomainErrorOptions {
  /** The leader's client address, '' when unknown. */
  leaderHint?: string;
  /** Whether the same request may succeed later (a node-wide budget, a leader change). */
  transient?: boolean;
  /** LIMIT_EXCEEDED: the limit's configuration name. */
  limit?: string;
  /**
   * The request's deadline passed. NOT_LEADER: no leader took the command in time (it was not
   * appended); OUTCOME_UNKNOWN: the deadline passed while the command was in flight.
   */
  timedOut?: boolean;
  /**
   * A refusal relayed from the leader as it came (a forwarded command): its wire form, which the
   * protocol mapping gives back unchanged. Opaque here.
   */
  relayed?: unknown;
  cause?: unknown;
}

export class DomainError extends Error {
  readonly leaderHint: string;
  readonly transient: boolean;
  readonly limit: string | undefined;
  readonly timedOut: boolean;
  readonly relayed: unknown;

  constructor(
    readonly code: DomainErrorCode,
    message: string,
    options: DomainErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DomainError';
    this.leaderHint = options.leaderHint ?? '';
    this.transient = options.transient ?? false;
    this.limit = options.limit;
    this.timedOut = options.timedOut ?? false;
    this.relayed = options.relayed;
  }
}

/** Everything the application layer throws on purpose: its own errors and the store's. */
export type ServiceFailure = DomainError | StorageError;

export const invalidArgument = (message: string): DomainError =>
  new DomainError('INVALID_ARGUMENT', message);

export const notLeader = (message: string, leaderHint = ''): DomainError =>
  new DomainError('NOT_LEADER', message, { leaderHint, transient: true });

/** No leader took the command before the deadline: it was not appended, and time is up. */
export const noLeaderInTime = (message: string): DomainError =>
  new DomainError('NOT_LEADER', message, { transient: true, timedOut: true });

/** The write may or may not have committed: the node or its leader went away mid-flight. */
export const outcomeUnknown = (message: string, timedOut = false): DomainError =>
  new DomainError('OUTCOME_UNKNOWN', message, { transient: true, timedOut });

export const deadlineExceeded = (message: string): DomainError =>
  new DomainError('DEADLINE_EXCEEDED', message);

export const readOnly = (message: string): DomainError => new DomainError('READ_ONLY', message);

/** A limit was hit; `transient` when the same request may succeed later (a node-wide budget). */
export const limitExceeded = (name: string, message: string, transient = false): DomainError =>
  new DomainError('LIMIT_EXCEEDED', `limit ${name} exceeded: ${message}`, {
    limit: name,
    transient,
  });

export const unknownStorage = (message: string): DomainError =>
  new DomainError('UNKNOWN_STORAGE', message);

/** The Raft core refused a request in its present state. */
export const refused = (message: string): DomainError => new DomainError('REFUSED', message);

/** Whether an error says for certain that a command was not appended to the log (safe to retry). */
export function definitelyNotAppended(e: unknown): boolean {
  return e instanceof DomainError && e.code === 'NOT_LEADER' && !e.timedOut;
}

/**
 * Whether a failed proposal may be proposed again by a caller whose command is idempotent (a
 * finish, a blob chunk): the leader changed, the outcome is unknown, the deadline passed, or a
 * node-wide budget was full. Anything else (a refusal of the command itself) is final.
 */
export function proposalMayBeRetried(e: unknown): boolean {
  return (
    e instanceof DomainError &&
    (e.code === 'NOT_LEADER' ||
      e.code === 'OUTCOME_UNKNOWN' ||
      e.code === 'DEADLINE_EXCEEDED' ||
      e.code === 'LIMIT_EXCEEDED')
  );
}
