/**
 * How a node gets commands into the replicated state. The Storage service talks only to this
 * interface: a single node applies directly (LocalReplicator), a cluster member goes through Raft.
 */
import type { ApplyResult } from '../storage/object-store';
import type { Command } from '../storage/codec';
import { tidFromTime } from '../util/ids';
import type { Caller } from './callers';

export type Role = 'leader' | 'follower' | 'candidate' | 'precandidate' | 'learner' | 'standalone';

export interface ReplicaView {
  nodeId: string;
  role: Role;
  /** '' when unknown. */
  leaderId: string;
  /** The leader's client address, '' when unknown. */
  leaderAddress: string;
  term: number;
  commitIndex: number;
  appliedIndex: number;
  /** True while the node holds no state yet (a joining member) and waits for a snapshot. */
  awaitingSnapshot?: boolean;
}

export interface Replicator {
  /**
   * Replicate `cmd` and apply it. Resolves with the state machine's result once the command is
   * committed and applied on this node. Rejects with a DomainError (NOT_LEADER, OUTCOME_UNKNOWN,
   * DEADLINE_EXCEEDED, LIMIT_EXCEEDED, ...) when the command could not be committed; the command may still commit
   * later in that case, so callers treat such failures as "outcome unknown". `caller` (default: a
   * client without a key) is whom the command is for; a leader checks forwarded commands against it.
   */
  propose(cmd: Command, deadlineMs: number, caller?: Caller): Promise<ApplyResult>;
  /** Resolves once this node has applied everything committed before the call (ReadIndex). */
  linearizableRead(deadlineMs: number): Promise<void>;
  view(): ReplicaView;
  /**
   * When this node last received a Raft message from member `nodeId` (this node's clock), if it
   * ever did: a live member answers a leader's heartbeats several times per election timeout.
   */
  heardFromMs(nodeId: string): number | undefined;
  close(): Promise<void>;
}

/**
 * Fill the proposal TID of commands that commit a transaction, and the deadline of leased votes,
 * from the leader's clock. The store
 * applies max(proposed, last + 1), so a clock going backwards never breaks TID order.
 */
export function stampCommand(cmd: Command, nowMs: number): Command {
  const tid = tidFromTime(nowMs);
  if ('commit' in cmd && cmd.commit) return { commit: { ...cmd.commit, tid } };
  if ('finish' in cmd && cmd.finish) return { finish: { ...cmd.finish, tid } };
  if ('undo' in cmd && cmd.undo) return { undo: { ...cmd.undo, tid } };
  if ('blobChunk' in cmd && cmd.blobChunk) return { blobChunk: { ...cmd.blobChunk, tid } };
  // Leases are measured on the leader's clock, the one that judges them (Node.abortExpired).
  if ('prepare' in cmd && cmd.prepare?.leaseMs)
    return { prepare: { ...cmd.prepare, deadlineMs: nowMs + cmd.prepare.leaseMs } };
  if ('renew' in cmd && cmd.renew?.leaseMs)
    return { renew: { ...cmd.renew, deadlineMs: nowMs + cmd.renew.leaseMs } };
  return cmd;
}
