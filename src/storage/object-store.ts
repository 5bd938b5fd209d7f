/**
 * The object store: ZODB storage semantics on LevelDB, shaped as a deterministic state machine.
 *
 * All changes go through `apply(index, command)`; the same sequence of commands yields the same
 * state and the same results on every replica (no clock, no randomness: proposed TIDs arrive in
 * the commands). Reads (`load`, `loadBefore`, ...) may run concurrently with apply: each apply
 * lands as one atomic LevelDB batch, and revisions are only ever removed by pack.
 *
 * Invariants (asserted):
 * - applied indexes strictly increase; apply is never re-entered;
 * - the global last TID strictly increases with every transaction;
 * - an object's current serial is the TID of its newest revision;
 * - an object is locked by at most one voted transaction, or shared by voted transactions whose
 *   stores of it are resolved on the server (zodb-resolve.ts), never both; only voted transactions
 *   hold locks.
 *
 * Snapshot install (`restore`) is all-or-nothing across crashes: the snapshot is validated in full
 * before the state is touched, then written beside the current state (staged, under key prefix X)
 * while the current state keeps serving, then switched to: an install record (key I) says which
 * phase a crash interrupted, and open() rolls a staging install back (the old state is intact)
 * and a switching one forward (the staged state is complete and durable). A store never claims
 * an index it does not fully hold. Reads wait while the switch runs; a read that overlapped it
 * fails UNAVAILABLE.
 */
import type { AbstractLevel } from 'abstract-level';
import { Level } from 'level';
import { assert } from '../util/assert';
import {
  ID_BYTES,
  Z64,
  hex,
  idCompare,
  idEquals,
  idMax,
  idNext,
  isId,
  p64,
  tidToIso,
  tidToTime,
  u64,
} from '../util/ids';
import {
  Command,
  MemberRecord,
  StoreOp,
  PreparedRecord,
  ResolvedStore,
  memberCodec,
  Revision,
  SessionRecord,
  StorageMeta,
  Txn,
  TxnRecord,
  preparedCodec,
  revisionCodec,
  sessionCodec,
  storageMetaCodec,
  txnRecordCodec,
} from './codec';
import { StorageError } from './errors';
import {
  PackApplyContext,
  PackStep,
  applyPackDoom,
  applyPackStart,
  applyPackSweep,
  packBarrier,
} from './pack-steps';
import * as K from './keys';
import { BlobUploads, blobContext, dropRevisionBlob, storeBlobId } from './blob-store';
import { type BlobChunk } from './codec';
import {
  PickleStateError,
  applyLengthDelta,
  isLengthRecord,
  lengthDelta,
  readLengthRecord,
  resolveIntSet,
} from './zodb-resolve';
import { CurrentSerialCache } from './current-cache';
import { ReadGate } from './read-gate';
import {
  type InstallStep,
  discardPartialInstall,
  snapshotChunks,
  stageSnapshot,
  switchToStaged,
  validateSnapshot,
} from './snapshot-stream';
import {
  type BatchOp,
  type Db,
  type Get,
  LAST_OID,
  buf,
  currentValue,
  emptyMeta,
  isLastOid,
  parseCurrent,
  revisionBefore,
  revisionData,
  serialOf,
} from './store-records';
import { StoreReader } from './store-reader';
import type {
  ApplyResult,
  CommitEvent,
  CommittedRecord,
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  PreparedSummary,
  ReplacedEvent,
  StorageSummary,
  TransactionInfo,
  UndoPlan,
  UndoResolution,
} from './store-types';

export type {
  ApplyResult,
  CommitEvent,
  CommittedRecord,
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  PreparedSummary,
  ReplacedEvent,
  StorageSummary,
  TransactionInfo,
  UndoPlan,
  UndoResolution,
} from './store-types';
export { INSTALL_STEPS, SNAPSHOT_CHUNK_BYTES, validateSnapshot } from './snapshot-stream';
export type { InstallStep } from './snapshot-stream';

export const MAX_NEW_OIDS = 10_000;
/**
 * How far past the deadline of its first vote a vote's locks may be renewed: a vote holds its
 * objects at most from the vote to that deadline plus this, however often it is renewed (the ZEO
 * door renews only up to the transaction timeout, which the configuration keeps below this).
 */
export const VOTE_RENEW_MAX_MS = 10 * 60_000;
/**
 * Client sessions whose last answer is kept (exactly-once commits, storage.proto CommitRequest):
 * beyond it the least recently used is forgotten. About 150 bytes of memory each.
 */
export const SESSIONS_MAX = 10_000;
/** A session unused this long, by the replicated clock (command TIDs), is forgotten. */
export const SESSION_EXPIRY_MS = 60 * 60_000;
/** Expired sessions forgotten by one command at most (lookups check expiry themselves). */
const SESSION_EXPIRIES_PER_COMMAND_MAX = 64;
/** A session id with its key scope (the service allows 64 bytes plus the scope). */
export const SESSION_ID_BYTES_MAX = 512;
/** Current-serial records cached in memory (about 150 bytes each). */
/** N records written per batch when numbering the transactions of a store written without them. */
const TXN_NUMBER_BATCH_KEYS = 10_000;

export interface ObjectStoreOptions {
  /** fsync every applied batch. A Raft replica does not need it (the log is durable); a standalone node does. */
  sync: boolean;
  /**
   * Called after each step of a snapshot install has landed. Tests kill the process here to check
   * that an install interrupted at any step is recovered; production passes nothing.
   */
  onInstallStep?: (step: InstallStep) => void;
}

/** A client session in memory: its last sequence number and when it was last used. */
interface SessionEntry {
  seq: number;
  usedIndex: number;
  /**
   * The TID as a latin1 string: a small Buffer would be a view into a larger one (the command's
   * entry, or a pool slab) and keep it alive; equal-length latin1 strings order as their bytes.
   */
  usedTid: string;
}

function isStorageName(st: unknown): boolean {
  if (typeof st !== 'string') return false;
  const bytes = Buffer.byteLength(st, 'utf8');
  return bytes >= 1 && bytes <= K.MAX_STORAGE_NAME_BYTES;
}

/** The storage a command names, or null for commands that name none (noop, empty). */
function commandStorage(cmd: Command): unknown {
  const c = cmd as Record<string, any>;
  if (c.commit) return c.commit.txn ? c.commit.txn.storage : null; // no txn: validateTxn says INVALID
  if (c.prepare) return c.prepare.txn ? c.prepare.txn.storage : null;
  for (const op of ['finish', 'abort', 'undo', 'pack', 'newOids', 'renew'])
    if (c[op]) return c[op].storage;
  return null;
}

/** The deadline of a vote's first vote (its current one in records written before it was kept). */
function votedDeadline(rec: PreparedRecord): number {
  return Number(rec.votedDeadlineMs || rec.deadlineMs || 0);
}

/** Whether a session last used at `e.usedTid` has expired at the command time `now`. */
function sessionExpired(e: SessionEntry, now: Buffer): boolean {
  return tidToTime(now) - tidToTime(Buffer.from(e.usedTid, 'latin1')) > SESSION_EXPIRY_MS;
}

/** The answer a session record holds, as the commit first gave it (without conflict data). */
function sessionAnswer(rec: SessionRecord): ApplyResult {
  if (!rec.errorKind) {
    assert(rec.tid && rec.tid.length === ID_BYTES, 'a session record without an answer');
    return { ok: true, tid: buf(rec.tid) };
  }
  const conflict = rec.conflictOid?.length
    ? {
        oid: buf(rec.conflictOid),
        expected: buf(rec.conflictExpected),
        actual: buf(rec.conflictActual),
      }
    : undefined;
  return {
    ok: false,
    error: new StorageError(
      rec.errorKind as StorageError['kind'],
      rec.errorMessage ?? '',
      conflict,
    ),
  };
}

/** Whether two transactions have the same content (their canonical encodings are equal). */
function sameTxn(a: Txn, b: Txn): boolean {
  return preparedCodec.encode({ txn: a }).equals(preparedCodec.encode({ txn: b }));
}

/** The hex OIDs of a vote's stores that share their lock (resolved Length stores, with a delta). */
function sharedOf(rec: { txn: Txn; resolved?: ResolvedStore[] }): Set<string> {
  return new Set((rec.resolved ?? []).filter((r) => r.delta).map((r) => hex(r.oid)));
}

/** A TID as a time for messages; any 8 bytes (a TID may name no valid date). */
function tidTime(tid: Uint8Array): string {
  try {
    return tidToIso(tid);
  } catch {
    return 'not a time';
  }
}

function lockKey(storage: string, oid: Uint8Array): string {
  return `${storage}\0${hex(oid)}`;
}

export class ObjectStore {
  private appliedIdx = 0;
  private lastTidGlobal: Buffer = Z64;
  /** Working state of apply; readers see the published copies below, updated after each write. */
  private metas = new Map<string, StorageMeta>();
  private pubLastTid: Buffer = Z64;
  private pubMetas = new Map<string, StorageMeta>();
  /** Writes of the batch being applied, by key (latin1), for reads by later commands in it. */
  private readonly overlay = new Map<string, Buffer | null>();
  private readonly cache: CurrentSerialCache;
  /** Reads against snapshot installs, and why the store cannot serve. */
  private readonly gate = new ReadGate();
  private readonly reader: StoreReader;
  /** lockKey(storage, oid) -> voted transaction id holding it. */
  private readonly locks = new Map<string, string>();
  /** lockKey(storage, oid) -> voted transactions sharing it (resolved stores); never empty. */
  private readonly sharedLocks = new Map<string, Set<string>>();
  private readonly prepared = new Map<string, PreparedSummary>();
  /**
   * The vote at a given TID (PrepareCmd.tid), as `storage\0txnId`, if any. Invariant: while it is
   * set, it is the only voted transaction and nothing else commits, so its TID stays above the last.
   */
  private votedAtTid: string | undefined;
  private readonly memberMap = new Map<string, MemberRecord>();
  /** Open blob uploads and the votes holding them (blob-store.ts). */
  private readonly blobs = new BlobUploads();
  /**
   * Client sessions (E records) by id, in the order of their used index: least recently used
   * first. Invariant: the same entries in the same order on every replica at the same index (the
   * order is rebuilt from the records' used indexes on load).
   */
  private readonly sessions = new Map<string, SessionEntry>();
  /** The newest used TID of any session forgotten (z64: none was). */
  private sessionWatermark: Buffer = Z64;
  private applying = false;
  private readonly commitListeners = new Set<(ev: CommitEvent) => void>();
  private readonly applyListeners = new Set<(index: number) => void>();
  private readonly replacedListeners = new Set<(ev: ReplacedEvent) => void>();
  /** Set while a snapshot install switches to the new state; readers wait for it. */
  private restoring = false;
  private interrupted = false;

  private constructor(
    private readonly db: Db,
    private readonly options: ObjectStoreOptions,
  ) {
    this.cache = new CurrentSerialCache(db);
    this.reader = new StoreReader(db, this.gate, this.cache, {
      published: () => this.pubMetas,
      readState: this.readState,
    });
  }

  static async open(dir: string, options: ObjectStoreOptions): Promise<ObjectStore> {
    const db: Db = new Level<Buffer, Buffer>(dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    });
    await db.open();
    const store = new ObjectStore(db, options);
    store.interrupted = await discardPartialInstall(store.db);
    await store.loadState();
    return store;
  }

  /**
   * Open a store over a database the caller constructed (any abstract-level implementation with
   * Buffer keys and values). Used by the deterministic simulator (test/sim) to run the store on
   * memory-level; production opens a directory with `open`.
   */
  static async openOn(
    db: AbstractLevel<Buffer | Uint8Array | string, Buffer, Buffer>,
    options: ObjectStoreOptions,
  ): Promise<ObjectStore> {
    if (db.status !== 'open') await db.open();
    const store = new ObjectStore(db as unknown as Db, options);
    store.interrupted = await discardPartialInstall(store.db);
    await store.loadState();
    return store;
  }

  /**
   * On open: finish what an interrupted install left. A staging install is rolled back (the
   * current state was not touched), a switching one rolled forward (the staged state is complete
   * and durable). A record without a phase comes from an install that cleared the state first (an
   * earlier version): the partial state is deleted (the record stays, so a crash before the owner
   * has dealt with it repeats this), and `interruptedInstall` tells the owner to obtain a new
   * snapshot, then call `installRecovered()`.

  /** True when open found (and discarded) the partial state of an interrupted snapshot install. */
  get interruptedInstall(): boolean {
    return this.interrupted;
  }

  /** The owner has arranged for a new snapshot (its log asks for one): forget the install record. */
  async installRecovered(): Promise<void> {
    assert(this.interrupted, 'no interrupted install to recover from');
    assert(this.appliedIdx === 0, 'an interrupted install leaves an empty store');
    await this.db.del(K.installKey, { sync: true });
    this.interrupted = false;
  }

  /**
   * True while a snapshot install runs (the node is not ready: it is about to jump ahead). Reads
   * are answered from the current state while the snapshot is staged, and wait during the switch.
   */
  get installing(): boolean {
    return this.restoring;
  }

  /** Why this store cannot serve (a failed install, a broken invariant), or undefined. */
  get unhealthy(): string | undefined {
    return this.gate.unhealthy;
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  /** Index of the last applied command (0 when none). */
  get appliedIndex(): number {
    return this.appliedIdx;
  }

  /** The newest TID committed in any storage (z64 when none). */
  get lastTid(): Buffer {
    return this.pubLastTid;
  }

  /** Called after each committed transaction is durably applied, in TID order. */
  onCommit(fn: (ev: CommitEvent) => void): () => void {
    this.commitListeners.add(fn);
    return () => this.commitListeners.delete(fn);
  }

  /** Called after every applied command (or restored snapshot) with the new applied index. */
  onApplied(fn: (index: number) => void): () => void {
    this.applyListeners.add(fn);
    return () => this.applyListeners.delete(fn);
  }

  /** Called after a snapshot replaced the whole state (no CommitEvents were emitted for it). */
  onReplaced(fn: (ev: ReplacedEvent) => void): () => void {
    this.replacedListeners.add(fn);
    return () => this.replacedListeners.delete(fn);
  }

  /** Load the in-memory state from the database; `publish` makes it visible to readers. */
  private async loadState(publish = true): Promise<void> {
    this.metas.clear();
    this.locks.clear();
    this.sharedLocks.clear();
    this.prepared.clear();
    this.votedAtTid = undefined;
    this.memberMap.clear();
    this.blobs.clear();
    await this.loadSessions();
    const uploads: Array<{ key: Buffer; value: Buffer }> = [];
    for await (const [key, value] of this.db.iterator({
      gte: Buffer.from([K.TAG.blobUpload]),
      lt: Buffer.from([K.TAG.blobUpload + 1]),
    }))
      uploads.push({ key, value });
    this.blobs.load(uploads);
    for await (const [key, value] of this.db.iterator({
      gte: Buffer.from([K.TAG.member]),
      lt: Buffer.from([K.TAG.member + 1]),
    })) {
      this.memberMap.set(key.subarray(1).toString('utf8'), memberCodec.decode(value));
    }
    const g = await this.db.get(K.globalKey);
    if (g) {
      this.appliedIdx = Number(g.readBigUInt64BE(0));
      this.lastTidGlobal = Buffer.from(g.subarray(8, 16));
    } else {
      this.appliedIdx = 0;
      this.lastTidGlobal = Z64;
    }
    for await (const [key, value] of this.db.iterator({
      gte: Buffer.from([K.TAG.storage]),
      lt: Buffer.from([K.TAG.storage + 1]),
    })) {
      this.metas.set(K.keyStorage(key), storageMetaCodec.decode(value));
    }
    for (const [st, meta] of this.metas)
      if (!meta.txnCount && !idEquals(serialOf(meta.lastTid), Z64)) await this.numberTxns(st, meta);
    for await (const [key, value] of this.db.iterator({
      gte: Buffer.from([K.TAG.prepared]),
      lt: Buffer.from([K.TAG.prepared + 1]),
    })) {
      const st = K.keyStorage(key);
      const txnId = key.subarray(2 + key[1]).toString('utf8');
      this.holdLocks(st, txnId, preparedCodec.decode(value));
    }
    if (publish) this.publish();
  }

  /**
   * A storage written before transactions were numbered (its meta has no count, its
   * transactions no N records): number them, oldest first. Idempotent: the count is written last,
   * so an interrupted run is repeated on the next open. Every replica derives the same records
   * from the same T records.
   */
  private async numberTxns(st: string, meta: StorageMeta): Promise<void> {
    const tp = K.txnPrefix(st);
    let n = 0;
    let ops: BatchOp[] = [];
    for await (const [key] of this.db.iterator({
      gte: tp,
      lt: K.prefixEnd(tp),
      values: false,
    } as any)) {
      n++;
      const tid = Buffer.from((key as Buffer).subarray((key as Buffer).length - ID_BYTES));
      ops.push({ type: 'put', key: K.txnNumberKey(st, n), value: tid });
      if (ops.length >= TXN_NUMBER_BATCH_KEYS) {
        await this.db.batch(ops);
        ops = [];
      }
    }
    const numbered: StorageMeta = { ...meta, txnCount: n };
    ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(numbered) });
    await this.db.batch(ops, { sync: true });
    this.metas.set(st, numbered);
  }

  /** The session table from its records, least recently used first. */
  private async loadSessions(): Promise<void> {
    this.sessions.clear();
    this.sessionWatermark = Z64;
    const loaded: Array<[string, SessionEntry]> = [];
    for await (const [key, value] of this.db.iterator({
      gte: K.sessionWatermarkKey,
      lt: Buffer.from([K.TAG.session + 1]),
    })) {
      if (key.length === 1) {
        this.sessionWatermark = Buffer.from(value);
        continue;
      }
      const rec = sessionCodec.decode(value);
      loaded.push([
        key.subarray(1).toString('utf8'),
        {
          seq: Number(rec.seq),
          usedIndex: Number(rec.usedIndex),
          usedTid: buf(rec.usedTid).toString('latin1'),
        },
      ]);
    }
    loaded.sort((a, b) => a[1].usedIndex - b[1].usedIndex);
    for (const [id, e] of loaded) this.sessions.set(id, e);
  }

  private holdLocks(st: string, txnId: string, rec: PreparedRecord): void {
    const shared = sharedOf(rec);
    const all = [...(rec.txn.stores ?? []), ...(rec.txn.checks ?? [])].map((s) => buf(s.oid));
    const oids = all.filter((oid) => !shared.has(hex(oid)));
    const sharedOids = all.filter((oid) => shared.has(hex(oid)));
    assert(sharedOids.length === shared.size, `resolved stores of ${txnId} not in its stores`);
    for (const oid of oids) {
      const k = lockKey(st, oid);
      assert(!this.locks.has(k), `object ${hex(oid)} locked twice`);
      assert(!this.sharedLocks.has(k), `object ${hex(oid)} locked while shared`);
      this.locks.set(k, txnId);
    }
    for (const oid of sharedOids) {
      const k = lockKey(st, oid);
      assert(!this.locks.has(k), `object ${hex(oid)} shared while locked`);
      const holders = this.sharedLocks.get(k) ?? new Set<string>();
      holders.add(txnId);
      this.sharedLocks.set(k, holders);
    }
    this.blobs.hold(st, txnId, rec.txn.stores ?? []);
    if (rec.tid?.length) {
      assert(this.votedAtTid === undefined, `${txnId} voted at a TID beside ${this.votedAtTid}`);
      this.votedAtTid = `${st}\0${txnId}`;
    }
    this.prepared.set(`${st}\0${txnId}`, {
      storage: st,
      txnId,
      deadlineMs: rec.deadlineMs ?? 0,
      oids,
      ...(sharedOids.length ? { sharedOids } : {}),
    });
  }

  private releaseLocks(st: string, txnId: string): void {
    const p = this.prepared.get(`${st}\0${txnId}`);
    assert(p, `releasing locks of unknown transaction ${txnId}`);
    for (const oid of p.oids) {
      const k = lockKey(st, oid);
      assert(this.locks.get(k) === txnId, `lock of ${hex(oid)} not held by ${txnId}`);
      this.locks.delete(k);
    }
    for (const oid of p.sharedOids ?? []) {
      const k = lockKey(st, oid);
      const holders = this.sharedLocks.get(k);
      assert(holders && holders.delete(txnId), `shared lock of ${hex(oid)} not held by ${txnId}`);
      if (holders.size === 0) this.sharedLocks.delete(k);
    }
    this.blobs.release(st, txnId);
    if (this.votedAtTid === `${st}\0${txnId}`) this.votedAtTid = undefined;
    this.prepared.delete(`${st}\0${txnId}`);
  }

  private meta(st: string): StorageMeta {
    return this.metas.get(st) ?? emptyMeta();
  }

  private publish(): void {
    this.pubLastTid = this.lastTidGlobal;
    this.pubMetas = new Map(this.metas);
  }
  storageSummary(st: string): StorageSummary {
    return this.reader.storageSummary(st);
  }

  storageNames(): string[] {
    return this.reader.storageNames();
  }

  preparedTransactions(): PreparedSummary[] {
    return [...this.prepared.values()];
  }

  /** The voted transaction holding a lock on the object, if any. */
  lockHolder(st: string, oid: Uint8Array): string | undefined {
    return this.locks.get(lockKey(st, oid));
  }

  /**
   * Whether a voted transaction other than `txnId` holds the object: exclusively, or (unless
   * `shared`, a store resolved on the server asking) by sharing it.
   */
  lockedForOthers(st: string, oid: Uint8Array, txnId: string, shared: boolean): boolean {
    if (this.votedAtTid !== undefined && this.votedAtTid !== `${st}\0${txnId}`) return true;
    const k = lockKey(st, oid);
    const holder = this.locks.get(k);
    if (holder !== undefined && holder !== txnId) return true;
    if (shared) return false;
    const sharers = this.sharedLocks.get(k);
    return sharers !== undefined && [...sharers].some((t) => t !== txnId);
  }

  // ------------------------------------------------------------------------------------------
  // Apply

  /**
   * Apply one command at log index `index`. Deterministic: the result depends only on the state
   * and the command. Expected failures (conflicts, unknown objects) are results, not throws.
   */
  async apply(index: number, cmd: Command): Promise<ApplyResult> {
    return (await this.applyBatch([{ index, cmd }]))[0];
  }

  /**
   * Apply consecutive commands with as few LevelDB writes as possible (one for the whole run,
   * except around undo and pack, which scan the database). Each command sees the effects of the
   * ones before it; readers see none of them until they are written, and then all at once.
   */
  async applyBatch(items: { index: number; cmd: Command }[]): Promise<ApplyResult[]> {
    assert(!this.applying, 'apply re-entered');
    this.applying = true;
    try {
      const results: ApplyResult[] = [];
      let ops: BatchOp[] = [];
      let after: Array<() => void> = [];
      let last = this.appliedIdx;
      for (const { index, cmd } of items) {
        assert(index > last, `apply index ${index} not after applied ${last}`);
        const scans = ('undo' in cmd && !!cmd.undo) || ('pack' in cmd && !!cmd.pack);
        if (scans && last > this.appliedIdx) {
          await this.write(ops, after, last);
          ops = [];
          after = [];
        }
        const cmdOps: BatchOp[] = [];
        const cmdAfter: Array<() => void> = [];
        const before = { lastTid: this.lastTidGlobal, metas: new Map(this.metas) };
        let result: ApplyResult;
        try {
          result = await this.applyOp(index, cmd, cmdOps, cmdAfter);
        } catch (e) {
          if (!(e instanceof StorageError)) throw e;
          this.lastTidGlobal = before.lastTid;
          this.metas = before.metas;
          cmdOps.length = 0;
          cmdAfter.length = 0;
          result = { ok: false, error: e };
        }
        for (const op of cmdOps) {
          ops.push(op);
          this.overlay.set(op.key.toString('latin1'), op.type === 'put' ? op.value : null);
        }
        after.push(...cmdAfter);
        results.push(result);
        last = index;
        if (scans) {
          await this.write(ops, after, last);
          ops = [];
          after = [];
        }
      }
      if (last > this.appliedIdx) await this.write(ops, after, last);
      return results;
    } finally {
      this.overlay.clear();
      this.applying = false;
    }
  }

  /** Write a batch and only then publish it: readers never see an index or TID before it landed. */
  private async write(ops: BatchOp[], after: Array<() => void>, index: number): Promise<void> {
    ops.push({ type: 'put', key: K.globalKey, value: this.globalValue(index) });
    await this.db.batch(ops, { sync: this.options.sync });
    this.cache.landed(ops);
    this.overlay.clear();
    this.appliedIdx = index;
    this.publish();
    for (const fn of after) fn();
    for (const fn of this.applyListeners) fn(index);
  }

  /** A read by apply: the batch's own writes first, then the database. */
  private read(key: Buffer): Promise<Buffer | undefined> {
    const k = key.toString('latin1');
    if (this.overlay.has(k)) return Promise.resolve(this.overlay.get(k) ?? undefined);
    return key[0] === K.TAG.current ? this.cache.read(key) : this.db.get(key);
  }

  /** A read of the applied state; during an apply, of the batch's state (as apply reads). */
  private readonly readState: Get = (key) => (this.applying ? this.read(key) : this.db.get(key));

  private globalValue(index = this.appliedIdx): Buffer {
    const g = Buffer.alloc(16);
    g.writeBigUInt64BE(BigInt(index), 0);
    this.lastTidGlobal.copy(g, 8);
    return g;
  }

  private applyOp(
    index: number,
    cmd: Command,
    ops: BatchOp[],
    after: Array<() => void>,
  ): Promise<ApplyResult> {
    // Key building throws RangeError on a bad storage name; that must be a result, not a crash
    // that every replica would repeat on replay.
    const st = commandStorage(cmd);
    if (st !== null && !isStorageName(st)) {
      throw new StorageError(
        'INVALID',
        `a storage name must be 1..${K.MAX_STORAGE_NAME_BYTES} bytes`,
      );
    }
    this.checkVotedAtTid(cmd);
    if ('commit' in cmd && cmd.commit)
      return cmd.commit.sessionId
        ? this.applySessionCommit(index, cmd.commit, ops, after)
        : this.applyCommit(cmd.commit.txn, cmd.commit.tid, ops, after, undefined);
    if ('prepare' in cmd && cmd.prepare) return this.applyPrepare(cmd.prepare, ops, after);
    if ('finish' in cmd && cmd.finish) return this.applyFinish(cmd.finish, ops, after);
    if ('abort' in cmd && cmd.abort) return this.applyAbort(cmd.abort, ops, after);
    if ('undo' in cmd && cmd.undo) return this.applyUndo(cmd.undo, ops, after);
    if ('pack' in cmd && cmd.pack)
      return cmd.pack.step
        ? this.applyPackStep(index, cmd.pack, ops)
        : this.applyPack(cmd.pack, ops, after);
    if ('newOids' in cmd && cmd.newOids)
      return Promise.resolve(this.applyNewOids(cmd.newOids, ops, after));
    if ('renew' in cmd && cmd.renew) return this.applyRenew(cmd.renew, ops);
    if ('blobChunk' in cmd && cmd.blobChunk) return this.applyBlobChunk(index, cmd.blobChunk, ops);
    if ('noop' in cmd) return Promise.resolve({ ok: true });
    if ('member' in cmd && cmd.member)
      return Promise.resolve(this.applyMember(cmd.member, ops, after));
    throw new StorageError('INVALID', 'empty command');
  }

  /**
   * While a transaction is voted at a given TID, its finish must be the next commit (TIDs strictly
   * increase): other commits, undos and votes wait (LOCKED, transient), as behind a ZEO server's
   * commit lock.
   */
  private checkVotedAtTid(cmd: Command): void {
    const held = this.votedAtTid;
    if (held === undefined) return;
    const c = cmd as Record<string, any>;
    const other =
      !!c.commit ||
      !!c.undo ||
      (!!c.prepare && `${c.prepare.txn?.storage}\0${c.prepare.txnId}` !== held);
    if (other)
      throw new StorageError(
        'LOCKED',
        `a transaction at a given TID (a restore) is voted in storage ${JSON.stringify(held.split('\0')[0])}: nothing else commits before its finish`,
      );
  }

  private validateTxn(txn: Txn | undefined): asserts txn is Txn {
    if (!txn) throw new StorageError('INVALID', 'command without a transaction');
    if (!txn.storage) throw new StorageError('INVALID', 'transaction without a storage name');
    const seen = new Set<string>();
    for (const op of [...(txn.stores ?? []), ...(txn.checks ?? [])]) {
      if (!isId(op.oid)) throw new StorageError('INVALID', 'an OID must be exactly 8 bytes');
      if (op.serial && op.serial.length !== 0 && op.serial.length !== ID_BYTES) {
        throw new StorageError('INVALID', `serial of ${hex(op.oid)} must be 8 bytes or empty`);
      }
      const h = hex(op.oid);
      if (seen.has(h))
        throw new StorageError('INVALID', `object ${h} appears twice in one transaction`);
      seen.add(h);
    }
    // Storing (or deleting) an OID sets the counter past it; the largest OID has nothing past it.
    if ((txn.stores ?? []).some((op) => isLastOid(op.oid))) {
      throw new StorageError('INVALID', 'the largest OID cannot be stored');
    }
  }

  /**
   * Conflict-check every store and check of `txn`; objects locked by another transaction fail with
   * LOCKED. Stores in `resolved` (hex OIDs) are resolved on the server, so not serial-checked;
   * those also in `shared` share their lock with other shared stores of the object (Length).
   */
  private async checkTxn(
    txn: Txn,
    ownTxnId: string | undefined,
    locksOnly = false,
    resolved?: Set<string>,
    shared?: Set<string>,
  ): Promise<Map<string, { serial: Buffer; deleted: boolean }>> {
    const current = new Map<string, { serial: Buffer; deleted: boolean }>();
    const st = txn.storage;
    const all = [
      ...(txn.stores ?? []).map((s) => ({ op: s, kind: 'CONFLICT' as const })),
      ...(txn.checks ?? []).map((c) => ({ op: c, kind: 'READ_CONFLICT' as const })),
    ];
    for (const { op, kind } of all) {
      const oid = buf(op.oid);
      const holder = this.locks.get(lockKey(st, oid));
      if (holder !== undefined && holder !== ownTxnId) {
        throw new StorageError('LOCKED', `object ${hex(oid)} is locked by a voted transaction`);
      }
      // A restored record is written as given (ZODB's restore skips the consistency checks).
      const isResolved = resolved?.has(hex(oid)) === true || (op as StoreOp).restore === true;
      const sharers = this.sharedLocks.get(lockKey(st, oid));
      if (!shared?.has(hex(oid)) && sharers && [...sharers].some((t) => t !== ownTxnId)) {
        throw new StorageError('LOCKED', `object ${hex(oid)} is locked by a voted transaction`);
      }
      const cur = await this.read(K.currentKey(st, oid));
      const c = cur ? parseCurrent(cur) : { serial: Z64, deleted: false };
      current.set(hex(oid), c);
      const expected = serialOf(op.serial);
      if (!locksOnly && !isResolved && !idEquals(expected, c.serial)) {
        const currentData =
          c.deleted || !cur ? undefined : await this.revisionData(st, oid, c.serial);
        throw new StorageError(
          kind,
          `${kind === 'CONFLICT' ? 'conflict' : 'read conflict'} on object ${hex(oid)}: based on serial ${hex(expected)}, current serial is ${hex(c.serial)}`,
          { oid, expected, actual: c.serial, currentData },
        );
      }
    }
    return current;
  }

  private revisionData(st: string, oid: Buffer, serial: Buffer): Promise<Buffer | undefined> {
    return revisionData(this.readState, st, oid, serial);
  }

  /**
   * The backpointer a restored record keeps: the source's data_tid when that transaction wrote the
   * same data for the object here, otherwise none (a hint only, as in FileStorage's restore: it may
   * be packed away). It is kept as given, so the copy's iterator reports what the source's does.
   */
  private async restoredDataTid(st: string, oid: Buffer, s: StoreOp): Promise<Buffer | undefined> {
    if (!s.dataTid?.length || s.delete) return undefined;
    const raw = await this.read(K.revisionKey(st, oid, buf(s.dataTid)));
    if (!raw) return undefined;
    const prev = revisionCodec.decode(raw);
    if (prev.deleted || !buf(prev.data).equals(buf(s.data))) return undefined;
    return buf(s.dataTid);
  }

  /** Write a transaction's revisions and records into `ops`; the TID is max(proposed, last + 1). */
  private async applyCommit(
    txn: Txn | undefined,
    proposedTid: Uint8Array | undefined,
    ops: BatchOp[],
    after: Array<() => void>,
    known: Map<string, { serial: Buffer; deleted: boolean }> | undefined,
    dataTids?: Map<string, Buffer>,
  ): Promise<ApplyResult> {
    this.validateTxn(txn);
    const st = txn.storage;
    const current = known ?? (await this.checkTxn(txn, undefined));
    const blobCtx = blobContext((k) => this.read(k), ops);
    // A finish (known serials) was checked at its vote, which holds its uploads since.
    if (!known) await this.blobs.checkStores(st, txn.stores ?? [], undefined, blobCtx);
    await packBarrier(this.packCtx, txn, ops, known !== undefined);
    const proposed = proposedTid && proposedTid.length === ID_BYTES ? buf(proposedTid) : Z64;
    const tid = idMax(proposed, idNext(this.lastTidGlobal));
    const meta = { ...this.meta(st) };
    let nextOid = serialOf(meta.nextOid);
    if (idEquals(nextOid, Z64)) nextOid = p64(1n);
    let count = meta.objectCount ?? 0;
    const records: CommittedRecord[] = [];
    for (const s of txn.stores ?? []) {
      const oid = buf(s.oid);
      const prev = current.get(hex(oid));
      assert(prev, 'store without a conflict check');
      const existed = !idEquals(prev.serial, Z64) && !prev.deleted;
      const deleted = s.delete === true;
      const rev: Revision = deleted ? { deleted: true } : { data: buf(s.data), refs: s.refs };
      if (s.opaque && !deleted) rev.opaque = true;
      const dataTid = s.restore
        ? await this.restoredDataTid(st, oid, s)
        : (dataTids?.get(hex(oid)) ?? (s.dataTid?.length ? buf(s.dataTid) : undefined));
      if (dataTid && !deleted) rev.dataTid = dataTid;
      const blobId = storeBlobId(s);
      if (blobId && !deleted) {
        rev.blobId = blobId;
        rev.blobSize = (
          await this.blobs.commitStore(st, blobId, known !== undefined, blobCtx)
        ).size;
      }
      ops.push({ type: 'put', key: K.revisionKey(st, oid, tid), value: revisionCodec.encode(rev) });
      ops.push({ type: 'put', key: K.currentKey(st, oid), value: currentValue(tid, deleted) });
      if (existed && deleted) count--;
      if (!existed && !deleted) count++;
      if (idCompare(oid, nextOid) >= 0) nextOid = idNext(oid);
      records.push({ oid, data: deleted ? undefined : buf(s.data), deleted });
    }
    const rec: TxnRecord = {
      user: txn.user ?? '',
      description: txn.description ?? '',
      extension: buf(txn.extension),
      oids: records.map((r) => r.oid),
    };
    if (txn.status && txn.status !== ' ') rec.status = txn.status;
    ops.push({ type: 'put', key: K.txnKey(st, tid), value: txnRecordCodec.encode(rec) });
    const txnCount = (meta.txnCount ?? 0) + 1;
    ops.push({ type: 'put', key: K.txnNumberKey(st, txnCount), value: tid });
    const newMeta: StorageMeta = { ...meta, lastTid: tid, nextOid, objectCount: count, txnCount };
    ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(newMeta) });
    assert(idCompare(tid, this.lastTidGlobal) > 0, 'TIDs must strictly increase');
    this.lastTidGlobal = tid;
    this.metas.set(st, newMeta);
    const index = () => this.appliedIdx;
    after.push(() => {
      const ev: CommitEvent = { index: index(), storage: st, tid, records };
      for (const fn of this.commitListeners) fn(ev);
    });
    return { ok: true, tid, oids: records.map((r) => r.oid) };
  }

  /**
   * A client session's commit (the Raft dissertation's §6.3): the session's last answer is kept,
   * so a repeated sequence number gets it instead of committing again, and an older one is refused
   * (SEQUENCE_OLD). The answer is recorded whether the commit succeeded or failed: the first
   * attempt applied decides, and a duplicate applied later cannot commit what its client was told
   * failed. A session the store does not know is new unless a session used at or after its
   * since-TID was forgotten (then SESSION_EXPIRED: its record may have been that one). Sessions are
   * forgotten least recently used first beyond SESSIONS_MAX, and after SESSION_EXPIRY_MS unused,
   * measured by the command's TID (the proposer's clock, never the local one), so every replica
   * forgets the same sessions at the same index.
   */
  private async applySessionCommit(
    index: number,
    c: Extract<Command, { commit: unknown }>['commit'],
    ops: BatchOp[],
    after: Array<() => void>,
  ): Promise<ApplyResult> {
    const id = c.sessionId ?? '';
    const seq = Number(c.seq ?? 0);
    // Refusals before the table is touched: nothing to undo.
    if (Buffer.byteLength(id, 'utf8') > SESSION_ID_BYTES_MAX)
      throw new StorageError(
        'INVALID',
        `a session id must be at most ${SESSION_ID_BYTES_MAX} bytes`,
      );
    if (!Number.isSafeInteger(seq) || seq < 1)
      throw new StorageError('INVALID', 'a session commit needs a sequence number from 1');
    const proposed = c.tid && c.tid.length === ID_BYTES ? buf(c.tid) : Z64;
    const now = idMax(proposed, this.lastTidGlobal);
    this.expireSessions(now, ops);
    let entry = this.sessions.get(id);
    if (entry && sessionExpired(entry, now)) {
      this.forgetSession(id, entry, ops);
      entry = undefined;
    }
    if (entry && seq < entry.seq)
      return {
        ok: false,
        error: new StorageError(
          'SEQUENCE_OLD',
          `commit ${seq} of session ${id} is older than its last commit ${entry.seq}: this attempt was not applied`,
        ),
      };
    if (entry && seq === entry.seq) {
      const raw = await this.read(K.sessionKey(id));
      assert(raw, `session ${id} has no record`);
      const rec = sessionCodec.decode(raw);
      this.useSession(id, { ...rec, usedIndex: index, usedTid: now }, ops);
      return sessionAnswer(rec);
    }
    if (!entry) {
      const since = c.sinceTid && c.sinceTid.length === ID_BYTES ? buf(c.sinceTid) : Z64;
      if (!idEquals(this.sessionWatermark, Z64) && idCompare(since, this.sessionWatermark) <= 0)
        return {
          ok: false,
          error: new StorageError(
            'SESSION_EXPIRED',
            `session ${id} is not known: sessions used after ${hex(since)} were forgotten, so whether an earlier attempt of commit ${seq} was applied is unknown; start a new session`,
          ),
        };
    }
    // A failed commit leaves nothing behind but its answer.
    const opsMark = ops.length;
    const afterMark = after.length;
    const before = { lastTid: this.lastTidGlobal, metas: new Map(this.metas) };
    let result: ApplyResult;
    try {
      result = await this.applyCommit(c.txn, c.tid, ops, after, undefined);
    } catch (e) {
      if (!(e instanceof StorageError)) throw e;
      this.lastTidGlobal = before.lastTid;
      this.metas = before.metas;
      ops.length = opsMark;
      after.length = afterMark;
      result = { ok: false, error: e };
    }
    const rec: SessionRecord = { seq, usedIndex: index, usedTid: now };
    if (result.ok) rec.tid = result.tid;
    else {
      rec.errorKind = result.error.kind;
      rec.errorMessage = result.error.message;
      const cf = result.error.conflict;
      if (cf) {
        rec.conflictOid = cf.oid;
        rec.conflictExpected = cf.expected;
        rec.conflictActual = cf.actual;
      }
    }
    this.useSession(id, rec, ops);
    if (this.sessions.size > SESSIONS_MAX) {
      const [oldId, oldest] = this.sessions.entries().next().value as [string, SessionEntry];
      this.forgetSession(oldId, oldest, ops);
    }
    assert(this.sessions.size <= SESSIONS_MAX, 'session table over its bound');
    return result;
  }

  /** Record a session's use (its record as of now) and move it to the most recently used end. */
  private useSession(id: string, rec: SessionRecord, ops: BatchOp[]): void {
    const prev = this.sessions.get(id);
    assert(!prev || prev.usedIndex <= rec.usedIndex, `session ${id} used back in time`);
    ops.push({ type: 'put', key: K.sessionKey(id), value: sessionCodec.encode(rec) });
    this.sessions.delete(id);
    this.sessions.set(id, {
      seq: rec.seq,
      usedIndex: rec.usedIndex,
      usedTid: buf(rec.usedTid).toString('latin1'),
    });
  }

  /** Forget a session; the watermark then covers its used TID. */
  private forgetSession(id: string, e: SessionEntry, ops: BatchOp[]): void {
    this.sessions.delete(id);
    ops.push({ type: 'del', key: K.sessionKey(id) });
    const used = Buffer.from(e.usedTid, 'latin1');
    if (idCompare(used, this.sessionWatermark) > 0) {
      this.sessionWatermark = used;
      ops.push({ type: 'put', key: K.sessionWatermarkKey, value: used });
    }
  }

  /** Forget the least recently used sessions that expired by `now` (a bounded number per call). */
  private expireSessions(now: Buffer, ops: BatchOp[]): void {
    for (let i = 0; i < SESSION_EXPIRIES_PER_COMMAND_MAX; i++) {
      const first = this.sessions.entries().next();
      if (first.done || !sessionExpired(first.value[1], now)) return;
      this.forgetSession(first.value[0], first.value[1], ops);
    }
  }

  /** The sessions kept, least recently used first (for tests and status). */
  sessionTable(): Array<{ id: string; seq: number; usedIndex: number; usedTid: Buffer }> {
    return [...this.sessions].map(([id, e]) => ({
      id,
      seq: e.seq,
      usedIndex: e.usedIndex,
      usedTid: Buffer.from(e.usedTid, 'latin1'),
    }));
  }

  /** The newest used TID of any forgotten session (z64 when none was). */
  get forgottenSessionsUpTo(): Buffer {
    return this.sessionWatermark;
  }

  private async applyPrepare(
    p: {
      txnId: string;
      txn: Txn;
      deadlineMs?: number;
      reserve?: boolean;
      retryOnly?: boolean;
      tid?: Uint8Array;
    },
    ops: BatchOp[],
    _after: Array<() => void>,
  ): Promise<ApplyResult> {
    this.validateTxn(p.txn);
    if (!p.txnId) throw new StorageError('INVALID', 'vote without a transaction id');
    const st = p.txn.storage;
    if (await this.read(K.finishedKey(st, p.txnId))) {
      throw new StorageError('INVALID', `transaction ${p.txnId} was already finished`);
    }
    // A vote holds its locks at most one transaction timeout: voting an expired one again would
    // renew its locks for ever.
    if (await this.read(K.expiredKey(st, p.txnId))) {
      throw new StorageError(
        'INVALID',
        `transaction ${p.txnId} was aborted when its vote expired (ZEORAFT_TXN_TIMEOUT_MS); its locks are not renewed: begin a new transaction`,
      );
    }
    // A transaction voted again replaces its earlier vote (a retried vote, or the vote after the
    // client resolved conflicts on objects it had reserved): its own locks do not stand in its way.
    const again = this.prepared.has(`${st}\0${p.txnId}`);
    const earlier = again
      ? preparedCodec.decode((await this.read(K.preparedKey(st, p.txnId)))!)
      : undefined;
    if (earlier && p.retryOnly) {
      // Only a retry may come under a voted id: another transaction reusing it must not replace
      // the vote (its first client was told it holds) nor be taken for it.
      if (earlier.reserve || !sameTxn(earlier.txn, p.txn))
        throw new StorageError(
          'DUPLICATE_ID',
          `transaction id ${p.txnId} is already voted with a different content; a new transaction needs a new id`,
        );
    }
    const atTid = p.tid?.length ? buf(p.tid) : undefined;
    if (atTid) this.checkVoteAtTid(st, p.txnId, atTid, again, p.reserve === true);
    const blobCtx = blobContext((k) => this.read(k), ops);
    if (!p.reserve)
      await this.blobs.checkStores(
        st,
        p.txn.stores ?? [],
        again ? `${st}\0${p.txnId}` : undefined,
        blobCtx,
      );
    const resolved = p.reserve || atTid ? [] : await this.resolvableStores(p.txn);
    await this.checkTxn(
      p.txn,
      again ? p.txnId : undefined,
      p.reserve === true,
      new Set(resolved.map((r) => hex(r.oid))),
      sharedOf({ txn: p.txn, resolved }),
    );
    if (!p.reserve) await packBarrier(this.packCtx, p.txn, ops, false);
    // Voting again keeps the first vote's deadline, so the locks are never renewed past it.
    const deadlineMs = earlier?.deadlineMs ? Number(earlier.deadlineMs) : (p.deadlineMs ?? 0);
    const votedDeadlineMs = earlier ? votedDeadline(earlier) : deadlineMs;
    const rec: PreparedRecord = { txn: p.txn, deadlineMs, votedDeadlineMs };
    if (p.reserve) rec.reserve = true;
    if (resolved.length) rec.resolved = resolved;
    // Committed blobs the vote names (undo) are referenced by it until finish or abort.
    if (!p.reserve) await this.blobs.holdCommitted(st, p.txn.stores ?? [], 1, blobCtx);
    if (earlier && !earlier.reserve)
      await this.blobs.holdCommitted(st, earlier.txn.stores ?? [], -1, blobCtx);
    if (atTid) rec.tid = atTid;
    ops.push({ type: 'put', key: K.preparedKey(st, p.txnId), value: preparedCodec.encode(rec) });
    // Locks are taken now (not after the write) so that the next command applied sees them.
    if (again) this.releaseLocks(st, p.txnId);
    this.holdLocks(st, p.txnId, rec);
    return { ok: true };
  }

  /** A vote at a given TID: above every TID, alone, and not a reservation. */
  private checkVoteAtTid(
    st: string,
    txnId: string,
    tid: Buffer,
    again: boolean,
    reserve: boolean,
  ): void {
    if (tid.length !== ID_BYTES) throw new StorageError('INVALID', 'a TID must be 8 bytes');
    if (reserve) throw new StorageError('INVALID', 'a reservation cannot name a TID');
    if (isLastOid(tid))
      throw new StorageError('INVALID', `TID ${hex(tid)} is the largest: nothing could follow it`);
    if (idCompare(tid, this.lastTidGlobal) <= 0) {
      const stLast = serialOf(this.meta(st).lastTid);
      throw new StorageError(
        'INVALID',
        `TID ${hex(tid)} (${tidTime(tid)}) is not above the last TID ${hex(this.lastTidGlobal)} (${tidTime(this.lastTidGlobal)}; storage ${JSON.stringify(st)}'s last is ${hex(stLast)}): TIDs strictly increase across every storage of the cluster, so a restore goes into a storage before anything newer is committed in the cluster`,
      );
    }
    const others = this.prepared.size - (again ? 1 : 0);
    if (others > 0)
      throw new StorageError(
        'LOCKED',
        `${others} other transaction(s) voted: a transaction at a given TID votes when nothing else is voted`,
      );
  }

  private async applyFinish(
    f: { storage: string; txnId: string; tid: Uint8Array },
    ops: BatchOp[],
    after: Array<() => void>,
  ): Promise<ApplyResult> {
    const st = f.storage;
    const done = await this.read(K.finishedKey(st, f.txnId));
    if (done) return { ok: true, tid: Buffer.from(done) };
    const raw = await this.read(K.preparedKey(st, f.txnId));
    if (!raw)
      throw new StorageError(
        'UNKNOWN_TRANSACTION',
        `transaction ${f.txnId} was not voted (under this key) or was aborted`,
      );
    const rec = preparedCodec.decode(raw);
    if (rec.reserve)
      throw new StorageError(
        'UNKNOWN_TRANSACTION',
        `transaction ${f.txnId} holds a reservation and was not voted`,
      );
    const txn = rec.resolved?.length ? await this.resolveAtFinish(st, f.txnId, rec) : rec.txn;
    // Locked since the vote, so the conflict check cannot fail: a failure here is a bug.
    const shared = sharedOf(rec);
    const current = await this.checkTxn(txn, f.txnId, false, shared, shared).catch((e: unknown) => {
      throw new Error(
        `voted transaction ${f.txnId} no longer passes its conflict check: ${String(e)}`,
      );
    });
    const atTid = rec.tid?.length ? buf(rec.tid) : undefined;
    const result = await this.applyCommit(txn, atTid ?? f.tid, ops, after, current);
    assert(result.ok && result.tid, 'finish of a voted transaction must commit');
    assert(!atTid || idEquals(result.tid, atTid), `${f.txnId} committed beside its given TID`);
    ops.push({ type: 'del', key: K.preparedKey(st, f.txnId) });
    ops.push({ type: 'put', key: K.finishedKey(st, f.txnId), value: result.tid });
    this.releaseLocks(st, f.txnId);
    return result;
  }

  /**
   * The stores of a vote that are resolved on the server (StoreOp.resolve), deciding from
   * replicated state only, so every replica decides alike:
   * - those whose data, the revision they are based on and the object's current revision are all
   *   BTrees.Length records: their change is kept (a lock shared with other Length stores of the
   *   object), and finish writes the committed value plus it;
   * - those based on an older revision than the current one whose three records are integer-key
   *   BTrees sets that BTrees' merge resolves: the merged record, written at finish (the lock is
   *   exclusive, so the committed record does not change before).
   * Others stay ordinary stores (a conflict on them goes back to the client).
   */
  private async resolvableStores(txn: Txn): Promise<ResolvedStore[]> {
    const out: ResolvedStore[] = [];
    for (const s of txn.stores ?? []) {
      if (!s.resolve || s.delete || !s.data || idEquals(serialOf(s.serial), Z64)) continue;
      const oid = buf(s.oid);
      const cur = await this.read(K.currentKey(txn.storage, oid));
      if (!cur || parseCurrent(cur).deleted) continue;
      const currentSerial = parseCurrent(cur).serial;
      const length = isLengthRecord(s.data);
      // A set based on the current revision has nothing to resolve.
      if (!length && idEquals(currentSerial, serialOf(s.serial))) continue;
      const base = await this.revisionData(txn.storage, oid, serialOf(s.serial));
      const committed = await this.revisionData(txn.storage, oid, currentSerial);
      if (!base || !committed) continue;
      if (length) {
        try {
          readLengthRecord(committed);
          out.push({ oid, delta: lengthDelta(base, s.data).toString() });
        } catch (e) {
          if (!(e instanceof PickleStateError)) throw e;
        }
        continue;
      }
      try {
        const merged = resolveIntSet(base, committed, s.data);
        if (merged) out.push({ oid, data: merged });
      } catch (e) {
        if (!(e instanceof PickleStateError)) throw e;
      }
    }
    return out;
  }

  /**
   * A voted transaction's stores with its resolved ones rewritten against the committed state:
   * the current value moved on by the transaction's change, based on the current serial. Cannot
   * fail: only resolved stores (always Length records) change an object while it is shared.
   */
  private async resolveAtFinish(st: string, txnId: string, rec: PreparedRecord): Promise<Txn> {
    const resolved = new Map((rec.resolved ?? []).map((r) => [hex(r.oid), r]));
    const stores: StoreOp[] = [];
    for (const s of rec.txn.stores ?? []) {
      const r = resolved.get(hex(s.oid));
      if (r === undefined) {
        stores.push(s);
        continue;
      }
      const oid = buf(s.oid);
      const cur = await this.read(K.currentKey(st, oid));
      assert(cur && !parseCurrent(cur).deleted, `resolved object ${hex(oid)} of ${txnId} is gone`);
      const serial = parseCurrent(cur).serial;
      if (r.data?.length) {
        // A merged set: locked exclusively since the vote merged it with this very revision.
        stores.push({ ...s, serial, data: buf(r.data) });
        continue;
      }
      const committed = await this.revisionData(st, oid, serial);
      assert(committed, `resolved object ${hex(oid)} of ${txnId} has no current data`);
      const delta = BigInt(r.delta ?? '0');
      stores.push({ ...s, serial, data: applyLengthDelta(committed, buf(s.data), delta) });
    }
    return { ...rec.txn, stores };
  }

  /** A new deadline for a voted transaction; a no-op once it was finished or aborted. */
  private async applyRenew(
    r: { storage: string; txnId: string; deadlineMs?: number },
    ops: BatchOp[],
  ): Promise<ApplyResult> {
    const p = this.prepared.get(`${r.storage}\0${r.txnId}`);
    if (!p) return { ok: true };
    const raw = await this.read(K.preparedKey(r.storage, r.txnId));
    assert(raw, `voted transaction ${r.txnId} has no record`);
    const rec = preparedCodec.decode(raw);
    // A vote's locks are renewed up to VOTE_RENEW_MAX_MS past its first deadline and no further,
    // whoever asks: computed from replicated values only, so every node applies the same deadline.
    const voted = votedDeadline(rec);
    rec.votedDeadlineMs = voted;
    rec.deadlineMs =
      voted > 0
        ? Math.min(r.deadlineMs || Infinity, voted + VOTE_RENEW_MAX_MS)
        : (r.deadlineMs ?? 0);
    assert(
      voted === 0 || (rec.deadlineMs > 0 && rec.deadlineMs <= voted + VOTE_RENEW_MAX_MS),
      `renewed deadline of ${r.txnId} is past its bound`,
    );
    ops.push({
      type: 'put',
      key: K.preparedKey(r.storage, r.txnId),
      value: preparedCodec.encode(rec),
    });
    p.deadlineMs = rec.deadlineMs;
    return { ok: true };
  }

  private async applyAbort(
    a: { storage: string; txnId: string; reason?: string; expiredDeadlineMs?: number },
    ops: BatchOp[],
    _after: Array<() => void>,
  ): Promise<ApplyResult> {
    const p = this.prepared.get(`${a.storage}\0${a.txnId}`);
    if (!p) return { ok: true };
    // A timeout abort decided on a deadline that a renewal has since moved: the owner renewed in
    // time (its renewal was applied first), so the vote stays and can be finished.
    if (a.reason === 'timeout' && a.expiredDeadlineMs && p.deadlineMs !== a.expiredDeadlineMs)
      return { ok: true };
    // The transaction is over: uploads only its vote named go with it.
    const voted = await this.read(K.preparedKey(a.storage, a.txnId));
    assert(voted, `voted transaction ${a.txnId} has no record`);
    const votedStores = preparedCodec.decode(voted).txn.stores ?? [];
    const blobCtx = blobContext((k) => this.read(k), ops);
    await this.blobs.holdCommitted(a.storage, votedStores, -1, blobCtx);
    await this.blobs.dropUploads(a.storage, votedStores, blobCtx);
    ops.push({ type: 'del', key: K.preparedKey(a.storage, a.txnId) });
    if (a.reason === 'timeout') {
      const deadline = Buffer.alloc(8);
      deadline.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(p.deadlineMs))));
      ops.push({ type: 'put', key: K.expiredKey(a.storage, a.txnId), value: deadline });
    }
    this.releaseLocks(a.storage, a.txnId);
    return { ok: true };
  }

  private async applyUndo(
    u: {
      tid: Uint8Array;
      storage: string;
      undoTid: Uint8Array;
      user?: string;
      description?: string;
    },
    ops: BatchOp[],
    after: Array<() => void>,
  ): Promise<ApplyResult> {
    const st = u.storage;
    if (!isId(u.undoTid)) throw new StorageError('INVALID', 'undo needs an 8-byte TID');
    const plan = await this.planUndoOn(st, [buf(u.undoTid)]);
    const c = plan.conflicts[0];
    if (c) {
      const cur = await this.db.get(K.currentKey(st, c.oid));
      const deleted = !cur || parseCurrent(cur).deleted;
      throw new StorageError(
        'UNDO_CONFLICT',
        `object ${hex(c.oid)} was changed after transaction ${hex(c.undone)}; undoing it needs conflict resolution`,
        {
          oid: c.oid,
          expected: c.undone,
          actual: c.committed,
          currentData: deleted ? undefined : await this.revisionData(st, c.oid, c.committed),
        },
      );
    }
    const txn: Txn = {
      storage: st,
      user: u.user ?? '',
      description: u.description ?? '',
      stores: plan.stores,
    };
    return this.applyCommit(txn, u.tid, ops, after, undefined);
  }

  /**
   * Plan the transactional undo of `undoTids` (in that order, as one transaction), as
   * FileStorage does: an object goes back to its revision before the undone transaction when
   * that transaction's revision is still current, or when the current revision holds the same
   * data (a later undo or an identical store made it so; several undos in one transaction see
   * each other's results). Undoing a creation deletes the object. Otherwise the undo conflicts:
   * undoing a creation that later transactions changed is an UNDO_CONFLICT; anything else needs
   * conflict resolution, which is the client's (UndoPlan.conflicts). Reads the applied state;
   * the stores are based on current serials, so committing them re-checks that nothing moved.
   */
  planUndo(st: string, undoTids: Buffer[]): Promise<UndoPlan> {
    return this.gate.guarded(() => this.planUndoOn(st, undoTids));
  }

  /** planUndo, reading the applied state (or, during apply, the batch's state). */
  private async planUndoOn(st: string, undoTids: Buffer[]): Promise<UndoPlan> {
    const get = (k: Buffer): Promise<Buffer | undefined> =>
      this.applying ? this.read(k) : this.db.get(k);
    const packTid = (this.applying ? this.meta(st) : (this.pubMetas.get(st) ?? emptyMeta()))
      .packTid;
    interface Planned {
      committed: Buffer;
      deleted: boolean;
      data: Buffer;
      /** The transaction whose data this is (following undo's back-pointers). */
      dataTid: Buffer;
    }
    const planned = new Map<string, Planned>();
    const stores = new Map<string, StoreOp>();
    const conflicts = new Map<string, UndoResolution>();
    const oids = new Map<string, Buffer>();
    const revOf = async (oid: Buffer, tid: Buffer): Promise<Revision | undefined> => {
      const r = await get(K.revisionKey(st, oid, tid));
      return r ? revisionCodec.decode(r) : undefined;
    };
    for (const undoTid of undoTids) {
      const raw = await get(K.txnKey(st, undoTid));
      if (!raw)
        throw new StorageError('NOT_FOUND', `no transaction ${hex(undoTid)} in storage ${st}`);
      if (packTid && packTid.length && idCompare(undoTid, buf(packTid)) <= 0)
        throw new StorageError('HISTORY_PACKED', `transaction ${hex(undoTid)} was packed away`);
      for (const o of txnRecordCodec.decode(raw).oids ?? []) {
        const oid = buf(o);
        const k = hex(oid);
        oids.set(k, oid);
        const undone = await revOf(oid, undoTid);
        if (!undone)
          throw new StorageError('UNDO_CONFLICT', `revision ${hex(undoTid)} of ${k} is gone`);
        let cur = planned.get(k);
        if (!cur) {
          const c = await get(K.currentKey(st, oid));
          if (!c) throw new StorageError('UNDO_CONFLICT', `object ${k} no longer exists`);
          const pc = parseCurrent(c);
          const rev = await revOf(oid, pc.serial);
          if (!rev) throw new StorageError('UNDO_CONFLICT', `object ${k} no longer exists`);
          cur = {
            committed: Buffer.from(pc.serial),
            deleted: pc.deleted,
            data: buf(rev.data),
            dataTid: rev.dataTid && rev.dataTid.length ? buf(rev.dataTid) : Buffer.from(pc.serial),
          };
        }
        const undoneDataTid =
          undone.dataTid && undone.dataTid.length ? buf(undone.dataTid) : undoTid;
        const same =
          cur.dataTid.equals(undoneDataTid) ||
          (cur.deleted === (undone.deleted === true) && cur.data.equals(buf(undone.data)));
        const pre = await revisionBefore(this.db, st, oid, undoTid);
        const preRev = pre ? revisionCodec.decode(pre.value) : undefined;
        const conflict = {
          oid,
          expected: undoTid,
          actual: cur.committed,
          currentData: cur.deleted ? undefined : cur.data,
        };
        if (!same && !pre)
          throw new StorageError(
            'UNDO_CONFLICT',
            `can't undo the creation of ${k} by ${hex(undoTid)}: later transactions changed it`,
            conflict,
          );
        if (!same && preRev && !preRev.deleted && !cur.deleted) {
          conflicts.set(k, {
            oid,
            committed: cur.committed,
            undone: undoTid,
            data: buf(preRev.data),
          });
        } else if (!same) {
          throw new StorageError(
            'UNDO_CONFLICT',
            `object ${k} was changed after transaction ${hex(undoTid)}`,
            conflict,
          );
        } else conflicts.delete(k);
        const restoreDeleted = !pre || !preRev || preRev.deleted === true;
        const op: StoreOp = restoreDeleted
          ? { oid, serial: cur.committed, delete: true }
          : { oid, serial: cur.committed, data: buf(preRev.data), refs: preRev.refs };
        if (!restoreDeleted && preRev?.opaque) op.opaque = true;
        // The restored revision's blob is named again (it gains a revision; nothing is copied).
        if (!restoreDeleted && preRev?.blobId?.length) op.blobId = buf(preRev.blobId);
        const preDataTid =
          pre && preRev?.dataTid && preRev.dataTid.length ? buf(preRev.dataTid) : pre?.tid;
        if (preDataTid && !restoreDeleted) op.dataTid = preDataTid;
        stores.set(k, op);
        planned.set(k, {
          committed: cur.committed,
          deleted: restoreDeleted,
          data: restoreDeleted ? Buffer.alloc(0) : buf(preRev?.data),
          dataTid: preDataTid ?? Z64,
        });
      }
    }
    return {
      stores: [...stores.values()],
      oids: [...oids.values()],
      conflicts: [...conflicts.values()],
    };
  }

  private async applyPack(
    p: { storage: string; packTid: Uint8Array; gc?: boolean },
    ops: BatchOp[],
    _after: Array<() => void>,
  ): Promise<ApplyResult> {
    const st = p.storage;
    if (!isId(p.packTid)) throw new StorageError('INVALID', 'pack needs an 8-byte TID');
    const meta = this.meta(st);
    // Never pack past the newest transaction: readers at the current state need its revisions.
    const packTid = idMax(
      serialOf(meta.packTid),
      idCompare(buf(p.packTid), this.lastTidGlobal) > 0 ? this.lastTidGlobal : buf(p.packTid),
    );
    let removed = 0;
    let count = meta.objectCount ?? 0;
    const blobCtx = blobContext((k) => this.read(k), ops);
    // Pass 1: per object, the revisions at or before packTid and whether any come later.
    interface Obj {
      oid: Buffer;
      old: { tid: Buffer; rev: Revision }[];
      hasLater: boolean;
      laterRefs: Uint8Array[];
    }
    const objects: Obj[] = [];
    // A revision whose references are unknown could be the only path to some object: no gc then.
    let opaque = false;
    const cPrefix = K.currentPrefix(st);
    for await (const [ckey] of this.db.iterator({
      gte: cPrefix,
      lt: K.prefixEnd(cPrefix),
      values: false,
    } as any)) {
      const oid = Buffer.from(ckey.subarray(cPrefix.length));
      const o: Obj = { oid, old: [], hasLater: false, laterRefs: [] };
      const rp = K.revisionPrefix(st, oid);
      for await (const [rkey, rval] of this.db.iterator({ gte: rp, lt: K.prefixEnd(rp) })) {
        const tid = Buffer.from(K.revisionKeyTid(rkey));
        const rev = revisionCodec.decode(rval);
        if (rev.opaque) opaque = true;
        if (idCompare(tid, packTid) <= 0) o.old.push({ tid, rev });
        else {
          o.hasLater = true;
          o.laterRefs.push(...(rev.refs ?? []));
        }
      }
      objects.push(o);
    }
    let reachable: Set<string> | undefined;
    if (p.gc && !opaque) {
      // Objects reachable from the root at packTid, or referenced by any later revision.
      const byOid = new Map(objects.map((o) => [hex(o.oid), o]));
      reachable = new Set<string>();
      const todo: string[] = [hex(Z64)];
      for (const o of objects) for (const r of o.laterRefs) todo.push(hex(r));
      for (const o of objects) if (o.hasLater) todo.push(hex(o.oid));
      // ...and what a voted transaction holds or will reference: its finish must still pass its
      // conflict check (vote guarantees finish) and must not commit a reference to a collected object.
      const pp = K.preparedPrefix(st);
      for await (const [, v] of this.db.iterator({ gte: pp, lt: K.prefixEnd(pp) })) {
        const voted = preparedCodec.decode(v).txn;
        for (const c of voted.checks ?? []) todo.push(hex(c.oid));
        for (const s of voted.stores ?? []) {
          todo.push(hex(s.oid));
          for (const r of s.refs ?? []) todo.push(hex(r));
        }
      }
      while (todo.length) {
        const h = todo.pop() as string;
        if (reachable.has(h)) continue;
        reachable.add(h);
        const o = byOid.get(h);
        const keep = o?.old[o.old.length - 1];
        if (keep && !keep.rev.deleted) for (const r of keep.rev.refs ?? []) todo.push(hex(r));
      }
    }
    for (const o of objects) {
      const garbage = reachable !== undefined && !reachable.has(hex(o.oid));
      // A deletion is dropped with the object's current record, unless a voted transaction holds
      // the object: its finish is checked against that current serial.
      const held = this.locks.has(lockKey(st, o.oid));
      const keepLast =
        !garbage && o.old.length > 0 && (held || !o.old[o.old.length - 1].rev.deleted);
      const drop = keepLast ? o.old.slice(0, -1) : o.old;
      for (const d of drop) await this.dropRevision(st, o.oid, d.tid, ops, d.rev, blobCtx);
      removed += drop.length;
      if (!o.hasLater && !keepLast && o.old.length > 0) {
        this.dropCurrent(st, o.oid, ops);
        if (!o.old[o.old.length - 1].rev.deleted) count--;
      }
    }
    const newMeta: StorageMeta = { ...meta, packTid, objectCount: count };
    ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(newMeta) });
    this.metas.set(st, newMeta);
    return { ok: true, removed };
  }

  /** One chunk of a blob upload (blob-store.ts); the result's `removed` is the upload's size. */
  private async applyBlobChunk(index: number, c: BlobChunk, ops: BatchOp[]): Promise<ApplyResult> {
    const proposed = c.tid && c.tid.length === ID_BYTES ? buf(c.tid) : Z64;
    const now = idMax(proposed, this.lastTidGlobal);
    const ctx = blobContext((k) => this.read(k), ops);
    const { size } = await this.blobs.applyChunk(c, index, now, ctx);
    return { ok: true, removed: size };
  }

  /**
   * Remove one revision and release its blob: the one routine through which pack drops revisions.
   * `rev` is the revision when the caller has read it (otherwise it is read here).
   */
  private async dropRevision(
    st: string,
    oid: Buffer,
    tid: Buffer,
    ops: BatchOp[],
    rev: Revision | undefined,
    blobCtx: ReturnType<typeof blobContext>,
  ): Promise<void> {
    const key = K.revisionKey(st, oid, tid);
    if (!rev) {
      const raw = await this.read(key);
      assert(raw, `pack drops revision ${hex(tid)} of ${hex(oid)}, which does not exist`);
      rev = revisionCodec.decode(raw);
    }
    ops.push({ type: 'del', key });
    await dropRevisionBlob(st, rev, blobCtx);
  }

  /** Remove an object's current record (pack, once no revision of it is left). */
  private dropCurrent(st: string, oid: Buffer, ops: BatchOp[]): void {
    ops.push({ type: 'del', key: K.currentKey(st, oid) });
  }

  /** What the steps of a pack in steps (pack-steps.ts) use of the store while it applies. */
  private readonly packCtx: PackApplyContext = {
    read: (key) => this.read(key),
    range: async ({ gte, lt, limit, values }) => {
      if (values)
        return (await this.db.iterator({ gte, lt, limit }).all()) as Array<[Buffer, Buffer]>;
      const keys = await this.db.keys({ gte, lt, limit }).all();
      return keys.map((k): [Buffer, undefined] => [k, undefined]);
    },
    getMany: (keys) => this.db.getMany(keys),
    meta: (st) => this.meta(st),
    lastTid: () => this.lastTidGlobal,
    setMeta: (st, meta, ops) => {
      ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(meta) });
      this.metas.set(st, meta);
    },
    held: (st, oid) => {
      const k = lockKey(st, oid);
      return this.locks.has(k) || (this.sharedLocks.get(k)?.size ?? 0) > 0;
    },
    dropRevisions: async (st, revisions, ops) => {
      const blobCtx = blobContext((k) => this.read(k), ops);
      const keys = revisions.map(({ oid, tid }) => K.revisionKey(st, oid, tid));
      const values = await this.db.getMany(keys);
      for (let i = 0; i < revisions.length; i++) {
        const raw = values[i];
        assert(
          raw,
          `pack drops revision ${hex(revisions[i].tid)} of ${hex(revisions[i].oid)}, which does not exist`,
        );
        const { oid, tid } = revisions[i];
        await this.dropRevision(st, oid, tid, ops, revisionCodec.decode(raw), blobCtx);
      }
    },
    dropCurrent: (st, oid, ops) => this.dropCurrent(st, oid, ops),
    current: (v) => parseCurrent(v),
    isDeletion: (v) => revisionCodec.decode(v).deleted === true,
  };

  /** One step of a pack in steps (log.proto PackCmd.step; pack-steps.ts). */
  private async applyPackStep(
    index: number,
    p: {
      storage: string;
      packTid: Uint8Array;
      gc?: boolean;
      step?: number;
      packId?: number;
      oids?: Uint8Array[];
      fromOid?: Uint8Array;
    },
    ops: BatchOp[],
  ): Promise<ApplyResult> {
    const st = p.storage;
    if (!st) throw new StorageError('INVALID', 'pack without a storage name');
    switch (p.step) {
      case PackStep.START: {
        if (!isId(p.packTid)) throw new StorageError('INVALID', 'pack needs an 8-byte TID');
        const meta = this.meta(st);
        // Never pack past the newest transaction: readers at the current state need its revisions.
        const packTid = idMax(
          serialOf(meta.packTid),
          idCompare(buf(p.packTid), this.lastTidGlobal) > 0 ? this.lastTidGlobal : buf(p.packTid),
        );
        applyPackStart(this.packCtx, index, st, packTid, p.gc === true, ops);
        return { ok: true, tid: packTid };
      }
      case PackStep.DOOM: {
        const n = await applyPackDoom(this.packCtx, st, Number(p.packId ?? 0), p.oids ?? [], ops);
        return { ok: true, removed: n };
      }
      case PackStep.SWEEP: {
        const r = await applyPackSweep(
          this.packCtx,
          st,
          Number(p.packId ?? 0),
          serialOf(p.fromOid),
          ops,
        );
        return { ok: true, removed: r.removed, oids: r.next ? [r.next] : [] };
      }
      default:
        throw new StorageError('INVALID', `unknown pack step ${p.step}`);
    }
  }

  /** The pack in steps running on `st` (as applied and published), if any. */
  packState(st: string): StorageMeta['packing'] {
    return this.reader.packState(st);
  }

  /** Every revision of `st` in key order, in batches (the walk of a pack; StoreReader). */
  packScanRevisions(
    st: string,
    batch: number,
  ): AsyncGenerator<Array<{ oid: Buffer; tid: Buffer; value: Buffer }>> {
    return this.reader.packScanRevisions(st, batch);
  }

  /** The voted transactions of `st`: the walk of a pack keeps what they write and reference. */
  packPreparedTxns(st: string): Promise<Txn[]> {
    return this.reader.packPreparedTxns(st);
  }

  private applyNewOids(
    n: { storage: string; count: number },
    ops: BatchOp[],
    _after: Array<() => void>,
  ): ApplyResult {
    if (!n.storage) throw new StorageError('INVALID', 'newOids without a storage name');
    if (!Number.isInteger(n.count) || n.count < 1 || n.count > MAX_NEW_OIDS) {
      throw new StorageError('INVALID', `newOids count must be 1..${MAX_NEW_OIDS}`);
    }
    const meta = this.meta(n.storage);
    let next = u64(serialOf(meta.nextOid));
    if (next === 0n) next = 1n;
    if (next + BigInt(n.count) > LAST_OID) {
      throw new StorageError('INVALID', 'newOids would run past the largest OID');
    }
    const oids: Buffer[] = [];
    for (let i = 0; i < n.count; i++) oids.push(p64(next + BigInt(i)));
    const newMeta: StorageMeta = { ...meta, nextOid: p64(next + BigInt(n.count)) };
    ops.push({
      type: 'put',
      key: K.storageKey(n.storage),
      value: storageMetaCodec.encode(newMeta),
    });
    this.metas.set(n.storage, newMeta);
    return { ok: true, oids };
  }

  private applyMember(m: MemberRecord, ops: BatchOp[], after: Array<() => void>): ApplyResult {
    if (!m.id) throw new StorageError('INVALID', 'member without an id');
    if (m.remove) {
      ops.push({ type: 'del', key: K.memberKey(m.id) });
      after.push(() => this.memberMap.delete(m.id));
    } else {
      const rec: MemberRecord = {
        id: m.id,
        peerAddress: m.peerAddress ?? '',
        clientAddress: m.clientAddress ?? '',
      };
      ops.push({ type: 'put', key: K.memberKey(m.id), value: memberCodec.encode(rec) });
      after.push(() => this.memberMap.set(m.id, rec));
    }
    return { ok: true };
  }

  /** Member addresses recorded through the log. */
  members(): MemberRecord[] {
    return [...this.memberMap.values()];
  }

  /** Make every applied write durable (one synced write flushes LevelDB's log). */
  async flush(): Promise<void> {
    assert(!this.applying, 'flush during apply');
    await this.db.put(K.globalKey, this.globalValue(), { sync: true });
  }
  // ------------------------------------------------------------------------------------------
  // Reads (store-reader.ts)

  load(st: string, oid: Buffer): Promise<LoadResult> {
    return this.reader.load(st, oid);
  }

  currentObjects(
    st: string,
    from: Buffer,
    n: number,
    scanMaxRecords: number,
    stop: () => boolean = () => false,
  ): Promise<{ oids: Buffer[]; exhausted: boolean; resumeAt?: Buffer }> {
    return this.reader.currentObjects(st, from, n, scanMaxRecords, stop);
  }

  currentSerial(st: string, oid: Buffer): Promise<Buffer> {
    return this.reader.currentSerial(st, oid);
  }

  loadBefore(st: string, oid: Buffer, before: Buffer): Promise<LoadBeforeResult> {
    return this.reader.loadBefore(st, oid, before);
  }

  loadSerial(st: string, oid: Buffer, serial: Buffer): Promise<Buffer> {
    return this.reader.loadSerial(st, oid, serial);
  }

  history(st: string, oid: Buffer, size: number): Promise<HistoryEntry[]> {
    return this.reader.history(st, oid, size);
  }

  blobOf(st: string, oid: Buffer, serial: Buffer): Promise<{ blobId: Buffer; size: number }> {
    return this.reader.blobOf(st, oid, serial);
  }

  blobUploadSize(st: string, blobId: Buffer): Promise<number | undefined> {
    return this.reader.blobUploadSize(st, blobId);
  }

  blobChunks(st: string, blobId: Buffer, expectedSize: number): AsyncGenerator<Buffer> {
    return this.reader.blobChunks(st, blobId, expectedSize);
  }

  iterate(st: string, start: Buffer = Z64, stop?: Buffer): AsyncGenerator<TransactionInfo> {
    return this.reader.iterate(st, start, stop);
  }

  transactionOids(st: string, tid: Buffer): Promise<Buffer[] | undefined> {
    return this.reader.transactionOids(st, tid);
  }

  historyWindow(
    st: string,
    n: number,
  ): Promise<{ count: number; oldestTid: Buffer; windowOldestTid: Buffer }> {
    return this.reader.historyWindow(st, n);
  }

  previousTid(st: string, tid: Buffer): Promise<Buffer> {
    return this.reader.previousTid(st, tid);
  }

  oldestTid(st: string): Promise<Buffer> {
    return this.reader.oldestTid(st);
  }

  undoLog(st: string, first: number, last: number): Promise<HistoryEntry[]> {
    return this.reader.undoLog(st, first, last);
  }

  // ------------------------------------------------------------------------------------------
  // Snapshots (Raft state transfer; snapshot-stream.ts)

  /**
   * The whole state as encoded chunks, read from one consistent LevelDB snapshot taken when the
   * iterator is created (synchronously, before any later apply lands). Returns the applied index
   * the chunks describe.
   */
  snapshot(): { index: number; chunks: AsyncGenerator<Buffer> } {
    const chunks = snapshotChunks(this.db);
    return { index: this.appliedIdx, chunks };
  }

  /**
   * Replace the whole state with a snapshot, all or nothing. `open()` yields the snapshot's
   * encoded chunks and is called twice: the first pass validates the whole snapshot (a malformed or
   * truncated one is refused with INVALID), the second stages it beside the current state:
   *
   *   marked     the install record (phase: staging) is written and synced;
   *   chunk      a chunk has landed under the staging prefix (unsynced);
   *   staged     every chunk has landed;
   *   switching  the record's phase becomes switching, synced (which makes the staged data
   *              durable: LevelDB's log is sequential): from here the install completes, now or
   *              when the store is next opened; readers wait;
   *   cleared    the old state is deleted;
   *   copied     the staged records are in place (phase: copied, synced);
   *   installed  the staged copy and the record are gone (synced); the state is then loaded and
   *              published with the replaced event.
   *
   * Until `switching` the current state keeps serving, and a failure (ENOSPC, EIO) leaves it as it
   * was. A failure after it leaves the store unhealthy (reads fail UNAVAILABLE): the owner must
   * stop, and the next open completes the install. Returns the applied index the snapshot holds.
   */
  async restore(open: () => AsyncIterable<Uint8Array>, expectedIndex?: number): Promise<number> {
    assert(!this.applying, 'restore during apply');
    this.applying = true;
    this.restoring = true;
    try {
      const index = await validateSnapshot(open(), expectedIndex);
      const step = (st: InstallStep): void => this.options.onInstallStep?.(st);
      await stageSnapshot(this.db, open, index, step);
      const switched = this.gate.switching();
      this.cache.reset(); // reads of the old state in flight must not fill the cache
      try {
        await switchToStaged(this.db, BigInt(index), step);
        await this.loadState(false); // published below, with the replaced event
        assert(
          this.appliedIdx === index,
          `restored store is at ${this.appliedIdx}, its snapshot at ${index}`,
        );
      } catch (e) {
        this.gate.broken(
          `a snapshot install failed part-way (${String(e)}); the node must restart`,
        );
        throw e;
      } finally {
        this.cache.reset();
        switched();
      }
      // Publish and tell the listeners in one synchronous step: nobody sees the new last TID
      // (a stream's progress event, say) before the streams know the state was replaced.
      this.publish();
      const ev: ReplacedEvent = { index: this.appliedIdx, lastTid: this.lastTidGlobal };
      for (const fn of this.replacedListeners) fn(ev);
      for (const fn of this.applyListeners) fn(this.appliedIdx);
      return this.appliedIdx;
    } finally {
      this.applying = false;
      this.restoring = false;
    }
  }
}
