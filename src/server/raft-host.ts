/**
 * The Raft host of a cluster member: the ready loop that decides what is persisted, sent and
 * applied, and in what order (etcd's raft node pattern):
 *
 *   tick() every tick; step() every message from peers; propose commands;
 *   while hasReady(): rd = ready();
 *     1. a snapshot in rd: install its data in the state machine (staged by installSnapshot)
 *     2. send rd.messages (they may leave before rd is durable: the core says so)
 *     3. apply rd.committedEntries in a sequential worker, resolving the proposals waiting on
 *        them (committed entries are durable on a quorum; this overlaps 4)
 *     4. persist rd (snapshot, entries, hard state: one write, durable when rd.mustSync)
 *     5. send rd.messagesAfterAppend (acknowledgements and votes: only once 4 is durable)
 *     6. advance(rd); compact the log when it has grown past its bound
 *
 * Everything the loop touches comes in through narrow interfaces (HostDeps): the durable log, the
 * state machine, the peer sender, the clock and timers, an event sink for metrics and logs, and
 * onFatal. `RaftReplicator` wires the real ones (LevelDB, gRPC, the system clock); the
 * deterministic simulator (test/sim/storage-sim.ts) constructs this same class with a simulated
 * disk, network and clock. Nothing here reads the wall clock, sets a timer, or touches gRPC or
 * the process (a lint rule keeps it so).
 *
 * Invariants (asserted): entries are applied in index order, each once; an entry at or below
 * the state machine's applied index is never applied again (after a restart the log is replayed
 * from the last snapshot and such entries are skipped); a proposal resolves only with the result
 * of its own entry (same index and term); a snapshot's data is installed only once the core has
 * accepted the snapshot (it is in the Ready), never before.
 *
 * By job: what the host receives (raft-host-deps.ts); the ready loop with its persistence and
 * apply ordering, compaction and snapshot install and capture (raft-host-loop.ts); proposal and
 * ReadIndex tracking (raft-host-tracking.ts); here, the requests on top of the loop: proposals
 * (local and forwarded), ReadIndex reads, membership changes, leadership transfer and shutdown.
 */
import { ConfChange, ConfChangeType, ConfState, ProposalDroppedError } from '../raft';
import { Command, commandCodec } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import type { Caller } from './callers';
import { ReplicaView, stampCommand } from './replicator';
import { HostError } from './raft-host-deps';
import { HostLoop } from './raft-host-loop';

// Split out of this module; still exported from here for the code that imports them from it.
export {
  type HostClock,
  type HostConfig,
  type HostDeps,
  HostError,
  type HostErrorKind,
  type HostEvent,
  type HostLog,
  type PeerSender,
  type StateMachine,
  alignStateMachine,
} from './raft-host-deps';
export { MAX_INFLIGHT_MSGS, MAX_SIZE_PER_MSG, MAX_UNCOMMITTED_BYTES } from './raft-host-loop';
export { ProposalTracker, ReadTracker } from './raft-host-tracking';

/** How long a request waits for a leader to appear before it is refused. */
const LEADER_WAIT_MS = 3000;
/** A ReadIndex request unanswered for this long is issued again. */
const READ_INDEX_RETRY_MS = 1000;

/** A ReadIndex round ended at the deadline of the request that started it. */
class ReadDeadlineError extends HostError {
  constructor(leaderHint: string) {
    super('not-leader', 'no read index from the leader before the deadline', leaderHint);
  }
}

function noop(): void {}

/** How long a refused proposal waits for leadership to move before it is tried again. */
const LEADER_CHANGE_WAIT_MS = 200;
/**
 * A learner is promoted only once it holds this share of the leader's log (etcd's rule): an
 * empty or far-behind voter adds to the quorum without being able to vote (a member that waits
 * for its snapshot does not vote), so one more failure could leave no quorum to elect a leader
 * that would send it that snapshot.
 */
const LEARNER_READY_FRACTION = 0.9;

export class RaftHost extends HostLoop {
  /** The ReadIndex round in flight, and the one collecting the requests that arrive meanwhile. */
  private readInFlight: Promise<number> | undefined;
  private readQueued: Promise<number> | undefined;

  private async waitForLeader(deadlineMs: number): Promise<void> {
    await this.waitFor(
      () => this.leader !== '' || this.closed,
      Math.min(deadlineMs, this.clock.nowMs() + LEADER_WAIT_MS),
      () =>
        new HostError(
          'not-leader',
          `node ${this.cfg.nodeId} has no leader; retry or try another node`,
        ),
    );
    if (this.closed) throw new HostError('not-leader', `node ${this.cfg.nodeId} is shutting down`);
  }

  private superseded(index: number): HostError {
    return new HostError(
      'outcome-unknown',
      `the command at index ${index} was overwritten here by a newer leader's entry; another node may still commit it: its outcome is unknown`,
    );
  }

  /**
   * Replicate cmd (here if leader, else forwarded) and resolve once it is applied on this node.
   * `caller` is whom it is for: a leader checks forwarded commands against it.
   */
  async propose(cmd: Command, deadlineMs: number, caller: Caller): Promise<ApplyResult> {
    for (;;) {
      await this.waitForLeader(deadlineMs);
      const leader = this.leader;
      try {
        return await this.proposeVia(leader, cmd, deadlineMs, caller);
      } catch (e) {
        // Refused before it reached the log (no leader there, leadership being transferred):
        // safe to retry once leadership settles, within the caller's deadline.
        if (
          !(e instanceof HostError && e.kind === 'not-leader') ||
          this.clock.nowMs() >= deadlineMs
        )
          throw e;
        await this.waitFor(
          () => this.leader !== leader || this.closed,
          Math.min(deadlineMs, this.clock.nowMs() + LEADER_CHANGE_WAIT_MS),
          () => new Error('leader unchanged'),
        ).catch(() => undefined);
        if (this.closed) throw e;
      }
    }
  }

  private async proposeVia(
    leader: string,
    cmd: Command,
    deadlineMs: number,
    caller: Caller,
  ): Promise<ApplyResult> {
    if (leader === this.cfg.nodeId) return (await this.proposeLocal(cmd, deadlineMs)).result;
    const { index, result } = await this.deps.sender.forward(
      leader,
      commandCodec.encode(cmd),
      deadlineMs,
      caller,
    );
    // Answer only once this node has applied the command too: the client may read here next.
    await this.waitFor(
      () => this.processed >= index,
      deadlineMs,
      () =>
        new HostError(
          'deadline',
          `committed at index ${index} but node ${this.cfg.nodeId} has not applied it yet`,
        ),
    );
    return result;
  }

  /** On the leader: stamp, append and wait for the command to apply here. */
  proposeLocal(cmd: Command, deadlineMs: number): Promise<{ index: number; result: ApplyResult }> {
    if (this.closed) return Promise.reject(new HostError('not-leader', 'shutting down'));
    if (this.role !== 'leader')
      return Promise.reject(
        new HostError(
          'not-leader',
          `node ${this.cfg.nodeId} is not the leader`,
          this.leaderAddress(),
        ),
      );
    const data = commandCodec.encode(stampCommand(cmd, this.clock.nowMs()));
    let index: number;
    try {
      index = this.raw.propose(data);
    } catch (e) {
      this.emit({ type: 'proposal', outcome: 'failed' });
      if (e instanceof ProposalDroppedError) {
        if (e.reason === 'uncommitted-limit')
          return Promise.reject(
            new HostError('limit', `limit max_uncommitted_bytes exceeded: ${e.message}`),
          );
        return Promise.reject(new HostError('not-leader', e.message, this.leaderAddress()));
      }
      throw e;
    }
    const term = this.raw.basicStatus().term;
    this.schedule();
    return new Promise((resolve, reject) => {
      const cancel = this.clock.after(Math.max(0, deadlineMs - this.clock.nowMs()), () => {
        if (this.proposals.expire(index, term)) {
          this.emit({ type: 'proposal', outcome: 'failed' });
          this.emit({ type: 'proposals-pending', count: this.proposals.size });
          reject(
            new HostError(
              'proposal-deadline',
              `command at index ${index} not committed before the deadline; its outcome is unknown`,
            ),
          );
        }
      });
      this.proposals.add(
        index,
        {
          term,
          resolve: (r) => {
            cancel();
            resolve({ index, result: r });
          },
          reject: (e) => {
            cancel();
            reject(e);
          },
        },
        () => this.superseded(index),
      );
      this.emit({ type: 'proposals-pending', count: this.proposals.size });
    });
  }

  /**
   * ReadIndex: the leader confirms its leadership with a heartbeat round and names its commit
   * index; once this node has applied it, reads here are linearizable. Resolves with the read
   * index.
   *
   * Requests share rounds, as etcd's linearizable read loop does: a request joins the round that
   * has not been issued yet, never one already in flight (a round issued before the request
   * arrived may name a commit index older than writes acknowledged before the request was made).
   * So at most one round is in flight and one collects the requests arriving meanwhile; 64
   * concurrent readers cost two heartbeat rounds, not 64.
   */
  async linearizableRead(deadlineMs: number): Promise<number> {
    let readIndex: number;
    for (;;) {
      try {
        readIndex = await this.sharedReadIndex(deadlineMs);
        break;
      } catch (e) {
        // The round ended at the deadline of the request that started it: a request with a later
        // deadline goes on with a round of its own.
        if (e instanceof ReadDeadlineError && this.clock.nowMs() < deadlineMs && !this.closed)
          continue;
        throw e;
      }
    }
    await this.waitFor(
      () => this.processed >= readIndex,
      deadlineMs,
      () => new HostError('deadline', `not yet applied up to read index ${readIndex}`),
    );
    return readIndex;
  }

  private sharedReadIndex(deadlineMs: number): Promise<number> {
    if (!this.readInFlight) return this.startReadRound(deadlineMs);
    this.readQueued ??= this.readInFlight.then(noop, noop).then(() => {
      this.readQueued = undefined;
      return this.startReadRound(deadlineMs);
    });
    return this.readQueued;
  }

  private startReadRound(deadlineMs: number): Promise<number> {
    const round = this.readIndexRound(deadlineMs);
    this.readInFlight = round;
    const done = (): void => {
      if (this.readInFlight === round) this.readInFlight = undefined;
    };
    round.then(done, done);
    return round;
  }

  /**
   * One ReadIndex round. A request (or its answer) lost on the way, or dropped by a leader
   * change, is never answered, so it is re-issued with a fresh context every READ_INDEX_RETRY_MS
   * until the deadline.
   */
  private async readIndexRound(deadlineMs: number): Promise<number> {
    let readIndex = -1;
    while (readIndex < 0) {
      if (this.clock.nowMs() >= deadlineMs) throw new ReadDeadlineError(this.leaderAddress());
      await this.waitForLeader(deadlineMs);
      const req = this.reads.issue((i) => {
        readIndex = i;
        this.notify();
      });
      try {
        this.raw.readIndex(req.context);
        this.schedule();
        await this.waitFor(
          () => readIndex >= 0,
          Math.min(deadlineMs, this.clock.nowMs() + READ_INDEX_RETRY_MS),
          () => new Error('retry'),
        ).catch(() => undefined);
      } catch (e) {
        throw new HostError('not-leader', `read index: ${String(e)}`, this.leaderAddress());
      } finally {
        req.cancel();
      }
    }
    return readIndex;
  }

  async proposeConfChange(cc: ConfChange, deadlineMs: number): Promise<number> {
    if (this.role !== 'leader')
      throw new HostError(
        'not-leader',
        `membership changes go to the leader (${this.leader || 'unknown'})`,
        this.leaderAddress(),
      );
    if (cc.type === ConfChangeType.PromoteLearner) {
      const s = this.raw.status();
      const match = s.progress[cc.node]?.match ?? 0;
      if (match === 0 || match < Math.floor(s.lastIndex * LEARNER_READY_FRACTION))
        throw new HostError(
          'invalid',
          `learner ${cc.node} is not caught up (it holds ${match} of the leader's ${s.lastIndex} entries): promote it once it is`,
        );
    }
    let index: number;
    try {
      index = this.raw.proposeConfChange(cc);
    } catch (e) {
      if (e instanceof ProposalDroppedError) throw new HostError('invalid', e.message);
      throw e;
    }
    const term = this.raw.basicStatus().term;
    this.schedule();
    await new Promise<ApplyResult>((resolve, reject) =>
      this.proposals.add(index, { term, resolve, reject }, () => this.superseded(index)),
    );
    await this.waitFor(
      () => this.processed >= index,
      deadlineMs,
      () => new HostError('deadline', 'membership change not applied in time'),
    );
    return index;
  }

  transferLeadership(to: string): void {
    this.raw.transferLeadership(to);
    this.schedule();
  }

  async waitLeader(pred: (leader: string) => boolean, deadlineMs: number): Promise<boolean> {
    return this.waitFor(
      () => pred(this.leader),
      deadlineMs,
      () => new Error('timeout'),
    ).then(
      () => true,
      () => false,
    );
  }

  get confState(): ConfState {
    return this.conf;
  }

  get leaderId(): string {
    return this.leader;
  }

  /** Index of the last committed entry processed here (applied, or skipped as already applied). */
  get processedIndex(): number {
    return this.processed;
  }

  /** Whether the ready loop is idle (no drain scheduled or running). */
  get idle(): boolean {
    return !this.running;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  view(): ReplicaView {
    return {
      nodeId: this.cfg.nodeId,
      role: this.role,
      leaderId: this.leader,
      leaderAddress: this.leaderAddress(),
      term: this.term,
      commitIndex: this.commit,
      appliedIndex: this.sm.appliedIndex,
      awaitingSnapshot: this.log.joining,
    };
  }

  /** Stop: a leader first hands leadership to the most caught-up voter (graceful shutdown). */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.role === 'leader') {
      const st = this.raw.status();
      const candidates = this.conf.voters
        .filter((v) => v !== this.cfg.nodeId)
        .sort((a, b) => (st.progress[b]?.match ?? 0) - (st.progress[a]?.match ?? 0));
      if (candidates.length) {
        this.emit({ type: 'transfer-on-shutdown', to: candidates[0] });
        this.transferLeadership(candidates[0]);
        const deadline = this.clock.nowMs() + this.cfg.tickMs * this.cfg.electionTicks * 3;
        await this.waitLeader((l) => l !== '' && l !== this.cfg.nodeId, deadline);
      }
    }
    this.closed = true;
    this.proposals.rejectAll(
      () =>
        new HostError(
          'outcome-unknown',
          `node ${this.cfg.nodeId} shut down before the command was applied; its outcome is unknown`,
        ),
    );
    this.notify();
    await this.lock.run(async () => undefined);
  }

  /** For the admin service: members with progress. */
  members(): { id: string; role: 'voter' | 'learner'; match: number; recentActive: boolean }[] {
    const st = this.raw.status();
    return [
      ...this.conf.voters.map((id) => ({
        id,
        role: 'voter' as const,
        match: st.progress[id]?.match ?? 0,
        recentActive: st.progress[id]?.recentActive ?? false,
      })),
      ...this.conf.learners.map((id) => ({
        id,
        role: 'learner' as const,
        match: st.progress[id]?.match ?? 0,
        recentActive: st.progress[id]?.recentActive ?? false,
      })),
    ];
  }
}
