/**
 * The order of one ZEO connection's invalidations relative to its replies (ZEO's rule, which its
 * single-threaded server gets for free): a reply is never sent after an invalidation of a
 * transaction that the reply's data does not include. A ZEO client caches a `loadBefore` answer
 * whose end is None as current; had the invalidation of a newer transaction already been
 * processed, that stale entry would stay in its cache as current.
 *
 * A reader takes a hold before it reads and releases it right after its reply is written.
 * Invalidations of transactions applied while a hold is taken wait behind it; those applied before
 * the hold are not held (the read includes them). A tpc_finish holds everything until it knows its
 * TID, then lets earlier transactions go (they precede its reply, as in ZEO), drops its own (the
 * committer gets none) and holds later ones until its reply is written.
 *
 * Pure bookkeeping, no I/O: `send` callbacks are called in TID order, synchronously from
 * push/release/narrow.
 */
import { assert } from '../util/assert';
import { hex, idCompare } from '../util/ids';

/** A reader's or a finishing transaction's claim on the order of later invalidations. */
export interface Hold {
  /** Events pushed before the hold was taken; later ones wait while the hold exists. */
  readonly seq: number;
  /** Set by `narrow`: only events with a TID after this one keep waiting. */
  afterTid?: Buffer;
}

interface Pending {
  seq: number;
  tid: Buffer;
  send: () => void;
}

export class InvalidationOutbox {
  private pushed = 0;
  private readonly queue: Pending[] = [];
  private readonly holds = new Set<Hold>();
  private readonly drops = new Set<string>();
  private readonly waiters: { tid: Buffer; resolve: () => void }[] = [];

  /** Invalidations waiting behind a hold. */
  get queued(): number {
    return this.queue.length;
  }

  /** A committed transaction, in TID order; sent now unless a hold makes it wait. */
  push(tid: Buffer, send: () => void): void {
    const last = this.queue[this.queue.length - 1];
    assert(!last || idCompare(last.tid, tid) < 0, `invalidation ${hex(tid)} out of TID order`);
    if (this.drops.size) {
      if (this.drops.delete(hex(tid))) return;
      // A dropped TID older than this one will never arrive.
      for (const d of this.drops) if (d < hex(tid)) this.drops.delete(d);
    }
    this.queue.push({ seq: ++this.pushed, tid, send });
    this.drain();
  }

  /** Hold every invalidation pushed from now on until `release` (or `narrow`). */
  hold(): Hold {
    const h: Hold = { seq: this.pushed };
    this.holds.add(h);
    return h;
  }

  release(h: Hold): void {
    this.holds.delete(h);
    this.drain();
  }

  /**
   * A finishing transaction learned its TID: never send that one, and hold only later ones.
   * Resolves once every invalidation of an earlier transaction has been sent (some may still wait
   * for readers that started before them).
   */
  narrow(h: Hold, ownTid: Buffer): Promise<void> {
    h.afterTid = ownTid;
    const i = this.queue.findIndex((e) => e.tid.equals(ownTid));
    if (i >= 0) this.queue.splice(i, 1);
    else this.drops.add(hex(ownTid)); // not pushed yet: drop it on arrival
    this.drain();
    if (!this.queue.some((e) => idCompare(e.tid, ownTid) < 0)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ tid: ownTid, resolve }));
  }

  /** The connection is gone: forget everything (waiters are released). */
  clear(): void {
    this.queue.length = 0;
    this.holds.clear();
    this.drops.clear();
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  private blocked(e: Pending): boolean {
    for (const h of this.holds)
      if (e.seq > h.seq && (h.afterTid === undefined || idCompare(e.tid, h.afterTid) > 0))
        return true;
    return false;
  }

  private drain(): void {
    while (this.queue.length && !this.blocked(this.queue[0]))
      (this.queue.shift() as Pending).send();
    if (!this.waiters.length) return;
    const oldest = this.queue[0]?.tid;
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i];
      if (!oldest || idCompare(oldest, w.tid) > 0) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }
}
