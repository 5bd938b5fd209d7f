import { voteResult } from './quorum';
import { NodeId } from './types';

/** Bound on read requests a leader keeps queued (each queue); beyond it reads are dropped. */
export const MAX_PENDING_READS = 4096;

/** A ReadIndex request on the leader, waiting for a quorum to confirm its leadership. */
export interface ReadRequest {
  /** Commit index when the request arrived: the read is linearizable at this index. */
  index: number;
  /** Node to answer (the leader itself, or the follower that forwarded the request). */
  from: NodeId;
  context: Uint8Array;
  /** Voters that answered a heartbeat carrying this request's context (or a later one's). */
  acks: Set<NodeId>;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The leader's ReadIndex bookkeeping (Raft thesis §6.4). Requests wait in `deferred` until the
 * leader has committed an entry of its term (before that its commit index may lag), then in
 * `pending` until a heartbeat round carrying their context is acknowledged by a quorum.
 * Invariant: pending is in arrival order with non-decreasing index; a quorum ack of a request
 * confirms every earlier one too. Contexts must be unique among outstanding requests.
 */
export class ReadOnly {
  private pending: ReadRequest[] = [];
  private deferred: { from: NodeId; context: Uint8Array }[] = [];

  reset(): void {
    this.pending = [];
    this.deferred = [];
  }

  /** Hold a request until the leader commits in its term. False if the queue is full. */
  defer(from: NodeId, context: Uint8Array): boolean {
    if (this.deferred.length >= MAX_PENDING_READS) return false;
    this.deferred.push({ from, context });
    return true;
  }

  takeDeferred(): { from: NodeId; context: Uint8Array }[] {
    const d = this.deferred;
    this.deferred = [];
    return d;
  }

  /** Start confirming a request at `index`. False if the queue is full. */
  add(index: number, from: NodeId, context: Uint8Array, self: NodeId): boolean {
    // A request already pending (the network delivered it twice) is not queued again: a copy
    // behind newer requests would let acknowledgements of heartbeats sent for the first one,
    // before those newer requests existed, confirm them (etcd's addRequest ignores it too).
    if (this.pending.some((r) => bytesEqual(r.context, context))) return true;
    if (this.pending.length >= MAX_PENDING_READS) return false;
    this.pending.push({ index, from, context, acks: new Set([self]) });
    return true;
  }

  /** Context to carry on the next heartbeat round (the newest request's), if any. */
  lastContext(): Uint8Array | undefined {
    return this.pending.length > 0 ? this.pending[this.pending.length - 1].context : undefined;
  }

  /** A heartbeat reply carrying `context` from `from`: returns the requests now confirmed. */
  ack(from: NodeId, context: Uint8Array, voters: readonly NodeId[]): ReadRequest[] {
    const at = this.pending.findIndex((r) => bytesEqual(r.context, context));
    if (at < 0) return [];
    const req = this.pending[at];
    if (voters.includes(from)) req.acks.add(from);
    const votes = new Map<NodeId, boolean>();
    for (const id of req.acks) votes.set(id, true);
    if (voteResult(voters, votes) !== 'won') return [];
    return this.pending.splice(0, at + 1);
  }
}
