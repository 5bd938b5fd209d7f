/**
 * Exceptions as ZEO 5 sends them: a Python class name and the exception's `__dict__` or `args`.
 * The Python client maps the names below to ZODB exceptions (ZEO.asyncio.client.exc_factories);
 * any other name arrives as ZEO.Exceptions.ServerException.
 */
import { hex } from '../util/ids';

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
