/**
 * Exceptions as ZEO 5 sends them: a Python class name and the exception's `__dict__` or `args`.
 * The Python client maps the names below to ZODB exceptions (ZEO.asyncio.client.exc_factories);
 * any other name arrives as ZEO.Exceptions.ServerException. The one mapping of the storage API's
 * errors (domain and storage errors) to ZODB exceptions is zodbException, at the end.
 */
import { DomainError } from '../server/domain-errors';
import { StorageError } from '../storage/errors';
import { Z64, hex } from '../util/ids';

export class ZeoException extends Error {
  constructor(
    /** Fully qualified Python class, e.g. "ZODB.POSException.ConflictError". */
    readonly pyClass: string,
    /** A list (positional args) or a dict (the exception's __dict__). */
    readonly pyArgs: unknown[] | Record<string, unknown>,
    message: string,
  ) {
    super(message);
    this.name = 'ZeoException';
  }

  /** The `[class_name, args]` pair of an error reply. */
  reduce(): [string, unknown] {
    return [this.pyClass, this.pyArgs];
  }
}

/**
 * A failure after which the connection must be closed, so the client reconnects (to this or
 * another node) and verifies its cache: the outcome of a replicated command is unknown, the node
 * is too far behind, or the peer broke the protocol.
 */
export class ZeoDisconnect extends Error {
  readonly code = 'ZEO_DISCONNECT';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ZeoDisconnect';
  }
}

const POS = 'ZODB.POSException.';

export const posKeyError = (oid: Uint8Array): ZeoException =>
  new ZeoException(`${POS}POSKeyError`, [oid], `no object ${hex(oid)}`);

export function conflictError(
  kind: 'ConflictError' | 'ReadConflictError',
  message: string,
  oid: Uint8Array | null,
  serials: [Uint8Array, Uint8Array] | null,
): ZeoException {
  // ZEO's client builds ConflictError(message=, oid=, serials=) from this dict.
  return new ZeoException(`${POS}${kind}`, { message, oid, serials, class_name: null }, message);
}

export const readOnlyError = (why: string): ZeoException =>
  new ZeoException(`${POS}ReadOnlyError`, [], why);

export const storageTransactionError = (message: string): ZeoException =>
  new ZeoException(`${POS}StorageTransactionError`, [message], message);

/**
 * An UndoError as MultipleUndoErrors (its subclass) with one error: the msgpack ZEO client builds
 * that one from its name (ZEO.asyncio.client.exc_factories) but has no entry for UndoError itself,
 * which would arrive as ServerException.
 */
export const undoError = (message: string, oid?: Uint8Array): ZeoException =>
  new ZeoException(`${POS}MultipleUndoErrors`, { _errs: [[message, oid ?? null]] }, message);

export const storageError = (message: string): ZeoException =>
  new ZeoException(`${POS}StorageError`, [message], message);

export const unsupported = (message: string): ZeoException =>
  new ZeoException(`${POS}Unsupported`, [message], message);

export const valueError = (message: string): ZeoException =>
  new ZeoException('builtins.ValueError', [message], message);

export const typeError = (message: string): ZeoException =>
  new ZeoException('builtins.TypeError', [message], message);

export const keyError = (message: string): ZeoException =>
  new ZeoException('builtins.KeyError', [message], message);

/**
 * A storage API failure as the ZODB exception a ZEO client gets (`oid`: the object the call was
 * about, for a POSKeyError without one in the error). Other values are returned as they are.
 */
export function zodbException(e: unknown, oid?: Uint8Array): unknown {
  if (e instanceof DomainError) return storageError(e.message);
  if (!(e instanceof StorageError)) return e;
  switch (e.kind) {
    case 'NOT_FOUND':
    case 'HISTORY_PACKED': // as in FileStorage: a packed-away revision is no longer there
      return posKeyError(e.conflict?.oid ?? oid ?? Z64);
    case 'CONFLICT':
    case 'LOCKED':
    case 'UNDO_CONFLICT':
      return conflictError(
        'ConflictError',
        e.message,
        e.conflict?.oid ?? null,
        e.conflict ? [e.conflict.actual, e.conflict.expected] : null,
      );
    case 'READ_CONFLICT':
      return conflictError(
        'ReadConflictError',
        e.message,
        e.conflict?.oid ?? null,
        e.conflict ? [e.conflict.actual, e.conflict.expected] : null,
      );
    case 'UNKNOWN_TRANSACTION':
      return storageTransactionError(e.message);
    default:
      return storageError(e.message);
  }
}

/**
 * The exception a reply carries for an error no call mapped: ZODB exceptions as they are, other
 * storage API failures as a StorageError with their message; undefined for anything else (an
 * internal error, logged by the caller).
 */
export function replyException(e: unknown): ZeoException | undefined {
  if (e instanceof ZeoException) return e;
  if (e instanceof DomainError || e instanceof StorageError) return storageError(e.message);
  return undefined;
}
