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
 *
 * This class is the facade; the work is done by its parts, which share state through an explicit
 * ApplyContext (apply-context.ts): batch-writer.ts (the working and published state, the batch
 * loop), current-cache.ts, lock-table.ts, apply-dispatch.ts and the command families
 * (commit-, session-, vote-, undo-, pack- and member-commands.ts), store-load.ts, store-reader.ts
 * with read-gate.ts, and snapshot-stream.ts.
 */
import type { AbstractLevel } from 'abstract-level';
import { Level } from 'level';
import { assert } from '../util/assert';
import { Z64 } from '../util/ids';
import type { Command, MemberRecord, StorageMeta, Txn } from './codec';
import type { ApplyContext } from './apply-context';
import { applyCommand } from './apply-dispatch';
import { BatchWriter } from './batch-writer';
import { BlobUploads } from './blob-store';
import { CurrentSerialCache } from './current-cache';
import * as K from './keys';
import { LockTable } from './lock-table';
import { packContext } from './pack-commands';
import { ReadGate } from './read-gate';
import { SessionTable } from './session-table';
import {
  type InstallStep,
  discardPartialInstall,
  snapshotChunks,
  stageSnapshot,
  switchToStaged,
  validateSnapshot,
} from './snapshot-stream';
import { loadState } from './store-load';
import type { Db } from './store-records';
import { StoreReader } from './store-reader';
import type {
  ApplyResult,
  CommitEvent,
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  PreparedSummary,
  ReplacedEvent,
  StorageSummary,
  TransactionInfo,
  UndoPlan,
} from './store-types';
import { planUndo } from './undo-commands';
import { PreviousTids } from './previous-tids';

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
export { MAX_NEW_OIDS } from './commit-commands';
export { SESSIONS_MAX, SESSION_ID_BYTES_MAX } from './session-commands';
export { SESSION_EXPIRY_MS } from './session-table';
export { VOTE_RENEW_MAX_MS } from './vote-commands';

export interface ObjectStoreOptions {
  /** fsync every applied batch. A Raft replica does not need it (the log is durable); a standalone node does. */
  sync: boolean;
  /**
   * Called after each step of a snapshot install has landed. Tests kill the process here to check
   * that an install interrupted at any step is recovered; production passes nothing.
   */
  onInstallStep?: (step: InstallStep) => void;
  /** Current-serial records kept in memory (current-cache.ts; default CURRENT_CACHE_ENTRIES). */
  currentCacheEntries?: number;
}

export class ObjectStore {
  private readonly cache: CurrentSerialCache;
  /** Reads against snapshot installs, and why the store cannot serve. */
  private readonly gate = new ReadGate();
  /** Apply's working state, the published copies of it, and the batch loop. */
  private readonly w: BatchWriter;
  private readonly reader: StoreReader;
  /** What the command appliers share (apply-context.ts). */
  private readonly ctx: ApplyContext;
  private readonly commitListeners = new Set<(ev: CommitEvent) => void>();
  private readonly applyListeners = new Set<(index: number) => void>();
  private readonly replacedListeners = new Set<(ev: ReplacedEvent) => void>();
  /** True while a snapshot install runs (restore). */
  private restoring = false;
  private interrupted = false;

  private constructor(
    private readonly db: Db,
    private readonly options: ObjectStoreOptions,
  ) {
    this.cache = new CurrentSerialCache(db, options.currentCacheEntries);
    this.w = new BatchWriter(db, this.cache, options.sync, this.applyListeners);
    const blobs = new BlobUploads();
    const locks = new LockTable(blobs);
    this.ctx = {
      db,
      w: this.w,
      locks,
      blobs,
      sessions: new SessionTable(),
      members: new Map<string, MemberRecord>(),
      commitListeners: this.commitListeners,
      previousTids: new PreviousTids(),
      packCtx: packContext(db, this.w, locks),
    };
    this.reader = new StoreReader(db, this.gate, this.cache, {
      published: () => this.w.published,
    });
  }

  static async open(dir: string, options: ObjectStoreOptions): Promise<ObjectStore> {
    const db: Db = new Level<Buffer, Buffer>(dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    });
    await db.open();
    return ObjectStore.load(db, options);
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
    return ObjectStore.load(db as unknown as Db, options);
  }

  /** An open database: finish an interrupted snapshot install, load the state, build the filter. */
  private static async load(db: Db, options: ObjectStoreOptions): Promise<ObjectStore> {
    const store = new ObjectStore(db, options);
    store.interrupted = await discardPartialInstall(store.db);
    await loadState(store.ctx);
    store.cache.replaced();
    return store;
  }

  /** True when open found (and discarded) the partial state of an interrupted snapshot install. */
  get interruptedInstall(): boolean {
    return this.interrupted;
  }

  /** The owner has arranged for a new snapshot (its log asks for one): forget the install record. */
  async installRecovered(): Promise<void> {
    assert(this.interrupted, 'no interrupted install to recover from');
    assert(this.w.appliedIdx === 0, 'an interrupted install leaves an empty store');
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

  /**
   * Resolves once the presence filter over the current state is built (current-cache.ts); until
   * then every conflict check of a new object reads LevelDB.
   */
  presenceFilterBuilt(): Promise<void> {
    return this.cache.filterBuilt;
  }

  /** Conflict checks answered "no such object" by the presence filter, without a read. */
  get absentByFilter(): number {
    return this.cache.absentByFilter;
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
    return this.w.appliedIdx;
  }

  /** The newest TID committed in any storage (z64 when none). */
  get lastTid(): Buffer {
    return this.w.publishedLastTid;
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

  storageSummary(st: string): StorageSummary {
    return this.reader.storageSummary(st);
  }

  storageNames(): string[] {
    return this.reader.storageNames();
  }

  preparedTransactions(): PreparedSummary[] {
    return this.ctx.locks.votes();
  }

  /** The voted transaction holding a lock on the object, if any. */
  lockHolder(st: string, oid: Uint8Array): string | undefined {
    return this.ctx.locks.holder(st, oid);
  }

  /**
   * Whether a voted transaction other than `txnId` holds the object: exclusively, or (unless
   * `shared`, a store resolved on the server asking) by sharing it.
   */
  lockedForOthers(st: string, oid: Uint8Array, txnId: string, shared: boolean): boolean {
    return this.ctx.locks.lockedForOthers(st, oid, txnId, shared);
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
    return this.w.applyBatch(items, (index, cmd, ops, after) =>
      applyCommand(this.ctx, index, cmd, ops, after),
    );
  }

  /** The sessions kept, least recently used first (for tests and status). */
  sessionTable(): Array<{ id: string; seq: number; usedIndex: number; usedTid: Buffer }> {
    return this.ctx.sessions.table();
  }

  /** The newest used TID of any forgotten session (z64 when none was). */
  get forgottenSessionsUpTo(): Buffer {
    return this.ctx.sessions.forgottenUpTo;
  }

  /** The transactional undo of `undoTids` as one transaction (undo-commands.ts). */
  planUndo(st: string, undoTids: Buffer[]): Promise<UndoPlan> {
    return this.gate.guarded(() => planUndo(this.ctx, st, undoTids, false));
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

  /** Member addresses recorded through the log (removed members' tombstones left out). */
  members(): MemberRecord[] {
    return [...this.ctx.members.values()].filter((m) => !m.remove);
  }

  /** Whether `id` was removed from the cluster (its tombstone was applied): never a member again. */
  isRemovedMember(id: string): boolean {
    return this.ctx.members.get(id)?.remove === true;
  }

  /** Make every applied write durable (one synced write flushes LevelDB's log). */
  async flush(): Promise<void> {
    assert(!this.w.applying, 'flush during apply');
    await this.db.put(K.globalKey, this.w.globalValue(), { sync: true });
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

  /** The TID of the storage's transaction just before `tid` (z64 when none). */
  previousTid(st: string, tid: Buffer): Promise<Buffer> {
    const hit = this.ctx.previousTids.get(st, tid);
    return hit ? Promise.resolve(Buffer.from(hit)) : this.reader.previousTid(st, tid);
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
    return { index: this.w.appliedIdx, chunks };
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
    assert(!this.w.applying, 'restore during apply');
    this.w.applying = true;
    this.restoring = true;
    try {
      const index = await validateSnapshot(open(), expectedIndex);
      const step = (st: InstallStep): void => this.options.onInstallStep?.(st);
      await stageSnapshot(this.db, open, index, step);
      const switched = this.gate.switching();
      this.cache.reset(); // reads of the old state in flight must not fill the cache
      try {
        await switchToStaged(this.db, BigInt(index), step);
        await loadState(this.ctx, false); // published below, with the replaced event
        assert(
          this.w.appliedIdx === index,
          `restored store is at ${this.w.appliedIdx}, its snapshot at ${index}`,
        );
      } catch (e) {
        this.gate.broken(
          `a snapshot install failed part-way (${String(e)}); the node must restart`,
        );
        throw e;
      } finally {
        this.cache.replaced();
        this.ctx.previousTids.clear();
        switched();
      }
      // Publish and tell the listeners in one synchronous step: nobody sees the new last TID
      // (a stream's progress event, say) before the streams know the state was replaced.
      this.w.publish();
      const ev: ReplacedEvent = { index: this.w.appliedIdx, lastTid: this.w.lastTidGlobal };
      for (const fn of this.replacedListeners) fn(ev);
      for (const fn of this.applyListeners) fn(this.w.appliedIdx);
      return this.w.appliedIdx;
    } finally {
      this.w.applying = false;
      this.restoring = false;
    }
  }
}
