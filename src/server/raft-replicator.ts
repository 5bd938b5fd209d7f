/**
 * The Raft host loop of a cluster member (etcd's raft node pattern):
 *
 *   tick every tickMs; step every message from peers; propose commands;
 *   while hasReady(): rd = ready();
 *     persist rd (snapshot, entries, hard state: one LevelDB batch, synced when rd.mustSync)
 *     send rd.messages   (a leader sends first and writes its own copy in parallel; the core
 *                         counts the leader's copy only after advance)
 *     apply rd.committedEntries to the object store, resolving the proposals waiting on them
 *     advance(rd)
 *
 * Invariants (asserted): entries are applied in index order, each once; an entry at or below
 * the store's applied index is never applied again (after a restart the log is replayed from
 * the last snapshot and such entries are skipped); a proposal resolves only with the result of
 * its own entry (same index and term).
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import {
  ConfChange,
  ConfChangeType,
  ConfState,
  Entry,
  EntryType,
  Message,
  MessageType,
  ProposalDroppedError,
  RawNode,
  Ready,
  decodeConfChange,
} from '../raft';
import { Command, commandCodec } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { assert } from '../util/assert';
import { Mulberry32 } from '../util/prng';
import { RpcError, definitelyNotAppended, outcomeUnknown, unavailable } from './errors';
import { Mutex } from './mutex';
import type { StorageNode } from './node';
import type { DurableLog } from './raft-log';
import { ReplicaView, Replicator, Role, stampCommand } from './replicator';

/** Entries kept in memory/log beyond the snapshot before compaction triggers (x2). */
const MAX_SIZE_PER_MSG = 1 << 20;
const MAX_INFLIGHT_MSGS = 256;
const MAX_UNCOMMITTED_BYTES = 64 << 20;
/** Entry data held in the in-memory log before compaction is forced, and kept after it. */
const LOG_BYTES_MAX = 32 << 20;
const LOG_BYTES_KEEP = 8 << 20;
/** How long a request waits for a leader to appear before answering UNAVAILABLE. */
const LEADER_WAIT_MS = 3000;
/** A ReadIndex request unanswered for this long is issued again. */
const READ_INDEX_RETRY_MS = 1000;

/** What the replicator needs from the peer transport. */
export interface PeerSender {
  send(messages: Message[]): void;
  forward(
    leaderId: string,
    command: Buffer,
    deadlineMs: number,
  ): Promise<{ index: number; result: ApplyResult }>;
  close(): Promise<void>;
}

interface Pending {
  term: number;
  resolve: (r: ApplyResult) => void;
  reject: (e: Error) => void;
}

export class RaftReplicator implements Replicator {
  readonly raw: RawNode;
  /** Index of the last committed entry this host has processed (applied or skipped). */
  private processed: number;
  private conf: ConfState;
  private role: Role = 'follower';
  private leader = '';
  private term = 0;
  private commit = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly reads = new Map<string, (index: number) => void>();
  private readonly waiters = new Set<() => void>();
  private readonly lock = new Mutex();
  /** The apply worker: committed entries are applied in order, one batch after another. */
  private applyTail: Promise<void> = Promise.resolve();
  private running = false;
  private closed = false;
  private ticker: NodeJS.Timeout;
  private readCounter = 0;
  private readonly readPrefix = randomBytes(8).toString('hex');
  private leaderlessSince = Date.now();
  private leaderLostSent = false;
  private heartbeatSentAt = new Map<string, number>();
  transport!: PeerSender;

  constructor(
    private readonly node: StorageNode,
    readonly log: DurableLog,
    seed: number,
  ) {
    const snap = log.mem.snapshot();
    this.conf = log.mem.initialState().conf;
    this.processed = snap.index;
    this.raw = new RawNode({
      id: node.config.nodeId,
      electionTicks: node.config.electionTicks,
      heartbeatTicks: node.config.heartbeatTicks,
      storage: log.mem,
      applied: snap.index,
      rng: new Mulberry32(seed),
      preVote: true,
      checkQuorum: true,
      maxSizePerMsg: MAX_SIZE_PER_MSG,
      maxInflightMsgs: MAX_INFLIGHT_MSGS,
      maxUncommittedEntriesBytes: MAX_UNCOMMITTED_BYTES,
      logger: (line) => node.log.debug({ raft: line }),
    });
    const hs = log.mem.hardState();
    this.term = hs.term;
    this.commit = hs.commit;
    this.ticker = setInterval(() => this.tick(), node.config.tickMs);
  }

  // ------------------------------------------------------------------------------------------
  // Inputs

  private tick(): void {
    if (this.closed) return;
    this.raw.tick();
    if (
      !this.leader &&
      !this.leaderLostSent &&
      Date.now() - this.leaderlessSince > this.node.config.tickMs * this.node.config.electionTicks
    ) {
      this.leaderLostSent = true;
      this.node.subscriptions.leaderLost(this.node.config.nodeId);
    }
    this.schedule();
  }

  /** A message from a peer. A joining node (no snapshot yet) does not vote: its empty log must not elect anyone. */
  step(m: Message): void {
    if (this.closed) return;
    if (this.log.joining && (m.type === MessageType.Vote || m.type === MessageType.PreVote)) return;
    if (m.type === MessageType.HeartbeatResp) {
      const sent = this.heartbeatSentAt.get(m.from);
      if (sent !== undefined) {
        this.node.metrics.peerRtt.observe({ peer: m.from }, (performance.now() - sent) / 1000);
        this.heartbeatSentAt.delete(m.from);
      }
    }
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
    setImmediate(() => {
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
      if (rd.snapshot) {
        await this.applyTail;
        assert(
          this.node.store.appliedIndex >= rd.snapshot.index,
          `snapshot ${rd.snapshot.index} installed before its data (store at ${this.node.store.appliedIndex})`,
        );
        this.conf = rd.snapshot.conf;
        this.processed = Math.max(this.processed, rd.snapshot.index);
      }
      // Committed entries are applied by a sequential worker while the loop goes on persisting
      // and replicating newer entries (as etcd does). The leader starts applying before its own
      // write (its committed entries are durable on a quorum already) and sends before it too;
      // a follower persists first. A batch with a membership change is waited for before
      // advance(), so the core's view of the configuration is never ahead of ours.
      const entries = rd.committedEntries;
      const apply = (): void => {
        this.applyTail = this.applyTail.then(() => this.applyEntries(entries));
        this.applyTail.catch((e: unknown) => this.fail(e));
      };
      if (this.role === 'leader') {
        this.sendAll(rd.messages);
        apply();
        await this.persist(rd);
      } else {
        await this.persist(rd);
        this.sendAll(rd.messages);
        apply();
      }
      for (const rs of rd.readStates) {
        const key = Buffer.from(rs.context).toString('hex');
        this.reads.get(key)?.(rs.index);
        this.reads.delete(key);
      }
      if (entries.some((e) => e.type === EntryType.ConfChange)) await this.applyTail;
      this.raw.advance(rd);
      if (this.compactionDue()) {
        await this.applyTail;
        await this.maybeCompact();
      }
    }
  }

  /** A failure to persist or apply leaves this node in an unknown state: stop rather than diverge. */
  private fail(e: unknown): never {
    this.node.log.fatal(
      { error: String(e), stack: (e as Error)?.stack },
      'raft loop failed; exiting',
    );
    process.exit(70);
  }

  private async persist(rd: Ready): Promise<void> {
    await this.log.persist(rd);
    if (rd.hardState) {
      this.term = rd.hardState.term;
      this.commit = rd.hardState.commit;
      this.node.metrics.term.set(this.term);
      this.node.metrics.commitIndex.set(this.commit);
    }
  }

  private sendAll(messages: Message[]): void {
    if (messages.length === 0) return;
    const now = performance.now();
    for (const m of messages)
      if (m.type === MessageType.Heartbeat && !this.heartbeatSentAt.has(m.to))
        this.heartbeatSentAt.set(m.to, now);
    this.transport.send(messages);
  }

  private observeState(rd: Ready): void {
    if (!rd.softState) return;
    const { leader, role } = rd.softState;
    if (leader !== this.leader) {
      // Counted once per new leader seen, as etcd does; losing the leader alone is not a change.
      if (leader) this.node.metrics.leaderChanges.inc();
      this.node.log.info(
        {
          term: this.raw.basicStatus().term,
          leader: leader || null,
          previous: this.leader || null,
          role,
        },
        leader ? 'leader changed' : 'leader lost',
      );
      if (!leader) this.leaderlessSince = Date.now();
      else this.leaderLostSent = false;
    }
    this.leader = leader;
    this.role = role;
    this.node.metrics.hasLeader.set(leader ? 1 : 0);
    this.node.metrics.isLeader.set(role === 'leader' ? 1 : 0);
    this.notify();
  }

  private async applyEntries(entries: Entry[]): Promise<void> {
    const store = this.node.store;
    const todo = entries.filter((e) => e.index > this.processed); // older: covered by a snapshot
    todo.forEach((e, i) =>
      assert(
        e.index === this.processed + 1 + i,
        `committed entry ${e.index} out of order after ${this.processed}`,
      ),
    );
    // Entries at or below the store's applied index were applied before a restart: skip them in
    // the store (membership changes among them still go to the core). The rest is applied in one
    // batch: one LevelDB write for the whole Ready.
    const items = todo
      .filter((e) => e.index > store.appliedIndex)
      .map((e) => ({
        index: e.index,
        cmd: e.type === EntryType.Normal ? this.decode(e) : ({ noop: {} } as Command),
      }));
    const results = new Map<number, ApplyResult>();
    if (items.length)
      (await store.applyBatch(items)).forEach((r, i) => results.set(items[i].index, r));
    for (const e of todo) {
      if (e.type === EntryType.ConfChange) {
        const cc = decodeConfChange(e.data);
        this.conf = this.raw.applyConfChange(cc);
        this.node.log.info(
          {
            change: ConfChangeType[cc.type],
            member: cc.node,
            term: e.term,
            voters: this.conf.voters,
            learners: this.conf.learners,
            index: e.index,
          },
          'membership changed',
        );
      }
      this.processed = e.index;
      const p = this.pending.get(e.index);
      if (p) {
        this.pending.delete(e.index);
        if (p.term === e.term) {
          this.node.metrics.proposalsCommitted.inc();
          p.resolve(results.get(e.index) ?? { ok: true });
        } else {
          this.node.metrics.proposalsFailed.inc();
          p.reject(
            unavailable(
              'leadership changed before the command committed; retry',
              this.leaderAddress(),
            ),
          );
        }
      }
    }
    this.node.metrics.proposalsPending.set(this.pending.size);
    if (todo.length) this.notify();
  }

  private decode(e: Entry): Command {
    if (e.data.length === 0) return { noop: {} }; // a new leader's empty entry
    try {
      return commandCodec.decode(e.data);
    } catch {
      this.node.log.error({ index: e.index }, 'undecodable log entry applied as a no-op');
      return { noop: {} };
    }
  }

  /**
   * Compaction is due when the log beyond its snapshot holds more than twice the retained entry
   * count, or more than LOG_BYTES_MAX of entry data (big transactions must not make the in-memory
   * log grow without bound).
   */
  private compactionDue(): boolean {
    const entries = this.node.store.appliedIndex - this.log.mem.firstIndex();
    return entries >= 2 * this.node.config.snapshotEntries || this.log.entryBytes > LOG_BYTES_MAX;
  }

  private async maybeCompact(force = false): Promise<number> {
    const first = this.log.mem.firstIndex();
    const applied = this.node.store.appliedIndex;
    // While a restart replays the log, the store is ahead of what the core has handed out: the
    // membership at `applied` is not known yet and the entries are still needed.
    if (applied !== this.processed) return 0;
    if (!force && !this.compactionDue()) return 0;
    if (applied <= this.log.mem.snapshot().index) return 0;
    // Keep the newest entries for followers to catch up from: at most snapshotEntries of them and
    // at most LOG_BYTES_KEEP bytes; a follower further behind gets a snapshot.
    const keepFrom = Math.max(
      first,
      applied - this.node.config.snapshotEntries,
      this.log.firstIndexWithin(LOG_BYTES_KEEP),
    );
    await this.node.store.flush();
    await this.log.compact(applied, this.conf, Math.min(applied, keepFrom));
    this.node.log.debug(
      { snapshot: applied, first: this.log.mem.firstIndex(), bytes: this.log.entryBytes },
      'log compacted',
    );
    return applied;
  }

  async compactNow(): Promise<{ snapshotIndex: number; firstIndex: number }> {
    await this.lock.run(async () => {
      await this.applyTail;
      await this.maybeCompact(true);
    });
    return { snapshotIndex: this.log.mem.snapshot().index, firstIndex: this.log.mem.firstIndex() };
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Resolve when cond() holds (checked after state changes), reject at the deadline. */
  private waitFor(cond: () => boolean, deadlineMs: number, onTimeout: () => Error): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (cond()) {
          done();
          resolve();
        }
      };
      const timer = setTimeout(
        () => {
          done();
          reject(onTimeout());
        },
        Math.max(0, deadlineMs - Date.now()),
      );
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }

  // ------------------------------------------------------------------------------------------
  // Replicator

  leaderAddress(): string {
    return this.leader ? this.node.addressBook.clientAddress(this.leader) : '';
  }

  private async waitForLeader(deadlineMs: number): Promise<void> {
    await this.waitFor(
      () => this.leader !== '' || this.closed,
      Math.min(deadlineMs, Date.now() + LEADER_WAIT_MS),
      () => unavailable(`node ${this.node.config.nodeId} has no leader; retry or try another node`),
    );
    if (this.closed) throw unavailable(`node ${this.node.config.nodeId} is shutting down`);
  }

  async propose(cmd: Command, deadlineMs: number): Promise<ApplyResult> {
    this.node.limits.checkPending(this.pending.size);
    for (;;) {
      await this.waitForLeader(deadlineMs);
      const leader = this.leader;
      try {
        return await this.proposeVia(leader, cmd, deadlineMs);
      } catch (e) {
        // Refused before it reached the log (no leader there, leadership being transferred):
        // safe to retry once leadership settles, within the caller's deadline.
        if (!definitelyNotAppended(e) || Date.now() >= deadlineMs) throw e;
        await this.waitFor(
          () => this.leader !== leader || this.closed,
          Math.min(deadlineMs, Date.now() + 200),
          () => new Error('leader unchanged'),
        ).catch(() => undefined);
        if (this.closed) throw e;
      }
    }
  }

  private async proposeVia(leader: string, cmd: Command, deadlineMs: number): Promise<ApplyResult> {
    if (leader === this.node.config.nodeId)
      return (await this.proposeLocal(cmd, deadlineMs)).result;
    const { index, result } = await this.transport.forward(
      leader,
      commandCodec.encode(cmd),
      deadlineMs,
    );
    // Answer only once this node has applied the command too: the client may read here next.
    await this.waitFor(
      () => this.processed >= index,
      deadlineMs,
      () =>
        new RpcError(
          grpc.status.DEADLINE_EXCEEDED,
          `committed at index ${index} but node ${this.node.config.nodeId} has not applied it yet`,
        ),
    );
    return result;
  }

  /** On the leader: stamp, append and wait for the command to apply here. */
  proposeLocal(cmd: Command, deadlineMs: number): Promise<{ index: number; result: ApplyResult }> {
    if (this.closed) return Promise.reject(unavailable('shutting down'));
    if (this.role !== 'leader')
      return Promise.reject(
        unavailable(`node ${this.node.config.nodeId} is not the leader`, this.leaderAddress()),
      );
    const data = commandCodec.encode(stampCommand(cmd, this.node.clock.nowMs()));
    let index: number;
    try {
      index = this.raw.propose(data);
    } catch (e) {
      this.node.metrics.proposalsFailed.inc();
      if (e instanceof ProposalDroppedError) {
        if (e.reason === 'uncommitted-limit')
          throw new RpcError(
            grpc.status.RESOURCE_EXHAUSTED,
            `limit max_uncommitted_bytes exceeded: ${e.message}`,
            { kind: 'LIMIT', transient: true },
          );
        return Promise.reject(unavailable(e.message, this.leaderAddress()));
      }
      throw e;
    }
    const term = this.raw.basicStatus().term;
    this.schedule();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          if (this.pending.get(index)?.term === term) {
            this.pending.delete(index);
            this.node.metrics.proposalsFailed.inc();
            reject(
              new RpcError(
                grpc.status.DEADLINE_EXCEEDED,
                `command at index ${index} not committed before the deadline; its outcome is unknown`,
                { kind: 'NOT_LEADER', transient: true },
              ),
            );
          }
        },
        Math.max(0, deadlineMs - Date.now()),
      );
      this.pending.set(index, {
        term,
        resolve: (r) => {
          clearTimeout(timer);
          resolve({ index, result: r });
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.node.metrics.proposalsPending.set(this.pending.size);
    });
  }

  /**
   * ReadIndex: the leader confirms its leadership with a heartbeat round and names its commit
   * index; once this node has applied it, reads here are linearizable. A request (or its answer)
   * lost on the way, or dropped by a leader change, is never answered, so it is re-issued with
   * a fresh context every READ_INDEX_RETRY_MS until the deadline.
   */
  async linearizableRead(deadlineMs: number): Promise<void> {
    let readIndex = -1;
    while (readIndex < 0) {
      if (Date.now() >= deadlineMs)
        throw unavailable(
          'no read index from the leader before the deadline',
          this.leaderAddress(),
        );
      await this.waitForLeader(deadlineMs);
      const ctx = Buffer.from(
        `${this.readPrefix}:${this.node.config.nodeId}:${++this.readCounter}`,
      );
      const key = ctx.toString('hex');
      this.reads.set(key, (i) => {
        readIndex = i;
        this.notify();
      });
      try {
        this.raw.readIndex(ctx);
        this.schedule();
        await this.waitFor(
          () => readIndex >= 0,
          Math.min(deadlineMs, Date.now() + READ_INDEX_RETRY_MS),
          () => new Error('retry'),
        ).catch(() => undefined);
      } catch (e) {
        throw unavailable(`read index: ${String(e)}`, this.leaderAddress());
      } finally {
        this.reads.delete(key);
      }
    }
    await this.waitFor(
      () => this.processed >= readIndex,
      deadlineMs,
      () =>
        new RpcError(
          grpc.status.DEADLINE_EXCEEDED,
          `not yet applied up to read index ${readIndex}`,
        ),
    );
  }

  async proposeConfChange(cc: ConfChange, deadlineMs: number): Promise<number> {
    if (this.role !== 'leader')
      throw unavailable(
        `membership changes go to the leader (${this.leader || 'unknown'})`,
        this.leaderAddress(),
      );
    let index: number;
    try {
      index = this.raw.proposeConfChange(cc);
    } catch (e) {
      if (e instanceof ProposalDroppedError)
        throw new RpcError(grpc.status.FAILED_PRECONDITION, e.message, { kind: 'INVALID' });
      throw e;
    }
    const term = this.raw.basicStatus().term;
    this.schedule();
    await new Promise<ApplyResult>((resolve, reject) =>
      this.pending.set(index, { term, resolve, reject }),
    );
    await this.waitFor(
      () => this.processed >= index,
      deadlineMs,
      () => new RpcError(grpc.status.DEADLINE_EXCEEDED, 'membership change not applied in time'),
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

  /** Install a snapshot received from the leader: data first, then the message into the core. */
  async installSnapshot(m: Message, install: () => Promise<number>): Promise<boolean> {
    return this.lock.run(async () => {
      await this.applyTail;
      const meta = m.snapshot;
      if (!meta || meta.index <= this.node.store.appliedIndex || meta.index <= this.processed)
        return false;
      const applied = await install();
      assert(
        applied === meta.index,
        `snapshot data is at index ${applied}, its message says ${meta.index}`,
      );
      this.node.metrics.snapshotsReceived.inc();
      this.node.log.info(
        { index: meta.index, term: meta.term, from: m.from },
        'snapshot installed',
      );
      this.raw.step(m);
      this.schedule();
      return true;
    });
  }

  /** Take a snapshot for a follower: the store's consistent state and the metadata describing it. */
  async captureSnapshot(): Promise<
    | { meta: { index: number; term: number; conf: ConfState }; chunks: AsyncGenerator<Buffer> }
    | undefined
  > {
    return this.lock.run(async () => {
      await this.applyTail; // the store and this.conf describe the same index only between batches
      const store = this.node.store;
      if (store.appliedIndex !== this.processed) return undefined; // still replaying after a restart
      const snap = store.snapshot();
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

  view(): ReplicaView {
    return {
      nodeId: this.node.config.nodeId,
      role: this.role,
      leaderId: this.leader,
      leaderAddress: this.leaderAddress(),
      term: this.term,
      commitIndex: this.commit,
      appliedIndex: this.node.store.appliedIndex,
    };
  }

  /** Stop: a leader first hands leadership to the most caught-up voter (graceful shutdown). */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.role === 'leader') {
      const st = this.raw.status();
      const candidates = this.conf.voters
        .filter((v) => v !== this.node.config.nodeId)
        .sort((a, b) => (st.progress[b]?.match ?? 0) - (st.progress[a]?.match ?? 0));
      if (candidates.length) {
        this.node.log.info({ to: candidates[0] }, 'transferring leadership before shutdown');
        this.transferLeadership(candidates[0]);
        const deadline = Date.now() + this.node.config.tickMs * this.node.config.electionTicks * 3;
        await this.waitLeader((l) => l !== '' && l !== this.node.config.nodeId, deadline);
      }
    }
    this.closed = true;
    clearInterval(this.ticker);
    for (const [, p] of this.pending)
      p.reject(
        outcomeUnknown(
          `node ${this.node.config.nodeId} shut down before the command was applied; its outcome is unknown`,
        ),
      );
    this.pending.clear();
    this.notify();
    await this.lock.run(async () => undefined);
    await this.transport.close();
    await this.log.close();
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

  get leaderId(): string {
    return this.leader;
  }
}
