/**
 * The node's applied-index watch: waits for "applied up to ..." on the object store. One Waiters,
 * notified on every apply, and shared with the Raft host for its own waits on applied state.
 */
import type { ObjectStore } from '../storage/object-store';
import { hex, idCompare } from '../util/ids';
import type { Waiters } from '../util/waiters';
import { deadlineExceeded } from './domain-errors';

export class AppliedIndexWatch {
  constructor(
    /** The shared waits (their clock is the one deadlines are given in: gRPC deadlines). */
    readonly waiters: Waiters,
    private readonly store: Pick<ObjectStore, 'lastTid' | 'appliedIndex'>,
    private readonly nodeId: string,
  ) {}

  /** Resolve once `cond()` holds after some apply, or reject at the deadline. */
  waitApplied(cond: () => boolean, deadlineMs: number, what: () => string): Promise<void> {
    return this.waiters.until(cond, deadlineMs, () => deadlineExceeded(what()));
  }

  /** Wait until this node has applied `tid` (MISSION §2.6: never serve a client older state than it saw). */
  waitForTid(tid: Buffer, deadlineMs: number): Promise<void> {
    return this.waitApplied(
      () => idCompare(this.store.lastTid, tid) >= 0,
      deadlineMs,
      () =>
        `node ${this.nodeId} has applied up to TID ${hex(this.store.lastTid)}, behind the client's ${hex(tid)}; try another node`,
    );
  }

  /** Wait for the next applied command (locks may have been released), at most until the deadline. */
  waitForUnlock(deadlineMs: number): Promise<void> {
    const start = this.store.appliedIndex;
    return this.waitApplied(
      () => this.store.appliedIndex > start,
      deadlineMs,
      () => 'lock wait timed out',
    ).catch(() => undefined);
  }
}
