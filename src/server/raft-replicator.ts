/**
 * A cluster member's Replicator: the Raft host (raft-host.ts) wired to the real world: the system
 * clock and timers, the durable log on LevelDB, the object store, the peer transport,
 * metrics, logs, and process exit on a fatal error. The host's refusals (HostError) become domain
 * errors here and nowhere else.
 */
import { ConfChange, ConfState, Message, MessageType } from '../raft';
import { Command } from '../storage/codec';
import type { NodeMetrics } from '../metrics/metrics';
import type { ApplyResult } from '../storage/object-store';
import type { Logger } from '../util/log';
import type { Waiters } from '../util/waiters';
import type { AddressBook } from './address-book';
import type { NodeConfig } from './config';
import {
  DomainError,
  deadlineExceeded,
  definitelyNotAppended,
  noLeaderInTime,
  notLeader,
  outcomeUnknown,
  refused,
} from './domain-errors';
import type { Limits } from './limits';
import type { DurableLog } from './raft-log';
import {
  HostClock,
  HostError,
  HostEvent,
  PeerSender as HostPeerSender,
  RaftHost,
  StateMachine,
} from './raft-host';
import { ReplicaView, Replicator } from './replicator';
import { ANONYMOUS_CLIENT, type Caller } from './callers';

/** What the replicator needs from the peer transport. */
export interface PeerSender extends HostPeerSender {
  close(): Promise<void>;
}

/** What the replicator uses of the node. */
export interface RaftReplicatorDeps {
  config: Pick<
    NodeConfig,
    'nodeId' | 'tickMs' | 'electionTicks' | 'heartbeatTicks' | 'snapshotEntries'
  >;
  /** The state machine the host applies to (the object store). */
  store: StateMachine;
  clock: { nowMs(): number };
  /** The node's applied-index watch, shared with the host (its clock is `clock`'s). */
  watch: Waiters;
  addressBook: Pick<AddressBook, 'clientAddress'>;
  metrics: Pick<
    NodeMetrics,
    | 'peerRtt'
    | 'leaderChanges'
    | 'hasLeader'
    | 'isLeader'
    | 'term'
    | 'commitIndex'
    | 'proposalsCommitted'
    | 'proposalsFailed'
    | 'proposalsPending'
    | 'snapshotsReceived'
  >;
  log: Logger;
  limits: Pick<Limits, 'checkPending' | 'reserveCommand'>;
  /** No leader for an election timeout: tell those who would otherwise go silently stale. */
  onLeaderLost: () => void;
}

/**
 * The system clock and Node's timers. The ready loop runs in setImmediate: right after the I/O
 * callbacks of the current event-loop turn, so the proposals and envelopes that arrived together
 * make one Ready (one log write, one message per peer). A microtask instead (the loop at once,
 * after the code that made the Ready) measured 10-20% more CPU per commit at 16 and 64 clients
 * (smaller batches) for no latency gain at one client, where the hop costs ~0.05 ms.
 */
const systemTimers: Omit<HostClock, 'nowMs'> = {
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
  soon: (fn) => void setImmediate(fn),
};

/** A host refusal as the domain error a client's adapter maps. */
export function hostErrorToDomain(e: unknown): unknown {
  if (!(e instanceof HostError)) return e;
  switch (e.kind) {
    case 'not-leader':
      return notLeader(e.message, e.leaderHint);
    case 'outcome-unknown':
      return outcomeUnknown(e.message);
    case 'proposal-deadline':
      return noLeaderInTime(e.message);
    case 'deadline':
      return deadlineExceeded(e.message);
    case 'limit':
      return new DomainError('LIMIT_EXCEEDED', e.message, { transient: true });
    case 'invalid':
      return refused(e.message);
  }
}

/** Run a host request, mapping its refusals to domain errors. */
async function rpc<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    throw hostErrorToDomain(e);
  }
}

export class RaftReplicator implements Replicator {
  readonly host: RaftHost;
  private readonly ticker: NodeJS.Timeout;
  /** When the heartbeat to each peer now awaiting its answer was sent (performance.now ms). */
  private readonly heartbeatSentAt = new Map<string, number>();
  /** When a Raft message last arrived from each peer (the node's clock): see heardFromMs. */
  private readonly heardAt = new Map<string, number>();

  constructor(
    private readonly node: RaftReplicatorDeps,
    readonly log: DurableLog,
    seed: number,
    private readonly transport: PeerSender,
  ) {
    const config = node.config;
    this.host = new RaftHost(
      {
        nodeId: config.nodeId,
        tickMs: config.tickMs,
        electionTicks: config.electionTicks,
        heartbeatTicks: config.heartbeatTicks,
        snapshotEntries: config.snapshotEntries,
        seed,
      },
      {
        log,
        stateMachine: node.store,
        sender: {
          send: (messages) => this.send(messages),
          forward: (leaderId, command, deadlineMs, caller) =>
            this.transport.forward(leaderId, command, deadlineMs, caller).catch((e: unknown) => {
              // Certainly not appended on the leader: the host may retry it.
              if (definitelyNotAppended(e))
                throw new HostError(
                  'not-leader',
                  (e as Error).message,
                  (e as DomainError).leaderHint,
                );
              throw e;
            }),
        },
        clock: { nowMs: () => node.clock.nowMs(), ...systemTimers },
        watch: node.watch,
        events: (e) => this.record(e),
        onFatal: (e) => this.fatal(e),
        clientAddress: (id) => node.addressBook.clientAddress(id),
      },
    );
    this.ticker = setInterval(() => this.host.tick(), config.tickMs);
  }

  heardFromMs(nodeId: string): number | undefined {
    return this.heardAt.get(nodeId);
  }

  /** A message from a peer (heartbeat answers also time the round trip; its arrival is noted). */
  step(m: Message): void {
    this.heardAt.set(m.from, this.node.clock.nowMs());
    if (m.type === MessageType.HeartbeatResp) {
      const sent = this.heartbeatSentAt.get(m.from);
      if (sent !== undefined) {
        this.node.metrics.peerRtt.observe({ peer: m.from }, (performance.now() - sent) / 1000);
        this.heartbeatSentAt.delete(m.from);
      }
    }
    this.host.step(m);
  }

  private send(messages: Message[]): void {
    const now = performance.now();
    for (const m of messages)
      if (m.type === MessageType.Heartbeat && !this.heartbeatSentAt.has(m.to))
        this.heartbeatSentAt.set(m.to, now);
    this.transport.send(messages);
  }

  /** A failure to persist or apply leaves this node in an unknown state: stop rather than diverge. */
  fatal(e: unknown): never {
    this.node.log.fatal(
      { error: String(e), stack: (e as Error)?.stack },
      'raft loop failed; exiting',
    );
    process.exit(70);
  }

  private record(e: HostEvent): void {
    const { metrics, log } = this.node;
    switch (e.type) {
      case 'raft':
        log.debug({ raft: e.line });
        break;
      case 'state':
        if (e.leader !== e.previous) {
          // Counted once per new leader seen, as etcd does; losing the leader alone is not a change.
          if (e.leader) metrics.leaderChanges.inc();
          log.info(
            { term: e.term, leader: e.leader || null, previous: e.previous || null, role: e.role },
            e.leader ? 'leader changed' : 'leader lost',
          );
        }
        metrics.hasLeader.set(e.leader ? 1 : 0);
        metrics.isLeader.set(e.role === 'leader' ? 1 : 0);
        break;
      case 'hard-state':
        metrics.term.set(e.term);
        metrics.commitIndex.set(e.commit);
        break;
      case 'leader-lost':
        this.node.onLeaderLost();
        break;
      case 'proposal':
        if (e.outcome === 'committed') metrics.proposalsCommitted.inc();
        else metrics.proposalsFailed.inc();
        break;
      case 'proposals-pending':
        metrics.proposalsPending.set(e.count);
        break;
      case 'membership':
        log.info(
          {
            change: e.change,
            member: e.member,
            term: e.term,
            voters: e.conf.voters,
            learners: e.conf.learners,
            index: e.index,
          },
          'membership changed',
        );
        break;
      case 'applied':
        break;
      case 'undecodable':
        log.error({ index: e.index }, 'undecodable log entry applied as a no-op');
        break;
      case 'snapshot-installed':
        metrics.snapshotsReceived.inc();
        log.info({ index: e.index, term: e.term, from: e.from }, 'snapshot installed');
        break;
      case 'compacted':
        log.debug({ snapshot: e.snapshot, first: e.first, bytes: e.bytes }, 'log compacted');
        break;
      case 'transfer-on-shutdown':
        log.info({ to: e.to }, 'transferring leadership before shutdown');
        break;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Replicator

  async propose(
    cmd: Command,
    deadlineMs: number,
    caller: Caller = ANONYMOUS_CLIENT,
  ): Promise<ApplyResult> {
    this.node.limits.checkPending(this.host.proposals.size);
    return rpc(this.host.propose(cmd, deadlineMs, caller));
  }

  /** On the leader (a forwarded command): stamp, append and wait for it to apply here. */
  async proposeLocal(
    cmd: Command,
    deadlineMs: number,
  ): Promise<{ index: number; result: ApplyResult }> {
    const memory = this.node.limits.reserveCommand(cmd, 'a forwarded transaction');
    try {
      return await rpc(this.host.proposeLocal(cmd, deadlineMs));
    } finally {
      memory?.release();
    }
  }

  async linearizableRead(deadlineMs: number): Promise<void> {
    await rpc(this.host.linearizableRead(deadlineMs));
  }

  async proposeConfChange(cc: ConfChange, deadlineMs: number): Promise<number> {
    return rpc(this.host.proposeConfChange(cc, deadlineMs));
  }

  transferLeadership(to: string): void {
    this.host.transferLeadership(to);
  }

  waitLeader(pred: (leader: string) => boolean, deadlineMs: number): Promise<boolean> {
    return this.host.waitLeader(pred, deadlineMs);
  }

  installSnapshot(m: Message, install: () => Promise<number>): Promise<boolean> {
    return this.host.installSnapshot(m, install);
  }

  captureSnapshot(): ReturnType<RaftHost['captureSnapshot']> {
    return this.host.captureSnapshot();
  }

  reportSnapshot(id: string, ok: boolean): void {
    this.host.reportSnapshot(id, ok);
  }

  reportUnreachable(id: string): void {
    this.host.reportUnreachable(id);
  }

  compactNow(): Promise<{ snapshotIndex: number; firstIndex: number }> {
    return this.host.compactNow();
  }

  members(): ReturnType<RaftHost['members']> {
    return this.host.members();
  }

  leaderAddress(): string {
    return this.host.leaderAddress();
  }

  get leaderId(): string {
    return this.host.leaderId;
  }

  get confState(): ConfState {
    return this.host.confState;
  }

  view(): ReplicaView {
    return this.host.view();
  }

  /** Stop: a leader first hands leadership over (see RaftHost.close), then the I/O closes. */
  async close(): Promise<void> {
    if (this.host.isClosed) return;
    await this.host.close();
    clearInterval(this.ticker);
    await this.transport.close();
    await this.log.close();
  }
}
