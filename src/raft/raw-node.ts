import { assert } from '../util/assert';
import { RaftConfig, validateConfig } from './config';
import { MAX_COMMITTED_BYTES_PER_READY, Raft, RaftStatus } from './raft';
import {
  ConfChange,
  ConfState,
  HardState,
  Message,
  NodeId,
  Ready,
  SoftState,
  hardStateEqual,
} from './types';

export type { RaftConfig } from './config';
export type { RaftStatus, ProgressStatus } from './raft';

export type BasicStatus = Omit<RaftStatus, 'conf' | 'progress' | 'leadTransferee'>;

/**
 * The host-facing handle on one Raft node. The host loop is:
 *
 *   tick() every tick interval; step() every message received; propose()/readIndex() on demand;
 *   if (hasReady()) {
 *     rd = ready();
 *     1. send rd.messages (they may leave before rd is durable);
 *     2. apply rd.committedEntries (calling applyConfChange() for ConfChange entries); they are
 *        durable on a quorum, so this may overlap 3;
 *     3. persist rd.snapshot (if any, after installing its data), rd.hardState and rd.entries;
 *     4. send rd.messagesAfterAppend (only now: they vouch for what 3 wrote);
 *     5. advance(rd) (a candidate's own vote counts only now: its term and vote are durable).
 *   }
 *
 * Between ready() and advance() no other Ready is produced. All methods are synchronous and
 * deterministic given the config's rng.
 */
export class RawNode {
  private readonly raft: Raft;
  private prevSoft: SoftState;
  private prevHard: HardState;
  private outstanding: Ready | undefined;
  /** Messages the outstanding Ready addresses to this node, stepped in by advance(). */
  private stepsOnAdvance: Message[] = [];

  constructor(cfg: RaftConfig) {
    validateConfig(cfg);
    this.raft = new Raft(cfg);
    this.prevSoft = this.raft.softState();
    this.prevHard = this.raft.hardState();
  }

  /** Advance the logical clock by one tick. */
  tick(): void {
    this.raft.tick();
  }

  /** Handle a message from a peer. Stale or unexpected messages are ignored safely. */
  step(m: Message): void {
    if (m.to !== this.raft.id) return; // misrouted
    this.raft.step(m);
  }

  /** Append data as a new entry (leader only). Throws ProposalDroppedError. Returns its index. */
  propose(data: Uint8Array): number {
    return this.raft.propose(data);
  }

  /** Propose a membership change (leader only; one pending at a time). Returns its index. */
  proposeConfChange(cc: ConfChange): number {
    return this.raft.proposeConfChange(cc);
  }

  /**
   * Request a linearizable read point; `context` must be unique among outstanding requests
   * cluster-wide. The answer arrives as a ReadState in a later Ready (possibly never, if the
   * leader changes: retry on timeout). Throws ProposalDroppedError when no leader is known.
   */
  readIndex(context: Uint8Array): void {
    this.raft.readIndex(context);
  }

  /** Ask the leader to hand leadership to `to` (forwarded if this node is a follower). */
  transferLeadership(to: NodeId): void {
    this.raft.transferLeadership(to);
  }

  /** The transport could not reach `id`: stop pipelining to it until it answers. */
  reportUnreachable(id: NodeId): void {
    this.raft.reportUnreachable(id);
  }

  /** The host finished (ok) or abandoned (!ok) streaming a snapshot to `id`. */
  reportSnapshot(id: NodeId, ok: boolean): void {
    this.raft.reportSnapshot(id, ok);
  }

  /** Apply a committed ConfChange entry's change on this node (apply-time membership). */
  applyConfChange(cc: ConfChange): ConfState {
    return this.raft.applyConfChange(cc);
  }

  /** Whether ready() has something to hand out. Changes nothing (etcd's HasReady). */
  hasReady(): boolean {
    if (this.outstanding) return false;
    const r = this.raft;
    if (r.hasPendingBroadcast) return true; // ready() flushes the batched appends
    const soft = r.softState();
    if (soft.leader !== this.prevSoft.leader || soft.role !== this.prevSoft.role) return true;
    if (!hardStateEqual(r.hardState(), this.prevHard)) return true;
    return (
      r.log.unstable.snapshot !== undefined ||
      r.log.unstableEntries().length > 0 ||
      r.log.hasNextCommittedEnts() ||
      r.msgs.length > 0 ||
      r.msgsAfterAppend.length > 0 ||
      r.readStates.length > 0
    );
  }

  ready(): Ready {
    assert(this.outstanding === undefined, 'ready() called again before advance()');
    const r = this.raft;
    r.flush();
    const entries = r.log.unstableEntries().slice();
    const snap = r.log.unstable.snapshot;
    const soft = r.softState();
    const hard = r.hardState();
    const rd: Ready = {
      entries,
      committedEntries: r.log.nextCommittedEnts(MAX_COMMITTED_BYTES_PER_READY),
      messages: r.msgs,
      messagesAfterAppend: r.msgsAfterAppend.filter((m) => m.to !== r.id),
      readStates: r.readStates,
      mustSync: false,
    };
    if (soft.leader !== this.prevSoft.leader || soft.role !== this.prevSoft.role)
      rd.softState = soft;
    if (!hardStateEqual(hard, this.prevHard)) rd.hardState = hard;
    if (snap)
      rd.snapshot = {
        index: snap.index,
        term: snap.term,
        conf: { voters: [...snap.conf.voters], learners: [...snap.conf.learners] },
      };
    rd.mustSync =
      entries.length > 0 ||
      rd.snapshot !== undefined ||
      hard.term !== this.prevHard.term ||
      hard.vote !== this.prevHard.vote;
    this.stepsOnAdvance = r.msgsAfterAppend.filter((m) => m.to === r.id);
    r.msgs = [];
    r.msgsAfterAppend = [];
    r.readStates = [];
    this.prevSoft = soft;
    this.prevHard = hard;
    this.outstanding = rd;
    return rd;
  }

  /** The host persisted, sent and applied everything in rd. */
  advance(rd: Ready): void {
    assert(rd === this.outstanding, 'advance() with a Ready that is not the outstanding one');
    const log = this.raft.log;
    if (rd.snapshot) log.stableSnapTo(rd.snapshot.index);
    if (rd.entries.length > 0) {
      const last = rd.entries[rd.entries.length - 1];
      log.stableTo(last.index, last.term);
    }
    if (rd.committedEntries.length > 0) {
      log.appliedTo(rd.committedEntries[rd.committedEntries.length - 1].index);
    } else if (
      rd.snapshot &&
      rd.snapshot.index > log.applied &&
      rd.snapshot.index <= log.committed
    ) {
      log.appliedTo(rd.snapshot.index);
    }
    this.outstanding = undefined;
    // Answers to ourselves (a candidate's own vote) count only now that rd is durable.
    const steps = this.stepsOnAdvance;
    this.stepsOnAdvance = [];
    for (const m of steps) this.raft.step(m);
    this.raft.onPersisted();
  }

  /** Full status: role, term, leader, commit, applied, membership and (on a leader) per-peer progress. */
  status(): RaftStatus {
    return this.raft.status();
  }

  /** The cheap part of status(), without membership or progress (no allocation beyond the result). */
  basicStatus(): BasicStatus {
    const r = this.raft;
    return {
      id: r.id,
      role: r.softState().role,
      term: r.term,
      vote: r.vote,
      leader: r.lead,
      commit: r.log.committed,
      applied: r.log.applied,
      lastIndex: r.log.lastIndex(),
      firstIndex: r.log.firstIndex(),
    };
  }

  /** Term of log entry i as this node sees it (undefined if compacted or absent). For checkers. */
  termAt(i: number): number | undefined {
    return this.raft.log.term(i);
  }
}
