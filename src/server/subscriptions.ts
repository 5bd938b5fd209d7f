/**
 * Subscribe streams (the gRPC door's side of the commit feed, commit-feed.ts): every transaction
 * committed in a storage after a TID, in TID order.
 *
 * Guarantees (MISSION §3): ordered and unique (a subscriber's last sent TID only grows and an
 * event is sent only for a TID above it), reliable (the live listener is registered before the
 * history read starts, so every commit is either in the history read or in the live buffer),
 * atomic (one event per transaction), resumable (from any TID inside the retained window;
 * outside it an explicit Reset), bookmarked (a Progress at TID T is sent only with nothing
 * queued, so everything up to T was sent; the first one as soon as the catch-up is sent, which
 * tells the client the stream is live). Slow subscribers are cut off at a bounded queue.
 */
import type * as grpc from '@grpc/grpc-js';
import { StorageError } from '../storage/errors';
import type { CommitEvent, ObjectStore } from '../storage/object-store';
import { Z64, hex, idCompare, idNext } from '../util/ids';
import type { SubscribeEvent } from '../generated/zeoraft/v1/SubscribeEvent';
import type { SubscribeRequest__Output } from '../generated/zeoraft/v1/SubscribeRequest';
import type { CommitFeed } from './commit-feed';
import { DomainError } from './domain-errors';
import { toServiceError } from './errors';
import { encodeSubscribeEvent } from '../proto';

/** How a stream ends early: a domain error (a limit, a revoked key, shutdown) or cancellation. */
type Failure = DomainError | Error;

export interface SubscriptionOptions {
  /** Events queued for one subscriber before it is cut off with RESOURCE_EXHAUSTED. */
  bufferMaxEvents: number;
  /** Encoded bytes queued for one subscriber before it is cut off with RESOURCE_EXHAUSTED. */
  bufferMaxBytes: number;
  nowMs: () => number;
  /** Told when a subscriber is cut off by a buffer limit (metrics and the log). */
  onLimit?: (limit: string, lastSentTid: Buffer) => void;
}

export const DEFAULT_SUBSCRIPTION_OPTIONS: Omit<SubscriptionOptions, 'nowMs'> = {
  bufferMaxEvents: 10_000,
  bufferMaxBytes: 16 << 20,
};

/** What a queued event that is not pre-encoded (progress, reset, leader lost) is counted as. */
const SMALL_EVENT_BYTES = 64;

const DEFAULT_MAX_DATA_BYTES = 1 << 20;
const DEFAULT_PROGRESS_MS = 1000;
const MIN_PROGRESS_MS = 10;

function queuedSize(out: Outgoing): number {
  return Buffer.isBuffer(out.msg) ? out.msg.length : SMALL_EVENT_BYTES;
}

type Call = grpc.ServerWritableStream<SubscribeRequest__Output, SubscribeEvent | Buffer>;

/** A message for one subscriber: commit events carry their TID (for the order check). */
interface Outgoing {
  tid?: Buffer;
  msg: SubscribeEvent | Buffer;
}

/** Encoded commit events, per store event and variant, shared by every subscriber. */
const encodedEvents = new WeakMap<object, Map<string, Buffer>>();

export class SubscriptionHub {
  private readonly subscribers = new Set<Subscriber>();

  constructor(
    private readonly store: ObjectStore,
    readonly feed: CommitFeed,
    private readonly options: SubscriptionOptions,
  ) {}

  get count(): number {
    return this.subscribers.size;
  }

  /** The oldest TID a subscriber of `storage` may resume from (the feed's window). */
  oldestResumable(storage: string): Promise<Buffer> {
    return this.feed.oldestResumable(storage);
  }

  async serve(storage: string, req: SubscribeRequest__Output, call: Call): Promise<void> {
    const sub = new Subscriber(storage, req, call, this.store, this.feed, this.options);
    this.subscribers.add(sub);
    try {
      await sub.run(this);
    } finally {
      this.subscribers.delete(sub);
    }
  }

  /** Tell every subscriber that this node lost its leader and may fall behind. */
  leaderLost(nodeId: string): void {
    for (const s of this.subscribers) s.push({ leaderLost: { nodeId } });
  }

  closeAll(e: Failure): void {
    for (const s of this.subscribers) s.fail(e);
  }

  /** End the stream of the subscriber on `call` with `e` (its key was revoked). */
  close(call: Call, e: Failure): void {
    for (const s of this.subscribers) if (s.call === call) s.fail(e);
  }
}

/** The client cancelled its stream: it ends without a status. */
class Cancelled extends Error {}

class Subscriber {
  private lastSent: Buffer = Z64;
  private readonly queue: Outgoing[] = [];
  /** Bytes of the events in `queue` (invariant: the sum of queuedSize over it). */
  private queuedBytes = 0;
  /** Live commits held back while a catch-up reads the store (undefined when streaming live). */
  private pending: CommitEvent[] | undefined = [];
  /**
   * The store's state was replaced by a snapshot: the transactions it brought never came as
   * commit events, so the stream catches up again from the last TID sent (or resets).
   */
  private resyncNeeded = false;
  private wake: (() => void) | undefined;
  /** Wakes a write waiting for 'drain' (on drain, or when the subscriber is cut off). */
  private drained: (() => void) | undefined;
  private done = false;
  private failure: Failure | undefined;
  private readonly maxDataBytes: number;
  private readonly progressMs: number;

  constructor(
    private readonly storage: string,
    private readonly req: SubscribeRequest__Output,
    readonly call: Call,
    private readonly store: ObjectStore,
    private readonly feed: CommitFeed,
    private readonly options: SubscriptionOptions,
  ) {
    this.maxDataBytes = req.maxDataBytes || DEFAULT_MAX_DATA_BYTES;
    this.progressMs = Math.max(MIN_PROGRESS_MS, req.progressIntervalMs || DEFAULT_PROGRESS_MS);
  }

  /**
   * Queue an event. A subscriber that falls too far behind (events or bytes queued) is cut off
   * with RESOURCE_EXHAUSTED, transient, naming the last TID it was sent: the client resumes from
   * there (a Reset if that is outside the history window), so nothing is missed and a frozen
   * client cannot make the node hold an unbounded backlog.
   */
  push(ev: Outgoing | SubscribeEvent): void {
    if (this.done) return;
    const out = 'msg' in ev ? ev : { msg: ev };
    const size = queuedSize(out);
    const overEvents = this.queue.length >= this.options.bufferMaxEvents;
    const overBytes =
      this.queue.length > 0 && this.queuedBytes + size > this.options.bufferMaxBytes;
    if (overEvents || overBytes) {
      const [name, max] = overEvents
        ? ['subscriber_buffer_events', this.options.bufferMaxEvents]
        : ['subscriber_buffer_bytes', this.options.bufferMaxBytes];
      this.options.onLimit?.(name, this.lastSent);
      this.fail(
        new DomainError(
          'LIMIT_EXCEEDED',
          `limit ${name} (${max}) exceeded: subscriber too slow; resume from TID ${hex(this.lastSent)}`,
          { limit: name, transient: true },
        ),
      );
      return;
    }
    this.queue.push(out);
    this.queuedBytes += size;
    this.wake?.();
  }

  fail(e: Failure): void {
    if (this.done) return;
    this.failure = e;
    this.done = true;
    this.drained?.(); // a write stuck on backpressure stops waiting
    this.wake?.();
  }

  private onReplaced = (): void => {
    if (this.done) return;
    this.resyncNeeded = true;
    this.pending ??= []; // from now on live commits wait for the catch-up
    this.wake?.();
  };

  private onCommit = (ev: CommitEvent): void => {
    if (ev.storage !== this.storage || this.done) return;
    if (!this.pending) return this.push(this.commitEvent(ev.tid, ev.records, ev));
    // Held back during a catch-up: bounded like the queue (a catch-up that cannot keep up with
    // the commits is cut off with its resume point).
    if (this.pending.length >= this.options.bufferMaxEvents) {
      this.options.onLimit?.('subscriber_buffer_events', this.lastSent);
      return this.fail(
        new DomainError(
          'LIMIT_EXCEEDED',
          `limit subscriber_buffer_events (${this.options.bufferMaxEvents}) exceeded while catching up: subscriber too slow; resume from TID ${hex(this.lastSent)}`,
          { limit: 'subscriber_buffer_events', transient: true },
        ),
      );
    }
    this.pending.push(ev);
  };

  /** A commit event for this subscriber, encoded once per event and variant for all subscribers. */
  private commitEvent(
    tid: Buffer,
    records: { oid: Buffer; data?: Buffer; deleted: boolean }[],
    shared?: object,
  ): Outgoing {
    const withData =
      this.req.includeData &&
      records.reduce((n, r) => n + (r.data?.length ?? 0), 0) <= this.maxDataBytes;
    const variant = withData ? 'data' : 'oids';
    let byVariant = shared ? encodedEvents.get(shared) : undefined;
    const cached = byVariant?.get(variant);
    if (cached) return { tid, msg: cached };
    const ev: SubscribeEvent = {
      commit: { tid, storage: this.storage, oids: records.map((r) => r.oid) },
    };
    if (withData) {
      ev.commit!.objects = records.map((r) => ({
        oid: r.oid,
        data: r.data ?? Buffer.alloc(0),
        deleted: r.deleted,
      }));
      ev.commit!.completeData = true;
    }
    const msg = encodeSubscribeEvent(ev);
    if (shared) {
      if (!byVariant) encodedEvents.set(shared, (byVariant = new Map()));
      byVariant.set(variant, msg);
    }
    return { tid, msg };
  }

  private async write(out: Outgoing): Promise<void> {
    if (out.tid) {
      // Invariant: events leave in strictly increasing TID order, each at most once.
      if (idCompare(out.tid, this.lastSent) <= 0)
        throw new Error(`subscription order violated: ${hex(out.tid)} after ${hex(this.lastSent)}`);
      this.lastSent = out.tid;
      this.feed.delivered(1);
    }
    // One 'drain' listener per blocked write, removed when it returns; close and cancel end the
    // wait through fail() (the listeners run() registered once).
    if (!this.call.write(out.msg) && !this.done)
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.call.off('drain', done);
          this.drained = undefined;
          resolve();
        };
        this.drained = done;
        this.call.on('drain', done);
      });
  }

  async run(hub: SubscriptionHub): Promise<void> {
    const unlisten = this.feed.follow(this.storage, this.onCommit);
    const unlistenReplaced = this.store.onReplaced(this.onReplaced);
    const cancel = (): void => this.fail(new Cancelled('cancelled'));
    this.call.on('cancelled', cancel);
    this.call.on('close', cancel);
    try {
      const from = this.req.fromTid;
      await this.catchUp(hub, from && from.length > 0 ? Buffer.from(from) : undefined);
      let idleSince = this.options.nowMs();
      // The first Progress goes out as soon as nothing is queued after the catch-up, not a
      // progress interval later: it tells the client the stream is live (like etcd's `created`),
      // and a client opening a stream from the present gets it in one round trip.
      let live = false;
      while (!this.done) {
        const ev = this.queue.shift();
        if (ev) this.queuedBytes -= queuedSize(ev);
        if (ev) {
          await this.write(ev);
          idleSince = this.options.nowMs();
          continue;
        }
        if (this.resyncNeeded) {
          // Everything queued before the state was replaced is sent; now the rest, from the store.
          await this.catchUp(hub, this.lastSent);
          idleSince = this.options.nowMs();
          continue;
        }
        const wait = live ? Math.max(0, idleSince + this.progressMs - this.options.nowMs()) : 0;
        if (wait === 0) {
          // Nothing queued: every commit up to the store's last TID has been written.
          await this.write({ msg: { progress: { tid: this.store.lastTid } } });
          live = true;
          idleSince = this.options.nowMs();
          continue;
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, wait);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wake = undefined;
      }
      if (this.failure && !(this.failure instanceof Cancelled))
        this.call.emit('error', toServiceError(this.failure));
      else this.call.end();
    } finally {
      unlisten();
      unlistenReplaced();
    }
  }

  /**
   * Send every transaction after `from` from the store (or a Reset when they are not all on
   * record), then the live commits held back meanwhile. Without `from`: start at the present.
   * If the store's state is replaced meanwhile, the live commits stay held back and the caller
   * catches up again from the last TID sent.
   */
  private async catchUp(hub: SubscriptionHub, from: Buffer | undefined): Promise<void> {
    this.resyncNeeded = false;
    if (!from) {
      this.lastSent = this.store.lastTid;
    } else {
      const oldest = await hub.oldestResumable(this.storage);
      const lastInStorage = this.store.storageSummary(this.storage).lastTid;
      // Resumable when every transaction after `from` is still on record.
      if (idCompare(idNext(from), oldest) < 0 && idCompare(from, lastInStorage) < 0) {
        const now = this.store.lastTid;
        await this.write({ msg: { reset: { oldestTid: oldest, tid: now } } });
        this.lastSent = now;
      } else {
        this.lastSent = Buffer.from(from);
        try {
          for await (const t of this.store.iterate(this.storage, idNext(from))) {
            if (this.done) return;
            if (idCompare(t.tid, this.lastSent) <= 0) continue;
            await this.write(
              this.commitEvent(
                t.tid,
                t.records.map((r) => ({ oid: r.oid, data: r.data, deleted: r.deleted })),
              ),
            );
          }
        } catch (e) {
          // A snapshot install began under the read: continue from lastSent once it is done.
          if (!(e instanceof StorageError && e.kind === 'UNAVAILABLE')) throw e;
          this.resyncNeeded = true;
        }
      }
    }
    if (this.resyncNeeded) return;
    const pending = this.pending ?? [];
    this.pending = undefined;
    for (const ev of pending)
      if (idCompare(ev.tid, this.lastSent) > 0) this.push(this.commitEvent(ev.tid, ev.records, ev));
  }
}
