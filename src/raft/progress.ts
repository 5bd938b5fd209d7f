import { Inflights } from './inflights';

/**
 * probe: send one Append at a time, then wait for a reply (or heartbeat response) — used when
 *   the follower's log position is unknown.
 * replicate: pipeline Appends optimistically, bounded by inflights.
 * snapshot: a snapshot is being transferred by the host; send nothing until reportSnapshot or
 *   an AppendResp shows the follower caught up.
 */
export type ProgressState = 'probe' | 'replicate' | 'snapshot';

/**
 * The leader's view of one follower (or itself).
 * Invariant: 0 <= match < next. match = highest index known replicated (durably) on the peer.
 */
export class Progress {
  match = 0;
  state: ProgressState = 'probe';
  /** Snapshot index being sent while state === 'snapshot'. */
  pendingSnapshot = 0;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  /** In probe state: an Append was sent and we wait before sending another. */
  msgAppFlowPaused = false;
  readonly inflights: Inflights;

  constructor(
    public next: number,
    maxInflightMsgs: number,
    public isLearner: boolean,
  ) {
    this.inflights = new Inflights(maxInflightMsgs, 0);
  }

  private resetState(state: ProgressState): void {
    this.msgAppFlowPaused = false;
    this.pendingSnapshot = 0;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === 'snapshot') {
      const pending = this.pendingSnapshot;
      this.resetState('probe');
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState('probe');
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState('replicate');
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.resetState('snapshot');
    this.pendingSnapshot = snapshotIndex;
    this.next = snapshotIndex + 1;
  }

  /** Bookkeeping after sending an Append with `count` entries ending at lastIndex. */
  sentEntries(count: number, bytes: number, lastIndex: number): void {
    if (this.state === 'replicate') {
      if (count > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex, bytes);
      }
    } else if (this.state === 'probe') {
      this.msgAppFlowPaused = true;
    }
  }

  /** An AppendResp acknowledged n. Returns true if match advanced. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.msgAppFlowPaused = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /**
   * An Append at index `rejected` was refused; the follower suggests matchHint as a probe point.
   * Returns false when the rejection is stale (already superseded).
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.msgAppFlowPaused = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.msgAppFlowPaused;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }
}
