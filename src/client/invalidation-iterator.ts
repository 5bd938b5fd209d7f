/**
 * The bounded `for await` iterator of invalidations (ClientStorage.invalidations()): the events
 * the invalidation listeners get, queued for a consumer that reads at its own pace.
 *
 * What a slow consumer costs, and what it is told: the queue holds at most bufferEventsMax items.
 * When an event arrives and the queue is full, every item queued and the arriving event collapse
 * into one overflow item (`reset: true`, `overflowed` = the number of events it stands for, `tid` =
 * the newest of them). So memory stays bounded, the consumer learns that its view was lost (as
 * after a reset: treat every object as changed up to tid), the items after it follow tid in order,
 * and no event disappears without an item saying so.
 */
import { InvalidArgumentError } from './errors';
import type { InvalidationEvent } from './options';

/** Items an iterator buffers, by default, before they collapse into an overflow item. */
export const DEFAULT_INVALIDATION_BUFFER_EVENTS_MAX = 1000;
/** Consumed slots at the head of the queue after which the array is compacted. */
const QUEUE_COMPACT_AFTER = 1024;

export interface InvalidationsOptions {
  /**
   * Items buffered for a consumer that has not taken them, at most (default 1000, at least 1).
   * An event that finds the buffer full collapses it into one overflow item.
   */
  bufferEventsMax?: number;
}

/** What the invalidations iterator yields. */
export interface InvalidationItem extends InvalidationEvent {
  /**
   * 0 for an event as the listeners saw it. Otherwise this item is an overflow: the consumer fell
   * bufferEventsMax items behind, and this many events were folded into this one item; `reset` is
   * true, `oids` is empty and `tid` is the newest of them. Treat every object as changed up to
   * `tid`, as after a reset; the next item follows `tid`.
   */
  overflowed: number;
}

export class InvalidationIterator implements AsyncIterableIterator<InvalidationItem> {
  readonly bufferEventsMax: number;
  /** Items not yet taken: queue[head..]. */
  private queue: InvalidationItem[] = [];
  private head = 0;
  /** next() calls waiting for an item, oldest first (only while the queue is empty). */
  private readonly takers: ((r: IteratorResult<InvalidationItem>) => void)[] = [];
  private ended = false;

  constructor(
    options: InvalidationsOptions,
    /** Called once when the consumer stops (return()): the source stops pushing. */
    private readonly onReturn: (it: InvalidationIterator) => void,
  ) {
    const max = options.bufferEventsMax ?? DEFAULT_INVALIDATION_BUFFER_EVENTS_MAX;
    if (!Number.isInteger(max) || max < 1)
      throw new InvalidArgumentError(`bufferEventsMax must be an integer >= 1, not ${max}`);
    this.bufferEventsMax = max;
  }

  /** Items waiting to be taken (at most bufferEventsMax). */
  get buffered(): number {
    return this.queue.length - this.head;
  }

  /** A new event, in order after the previous one. Ignored once ended. */
  push(ev: InvalidationEvent): void {
    if (this.ended) return;
    const item: InvalidationItem = { tid: ev.tid, oids: ev.oids, reset: ev.reset, overflowed: 0 };
    const taker = this.takers.shift();
    if (taker) {
      taker({ value: item, done: false });
      return;
    }
    if (this.buffered < this.bufferEventsMax) {
      this.queue.push(item);
      return;
    }
    let folded = 1;
    for (let i = this.head; i < this.queue.length; i++) folded += this.queue[i].overflowed || 1;
    this.queue = [{ tid: ev.tid, oids: [], reset: true, overflowed: folded }];
    this.head = 0;
  }

  /** The client closed: the items buffered are still delivered, then iteration ends. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    for (const taker of this.takers.splice(0)) taker({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<InvalidationItem>> {
    if (this.head < this.queue.length) {
      const value = this.queue[this.head++];
      if (this.head === this.queue.length) {
        this.queue = [];
        this.head = 0;
      } else if (this.head >= QUEUE_COMPACT_AFTER) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.takers.push(resolve));
  }

  /** The consumer stops (a `for await` loop exited): the buffer is released, iteration ends. */
  return(): Promise<IteratorResult<InvalidationItem>> {
    this.queue = [];
    this.head = 0;
    if (!this.ended) this.onReturn(this);
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): InvalidationIterator {
    return this;
  }
}
