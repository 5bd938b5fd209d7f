/**
 * The Raft host's ready loop (raft-host.ts describes its steps): drains the core's Readies in the
 * order persist/send/apply allow, applies committed entries in a sequential worker, compacts the
 * log, installs snapshots the core accepted and captures them for followers. RaftHost extends it
 * with the requests (proposals, ReadIndex, membership, shutdown).
 */
import {
  ConfState,
  ConfChangeType,
  Entry,
  EntryType,
  Message,
  MessageType,
  RawNode,
  Ready,
  decodeConfChange,
} from '../raft';
import { Command, commandCodec } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { assert } from '../util/assert';
import { Mulberry32 } from '../util/prng';
import { Waiters } from '../util/waiters';
import { Mutex } from './mutex';
import type { Role } from './replicator';
import {
  HostClock,
  HostConfig,
  HostDeps,
  HostError,
  HostEvent,
  HostLog,
  StateMachine,
} from './raft-host-deps';
import { ProposalTracker, ReadTracker } from './raft-host-tracking';

/** Largest Append message (bytes of entry data). */
export const MAX_SIZE_PER_MSG = 1 << 20;
export const MAX_INFLIGHT_MSGS = 256;
export const MAX_UNCOMMITTED_BYTES = 64 << 20;
/** Entry data held in the in-memory log before compaction is forced, and kept after it. */
const LOG_BYTES_MAX = 32 << 20;
const LOG_BYTES_KEEP = 8 << 20;

/** A snapshot whose data arrived and waits for the core to accept it. */
interface StagedSnapshot {
  index: number;
  term: number;
  from: string;
  install: () => Promise<number>;
  /** The core accepted it (its Ready carried it). */
  accepted: boolean;
}

/**
 * The ready loop and the state it keeps (see raft-host.ts for the order of its steps); RaftHost
 * adds the requests on top.
 */
export class HostLoop {
  readonly raw: RawNode;
  readonly proposals = new ProposalTracker();
  protected readonly reads: ReadTracker;
  /** Index of the last committed entry this host has processed (applied or skipped). */
  protected processed: number;
  protected conf: ConfState;
  protected role: Role = 'follower';
  protected leader = '';
  protected term = 0;
  protected commit = 0;
  private readonly waiters: Waiters;
  protected readonly lock = new Mutex();
  /** The apply worker: committed entries are applied in order, one batch after another. */
  private applyTail: Promise<void> = Promise.resolve();
  protected running = false;
  protected closed = false;
  private staged: StagedSnapshot | undefined;
  private leaderlessSince: number;
  private leaderLostSent = false;
  protected readonly log: HostLog;
  protected readonly sm: StateMachine;
  protected readonly clock: HostClock;
  protected readonly emit: (e: HostEvent) => void;

  constructor(
    protected readonly cfg: HostConfig,
    protected readonly deps: HostDeps,
  ) {
    this.log = deps.log;
    this.sm = deps.stateMachine;
    this.clock = deps.clock;
    this.waiters = deps.watch ?? new Waiters(deps.clock);
    this.emit = deps.events;
    const snap = this.log.mem.snapshot();
    this.conf = this.log.mem.initialState().conf;
    this.processed = snap.index;
    const rng = new Mulberry32(cfg.seed);
    this.reads = new ReadTracker(cfg.nodeId, rng.fork(1).nextInt(0x7fffffff).toString(16));
    this.raw = new RawNode({
      id: cfg.nodeId,
      electionTicks: cfg.electionTicks,
      heartbeatTicks: cfg.heartbeatTicks,
      storage: this.log.mem,
      applied: snap.index,
      rng,
      preVote: true,
      checkQuorum: true,
      maxSizePerMsg: cfg.maxSizePerMsg ?? MAX_SIZE_PER_MSG,
      maxInflightMsgs: cfg.maxInflightMsgs ?? MAX_INFLIGHT_MSGS,
      maxUncommittedEntriesBytes: cfg.maxUncommittedBytes ?? MAX_UNCOMMITTED_BYTES,
      logger: (line) => this.emit({ type: 'raft', line }),
    });
    const hs = this.log.mem.hardState();
    this.term = hs.term;
    this.commit = hs.commit;
    this.leaderlessSince = this.clock.nowMs();
  }

  // ------------------------------------------------------------------------------------------
  // Inputs

  /** One tick of the logical clock (the adapter calls this every tickMs). */
  tick(): void {
    if (this.closed) return;
    // A joining node neither votes nor campaigns until it holds everything that may have been
    // committed (DurableLog.joining): its election timer stands still. Its followers' role needs
    // no ticks.
    if (!this.log.joining) this.raw.tick();
    if (
      !this.leader &&
      !this.leaderLostSent &&
      this.clock.nowMs() - this.leaderlessSince > this.cfg.tickMs * this.cfg.electionTicks
    ) {
      this.leaderLostSent = true;
      this.emit({ type: 'leader-lost' });
    }
    this.schedule();
  }

  /**
   * A message from a peer. A joining node does not vote: until it holds a committed entry of its
   * leader's term, its log may lack entries its lost state helped commit (DurableLog.joining).
   */
  step(m: Message): void {
    if (this.closed) return;
    if (this.log.joining && (m.type === MessageType.Vote || m.type === MessageType.PreVote)) return;
    if (m.type === MessageType.Snapshot) return; // only with its data, through installSnapshot
    if (
      (m.type === MessageType.Heartbeat || m.type === MessageType.Append) &&
      m.commit > this.log.mem.lastIndex()
    ) {
      // The leader believes we hold more than we do: this node lost its disk and rejoined. Ignoring
      // commit information is always safe (it only delays commits); the leader re-probes us.
      m = { ...m, commit: Math.min(m.commit, this.log.mem.hardState().commit) };
    }
    this.raw.step(m);
    this.schedule();
  }

  protected schedule(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.clock.soon(() => {
      this.lock
        .run(() => this.drain())
        .catch((e: unknown) => this.fail(e))
        .finally(() => {
          this.running = false;
          if (!this.closed && this.raw.hasReady()) this.schedule();
        });
    });
  }

  // ------------------------------------------------------------------------------------------
  // The ready loop

  private async drain(): Promise<void> {
    while (!this.closed && this.raw.hasReady()) {
      const rd = this.raw.ready();
      this.observeState(rd);
      if (rd.snapshot) await this.installStaged(rd);
      // The same steps for every role, in the order the core's Ready contract allows (see
      // RawNode): messages that vouch for nothing local leave at once; committed entries (durable
      // on a quorum already) are applied by a sequential worker while this Ready is persisted and
      // newer ones are replicated, as etcd does; acknowledgements and votes leave only once the
      // write is durable. A batch with a membership change is waited for before advance(), so
      // the core's view of the configuration is never ahead of ours.
      const entries = rd.committedEntries;
      this.send(rd.messages);
      this.applyTail = this.applyTail.then(() => this.applyEntries(entries));
      this.applyTail.catch((e: unknown) => this.fail(e));
      await this.persist(rd);
      this.send(rd.messagesAfterAppend);
      for (const rs of rd.readStates) this.reads.answer(rs);
      if (entries.some((e) => e.type === EntryType.ConfChange)) await this.applyTail;
      this.raw.advance(rd);
      if (this.compactionDue()) {
        await this.applyTail;
        await this.maybeCompact();
      }
    }
  }

  /**
   * The core accepted a snapshot (it is in rd): install the staged data, which must be exactly
   * that snapshot, before the Ready is persisted. The core decides; the host applies what the
   * Ready hands it.
   */
  private async installStaged(rd: Ready): Promise<void> {
    const meta = rd.snapshot!;
    await this.applyTail;
    const s = this.staged;
    assert(
      s !== undefined && s.index === meta.index && s.term === meta.term && !s.accepted,
      `snapshot ${meta.index} accepted by the core without its data`,
    );
    s.accepted = true;
    // After a crash the state machine may already hold this state (its snapshot install was
    // synced, the log's record of it was not): then there is nothing to install.
    if (this.sm.appliedIndex < meta.index) {
      const applied = await s.install();
      assert(
        applied === meta.index,
        `snapshot data is at index ${applied}, its message says ${meta.index}`,
      );
    }
    this.emit({ type: 'snapshot-installed', index: meta.index, term: meta.term, from: s.from });
    this.conf = meta.conf;
    this.processed = Math.max(this.processed, meta.index);
    this.notify(); // reads and waits for "applied up to" that the snapshot satisfies
  }

  /** Stop: the node's state is unknown. */
  private fail(e: unknown): void {
    if (this.closed) return;
    this.closed = true;
    this.deps.onFatal(e);
  }

  private async persist(rd: Ready): Promise<void> {
    await this.log.persist(rd);
    if (rd.hardState) {
      this.term = rd.hardState.term;
      this.commit = rd.hardState.commit;
      this.emit({ type: 'hard-state', term: this.term, commit: this.commit });
    }
  }

  private send(messages: Message[]): void {
    if (messages.length > 0) this.deps.sender.send(messages);
  }

  private observeState(rd: Ready): void {
    if (!rd.softState) return;
    const { leader, role } = rd.softState;
    const previous = this.leader;
    if (leader !== previous) {
      if (!leader) this.leaderlessSince = this.clock.nowMs();
      else this.leaderLostSent = false;
    }
    this.leader = leader;
    this.role = role;
    this.emit({ type: 'state', role, leader, previous, term: this.raw.basicStatus().term });
    this.notify();
  }

  private async applyEntries(entries: Entry[]): Promise<void> {
    const todo = entries.filter((e) => e.index > this.processed); // older: covered by a snapshot
    todo.forEach((e, i) =>
      assert(
        e.index === this.processed + 1 + i,
        `committed entry ${e.index} out of order after ${this.processed}`,
      ),
    );
    // Entries at or below the state machine's applied index were applied before a restart: skip
    // them there (membership changes among them still go to the core). The rest is applied in
    // one batch: one write for the whole Ready.
    const items = todo
      .filter((e) => e.index > this.sm.appliedIndex)
      .map((e) => ({
        index: e.index,
        cmd: e.type === EntryType.Normal ? this.decode(e) : confChangeCommand(e),
      }));
    const results = new Map<number, ApplyResult>();
    if (items.length)
      (await this.sm.applyBatch(items)).forEach((r, i) => results.set(items[i].index, r));
    if (todo.length) this.emit({ type: 'applied', entries: todo, results });
    for (const e of todo) {
      if (e.type === EntryType.ConfChange) {
        const cc = decodeConfChange(e.data);
        this.conf = this.raw.applyConfChange(cc);
        this.emit({
          type: 'membership',
          change: ConfChangeType[cc.type],
          member: cc.node,
          term: e.term,
          index: e.index,
          conf: this.conf,
        });
      }
      this.processed = e.index;
      const outcome = this.proposals.settle(
        e,
        results.get(e.index),
        () =>
          new HostError(
            'not-leader',
            'leadership changed before the command committed; retry',
            this.leaderAddress(),
          ),
      );
      if (outcome) this.emit({ type: 'proposal', outcome });
    }
    this.emit({ type: 'proposals-pending', count: this.proposals.size });
    if (todo.length) this.notify();
  }

  private decode(e: Entry): Command {
    if (e.data.length === 0) return { noop: {} }; // a new leader's empty entry
    try {
      return commandCodec.decode(e.data);
    } catch {
      this.emit({ type: 'undecodable', index: e.index });
      return { noop: {} };
    }
  }

  /**
   * Compaction is due when the log beyond its snapshot holds more than twice the retained entry
   * count, or more than LOG_BYTES_MAX of entry data (big transactions must not make the in-memory
   * log grow without bound).
   */
  private compactionDue(): boolean {
    const entries = this.sm.appliedIndex - this.log.mem.firstIndex();
    return entries >= 2 * this.cfg.snapshotEntries || this.log.entryBytes > LOG_BYTES_MAX;
  }

  private async maybeCompact(force = false): Promise<number> {
    const first = this.log.mem.firstIndex();
    const applied = this.sm.appliedIndex;
    // While a restart replays the log, the state machine is ahead of what the core has handed
    // out: the membership at `applied` is not known yet and the entries are still needed.
    if (applied !== this.processed) return 0;
    if (!force && !this.compactionDue()) return 0;
    if (applied <= this.log.mem.snapshot().index) return 0;
    // Keep the newest entries for followers to catch up from: at most snapshotEntries of them and
    // at most LOG_BYTES_KEEP bytes; a follower further behind gets a snapshot.
    const keepFrom = Math.max(
      first,
      applied - this.cfg.snapshotEntries,
      this.log.firstIndexWithin(LOG_BYTES_KEEP),
    );
    await this.sm.flush();
    await this.log.compact(applied, this.conf, Math.min(applied, keepFrom));
    this.emit({
      type: 'compacted',
      snapshot: applied,
      first: this.log.mem.firstIndex(),
      bytes: this.log.entryBytes,
    });
    return applied;
  }

  /** Compact now (admin request, simulator faults), when the host is between batches. */
  async compactNow(): Promise<{ snapshotIndex: number; firstIndex: number }> {
    await this.lock.run(async () => {
      await this.applyTail;
      await this.maybeCompact(true);
    });
    return { snapshotIndex: this.log.mem.snapshot().index, firstIndex: this.log.mem.firstIndex() };
  }

  protected notify(): void {
    this.waiters.notify();
  }

  /** Resolve when cond() holds (checked after state changes), reject at the deadline. */
  protected waitFor(
    cond: () => boolean,
    deadlineMs: number,
    onTimeout: () => Error,
  ): Promise<void> {
    return this.waiters.until(cond, deadlineMs, onTimeout);
  }

  leaderAddress(): string {
    return this.leader ? this.deps.clientAddress(this.leader) : '';
  }

  /**
   * A snapshot message from the leader, its data received and ready to install (`install`
   * restores the state machine from it and resolves with the index it reached). The message goes
   * into the core first; the data is installed only if the core accepts the snapshot (a deposed
   * leader's or an outdated snapshot is refused and leaves the state machine untouched). Resolves
   * with whether the data was installed.
   */
  async installSnapshot(m: Message, install: () => Promise<number>): Promise<boolean> {
    return this.lock.run(async () => {
      await this.applyTail;
      const meta = m.snapshot;
      if (this.closed || !meta) return false;
      // Even a snapshot this node does not need goes into the core: its answer (the index this
      // node holds) is how the leader learns where to continue; without it a leader that has
      // compacted past its view of this node sends the same snapshot forever.
      const staged: StagedSnapshot = {
        index: meta.index,
        term: meta.term,
        from: m.from,
        install,
        accepted: false,
      };
      this.staged = staged;
      try {
        this.raw.step(m);
        await this.drain(); // the Ready carrying the accepted snapshot installs the staged data
      } catch (e) {
        this.fail(e);
        throw e;
      } finally {
        this.staged = undefined;
      }
      this.schedule();
      return staged.accepted;
    });
  }

  /** Take a snapshot for a follower: the state machine's consistent state and its metadata. */
  async captureSnapshot(): Promise<
    | { meta: { index: number; term: number; conf: ConfState }; chunks: AsyncGenerator<Buffer> }
    | undefined
  > {
    return this.lock.run(async () => {
      await this.applyTail; // the state and this.conf describe the same index only between batches
      // After a restart the store may be ahead of what the log knows is committed (it applied
      // entries whose commit record was not yet synced). Its state is still committed state, and
      // this.conf describes it unless a membership change lies in between. Refusing would
      // deadlock a leader whose followers need a snapshot to commit anything.
      if (!this.confUnchangedThrough(this.sm.appliedIndex)) return undefined;
      const snap = this.sm.snapshot();
      const term = this.raw.termAt(snap.index);
      if (term === undefined) {
        await snap.chunks.return(undefined);
        return undefined;
      }
      return {
        meta: {
          index: snap.index,
          term,
          conf: { voters: [...this.conf.voters], learners: [...this.conf.learners] },
        },
        chunks: snap.chunks,
      };
    });
  }

  /** No membership change in the log between what this host processed and `index`. */
  private confUnchangedThrough(index: number): boolean {
    if (index <= this.processed) return index === this.processed;
    const m = this.log.mem;
    if (this.processed + 1 < m.firstIndex() || index > m.lastIndex()) return false;
    return m
      .entries(this.processed + 1, index + 1, Infinity)
      .every((e) => e.type !== EntryType.ConfChange);
  }

  reportSnapshot(id: string, ok: boolean): void {
    this.raw.reportSnapshot(id, ok);
    this.schedule();
  }

  reportUnreachable(id: string): void {
    this.raw.reportUnreachable(id);
  }
}

/**
 * The store's side of a membership change: a removal leaves the member's tombstone (its id is
 * refused by the peers and never used again); other changes touch nothing there.
 */
function confChangeCommand(e: Entry): Command {
  const cc = decodeConfChange(e.data);
  return cc.type === ConfChangeType.RemoveNode
    ? { member: { id: cc.node, remove: true } }
    : { noop: {} };
}
