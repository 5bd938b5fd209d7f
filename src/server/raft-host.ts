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
 */
import {
  ConfChange,
  ConfChangeType,
  ConfState,
  Entry,
  EntryType,
  MemoryStorage,
  Message,
  MessageType,
  ProposalDroppedError,
  RawNode,
  Ready,
  ReadState,
  decodeConfChange,
} from '../raft';
import { Command, commandCodec } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { assert } from '../util/assert';
import { Mulberry32 } from '../util/prng';
import { Waiters } from '../util/waiters';
import { Mutex } from './mutex';
import { ReplicaView, Role, stampCommand } from './replicator';
import type { Caller } from './security';

/** Largest Append message (bytes of entry data). */
export const MAX_SIZE_PER_MSG = 1 << 20;
export const MAX_INFLIGHT_MSGS = 256;
export const MAX_UNCOMMITTED_BYTES = 64 << 20;
/** Entry data held in the in-memory log before compaction is forced, and kept after it. */
const LOG_BYTES_MAX = 32 << 20;
const LOG_BYTES_KEEP = 8 << 20;
/** How long a request waits for a leader to appear before it is refused. */
const LEADER_WAIT_MS = 3000;
/** A ReadIndex request unanswered for this long is issued again. */
const READ_INDEX_RETRY_MS = 1000;
/** How long a refused proposal waits for leadership to move before it is tried again. */
const LEADER_CHANGE_WAIT_MS = 200;

// ------------------------------------------------------------------------------------------
// What the host receives

/** The durable Raft log (DurableLog on LevelDB; a simulated disk in test/sim). */
export interface HostLog {
  /** The RaftStorage the core reads: everything persisted after the last compaction. */
  readonly mem: MemoryStorage;
  /** True while a joining node does not yet hold every entry that may be committed (no vote). */
  readonly joining: boolean;
  /** Data bytes of the entries held after the snapshot. */
  readonly entryBytes: number;
  /** The smallest index such that the entries from it to the end hold at most maxBytes. */
  firstIndexWithin(maxBytes: number): number;
  /** Write rd's snapshot, entries and hard state; durable once resolved when rd.mustSync. */
  persist(rd: Ready): Promise<void>;
  /** Record a snapshot at snapIndex (membership conf) and drop entries before compactIndex. */
  compact(snapIndex: number, conf: ConfState, compactIndex: number): Promise<void>;
}

/** The replicated state machine (ObjectStore). */
export interface StateMachine {
  /** Index of the last applied entry. */
  readonly appliedIndex: number;
  /** Apply committed commands in index order, one result per item (errors are results). */
  applyBatch(items: { index: number; cmd: Command }[]): Promise<ApplyResult[]>;
  /** Make every applied write durable (before the log entries that produced them are dropped). */
  flush(): Promise<void>;
  /** A consistent copy of the state at appliedIndex, in chunks. */
  snapshot(): { index: number; chunks: AsyncGenerator<Buffer> };
}

/** What the host needs from the peer transport. */
export interface PeerSender {
  send(messages: Message[]): void;
  /**
   * Propose a command on the leader. Rejects with HostError 'not-leader' when the command was
   * certainly not appended there (safe to retry); any other rejection leaves its outcome unknown.
   */
  forward(
    leaderId: string,
    command: Buffer,
    deadlineMs: number,
    caller: Caller,
  ): Promise<{ index: number; result: ApplyResult }>;
}

/** Time, as the host sees it: the wall clock in production, the simulated clock in test/sim. */
export interface HostClock {
  /** Milliseconds since the epoch (stamps TIDs, measures deadlines). */
  nowMs(): number;
  /** Run fn once, ms from now; the returned function cancels it. */
  after(ms: number, fn: () => void): () => void;
  /** Run fn after the current call stack unwinds (the ready loop is scheduled this way). */
  soon(fn: () => void): void;
}

/** What the host reports, for metrics and logs. */
export type HostEvent =
  | { type: 'raft'; line: string }
  | { type: 'state'; role: Role; leader: string; previous: string; term: number }
  | { type: 'hard-state'; term: number; commit: number }
  | { type: 'leader-lost' }
  | { type: 'proposal'; outcome: 'committed' | 'failed' }
  | { type: 'proposals-pending'; count: number }
  | {
      type: 'membership';
      change: string;
      member: string;
      term: number;
      index: number;
      conf: ConfState;
    }
  | { type: 'applied'; entries: Entry[]; results: Map<number, ApplyResult> }
  | { type: 'undecodable'; index: number }
  | { type: 'snapshot-installed'; index: number; term: number; from: string }
  | { type: 'compacted'; snapshot: number; first: number; bytes: number }
  | { type: 'transfer-on-shutdown'; to: string };

export interface HostConfig {
  nodeId: string;
  tickMs: number;
  electionTicks: number;
  heartbeatTicks: number;
  /** Entries kept after a compaction for followers to catch up from (compaction at twice this). */
  snapshotEntries: number;
  /** Seeds the core's election jitter and this host's ReadIndex contexts. */
  seed: number;
  maxSizePerMsg?: number;
  maxInflightMsgs?: number;
  maxUncommittedBytes?: number;
}

export interface HostDeps {
  log: HostLog;
  stateMachine: StateMachine;
  sender: PeerSender;
  clock: HostClock;
  /**
   * Where waits for state changes ("applied up to", "a leader is known") are kept: the node's
   * applied-index watch, shared with its other waits for applied state (its clock must be
   * `clock`). The host notifies it after each change; a host of its own when absent.
   */
  watch?: Waiters;
  events: (e: HostEvent) => void;
  /** A failure to persist or apply: the node's state is unknown; stop rather than diverge. */
  onFatal: (e: unknown) => void;
  /** The client address of a member ('' when unknown), for leader hints. */
  clientAddress: (id: string) => string;
}

/**
 * A refusal in the host's own terms; the gRPC edge maps each kind to a status code.
 * - not-leader: certainly not appended (no leader, not the leader, transfer): safe to retry;
 * - outcome-unknown: appended maybe; the node went away before it knew;
 * - proposal-deadline: appended, not committed before the deadline: outcome unknown;
 * - deadline: committed or answered, but not applied here before the deadline;
 * - limit: the leader's uncommitted-bytes bound; retry later;
 * - invalid: a membership change the core refuses.
 */
export type HostErrorKind =
  'not-leader' | 'outcome-unknown' | 'proposal-deadline' | 'deadline' | 'limit' | 'invalid';

export class HostError extends Error {
  constructor(
    readonly kind: HostErrorKind,
    message: string,
    readonly leaderHint = '',
  ) {
    super(message);
    this.name = 'HostError';
  }
}

/**
 * Before a host starts: bring the state machine to the log's starting point, or say why it
 * cannot. The log replays only what follows its snapshot, so the state machine must hold at
 * least the snapshot's state; the bootstrap snapshot (index 1) is the empty state, reached with a
 * no-op. Returns a problem description, or undefined when the host may start.
 */
export async function alignStateMachine(
  log: HostLog,
  sm: StateMachine,
): Promise<string | undefined> {
  const snap = log.mem.snapshot().index;
  if (snap === 1 && sm.appliedIndex === 0) await sm.applyBatch([{ index: 1, cmd: { noop: {} } }]);
  if (sm.appliedIndex < snap)
    return `the object store (applied ${sm.appliedIndex}) is behind the Raft log's snapshot (${snap})`;
  return undefined;
}

// ------------------------------------------------------------------------------------------
// Proposal and ReadIndex tracking

interface Pending {
  term: number;
  resolve: (r: ApplyResult) => void;
  reject: (e: Error) => void;
}

/**
 * Proposals waiting for their entry to apply, by log index. A proposal resolves only with the
 * result of its own entry: same index AND term (another leader may have put a different entry
 * at that index, and then the proposal failed).
 */
export class ProposalTracker {
  private readonly pending = new Map<number, Pending>();

  get size(): number {
    return this.pending.size;
  }

  /**
   * A proposal appended at index. An older term's proposal still waiting there was overwritten in
   * this node's log, but another node may still hold it and commit it later: its outcome is
   * unknown (`superseded`), and it stops waiting here.
   */
  add(index: number, p: Pending, superseded: () => Error): void {
    const old = this.pending.get(index);
    if (old) {
      assert(old.term < p.term, `two proposals of term ${p.term} waiting on index ${index}`);
      old.reject(superseded());
    }
    this.pending.set(index, p);
  }

  /** Drop the proposal at index if it is still the one of `term` (deadline); true if dropped. */
  expire(index: number, term: number): boolean {
    if (this.pending.get(index)?.term !== term) return false;
    this.pending.delete(index);
    return true;
  }

  /**
   * Entry e was applied (result r) or skipped: settle the proposal waiting on its index.
   * Returns what happened to it, or undefined when none waited.
   */
  settle(
    e: Entry,
    r: ApplyResult | undefined,
    refusal: () => Error,
  ): 'committed' | 'failed' | undefined {
    const p = this.pending.get(e.index);
    if (!p) return undefined;
    this.pending.delete(e.index);
    if (p.term !== e.term) {
      p.reject(refusal());
      return 'failed';
    }
    // A proposal's entry is new to this node's state machine: it cannot have been applied (and
    // so skipped) before it was proposed.
    assert(r !== undefined, `proposal at ${e.index} settled by an entry that was not applied`);
    p.resolve(r);
    return 'committed';
  }

  rejectAll(e: () => Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e());
  }
}

/**
 * Outstanding ReadIndex requests by context. Contexts are unique cluster-wide: a prefix drawn
 * per host incarnation, the node id and a counter.
 */
export class ReadTracker {
  private readonly waiting = new Map<string, (index: number) => void>();
  private counter = 0;

  constructor(
    private readonly nodeId: string,
    private readonly prefix: string,
  ) {}

  /** A fresh context; `answered` runs with the read index when a ReadState names it. */
  issue(answered: (index: number) => void): { context: Buffer; cancel: () => void } {
    const context = Buffer.from(`${this.prefix}:${this.nodeId}:${++this.counter}`);
    const key = context.toString('hex');
    this.waiting.set(key, answered);
    return { context, cancel: () => this.waiting.delete(key) };
  }

  /** The core answered a read: only the request with exactly that context is answered. */
  answer(rs: ReadState): void {
    const key = Buffer.from(rs.context).toString('hex');
    const fn = this.waiting.get(key);
    if (!fn) return;
    this.waiting.delete(key);
    fn(rs.index);
  }
}

// ------------------------------------------------------------------------------------------

/** A snapshot whose data arrived and waits for the core to accept it. */
interface StagedSnapshot {
  index: number;
  term: number;
  from: string;
  install: () => Promise<number>;
  /** The core accepted it (its Ready carried it). */
  accepted: boolean;
}

export class RaftHost {
  readonly raw: RawNode;
  readonly proposals = new ProposalTracker();
  private readonly reads: ReadTracker;
  /** Index of the last committed entry this host has processed (applied or skipped). */
  private processed: number;
  private conf: ConfState;
  private role: Role = 'follower';
  private leader = '';
  private term = 0;
  private commit = 0;
  private readonly waiters: Waiters;
  private readonly lock = new Mutex();
  /** The apply worker: committed entries are applied in order, one batch after another. */
  private applyTail: Promise<void> = Promise.resolve();
  private running = false;
  private closed = false;
  private staged: StagedSnapshot | undefined;
  private leaderlessSince: number;
  private leaderLostSent = false;
  private readonly log: HostLog;
  private readonly sm: StateMachine;
  private readonly clock: HostClock;
  private readonly emit: (e: HostEvent) => void;

  constructor(
    private readonly cfg: HostConfig,
    private readonly deps: HostDeps,
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

  private schedule(): void {
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

  private notify(): void {
    this.waiters.notify();
  }

  /** Resolve when cond() holds (checked after state changes), reject at the deadline. */
  private waitFor(cond: () => boolean, deadlineMs: number, onTimeout: () => Error): Promise<void> {
    return this.waiters.until(cond, deadlineMs, onTimeout);
  }

  // ------------------------------------------------------------------------------------------
  // Requests

  leaderAddress(): string {
    return this.leader ? this.deps.clientAddress(this.leader) : '';
  }

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
   * index; once this node has applied it, reads here are linearizable. A request (or its answer)
   * lost on the way, or dropped by a leader change, is never answered, so it is re-issued with
   * a fresh context every READ_INDEX_RETRY_MS until the deadline. Resolves with the read index.
   */
  async linearizableRead(deadlineMs: number): Promise<number> {
    let readIndex = -1;
    while (readIndex < 0) {
      if (this.clock.nowMs() >= deadlineMs)
        throw new HostError(
          'not-leader',
          'no read index from the leader before the deadline',
          this.leaderAddress(),
        );
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
    await this.waitFor(
      () => this.processed >= readIndex,
      deadlineMs,
      () => new HostError('deadline', `not yet applied up to read index ${readIndex}`),
    );
    return readIndex;
  }

  async proposeConfChange(cc: ConfChange, deadlineMs: number): Promise<number> {
    if (this.role !== 'leader')
      throw new HostError(
        'not-leader',
        `membership changes go to the leader (${this.leader || 'unknown'})`,
        this.leaderAddress(),
      );
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
