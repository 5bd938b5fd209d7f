/**
 * The client's cache coherence: the memory and disk caches, the last TID they are valid for, and
 * the Subscribe stream's events applied to them (invalidations, progress, resets, the client's own
 * commits), then handed to the invalidation listeners. ClientStorage reads through it;
 * connection-manager.ts feeds it the stream.
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
import { DiskCache } from './cache-disk';
import { MemoryCache } from './cache-memory';
import { LoadTracker, Tracker } from './load-tracker';
import { InvalidationIterator, type InvalidationsOptions } from './invalidation-iterator';
import type { InvalidationEvent, InvalidationListener } from './options';
import type { StreamSink } from './connection-manager';
import { Z64, hex, idCompare } from '../util/ids';
import { Waiters, systemWaitClock } from '../util/waiters';
import type { SubscribeEvent__Output } from '../generated/zeoraft/v1/SubscribeEvent';

export class CacheCoherence implements StreamSink {
  readonly mem: MemoryCache;
  readonly tracker = new LoadTracker();
  private readonly listeners = new Set<InvalidationListener>();
  /** The invalidations iterators not yet ended, each bounded (invalidation-iterator.ts). */
  private readonly iterators = new Set<InvalidationIterator>();
  /** Waits for the last TID to reach a TID (waitForTid), woken when it advances. */
  private readonly waiters = new Waiters(systemWaitClock);
  /** Every invalidation up to this TID is applied (undefined until the first open). */
  private lastTid: Buffer | undefined;
  /** The highest TID the client has seen anywhere (its own commits included). */
  private seenTid: Buffer = Z64;
  /**
   * The client's own commits answered and not yet reflected by the caches, by TID: at most one per
   * commit in flight (removed when its commit() returns).
   */
  private readonly ownCommits = new Map<string, { tid: Buffer; prev: Buffer; oids: Buffer[] }>();
  private closed = false;

  constructor(
    memoryBytes: number,
    readonly disk: DiskCache | undefined,
    private readonly onError: ((e: unknown) => void) | undefined,
  ) {
    this.mem = new MemoryCache(memoryBytes);
    this.lastTid = disk?.lastTid;
    if (this.lastTid) this.seenTid = this.lastTid;
  }

  /** Every invalidation up to this TID is applied (undefined until the first open). */
  get last(): Buffer | undefined {
    return this.lastTid;
  }

  /** The highest TID the client has seen anywhere (its own commits included). */
  get seen(): Buffer {
    return this.seenTid;
  }

  /** Note a TID the client learnt of outside the stream (its own commit's). */
  noteSeen(tid: Buffer): void {
    if (idCompare(tid, this.seenTid) > 0) this.seenTid = tid;
  }

  /** Whether every invalidation up to `tid` is applied. */
  reached(tid: Buffer): boolean {
    return !!this.lastTid && idCompare(this.lastTid, tid) >= 0;
  }

  /** A client with nothing cached starts at the node's state: nothing to invalidate before it. */
  startIfEmpty(tid: Buffer): void {
    if (!this.lastTid && this.mem.count === 0 && (this.disk?.stats.count ?? 0) === 0) {
      this.lastTid = tid;
      this.disk?.setLastTid(tid);
      if (idCompare(tid, this.seenTid) > 0) this.seenTid = tid;
    }
  }

  /** Call `listener` for every transaction committed by anyone, after the caches reflect it. */
  onInvalidate(listener: InvalidationListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A bounded iterator of the events the listeners get, from now on (see ClientStorage). */
  invalidations(options: InvalidationsOptions): InvalidationIterator {
    const it = new InvalidationIterator(options, (done) => this.iterators.delete(done));
    if (this.closed) it.end();
    else this.iterators.add(it);
    return it;
  }

  // -------------------------------------------------------------------------------------------
  // Cache reads and fills

  /**
   * Read a revision's data from the disk cache and promote it to memory, if after the read the
   * disk index still holds the same revision with the same validity.
   */
  async diskRead(
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
  cacheReply(
    oid: Buffer,
    start: Buffer,
    end: Buffer | undefined,
    data: Buffer,
    tracker: Tracker | undefined,
  ): void {
    if (!end) {
      if (!tracker || !this.lastTid) return;
      const v = tracker.verdict(start);
      if (v === 'skip') return;
      if (v !== 'current') end = v.end;
    }
    this.mem.store(oid, start, end, data);
    this.disk?.store(oid, start, end, data);
  }

  // -------------------------------------------------------------------------------------------
  // The stream: the only place the last TID advances

  onEvent(ev: SubscribeEvent__Output): void {
    if (ev.commit) this.applyCommit(ev.commit.tid, ev.commit.oids);
    else if (ev.progress) this.advance(ev.progress.tid);
    else if (ev.reset) this.applyReset(ev.reset.tid);
    this.applyOwnCommits();
  }

  /**
   * The cluster answered the client's own commit `tid`, naming the storage's transaction before
   * it (`prev`): the commit waits here until the caches reach `prev` (see applyOwnCommits).
   */
  addOwnCommit(tid: Buffer, prev: Buffer, oids: Buffer[]): void {
    this.ownCommits.set(hex(tid), { tid, prev, oids });
  }

  /** The commit returned: forget it if it is still waiting. */
  dropOwnCommit(tid: Buffer): void {
    this.ownCommits.delete(hex(tid));
  }

  /**
   * Apply the client's own answered commits that directly follow what the caches reflect (the
   * storage's transaction before one is at or before the last TID): their own OIDs are then the
   * only invalidations up to their TID. Others wait for the stream; those it brought are dropped.
   */
  applyOwnCommits(): void {
    for (let progress = true; progress && this.lastTid;) {
      progress = false;
      for (const [k, c] of this.ownCommits) {
        if (idCompare(c.tid, this.lastTid) <= 0) {
          this.ownCommits.delete(k);
        } else if (idCompare(c.prev, this.lastTid) <= 0) {
          this.ownCommits.delete(k);
          this.applyCommit(c.tid, c.oids);
          progress = true;
        }
      }
    }
  }

  private applyCommit(tid: Buffer, oids: Buffer[]): void {
    if (this.lastTid && idCompare(tid, this.lastTid) <= 0) return; // ordered and unique: never expected
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
    this.lastTid = tid;
    this.disk?.setLastTid(tid);
    if (idCompare(tid, this.seenTid) > 0) this.seenTid = tid;
    this.waiters.notify();
    this.emit({ tid, oids: [], reset: true });
  }

  private advance(tid: Buffer): void {
    if (this.lastTid && idCompare(tid, this.lastTid) <= 0) return;
    this.lastTid = tid;
    this.disk?.setLastTid(tid);
    if (idCompare(tid, this.seenTid) > 0) this.seenTid = tid;
    this.waiters.notify();
  }

  private emit(ev: InvalidationEvent): void {
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch (e) {
        this.onError?.(e);
      }
    }
    for (const it of this.iterators) it.push(ev);
  }

  // -------------------------------------------------------------------------------------------
  // Waiting for a TID

  /** Resolves true once the last TID >= tid, false after `timeoutMs` or when the client closes. */
  waitForTid(tid: Buffer, timeoutMs: number): Promise<boolean> {
    if (this.reached(tid)) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return this.waiters
      .until(
        () => this.closed || this.reached(tid),
        Date.now() + timeoutMs,
        () => new Error(`TID ${hex(tid)} not reached in ${timeoutMs} ms`),
      )
      .then(
        () => this.reached(tid),
        () => false,
      );
  }

  /** The client closed: pending waits end (false), iterators end after what they hold. */
  close(): void {
    this.closed = true;
    this.waiters.notify();
    for (const it of this.iterators) it.end();
    this.iterators.clear();
  }
}
