/**
 * The object store's answers and events: what apply returns, what reads return, what listeners
 * receive. Re-exported by object-store.ts, which is where other modules import them from.
 */
import type { StoreOp } from './codec';
import type { StorageError } from './errors';

export interface CommittedRecord {
  oid: Buffer;
  data?: Buffer;
  deleted: boolean;
}

/**
 * Emitted after a snapshot replaced the whole state: the transactions it brought were not
 * emitted as CommitEvents, so listeners resynchronise (re-read from their position, or reset).
 */
export interface ReplacedEvent {
  index: number;
  lastTid: Buffer;
}

/** Emitted after a transaction is durably applied, in TID order. */
export interface CommitEvent {
  index: number;
  storage: string;
  tid: Buffer;
  records: CommittedRecord[];
}

export type ApplyResult =
  | { ok: true; tid?: Buffer; oids?: Buffer[]; removed?: number }
  | { ok: false; error: StorageError };

export interface LoadResult {
  data: Buffer;
  serial: Buffer;
}
export interface LoadBeforeResult {
  found: boolean;
  data?: Buffer;
  start?: Buffer;
  end?: Buffer;
}
export interface HistoryEntry {
  tid: Buffer;
  user: string;
  description: string;
  extension: Buffer;
  size: number;
}
export interface TransactionInfo {
  tid: Buffer;
  user: string;
  description: string;
  extension: Buffer;
  /** ZODB's transaction status: ' ', or what a restore gave ('p', 'u'). */
  status: string;
  records: { oid: Buffer; data: Buffer; deleted: boolean; dataTid: Buffer }[];
}
export interface StorageSummary {
  name: string;
  lastTid: Buffer;
  objectCount: number;
  packTid: Buffer;
  nextOid: Buffer;
}
/** An object whose undo needs application-level conflict resolution (the server runs none). */
export interface UndoResolution {
  oid: Buffer;
  /** Its current serial. */
  committed: Buffer;
  /** The transaction being undone. */
  undone: Buffer;
  /** The data to restore (the revision before `undone`), to be merged with the current data. */
  data: Buffer;
}

/** The stores that undo a list of transactions (ZODB's transactional undo, as FileStorage does it). */
export interface UndoPlan {
  /** One per object, based on its current serial; data restored from a revision carries dataTid. */
  stores: StoreOp[];
  /** Every object the undone transactions wrote, in order, without duplicates. */
  oids: Buffer[];
  conflicts: UndoResolution[];
}

export interface PreparedSummary {
  storage: string;
  txnId: string;
  deadlineMs: number;
  /** Objects it locks exclusively. */
  oids: Buffer[];
  /** Objects whose lock it shares with other resolved stores of them (PreparedRecord.resolved). */
  sharedOids?: Buffer[];
  /**
   * The node whose ZEO session made the vote (PreparedRecord.owner), and the deadline of its first
   * vote: the leader keeps the vote past its lease while that node lives, up to the transaction
   * timeout past that deadline (server/node.ts abortExpired). Absent for other votes.
   */
  owner?: string;
  votedDeadlineMs?: number;
}
