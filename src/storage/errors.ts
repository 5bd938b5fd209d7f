/**
 * Storage errors. Each kind maps to one gRPC status at the API edge. Errors produced while
 * applying a command are deterministic results of the state machine (every replica produces
 * the same one), not crashes.
 */
export type StorageErrorKind =
  | 'CONFLICT' // stale base serial on store or delete
  | 'READ_CONFLICT' // checkCurrentSerial failed
  | 'UNDO_CONFLICT' // an object changed since the transaction being undone
  | 'LOCKED' // an object is held by a voted transaction
  | 'NOT_FOUND' // no such object / revision / transaction
  | 'HISTORY_PACKED' // the requested history was removed by pack
  | 'UNKNOWN_TRANSACTION' // Finish of a transaction that was never voted (or was aborted)
  | 'INVALID' // a malformed command
  | 'DUPLICATE_ID' // a transaction id already voted with a different content
  | 'UNAVAILABLE' // the store is being replaced by a snapshot (or an install failed): retry
  | 'SESSION_EXPIRED' // a client session's record was forgotten: a retry's outcome is unknown
  | 'SEQUENCE_OLD' // a later commit of the client session was applied already
  | 'LIMIT'; // a replicated bound is reached (open blob uploads): retry later

export interface ConflictInfo {
  oid: Buffer;
  expected: Buffer;
  actual: Buffer;
  currentData?: Buffer;
}

export class StorageError extends Error {
  constructor(
    readonly kind: StorageErrorKind,
    message: string,
    readonly conflict?: ConflictInfo,
  ) {
    super(message);
    this.name = 'StorageError';
  }

  /** Whether a client may retry (after re-reading): conflicts and locks, per ZODB. */
  get transient(): boolean {
    return (
      this.kind === 'CONFLICT' ||
      this.kind === 'READ_CONFLICT' ||
      this.kind === 'UNDO_CONFLICT' ||
      this.kind === 'LOCKED' ||
      this.kind === 'UNAVAILABLE' ||
      this.kind === 'LIMIT'
    );
  }
}
