/**
 * The transport-neutral storage API under both doors: the gRPC Storage service
 * (storage-service.ts) and the ZEO session (src/zeo) decode a request, call this and encode the
 * answer. It owns what both need the same way: storage names and writability, freshness (never
 * serve less than the client saw), limits (transaction size, voted transactions, page sizes),
 * lock waiting (one line of waiters per node, lock-queue.ts), the vote's transaction timeout,
 * conflict and commit metrics, and the commit feed. Failures are domain errors
 * (domain-errors.ts) or storage errors (storage/errors.ts); each door maps them to its protocol.
 */
import type { NodeMetrics } from '../metrics/metrics';
import type { Command, CommitSession, Txn } from '../storage/codec';
import type { ApplyResult, CommitEvent, ObjectStore } from '../storage/object-store';
import { MAX_NEW_OIDS } from '../storage/object-store';
import type { PackRunResult } from '../storage/pack-gc';
import { Z64, tidFromTime } from '../util/ids';
import { notLeader, readOnly, unknownStorage } from './domain-errors';
import { type Limits, type Reservation, txnBytes } from './limits';
import { LockQueue, type LockNeed, lockNeed } from './lock-queue';
import type { CommitFeed } from './commit-feed';
import type { ReplicaView, Replicator } from './replicator';
import type { Caller } from './security';

/** History entries one call returns at most (gRPC History, ZEO history). */
export const HISTORY_SIZE_MAX = 1000;
/** Undo log entries one call returns at most (gRPC UndoLog, ZEO undoLog / undoInfo). */
export const UNDO_LOG_PAGE_MAX = 1000;
/** OIDs one NewOids call hands out at most. */
export const NEW_OIDS_MAX = MAX_NEW_OIDS;

/** The configuration values the API reads (a NodeConfig has them all). */
export interface StorageApiConfig {
  nodeId: string;
  readOnly: boolean;
  storages: readonly { name: string; readOnly?: boolean }[];
  /** How long a vote or commit waits for objects a voted transaction holds. */
  lockWaitMs: number;
  /** A gRPC vote not finished within this time is aborted by the leader. */
  txnTimeoutMs: number;
  /** The deadline of a request that brings none (every ZEO call, a gRPC call without one). */
  defaultDeadlineMs: number;
}

/** The store's read side, as the API uses it. */
export type StoreReads = Pick<
  ObjectStore,
  | 'lastTid'
  | 'appliedIndex'
  | 'storageSummary'
  | 'preparedTransactions'
  | 'lockedForOthers'
  | 'lockHolder'
  | 'onApplied'
  | 'load'
  | 'loadBefore'
  | 'loadSerial'
  | 'history'
  | 'undoLog'
  | 'iterate'
  | 'previousTid'
>;

/** Waits on this node's applied index (the node's applied-index watch). */
export interface AppliedWatch {
  /** Resolve once this node has applied `tid`; a DEADLINE_EXCEEDED domain error at the deadline. */
  waitForTid(tid: Buffer, deadlineMs: number): Promise<void>;
  /** Resolve after the next applied command, or at the deadline (never rejects). */
  waitForUnlock(deadlineMs: number): Promise<void>;
}

export interface StorageApiDeps {
  config: StorageApiConfig;
  store: StoreReads;
  replicator: Pick<Replicator, 'propose' | 'linearizableRead' | 'view'>;
  applied: AppliedWatch;
  metrics: Pick<NodeMetrics, 'conflicts' | 'observeCommit'>;
  limits: Pick<
    Limits,
    'checkTransaction' | 'checkPrepared' | 'reserveCommand' | 'reserveTxnMemory'
  >;
  /** Committed transactions for subscribers, and the window they may resume from. */
  feed: Pick<CommitFeed, 'oldestResumable' | 'follow' | 'delivered'>;
  /** Run a pack in replicated steps, logged and counted (pack.ts). */
  pack(
    storage: string,
    packTid: Buffer,
    gc: boolean,
    propose: (cmd: Command) => Promise<ApplyResult>,
  ): Promise<PackRunResult>;
}

/** Who asks and until when: each replicated call carries both. */
export interface CallContext {
  deadlineMs: number;
  /**
   * Whom a command is for (a leader checks forwarded commands against it); default: a client
   * without a key.
   */
  caller?: Caller;
}

/** A lock-waiting proposal's bounds (see proposeWithLockWait). */
export interface LockWait extends CallContext {
  /** Objects the command needs; unknown (an undo) waits for the next applied command instead. */
  needs?: LockNeed[];
  /** The waiter's id in the line: the vote's transaction id (its own locks do not block it). */
  txnId?: string;
  /** Stop waiting (the client left). */
  stopped?: () => boolean;
  /** Without `needs`: also look again after this long without an applied command. */
  pollMs?: number;
}

export interface StorageInfoView {
  name: string;
  readOnly: boolean;
  supportsUndo: boolean;
  objectCount: number;
  lastTid: Buffer;
  oldestResumableTid: Buffer;
}

export class StorageApi {
  /** One line of lock waiters for both doors. */
  readonly lockQueue: LockQueue;
  private commitWaiters = 0;

  constructor(private readonly d: StorageApiDeps) {
    const store = d.store;
    this.lockQueue = new LockQueue({
      isFree: (n, txnId) => !store.lockedForOthers(n.storage, n.oid, txnId, n.shared),
      holds: (n, txnId) => store.lockHolder(n.storage, n.oid) === txnId,
      onApplied: (fn) => store.onApplied(fn),
    });
  }

  close(): void {
    this.lockQueue.close();
  }

  get nodeId(): string {
    return this.d.config.nodeId;
  }

  /** A request's deadline: the one it brings (ms since the epoch), else the default from now. */
  deadline(requestedMs?: number): number {
    return requestedMs !== undefined && Number.isFinite(requestedMs) && requestedMs > 0
      ? requestedMs
      : Date.now() + this.d.config.defaultDeadlineMs;
  }

  get lastTid(): Buffer {
    return this.d.store.lastTid;
  }

  get appliedIndex(): number {
    return this.d.store.appliedIndex;
  }

  view(): ReplicaView {
    return this.d.replicator.view();
  }

  // ------------------------------------------------------------------------------------------
  // Names, writability, freshness

  /** The storage a request names ('' and undefined: the default); UNKNOWN_STORAGE otherwise. */
  storageName(name: string | undefined, dflt: string): string {
    const st = name || dflt;
    if (!this.knows(st))
      throw unknownStorage(
        `unknown storage ${JSON.stringify(st)}; this cluster serves ${this.d.config.storages.map((s) => JSON.stringify(s.name)).join(', ')}`,
      );
    return st;
  }

  knows(st: string): boolean {
    return this.d.config.storages.some((s) => s.name === st);
  }

  /**
   * Why `st` takes no writes on this node, if it does not: the node is read-only, the door is
   * (`doorReason`: the ZEO door while security keys are on), or the storage is.
   */
  readOnlyReason(st: string, doorReason?: string): string | undefined {
    if (this.d.config.readOnly) return `node ${this.d.config.nodeId} is read-only`;
    if (doorReason) return doorReason;
    if (this.d.config.storages.find((s) => s.name === st)?.readOnly)
      return `storage ${JSON.stringify(st)} is read-only`;
    return undefined;
  }

  /** READ_ONLY unless `st` takes writes on this node. */
  writable(st: string): void {
    const why = this.readOnlyReason(st);
    if (why) throw readOnly(why);
  }

  /** Reads need state: a node waiting for its first snapshot holds none (it would say NOT_FOUND). */
  holdsState(): void {
    const v = this.d.replicator.view();
    if (v.awaitingSnapshot)
      throw notLeader(
        `node ${this.d.config.nodeId} holds no state yet: it waits for a snapshot from the leader; retry or try another node`,
        v.leaderAddress,
      );
  }

  /** Wait until this node has applied `tid` (MISSION §2.6: never serve older state than a client saw). */
  waitForTid(tid: Buffer, deadlineMs: number): Promise<void> {
    return this.d.applied.waitForTid(tid, deadlineMs);
  }

  /** A linearizable point: resolves once this node applied everything committed before the call. */
  linearizableRead(deadlineMs: number): Promise<void> {
    return this.d.replicator.linearizableRead(deadlineMs);
  }

  // ------------------------------------------------------------------------------------------
  // Reads

  async info(st: string): Promise<StorageInfoView> {
    const s = this.d.store.storageSummary(st);
    return {
      name: st,
      readOnly: this.readOnlyReason(st) !== undefined,
      supportsUndo: true,
      objectCount: s.objectCount,
      lastTid: s.lastTid,
      oldestResumableTid: await this.d.feed.oldestResumable(st),
    };
  }

  /** Open a storage: wait for what the client saw, then its description. */
  async open(
    st: string,
    seen: Buffer | undefined,
    deadlineMs: number,
  ): Promise<{ lastTid: Buffer; info: StorageInfoView; nodeId: string; leaderId: string }> {
    if (seen) await this.waitForTid(seen, deadlineMs);
    const v = this.d.replicator.view();
    const info = await this.info(st);
    return { lastTid: this.d.store.lastTid, info, nodeId: v.nodeId, leaderId: v.leaderId };
  }

  /** The current revision, with the applied TID it is current as of (read first). */
  async load(st: string, oid: Buffer): Promise<{ data: Buffer; serial: Buffer; asOfTid: Buffer }> {
    const asOfTid = this.d.store.lastTid;
    const r = await this.d.store.load(st, oid);
    return { data: r.data, serial: r.serial, asOfTid };
  }

  loadBefore(st: string, oid: Buffer, before: Buffer): ReturnType<ObjectStore['loadBefore']> {
    return this.d.store.loadBefore(st, oid, before);
  }

  loadSerial(st: string, oid: Buffer, serial: Buffer): Promise<Buffer> {
    return this.d.store.loadSerial(st, oid, serial);
  }

  /** Up to `size` revisions, newest first; `size` is clamped to 1..HISTORY_SIZE_MAX. */
  history(st: string, oid: Buffer, size: number): ReturnType<ObjectStore['history']> {
    return this.d.store.history(st, oid, Math.min(Math.max(size, 1), HISTORY_SIZE_MAX));
  }

  lastTransaction(st: string): Buffer {
    return this.d.store.storageSummary(st).lastTid;
  }

  /** Undo log entries `first` (inclusive) to `last` (exclusive), newest first. */
  undoLog(st: string, first: number, last: number): ReturnType<ObjectStore['undoLog']> {
    return this.d.store.undoLog(st, first, last);
  }

  iterate(st: string, start: Buffer, stop: Buffer | undefined): ReturnType<ObjectStore['iterate']> {
    return this.d.store.iterate(st, start, stop);
  }

  /** The oldest TID a client may resume from in `st` (the commit feed's retained window). */
  oldestResumable(st: string): Promise<Buffer> {
    return this.d.feed.oldestResumable(st);
  }

  /**
   * Follow the commits of `st` from now on, in TID order, synchronously as they are applied (the
   * commit feed, commit-feed.ts); the ZEO door's invalidations. Returns the unsubscribe function.
   */
  subscribe(st: string, deliver: (ev: CommitEvent) => void): () => void {
    return this.d.feed.follow(st, deliver);
  }

  /** Count commit events sent to a client (zeoraft_invalidations_sent_total). */
  invalidationsSent(n: number): void {
    this.d.feed.delivered(n);
  }

  /** The TID after which everything is applied here once the linearizable point is reached. */
  async sync(deadlineMs: number): Promise<Buffer> {
    await this.d.replicator.linearizableRead(deadlineMs);
    return this.d.store.lastTid;
  }

  // ------------------------------------------------------------------------------------------
  // Writes

  /** Propose a command; a replication failure rejects with its domain error. */
  propose(cmd: Command, ctx: CallContext): Promise<ApplyResult> {
    return this.d.replicator.propose(cmd, ctx.deadlineMs, ctx.caller);
  }

  /** The transaction limits (objects and bytes), before anything is replicated. */
  admitTransaction(txn: Txn): void {
    this.d.limits.checkTransaction(
      (txn.stores?.length ?? 0) + (txn.checks?.length ?? 0),
      txnBytes(txn),
    );
  }

  /** The transaction limits for `objects` objects of `bytes` bytes (max_txn_objects, max_txn_bytes). */
  checkTransactionSize(objects: number, bytes: number): void {
    this.d.limits.checkTransaction(objects, bytes);
  }

  /** A share of the node's transaction memory budget (max_txn_memory_bytes). */
  reserveTxnMemory(bytes: number, what: string): Reservation {
    return this.d.limits.reserveTxnMemory(bytes, what);
  }

  /**
   * Admission of one more voted transaction (max_prepared_txns). With `retry`, a vote of that
   * transaction already voted is not one more (a retried gRPC Vote).
   */
  admitVote(retry?: { txnId: string; storage: string }): void {
    const prepared = this.d.store.preparedTransactions();
    if (!retry || !prepared.some((p) => p.txnId === retry.txnId && p.storage === retry.storage))
      this.d.limits.checkPrepared(prepared.length);
  }

  /** Count conflicts answered to clients (zeoraft_transaction_conflicts_total). */
  countConflicts(n: number): void {
    this.d.metrics.conflicts.inc(n);
  }

  observeCommit(startedMs: number): void {
    this.d.metrics.observeCommit(Date.now() - startedMs);
  }

  async newOids(st: string, count: number, ctx: CallContext): Promise<Buffer[]> {
    const r = unwrap(await this.propose({ newOids: { storage: st, count } }, ctx));
    return r.oids ?? [];
  }

  /** A single-call commit: the TID and the storage's transaction before it. */
  async commit(
    txn: Txn,
    session: CommitSession,
    ctx: CallContext,
  ): Promise<{ tid: Buffer; previousTid: Buffer }> {
    const started = Date.now();
    const cmd: Command = { commit: { tid: Z64, txn, ...session } };
    const r = unwrap(
      await this.withTxnMemory(cmd, 'Commit', () =>
        this.proposeWithLockWait(cmd, { ...ctx, needs: needsOf(txn, false) }),
      ).then((x) => this.counted(x)),
    );
    this.observeCommit(started);
    // Answered once this node applied the commit: its history holds the transaction before it.
    return { tid: r.tid!, previousTid: await this.d.store.previousTid(txn.storage, r.tid!) };
  }

  /**
   * A gRPC vote: the replicated prepare, aborted by the leader if not finished within the
   * transaction timeout (ZEORAFT_TXN_TIMEOUT_MS). Once it resolves, finish cannot fail.
   */
  async vote(txnId: string, txn: Txn, ctx: CallContext): Promise<void> {
    this.admitVote({ txnId, storage: txn.storage });
    const deadlineMs = Date.now() + this.d.config.txnTimeoutMs;
    const cmd: Command = { prepare: { txnId, txn, deadlineMs, retryOnly: true } };
    unwrap(
      await this.withTxnMemory(cmd, 'Vote', () =>
        this.proposeWithLockWait(cmd, { ...ctx, txnId, needs: needsOf(txn, false) }),
      ).then((x) => this.counted(x)),
    );
  }

  /** Finish a voted transaction: its TID. */
  async finish(st: string, txnId: string, ctx: CallContext): Promise<Buffer> {
    const started = Date.now();
    const r = unwrap(await this.propose({ finish: { storage: st, txnId, tid: Z64 } }, ctx));
    this.observeCommit(started);
    return r.tid!;
  }

  async abort(st: string, txnId: string, ctx: CallContext): Promise<void> {
    unwrap(await this.propose({ abort: { storage: st, txnId, reason: 'client' } }, ctx));
  }

  /** Undo a transaction as a new one: its TID and the objects it changed. */
  async undo(
    st: string,
    undoTid: Buffer,
    meta: { user: string; description: string },
    ctx: CallContext,
  ): Promise<{ tid: Buffer; oids: Buffer[] }> {
    const cmd: Command = { undo: { tid: Z64, storage: st, undoTid, ...meta } };
    const r = unwrap(this.counted(await this.proposeWithLockWait(cmd, ctx)));
    return { tid: r.tid!, oids: r.oids ?? [] };
  }

  /** The TID a pack at `timeSeconds` packs at: a time after now packs as of now (as ZODB's pack). */
  packTidAt(timeSeconds: number): Buffer {
    return tidFromTime(Math.min(timeSeconds * 1000, Date.now()));
  }

  /** Pack in bounded steps (storage/pack-gc.ts), each replicated through `propose`. */
  pack(
    st: string,
    packTid: Buffer,
    gc: boolean,
    propose: (cmd: Command) => Promise<ApplyResult>,
  ): Promise<PackRunResult> {
    return this.d.pack(st, packTid, gc, propose);
  }

  // ------------------------------------------------------------------------------------------
  // Lock waiting

  /**
   * Propose a command that takes locks (a commit, a vote, an undo), waiting (up to
   * ZEORAFT_LOCK_WAIT_MS, and the call's deadline) while a voted transaction holds one of its
   * objects. Waiters of both doors share one line (lock-queue.ts): a newcomer queues behind
   * earlier waiters for the same objects, and a waiter proposes again only when the applied state
   * shows its objects free and its turn has come. A command whose objects are not known before it
   * is applied (an undo, a vote at a given TID that waits for every other vote) proposes again
   * after each applied command (or `pollMs`). The result of the last
   * proposal is returned (LOCKED when the wait ran out); a replication failure rejects.
   */
  async proposeWithLockWait(cmd: Command, w: LockWait): Promise<ApplyResult> {
    const end = Math.min(w.deadlineMs, Date.now() + this.d.config.lockWaitMs);
    const txnId = w.txnId ?? `\0commit:${++this.commitWaiters}`;
    const needs = w.needs;
    let ticket = undefined as ReturnType<LockQueue['enter']> | undefined;
    try {
      if (needs && this.lockQueue.behindOthers(needs, txnId)) {
        ticket = this.lockQueue.enter(needs, txnId);
        await ticket.wait(end);
      }
      for (;;) {
        const r = await this.propose(cmd, w);
        if (r.ok || r.error.kind !== 'LOCKED' || Date.now() >= end || w.stopped?.()) return r;
        if (!needs) {
          await this.d.applied.waitForUnlock(
            w.pollMs === undefined ? end : Math.min(end, Date.now() + w.pollMs),
          );
          continue;
        }
        ticket ??= this.lockQueue.enter(needs, txnId);
        await ticket.wait(end);
      }
    } finally {
      ticket?.leave();
    }
  }

  /** Count a conflict answered by a commit, vote or undo of the gRPC door. */
  private counted(r: ApplyResult): ApplyResult {
    if (!r.ok && r.error.kind === 'CONFLICT') this.countConflicts(1);
    return r;
  }

  /** Hold a transaction-carrying command's share of the node's memory budget while it is applied. */
  private async withTxnMemory<T>(cmd: Command, what: string, fn: () => Promise<T>): Promise<T> {
    const r = this.d.limits.reserveCommand(cmd, what);
    try {
      return await fn();
    } finally {
      r?.release();
    }
  }
}

/** The objects a transaction's command locks; `shared` for stores the server resolves. */
export function needsOf(txn: Txn, reserve: boolean): LockNeed[] {
  return [
    ...(txn.stores ?? []).map((op) =>
      lockNeed(txn.storage, op.oid, op.resolve === true && !reserve),
    ),
    ...(txn.checks ?? []).map((op) => lockNeed(txn.storage, op.oid, false)),
  ];
}

/** A state machine's answer: its value, or its StorageError thrown. */
function unwrap(r: ApplyResult): Extract<ApplyResult, { ok: true }> {
  if (!r.ok) throw r.error;
  return r;
}
