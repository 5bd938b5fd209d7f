/**
 * ClientStorage: a ZEO-style client of a ZeoRaft cluster. It behaves like a local storage — load,
 * loadBefore, history, two-phase commit — while reading mostly from its caches, which the
 * Subscribe stream keeps correct, and failing over between the cluster's nodes.
 *
 * Cache correctness, in one place (MISSION §2.4-2.6, §3):
 * - The client's last TID L means: every invalidation with TID <= L has been applied to both
 *   caches. It advances only in the stream's handler, after the invalidations of the event
 *   (commit: its OIDs; progress: none pending; reset: the caches were dropped), and for the
 *   client's own commit T when the node's answer names the storage's transaction before T and L
 *   is at or past it (then T's own OIDs are all there is to invalidate up to T; its event, when it
 *   comes, is behind L and skipped).
 * - The stream handler is synchronous, and so are the cache decisions; the only awaits are for
 *   network replies and disk reads, and every decision taken after one re-checks what it relies on.
 * - A cached current revision is current as of L. A load reply is placed on the timeline with
 *   the invalidations processed while it was in flight (see load-tracker.ts).
 * - Requests carry seen_tid (the highest TID the client has seen), so a node behind the client
 *   waits or times out; on reconnect Open and Subscribe carry L, and the stream resumes after L
 *   (or the node says Reset and both caches are dropped).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { DiskCache, DiskCacheStats } from './cache-disk';
import { MemoryCache } from './cache-memory';
import {
  ClientClosedError,
  CommitUnknownError,
  ConflictError,
  DisconnectedError,
  InvalidArgumentError,
  LockedError,
  NotFoundError,
  ReadOnlyError,
  SessionExpiredError,
  ZeoRaftError,
  isTransient,
} from './errors';
import { LoadTracker, Tracker } from './load-tracker';
import { BlobCache } from './blob-cache';
import { downloadOnce, uploadOnce } from './blob-transfer';
import { StorageRpc, type ReqOf, type ResOf, type UnaryMethod } from './rpc';
import { Subscription } from './subscription';
import {
  LoadBeforeResult,
  LoadResult,
  SnapshotView,
  StoreSpec,
  Transaction,
  TransactionMeta,
  ViewSource,
} from './transaction';
import { idKey } from './cache-index';
import { Z64, hex, idCompare, idNext, isId } from '../util/ids';
import type { SubscribeEvent__Output } from '../generated/zeoraft/v1/SubscribeEvent';
import type { HistoryEntry__Output } from '../generated/zeoraft/v1/HistoryEntry';
import type { StorageInfo__Output } from '../generated/zeoraft/v1/StorageInfo';

export const DEFAULT_MEMORY_CACHE_BYTES = 32 << 20;
export const DEFAULT_DISK_CACHE_BYTES = 256 << 20;
/** OIDs fetched per NewOids call. */
export const OID_BATCH = 100;
const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_PROGRESS_INTERVAL_MS = 200;
const DEFAULT_BLOB_TIMEOUT_MS = 10 * 60_000;
const BACKOFF_BASE_MS = 25;
const BACKOFF_MAX_MS = 1000;
/**
 * Idle commit sessions kept for reuse. A session carries one commit at a time, so a client uses
 * as many as it has commits in flight; beyond this many idle ones the rest are dropped (the
 * cluster forgets them in time).
 */
const SESSION_POOL_MAX = 256;
/** Concurrent loads issued by prefetch. */
const PREFETCH_CONCURRENCY = 16;
/** How long a node may report no leader before the client moves to another node. */
const LEADER_LOST_GRACE_MS = 2000;
/** Consecutive "no leader" replies from one node before trying another. */
const NOT_LEADER_ROTATE_AFTER = 3;

export interface CacheOptions {
  /** Bound of the in-memory cache, in bytes (data plus per-entry overhead). */
  memoryBytes?: number;
  /** Directory of the persistent cache (LevelDB); no persistent cache when absent. */
  diskDir?: string;
  /** Bound of the persistent cache, in bytes (data plus per-entry overhead). */
  diskBytes?: number;
}

/** Hooks for tests only: they let a test stage races deterministically. Never use in production. */
export interface ClientTestHooks {
  /** Awaited after a Load reply arrives and before the client decides how to cache it. */
  beforeLoadReply?: (oid: Buffer) => Promise<void>;
  /** Called before every unary RPC attempt. */
  onRpc?: (method: string, address: string) => void;
  /** Awaited before each stream event is handled (events stay in order): holds the stream back. */
  beforeStreamEvent?: (ev: SubscribeEvent__Output) => Promise<void>;
}

export interface ClientStorageOptions {
  /** host:port of the cluster's nodes, tried in order (any node serves any request). */
  addresses: string[];
  /** The storage name; ZEO's default is '1'. */
  storage?: string;
  cache?: CacheOptions;
  /** Refuse writes locally and open read-only sessions. */
  readOnly?: boolean;
  /** Accept a read-only storage or node, working read-only, when no writable one answers. */
  readOnlyFallback?: boolean;
  credentials?: {
    /** Security key, sent as metadata `x-zeoraft-key`. */
    key?: string;
    /** TLS credentials (default: insecure). */
    channel?: grpc.ChannelCredentials;
  };
  /** Per-RPC-attempt deadline in milliseconds (default 10 s). */
  timeoutMs?: number;
  /** How long one operation keeps retrying across failover (default 3 × timeoutMs). */
  retryWindowMs?: number;
  /** How long open() looks for a usable node (default retryWindowMs). */
  openTimeoutMs?: number;
  /** How often an idle node sends a progress event (default 200 ms). */
  progressIntervalMs?: number;
  clientName?: string;
  /**
   * The blob cache (blob-cache.ts): a directory of downloaded blobs, bounded in bytes (default
   * 1 GiB). loadBlob needs it.
   */
  blobCache?: { dir: string; bytes?: number };
  /** Deadline of one blob upload or download stream attempt, in milliseconds (default 10 min). */
  blobTimeoutMs?: number;
  /** Background failures (disk cache, listener exceptions). */
  onError?: (e: unknown) => void;
  testHooks?: ClientTestHooks;
}

export interface InvalidationEvent {
  /** The transaction (or, for a reset, the TID the client resumed from). */
  tid: Buffer;
  /** The objects it changed; empty for a reset. */
  oids: Buffer[];
  /** True when the client dropped its caches: treat every object as changed. */
  reset: boolean;
}
export type InvalidationListener = (ev: InvalidationEvent) => void;

export interface CommitSpec extends TransactionMeta {
  stores?: { oid: Buffer; serial?: Buffer; data: Buffer; refs?: Buffer[] }[];
  checks?: { oid: Buffer; serial: Buffer }[];
  deletes?: { oid: Buffer; serial: Buffer }[];
}

export interface TransactOptions {
  /** Attempts in all, the first included (default 10). */
  attempts?: number;
  meta?: TransactionMeta;
}

export interface TransactResult<T> {
  value: T;
  /** The commit's TID; undefined when the transaction wrote nothing. */
  tid: Buffer | undefined;
  attempts: number;
}

export interface CacheStats {
  memory: { bytes: number; count: number; maxBytes: number };
  disk?: DiskCacheStats;
}

interface Connection {
  rpc: StorageRpc;
  address: string;
  index: number;
  readOnly: boolean;
  stream?: Subscription;
  dead: boolean;
  leaderCheck?: NodeJS.Timeout;
  notLeaderStreak: number;
}

/**
 * A client session for exactly-once commits (storage.proto CommitRequest): its id, the number of
 * its last commit sent, and the newest TID the client had seen when it started.
 */
interface CommitSession {
  id: string;
  seq: number;
  since: Buffer;
}

/**
 * Whether an error is the cluster's answer to a session commit (the state machine's result,
 * recorded for the session), which settles its outcome: it was not applied.
 */
function isSessionAnswer(e: ZeoRaftError): boolean {
  return (
    e instanceof ConflictError ||
    e instanceof LockedError ||
    e instanceof NotFoundError ||
    e instanceof InvalidArgumentError
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function backoffMs(attempt: number): number {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 10));
  return cap / 2 + Math.random() * (cap / 2);
}

function checkOid(oid: unknown): asserts oid is Buffer {
  if (!isId(oid)) throw new InvalidArgumentError('an oid must be 8 bytes');
}

export class ClientStorage implements ViewSource {
  readonly storage: string;
  private readonly addresses: string[];
  private readonly timeoutMs: number;
  private readonly retryWindowMs: number;
  private readonly progressIntervalMs: number;
  private readonly hooks: ClientTestHooks;
  private readonly mem: MemoryCache;
  private readonly tracker = new LoadTracker();
  private readonly inflight = new Map<string, Promise<LoadResult>>();
  private readonly listeners = new Set<InvalidationListener>();
  private readonly waiters = new Set<{ tid: Buffer; done: (ok: boolean) => void }>();
  private readonly metadata: Record<string, string> = {};

  /** Every invalidation up to this TID is applied (undefined until the first open). */
  private last: Buffer | undefined;
  /** The highest TID the client has seen anywhere (its own commits included). */
  private seen: Buffer = Z64;
  private conn: Connection | undefined;
  private connecting: Promise<Connection> | undefined;
  private nextIndex = 0;
  private closed = false;
  private readOnlyNow: boolean;
  private oidPool: Buffer[] = [];
  private oidFetch: Promise<void> | undefined;
  /**
   * The client's own commits answered and not yet reflected by the caches, by TID: at most one per
   * commit in flight (removed when its commit() returns).
   */
  private readonly ownCommits = new Map<string, { tid: Buffer; prev: Buffer; oids: Buffer[] }>();
  /** Stream events held back by the beforeStreamEvent test hook, in order. */
  private heldEvents: Promise<void> = Promise.resolve();
  /** Idle commit sessions, the most recently used last. */
  private readonly sessionPool: CommitSession[] = [];

  private constructor(
    private readonly options: ClientStorageOptions,
    private readonly disk: DiskCache | undefined,
    private readonly blobs: BlobCache | undefined,
  ) {
    if (options.addresses.length === 0) throw new InvalidArgumentError('addresses is empty');
    this.addresses = [...options.addresses];
    this.storage = options.storage || '1';
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retryWindowMs = options.retryWindowMs ?? 3 * this.timeoutMs;
    this.progressIntervalMs = options.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS;
    this.hooks = options.testHooks ?? {};
    this.mem = new MemoryCache(options.cache?.memoryBytes ?? DEFAULT_MEMORY_CACHE_BYTES);
    this.readOnlyNow = options.readOnly === true;
    if (options.credentials?.key) this.metadata['x-zeoraft-key'] = options.credentials.key;
    this.last = disk?.lastTid;
    if (this.last) this.seen = this.last;
  }

  /**
   * Connect to the first usable node: open the storage with the cache's last TID, subscribe from
   * it, and return once the caches are verified (caught up with the stream, or dropped on reset).
   */
  static async open(options: ClientStorageOptions): Promise<ClientStorage> {
    const c = options.cache;
    const disk = c?.diskDir
      ? await DiskCache.open(
          c.diskDir,
          c.diskBytes ?? DEFAULT_DISK_CACHE_BYTES,
          options.storage || '1',
          (e) => options.onError?.(e),
        )
      : undefined;
    const blobs = options.blobCache
      ? await BlobCache.open(options.blobCache.dir, options.blobCache.bytes)
      : undefined;
    const client = new ClientStorage(options, disk, blobs);
    try {
      await client.connectInitial(options.openTimeoutMs ?? client.retryWindowMs);
    } catch (e) {
      await client.close();
      throw e;
    }
    return client;
  }

  // -------------------------------------------------------------------------------------------
  // State

  /** The TID the caches are valid for: every transaction up to it is reflected. */
  lastTransaction(): Buffer {
    return this.last ?? Z64;
  }

  get isReadOnly(): boolean {
    return this.readOnlyNow;
  }

  /** The node currently used, if connected. */
  get connectedAddress(): string | undefined {
    return this.conn?.address;
  }

  get isConnected(): boolean {
    return !!this.conn;
  }

  cacheStats(): CacheStats {
    return {
      memory: { bytes: this.mem.bytes, count: this.mem.count, maxBytes: this.mem.maxBytes },
      disk: this.disk?.stats,
    };
  }

  /** Call `listener` for every transaction committed by anyone, after the caches reflect it. */
  onInvalidate(listener: InvalidationListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * A linearizable point: returns once this client's caches reflect everything committed before
   * the call (the node's ReadIndex, then the stream up to it). Returns that TID.
   */
  async sync(): Promise<Buffer> {
    const r = await this.invoke('Sync', () => ({ storage: this.storage }));
    if (!(await this.waitForTid(r.tid, this.retryWindowMs)))
      throw new DisconnectedError(`the subscription did not reach TID ${hex(r.tid)} in time`);
    return r.tid;
  }

  /** A read-only MVCC view of the state as of lastTransaction(). */
  snapshotView(): SnapshotView {
    return new SnapshotView(this, this.lastTransaction());
  }

  // -------------------------------------------------------------------------------------------
  // Reads

  /** The current revision of an object. NotFoundError when it does not exist. */
  load(oid: Buffer): Promise<LoadResult> {
    checkOid(oid);
    const m = this.mem.current(oid);
    if (m) return Promise.resolve({ data: m.payload, serial: m.start });
    // Concurrent loads of one object share one request.
    const k = idKey(oid);
    let p = this.inflight.get(k);
    if (!p) {
      p = this.loadMiss(oid).finally(() => this.inflight.delete(k));
      this.inflight.set(k, p);
    }
    return p;
  }

  private async loadMiss(oid: Buffer): Promise<LoadResult> {
    const fromDisk = await this.diskRead(oid, () => this.disk?.currentStart(oid));
    if (fromDisk) return { data: fromDisk.data, serial: fromDisk.start };
    const tracker = this.tracker.start(oid);
    try {
      const seen = this.seen;
      const r = await this.invoke('Load', () => ({ storage: this.storage, oid, seenTid: seen }));
      await this.hooks.beforeLoadReply?.(oid);
      if (r.asOfTid.length === 8 && idCompare(r.asOfTid, seen) >= 0)
        this.cacheReply(oid, r.serial, undefined, r.data, tracker);
      return { data: r.data, serial: r.serial };
    } finally {
      this.tracker.end(tracker);
    }
  }

  /**
   * Read a revision's data from the disk cache and promote it to memory, if after the read the
   * disk index still holds the same revision with the same validity.
   */
  private async diskRead(
    oid: Buffer,
    find: () => Buffer | undefined,
    endOf: () => Buffer | undefined = () => undefined,
  ): Promise<{ data: Buffer; start: Buffer; end?: Buffer } | undefined> {
    if (!this.disk) return undefined;
    const start = find();
    if (!start) return undefined;
    const data = await this.disk.readData(oid, start);
    if (!data) return undefined;
    const again = find();
    if (!again || !again.equals(start)) return undefined;
    const end = endOf();
    this.mem.store(oid, start, end, data);
    return { data, start, end };
  }

  /** Place a server reply in both caches (see load-tracker.ts for the race it guards against). */
  private cacheReply(
    oid: Buffer,
    start: Buffer,
    end: Buffer | undefined,
    data: Buffer,
    tracker: Tracker | undefined,
  ): void {
    if (!end) {
      if (!tracker || !this.last) return;
      const v = tracker.verdict(start);
      if (v === 'skip') return;
      if (v !== 'current') end = v.end;
    }
    this.mem.store(oid, start, end, data);
    this.disk?.store(oid, start, end, data);
  }

  /**
   * The revision with start < before <= end (MISSION §2.3), or undefined when the object had no
   * revision before `before`.
   */
  async loadBefore(oid: Buffer, before: Buffer): Promise<LoadBeforeResult | undefined> {
    checkOid(oid);
    if (!isId(before)) throw new InvalidArgumentError('before must be 8 bytes');
    // A cached current revision is known current up to the last TID only.
    const knownUpTo = this.last ? idNext(this.last) : undefined;
    const usable = (end: Buffer | undefined): boolean =>
      !!end || (!!knownUpTo && idCompare(before, knownUpTo) <= 0);
    const m = this.mem.before(oid, before);
    if (m && usable(m.end)) return { data: m.data, start: m.start, end: m.end };
    const d = await this.diskRead(
      oid,
      () => {
        const r = this.disk?.before(oid, before);
        return r && usable(r.end) ? r.start : undefined;
      },
      () => this.disk?.before(oid, before)?.end,
    );
    if (d) return d;
    const tracker = this.tracker.start(oid);
    try {
      const seen = this.seen;
      const r = await this.invoke('LoadBefore', () => ({
        storage: this.storage,
        oid,
        beforeTid: before,
        seenTid: seen,
      }));
      if (!r.found) return undefined;
      const end = r.end.length === 8 ? r.end : undefined;
      this.cacheReply(oid, r.start, end, r.data, tracker);
      return { data: r.data, start: r.start, end };
    } finally {
      this.tracker.end(tracker);
    }
  }

  /** The data of the revision written by `serial`. */
  async loadSerial(oid: Buffer, serial: Buffer): Promise<Buffer> {
    checkOid(oid);
    const m = this.mem.serial(oid, serial);
    if (m) return m.data;
    if (this.disk?.hasSerial(oid, serial)) {
      const data = await this.disk.readData(oid, serial);
      if (data) return data;
    }
    const seen = this.seen;
    const r = await this.invoke('LoadSerial', () => ({
      storage: this.storage,
      oid,
      serial,
      seenTid: seen,
    }));
    return r.data;
  }

  /** Up to `size` revisions of an object, newest first. */
  async history(oid: Buffer, size = 1): Promise<HistoryEntry__Output[]> {
    checkOid(oid);
    const seen = this.seen;
    const r = await this.invoke('History', () => ({
      storage: this.storage,
      oid,
      size,
      seenTid: seen,
    }));
    return r.entries;
  }

  /** Warm the caches with the current revisions of these objects (missing ones are skipped). */
  async prefetch(oids: Buffer[]): Promise<void> {
    const todo = oids.filter((o) => !this.mem.current(o));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < todo.length) {
        const oid = todo[next++];
        await this.load(oid).catch((e: unknown) => {
          if (!(e instanceof NotFoundError)) throw e;
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(PREFETCH_CONCURRENCY, todo.length) }, worker));
  }

  // -------------------------------------------------------------------------------------------
  // Writes

  /** A new OID, unique across the cluster (fetched OID_BATCH at a time). */
  async newOid(): Promise<Buffer> {
    this.writable();
    for (;;) {
      const oid = this.oidPool.shift();
      if (oid) return oid;
      this.oidFetch ??= this.invoke('NewOids', () => ({
        storage: this.storage,
        count: OID_BATCH,
      }))
        .then((r) => {
          this.oidPool.push(...r.oids);
        })
        .finally(() => (this.oidFetch = undefined));
      await this.oidFetch;
    }
  }

  /** Start a transaction whose reads see the state as of lastTransaction(). */
  tpcBegin(meta: TransactionMeta = {}): Transaction {
    this.writable();
    return new Transaction(this.snapshotView(), meta, () => this.newOid());
  }

  /**
   * Phase one: conflict-check and lock the transaction's objects on the cluster. Retried across
   * failover with the same transaction id (the server treats a repeated vote as one).
   */
  async tpcVote(txn: Transaction): Promise<void> {
    this.writable();
    if (txn.state !== 'open')
      throw new ZeoRaftError(`transaction ${txn.id} is ${txn.state}; it cannot be voted`);
    txn.state = 'voting';
    let attempt = 0;
    try {
      await this.invoke('Vote', () => {
        attempt++;
        return {
          transactionId: txn.id,
          transaction: this.transactionMessage(txn),
        };
      }).catch((e: unknown) => {
        // A retried vote of a transaction that a lost reply already finished: it is voted.
        if (attempt > 1 && e instanceof InvalidArgumentError && /already finished/.test(e.message))
          return {};
        throw e;
      });
      txn.state = 'voted';
    } catch (e) {
      txn.state = 'failed';
      if (e instanceof DisconnectedError) {
        // The vote may have landed: release its locks rather than let them wait for the timeout.
        await this.abortQuietly(txn);
      }
      throw e;
    }
  }

  /**
   * A commit succeeded with `tid`: the transaction is finished, the client's view includes it
   * (read-your-writes), and what it stored is cached at that TID (unless an invalidation raced).
   */
  private async settleCommitted(
    txn: Transaction,
    tid: Buffer,
    trackers: { s: StoreSpec; t: Tracker }[],
  ): Promise<void> {
    txn.state = 'finished';
    txn.tid = tid;
    if (idCompare(tid, this.seen) > 0) this.seen = tid;
    this.applyOwnCommits();
    // Read-your-writes: the next view must include this transaction.
    if (await this.waitForTid(tid, this.retryWindowMs)) {
      for (const { s, t } of trackers) this.cacheReply(s.oid, tid, undefined, s.data, t);
    }
  }

  /**
   * Phase two: commit a voted transaction (voting it first if needed) and return its TID, once
   * this client's caches reflect it. A successful vote guarantees the finish; if no node confirms
   * it within the retry window the outcome is unknown (CommitUnknownError).
   */

  async tpcFinish(txn: Transaction): Promise<Buffer> {
    if (txn.state === 'open') await this.tpcVote(txn);
    if (txn.state !== 'voted')
      throw new ZeoRaftError(`transaction ${txn.id} is ${txn.state}; it cannot be finished`);
    txn.state = 'finishing';
    const trackers = txn.stores.map((s) => ({ s, t: this.tracker.start(s.oid) }));
    try {
      let tid: Buffer;
      try {
        const r = await this.invoke('Finish', () => ({
          storage: this.storage,
          transactionId: txn.id,
        }));
        tid = r.tid;
      } catch (e) {
        txn.state = 'failed';
        if (e instanceof DisconnectedError)
          throw new CommitUnknownError(
            `transaction ${txn.id} was voted but its finish was not confirmed: ${e.message}`,
            e.grpcCode,
            e.detail,
            { cause: e },
          );
        throw e;
      }
      await this.settleCommitted(txn, tid, trackers);
      return tid;
    } finally {
      for (const { t } of trackers) this.tracker.end(t);
      this.ownCommits.delete(hex(txn.tid ?? Z64));
    }
  }

  /** Abandon a transaction, releasing any locks its vote took. */
  async tpcAbort(txn: Transaction): Promise<void> {
    const wasVoted = txn.state === 'voting' || txn.state === 'voted' || txn.state === 'failed';
    if (txn.state === 'finished') throw new ZeoRaftError(`transaction ${txn.id} is finished`);
    txn.state = 'aborted';
    if (wasVoted)
      await this.invoke('Abort', () => ({ storage: this.storage, transactionId: txn.id }));
  }

  private async abortQuietly(txn: Transaction): Promise<void> {
    await this.invoke('Abort', () => ({ storage: this.storage, transactionId: txn.id })).catch(
      (e: unknown) => this.options.onError?.(e),
    );
  }

  /**
   * One-call commit: one `Commit` (one Raft entry, one round trip) in a client session, retried
   * across failover with the same session and sequence number, so it is applied exactly once (the
   * cluster answers a retry with the first attempt's result). Returns the TID once this client's
   * caches reflect the commit. When no node confirms the outcome within the retry window, it is
   * unknown (CommitUnknownError).
   */
  async commit(spec: CommitSpec): Promise<Buffer> {
    const txn = this.tpcBegin(spec);
    for (const s of spec.stores ?? []) txn.store(s.oid, s.serial, s.data, s.refs);
    for (const c of spec.checks ?? []) txn.checkCurrentSerial(c.oid, c.serial);
    for (const d of spec.deletes ?? []) txn.deleteObject(d.oid, d.serial);
    return this.commitOnce(txn);
  }

  /** The wire form of a transaction's metadata and changes (Vote and Commit carry it). */
  private transactionMessage(txn: Transaction) {
    return {
      storage: this.storage,
      user: txn.meta.user ?? '',
      description: txn.meta.description ?? '',
      extension: txn.meta.extension ?? Buffer.alloc(0),
      stores: txn.stores.map((s) => ({
        oid: s.oid,
        serial: s.serial,
        data: s.data,
        refs: s.refs ?? [],
        blobId: s.blobId ?? Buffer.alloc(0),
      })),
      checks: txn.checks,
      deletes: txn.deletes,
    };
  }

  /** Commit an open transaction with one session `Commit` (see commit()). */
  private async commitOnce(txn: Transaction): Promise<Buffer> {
    this.writable();
    if (txn.state !== 'open')
      throw new ZeoRaftError(`transaction ${txn.id} is ${txn.state}; it cannot be committed`);
    txn.state = 'finishing';
    const transaction = this.transactionMessage(txn);
    const trackers = txn.stores.map((s) => ({ s, t: this.tracker.start(s.oid) }));
    let session = this.sessionPool.pop() ?? this.newSession();
    session.seq++;
    try {
      let tid: Buffer;
      for (let fresh = false; ;) {
        // Whether an attempt may have reached the log: anything but a "not leader" refusal.
        let mayHaveApplied = false;
        try {
          const r = await this.invoke(
            'Commit',
            () => ({
              transaction,
              sessionId: session.id,
              sequence: session.seq,
              sessionSinceTid: session.since,
            }),
            (e) => (mayHaveApplied ||= e.detail?.kind !== 'NOT_LEADER'),
          );
          tid = r.tid;
          if (r.previousTid.length === 8)
            this.ownCommits.set(hex(tid), {
              tid,
              prev: r.previousTid,
              oids: [...txn.stores.map((s) => s.oid), ...txn.deletes.map((d) => d.oid)],
            });
          break;
        } catch (e) {
          // The session was forgotten (idle too long): with no earlier attempt of this commit
          // possibly applied, it is safe to send it again in a new session.
          if (e instanceof SessionExpiredError && !mayHaveApplied && !fresh) {
            session = this.newSession();
            session.seq = 1;
            fresh = true;
            continue;
          }
          txn.state = 'failed';
          // After an attempt that may have been applied, only the cluster's answer for the
          // session settles the outcome; anything else (no node in time, a limit, the session
          // forgotten) leaves it unknown.
          if (
            e instanceof SessionExpiredError ||
            (mayHaveApplied && e instanceof ZeoRaftError && !isSessionAnswer(e))
          )
            throw new CommitUnknownError(
              `transaction ${txn.id} may or may not have committed: ${e.message}`,
              e.grpcCode,
              e.detail,
              { cause: e },
            );
          throw e;
        }
      }
      await this.settleCommitted(txn, tid, trackers);
      return tid;
    } finally {
      for (const { t } of trackers) this.tracker.end(t);
      this.ownCommits.delete(hex(txn.tid ?? Z64));
      // A later commit in the session gets the next number: an attempt of this one still in
      // flight somewhere is then refused (SEQUENCE_OLD), never applied after it.
      if (this.sessionPool.length < SESSION_POOL_MAX) this.sessionPool.push(session);
    }
  }

  private newSession(): CommitSession {
    return { id: randomUUID(), seq: 0, since: this.seen };
  }

  /**
   * Run `fn` in a transaction and commit it (one session `Commit`, see commit()), retrying
   * transient failures (conflicts, locks, disconnections before the commit was sent) with
   * backoff, each time with a fresh view. `fn` may run more than once.
   */
  async transact<T>(
    fn: (txn: Transaction) => Promise<T> | T,
    options: TransactOptions = {},
  ): Promise<TransactResult<T>> {
    const attempts = options.attempts ?? 10;
    for (let attempt = 1; ; attempt++) {
      const txn = this.tpcBegin(options.meta);
      try {
        const value = await fn(txn);
        if (txn.isEmpty) return { value, tid: undefined, attempts: attempt };
        const tid = await this.commitOnce(txn);
        return { value, tid, attempts: attempt };
      } catch (e) {
        if (!isTransient(e) || attempt >= attempts || this.closed) throw e;
        // A conflict names the newer serial: wait until the stream has brought it, so the next
        // view can see it.
        const actual = e instanceof ConflictError ? e.actualSerial : undefined;
        if (actual && actual.length === 8) await this.waitForTid(actual, this.timeoutMs);
        await sleep(backoffMs(attempt));
      }
    }
  }

  private writable(): void {
    if (this.closed) throw new ClientClosedError('the client is closed');
    if (this.readOnlyNow)
      throw new ReadOnlyError(`storage ${JSON.stringify(this.storage)} is open read-only`);
  }

  // -------------------------------------------------------------------------------------------
  // Connections

  /**
   * Call `method` on the current node, retrying disconnections (on another node when this one is
   * lost) within the retry window; `onDisconnected` sees each attempt's disconnection.
   */
  private async invoke<K extends UnaryMethod>(
    method: K,
    build: () => ReqOf<K>,
    onDisconnected?: (e: DisconnectedError) => void,
  ): Promise<ResOf<K>> {
    const end = Date.now() + this.retryWindowMs;
    for (let attempt = 0; ; attempt++) {
      const conn = await this.connection(end);
      try {
        this.hooks.onRpc?.(String(method), conn.address);
        const res = await conn.rpc.call(method, build(), this.timeoutMs);
        conn.notLeaderStreak = 0;
        return res;
      } catch (e) {
        if (e instanceof ReadOnlyError && this.options.readOnlyFallback) this.readOnlyNow = true;
        if (!(e instanceof DisconnectedError) || this.closed) throw e;
        onDisconnected?.(e);
        const wait = backoffMs(attempt);
        if (Date.now() + wait >= end) throw e;
        // A node without a leader is fine for a moment (an election); a dead or stuck one is not.
        if (e.detail?.kind !== 'NOT_LEADER' || ++conn.notLeaderStreak >= NOT_LEADER_ROTATE_AFTER)
          this.connectionLost(conn, e);
        await sleep(wait);
      }
    }
  }

  /** The current connection, (re)connecting if needed, or DisconnectedError at `deadlineMs`. */
  private async connection(deadlineMs: number): Promise<Connection> {
    if (this.closed) throw new ClientClosedError('the client is closed');
    if (this.conn) return this.conn;
    const pending = this.reconnect();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new DisconnectedError('no usable node within the retry window')),
        Math.max(0, deadlineMs - Date.now()),
      );
    });
    try {
      return await Promise.race([pending, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private reconnect(): Promise<Connection> {
    if (!this.connecting) {
      const p = this.connectLoop(Infinity).finally(() => {
        if (this.connecting === p) this.connecting = undefined;
      });
      p.catch(() => undefined); // waiters have their own deadlines
      this.connecting = p;
    }
    return this.connecting;
  }

  private async connectInitial(timeoutMs: number): Promise<void> {
    const p = this.connectLoop(Date.now() + timeoutMs);
    this.connecting = p;
    try {
      await p;
    } finally {
      this.connecting = undefined;
    }
  }

  /**
   * Try every address in turn (starting after the last one that failed), with backoff between
   * rounds. A node that says the storage is read-only is passed over unless the client is
   * read-only or may fall back to read-only and no writable node answered.
   */
  private async connectLoop(deadlineMs: number): Promise<Connection> {
    let lastError: unknown;
    for (let round = 0; ; round++) {
      let sawReadOnly = false;
      let onlyPermanent = true;
      for (let pass = 0; pass < 2; pass++) {
        const acceptReadOnly = this.options.readOnly === true || pass === 1;
        if (pass === 1 && !(sawReadOnly && this.options.readOnlyFallback)) break;
        for (let i = 0; i < this.addresses.length; i++) {
          if (this.closed) throw new ClientClosedError('the client is closed');
          const index = (this.nextIndex + i) % this.addresses.length;
          try {
            const conn = await this.connectTo(index, acceptReadOnly);
            if (this.closed) {
              this.connectionLost(conn, new ClientClosedError('the client is closed'));
              throw new ClientClosedError('the client is closed');
            }
            if (conn.dead) throw new DisconnectedError(`lost ${conn.address} while connecting`);
            this.conn = conn;
            this.nextIndex = index;
            this.readOnlyNow = this.options.readOnly === true || conn.readOnly;
            return conn;
          } catch (e) {
            lastError = e;
            if (e instanceof ReadOnlyError) sawReadOnly = true;
            else if (isTransient(e) || !(e instanceof ZeoRaftError)) onlyPermanent = false;
          }
        }
      }
      // Every node refused for a reason retrying will not fix (a read-only storage, a bad key,
      // an unknown storage): say so now rather than at the deadline.
      if (onlyPermanent && deadlineMs !== Infinity) throw lastError;
      if (Date.now() >= deadlineMs) throw lastError;
      await sleep(Math.min(backoffMs(round), Math.max(0, deadlineMs - Date.now())));
    }
  }

  private async connectTo(index: number, acceptReadOnly: boolean): Promise<Connection> {
    const address = this.addresses[index];
    const rpc = new StorageRpc(address, {
      timeoutMs: this.timeoutMs,
      metadata: this.metadata,
      credentials: this.options.credentials?.channel,
    });
    const conn: Connection = {
      rpc,
      address,
      index,
      readOnly: false,
      dead: false,
      notLeaderStreak: 0,
    };
    try {
      this.hooks.onRpc?.('Open', address);
      const r = await rpc.call('Open', {
        storage: this.storage,
        readOnly: this.options.readOnly === true,
        lastTid: this.last ?? Buffer.alloc(0),
        clientName: this.options.clientName ?? `zeoraft-ts pid ${process.pid}`,
      });
      // Never accept a node behind what we have seen (the node should have waited).
      if (this.last && idCompare(r.lastTid, this.last) < 0)
        throw new DisconnectedError(
          `node ${r.nodeId} at ${address} is at TID ${hex(r.lastTid)}, behind the client's ${hex(this.last)}`,
        );
      const info = r.info as StorageInfo__Output;
      conn.readOnly = info.readOnly;
      if (conn.readOnly && !acceptReadOnly)
        throw new ReadOnlyError(
          `storage ${JSON.stringify(this.storage)} on node ${r.nodeId} (${address}) is read-only`,
        );
      // A client with nothing cached starts at the node's state: nothing to invalidate before it.
      if (!this.last && this.mem.count === 0 && (this.disk?.stats.count ?? 0) === 0) {
        this.last = r.lastTid;
        this.disk?.setLastTid(r.lastTid);
        if (idCompare(r.lastTid, this.seen) > 0) this.seen = r.lastTid;
      }
      await this.subscribe(conn, info.lastTid);
      return conn;
    } catch (e) {
      conn.dead = true;
      conn.stream?.cancel();
      rpc.close();
      throw e;
    }
  }

  /**
   * Start the stream after the last TID and resolve once the caches have caught up with the
   * storage's last TID as of Open (or were reset), so a client that opened serves no stale data.
   */
  private subscribe(conn: Connection, caughtUpAt: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(
        () => finish(new DisconnectedError(`${conn.address} did not catch up in time`)),
        this.timeoutMs,
      );
      const finish = (e?: ZeoRaftError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve();
      };
      const check = (): void => {
        if (this.last && idCompare(this.last, caughtUpAt) >= 0) finish();
      };
      this.hooks.onRpc?.('Subscribe', conn.address);
      conn.stream = new Subscription(
        conn.rpc,
        {
          storage: this.storage,
          fromTid: this.last ?? Buffer.alloc(0),
          progressIntervalMs: this.progressIntervalMs,
        },
        Math.max(3000, 10 * this.progressIntervalMs),
        {
          onEvent: (ev) => {
            const handle = (): void => {
              if (conn.dead) return;
              this.onEvent(conn, ev);
              if (ev.reset) finish();
              else check();
            };
            const hold = this.hooks.beforeStreamEvent;
            if (hold) this.heldEvents = this.heldEvents.then(() => hold(ev)).then(handle);
            else handle();
          },
          onEnd: (e) => {
            if (!settled) finish(e);
            else this.connectionLost(conn, e);
          },
        },
      );
      check();
    });
  }

  /** Drop a connection (if still current) and start looking for another node. */
  private connectionLost(conn: Connection, e: unknown): void {
    if (!conn.dead) {
      conn.dead = true;
      clearTimeout(conn.leaderCheck);
      conn.stream?.cancel();
      conn.rpc.close();
    }
    if (this.conn !== conn) return;
    this.conn = undefined;
    this.nextIndex = (conn.index + 1) % this.addresses.length;
    if (!this.closed) {
      this.options.onError?.(
        new DisconnectedError(`lost ${conn.address}: ${String((e as Error)?.message ?? e)}`),
      );
      void this.reconnect();
    }
  }

  // -------------------------------------------------------------------------------------------
  // The stream: the only place the last TID advances

  private onEvent(conn: Connection, ev: SubscribeEvent__Output): void {
    if (ev.commit) this.applyCommit(ev.commit.tid, ev.commit.oids);
    else if (ev.progress) this.advance(ev.progress.tid);
    else if (ev.reset) this.applyReset(ev.reset.tid);
    else if (ev.leaderLost) this.onLeaderLost(conn);
    this.applyOwnCommits();
  }

  /**
   * Apply the client's own answered commits that directly follow what the caches reflect (the
   * storage's transaction before one is at or before the last TID): their own OIDs are then the
   * only invalidations up to their TID. Others wait for the stream; those it brought are dropped.
   */
  private applyOwnCommits(): void {
    for (let progress = true; progress && this.last;) {
      progress = false;
      for (const [k, c] of this.ownCommits) {
        if (idCompare(c.tid, this.last) <= 0) {
          this.ownCommits.delete(k);
        } else if (idCompare(c.prev, this.last) <= 0) {
          this.ownCommits.delete(k);
          this.applyCommit(c.tid, c.oids);
          progress = true;
        }
      }
    }
  }

  private applyCommit(tid: Buffer, oids: Buffer[]): void {
    if (this.last && idCompare(tid, this.last) <= 0) return; // ordered and unique: never expected
    for (const oid of oids) {
      this.mem.invalidate(oid, tid);
      this.disk?.invalidate(oid, tid);
      this.tracker.invalidated(oid, tid);
    }
    this.advance(tid);
    this.emit({ tid, oids, reset: false });
  }

  private applyReset(tid: Buffer): void {
    this.mem.clear();
    this.disk?.clear();
    this.tracker.resetAll();
    this.last = tid;
    this.disk?.setLastTid(tid);
    if (idCompare(tid, this.seen) > 0) this.seen = tid;
    this.wakeWaiters();
    this.emit({ tid, oids: [], reset: true });
  }

  private advance(tid: Buffer): void {
    if (this.last && idCompare(tid, this.last) <= 0) return;
    this.last = tid;
    this.disk?.setLastTid(tid);
    if (idCompare(tid, this.seen) > 0) this.seen = tid;
    this.wakeWaiters();
  }

  private emit(ev: InvalidationEvent): void {
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch (e) {
        this.options.onError?.(e);
      }
    }
  }

  private onLeaderLost(conn: Connection): void {
    clearTimeout(conn.leaderCheck);
    conn.leaderCheck = setTimeout(() => {
      if (conn.dead) return;
      conn.rpc.call('Status', {}, this.timeoutMs).then(
        (s) => {
          if (!s.leaderId) this.connectionLost(conn, new DisconnectedError('node has no leader'));
        },
        (e: unknown) => this.connectionLost(conn, e),
      );
    }, LEADER_LOST_GRACE_MS);
  }

  /** Resolves true once lastTransaction() >= tid, false after `timeoutMs`. */
  waitForTid(tid: Buffer, timeoutMs: number): Promise<boolean> {
    if (this.last && idCompare(this.last, tid) >= 0) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const w = {
        tid,
        done: (ok: boolean) => {
          clearTimeout(timer);
          this.waiters.delete(w);
          resolve(ok);
        },
      };
      const timer = setTimeout(() => w.done(false), timeoutMs);
      this.waiters.add(w);
    });
  }

  private wakeWaiters(): void {
    if (!this.last) return;
    for (const w of [...this.waiters]) if (idCompare(this.last, w.tid) >= 0) w.done(true);
  }

  /** Close the connection and the persistent cache (flushing it). */
  // -------------------------------------------------------------------------------------------
  // Blobs

  /**
   * Upload a blob (a Buffer, or the path of a file read in 1 MiB pieces) for a transaction to name
   * (Transaction.storeWithBlob). Across failover the upload resumes at the size that landed (the
   * id is chosen here, so even a first attempt that broke is resumed). Returns the upload's id.
   */
  async uploadBlob(source: Buffer | string): Promise<Buffer> {
    this.writable();
    const blobId = randomBytes(16);
    const end = Date.now() + this.retryWindowMs;
    const total = Buffer.isBuffer(source) ? source.length : (await fs.promises.stat(source)).size;
    for (let attempt = 0; ; attempt++) {
      const conn = await this.connection(end);
      try {
        let offset = 0;
        if (attempt > 0)
          offset = await conn.rpc
            .call('BlobUploadStatus', { storage: this.storage, blobId }, this.timeoutMs)
            .then(
              (r) => Number(r.size),
              (e: unknown) => {
                if (e instanceof NotFoundError) return 0; // nothing landed
                throw e;
              },
            );
        const size = await uploadOnce(
          conn.rpc,
          this.storage,
          blobId,
          source,
          offset,
          Date.now() + (this.options.blobTimeoutMs ?? DEFAULT_BLOB_TIMEOUT_MS),
        );
        if (size !== total)
          throw new ZeoRaftError(`blob upload holds ${size} bytes, the source ${total}`);
        return blobId;
      } catch (e) {
        if (!(e instanceof DisconnectedError) || this.closed) throw e;
        const wait = backoffMs(attempt);
        if (Date.now() + wait >= end) throw e;
        this.connectionLost(conn, e);
        await sleep(wait);
      }
    }
  }

  /** Upload `blob` and store it with `data` as the new revision of `oid` in `txn`. */
  async storeBlob(
    txn: Transaction,
    oid: Buffer,
    serial: Buffer | undefined,
    data: Buffer,
    blob: Buffer | string,
    refs?: Buffer[],
  ): Promise<void> {
    checkOid(oid);
    const blobId = await this.uploadBlob(blob);
    txn.storeWithBlob(oid, serial, data, blobId, refs);
  }

  /**
   * The path of a read-only file holding the blob of revision `serial` of `oid`, from the blob
   * cache or downloaded into it (resumed at the bytes received across failover). NotFoundError
   * when the revision has no blob or was packed away.
   */
  async loadBlob(oid: Buffer, serial: Buffer): Promise<string> {
    checkOid(oid);
    if (!isId(serial)) throw new InvalidArgumentError('a serial must be 8 bytes');
    const cache = this.blobs;
    if (!cache) throw new InvalidArgumentError('loadBlob needs the blobCache option');
    const hit = cache.lookup(oid, serial);
    if (hit) return hit;
    const part = cache.partPath(oid, serial);
    const fd = await fs.promises.open(part, 'w');
    let done = false;
    try {
      const end = Date.now() + this.retryWindowMs;
      for (let attempt = 0; ; attempt++) {
        const conn = await this.connection(end);
        try {
          const offset = (await fd.stat()).size;
          const r = await downloadOnce(
            conn.rpc,
            { storage: this.storage, oid, serial, seenTid: this.seen },
            fd,
            offset,
            Date.now() + (this.options.blobTimeoutMs ?? DEFAULT_BLOB_TIMEOUT_MS),
          );
          if (r.size >= 0 && r.written !== r.size)
            throw new ZeoRaftError(`blob download ended at ${r.written} of ${r.size} bytes`);
          break;
        } catch (e) {
          if (!(e instanceof DisconnectedError) || this.closed) throw e;
          const wait = backoffMs(attempt);
          if (Date.now() + wait >= end) throw e;
          this.connectionLost(conn, e);
          await sleep(wait);
        }
      }
      await fd.close();
      done = true;
      return await cache.add(oid, serial, part);
    } finally {
      if (!done) await fd.close().catch(() => undefined);
      await fs.promises.rm(part, { force: true });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      conn.dead = true;
      clearTimeout(conn.leaderCheck);
      conn.stream?.cancel();
      conn.rpc.close();
    }
    for (const w of [...this.waiters]) w.done(false);
    await this.disk?.close();
  }
}
