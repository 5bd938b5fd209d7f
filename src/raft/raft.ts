import { assert } from '../util/assert';
import { Prng } from '../util/prng';
import { RaftConfig } from './config';
import { applyToConf, confChangeProblem, encodeConfChange } from './confchange';
import { CompactedError, ProposalDroppedError } from './errors';
import { RaftLog } from './log';
import { Progress } from './progress';
import { committedIndex, quorumSize, voteResult } from './quorum';
import { ReadOnly, ReadRequest } from './read-only';
import {
  ConfChange,
  ConfState,
  Entry,
  EntryType,
  HardState,
  Message,
  MessageType,
  NodeId,
  ReadState,
  Role,
  SnapshotMeta,
  SoftState,
  emptyMessage,
  entryBytes,
} from './types';

/** Context byte marking the Vote messages of an election started by TimeoutNow. */
const CAMPAIGN_TRANSFER = 0x54;
/** Bound on committed entry bytes handed out per Ready (at least one entry is). */
export const MAX_COMMITTED_BYTES_PER_READY = 64 * 1024 * 1024;

type Campaign = 'pre' | 'election' | 'transfer';

export interface ProgressStatus {
  match: number;
  next: number;
  state: 'probe' | 'replicate' | 'snapshot';
  recentActive: boolean;
  inflight: number;
  isLearner: boolean;
}

export interface RaftStatus {
  id: NodeId;
  role: Role;
  term: number;
  vote: NodeId;
  leader: NodeId;
  commit: number;
  applied: number;
  lastIndex: number;
  firstIndex: number;
  conf: ConfState;
  leadTransferee: NodeId;
  /** Per-peer replication progress; only on the leader. */
  progress: Record<NodeId, ProgressStatus>;
}

/**
 * The Raft state machine: pure, deterministic, driven by tick() and step(); its outputs
 * (messages, read states) accumulate in msgs/readStates and are collected by RawNode.
 */
export class Raft {
  readonly id: NodeId;
  term = 0;
  vote: NodeId = '';
  lead: NodeId = '';
  state: 'follower' | 'candidate' | 'precandidate' | 'leader' = 'follower';
  readonly log: RaftLog;

  /** Membership as of the applied index. Invariant: prs has exactly voters ∪ learners. */
  conf: ConfState = { voters: [], learners: [] };
  readonly prs = new Map<NodeId, Progress>();
  private readonly votes = new Map<NodeId, boolean>();

  msgs: Message[] = [];
  /** Messages that may leave only after the Ready they come with is durable (see Ready). */
  msgsAfterAppend: Message[] = [];
  readStates: ReadState[] = [];

  /** Ticks since the last election timeout reset (follower: since hearing from the leader). */
  electionElapsed = 0;
  private heartbeatElapsed = 0;
  /** Ticks, drawn from [electionTicks, 2*electionTicks). */
  private randomizedElectionTimeout = 0;
  leadTransferee: NodeId = '';
  /** Leader: index of the last conf change it appended (or of its first entry); no new conf
   * change may be proposed until applied >= pendingConfIndex. */
  private pendingConfIndex = 0;
  /** Leader: entries it appended that are not yet committed, as (index, payload bytes). */
  private uncommitted: { index: number; bytes: number }[] = [];
  private uncommittedBytes = 0;
  private readonly readOnly = new ReadOnly();
  /** Proposals were appended since the last broadcast (batched until flush()). */
  private needsBroadcast = false;

  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly rng: Prng;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly maxSizePerMsg: number;
  private readonly maxInflightMsgs: number;
  private readonly maxUncommittedBytes: number;
  private readonly logger: (line: string) => void;

  constructor(cfg: RaftConfig) {
    this.id = cfg.id;
    this.electionTicks = cfg.electionTicks;
    this.heartbeatTicks = cfg.heartbeatTicks;
    this.rng = cfg.rng;
    this.preVote = cfg.preVote;
    this.checkQuorum = cfg.checkQuorum;
    this.maxSizePerMsg = cfg.maxSizePerMsg;
    this.maxInflightMsgs = cfg.maxInflightMsgs;
    this.maxUncommittedBytes = cfg.maxUncommittedEntriesBytes;
    this.logger = cfg.logger ?? (() => {});
    this.log = new RaftLog(cfg.storage);
    const { hardState, conf } = cfg.storage.initialState();
    this.term = hardState.term;
    this.vote = hardState.vote;
    this.log.commitTo(Math.max(hardState.commit, this.log.committed));
    this.log.appliedTo(cfg.applied);
    this.setConf(conf);
    this.becomeFollower(this.term, '');
  }

  // ---- views -------------------------------------------------------------------------------

  softState(): SoftState {
    let role: Role = this.state;
    if (role === 'follower' && this.conf.learners.includes(this.id)) role = 'learner';
    return { leader: this.lead, role };
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  isVoter(id: NodeId): boolean {
    return this.conf.voters.includes(id);
  }

  /** Only voters of the current (applied) configuration may campaign. */
  promotable(): boolean {
    return this.isVoter(this.id);
  }

  status(): RaftStatus {
    const progress: Record<NodeId, ProgressStatus> = {};
    if (this.state === 'leader') {
      for (const [id, pr] of this.prs) {
        progress[id] = {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          recentActive: pr.recentActive,
          inflight: pr.inflights.count,
          isLearner: pr.isLearner,
        };
      }
    }
    return {
      id: this.id,
      role: this.softState().role,
      term: this.term,
      vote: this.vote,
      leader: this.lead,
      commit: this.log.committed,
      applied: this.log.applied,
      lastIndex: this.log.lastIndex(),
      firstIndex: this.log.firstIndex(),
      conf: { voters: [...this.conf.voters], learners: [...this.conf.learners] },
      leadTransferee: this.leadTransferee,
      progress,
    };
  }

  // ---- configuration -----------------------------------------------------------------------

  /** Replace the membership, keeping progress of nodes that stay. */
  private setConf(conf: ConfState): void {
    this.conf = { voters: [...conf.voters], learners: [...conf.learners] };
    const members = new Set([...conf.voters, ...conf.learners]);
    for (const id of [...this.prs.keys()]) if (!members.has(id)) this.prs.delete(id);
    for (const id of members) {
      const learner = conf.learners.includes(id);
      const pr = this.prs.get(id);
      if (pr) {
        pr.isLearner = learner;
      } else {
        const np = new Progress(this.log.lastIndex() + 1, this.maxInflightMsgs, learner);
        // A new member counts as active so check-quorum does not depose the leader at once.
        np.recentActive = true;
        if (id === this.id) np.match = this.log.lastStableIndex();
        this.prs.set(id, np);
      }
    }
  }

  /**
   * Called by the host when it applies a committed ConfChange entry: the change takes effect
   * now on this node. An invalid change (cannot happen with the leader's checks, but is
   * deterministic on every node) is ignored.
   */
  applyConfChange(cc: ConfChange): ConfState {
    const problem = confChangeProblem(this.conf, cc);
    if (problem !== undefined) {
      this.logger(`${this.id} ignoring invalid conf change ${JSON.stringify(cc)}: ${problem}`);
      return { voters: [...this.conf.voters], learners: [...this.conf.learners] };
    }
    this.setConf(applyToConf(this.conf, cc));
    if (this.state === 'leader') {
      if (!this.isVoter(this.id)) {
        // A removed leader steps down by handing off (it no longer counts in any quorum).
        // Stepping down at once could deadlock: the remaining voters may not know yet that the
        // removal committed, so they still need this node's vote — which it refuses them while
        // its log is longer than theirs.
        this.logger(`${this.id} removed from the voters: handing off leadership`);
        this.handOff();
      } else {
        if (this.leadTransferee !== '' && !this.isVoter(this.leadTransferee))
          this.abortLeaderTransfer();
        this.maybeCommit();
        this.bcastAppend();
      }
    }
    return { voters: [...this.conf.voters], learners: [...this.conf.learners] };
  }

  // ---- role transitions --------------------------------------------------------------------

  private reset(term: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = '';
    }
    this.lead = '';
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.electionTicks + this.rng.nextInt(this.electionTicks);
    this.abortLeaderTransfer();
    this.votes.clear();
    for (const [id, old] of this.prs) {
      const pr = new Progress(this.log.lastIndex() + 1, this.maxInflightMsgs, old.isLearner);
      if (id === this.id) pr.match = this.log.lastStableIndex();
      this.prs.set(id, pr);
    }
    this.pendingConfIndex = 0;
    this.uncommitted = [];
    this.uncommittedBytes = 0;
    this.readOnly.reset();
    this.needsBroadcast = false;
  }

  becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this.lead = lead;
    this.state = 'follower';
  }

  private becomePreCandidate(): void {
    assert(this.state !== 'leader', 'leader cannot become pre-candidate');
    // Pre-vote changes neither term nor vote: a partitioned node cannot inflate terms.
    this.votes.clear();
    this.lead = '';
    this.state = 'precandidate';
  }

  private becomeCandidate(): void {
    assert(this.state !== 'leader', 'leader cannot become candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.state = 'candidate';
  }

  private becomeLeader(): void {
    assert(this.state === 'candidate', 'only a candidate becomes leader');
    this.reset(this.term);
    this.lead = this.id;
    this.state = 'leader';
    const self = this.prs.get(this.id);
    if (self) {
      self.becomeReplicate();
      self.match = this.log.lastStableIndex();
      self.next = this.log.lastIndex() + 1;
      self.recentActive = true;
    }
    // An empty entry of the new term: committing it commits all earlier entries (§5.4.2) and
    // gates conf changes and ReadIndex.
    this.appendEntries([{ index: 0, term: 0, type: EntryType.Normal, data: new Uint8Array(0) }]);
    this.pendingConfIndex = this.log.lastIndex();
    this.logger(`${this.id} became leader at term ${this.term}`);
  }

  // ---- ticks -------------------------------------------------------------------------------

  tick(): void {
    if (this.state === 'leader') this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup('pre');
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTicks) {
      this.electionElapsed = 0;
      if (this.checkQuorum && !this.quorumActive()) {
        this.logger(`${this.id} stepping down: no quorum heard within an election timeout`);
        this.becomeFollower(this.term, '');
        return;
      }
      // A transfer that did not finish within an election timeout is abandoned.
      this.abortLeaderTransfer();
      if (!this.isVoter(this.id)) this.handOff(); // removed leader: try again
    }
    if (this.heartbeatElapsed >= this.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** Whether a quorum of voters was heard from since the last check; resets the marks. */
  private quorumActive(): boolean {
    let active = 0;
    for (const id of this.conf.voters) {
      const pr = this.prs.get(id);
      if (id === this.id || (pr && pr.recentActive)) active++;
    }
    for (const [id, pr] of this.prs) if (id !== this.id) pr.recentActive = false;
    return active >= quorumSize(this.conf.voters.length);
  }

  // ---- elections ---------------------------------------------------------------------------

  /** Start an election (pre-vote first when enabled), if allowed. */
  private hup(kind: Campaign): void {
    if (this.state === 'leader') return;
    if (!this.promotable()) return;
    if (this.hasUnappliedConfChanges()) {
      this.logger(`${this.id} not campaigning: committed conf changes not yet applied`);
      return;
    }
    if (kind === 'pre' && !this.preVote) kind = 'election';
    this.campaign(kind);
  }

  private hasUnappliedConfChanges(): boolean {
    if (this.log.committed <= this.log.applied) return false;
    const lo = Math.max(this.log.applied + 1, this.log.firstIndex());
    if (lo > this.log.committed) return false;
    return this.log
      .slice(lo, this.log.committed + 1, Infinity)
      .some((e) => e.type === EntryType.ConfChange);
  }

  private campaign(kind: Campaign): void {
    let voteType: MessageType;
    let term: number;
    if (kind === 'pre') {
      this.becomePreCandidate();
      voteType = MessageType.PreVote;
      term = this.term + 1; // the term we would campaign for; ours is unchanged
    } else {
      this.becomeCandidate();
      voteType = MessageType.Vote;
      term = this.term;
    }
    if (kind === 'pre') {
      // A pre-vote changes nothing durable: our own counts at once.
      this.votes.set(this.id, true);
      if (this.pollResult() === 'won') {
        this.campaign('election'); // single voter
        return;
      }
    } else {
      // Our own vote counts only once the new term and the vote for ourselves are durable: the
      // answer to ourselves travels in msgsAfterAppend and RawNode steps it back in at
      // advance(), after the host persisted the Ready (as etcd does). Counting it earlier lets a
      // node win an election whose term it then loses in a crash, and vote again in that term.
      this.send(emptyMessage(MessageType.VoteResp, this.id, this.id));
    }
    for (const id of this.conf.voters) {
      if (id === this.id) continue;
      const m = emptyMessage(voteType, this.id, id);
      m.term = term;
      m.index = this.log.lastIndex();
      m.logTerm = this.log.lastTerm();
      if (kind === 'transfer') m.context = new Uint8Array([CAMPAIGN_TRANSFER]);
      this.send(m);
    }
  }

  private pollResult(): 'won' | 'lost' | 'pending' {
    return voteResult(this.conf.voters, this.votes);
  }

  private winElection(): void {
    this.becomeLeader();
    this.bcastAppend();
  }

  // ---- message handling --------------------------------------------------------------------

  step(m: Message): void {
    if (m.term === 0) {
      // Forwarded requests carry no term.
    } else if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        const force =
          m.context !== undefined && m.context.length === 1 && m.context[0] === CAMPAIGN_TRANSFER;
        const inLease =
          this.checkQuorum && this.lead !== '' && this.electionElapsed < this.electionTicks;
        if (!force && inLease) {
          // Leader lease: we heard from a live leader recently, so ignore a disruptive candidate.
          return;
        }
      }
      if (m.type === MessageType.PreVote) {
        // Never change term for a pre-vote.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // The granted pre-vote's term is the one we will campaign for.
      } else if (
        m.type === MessageType.Append ||
        m.type === MessageType.Heartbeat ||
        m.type === MessageType.Snapshot
      ) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, '');
      }
    } else if (m.term < this.term) {
      if (m.type === MessageType.Heartbeat || m.type === MessageType.Append) {
        // A stale leader (e.g. behind a healed partition) learns our term and steps down, as
        // the Raft paper's AppendEntries reply does. etcd answers only with pre-vote or
        // check-quorum on, counting otherwise on our higher-term votes reaching the leader;
        // but a voter whose log predates the leader's membership does not know the leader
        // and never sends it a vote, so that leader, needing this voter, would wait for ever.
        this.send({ ...emptyMessage(MessageType.AppendResp, this.id, m.from) });
      } else if (m.type === MessageType.PreVote) {
        const r = emptyMessage(MessageType.PreVoteResp, this.id, m.from);
        r.term = this.term;
        r.reject = true;
        this.send(r);
      }
      return;
    }

    if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
      this.handleVote(m);
      return;
    }
    switch (this.state) {
      case 'leader':
        this.stepLeader(m);
        break;
      case 'candidate':
      case 'precandidate':
        this.stepCandidate(m);
        break;
      case 'follower':
        this.stepFollower(m);
        break;
    }
  }

  private handleVote(m: Message): void {
    const pre = m.type === MessageType.PreVote;
    const canVote =
      this.vote === m.from || (this.vote === '' && this.lead === '') || (pre && m.term > this.term);
    const resp = emptyMessage(
      pre ? MessageType.PreVoteResp : MessageType.VoteResp,
      this.id,
      m.from,
    );
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      resp.term = m.term;
      this.send(resp);
      if (!pre) {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      resp.term = this.term;
      resp.reject = true;
      this.send(resp);
    }
  }

  private stepCandidate(m: Message): void {
    const myResp = this.state === 'precandidate' ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.Append:
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        break;
      case MessageType.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        break;
      case MessageType.Snapshot:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        break;
      case myResp: {
        if (!this.isVoter(m.from)) break;
        this.votes.set(m.from, !m.reject);
        const res = this.pollResult();
        if (res === 'won') {
          if (this.state === 'precandidate') this.campaign('election');
          // A majority of others is not enough while our own term and vote are not durable: a
          // crash now would restart us in the older term, free to campaign for this term again
          // with a different log. The win comes with our own vote, at advance().
          else if (this.votes.get(this.id) === true) this.winElection();
        } else if (res === 'lost') {
          this.becomeFollower(this.term, '');
        }
        break;
      }
      default:
        break; // TimeoutNow, ReadIndex etc.: no leader to act on them
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Append:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        break;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        break;
      case MessageType.Snapshot:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        break;
      case MessageType.TimeoutNow:
        this.logger(`${this.id} received TimeoutNow from ${m.from}: campaigning`);
        this.hup('transfer');
        break;
      case MessageType.ReadIndexResp:
        this.readStates.push({ index: m.index, context: m.context ?? new Uint8Array(0) });
        break;
      default:
        break;
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.AppendResp:
        this.handleAppendResp(m);
        break;
      case MessageType.HeartbeatResp:
        this.handleHeartbeatResp(m);
        break;
      case MessageType.ReadIndex:
        if (this.prs.has(m.from)) this.handleReadIndex(m.from, m.context ?? new Uint8Array(0));
        break;
      case MessageType.TransferLeader:
        this.transferLeadership(new TextDecoder().decode(m.context ?? new Uint8Array(0)));
        break;
      default:
        break;
    }
  }

  // ---- follower side -----------------------------------------------------------------------

  private handleAppend(m: Message): void {
    const resp = emptyMessage(MessageType.AppendResp, this.id, m.from);
    if (m.index < this.log.committed) {
      resp.index = this.log.committed;
      this.send(resp);
      return;
    }
    const lastNew = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew !== undefined) {
      resp.index = lastNew;
    } else {
      // Reject with a hint: the largest index <= m.index whose term <= m.logTerm, so the
      // leader can skip a whole conflicting term per round trip.
      const [hintIndex, hintTerm] = this.log.findConflictByTerm(
        Math.min(m.index, this.log.lastIndex()),
        m.logTerm,
      );
      resp.index = m.index;
      resp.reject = true;
      resp.rejectHint = hintIndex;
      resp.logTerm = hintTerm;
    }
    this.send(resp);
  }

  private handleHeartbeat(m: Message): void {
    if (m.commit > this.log.lastIndex()) {
      // The leader believes we hold entries we do not (our disk was wiped and we rejoined
      // empty). Do not commit; the leader's next Append is rejected and it re-probes us.
      this.logger(
        `${this.id} ignoring heartbeat commit ${m.commit} beyond last index ${this.log.lastIndex()}`,
      );
    } else {
      this.log.commitTo(m.commit);
    }
    const resp = emptyMessage(MessageType.HeartbeatResp, this.id, m.from);
    resp.context = m.context;
    this.send(resp);
  }

  private handleSnapshot(m: Message): void {
    const s = m.snapshot;
    const resp = emptyMessage(MessageType.AppendResp, this.id, m.from);
    if (s && this.restore(s)) {
      this.logger(`${this.id} restored snapshot at index ${s.index} term ${s.term}`);
      resp.index = this.log.lastIndex();
    } else {
      resp.index = this.log.committed;
    }
    this.send(resp);
  }

  private restore(s: SnapshotMeta): boolean {
    if (s.index <= this.log.committed) return false;
    if (this.log.matchTerm(s.index, s.term)) {
      // We have the snapshot's last entry: just fast-forward the commit index.
      this.log.commitTo(s.index);
      return false;
    }
    this.log.restore({
      index: s.index,
      term: s.term,
      conf: { voters: [...s.conf.voters], learners: [...s.conf.learners] },
    });
    this.setConf(s.conf);
    return true;
  }

  // ---- leader side -------------------------------------------------------------------------

  private handleAppendResp(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    pr.recentActive = true;
    if (m.reject) {
      if (m.rejectHint < pr.match && m.index >= pr.match) {
        // The follower no longer has entries it acknowledged: its disk was wiped and it rejoined
        // empty. Match is only a lower bound on what it holds, so lowering it is safe (commit
        // never moves back); without this, probes at match+1 would be rejected forever.
        this.logger(
          `peer ${m.from} lost its log (has ${m.rejectHint}, had acknowledged ${pr.match}); probing from scratch`,
        );
        pr.match = m.rejectHint;
        pr.becomeProbe();
        pr.next = m.rejectHint + 1;
        this.sendAppend(m.from, true);
        return;
      }
      let nextProbe = m.rejectHint;
      if (m.logTerm > 0) nextProbe = this.log.findConflictByTerm(m.rejectHint, m.logTerm)[0];
      if (pr.maybeDecrTo(m.index, nextProbe)) {
        if (pr.state === 'replicate') pr.becomeProbe();
        this.sendAppend(m.from, true);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    if (!pr.maybeUpdate(m.index)) {
      if (wasPaused && !pr.isPaused()) this.sendAppend(m.from, false);
      return;
    }
    if (pr.state === 'probe') {
      pr.becomeReplicate();
    } else if (pr.state === 'snapshot' && pr.match + 1 >= this.log.firstIndex()) {
      // The follower caught up past the compaction point (snapshot installed): replicate.
      pr.becomeProbe();
      pr.becomeReplicate();
    } else if (pr.state === 'replicate') {
      pr.inflights.freeLE(m.index);
    }
    if (this.maybeCommit()) {
      this.bcastAppend();
    } else {
      // Pipelining: keep sending while the window has room.
      while (this.sendAppend(m.from, false)) {
        /* loop until paused or nothing left */
      }
    }
    if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
      this.sendTimeoutNow(m.from);
    }
  }

  private handleHeartbeatResp(m: Message): void {
    const pr = this.prs.get(m.from);
    if (!pr) return;
    pr.recentActive = true;
    pr.msgAppFlowPaused = false;
    if (pr.state === 'replicate' && pr.inflights.full()) {
      // The window may be full of lost messages; a heartbeat reply means the peer is alive,
      // so free one slot to keep making progress.
      pr.inflights.freeFirstOne();
    }
    // A follower in probe (unreachable for a while, perhaps restarted without its log) gets an
    // Append even when it was thought to hold everything: its answer says where it really is.
    if (pr.match < this.log.lastIndex() || pr.state === 'probe') this.sendAppend(m.from, true);
    if (m.context !== undefined && m.context.length > 0) this.ackRead(m.from, m.context);
  }

  /** Leader: commit the largest index replicated on a quorum, if from the current term. */
  private maybeCommit(): boolean {
    const mci = committedIndex(this.conf.voters, (id) => this.prs.get(id)?.match ?? 0);
    const before = this.log.committed;
    const hadCommittedInTerm = this.log.term(before) === this.term;
    if (!this.log.maybeCommit(mci, this.term)) return false;
    while (this.uncommitted.length > 0 && this.uncommitted[0].index <= this.log.committed) {
      this.uncommittedBytes -= this.uncommitted[0].bytes;
      this.uncommitted.shift();
    }
    if (!hadCommittedInTerm) {
      for (const r of this.readOnly.takeDeferred()) this.handleReadIndex(r.from, r.context);
    }
    return true;
  }

  /** Called after the host persisted entries: the leader now counts its own copy. */
  onPersisted(): void {
    if (this.state !== 'leader') return;
    const self = this.prs.get(this.id);
    if (!self) return;
    if (self.maybeUpdate(this.log.lastStableIndex()) && this.maybeCommit()) this.bcastAppend();
  }

  private send(m: Message): void {
    m.from = this.id;
    if (m.term === 0 && m.type !== MessageType.ReadIndex && m.type !== MessageType.TransferLeader) {
      m.term = this.term;
    }
    if (
      m.type === MessageType.AppendResp ||
      m.type === MessageType.VoteResp ||
      m.type === MessageType.PreVoteResp
    )
      this.msgsAfterAppend.push(m);
    else this.msgs.push(m);
  }

  private bcastAppend(): void {
    for (const id of this.prs.keys()) if (id !== this.id) this.sendAppend(id, true);
  }

  /** Send batched proposals (called by RawNode before building a Ready). */
  /** Appends wait to be sent by flush() (proposals batched into one message per follower). */
  get hasPendingBroadcast(): boolean {
    return this.needsBroadcast && this.state === 'leader';
  }

  flush(): void {
    if (!this.needsBroadcast) return;
    this.needsBroadcast = false;
    if (this.state !== 'leader') return;
    for (const id of this.prs.keys()) {
      if (id === this.id) continue;
      while (this.sendAppend(id, false)) {
        /* fill the pipeline */
      }
    }
  }

  /**
   * Send entries from pr.next (or a snapshot if they are compacted). Returns whether a
   * message was sent.
   */
  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    let ents: Entry[] | undefined;
    if (prevTerm !== undefined) {
      try {
        ents = this.log.entries(pr.next, this.maxSizePerMsg);
      } catch (e) {
        if (!(e instanceof CompactedError)) throw e;
        ents = undefined;
      }
    }
    if (prevTerm === undefined || ents === undefined) return this.sendSnapshot(to, pr);
    if (ents.length === 0 && !sendIfEmpty) return false;
    const m = emptyMessage(MessageType.Append, this.id, to);
    m.index = prevIndex;
    m.logTerm = prevTerm;
    m.entries = ents;
    m.commit = this.log.committed;
    this.send(m);
    let bytes = 0;
    for (const e of ents) bytes += entryBytes(e);
    pr.sentEntries(ents.length, bytes, ents.length > 0 ? ents[ents.length - 1].index : prevIndex);
    return true;
  }

  private sendSnapshot(to: NodeId, pr: Progress): boolean {
    if (!pr.recentActive) return false; // don't ship a snapshot to a peer that seems down
    const snap = this.log.snapshot();
    assert(snap.index > 0, 'entries compacted but no snapshot available');
    const m = emptyMessage(MessageType.Snapshot, this.id, to);
    m.snapshot = {
      index: snap.index,
      term: snap.term,
      conf: { voters: [...snap.conf.voters], learners: [...snap.conf.learners] },
    };
    this.send(m);
    pr.becomeSnapshot(snap.index);
    this.logger(`${this.id} sending snapshot ${snap.index} to ${to}`);
    return true;
  }

  private bcastHeartbeat(): void {
    const ctx = this.readOnly.lastContext();
    for (const id of this.prs.keys()) if (id !== this.id) this.sendHeartbeat(id, ctx);
  }

  private sendHeartbeat(to: NodeId, ctx: Uint8Array | undefined): void {
    const pr = this.prs.get(to);
    if (!pr) return;
    const m = emptyMessage(MessageType.Heartbeat, this.id, to);
    // Never tell a follower to commit beyond what it is known to hold.
    m.commit = Math.min(pr.match, this.log.committed);
    if (ctx !== undefined) m.context = ctx;
    this.send(m);
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send(emptyMessage(MessageType.TimeoutNow, this.id, to));
  }

  // ---- proposals ---------------------------------------------------------------------------

  /** Assign indices and append as leader; enforces the uncommitted-bytes bound. */
  private appendEntries(ents: Entry[]): void {
    let bytes = 0;
    for (const e of ents) bytes += entryBytes(e);
    if (
      this.maxUncommittedBytes > 0 &&
      this.uncommittedBytes > 0 &&
      this.uncommittedBytes + bytes > this.maxUncommittedBytes
    ) {
      throw new ProposalDroppedError(
        'uncommitted-limit',
        `${this.uncommittedBytes} uncommitted bytes + ${bytes} would exceed maxUncommittedEntriesBytes ${this.maxUncommittedBytes}`,
      );
    }
    let index = this.log.lastIndex();
    for (const e of ents) {
      e.index = ++index;
      e.term = this.term;
    }
    this.log.append(ents);
    for (const e of ents) this.uncommitted.push({ index: e.index, bytes: entryBytes(e) });
    this.uncommittedBytes += bytes;
  }

  private checkCanPropose(): void {
    if (this.state !== 'leader') {
      throw new ProposalDroppedError(
        'not-leader',
        `${this.id} is ${this.state}; leader is '${this.lead}'`,
      );
    }
    if (this.leadTransferee !== '') {
      throw new ProposalDroppedError(
        'transferring',
        `leadership is being transferred to ${this.leadTransferee}`,
      );
    }
  }

  propose(data: Uint8Array): number {
    this.checkCanPropose();
    this.appendEntries([{ index: 0, term: 0, type: EntryType.Normal, data }]);
    this.needsBroadcast = true;
    return this.log.lastIndex();
  }

  proposeConfChange(cc: ConfChange): number {
    this.checkCanPropose();
    if (this.pendingConfIndex > this.log.applied) {
      throw new ProposalDroppedError(
        'conf-change-pending',
        `a conf change (or the leader's first entry) at ${this.pendingConfIndex} is not yet applied (applied ${this.log.applied})`,
      );
    }
    const problem = confChangeProblem(this.conf, cc);
    if (problem !== undefined) throw new ProposalDroppedError('invalid-conf-change', problem);
    this.appendEntries([
      { index: 0, term: 0, type: EntryType.ConfChange, data: encodeConfChange(cc) },
    ]);
    this.pendingConfIndex = this.log.lastIndex();
    this.needsBroadcast = true;
    return this.log.lastIndex();
  }

  // ---- ReadIndex ---------------------------------------------------------------------------

  readIndex(context: Uint8Array): void {
    if (this.state === 'leader') {
      this.handleReadIndex(this.id, context);
    } else if (this.lead !== '') {
      const m = emptyMessage(MessageType.ReadIndex, this.id, this.lead);
      m.context = context;
      this.msgs.push(m); // term 0: a forwarded request
    } else {
      throw new ProposalDroppedError('not-leader', `${this.id} knows no leader to serve a read`);
    }
  }

  private handleReadIndex(from: NodeId, context: Uint8Array): void {
    if (this.conf.voters.length === 1 && this.isVoter(this.id)) {
      this.respondRead({ index: this.log.committed, from, context, acks: new Set() });
      return;
    }
    if (this.log.term(this.log.committed) !== this.term) {
      // Our commit index may lag the true one until an entry of our term commits.
      this.readOnly.defer(from, context); // if full, dropped: the client times out and retries
      return;
    }
    if (!this.readOnly.add(this.log.committed, from, context, this.id)) return; // full: dropped
    this.bcastHeartbeat();
  }

  private ackRead(from: NodeId, context: Uint8Array): void {
    // A quorum confirmed our leadership after this request (and all earlier ones) arrived.
    for (const r of this.readOnly.ack(from, context, this.conf.voters)) this.respondRead(r);
  }

  private respondRead(r: ReadRequest): void {
    if (r.from === this.id) {
      this.readStates.push({ index: r.index, context: r.context });
    } else {
      const m = emptyMessage(MessageType.ReadIndexResp, this.id, r.from);
      m.index = r.index;
      m.context = r.context;
      this.send(m);
    }
  }

  // ---- leadership transfer -----------------------------------------------------------------

  transferLeadership(target: NodeId): void {
    if (this.state !== 'leader') {
      if (this.lead !== '' && this.lead !== this.id) {
        const m = emptyMessage(MessageType.TransferLeader, this.id, this.lead);
        m.context = new TextEncoder().encode(target);
        this.msgs.push(m);
      }
      return;
    }
    if (target === this.id || !this.isVoter(target)) {
      this.logger(`${this.id} ignoring transfer to ${target}: not another voter`);
      return;
    }
    if (this.leadTransferee === target) return;
    this.abortLeaderTransfer();
    this.electionElapsed = 0; // the transfer must finish within one election timeout
    this.leadTransferee = target;
    const pr = this.prs.get(target)!;
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(target);
    else this.sendAppend(target, true);
  }

  /** Removed leader: transfer leadership to the most up-to-date remaining voter. */
  private handOff(): void {
    let best = '';
    let bestMatch = -1;
    for (const id of this.conf.voters) {
      const m = this.prs.get(id)?.match ?? 0;
      if (m > bestMatch) {
        best = id;
        bestMatch = m;
      }
    }
    if (best !== '') this.transferLeadership(best);
  }

  private abortLeaderTransfer(): void {
    this.leadTransferee = '';
  }

  // ---- host feedback -----------------------------------------------------------------------

  reportUnreachable(id: NodeId): void {
    const pr = this.prs.get(id);
    if (this.state === 'leader' && pr && pr.state === 'replicate') pr.becomeProbe();
  }

  reportSnapshot(id: NodeId, ok: boolean): void {
    const pr = this.prs.get(id);
    if (this.state !== 'leader' || !pr || pr.state !== 'snapshot') return;
    if (!ok) pr.pendingSnapshot = 0;
    // Wait for the follower's AppendResp (or a heartbeat reply) before sending more.
    pr.becomeProbe();
    pr.msgAppFlowPaused = true;
  }
}
