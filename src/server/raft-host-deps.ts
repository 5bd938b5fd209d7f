/**
 * What the Raft host (raft-host.ts) receives through narrow interfaces: the durable log, the state
 * machine, the peer sender, the clock and timers, the event sink and its configuration; its
 * refusals in its own terms (HostError); and the start-up alignment of state machine and log.
 */
import { ConfState, Entry, MemoryStorage, Message, Ready } from '../raft';
import type { Command } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import type { Waiters } from '../util/waiters';
import type { Caller } from './callers';
import type { Role } from './replicator';

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
