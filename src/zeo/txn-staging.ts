/**
 * A ZEO session's transaction as it is collected: tpc_begin, then the one-way calls storea,
 * deleteObject, checkCurrentSerialInTransaction, undoa, restorea and the blob uploads, each
 * checked and charged against the transaction limits as it arrives. An error of a one-way call is
 * kept and reported at vote (txn-finish.ts), as one-way calls cannot answer.
 */
import { randomUUID } from 'node:crypto';
import type { StoreOp, CheckOp } from '../storage/codec';
import { isIntSetRecord, isLengthRecord } from '../storage/zodb-resolve';
import { PickleStateError } from '../storage/pickle-reader';
import { packMetrics } from '../server/pack';
import { zodbReferences } from '../storage/zodb-refs';
import { proposalMayBeRetried } from '../server/domain-errors';
import { Limits, type Reservation } from '../server/limits';
import { ZEO_TXN_ID_PREFIX } from '../server/security';
import { hex, idCompare, tidFromTime } from '../util/ids';
import {
  baseSerialArg,
  bytesArg,
  idArg,
  optionalIdArg,
  textArg,
  toBuffer,
  txnHandleArg,
} from './args';
import {
  ZeoException,
  storageError,
  storageTransactionError,
  typeError,
  undoError,
  unsupported,
  valueError,
} from './errors';
import { ZeoBlobUpload } from './blob-upload';
import { type SessionContext, encodeExtension } from './session-context';

/**
 * A TID given to tpc_begin this far past the node's clock is refused: it names no time a source
 * database can have reached, and every later commit of the cluster would have to follow it.
 */
const GIVEN_TID_FUTURE_MAX_MS = 3_600_000;

export interface PendingTxn {
  handle: string;
  /** The replicated transaction id (unique across clients and nodes). */
  txnId: string;
  user: string;
  description: string;
  extension: Buffer;
  stores: Map<string, StoreOp>;
  checks: Map<string, CheckOp>;
  undos: Buffer[];
  /** Bytes staged: data, ids and metadata (max_txn_bytes, checked at each call that stages). */
  dataBytes: number;
  /** This transaction's share of the node's transaction memory budget. */
  memory?: Reservation;
  /** An error from a one-way call, reported at vote (one-way calls cannot answer). */
  error?: ZeoException;
  voted: boolean;
  /** A finish was proposed: a disconnect must not abort it. */
  finishing: boolean;
  /** Renews the vote's lease from the vote until finish, abort, close or the transaction timeout. */
  renewer?: NodeJS.Timeout;
  /** Its objects are locked while the client resolves the conflicts its vote answered. */
  reserved?: boolean;
  /** The blob uploads its stores name, settled before its vote (zeo/blob-upload.ts). */
  blobs?: Promise<number>[];
  /** The TID it commits at (tpc_begin with a TID: a restore), instead of one the cluster assigns. */
  tid?: Buffer;
  /** ZODB's transaction status (' ', or 'p' / 'u' given by a restore). */
  status: string;
}

/** Text that must be kept exactly (a restore's user and description): UTF-8, as it is stored. */
function exactText(v: unknown, name: string): void {
  if (v instanceof Uint8Array) {
    const b = toBuffer(v);
    if (!Buffer.from(b.toString('utf8'), 'utf8').equals(b))
      throw storageError(
        `the ${name} of a restored transaction is not UTF-8 (${b.subarray(0, 64).toString('hex')}): ZeoRaft keeps transaction metadata as text and would change it`,
      );
  }
}

/** ZODB's transaction statuses a restore may give (FileStorage's fsck accepts these). */
const STATUSES = new Set([' ', 'p', 'u']);

/**
 * The TID and status of tpc_begin(txn, tid, status): the TID is 8 bytes, not too far past the
 * clock; the status one of STATUSES. With a TID, user and description must be kept exactly.
 */
function restoreAt(
  tidArg: unknown,
  statusArg: unknown,
  user: unknown,
  description: unknown,
): { tid?: Buffer; status: string } {
  const tid = optionalIdArg(tidArg, 'tid');
  let status = ' ';
  if (statusArg instanceof Uint8Array) status = toBuffer(statusArg).toString('latin1');
  else if (typeof statusArg === 'string') status = statusArg;
  else if (statusArg !== null && statusArg !== undefined)
    throw typeError('status must be a one-character str');
  if (!STATUSES.has(status))
    throw storageError(
      `transaction status ${JSON.stringify(status.slice(0, 8))} is not one of ' ', 'p', 'u'`,
    );
  if (tid) {
    if (idCompare(tid, tidFromTime(Date.now() + GIVEN_TID_FUTURE_MAX_MS)) > 0)
      throw storageError(
        `TID ${hex(tid)} is more than ${GIVEN_TID_FUTURE_MAX_MS / 60_000} minutes past this node's clock`,
      );
    exactText(user, 'user');
    exactText(description, 'description');
  }
  return { tid, status };
}

/**
 * The references of a ZODB record, declared with its store so that pack can collect garbage as
 * FileStorage does; a record that is not a ZODB pickle has unknown references (no gc).
 */
function references(data: Buffer): { refs: Buffer[] } | { opaque: true } {
  try {
    return { refs: zodbReferences(data) };
  } catch (e) {
    if (e instanceof PickleStateError) return { opaque: true };
    throw e;
  }
}

/** Stop renewing a vote's lease (txn-finish.ts starts it). */
export function stopRenewing(t: PendingTxn | undefined): void {
  if (t?.renewer) clearInterval(t.renewer);
  if (t) t.renewer = undefined;
}

export class TxnStaging {
  txn: PendingTxn | undefined;
  private readonly connectionId = randomUUID();
  private txnCounter = 0;
  /** The blob between storeBlobStart and storeBlobEnd. */
  blobUpload: ZeoBlobUpload | undefined;

  constructor(private readonly ctx: SessionContext) {}

  tpcBegin(a: unknown[]): void {
    this.ctx.writable();
    const handle = txnHandleArg(a[0]);
    if (this.txn) {
      if (this.txn.handle === handle) return; // a duplicate tpc_begin
      throw storageTransactionError('Multiple simultaneous tpc_begin requests from one client.');
    }
    const user = textArg(a[1], 'user');
    const description = textArg(a[2], 'description');
    const extension = encodeExtension(a[3]);
    // A given TID and status (copyTransactionsFrom's restore) are checked now and any error is
    // raised at vote, as one-way calls cannot answer.
    let at: { tid?: Buffer; status: string } | ZeoException;
    try {
      at = restoreAt(a[4], a[5], a[1], a[2]);
    } catch (e) {
      if (!(e instanceof ZeoException)) throw e;
      at = e;
    }
    this.txn = {
      handle,
      txnId: `${ZEO_TXN_ID_PREFIX}${this.connectionId}:${++this.txnCounter}`,
      user,
      description,
      extension,
      stores: new Map(),
      checks: new Map(),
      undos: [],
      dataBytes: Buffer.byteLength(user) + Buffer.byteLength(description) + extension.length,
      voted: false,
      finishing: false,
      status: ' ',
    };
    if (at instanceof ZeoException) this.txn.error = at;
    else {
      this.txn.tid = at.tid;
      this.txn.status = at.status;
    }
    this.ctx.stats.active_txns++;
  }

  storea(a: unknown[]): void {
    this.stage(a[3], (t) => {
      const oid = idArg(a[0], 'oid');
      const data = bytesArg(a[2], 'data');
      this.charge(t, t.stores.get(hex(oid)), 16 + data.length);
      const op: StoreOp = { oid, serial: baseSerialArg(a[1]), data, ...references(data) };
      if (op.opaque) packMetrics(this.ctx.node).unreadableStored.inc();
      // Resolved on the server if it conflicts (a ZEO server's default mode), see vote().
      if (isLengthRecord(data) || isIntSetRecord(data)) op.resolve = true;
      t.stores.set(hex(oid), op);
      this.ctx.stats.stores++;
    });
  }

  deleteObject(a: unknown[]): void {
    this.stage(a[2], (t) => {
      const oid = idArg(a[0], 'oid');
      this.charge(t, t.stores.get(hex(oid)), 16);
      t.stores.set(hex(oid), { oid, serial: baseSerialArg(a[1]), delete: true });
      this.ctx.stats.stores++;
    });
  }

  checkCurrentSerialInTransaction(a: unknown[]): void {
    this.stage(a[2], (t) => {
      const oid = idArg(a[0], 'oid');
      this.charge(t, t.checks.get(hex(oid)), 16);
      t.checks.set(hex(oid), { oid, serial: idArg(a[1], 'serial') });
    });
  }

  /** undoa(transaction_id, txn) and undo(transaction_id, txn). */
  undo(a: unknown[]): void {
    this.stage(a[1], (t) => t.undos.push(this.undoId(a[0])));
  }

  restorea(a: unknown[]): void {
    this.stage(a[4], (t) => this.restore(t, a));
  }

  storeBlobStart(): void {
    this.ctx.writable();
    if (this.blobUpload) throw valueError('storeBlobStart before the previous storeBlobEnd');
    this.blobUpload = this.startBlobUpload();
  }

  storeBlobChunk(a: unknown[]): void {
    if (!this.blobUpload) throw valueError('storeBlobChunk without storeBlobStart');
    this.blobUpload.push(bytesArg(a[0], 'chunk'));
  }

  storeBlobEnd(a: unknown[]): void {
    const up = this.blobUpload;
    this.blobUpload = undefined;
    if (!up) throw valueError('storeBlobEnd without storeBlobStart');
    const done = up.finish();
    done.catch(() => undefined); // reported at vote
    this.stage(a[3], (t) => {
      const oid = idArg(a[0], 'oid');
      const data = bytesArg(a[2], 'data');
      this.charge(t, t.stores.get(hex(oid)), 16 + data.length);
      // Replaces the storea of the same object the client sent before (ZEO's storeBlob).
      t.stores.set(hex(oid), {
        oid,
        serial: baseSerialArg(a[1]),
        data,
        ...references(data),
        blobId: up.blobId,
      });
      (t.blobs ??= []).push(done);
    });
  }

  storeBlobShared(a: unknown[]): void {
    this.stage(a[a.length - 1], (t) => {
      t.error ??= unsupported(
        'a shared blob directory is not supported by ZeoRaft: configure the client with shared_blob_dir false (blobs are sent to the server)',
      );
    });
  }

  /** Apply a one-way transaction call; a call for another transaction is a protocol error. */
  private stage(handleArg: unknown, fn: (t: PendingTxn) => void): void {
    const handle = txnHandleArg(handleArg);
    const t = this.txn;
    if (!t || t.handle !== handle)
      throw storageTransactionError(`no current transaction ${handle}`);
    if (t.voted) throw storageTransactionError('the transaction was already voted');
    try {
      fn(t);
    } catch (e) {
      if (e instanceof ZeoException) t.error ??= e;
      else throw e;
    }
  }

  /**
   * ZODB's restore(oid, serial, data, prev_txn): a record copied from another storage, written as
   * given at the transaction's TID (the serial, the source's TID of the record, is that TID in a
   * copy and is not used), without a conflict check. `data` None is a record without data (an
   * undone creation); `prev_txn` is the source's backpointer, kept when it holds the same data here.
   */
  private restore(t: PendingTxn, a: unknown[]): void {
    const oid = idArg(a[0], 'oid');
    optionalIdArg(a[1], 'serial');
    const prev = optionalIdArg(a[3], 'prev_txn');
    if (a[2] === null || a[2] === undefined) {
      this.charge(t, t.stores.get(hex(oid)), 16);
      t.stores.set(hex(oid), { oid, delete: true, restore: true });
    } else {
      const data = bytesArg(a[2], 'data');
      this.charge(t, t.stores.get(hex(oid)), 16 + data.length);
      const op: StoreOp = { oid, data, restore: true, ...references(data) };
      if (prev) op.dataTid = prev;
      t.stores.set(hex(oid), op);
    }
    this.ctx.stats.stores++;
  }

  /**
   * Count an object of `bytes` (replacing `prev`, if any) against the transaction limits and the
   * node's memory budget before it is kept: a transaction past a limit stages nothing more and
   * fails at vote, so a client cannot grow the node's memory until it votes.
   */
  private charge(t: PendingTxn, prev: StoreOp | CheckOp | undefined, bytes: number): void {
    const prevBytes = prev ? 16 + (('data' in prev && prev.data?.length) || 0) : 0;
    const objects = t.stores.size + t.checks.size + (prev ? 0 : 1);
    const total = t.dataBytes - prevBytes + bytes;
    try {
      this.ctx.api.checkTransactionSize(objects, total);
      const more = Limits.txnCharge(objects, total) - (t.memory?.bytes ?? 0);
      if (more > 0) {
        if (t.memory) t.memory.add(more, 'a ZEO transaction');
        else t.memory = this.ctx.api.reserveTxnMemory(more, 'a ZEO transaction');
      }
    } catch (e) {
      throw storageError(e instanceof Error ? e.message : String(e));
    }
    t.dataBytes = total;
  }

  private undoId(v: unknown): Buffer {
    const b = bytesArg(v, 'transaction_id');
    if (b.length === 8) return b;
    const d = Buffer.from(b.toString('ascii'), 'base64');
    if (d.length === 8) return d;
    throw undoError(`not a transaction id: ${b.toString('hex')}`);
  }

  clearTxn(): void {
    stopRenewing(this.txn);
    if (this.txn && this.ctx.storage) this.ctx.stats.active_txns--;
    this.txn?.memory?.release();
    this.txn = undefined;
  }

  /** A blob upload of this connection (storeBlobStart): chunks replicated as they arrive. */
  private startBlobUpload(): ZeoBlobUpload {
    return new ZeoBlobUpload({
      storage: this.ctx.st,
      maxBlobBytes: this.ctx.node.config.limits.maxBlobBytes,
      propose: (cmd) => this.ctx.api.propose(cmd, { deadlineMs: this.ctx.deadline() }),
      reserve: (bytes) => this.ctx.api.reserveTxnMemory(bytes, 'a blob chunk'),
      pressure: (paused) => this.ctx.peer.pauseReading(paused),
      retryable: proposalMayBeRetried,
    });
  }
}
