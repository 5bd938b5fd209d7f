/**
 * ClientStorage: a ZEO-style client of a ZeoRaft cluster. It behaves like a local storage — load,
 * loadBefore, history, two-phase commit — while reading mostly from its caches, which the
 * Subscribe stream keeps correct, and failing over between the cluster's nodes.
 *
 * This file is the public API. Behind it: connection-manager.ts (the nodes, failover, the stream),
 * cache-coherence.ts (the caches, the last TID, the stream's events applied to them; its comment
 * states the cache correctness rules), committer.ts (two-phase and exactly-once session commits).
 */
import * as fs from 'node:fs';
import { DiskCache } from './cache-disk';
import { CacheCoherence } from './cache-coherence';
import { Committer } from './committer';
import { ConnectionManager, backoffMs, sleep } from './connection-manager';
import {
  ClientClosedError,
  ConflictError,
  DisconnectedError,
  InvalidArgumentError,
  NotFoundError,
  ReadOnlyError,
  isTransient,
} from './errors';
import { BlobCache } from './blob-cache';
import type { InvalidationIterator, InvalidationsOptions } from './invalidation-iterator';
import { downloadResuming, uploadResuming } from './blob-transfer';
import type {
  CacheStats,
  ClientStorageOptions,
  ClientTestHooks,
  CommitSpec,
  InvalidationListener,
  TransactOptions,
  TransactResult,
} from './options';
import {
  LoadBeforeResult,
  LoadResult,
  SnapshotView,
  Transaction,
  TransactionMeta,
  ViewSource,
} from './transaction';
import { idKey } from './cache-index';
import { Z64, hex, idCompare, idNext, isId } from '../util/ids';
import type { HistoryEntry__Output } from '../generated/zeoraft/v1/HistoryEntry';

export type {
  CacheOptions,
  CacheStats,
  ClientStorageOptions,
  ClientTestHooks,
  CommitSpec,
  InvalidationEvent,
  InvalidationListener,
  TransactOptions,
  TransactResult,
} from './options';

export const DEFAULT_MEMORY_CACHE_BYTES = 32 << 20;
export const DEFAULT_DISK_CACHE_BYTES = 256 << 20;
/** OIDs fetched per NewOids call. */
export const OID_BATCH = 100;
const DEFAULT_BLOB_TIMEOUT_MS = 10 * 60_000;
/** Concurrent loads issued by prefetch. */
const PREFETCH_CONCURRENCY = 16;

function checkOid(oid: unknown): asserts oid is Buffer {
  if (!isId(oid)) throw new InvalidArgumentError('an oid must be 8 bytes');
}

export class ClientStorage implements ViewSource {
  readonly storage: string;
  private readonly hooks: ClientTestHooks;
  private readonly coherence: CacheCoherence;
  private readonly conns: ConnectionManager;
  private readonly committer: Committer;
  private readonly inflight = new Map<string, Promise<LoadResult>>();
  private oidPool: Buffer[] = [];
  private oidFetch: Promise<void> | undefined;

  private constructor(
    private readonly options: ClientStorageOptions,
    private readonly disk: DiskCache | undefined,
    private readonly blobs: BlobCache | undefined,
  ) {
    if (options.addresses.length === 0) throw new InvalidArgumentError('addresses is empty');
    this.storage = options.storage || '1';
    this.hooks = options.testHooks ?? {};
    this.coherence = new CacheCoherence(
      options.cache?.memoryBytes ?? DEFAULT_MEMORY_CACHE_BYTES,
      disk,
      options.onError,
    );
    this.conns = new ConnectionManager(options, this.coherence);
    this.committer = new Committer(
      this.conns,
      this.coherence,
      () => this.writable(),
      options.onError,
    );
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
      await client.conns.connectInitial(options.openTimeoutMs ?? client.conns.retryWindowMs);
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
    return this.coherence.last ?? Z64;
  }

  get isReadOnly(): boolean {
    return this.conns.readOnly;
  }

  /** The node currently used, if connected. */
  get connectedAddress(): string | undefined {
    return this.conns.address;
  }

  get isConnected(): boolean {
    return this.conns.isConnected;
  }

  cacheStats(): CacheStats {
    const mem = this.coherence.mem;
    return {
      memory: { bytes: mem.bytes, count: mem.count, maxBytes: mem.maxBytes },
      disk: this.disk?.stats,
    };
  }

  /** Call `listener` for every transaction committed by anyone, after the caches reflect it. */
  onInvalidate(listener: InvalidationListener): () => void {
    return this.coherence.onInvalidate(listener);
  }

  /**
   * The same events as onInvalidate's listeners get, from this call on, as a `for await` iterator
   * with a bounded buffer (`bufferEventsMax` items, default 1000). A consumer slower than the
   * stream is never silently skipped and never grows memory past the bound: an event that finds
   * the buffer full collapses it into one overflow item (`reset: true`, `overflowed` > 0, `tid`
   * the newest event folded), meaning "your view was lost up to tid: treat every object as
   * changed"; later items follow tid in order. Iteration ends when the client closes (after the
   * items already buffered; at once on a closed client) or when the loop exits (break), which
   * releases the buffer. See invalidation-iterator.ts.
   */
  invalidations(options: InvalidationsOptions = {}): InvalidationIterator {
    return this.coherence.invalidations(options);
  }

  /**
   * A linearizable point: returns once this client's caches reflect everything committed before
   * the call (the node's ReadIndex, then the stream up to it). Returns that TID.
   */
  async sync(): Promise<Buffer> {
    const r = await this.conns.invoke('Sync', () => ({ storage: this.storage }));
    if (!(await this.waitForTid(r.tid, this.conns.retryWindowMs)))
      throw new DisconnectedError(`the subscription did not reach TID ${hex(r.tid)} in time`);
    return r.tid;
  }

  /** Resolves true once lastTransaction() >= tid, false after `timeoutMs`. */
  waitForTid(tid: Buffer, timeoutMs: number): Promise<boolean> {
    return this.coherence.waitForTid(tid, timeoutMs);
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
    const m = this.coherence.mem.current(oid);
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
    const coherence = this.coherence;
    const fromDisk = await coherence.diskRead(oid, () => this.disk?.currentStart(oid));
    if (fromDisk) return { data: fromDisk.data, serial: fromDisk.start };
    const tracker = coherence.tracker.start(oid);
    try {
      const seen = coherence.seen;
      const r = await this.conns.invoke('Load', () => ({
        storage: this.storage,
        oid,
        seenTid: seen,
      }));
      await this.hooks.beforeLoadReply?.(oid);
      if (r.asOfTid.length === 8 && idCompare(r.asOfTid, seen) >= 0)
        coherence.cacheReply(oid, r.serial, undefined, r.data, tracker);
      return { data: r.data, serial: r.serial };
    } finally {
      coherence.tracker.end(tracker);
    }
  }

  /**
   * The revision with start < before <= end (MISSION §2.3), or undefined when the object had no
   * revision before `before`.
   */
  async loadBefore(oid: Buffer, before: Buffer): Promise<LoadBeforeResult | undefined> {
    checkOid(oid);
    if (!isId(before)) throw new InvalidArgumentError('before must be 8 bytes');
    const coherence = this.coherence;
    // A cached current revision is known current up to the last TID only.
    const knownUpTo = coherence.last ? idNext(coherence.last) : undefined;
    const usable = (end: Buffer | undefined): boolean =>
      !!end || (!!knownUpTo && idCompare(before, knownUpTo) <= 0);
    const m = coherence.mem.before(oid, before);
    if (m && usable(m.end)) return { data: m.data, start: m.start, end: m.end };
    const d = await coherence.diskRead(
      oid,
      () => {
        const r = this.disk?.before(oid, before);
        return r && usable(r.end) ? r.start : undefined;
      },
      () => this.disk?.before(oid, before)?.end,
    );
    if (d) return d;
    const tracker = coherence.tracker.start(oid);
    try {
      const seen = coherence.seen;
      const r = await this.conns.invoke('LoadBefore', () => ({
        storage: this.storage,
        oid,
        beforeTid: before,
        seenTid: seen,
      }));
      if (!r.found) return undefined;
      const end = r.end.length === 8 ? r.end : undefined;
      coherence.cacheReply(oid, r.start, end, r.data, tracker);
      return { data: r.data, start: r.start, end };
    } finally {
      coherence.tracker.end(tracker);
    }
  }

  /** The data of the revision written by `serial`. */
  async loadSerial(oid: Buffer, serial: Buffer): Promise<Buffer> {
    checkOid(oid);
    const m = this.coherence.mem.serial(oid, serial);
    if (m) return m.data;
    if (this.disk?.hasSerial(oid, serial)) {
      const data = await this.disk.readData(oid, serial);
      if (data) return data;
    }
    const seen = this.coherence.seen;
    const r = await this.conns.invoke('LoadSerial', () => ({
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
    const seen = this.coherence.seen;
    const r = await this.conns.invoke('History', () => ({
      storage: this.storage,
      oid,
      size,
      seenTid: seen,
    }));
    return r.entries;
  }

  /** Warm the caches with the current revisions of these objects (missing ones are skipped). */
  async prefetch(oids: Buffer[]): Promise<void> {
    const todo = oids.filter((o) => !this.coherence.mem.current(o));
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
      this.oidFetch ??= this.conns
        .invoke('NewOids', () => ({
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
  tpcVote(txn: Transaction): Promise<void> {
    return this.committer.tpcVote(txn);
  }

  /**
   * Phase two: commit a voted transaction (voting it first if needed) and return its TID, once
   * this client's caches reflect it. A successful vote guarantees the finish; if no node confirms
   * it within the retry window the outcome is unknown (CommitUnknownError).
   */
  tpcFinish(txn: Transaction): Promise<Buffer> {
    return this.committer.tpcFinish(txn);
  }

  /** Abandon a transaction, releasing any locks its vote took. */
  tpcAbort(txn: Transaction): Promise<void> {
    return this.committer.tpcAbort(txn);
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
    return this.committer.commitOnce(txn);
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
        const tid = await this.committer.commitOnce(txn);
        return { value, tid, attempts: attempt };
      } catch (e) {
        if (!isTransient(e) || attempt >= attempts || this.conns.closed) throw e;
        // A conflict names the newer serial: wait until the stream has brought it, so the next
        // view can see it.
        const actual = e instanceof ConflictError ? e.actualSerial : undefined;
        if (actual && actual.length === 8) await this.waitForTid(actual, this.conns.timeoutMs);
        await sleep(backoffMs(attempt));
      }
    }
  }

  private writable(): void {
    if (this.conns.closed) throw new ClientClosedError('the client is closed');
    if (this.conns.readOnly)
      throw new ReadOnlyError(`storage ${JSON.stringify(this.storage)} is open read-only`);
  }

  // -------------------------------------------------------------------------------------------
  // Blobs

  /**
   * Upload a blob (a Buffer, or the path of a file read in 1 MiB pieces) for a transaction to name
   * (Transaction.storeWithBlob). Across failover the upload resumes at the size that landed (the
   * id is chosen here, so even a first attempt that broke is resumed). Returns the upload's id.
   */
  async uploadBlob(source: Buffer | string): Promise<Buffer> {
    this.writable();
    const timeoutMs = this.options.blobTimeoutMs ?? DEFAULT_BLOB_TIMEOUT_MS;
    return uploadResuming(this.conns, this.storage, source, timeoutMs);
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
      await downloadResuming(
        this.conns,
        { storage: this.storage, oid, serial, seenTid: () => this.coherence.seen },
        fd,
        this.options.blobTimeoutMs ?? DEFAULT_BLOB_TIMEOUT_MS,
      );
      await fd.close();
      done = true;
      return await cache.add(oid, serial, part);
    } finally {
      if (!done) await fd.close().catch(() => undefined);
      await fs.promises.rm(part, { force: true });
    }
  }

  /** Close the connection and the persistent cache (flushing it). */
  async close(): Promise<void> {
    if (this.conns.closed) return;
    this.conns.close();
    this.coherence.close();
    await this.disk?.close();
  }
}
