/**
 * The commit feed: every transaction committed in a storage, in TID order, for the subscribers of
 * both doors (gRPC Subscribe streams, subscriptions.ts; ZEO invalidations, src/zeo/session.ts).
 * It owns what they share: the live commits of one storage with the order checked (strictly
 * increasing TIDs, each once), the retained history window that says how far back a subscriber
 * may resume (older resume points get a reset), and the count of events sent to clients
 * (zeoraft_invalidations_sent_total). Each door keeps its own bounded queue in front of its
 * connection (the stream's buffer, the ZEO outbox).
 */
import type { CommitEvent, ObjectStore } from '../storage/object-store';
import { Z64, hex, idCompare, idNext, tidFromTime } from '../util/ids';

export interface CommitFeedOptions {
  /** Resume points older than this many transactions back get a reset. */
  historyMaxTransactions: number;
  /** Resume points older than this get a reset. */
  historyMaxAgeMs: number;
  nowMs: () => number;
}

export class CommitFeed {
  constructor(
    private readonly store: Pick<ObjectStore, 'onCommit' | 'historyWindow'>,
    private readonly options: CommitFeedOptions,
    private readonly onDelivered: (n: number) => void = () => undefined,
  ) {}

  /**
   * Call `deliver` with every transaction committed in `storage` from now on, synchronously as it
   * is applied, until the returned function is called. Invariant: a follower sees strictly
   * increasing TIDs (the store commits in TID order); a violation is a bug and throws.
   */
  follow(storage: string, deliver: (ev: CommitEvent) => void): () => void {
    let last: Buffer | undefined;
    return this.store.onCommit((ev) => {
      if (ev.storage !== storage) return;
      if (last && idCompare(ev.tid, last) <= 0)
        throw new Error(`commit feed order violated: ${hex(ev.tid)} after ${hex(last)}`);
      last = ev.tid;
      deliver(ev);
    });
  }

  /** Count `n` commit events sent to clients (zeoraft_invalidations_sent_total). */
  delivered(n = 1): void {
    this.onDelivered(n);
  }

  /**
   * The oldest TID a subscriber of `storage` may resume from: the window is the newest
   * `historyMaxTransactions` transactions, cut to those younger than `historyMaxAgeMs`. Costs two
   * point reads of the store, whatever the history's length.
   */
  async oldestResumable(storage: string): Promise<Buffer> {
    const max = this.options.historyMaxTransactions;
    if (max < 1) return Z64; // no transaction counted in: nothing bounds a resume point
    const w = await this.store.historyWindow(storage, max);
    if (w.count === 0) return Z64; // nothing on record: resuming from anywhere misses nothing
    const byAge = tidFromTime(this.options.nowMs() - this.options.historyMaxAgeMs);
    // Every transaction ever committed is on record (pack keeps transaction records): when all
    // of them are inside the window, a subscriber may resume from anywhere, the all-zero TID too.
    const allByCount = w.count <= max;
    if (allByCount && idCompare(w.oldestTid, byAge) >= 0) return Z64;
    const oldest = allByCount ? w.oldestTid : idNext(w.windowOldestTid);
    return idCompare(byAge, oldest) > 0 ? byAge : oldest;
  }
}
