/**
 * One ZEO client connection's view of a storage: ZEO's ZEOStorage rebuilt on a ZeoRaft node.
 * Reads come from the node's applied state (after waiting for it to reach the client's view);
 * writes are replicated commands: tpc_begin/storea/... collect a transaction locally, `vote` is the
 * replicated prepare (the objects are then locked on every node), `tpc_finish` the replicated
 * finish. Conflicts on ZODB classes whose resolution rule is fixed (BTrees.Length, integer-key
 * BTrees sets) are resolved on
 * the server as ZEO does in its default mode, by code of our own (storage/zodb-resolve.ts); other
 * conflicts found at vote are returned for client-side resolution, as ZEO 5 does with
 * `client-conflict-resolution` on: the server never runs application code.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Command, StoreOp, CheckOp, Txn } from '../storage/codec';
import type { ApplyResult, CommitEvent, TransactionInfo, UndoPlan } from '../storage/object-store';
import { MAX_NEW_OIDS } from '../storage/object-store';
import { StorageError } from '../storage/errors';
import { isIntSetRecord, isLengthRecord } from '../storage/zodb-resolve';
import { PickleStateError } from '../storage/pickle-reader';
import { packMetrics, packStorage } from '../server/pack';
import { zodbReferences } from '../storage/zodb-refs';
import type { StorageNode } from '../server/node';
import { Limits, type Reservation } from '../server/limits';
import { VOTE_LEASE_MS } from '../server/config';
import { ZEO_TXN_ID_PREFIX } from '../server/security';
import { Z64, hex, idCompare, idNext, p64, tidFromTime, tidToTime, u64 } from '../util/ids';
import {
  arity,
  baseSerialArg,
  bytesArg,
  idArg,
  intArg,
  numberArg,
  optionalIdArg,
  textArg,
  toBuffer,
  txnHandleArg,
} from './args';
import {
  ZeoDisconnect,
  ZeoException,
  conflictError,
  keyError,
  posKeyError,
  readOnlyError,
  storageError,
  storageTransactionError,
  typeError,
  undoError,
  unsupported,
  valueError,
} from './errors';
import { decodeValue, encodeValue } from './marshal';
import { type LockNeed, type LockQueue, type LockTicket, lockNeed } from './lock-queue';
import { InvalidationOutbox } from './outbox';
import { ZeoBlobUpload } from './blob-upload';

/** ZEO hands out at most this many OIDs per new_oids call. */
const NEW_OIDS_MAX = 100;
const HISTORY_MAX = 1000;
const UNDO_LOG_MAX = 1000;
/** Current records (deleted objects included) one record_iternext call reads at most. */
const RECORD_ITERNEXT_SCAN_MAX_RECORDS = 100_000;
/** Open transaction/record iterators per connection. */
const ITERATORS_MAX = 100;
/** getInvalidations scans at most this many transactions; a client further behind drops its cache. */
const INVALIDATIONS_SCAN_MAX_TXNS = 10_000;
/**
 * A read at a TID this far beyond the node's clock names no transaction anyone has seen (ZEO's
 * ClientStorage.load sends loadBefore(oid, maxtid)): it is answered from the applied state.
 */
const FUTURE_TID_SLACK_MS = 60_000;
/** Invalidations one connection may have waiting behind its in-flight loads before it is cut off. */
const OUTBOX_EVENTS_MAX = 100_000;
/** Votes of one transaction that look again after finding this node behind the leader. */
const VOTE_ATTEMPTS_MAX = 3;
/** A voted transaction's lease is renewed this often while its session lives (see VOTE_LEASE_MS). */
const VOTE_RENEW_MS = 250;
/** A vote at a given TID that met other votes looks again after the next apply, or this long. */
const AT_TID_RETRY_MS = 50;
/**
 * A TID given to tpc_begin this far past the node's clock is refused: it names no time a source
 * database can have reached, and every later commit of the cluster would have to follow it.
 */
const GIVEN_TID_FUTURE_MAX_MS = 3_600_000;
/** How long tpc_finish retries a finish whose outcome is unknown (leader change) before giving up. */
const FINISH_RETRY_MS = 20_000;
const FINISH_RETRY_PAUSE_MS = 100;
/** Failed proposals whose RpcError codes mean "outcome unknown, try again". */
const RETRYABLE = new Set<number>([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/** What a session needs from its connection. */
export interface SessionPeer {
  /** A one-way server-to-client call (invalidateTransaction, info). */
  callAsync(method: string, args: unknown[]): void;
  /** Close the connection (the client reconnects and verifies its cache), logging why. */
  close(why: string): void;
  /** A one-way call that resolves once the connection's send buffer has drained (large data). */
  callAsyncDrained(method: string, args: unknown[]): Promise<void>;
  /** Stop (true) or resume (false) reading the client's messages (backpressure). */
  pauseReading(paused: boolean): void;
  readonly label: string;
}

/** A handler's answer: the reply, plus what must be sent right after it (in order). */
export class ReplyThen {
  constructor(
    readonly result: unknown,
    readonly after: () => void,
  ) {}
}

/** Per-storage counters, shared by the connections of one node (ZEO's StorageStats). */
export class ZeoStats {
  connections = 0;
  loads = 0;
  stores = 0;
  commits = 0;
  aborts = 0;
  active_txns = 0;
  conflicts = 0;
  conflicts_resolved = 0;
  readonly start = new Date().toUTCString();
}

interface PendingTxn {
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

interface TxnIterator {
  kind: 'txn';
  gen: AsyncGenerator<TransactionInfo>;
  last?: TransactionInfo;
}
interface RecordIterator {
  kind: 'record';
  records: TransactionInfo['records'];
  tid: Buffer;
  next: number;
}

const bytes = (s: string): Buffer => Buffer.from(s, 'utf8');

/** A transaction extension as stored by ZEO clients: the msgpack encoding of the ext dict. */
function encodeExtension(ext: unknown): Buffer {
  if (ext === null || ext === undefined) return Buffer.alloc(0);
  if (typeof ext !== 'object' || Array.isArray(ext) || ext instanceof Uint8Array)
    throw typeError('the transaction extension must be a dict');
  return Object.keys(ext).length ? encodeValue(ext) : Buffer.alloc(0);
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

/** The ext dict back; extensions written by other clients (opaque bytes) read as {}. */
function decodeExtension(b: Buffer): Record<string, unknown> {
  if (!b.length) return {};
  try {
    const v = decodeValue(b);
    if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array))
      return v as Record<string, unknown>;
  } catch {
    // not ours: fall through
  }
  return {};
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

export class ZeoSession {
  storage: string | undefined;
  private readOnly = false;
  private txn: PendingTxn | undefined;
  private readonly iterators = new Map<number, TxnIterator | RecordIterator>();
  private nextIteratorId = 0;
  private readonly connectionId = randomUUID();
  private txnCounter = 0;
  private unsubscribe: (() => void) | undefined;
  /** Orders invalidations after the replies that must precede them (see outbox.ts). */
  private readonly outbox = new InvalidationOutbox();
  private label = '';
  private closed = false;
  /** The blob between storeBlobStart and storeBlobEnd. */
  private blobUpload: ZeoBlobUpload | undefined;

  constructor(
    private readonly node: StorageNode,
    private readonly peer: SessionPeer,
    private readonly statsFor: (storage: string) => ZeoStats,
    private readonly lockQueue: LockQueue,
  ) {}

  get registered(): boolean {
    return this.storage !== undefined;
  }

  private get st(): string {
    if (this.storage === undefined) throw valueError('register() must be called first');
    return this.storage;
  }

  private get stats(): ZeoStats {
    return this.statsFor(this.st);
  }

  private deadline(): number {
    return Date.now() + this.node.config.defaultDeadlineMs;
  }

  private storageReadOnly(st: string): string | undefined {
    if (this.node.config.readOnly) return `node ${this.node.config.nodeId} is read-only`;
    if (this.node.security.zeoAccess === 'read-only')
      return 'ZEO clients are read-only on this node (security keys are on; ZEORAFT_ZEO_ACCESS)';
    if (this.node.config.storages.find((s) => s.name === st)?.readOnly)
      return `storage ${JSON.stringify(st)} is read-only`;
    return undefined;
  }

  private writable(): void {
    const why = this.storageReadOnly(this.st);
    if (why) throw readOnlyError(why);
    if (this.readOnly) throw readOnlyError('this connection was registered read-only');
  }

  /**
   * Propose a command. A failure to replicate (no leader, deadline) is answered as a
   * StorageError naming the cause; the command may still take effect (new_oids then wastes some
   * OIDs, an abort still releases its locks, a pack still packs).
   */
  private async propose(cmd: Command): Promise<ApplyResult> {
    try {
      return await this.node.replicator.propose(cmd, this.deadline());
    } catch (e) {
      throw storageError(`replication failed: ${e instanceof Error ? e.message : e}`);
    }
  }

  /**
   * Make this node's applied state include every transaction up to `tid` that anyone can have
   * seen (MISSION §2.6), without waiting for a TID that does not exist: a TID beyond what this
   * node applied takes a linearizable read (after it, this node has everything committed before
   * the request); a TID from the future names no transaction and needs nothing. A node that cannot
   * reach a leader cannot prove it is current: the connection is dropped and the client moves on.
   */
  private async caughtUp(tid: Buffer): Promise<void> {
    if (idCompare(this.node.store.lastTid, tid) >= 0) return;
    if (idCompare(tid, tidFromTime(Date.now() + FUTURE_TID_SLACK_MS)) > 0) return;
    try {
      await this.node.replicator.linearizableRead(this.deadline());
    } catch (e) {
      throw new ZeoDisconnect(
        `node ${this.node.config.nodeId} cannot confirm it is current: ${e instanceof Error ? e.message : e}`,
        { cause: e },
      );
    }
  }

  private fromStorage(e: unknown, oid?: Buffer): never {
    if (!(e instanceof StorageError)) throw e;
    switch (e.kind) {
      case 'NOT_FOUND':
      case 'HISTORY_PACKED': // as in FileStorage: a packed-away revision is no longer there
        throw posKeyError(e.conflict?.oid ?? oid ?? Z64);
      case 'CONFLICT':
      case 'LOCKED':
      case 'UNDO_CONFLICT':
        throw conflictError(
          'ConflictError',
          e.message,
          e.conflict?.oid ?? null,
          e.conflict ? [e.conflict.actual, e.conflict.expected] : null,
        );
      case 'READ_CONFLICT':
        throw conflictError(
          'ReadConflictError',
          e.message,
          e.conflict?.oid ?? null,
          e.conflict ? [e.conflict.actual, e.conflict.expected] : null,
        );
      case 'UNKNOWN_TRANSACTION':
        throw storageTransactionError(e.message);
      default:
        throw storageError(e.message);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Invalidations

  /** A committed transaction of any storage, in TID order (from ObjectStore.onCommit). */
  private onCommit(ev: CommitEvent): void {
    if (this.closed || ev.storage !== this.storage) return;
    if (this.outbox.queued >= OUTBOX_EVENTS_MAX) {
      this.peer.close(`over ${OUTBOX_EVENTS_MAX} invalidations waiting behind its loads`);
      return;
    }
    this.outbox.push(ev.tid, () => this.sendInvalidation(ev));
  }

  private sendInvalidation(ev: CommitEvent): void {
    this.peer.callAsync('invalidateTransaction', [ev.tid, ev.records.map((r) => r.oid)]);
    this.node.metrics.invalidationsSent.inc();
  }

  // ------------------------------------------------------------------------------------------
  // Dispatch

  /** One-way calls a client makes (errors close the connection, as in ZEO). */
  static readonly ONE_WAY = new Set([
    'tpc_begin',
    'storea',
    'checkCurrentSerialInTransaction',
    'deleteObject',
    'undoa',
    'restorea',
    'storeBlobStart',
    'storeBlobChunk',
    'storeBlobEnd',
    'storeBlobShared',
    'iterator_gc',
    'set_client_label',
  ]);

  /** Call a method by name; undefined when there is no such method (the caller closes). */
  handler(method: string): ((args: unknown[]) => unknown) | undefined {
    if (!this.registered) return method === 'register' ? (a) => this.register(a) : undefined;
    const h = this.methods[method];
    return h ? (args) => h.call(this, args) : undefined;
  }

  private readonly methods: Record<string, (this: ZeoSession, args: unknown[]) => unknown> = {
    get_info: function (a) {
      arity(a, 'get_info', 0);
      return this.getInfo();
    },
    lastTransaction: function (a) {
      arity(a, 'lastTransaction', 0);
      return this.node.store.storageSummary(this.st).lastTid;
    },
    getInvalidations: function (a) {
      arity(a, 'getInvalidations', 1);
      return this.getInvalidations(idArg(a[0], 'tid'));
    },
    loadBefore: function (a) {
      arity(a, 'loadBefore', 2);
      return this.loadBefore(idArg(a[0], 'oid'), idArg(a[1], 'tid'));
    },
    loadSerial: function (a) {
      arity(a, 'loadSerial', 2);
      return this.loadSerial(idArg(a[0], 'oid'), idArg(a[1], 'serial'));
    },
    getTid: function (a) {
      arity(a, 'getTid', 1);
      return this.getTid(idArg(a[0], 'oid'));
    },
    history: function (a) {
      arity(a, 'history', 1, 2);
      return this.history(idArg(a[0], 'oid'), intArg(a[1], 'size', 1));
    },
    record_iternext: function (a) {
      arity(a, 'record_iternext', 0, 1);
      return this.recordIternext(optionalIdArg(a[0], 'next'));
    },
    new_oids: function (a) {
      arity(a, 'new_oids', 0, 1);
      return this.newOids(intArg(a[0], 'n', NEW_OIDS_MAX));
    },
    new_oid: async function (a) {
      arity(a, 'new_oid', 0);
      return (await this.newOids(1))[0];
    },
    tpc_begin: function (a) {
      arity(a, 'tpc_begin', 4, 6);
      return this.tpcBegin(a);
    },
    storea: function (a) {
      arity(a, 'storea', 4);
      this.stage(a[3], (t) => {
        const oid = idArg(a[0], 'oid');
        const data = bytesArg(a[2], 'data');
        this.charge(t, t.stores.get(hex(oid)), 16 + data.length);
        const op: StoreOp = { oid, serial: baseSerialArg(a[1]), data, ...references(data) };
        if (op.opaque) packMetrics(this.node).unreadableStored.inc();
        // Resolved on the server if it conflicts (a ZEO server's default mode), see vote().
        if (isLengthRecord(data) || isIntSetRecord(data)) op.resolve = true;
        t.stores.set(hex(oid), op);
        this.stats.stores++;
      });
    },
    deleteObject: function (a) {
      arity(a, 'deleteObject', 3);
      this.stage(a[2], (t) => {
        const oid = idArg(a[0], 'oid');
        this.charge(t, t.stores.get(hex(oid)), 16);
        t.stores.set(hex(oid), { oid, serial: baseSerialArg(a[1]), delete: true });
        this.stats.stores++;
      });
    },
    checkCurrentSerialInTransaction: function (a) {
      arity(a, 'checkCurrentSerialInTransaction', 3);
      this.stage(a[2], (t) => {
        const oid = idArg(a[0], 'oid');
        this.charge(t, t.checks.get(hex(oid)), 16);
        t.checks.set(hex(oid), { oid, serial: idArg(a[1], 'serial') });
      });
    },
    undoa: function (a) {
      arity(a, 'undoa', 2);
      this.stage(a[1], (t) => t.undos.push(this.undoId(a[0])));
    },
    undo: function (a) {
      arity(a, 'undo', 2);
      this.stage(a[1], (t) => t.undos.push(this.undoId(a[0])));
    },
    restorea: function (a) {
      arity(a, 'restorea', 5);
      this.stage(a[4], (t) => this.restore(t, a));
    },
    storeBlobStart: function (a) {
      arity(a, 'storeBlobStart', 0);
      this.writable();
      if (this.blobUpload) throw valueError('storeBlobStart before the previous storeBlobEnd');
      this.blobUpload = this.startBlobUpload();
    },
    storeBlobChunk: function (a) {
      arity(a, 'storeBlobChunk', 1);
      if (!this.blobUpload) throw valueError('storeBlobChunk without storeBlobStart');
      this.blobUpload.push(bytesArg(a[0], 'chunk'));
    },
    storeBlobEnd: function (a) {
      arity(a, 'storeBlobEnd', 4);
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
    },
    storeBlobShared: function (a) {
      this.stage(a[a.length - 1], (t) => {
        t.error ??= unsupported(
          'a shared blob directory is not supported by ZeoRaft: configure the client with shared_blob_dir false (blobs are sent to the server)',
        );
      });
    },
    sendBlob: function (a) {
      arity(a, 'sendBlob', 2);
      return this.sendBlob(idArg(a[0], 'oid'), idArg(a[1], 'serial'));
    },
    vote: function (a) {
      arity(a, 'vote', 1);
      return this.vote(txnHandleArg(a[0]));
    },
    tpc_finish: function (a) {
      arity(a, 'tpc_finish', 1);
      return this.tpcFinish(txnHandleArg(a[0]));
    },
    tpc_abort: function (a) {
      arity(a, 'tpc_abort', 1);
      return this.tpcAbort(txnHandleArg(a[0]));
    },
    undoLog: function (a) {
      arity(a, 'undoLog', 0, 2);
      return this.undoLog(intArg(a[0], 'first', 0), intArg(a[1], 'last', -20), undefined);
    },
    undoInfo: function (a) {
      arity(a, 'undoInfo', 0, 3);
      const spec = a[2];
      if (spec !== undefined && spec !== null && (typeof spec !== 'object' || Array.isArray(spec)))
        throw typeError('specification must be a dict or None');
      return this.undoLog(
        intArg(a[0], 'first', 0),
        intArg(a[1], 'last', -20),
        (spec ?? undefined) as Record<string, unknown> | undefined,
      );
    },
    pack: function (a) {
      arity(a, 'pack', 1, 2);
      return this.pack(numberArg(a[0], 'time'), intArg(a[1], 'wait', 1));
    },
    iterator_start: function (a) {
      arity(a, 'iterator_start', 0, 2);
      return this.iteratorStart(optionalIdArg(a[0], 'start'), optionalIdArg(a[1], 'stop'));
    },
    iterator_next: function (a) {
      arity(a, 'iterator_next', 1);
      return this.iteratorNext(intArg(a[0], 'iid'));
    },
    iterator_record_start: function (a) {
      arity(a, 'iterator_record_start', 2);
      return this.iteratorRecordStart(intArg(a[0], 'txn_iid'), idArg(a[1], 'tid'));
    },
    iterator_record_next: function (a) {
      arity(a, 'iterator_record_next', 1);
      return this.iteratorRecordNext(intArg(a[0], 'iid'));
    },
    iterator_gc: function (a) {
      arity(a, 'iterator_gc', 1);
      if (!Array.isArray(a[0])) throw typeError('iids must be a list');
      for (const iid of a[0]) this.closeIterator(intArg(iid, 'iid'));
    },
    server_status: function (a) {
      arity(a, 'server_status', 0);
      return this.serverStatus(this.st);
    },
    set_client_label: function (a) {
      arity(a, 'set_client_label', 1);
      this.label = textArg(a[0], 'label', 256);
    },
    ping: function () {
      return null;
    },
  };

  // ------------------------------------------------------------------------------------------
  // Connection set-up

  private async register(a: unknown[]): Promise<Buffer> {
    arity(a, 'register', 2);
    const st = textArg(a[0], 'storage_id', 64);
    const readOnly = intArg(a[1], 'read_only') !== 0;
    if (this.storage !== undefined) throw valueError('duplicate register() call');
    if (!this.node.config.storages.some((s) => s.name === st))
      throw valueError(`unknown storage: ${st}`);
    if (!readOnly) {
      const why = this.storageReadOnly(st);
      if (why) throw readOnlyError(why);
    }
    // The client compares its cache's TID with ours and refuses a server behind it; a
    // linearizable point makes this node at least as new as anything the client can have seen.
    try {
      await this.node.replicator.linearizableRead(Date.now() + 5_000);
    } catch {
      // No leader right now: serve what this node has; the client refuses us if we are behind.
    }
    if (this.closed) throw new ZeoDisconnect('closed during register');
    this.storage = st;
    this.readOnly = readOnly;
    const stats = this.statsFor(st);
    stats.connections++;
    // Subscribe and read the last TID in the same tick: every later commit is an invalidation.
    this.unsubscribe = this.node.store.onCommit((ev) => this.onCommit(ev));
    return this.node.store.storageSummary(st).lastTid;
  }

  private getInfo(): Record<string, unknown> {
    const s = this.node.store.storageSummary(this.st);
    return {
      length: s.objectCount,
      size: 0,
      name: `ZeoRaft storage ${this.st} on node ${this.node.config.nodeId}`,
      supportsUndo: true,
      supports_record_iternext: true,
      interfaces: [
        ['ZODB.interfaces', 'IStorageIteration'],
        ['ZODB.interfaces', 'IStorageUndoable'],
        ['ZODB.interfaces', 'IStorageCurrentRecordIteration'],
        // Blobs in ZEO's non-shared mode (the client's blob_dir is its cache; see sendBlob).
        ['ZODB.interfaces', 'IBlobStorage'],
      ],
    };
  }

  /** (tid, oids) changed after `tid`, or null when history that old is not kept (drop the cache). */
  private async getInvalidations(tid: Buffer): Promise<[Buffer, Buffer[]] | null> {
    const st = this.st;
    const last = this.node.store.storageSummary(st).lastTid;
    if (idCompare(tid, last) >= 0) return [last, []];
    const oldest = await this.node.subscriptions.oldestResumable(st);
    if (idCompare(idNext(tid), oldest) < 0) return null;
    const oids = new Map<string, Buffer>();
    let latest = tid;
    let n = 0;
    for await (const t of this.node.store.iterate(st, idNext(tid), last)) {
      if (++n > INVALIDATIONS_SCAN_MAX_TXNS) return null;
      for (const oid of (await this.node.store.transactionOids(st, t.tid)) ?? [])
        oids.set(hex(oid), oid);
      latest = t.tid;
    }
    return [latest, [...oids.values()]];
  }

  // ------------------------------------------------------------------------------------------
  // Reads

  /**
   * (data, start, end) of the revision with start < tid <= end, or None. The reply is written
   * before any invalidation of a transaction applied during the read (outbox.ts): the client
   * caches it, as current when end is None.
   */
  private async loadBefore(oid: Buffer, tid: Buffer): Promise<ReplyThen> {
    if (u64(tid) > 0n) await this.caughtUp(p64(u64(tid) - 1n));
    this.stats.loads++;
    const hold = this.outbox.hold();
    try {
      const r = await this.node.store.loadBefore(this.st, oid, tid);
      const reply = r.found ? [r.data ?? Buffer.alloc(0), r.start as Buffer, r.end ?? null] : null;
      return new ReplyThen(reply, () => this.outbox.release(hold));
    } catch (e) {
      this.outbox.release(hold);
      // Packed-away history reads like "no revision" (ZODB then raises ReadConflictError).
      if (e instanceof StorageError && e.kind === 'HISTORY_PACKED')
        return new ReplyThen(null, () => undefined);
      return this.fromStorage(e, oid);
    }
  }

  private async loadSerial(oid: Buffer, serial: Buffer): Promise<Buffer> {
    await this.caughtUp(serial);
    this.stats.loads++;
    try {
      return await this.node.store.loadSerial(this.st, oid, serial);
    } catch (e) {
      return this.fromStorage(e, oid);
    }
  }

  /** The current serial; POSKeyError (a KeyError) for an unknown object or an undone creation. */
  private async getTid(oid: Buffer): Promise<Buffer> {
    try {
      return (await this.node.store.load(this.st, oid)).serial;
    } catch (e) {
      return this.fromStorage(e, oid);
    }
  }

  private async history(oid: Buffer, size: number): Promise<Record<string, unknown>[]> {
    const n = Math.min(Math.max(size, 1), HISTORY_MAX);
    try {
      const entries = await this.node.store.history(this.st, oid, n);
      return entries.map((e) => ({
        time: tidToTime(e.tid) / 1000,
        tid: e.tid,
        serial: e.tid,
        user_name: bytes(e.user),
        description: bytes(e.description),
        size: e.size,
      }));
    } catch (e) {
      return this.fromStorage(e, oid);
    }
  }

  /**
   * IStorageCurrentRecordIteration: (oid, tid, data, next_oid) of the first object at or after
   * `next`. One seek in the store's index of current objects, so gaps in the OID space cost
   * nothing; the work of one call is bounded by RECORD_ITERNEXT_SCAN_MAX_RECORDS (runs of deleted
   * objects) and stops when the client leaves.
   */
  private async recordIternext(
    next: Buffer | undefined,
  ): Promise<[Buffer, Buffer, Buffer, Buffer | null]> {
    const st = this.st;
    // Each pass is one bounded scan; another pass only when an object is deleted under us.
    for (let pass = 0; pass < 10; pass++) {
      const from = next ?? Z64;
      const r = await this.node.store.currentObjects(
        st,
        from,
        2,
        RECORD_ITERNEXT_SCAN_MAX_RECORDS,
        () => this.closed,
      );
      if (this.closed) throw new ZeoDisconnect('client left during record_iternext');
      if (r.oids.length === 0) {
        if (r.exhausted)
          throw storageError(
            `no object at or after ${hex(from)} among the next ${RECORD_ITERNEXT_SCAN_MAX_RECORDS} records (deleted objects); pack the storage or resume from ${hex(r.resumeAt ?? from)}`,
          );
        throw posKeyError(from);
      }
      const oid = r.oids[0];
      try {
        const cur = await this.node.store.load(st, oid);
        return [
          oid,
          cur.serial,
          cur.data,
          r.oids[1] ?? (r.exhausted ? (r.resumeAt ?? null) : null),
        ];
      } catch (e) {
        // Deleted between the scan and the load: look again from the next OID.
        if (!(e instanceof StorageError && e.kind === 'NOT_FOUND')) throw e;
        next = idNext(oid);
      }
    }
    throw storageError('objects kept being deleted during record_iternext; try again');
  }

  private async undoLog(
    first: number,
    last: number,
    spec: Record<string, unknown> | undefined,
  ): Promise<Record<string, unknown>[]> {
    if (last < 0) last = first - last;
    first = Math.max(0, first);
    last = Math.min(Math.max(last, first), first + UNDO_LOG_MAX);
    const entries = await this.node.store.undoLog(this.st, first, last);
    const out = entries.map((e) => ({
      ...decodeExtension(e.extension),
      id: e.tid,
      time: tidToTime(e.tid) / 1000,
      user_name: bytes(e.user),
      description: bytes(e.description),
    }));
    if (!spec) return out;
    const eq = (x: unknown, y: unknown): boolean =>
      x instanceof Uint8Array && y instanceof Uint8Array
        ? Buffer.compare(toBuffer(x), toBuffer(y)) === 0
        : x === y;
    return out.filter((d) =>
      Object.entries(spec).every(([k, v]) => eq((d as Record<string, unknown>)[k], v)),
    );
  }

  private iteratorStart(start: Buffer | undefined, stop: Buffer | undefined): number {
    if (this.iterators.size >= ITERATORS_MAX)
      throw storageError(`too many open iterators (at most ${ITERATORS_MAX})`);
    const iid = this.nextIteratorId++;
    this.iterators.set(iid, {
      kind: 'txn',
      gen: this.node.store.iterate(this.st, start ?? Z64, stop),
    });
    return iid;
  }

  private async iteratorNext(iid: number): Promise<unknown[] | null> {
    const it = this.iterators.get(iid);
    if (!it || it.kind !== 'txn') throw keyError(`no transaction iterator ${iid}`);
    const r = await it.gen.next();
    if (r.done) {
      this.iterators.delete(iid);
      return null;
    }
    it.last = r.value;
    const t = r.value;
    return [t.tid, t.status, bytes(t.user), bytes(t.description), decodeExtension(t.extension)];
  }

  private iteratorRecordStart(txnIid: number, tid: Buffer): number {
    const it = this.iterators.get(txnIid);
    if (!it || it.kind !== 'txn' || !it.last) throw keyError(`no transaction iterator ${txnIid}`);
    if (!it.last.tid.equals(tid))
      throw storageError(`out-of-order request for the records of transaction ${hex(tid)}`);
    if (this.iterators.size >= ITERATORS_MAX)
      throw storageError(`too many open iterators (at most ${ITERATORS_MAX})`);
    const iid = this.nextIteratorId++;
    this.iterators.set(iid, { kind: 'record', records: it.last.records, tid, next: 0 });
    return iid;
  }

  private iteratorRecordNext(iid: number): unknown[] | null {
    const it = this.iterators.get(iid);
    if (!it || it.kind !== 'record') throw keyError(`no record iterator ${iid}`);
    const r = it.records[it.next++];
    if (!r) {
      this.iterators.delete(iid);
      return null;
    }
    const dataTxn = r.dataTid && !r.dataTid.equals(Z64) ? r.dataTid : null;
    return [r.oid, it.tid, r.deleted ? null : r.data, dataTxn];
  }

  private closeIterator(iid: number): void {
    const it = this.iterators.get(iid);
    this.iterators.delete(iid);
    if (it?.kind === 'txn') void it.gen.return(undefined).catch(() => undefined);
  }

  serverStatus(st: string): Record<string, unknown> {
    const s = this.statsFor(st);
    const v = this.node.replicator.view();
    return {
      ...s,
      waiting: 0,
      'timeout-thread-is-alive': true,
      'last-transaction': hex(this.node.store.storageSummary(st).lastTid),
      'zeoraft-node': v.nodeId,
      'zeoraft-role': v.role,
      'zeoraft-leader': v.leaderId,
    };
  }

  // ------------------------------------------------------------------------------------------
  // Writes

  private async newOids(n: number): Promise<Buffer[]> {
    this.writable();
    const count = Math.min(Math.max(n, 1), NEW_OIDS_MAX, MAX_NEW_OIDS);
    const r = await this.propose({ newOids: { storage: this.st, count } });
    if (!r.ok) return this.fromStorage(r.error);
    return r.oids ?? [];
  }

  private tpcBegin(a: unknown[]): void {
    this.writable();
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
    this.stats.active_txns++;
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
    this.stats.stores++;
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
      this.node.limits.checkTransaction(objects, total);
      const more = Limits.txnCharge(objects, total) - (t.memory?.bytes ?? 0);
      if (more > 0) {
        if (t.memory) t.memory.add(more, 'a ZEO transaction');
        else t.memory = this.node.limits.reserveTxnMemory(more, 'a ZEO transaction');
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

  /**
   * Keep a vote alive while this session lives, up to the transaction timeout: one renewal in
   * flight at a time. A failed renewal is retried at the next tick; the lease covers several.
   */
  private renewLease(t: PendingTxn): void {
    this.stopRenewing(t);
    const st = this.st;
    const until = Date.now() + this.node.config.txnTimeoutMs;
    let inFlight = false;
    t.renewer = setInterval(() => {
      if (Date.now() > until) return this.stopRenewing(t);
      if (inFlight) return;
      inFlight = true;
      this.node.replicator
        .propose(
          { renew: { storage: st, txnId: t.txnId, leaseMs: VOTE_LEASE_MS } },
          Date.now() + VOTE_LEASE_MS,
        )
        .catch((e: unknown) =>
          this.node.log.debug({ txn: t.txnId, error: String(e) }, 'zeo: vote renewal failed'),
        )
        .finally(() => (inFlight = false));
    }, VOTE_RENEW_MS);
  }

  private stopRenewing(t: PendingTxn | undefined): void {
    if (t?.renewer) clearInterval(t.renewer);
    if (t) t.renewer = undefined;
  }

  private clearTxn(): void {
    this.stopRenewing(this.txn);
    if (this.txn && this.storage) this.stats.active_txns--;
    this.txn?.memory?.release();
    this.txn = undefined;
  }

  /** The undo of this transaction's undoa calls; failures are UndoError, as in ZODB. */
  private async undoPlan(tids: Buffer[]): Promise<UndoPlan> {
    try {
      return await this.node.store.planUndo(this.st, tids);
    } catch (e) {
      if (!(e instanceof StorageError)) throw e;
      if (e.kind === 'NOT_FOUND' || e.kind === 'HISTORY_PACKED' || e.kind === 'UNDO_CONFLICT')
        throw undoError(e.message, e.conflict?.oid);
      return this.fromStorage(e);
    }
  }

  private conflictDict(op: StoreOp, actual: Buffer): Record<string, unknown> {
    return { oid: op.oid, serials: [actual, op.serial ?? Z64], data: op.data ?? Buffer.alloc(0) };
  }

  /**
   * The replicated prepare. Returns ZEO's vote answer: a list whose dict entries are conflicts for
   * the client to resolve (it stores the resolved data and votes again) and whose bytes entries
   * are OIDs the server changed for it (undo). Once it returns without conflicts, finish cannot
   * fail: the objects are locked on every node.
   */
  private async vote(handle: string): Promise<unknown[]> {
    const t = this.txn;
    if (!t || t.handle !== handle)
      throw storageTransactionError(`no current transaction ${handle}`);
    if (t.voted) return [];
    try {
      this.writable();
      if (t.error) throw t.error;
      // Every blob the transaction names is replicated before its vote names it.
      if (t.blobs?.length) await Promise.all(t.blobs);
      if (this.txn !== t)
        throw storageTransactionError(`transaction ${handle} ended during its vote`);
      const stores = new Map(t.stores);
      let undone: Buffer[] = [];
      if (t.undos.length) {
        const plan = await this.undoPlan(t.undos);
        undone = plan.oids;
        // A store of the same object in this transaction wins over the undo (ZODB applies the
        // transaction's records in order, and a store comes after the undo it follows).
        for (const op of plan.stores) if (!stores.has(hex(op.oid))) stores.set(hex(op.oid), op);
        // An undo that needs conflict resolution fails, as in a ZEO server with
        // client-conflict-resolution on (the server runs no application code).
        const c = plan.conflicts.find((x) => !t.stores.has(hex(x.oid)));
        if (c)
          throw undoError(
            `Some data were modified by a later transaction (object ${hex(c.oid)})`,
            c.oid,
          );
      }
      const checks = [...t.checks.entries()].filter(([k]) => !stores.has(k)).map(([, c]) => c);
      this.node.limits.checkTransaction(stores.size + checks.length, t.dataBytes);
      this.node.limits.checkPrepared(this.node.store.preparedTransactions().length);
      const txn: Txn = {
        storage: this.st,
        user: t.user,
        description: t.description,
        extension: t.extension,
        stores: [...stores.values()],
        checks,
      };
      if (t.status !== ' ') txn.status = t.status;
      if (t.tid) {
        // One vote at the given TID: it waits until nothing else is voted, then holds the cluster's
        // commits until its finish. A conflict (a store at a given TID) is the client's error.
        const r = await this.prepareAtTid({
          prepare: { txnId: t.txnId, txn, leaseMs: VOTE_LEASE_MS, tid: t.tid },
        });
        if (!r.ok) return this.fromStorage(r.error);
        t.voted = true;
        this.renewLease(t);
        return undone;
      }
      const oids = [...txn.stores!, ...checks].map((x) => x.oid as Buffer);
      for (let attempt = 1; ; attempt++) {
        // Conflicts visible in the applied state are all answered at once (with their objects
        // reserved, below); the prepare remains the authority, as this node may be behind.
        let conflicts = await this.conflicts(t);
        if (!conflicts.length) {
          // A leased vote: it outlives its session (client gone, node dead) by about a lease.
          const r = await this.prepareWithLockWait({
            prepare: { txnId: t.txnId, txn, leaseMs: VOTE_LEASE_MS },
          });
          if (r.ok) {
            t.voted = true;
            t.reserved = false;
            this.renewLease(t);
            // Stores the server may resolve at finish: the client must not cache its own data for
            // them (ZEO's vote answer: OIDs the server changed).
            return [...undone, ...this.serverResolved(t)];
          }
          const e = r.error;
          const c = e.conflict;
          const op = c ? t.stores.get(hex(c.oid)) : undefined;
          // A store the server was to resolve conflicts only when its apply could not resolve
          // it: that is final, the client resolves it.
          if (
            e.kind !== 'CONFLICT' ||
            !c ||
            !op ||
            op.delete ||
            op.resolve ||
            attempt >= VOTE_ATTEMPTS_MAX
          ) {
            this.countConflicts(1);
            if (e.kind === 'CONFLICT' && c && op && !op.delete)
              return [this.conflictDict(op, c.actual)];
            return this.fromStorage(e);
          }
          await this.catchUp(); // this node was behind the leader: look again
          continue;
        }
        // Reserve every object of the transaction so that the client's resolution is not
        // overtaken by another commit before it votes again (ZEO resolves conflicts under its
        // commit lock for the same reason): other votes on these objects wait behind it.
        const r = await this.prepareWithLockWait({
          prepare: {
            txnId: t.txnId,
            txn: { storage: this.st, checks: oids.map((oid) => ({ oid })) },
            leaseMs: VOTE_LEASE_MS,
            reserve: true,
          },
        });
        if (r.ok) {
          t.reserved = true;
          this.renewLease(t);
          // Applied here, and locked: the serials read now are the ones the next vote meets.
          conflicts = await this.conflicts(t);
          if (!conflicts.length) continue;
        }
        this.countConflicts(conflicts.length);
        return conflicts; // if not reserved, the client resolves and votes again all the same
      }
    } catch (e) {
      if (t.reserved) this.abortVote(t, 'vote failed');
      if (!(e instanceof ZeoDisconnect)) this.clearTxn();
      throw e;
    }
  }

  /** Stores of existing objects that the server resolves if they conflict (StoreOp.resolve). */
  private serverResolved(t: PendingTxn): Buffer[] {
    return [...t.stores.values()]
      .filter((op) => op.resolve && idCompare(op.serial ?? Z64, Z64) !== 0)
      .map((op) => op.oid as Buffer);
  }

  /**
   * ZEO's conflict answers for the stores whose base serial is older than the current one, except
   * those the server resolves (if it cannot after all, the vote's prepare answers the conflict).
   */
  private async conflicts(t: PendingTxn): Promise<Record<string, unknown>[]> {
    const out: Record<string, unknown>[] = [];
    for (const op of t.stores.values()) {
      if (op.delete || op.resolve || op.restore) continue;
      const cur = await this.node.store.currentSerial(this.st, op.oid as Buffer);
      if (idCompare(cur, op.serial ?? Z64) > 0) out.push(this.conflictDict(op, cur));
    }
    return out;
  }

  private countConflicts(n: number): void {
    this.stats.conflicts += n;
    this.node.metrics.conflicts.inc(n);
  }

  /** Apply everything committed so far (a linearizable read); false when that is not possible. */
  private async catchUp(): Promise<boolean> {
    try {
      await this.node.replicator.linearizableRead(this.deadline());
      return true;
    } catch {
      return false;
    }
  }

  /** Release a vote or reservation (best effort: its lease is the backstop). */
  private abortVote(t: PendingTxn, why: string): void {
    const st = this.storage;
    if (!st) return;
    this.node.replicator
      .propose({ abort: { storage: st, txnId: t.txnId, reason: 'client' } }, this.deadline())
      .catch((e: unknown) =>
        this.node.log.warn(
          { txn: t.txnId, why, error: String(e) },
          'zeo: abort failed; the vote lease will release it',
        ),
      );
  }

  /**
   * Propose a prepare, waiting (bounded) while a voted transaction holds one of its objects. Votes
   * waiting on this node go in arrival order (lock-queue.ts): a newcomer queues behind earlier
   * waiters for the same objects, and a waiter proposes again only when its turn comes.
   */
  private async prepareWithLockWait(
    cmd: Extract<Command, { prepare: unknown }>,
  ): Promise<ApplyResult> {
    const end = Date.now() + this.node.config.lockWaitMs;
    const txnId = cmd.prepare.txnId;
    const txn = cmd.prepare.txn;
    const needs: LockNeed[] = [
      ...(txn.stores ?? []).map((op) =>
        lockNeed(txn.storage, op.oid, op.resolve === true && !cmd.prepare.reserve),
      ),
      ...(txn.checks ?? []).map((op) => lockNeed(txn.storage, op.oid, false)),
    ];
    let ticket: LockTicket | undefined;
    try {
      if (this.lockQueue.behindOthers(needs, txnId)) {
        ticket = this.lockQueue.enter(needs, txnId);
        await ticket.wait(end);
      }
      for (;;) {
        let r: ApplyResult;
        try {
          r = await this.node.replicator.propose(cmd, this.deadline());
        } catch (e) {
          // Outcome unknown: the prepare may still commit and hold locks. Abort it (best effort;
          // the leader's transaction timeout is the backstop) and fail the vote.
          this.node.replicator
            .propose({ abort: { storage: this.st, txnId, reason: 'client' } }, this.deadline())
            .catch(() => undefined);
          throw storageError(`vote failed: ${e instanceof Error ? e.message : e}`);
        }
        if (r.ok || r.error.kind !== 'LOCKED' || Date.now() >= end || this.closed) return r;
        ticket ??= this.lockQueue.enter(needs, txnId);
        await ticket.wait(end);
      }
    } finally {
      ticket?.leave();
    }
  }

  /**
   * Propose a vote at a given TID, waiting (up to ZEORAFT_LOCK_WAIT_MS) while other transactions
   * are voted: it is accepted only when it is the one voted transaction.
   */
  private async prepareAtTid(cmd: Extract<Command, { prepare: unknown }>): Promise<ApplyResult> {
    const end = Date.now() + this.node.config.lockWaitMs;
    for (;;) {
      let r: ApplyResult;
      try {
        r = await this.node.replicator.propose(cmd, this.deadline());
      } catch (e) {
        this.node.replicator
          .propose(
            { abort: { storage: this.st, txnId: cmd.prepare.txnId, reason: 'client' } },
            this.deadline(),
          )
          .catch(() => undefined);
        throw storageError(`vote failed: ${e instanceof Error ? e.message : e}`);
      }
      if (r.ok || r.error.kind !== 'LOCKED' || Date.now() >= end || this.closed) return r;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, AT_TID_RETRY_MS);
        const unlisten = this.node.store.onApplied(done);
        function done(): void {
          clearTimeout(timer);
          unlisten();
          resolve();
        }
      });
    }
  }

  private async tpcFinish(handle: string): Promise<unknown> {
    const t = this.txn;
    if (!t || t.handle !== handle) return null; // ZEO answers None for a stale id
    if (!t.voted) throw storageTransactionError('tpc_finish before a successful vote');
    const st = this.st;
    // Invalidations applied from now on wait until the TID of this one is known.
    const hold = this.outbox.hold();
    t.finishing = true;
    const started = Date.now();
    let r: ApplyResult | undefined;
    const end = Date.now() + FINISH_RETRY_MS;
    for (;;) {
      try {
        r = await this.node.replicator.propose(
          { finish: { storage: st, txnId: t.txnId, tid: Z64 } },
          this.deadline(),
        );
        break;
      } catch (e) {
        // A finish is idempotent (the store remembers finished transaction ids): retry it
        // through a leader change. Past the retry window the outcome is unknown: disconnect.
        const code = (e as { code?: number }).code;
        if (this.closed || Date.now() >= end || code === undefined || !RETRYABLE.has(code)) {
          this.outbox.release(hold);
          throw new ZeoDisconnect(`tpc_finish failed: ${e instanceof Error ? e.message : e}`, {
            cause: e,
          });
        }
        await new Promise((res) => setTimeout(res, FINISH_RETRY_PAUSE_MS));
      }
    }
    this.clearTxn();
    if (!r.ok) {
      this.outbox.release(hold);
      return this.fromStorage(r.error);
    }
    const tid = r.tid as Buffer;
    this.stats.commits++;
    this.node.metrics.observeCommit(Date.now() - started);
    // ZEO's order: invalidations of earlier transactions, `info`, the reply, then later ones.
    // The client does not get an invalidation for its own transaction.
    await this.outbox.narrow(hold, tid);
    const s = this.node.store.storageSummary(st);
    this.peer.callAsync('info', [{ length: s.objectCount, size: 0 }]);
    return new ReplyThen(tid, () => this.outbox.release(hold));
  }

  private async tpcAbort(handle: string): Promise<null> {
    const t = this.txn;
    if (!t || t.handle !== handle) return null;
    this.clearTxn();
    this.stats.aborts++;
    if (t.voted || t.reserved) {
      const r = await this.propose({
        abort: { storage: this.st, txnId: t.txnId, reason: 'client' },
      });
      if (!r.ok) this.fromStorage(r.error);
    }
    return null;
  }

  /** A blob upload of this connection (storeBlobStart): chunks replicated as they arrive. */
  private startBlobUpload(): ZeoBlobUpload {
    return new ZeoBlobUpload({
      storage: this.st,
      maxBlobBytes: this.node.config.limits.maxBlobBytes,
      propose: (cmd) => this.node.replicator.propose(cmd, this.deadline()),
      reserve: (bytes) => this.node.limits.reserveTxnMemory(bytes, 'a blob chunk'),
      pressure: (paused) => this.peer.pauseReading(paused),
      retryable: (e) => RETRYABLE.has((e as { code?: number }).code ?? -1),
    });
  }

  /**
   * ZEO's sendBlob: the blob of revision `serial` goes to the client as receiveBlobStart,
   * receiveBlobChunk..., receiveBlobStop (one stored chunk per message, each written once the
   * previous ones drained), then the reply. A revision without a blob is POSKeyError.
   */
  private async sendBlob(oid: Buffer, serial: Buffer): Promise<null> {
    await this.caughtUp(serial);
    const st = this.st;
    let blob: { blobId: Buffer; size: number };
    try {
      blob = await this.node.store.blobOf(st, oid, serial);
    } catch (e) {
      return this.fromStorage(e, oid);
    }
    this.peer.callAsync('receiveBlobStart', [oid, serial]);
    try {
      for await (const chunk of this.node.store.blobChunks(st, blob.blobId, blob.size)) {
        if (this.closed) throw new ZeoDisconnect('client left during sendBlob');
        await this.peer.callAsyncDrained('receiveBlobChunk', [oid, serial, chunk]);
      }
    } catch (e) {
      if (e instanceof ZeoDisconnect) throw e;
      // The client holds a partial download it cannot discard by itself: it reconnects.
      throw new ZeoDisconnect(`sendBlob failed part-way: ${e instanceof Error ? e.message : e}`);
    }
    this.peer.callAsync('receiveBlobStop', [oid, serial]);
    return null;
  }

  private async pack(time: number, wait: number): Promise<null> {
    this.writable();
    // As FileStorage's pack: revisions not needed to read at or after the pack time go, and so
    // do objects unreachable from the root then (references read from the ZODB pickles at
    // store time; an unreadable record reachable then stops the collection).
    const run = async (): Promise<void> => {
      // A time after now packs as of now (nothing newer exists); in bounded steps (pack-gc.ts).
      const packTid = tidFromTime(Math.min(time * 1000, Date.now()));
      try {
        await packStorage(this.node, this.st, packTid, true, (cmd) => this.propose(cmd));
      } catch (e) {
        this.fromStorage(e);
      }
      const s = this.node.store.storageSummary(this.st);
      this.peer.callAsync('info', [{ length: s.objectCount, size: 0 }]);
    };
    if (wait) await run();
    else
      run().catch((e: unknown) =>
        this.node.log.warn({ error: String(e) }, 'zeo: background pack failed'),
      );
    return null;
  }

  /** The connection is gone: abort a voted transaction (ZEO's notify_disconnected) and clean up. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.blobUpload?.stop();
    this.unsubscribe?.();
    this.outbox.clear();
    for (const iid of [...this.iterators.keys()]) this.closeIterator(iid);
    const t = this.txn;
    if (this.storage) {
      this.statsFor(this.storage).connections--;
      this.clearTxn();
    }
    // A finishing transaction is left to its finish (its lease ends it if that never lands).
    if (t && (t.voted || t.reserved) && !t.finishing) this.abortVote(t, 'client disconnected');
    this.node.log.debug({ client: this.peer.label, label: this.label }, 'zeo: session closed');
  }
}
