/**
 * Deterministic simulation of whole storage nodes: each node runs the production Raft host
 * (`RaftHost` from src/server/raft-host.ts, the class `zeoraft server` runs) over the real
 * durable log (`DurableLog`) and the real `ObjectStore`, both on memory-level over a simulated
 * disk, with a simulated clock and network, all driven by one seed (see kit.ts): drops, delays,
 * reordering, duplication, partitions, crashes that lose unsynced writes, fsyncs that take
 * varying time and sometimes stall, process pauses, compaction and snapshot transfer, membership
 * changes, leadership transfers, clock drift, and a ZODB client workload.
 *
 * Checked after every applied batch: every node that applies index i applies the same entry and
 * gets the same ApplyResult; the reference model (model.ts) predicts each result. Checked for
 * every entry a node writes to its log: no node logs a different entry at an index it considers
 * committed. Checked for every linearizable read: its read index covers everything committed
 * before it was issued. Checked for every snapshot received: the store is restored from it only
 * if the host reports that the core accepted it. Checked at restart: the store never lost writes
 * the log cannot replay.
 * Checked at compaction: the snapshot's membership is the one in force at its index. Checked once
 * converged: with its leader cut off from one follower voter for a while, the leader stays leader
 * and the clients keep committing (pre-vote and check-quorum, as in production). Checked at
 * the end (liveness phase: heal, restart all, a leader commits pending work): every member's
 * database is byte-identical, the store agrees with the model object by object and transaction
 * by transaction, no transaction is left voted, every acknowledged commit is in every store.
 * Checked for every store event (what Subscribe streams and the ZEO door are fed): the last TID
 * never moves without a commit event naming it or a replaced event (a snapshot install).
 */
import { createHash } from 'node:crypto';
import type { MemoryLevel } from 'memory-level';
import {
  ConfChangeType,
  ConfState,
  Entry,
  EntryType,
  Message,
  MessageType,
  Ready,
} from '../../src/raft';
import {
  HostError,
  HostEvent,
  HostLog,
  RaftHost,
  StateMachine,
  alignStateMachine,
} from '../../src/server/raft-host';
import { DurableLog } from '../../src/server/raft-log';
import { Command, Txn, commandCodec } from '../../src/storage/codec';
import { StorageError } from '../../src/storage/errors';
import { ApplyResult, ObjectStore, validateSnapshot } from '../../src/storage/object-store';
import { Z64, hex, idCompare, idEquals, p64 } from '../../src/util/ids';
import { Mulberry32 } from '../../src/util/prng';
import {
  NetProfile,
  SimDisk,
  SimFailure,
  SimNetwork,
  SimTime,
  drawNetProfile,
  fail,
  fmtMsg,
} from './kit';
import { Model, cmdKind, objKey, resultKey } from './model';

/** Faults of the simulated environment that `--inject` can switch on (never in production code). */
export const STORAGE_SIM_FAULTS = ['no-flush', 'wipe-bootstraps'] as const;

export interface StorageSimOptions {
  /** Ticks of the fault phase. */
  safetyTicks?: number;
  /** Max ticks of the healed phase before convergence is declared failed. */
  livenessTicks?: number;
  /** Receives a readable line per event (SEED=s replay). */
  trace?: (line: string) => void;
  /**
   * A fault of the environment, to show the checker catches it: 'no-flush' makes the store's
   * flush() a no-op (a disk that ignores fsync), so a compaction can drop log entries whose
   * effects the store then loses in a crash; 'wipe-bootstraps' restarts a voter whose disks were
   * wiped as a new cluster member (`--initial-cluster-state new`) instead of a joining one.
   */
  inject?: (typeof STORAGE_SIM_FAULTS)[number];
}

export interface StorageSimStats {
  ticks: number;
  delivered: number;
  dropped: number;
  crashes: number;
  writesLost: number;
  fsyncStalls: number;
  leaders: number;
  maxTerm: number;
  applied: number;
  proposed: number;
  acked: number;
  commits: number;
  conflicts: number;
  locked: number;
  prepares: number;
  finishes: number;
  aborts: number;
  newOids: number;
  undos: number;
  packs: number;
  unknownOutcomes: number;
  /** Session commits whose retry (after an unknown outcome) the store answered from the record. */
  sessionReplays: number;
  refused: number;
  reads: number;
  snapshotsSent: number;
  snapshotsInstalled: number;
  compactions: number;
  confChangesApplied: number;
  /** Seeds ending with a voter's lost state leaving no quorum (unrecoverable without an operator). */
  quorumLost: number;
  /** Voters whose disks were wiped (restarted as `existing`: joining, no vote before a snapshot). */
  wipes: number;
  /** Processes paused (a GC pause, a stopped VM) during the fault phase. */
  pauses: number;
  /** Seeds that ran the partial-partition phase (the leader cut off from one voter). */
  partialPartitions: number;
  /** Partial-partition phases ended by the leader's check-quorum step-down in its own term. */
  partialStepDowns: number;
}

export interface StorageSimResult {
  seed: number;
  ok: boolean;
  failure?: string;
  stats: StorageSimStats;
}

const MAX_NODES = 6;
const ELECTION_TICKS = 10;
/** Simulated milliseconds per tick. */
const TICK_MS = 10;
/** Simulated wall clock at tick 0 (ms since the epoch). */
const CLOCK_BASE_MS = Date.UTC(2026, 0, 1);
/** Largest clock skew a node's clock drifts to, either way (ms). */
const CLOCK_SKEW_MAX_MS = 5_000;
const STORAGES = ['main', 'other'];
/** Objects 1..OID_SPACE per storage (plus OIDs clients allocated with newOids). */
const OID_SPACE = 6;
const CLIENTS = 4;
/** A proposal's deadline, in ticks: after it the client hears "outcome unknown". */
const OP_TIMEOUT_TICKS = 60;
/** Ticks the converged cluster runs with its leader cut off from one follower voter. */
const PARTIAL_PARTITION_TICKS = 80;
/** Bound on OIDs one client keeps from newOids for later stores. */
const CLIENT_NEW_OIDS_MAX = 8;
/** A stalled fsync takes this long at most (ms): several election timeouts. */
const FSYNC_STALL_MS_MAX = 400;

// ------------------------------------------------------------------------------------------
// Nodes, clients, messages

/** Enough of a log to say whether it holds an entry, and whether its node may vote. */
interface LogView {
  joining: boolean;
  snapIndex: number;
  terms: Map<number, number>;
}

function logView(log: DurableLog): LogView {
  const m = log.mem;
  const terms = new Map<number, number>();
  for (let i = m.firstIndex(); i <= m.lastIndex(); i++) terms.set(i, m.term(i));
  return { joining: log.joining, snapIndex: m.snapshot().index, terms };
}

interface SNode {
  id: string;
  /** The Raft log's disk and the object store's disk (two LevelDB databases, as in production). */
  logDisk: SimDisk;
  storeDisk: SimDisk;
  /** Started with an empty log that waits for a snapshot (a member added later). */
  join: boolean;
  /** The initial membership a fresh non-joining log is bootstrapped with. */
  initial: ConfState;
  state: 'down' | 'starting' | 'up';
  retired: boolean;
  /** Bumped at every start and crash: callbacks of an older incarnation never run. */
  incarnation: number;
  downUntil: number;
  /** Clock skew of this node's wall clock (ms); drifts, also backwards. */
  skewMs: number;
  /** Entries kept after a compaction (config.snapshotEntries). */
  keepEntries: number;
  // Volatile (lost by a crash):
  host?: RaftHost;
  /** The durable log: its `mem` holds only what was written (synced when the Ready said so). */
  log?: DurableLog;
  /** What the log on disk holds while the node is down (taken at the crash; empty once wiped). */
  diskLog?: LogView;
  store?: ObjectStore;
  db?: MemoryLevel<Buffer, Buffer>;
  /** Client operations proposed through this node's host and not yet answered. */
  ops: Set<ClientOp>;
  /** Peers this node is streaming a snapshot to (one at a time per peer, as PeerTransport). */
  snapshotTo: Set<string>;
  /** A log write carrying a vote is in flight. */
  voteInFlight: boolean;
  /** Snapshot installs in progress here: their senders hear "failed" if this node crashes. */
  installing: Set<{ from: string; incarnation: number }>;
  /**
   * The process is paused (a GC pause, a stopped VM) until this tick: it does not tick, its
   * timers, disk completions and queued work wait, and what reaches it waits in its buffer.
   */
  pausedUntil: number;
  /** Ticks of all its pauses so far: a proposal's answer may come that much later. */
  pausedTicks: number;
}

type OpKind = 'commit' | 'prepare' | 'finish' | 'abort' | 'newOids' | 'undo' | 'pack' | 'final';

interface ClientOp {
  id: number;
  client: Client;
  kind: OpKind;
  /** Unstamped command; the leader stamps TIDs. */
  cmd: Command;
  st: string;
  txnId?: string;
  txn?: Txn;
  at: number;
  node?: string;
  /** The proposing node's pausedTicks when proposed. */
  pausedBase?: number;
  /** The obligation this operation discharges (put back if the operation is refused). */
  ob?: Obligation;
}

interface Obligation {
  kind: 'finish' | 'abort' | 'prepare' | 'final' | 'commit';
  st: string;
  txnId: string;
  txn?: Txn;
  /** A session commit to send again, unchanged (same session and sequence number). */
  cmd?: Command;
  notBefore: number;
}

interface Client {
  id: number;
  busy?: ClientOp;
  todo: Obligation[];
  /** objKey -> the serial this client last saw. */
  known: Map<string, Buffer>;
  /** OIDs this client allocated and may store as new objects (storage, oid). */
  fresh: { st: string; oid: Buffer }[];
  /** TIDs of this client's acknowledged transactions (undo candidates). */
  tids: { st: string; tid: Buffer }[];
  /** The sequence number of this client's last session commit (its session: `client<id>`). */
  seq: number;
}

type NetItem =
  | { kind: 'msg'; m: Message }
  | { kind: 'snap'; m: Message; chunks: Buffer[]; incarnation: number }
  | { kind: 'report'; node: string; incarnation: number; peer: string; ok: boolean };

const dec = new TextDecoder();

// ------------------------------------------------------------------------------------------

export async function runStorageSeed(
  seed: number,
  opts: StorageSimOptions = {},
): Promise<StorageSimResult> {
  const sim = new StorageSim(seed, opts);
  try {
    await sim.run();
    return { seed, ok: true, stats: sim.stats };
  } catch (e) {
    const msg =
      e instanceof SimFailure ? e.message : `exception: ${(e as Error).stack ?? String(e)}`;
    return { seed, ok: false, failure: `t=${sim.now}: ${msg}`, stats: sim.stats };
  }
}

class StorageSim {
  readonly rng: Mulberry32;
  now = 0;
  readonly stats: StorageSimStats = {
    ticks: 0,
    delivered: 0,
    dropped: 0,
    crashes: 0,
    writesLost: 0,
    fsyncStalls: 0,
    leaders: 0,
    maxTerm: 0,
    applied: 0,
    proposed: 0,
    acked: 0,
    commits: 0,
    conflicts: 0,
    locked: 0,
    prepares: 0,
    finishes: 0,
    aborts: 0,
    newOids: 0,
    undos: 0,
    packs: 0,
    unknownOutcomes: 0,
    sessionReplays: 0,
    refused: 0,
    reads: 0,
    snapshotsSent: 0,
    snapshotsInstalled: 0,
    compactions: 0,
    confChangesApplied: 0,
    quorumLost: 0,
    wipes: 0,
    pauses: 0,
    partialPartitions: 0,
    partialStepDowns: 0,
  };
  private readonly time = new SimTime();
  private readonly nodes = new Map<string, SNode>();
  private nextNodeNo = 1;
  private readonly net: SimNetwork<NetItem>;
  private faults = true;
  private readonly clients: Client[] = [];
  private nextOpId = 1;
  /** The first failure raised inside a host callback (onFatal, a check in a decorator). */
  private failure: unknown;

  // Per-seed fault profile.
  private readonly netProfile: NetProfile;
  private readonly crashRate: number;
  private readonly leaderCrashRate: number;
  /** Crash a node while its Raft log has a write in flight (between send and fsync). */
  private readonly midWriteCrashRate: number;
  /** Chance that power fails under a node while it writes a vote it grants. */
  private readonly voteCrashRate: number;
  /** Power outages: every node crashes at once, losing unsynced writes. */
  private readonly outageRate: number;
  private readonly powerLossRate: number;
  private readonly fsyncMsMax: number;
  private readonly fsyncStallRate: number;
  private readonly opRate: number;
  private readonly readRate: number;
  private readonly maxSizePerMsg: number;
  /** Wiped disks come from their own stream, so seeds without wipes replay as before. */
  private readonly wipeRng: Mulberry32;
  private readonly wipeRate: number;
  /** Pauses are drawn from their own generator: the other faults keep their schedule. */
  private readonly pauseRng: Mulberry32;
  private readonly pauseRate: number;
  /** Clients keep working without faults (the partial-partition phase). */
  private workload = false;

  // Checker state.
  private readonly leaderOfTerm = new Map<number, string>();
  /** index -> the entry ("term|kind|data") and the result the first node to apply it got. */
  private readonly appliedAt = new Map<
    number,
    { entry: string; result: string; cmd: Command; r: ApplyResult }
  >();
  /** index -> membership after a conf change applied there. */
  private readonly confAt = new Map<number, ConfState>();
  private readonly model = new Model();
  /** The next index the model has to process (index 1 is the bootstrap snapshot). */
  private modelNext = 2;
  /** Acknowledged commits (TID hex -> index), to find in every store at the end. */
  private readonly acked = new Map<string, number>();
  /** txn keys whose prepare was acknowledged as successful. */
  private readonly ackedPrepares = new Set<string>();
  private readonly retireAt = new Map<string, { at: number; index: number }>();
  /** Nodes that discarded their store's state (an interrupted snapshot install) and rejoined. */
  private readonly lostState = new Set<string>();
  /** Log index of the last membership change proposed (wipes wait until every voter is past it). */
  private confProposedIndex = 0;
  /** Members whose removal was proposed (it may still be applied). */
  private readonly removalsProposed = new Set<string>();
  /** Voters wiped and not yet caught up (they cannot vote). */
  private readonly wiped = new Set<string>();
  /** The newest entry applied anywhere (so committed). */
  private newestApplied: { index: number; term: number } | undefined;
  /** Highest commit index any node's core has reached. */
  private maxCommitSeen = 0;

  constructor(
    readonly seed: number,
    private readonly opts: StorageSimOptions,
  ) {
    this.rng = new Mulberry32(seed);
    const r = this.rng;
    this.netProfile = drawNetProfile(r);
    this.net = new SimNetwork<NetItem>(r, this.netProfile, (line) => this.trace(line));
    this.crashRate = r.nextFloat() * 0.008;
    this.leaderCrashRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.02 : 0;
    this.midWriteCrashRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.03 : 0;
    this.outageRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.006 : 0;
    this.voteCrashRate = r.nextFloat() < 0.5 ? 0.2 + r.nextFloat() * 0.4 : 0;
    this.powerLossRate = r.nextFloat();
    this.fsyncMsMax = [0, 2, 8, 20, 40][r.nextInt(5)];
    this.fsyncStallRate = r.nextFloat() < 0.3 ? r.nextFloat() * 0.02 : 0;
    this.opRate = 0.1 + r.nextFloat() * 0.4;
    this.readRate = r.nextFloat() * 0.3;
    this.maxSizePerMsg = [1, 64, 1024, 1 << 20][r.nextInt(4)];
    this.wipeRng = new Mulberry32((seed * 2654435761) >>> 0 || 1);
    this.wipeRate = this.wipeRng.nextFloat() < 0.5 ? this.wipeRng.nextFloat() * 0.008 : 0;
    this.pauseRng = new Mulberry32((seed * 2246822519) >>> 0 || 1);
    this.pauseRate = this.pauseRng.nextFloat() < 0.5 ? 0.002 + this.pauseRng.nextFloat() * 0.01 : 0;
    const n = r.nextFloat() < 0.5 ? 3 : 3 + r.nextInt(3);
    const voters: string[] = [];
    for (let i = 0; i < n; i++) voters.push(`n${this.nextNodeNo++}`);
    for (const id of voters) this.nodes.set(id, this.newNode(id, false, voters));
    this.confAt.set(1, { voters: [...voters], learners: [] });
    for (let i = 0; i < CLIENTS; i++)
      this.clients.push({ id: i, todo: [], known: new Map(), fresh: [], tids: [], seq: 0 });
    const p = this.netProfile;
    this.trace(
      `seed ${seed}: ${n} voters, drop=${p.dropRate.toFixed(3)} dup=${p.dupRate.toFixed(3)} delay<=${p.maxDelay} ` +
        `partition=${p.partitionRate.toFixed(3)} crash=${this.crashRate.toFixed(4)} leaderCrash=${this.leaderCrashRate.toFixed(3)} ` +
        `midWriteCrash=${this.midWriteCrashRate.toFixed(3)} outage=${this.outageRate.toFixed(4)} voteCrash=${this.voteCrashRate.toFixed(2)} powerLoss=${this.powerLossRate.toFixed(2)} ` +
        `fsync<=${this.fsyncMsMax}ms stall=${this.fsyncStallRate.toFixed(3)} ops=${this.opRate.toFixed(2)} ` +
        `reads=${this.readRate.toFixed(2)} maxMsg=${this.maxSizePerMsg} wipe=${this.wipeRate.toFixed(4)} pause=${this.pauseRate.toFixed(3)}`,
    );
  }

  private trace(line: string): void {
    if (this.opts.trace) this.opts.trace(`[t=${this.now}] ${line}`);
  }

  private newNode(id: string, join: boolean, voters: string[]): SNode {
    const timing = {
      syncMs: () => this.fsyncMs(),
      after: (ms: number, fn: () => void) =>
        void this.time.at(this.time.nowMs + ms, this.unlessPaused(node, fn)),
    };
    const node: SNode = {
      id,
      logDisk: new SimDisk(timing),
      storeDisk: new SimDisk(timing),
      join,
      initial: { voters: [...voters], learners: [] },
      state: 'down',
      retired: false,
      incarnation: 0,
      downUntil: 0,
      skewMs: this.rng.nextInt(2 * CLOCK_SKEW_MAX_MS) - CLOCK_SKEW_MAX_MS,
      keepEntries: 2 + this.rng.nextInt(20),
      ops: new Set(),
      snapshotTo: new Set(),
      installing: new Set(),
      voteInFlight: false,
      pausedUntil: 0,
      pausedTicks: 0,
    };
    return node;
  }

  private paused(n: SNode): boolean {
    return this.now < n.pausedUntil;
  }

  /** fn, run when due unless the node is paused then: it then runs when the pause ends. */
  private unlessPaused(n: SNode, fn: () => void): () => void {
    const run = (): void => {
      if (this.paused(n)) this.time.at(n.pausedUntil * TICK_MS, run);
      else fn();
    };
    return run;
  }

  private pause(n: SNode): void {
    n.pausedUntil = this.now + 1 + this.pauseRng.nextInt(4 * ELECTION_TICKS);
    n.pausedTicks += n.pausedUntil - this.now;
    this.stats.pauses++;
    this.trace(`PAUSE ${n.id} until t=${n.pausedUntil}`);
  }

  /** How long the next fsync takes: usually up to the seed's bound, now and then a stall. */
  private fsyncMs(): number {
    const r = this.rng;
    if (this.faults && r.nextFloat() < this.fsyncStallRate) {
      this.stats.fsyncStalls++;
      return 2 * ELECTION_TICKS * TICK_MS + r.nextInt(FSYNC_STALL_MS_MAX);
    }
    return r.nextInt(this.fsyncMsMax + 1);
  }

  private clockMs(n: SNode): number {
    return CLOCK_BASE_MS + this.time.nowMs + n.skewMs;
  }

  private up(n: SNode): boolean {
    return n.state === 'up';
  }

  /** Start (or restart) a node from its disks, as `zeoraft server` does (cluster-node.ts). */
  private start(n: SNode): void {
    n.incarnation++;
    n.state = 'starting';
    n.ops = new Set();
    n.snapshotTo = new Set();
    n.installing = new Set();
    const inc = n.incarnation;
    this.boot(n, inc).catch((e: unknown) => {
      if (n.incarnation === inc) this.failure ??= e;
    });
  }

  /**
   * The contract the streams rely on: a store's last TID advances only through commit events,
   * in increasing TID order, or through a replaced event (then streams catch up or reset).
   */
  private watchStreamEvents(n: SNode, store: ObjectStore): void {
    let last = store.lastTid;
    store.onCommit((ev) => {
      if (idCompare(ev.tid, last) <= 0)
        fail(`${n.id}: commit event ${hex(ev.tid)} not after the last one, ${hex(last)}`);
      last = ev.tid;
    });
    store.onReplaced((ev) => (last = ev.lastTid));
    store.onApplied(() => {
      if (!idEquals(store.lastTid, last))
        fail(
          `${n.id}: last TID moved to ${hex(store.lastTid)} without a commit or replaced event (at ${hex(last)})`,
        );
    });
  }

  private async boot(n: SNode, inc: number): Promise<void> {
    const alive = (): boolean => n.incarnation === inc;
    const db = await n.storeDisk.open();
    // Half the nodes keep almost no current serials in memory, so their conflict checks go to
    // the presence filter and the disk (current-cache.ts) rather than the cache.
    const store = await ObjectStore.openOn(db, {
      sync: false,
      currentCacheEntries: n.keepEntries % 2 === 0 ? 4 : undefined,
    });
    if (!alive()) return;
    // As cluster-node.ts: an interrupted snapshot install was discarded; the log rejoins.
    const rejoin = store.interruptedInstall;
    if (rejoin) {
      this.trace(`${n.id} discarded an interrupted snapshot install: rejoining`);
      this.lostState.add(n.id);
    }
    const logDb = await n.logDisk.open();
    const log = await DurableLog.openOn(logDb, {
      initial: n.initial,
      join: n.join || rejoin,
      fsync: true,
      rejoin,
    });
    if (!alive()) return;
    if (rejoin) await store.installRecovered();
    if (!alive()) return;
    this.watchStreamEvents(n, store);
    const problem = await alignStateMachine(log, store);
    if (!alive()) return;
    if (problem)
      fail(`${n.id} restarted and ${problem}: applied writes were lost that the log cannot replay`);
    const host = new RaftHost(
      {
        nodeId: n.id,
        tickMs: TICK_MS,
        electionTicks: ELECTION_TICKS,
        heartbeatTicks: 1,
        snapshotEntries: n.keepEntries,
        seed: 1 + this.rng.nextInt(0x7ffffffe),
        maxSizePerMsg: this.maxSizePerMsg,
        maxInflightMsgs: 1 + this.rng.nextInt(8),
        maxUncommittedBytes: 0,
      },
      {
        log: this.checkedLog(n, log),
        stateMachine: this.checkedStore(store),
        sender: {
          send: (messages) => {
            for (const m of messages) this.send(n, inc, m);
          },
          forward: () =>
            Promise.reject(
              new HostError('not-leader', 'the simulated clients propose on the leader'),
            ),
        },
        clock: {
          nowMs: () => this.clockMs(n),
          after: (ms, fn) =>
            this.time.at(
              this.time.nowMs + ms,
              this.unlessPaused(n, () => {
                if (alive()) fn();
              }),
            ),
          soon: (fn) =>
            this.time.soon(
              this.unlessPaused(n, () => {
                if (alive()) fn();
              }),
            ),
        },
        events: (e) => {
          if (alive()) this.onEvent(n, e);
        },
        onFatal: (e) => {
          if (alive()) this.failure ??= e;
        },
        clientAddress: (id) => id,
      },
    );
    n.host = host;
    n.log = log;
    n.store = store;
    n.db = db;
    n.state = 'up';
    this.trace(
      `UP ${n.id} (log snapshot ${log.mem.snapshot().index}, store ${store.appliedIndex})`,
    );
  }

  /** The durable log as the host sees it, with the checks run on what it is asked to write. */
  private checkedLog(n: SNode, log: DurableLog): HostLog {
    return {
      get mem() {
        return log.mem;
      },
      get joining() {
        return log.joining;
      },
      get entryBytes() {
        return log.entryBytes;
      },
      firstIndexWithin: (maxBytes) => log.firstIndexWithin(maxBytes),
      persist: async (rd) => {
        this.checkNewEntries(n, rd);
        const before = log.mem.hardState();
        const vote =
          rd.hardState !== undefined &&
          rd.hardState.vote !== '' &&
          rd.hardState.vote !== n.id &&
          (rd.hardState.vote !== before.vote || rd.hardState.term !== before.term);
        if (vote) {
          n.voteInFlight = true;
          if (this.faults && this.rng.nextFloat() < this.voteCrashRate) {
            // Power fails while the vote is being written (before its fsync completes).
            const inc = n.incarnation;
            this.time.at(this.time.nowMs, () => {
              if (n.incarnation !== inc || !n.voteInFlight) return;
              this.crash(n, 'vote write in flight', true);
              n.downUntil = this.now + 1 + this.rng.nextInt(2);
            });
          }
        }
        await log.persist(rd);
        if (vote) n.voteInFlight = false;
      },
      compact: async (snapIndex, conf, compactIndex) => {
        // The snapshot's membership must be the one in force at its index.
        const want = this.confAtIndex(snapIndex);
        if (JSON.stringify(want) !== JSON.stringify(conf))
          fail(
            `${n.id} compacts at ${snapIndex} with membership ${JSON.stringify(conf)}, in force there: ${JSON.stringify(want)}`,
          );
        await log.compact(snapIndex, conf, compactIndex);
        this.stats.compactions++;
        this.trace(`COMPACT ${n.id} snapshot@${snapIndex} first=${log.mem.firstIndex()}`);
      },
    };
  }

  /** The store as the host sees it (with the environment fault --inject no-flush). */
  private checkedStore(store: ObjectStore): StateMachine {
    const noFlush = this.opts.inject === 'no-flush';
    return {
      get appliedIndex() {
        return store.appliedIndex;
      },
      applyBatch: (items) => store.applyBatch(items),
      flush: () => (noFlush ? Promise.resolve() : store.flush()),
      snapshot: () => store.snapshot(),
    };
  }

  private onEvent(n: SNode, e: HostEvent): void {
    switch (e.type) {
      case 'state':
        this.trace(`${n.id} is ${e.role} (leader '${e.leader}', term ${e.term})`);
        break;
      case 'applied':
        for (const entry of e.entries) {
          const r = e.results.get(entry.index);
          if (r)
            this.checkApplied(
              n,
              entry,
              entry.type === EntryType.Normal ? decodeEntry(entry) : { noop: {} },
              r,
            );
        }
        {
          const last = e.entries[e.entries.length - 1].index;
          if (last > this.stats.applied) this.stats.applied = last;
        }
        this.runModel();
        break;
      case 'membership': {
        const seen = this.confAt.get(e.index);
        if (!seen) {
          this.confAt.set(e.index, e.conf);
          this.stats.confChangesApplied++;
          this.trace(
            `${n.id} APPLY conf change ${e.change} ${e.member} -> voters=${e.conf.voters} learners=${e.conf.learners}`,
          );
        } else if (JSON.stringify(seen) !== JSON.stringify(e.conf)) {
          fail(`${n.id}: membership after ${e.index} differs from another node's`);
        }
        if (e.change === ConfChangeType[ConfChangeType.RemoveNode] && !this.retireAt.has(e.member))
          this.retireAt.set(e.member, { at: this.now + 30, index: e.index });
        break;
      }
      case 'snapshot-installed':
        this.lostState.delete(n.id);
        this.stats.snapshotsInstalled++;
        this.trace(`${n.id} INSTALL snapshot ${e.index}/${e.term} from ${e.from}`);
        break;
      case 'undecodable':
        fail(`${n.id}: undecodable entry at ${e.index}`);
        break;
      default:
        break;
    }
  }

  /**
   * A crash. A process crash keeps every write the OS got; a power loss (`power`, or by the
   * seed's rate) keeps only a prefix of the writes not yet fsynced, often none of them.
   */
  private crash(n: SNode, why: string, power = this.rng.nextFloat() < this.powerLossRate): void {
    let lost = 0;
    for (const disk of [n.logDisk, n.storeDisk]) {
      const keep = !power
        ? disk.unsynced
        : this.rng.nextFloat() < 0.5
          ? 0
          : this.rng.nextInt(disk.unsynced + 1);
      lost += disk.unsynced - keep;
      disk.crash(keep);
    }
    this.trace(`CRASH ${n.id} (${why})${lost ? ` losing ${lost} unsynced writes` : ''}`);
    this.stats.writesLost += lost;
    n.incarnation++;
    n.state = 'down';
    n.pausedUntil = 0;
    n.voteInFlight = false;
    n.host = undefined;
    if (n.log) n.diskLog = logView(n.log);
    n.log = undefined;
    n.store = undefined;
    n.db = undefined;
    for (const op of n.ops) this.unknown(op, `${n.id} crashed`);
    n.ops = new Set();
    for (const i of n.installing)
      this.net.schedule(this.now + this.net.delay(this.faults), {
        kind: 'report',
        node: i.from,
        incarnation: i.incarnation,
        peer: n.id,
        ok: false,
      });
    n.installing = new Set();
    n.snapshotTo = new Set();
    this.stats.crashes++;
  }

  async run(): Promise<void> {
    const safetyTicks = this.opts.safetyTicks ?? 300;
    const livenessTicks = this.opts.livenessTicks ?? 600;
    for (const n of this.nodes.values()) this.start(n);
    for (let i = 0; i < safetyTicks; i++) await this.step();
    this.faults = false;
    this.net.heal();
    this.trace('=== HEAL: liveness phase ===');
    for (const n of this.nodes.values()) if (n.state === 'down' && !n.retired) this.start(n);
    this.clients[0].todo.push({ kind: 'final', st: STORAGES[0], txnId: '', notBefore: 0 });
    let partialDone = false;
    for (let i = 0; i < livenessTicks; i++) {
      await this.step();
      const leader = this.leader();
      if (leader && this.converged(leader)) {
        this.trace(`converged after ${i} liveness ticks`);
        if (!partialDone) {
          partialDone = true;
          if (await this.partialPartition(leader)) {
            i = 0; // converge again, the cut follower catching up
            continue;
          }
        }
        await this.finalChecks(leader);
        return;
      }
    }
    // A voter whose store discarded an interrupted snapshot install rejoins without its log and
    // does not vote until a leader sends it a snapshot (cluster-node.ts): if the voters left
    // cannot form a quorum without it, no leader can exist until an operator steps in.
    const conf = this.confAtIndex(Number.MAX_SAFE_INTEGER)!;
    const voting = conf.voters.filter((v) => !this.lostState.has(v)).length;
    if (voting < Math.floor(conf.voters.length / 2) + 1) {
      this.stats.quorumLost++;
      this.trace(
        `no quorum can form: voters ${conf.voters}, without state: ${[...this.lostState]}`,
      );
      return;
    }
    const l = this.leader();
    fail(
      `liveness: no convergence within ${livenessTicks} ticks after healing (leader=${l?.id ?? 'none'}, ` +
        `clients=${this.clients.map((c) => `${c.busy ? `busy:${c.busy.kind}` : 'idle'}/${c.todo.length}`).join(' ')}, ` +
        `nodes=${[...this.nodes.values()]
          .filter((n) => this.up(n))
          .map((n) => {
            const s = n.host!.raw.basicStatus();
            return `${n.id}:${s.role}/t${s.term}/c${s.commit}/p${n.host!.processedIndex}/s${n.store!.appliedIndex}`;
          })
          .join(' ')}${l ? `, progress=${JSON.stringify(l.host!.raw.status().progress)}` : ''})`,
    );
  }

  /**
   * Liveness under a partial partition, with the production host's pre-vote and check-quorum: the
   * converged cluster's leader loses its links to one follower voter while the clients keep
   * committing. The cut follower must not depose a leader that still hears from a quorum (nor
   * may a removed member still running), and commits must go on. False when the membership has
   * fewer than three voters or the leader is not one.
   */
  private async partialPartition(leader: SNode): Promise<boolean> {
    const s0 = leader.host!.raw.status();
    const voters = s0.conf.voters;
    if (voters.length < 3 || !voters.includes(leader.id)) return false;
    const others = voters.filter((v) => v !== leader.id);
    const cutId = others[this.pauseRng.nextInt(others.length)];
    this.stats.partialPartitions++;
    this.trace(`=== CUT ${leader.id} <-> ${cutId}: partial partition, leader must stay ===`);
    // Connections reset at the cut: nothing sent before it arrives during the phase (a pre-vote
    // grant held up long answering an older campaign could let the cut follower win, as in etcd;
    // the phase checks the steady state). A dropped snapshot transfer fails at its sender.
    this.net.dropInFlight((item) => {
      if (item.kind === 'snap')
        this.net.schedule(this.now + 1, {
          kind: 'report',
          node: item.m.from,
          incarnation: item.incarnation,
          peer: item.m.to,
          ok: false,
        });
    });
    this.net.cut.add(`${leader.id}>${cutId}`);
    this.net.cut.add(`${cutId}>${leader.id}`);
    const acked = this.stats.acked;
    this.workload = true;
    for (let i = 0; i < PARTIAL_PARTITION_TICKS; i++) {
      await this.step();
      const s = leader.host?.raw.basicStatus();
      if (s && s.role !== 'leader' && s.term === s0.term) {
        // Check-quorum stepped it down in its own term: it heard from no majority for an election
        // timeout, which its own host can cause (a compaction's fsyncs hold the ready loop, and
        // the heartbeats wait). Nobody deposed it; the phase ends and the cluster converges again.
        this.stats.partialStepDowns++;
        this.trace(`${leader.id} stepped down in term ${s0.term} (check-quorum): phase ends`);
        this.workload = false;
        this.net.cut.clear();
        return true;
      }
      if (!s || s.role !== 'leader' || s.term !== s0.term)
        fail(
          `liveness: leader ${leader.id} of term ${s0.term}, cut off from ${cutId} only, lost its leadership (now ${s?.role ?? 'down'} in term ${s?.term ?? '-'})`,
        );
    }
    this.workload = false;
    if (this.stats.acked === acked)
      fail(
        `liveness: leader ${leader.id} cut off from ${cutId} only committed nothing for the clients in ${PARTIAL_PARTITION_TICKS} ticks`,
      );
    this.net.cut.clear();
    return true;
  }

  private leader(): SNode | undefined {
    let best: SNode | undefined;
    let bestTerm = -1;
    for (const n of this.nodes.values()) {
      if (!this.up(n)) continue;
      const s = n.host!.raw.basicStatus();
      if (s.role === 'leader' && s.term > bestTerm) {
        best = n;
        bestTerm = s.term;
      }
    }
    return best;
  }

  private converged(leader: SNode): boolean {
    if (this.clients.some((c) => c.busy || c.todo.length > 0)) return false;
    const s = leader.host!.raw.basicStatus();
    // A just-elected leader's commit index can lag what is committed: trust it only once an
    // entry of its own term is committed.
    if (leader.host!.raw.termAt(s.commit) !== s.term) return false;
    if (this.modelNext <= s.commit) return false;
    const conf = leader.host!.raw.status().conf;
    for (const id of [...conf.voters, ...conf.learners]) {
      const n = this.nodes.get(id);
      if (!n || !this.up(n) || !n.host!.idle || n.logDisk.inFlight + n.storeDisk.inFlight > 0)
        return false;
      if (n.host!.processedIndex < s.commit || n.store!.appliedIndex < s.commit) return false;
    }
    return true;
  }

  private async step(): Promise<void> {
    this.now++;
    this.time.nowMs = this.now * TICK_MS;
    this.stats.ticks++;
    this.stats.delivered = this.net.delivered;
    this.stats.dropped = this.net.dropped;
    if (this.faults) this.injectFaults();
    this.clientActions();
    this.clientReads();
    for (const n of this.nodes.values()) {
      if (!this.up(n) || this.paused(n)) continue;
      if (this.faults && this.rng.nextFloat() < 0.02) continue; // a skipped tick
      if (this.faults && this.rng.nextFloat() < 0.01) {
        // Clock drift, also backwards: TIDs must still increase.
        n.skewMs = Math.max(
          -CLOCK_SKEW_MAX_MS,
          Math.min(CLOCK_SKEW_MAX_MS, n.skewMs + this.rng.nextInt(4001) - 2000),
        );
      }
      n.host!.tick();
    }
    this.deliver();
    await this.time.settle();
    if (this.failure !== undefined) throw this.failure;
    this.check();
  }

  /**
   * A voter's disks are wiped (a replaced drive, an operator's rm -rf) and it comes back the way
   * cluster-node.ts brings back a member with an empty data directory told `existing`: joining,
   * not voting before a leader sent it a snapshot. Only while the other voters with their state
   * still form a majority (else nothing could be elected until an operator steps in).
   */
  /** Forget wiped nodes that caught up (they vote again). */
  private refreshWiped(): void {
    for (const id of this.wiped) {
      const m = this.nodes.get(id)!;
      if (m.retired || (this.up(m) && !m.log!.joining)) this.wiped.delete(id);
    }
  }

  private wipeVoter(): void {
    const conf = this.confAtIndex(Number.MAX_SAFE_INTEGER)!;
    this.refreshWiped();
    // Only while the membership is settled: every voter up and using the newest configuration,
    // no removal pending (a lagging voter still counting a retired member needs more votes).
    const same = (a: string[], b: string[]): boolean =>
      a.length === b.length && a.every((x) => b.includes(x));
    for (const id of conf.voters) {
      const m = this.nodes.get(id)!;
      if (!this.up(m) || !same(m.host!.confState.voters, conf.voters)) return;
      if (m.host!.processedIndex < this.confProposedIndex) return; // a change may be in flight
      if (this.removalsProposed.has(id)) return;
    }
    // Joining voters (wiped, or learners promoted before they caught up) cannot vote either.
    const joining = (id: string): boolean => {
      const m = this.nodes.get(id)!;
      return m.log ? m.log.joining : (m.diskLog?.joining ?? m.join);
    };
    const intact = conf.voters.filter(
      (v) => !this.lostState.has(v) && !this.wiped.has(v) && !joining(v),
    );
    if (intact.length - 1 < Math.floor(conf.voters.length / 2) + 1) return;
    // Most often the voter with the longest log: the one whose acknowledgements a commit is most
    // likely to have needed, so that its loss leaves committed entries on a minority.
    const last = (id: string): number => this.nodes.get(id)!.log?.mem.lastIndex() ?? -1;
    const id =
      this.wipeRng.nextFloat() < 0.7
        ? intact.reduce((a, b) => (last(b) > last(a) ? b : a))
        : intact[this.wipeRng.nextInt(intact.length)];
    const n = this.nodes.get(id)!;
    if (n.retired || n.state === 'starting') return;
    if (n.state === 'up') this.crash(n, 'disk replaced', true);
    n.logDisk.wipe();
    n.storeDisk.wipe();
    n.join = this.opts.inject !== 'wipe-bootstraps';
    n.diskLog = { joining: n.join, snapIndex: 0, terms: new Map() };
    this.wiped.add(n.id);
    this.stats.wipes++;
    this.trace(`WIPE ${n.id}: restarts ${n.join ? 'joining' : 'bootstrapping a new log'}`);
    n.downUntil = this.now + 1 + this.wipeRng.nextInt(20);
  }

  private injectFaults(): void {
    const r = this.rng;
    for (const n of this.nodes.values()) {
      if (n.retired) continue;
      if (this.up(n) && r.nextFloat() < this.crashRate) {
        this.crash(n, 'random');
        n.downUntil = this.now + 1 + r.nextInt(40);
      } else if (n.state === 'down' && this.now >= n.downUntil) {
        this.trace(`RESTART ${n.id}`);
        this.start(n);
      }
    }
    const leader = this.leader();
    if (leader && r.nextFloat() < this.leaderCrashRate) {
      this.crash(leader, 'leader');
      leader.downUntil = this.now + 1 + r.nextInt(25);
    }
    if (r.nextFloat() < this.midWriteCrashRate) {
      // Power fails under a node whose log write is in flight; often one that is writing a vote.
      const writing = [...this.nodes.values()].filter((n) => this.up(n) && n.logDisk.inFlight > 0);
      const voting = writing.filter((n) => n.voteInFlight);
      const pool = voting.length && r.nextFloat() < 0.8 ? voting : writing;
      if (pool.length) {
        const n = pool[r.nextInt(pool.length)];
        const voting = n.voteInFlight;
        this.crash(n, voting ? 'vote write in flight' : 'log write in flight', true);
        // Back before the election is over: vote requests still in flight reach the restarted node.
        n.downUntil = this.now + 1 + r.nextInt(voting ? 2 : 25);
      }
    }
    if (this.wipeRng.nextFloat() < this.wipeRate) this.wipeVoter();
    if (r.nextFloat() < this.outageRate) {
      // A power outage takes down every node at once (a rack, a site).
      this.trace('POWER OUTAGE');
      for (const n of this.nodes.values()) {
        if (n.state === 'down') continue;
        this.crash(n, 'outage', true);
        n.downUntil = this.now + 1 + r.nextInt(10);
      }
    }
    for (const [id, { at, index }] of this.retireAt) {
      const n = this.nodes.get(id)!;
      const acknowledged = [...this.nodes.values()].some(
        (m) =>
          m.id !== id &&
          this.up(m) &&
          m.host!.processedIndex >= index &&
          m.host!.confState.voters.includes(m.id),
      );
      if (this.now >= at && !n.retired && acknowledged) {
        this.trace(`RETIRE ${id} (removed from the cluster)`);
        if (n.state !== 'down') this.crash(n, 'retired');
        n.retired = true;
      }
    }
    const live = this.leader();
    this.net.partitionStep([...this.nodes.keys()], live?.id);
    if (this.pauseRate > 0 && this.pauseRng.nextFloat() < this.pauseRate) {
      // Most often the leader: a deposed leader resuming is where stale reads and late
      // proposals hide.
      const ups = [...this.nodes.values()].filter((n) => this.up(n) && !this.paused(n));
      const n =
        live && !this.paused(live) && this.pauseRng.nextFloat() < 0.6
          ? live
          : ups[this.pauseRng.nextInt(Math.max(1, ups.length))];
      if (n) this.pause(n);
    }
    if (r.nextFloat() < 0.03) {
      const ups = [...this.nodes.values()].filter((n) => this.up(n) && !this.paused(n));
      if (ups.length) {
        const n = ups[r.nextInt(ups.length)];
        n.host!.compactNow().catch((e: unknown) => (this.failure ??= e));
      }
    }
    if (live && !this.paused(live) && r.nextFloat() < 0.012) this.confChange(live);
    if (live && !this.paused(live) && r.nextFloat() < 0.004) {
      const voters = live.host!.raw.status().conf.voters.filter((v) => v !== live.id);
      if (voters.length > 0) {
        const to = voters[r.nextInt(voters.length)];
        this.trace(`TRANSFER leadership ${live.id} -> ${to}`);
        live.host!.transferLeadership(to);
      }
    }
  }

  private confChange(leader: SNode): void {
    const r = this.rng;
    const host = leader.host!;
    const conf = host.raw.status().conf;
    const members = conf.voters.length + conf.learners.length;
    const choice = r.nextInt(3);
    let cc: { type: ConfChangeType; node: string } | undefined;
    let fresh = false;
    if (choice === 0 && this.nextNodeNo <= MAX_NODES && members < 6) {
      cc = { type: ConfChangeType.AddLearner, node: `n${this.nextNodeNo}` };
      fresh = true;
    } else if (choice === 1 && conf.learners.length > 0) {
      cc = {
        type: ConfChangeType.PromoteLearner,
        node: conf.learners[r.nextInt(conf.learners.length)],
      };
    } else if (choice === 2 && members > 2) {
      // No voter is removed while a wiped one catches up (it cannot vote yet): the rest could
      // not elect anyone.
      this.refreshWiped();
      const all = [
        ...(conf.voters.length >= 3 && this.wiped.size === 0 ? conf.voters : []),
        ...conf.learners,
      ];
      if (all.length > 0)
        cc = { type: ConfChangeType.RemoveNode, node: all[r.nextInt(all.length)] };
    }
    if (!cc) return;
    const before = host.raw.basicStatus().lastIndex;
    host
      .proposeConfChange(cc, this.clockMs(leader) + OP_TIMEOUT_TICKS * TICK_MS)
      .catch((e: unknown) => {
        if (!(e instanceof HostError)) this.failure ??= e;
      });
    if (host.raw.basicStatus().lastIndex === before) return; // refused by the core
    this.trace(`PROPOSE conf change ${ConfChangeType[cc.type]} ${cc.node} at ${leader.id}`);
    if (cc.type === ConfChangeType.RemoveNode) this.removalsProposed.add(cc.node);
    this.confProposedIndex = host.raw.basicStatus().lastIndex;
    if (fresh) {
      this.nextNodeNo++;
      // A joining node starts with empty disks and waits for a snapshot from the leader.
      const n = this.newNode(cc.node, true, []);
      this.nodes.set(n.id, n);
      n.downUntil = this.now; // started by injectFaults (or at heal)
    }
  }

  // ----------------------------------------------------------------------------------------
  // Network (the peer transport's part)

  private send(from: SNode, inc: number, m: Message): void {
    if (from.incarnation !== inc) return;
    if (m.type === MessageType.Snapshot) {
      this.sendSnapshot(from, inc, m).catch((e: unknown) => (this.failure ??= e));
      return;
    }
    this.net.send(this.now, from.id, m.to, { kind: 'msg', m }, this.faults);
  }

  /**
   * As PeerTransport.sendSnapshot: one transfer per peer at a time; the data is the store's own
   * consistent snapshot and the message's metadata is replaced by what describes that data; the
   * outcome is reported to the core once the receiver answers.
   */
  private async sendSnapshot(n: SNode, inc: number, m: Message): Promise<void> {
    if (n.snapshotTo.has(m.to)) return;
    n.snapshotTo.add(m.to);
    const cap = await n.host!.captureSnapshot();
    if (n.incarnation !== inc) return;
    const report = (ok: boolean): void =>
      this.net.schedule(this.now + this.net.delay(this.faults), {
        kind: 'report',
        node: n.id,
        incarnation: inc,
        peer: m.to,
        ok,
      });
    if (!cap) return report(false);
    const chunks: Buffer[] = [];
    for await (const c of cap.chunks) chunks.push(c);
    if (n.incarnation !== inc) return;
    const msg = { ...m, snapshot: cap.meta };
    if (
      !this.net.send(
        this.now,
        n.id,
        m.to,
        { kind: 'snap', m: msg, chunks, incarnation: inc },
        this.faults,
      )
    )
      return report(false);
    this.stats.snapshotsSent++;
  }

  private deliver(): void {
    for (const { item, ok } of this.net.takeDue(
      this.now,
      (id) => {
        const n = this.nodes.get(id);
        return n !== undefined && this.up(n);
      },
      (id) => this.paused(this.nodes.get(id)!),
      // A snapshot transfer lost on its way to a paused node fails at its sender, as any other
      // lost transfer does (else the sender waits for its outcome for ever: seed 156579).
      (item) => {
        if (item.kind === 'snap')
          this.net.schedule(this.now + 1, {
            kind: 'report',
            node: item.m.from,
            incarnation: item.incarnation,
            peer: item.m.to,
            ok: false,
          });
      },
    )) {
      if (item.kind === 'report') {
        const n = this.nodes.get(item.node)!;
        if (this.paused(n)) {
          this.net.schedule(n.pausedUntil, item); // the sender hears it once it runs again
          continue;
        }
        if (this.up(n) && n.incarnation === item.incarnation) {
          n.snapshotTo.delete(item.peer);
          n.host!.reportSnapshot(item.peer, item.ok);
        }
        continue;
      }
      const m = item.m;
      if (item.kind === 'snap') {
        if (!ok) {
          this.net.schedule(this.now + this.net.delay(this.faults), {
            kind: 'report',
            node: m.from,
            incarnation: item.incarnation,
            peer: m.to,
            ok: false,
          });
          continue;
        }
        this.installSnapshot(this.nodes.get(m.to)!, item);
        continue;
      }
      if (!ok) continue;
      if (this.opts.trace) this.trace(fmtMsg(m));
      this.nodes.get(m.to)!.host!.step({ ...m });
    }
  }

  /** As PeerTransport's Snapshot handler: the host decides, then the sender hears the outcome. */
  private installSnapshot(to: SNode, item: Extract<NetItem, { kind: 'snap' }>): void {
    const inc = to.incarnation;
    const store = to.store!;
    const host = to.host!;
    const pending = { from: item.m.from, incarnation: item.incarnation };
    to.installing.add(pending);
    if (this.opts.trace) this.trace(fmtMsg(item.m));
    const chunks = async function* (): AsyncGenerator<Buffer> {
      yield* item.chunks;
    };
    const index = item.m.snapshot!.index;
    let restored = false;
    // As the transport: a malformed snapshot is refused before the core sees its message.
    validateSnapshot(chunks(), index)
      .then(() =>
        host.installSnapshot({ ...item.m }, () => {
          restored = true;
          return store.restore(chunks, index);
        }),
      )
      .then(
        (installed) => {
          if (to.incarnation !== inc) return; // the crash reported it
          // The host's contract: the data reaches the store only once the core accepted the
          // snapshot (a deposed leader's, or one behind what this node has committed, is refused).
          if (restored && !installed)
            this.failure ??= new SimFailure(
              `${to.id} restored its store from snapshot ${index} of ${item.m.from}, which its core refused`,
            );
          to.installing.delete(pending);
          this.net.schedule(this.now + this.net.delay(this.faults), {
            kind: 'report',
            node: item.m.from,
            incarnation: item.incarnation,
            peer: to.id,
            ok: installed,
          });
        },
        (e: unknown) => {
          if (to.incarnation === inc) this.failure ??= e;
        },
      );
  }

  // ----------------------------------------------------------------------------------------
  // Checks

  /** Every node applying index i applies the same entry and gets the same result. */
  private checkApplied(n: SNode, e: Entry, cmd: Command, r: ApplyResult): void {
    const entry = `${e.term}|${e.type}|${Buffer.from(e.data).toString('hex')}`;
    const key = resultKey(r);
    const seen = this.appliedAt.get(e.index);
    if (!seen) {
      if (e.index > 2 && !this.appliedAt.has(e.index - 1))
        fail(`${n.id} applied ${e.index} but no node ever applied ${e.index - 1}`);
      this.appliedAt.set(e.index, { entry, result: key, cmd, r });
      if (e.index > (this.newestApplied?.index ?? 0))
        this.newestApplied = { index: e.index, term: e.term };
      return;
    }
    if (seen.entry !== entry)
      fail(`state machine safety: ${n.id} applies a different entry at ${e.index}`);
    if (seen.result !== key)
      fail(
        `${n.id} got "${key}" applying ${e.index} (${cmdKind(cmd)}), another node got "${seen.result}"`,
      );
  }

  /** Run the reference model over the committed history in log order. */
  private runModel(): void {
    for (;;) {
      const a = this.appliedAt.get(this.modelNext);
      if (!a) return;
      this.model.apply(this.modelNext, a.cmd, a.r);
      this.stats.sessionReplays = this.model.sessionReplays;
      this.modelNext++;
    }
  }

  private confAtIndex(index: number): ConfState | undefined {
    let best = -1;
    for (const i of this.confAt.keys()) if (i <= index && i > best) best = i;
    return best < 0 ? undefined : this.confAt.get(best);
  }

  /** No node logs a different entry at an index it considers committed. */
  private checkNewEntries(n: SNode, rd: Ready): void {
    const commit = n.host!.raw.basicStatus().commit;
    for (const e of rd.entries) {
      if (e.index > commit) continue;
      const seen = this.appliedAt.get(e.index);
      const entry = `${e.term}|${e.type}|${Buffer.from(e.data).toString('hex')}`;
      if (seen && seen.entry !== entry)
        fail(`committed entry lost: ${n.id} logs a different entry at committed index ${e.index}`);
    }
  }

  /**
   * Quorum intersection for what is committed: every majority of the voters that may vote holds
   * the newest entry applied anywhere, so whoever they elect has it. A voter may vote unless it
   * is joining (a new member, or back after losing its disk, until it caught up); it holds the
   * entry when its written log reaches it with the same term or its snapshot covers it; a node
   * that is down counts with what its disk held when it went down.
   */
  private checkCommittedOnEveryElectableMajority(): void {
    const top = this.newestApplied;
    if (!top) return;
    const conf = this.confAtIndex(Number.MAX_SAFE_INTEGER)!;
    const lacking: string[] = [];
    for (const id of conf.voters) {
      const n = this.nodes.get(id)!;
      if (n.log) {
        const m = n.log.mem;
        if (n.log.joining || m.snapshot().index >= top.index) continue;
        if (top.index >= m.firstIndex() && top.index <= m.lastIndex())
          if (m.term(top.index) === top.term) continue;
      } else {
        const v = n.diskLog;
        if (!v || v.joining) continue;
        if (v.snapIndex >= top.index || v.terms.get(top.index) === top.term) continue;
      }
      lacking.push(id);
    }
    if (lacking.length >= Math.floor(conf.voters.length / 2) + 1)
      fail(
        `committed entry ${top.index} (term ${top.term}) is on no member of the electable majority ${lacking} (voters ${conf.voters})`,
      );
  }

  private check(): void {
    this.checkCommittedOnEveryElectableMajority();
    for (const n of this.nodes.values()) {
      if (!this.up(n)) continue;
      const s = n.host!.raw.basicStatus();
      if (s.term > this.stats.maxTerm) this.stats.maxTerm = s.term;
      if (s.commit > this.maxCommitSeen) this.maxCommitSeen = s.commit;
      if (s.role !== 'leader') continue;
      const other = this.leaderOfTerm.get(s.term);
      if (other !== undefined && other !== n.id)
        fail(`two leaders in term ${s.term}: ${other} and ${n.id}`);
      if (other === undefined) {
        this.leaderOfTerm.set(s.term, n.id);
        this.stats.leaders++;
      }
      // A leader acts only on an election that survives a crash: its term and its vote for
      // itself are in its log's hard state, which the host records only once written (synced).
      const durable = n.log!.mem.hardState();
      if (durable.term !== s.term || durable.vote !== n.id)
        fail(
          `${n.id} leads term ${s.term} on an election that is not durable (log: term ${durable.term}, vote '${durable.vote}')`,
        );
    }
  }

  /**
   * Linearizable reads on random nodes: the read index a node waits for must cover every entry
   * committed anywhere before the read was issued (a read answered by a deposed leader, or by a
   * confirmation meant for another read, would not).
   */
  private clientReads(): void {
    if (!this.faults || this.rng.nextFloat() >= this.readRate) return;
    const ups = [...this.nodes.values()].filter((n) => this.up(n));
    if (!ups.length) return;
    // Often on a node that believes it leads: a deposed leader is where a stale read would hide.
    const leaders = ups.filter((n) => n.host!.raw.basicStatus().role === 'leader');
    const pool = leaders.length && this.rng.nextFloat() < 0.5 ? leaders : ups;
    const n = pool[this.rng.nextInt(pool.length)];
    const burst = 1 + this.rng.nextInt(3);
    for (let i = 0; i < burst; i++) this.read(n);
  }

  private read(n: SNode): void {
    const required = this.maxCommitSeen;
    const issued = this.now;
    if (this.paused(n)) {
      // The request waits in the paused process's socket and is served when it resumes.
      const inc = n.incarnation;
      this.time.at(n.pausedUntil * TICK_MS, () => {
        if (n.incarnation === inc && this.up(n)) this.readAt(n, required, issued);
      });
      return;
    }
    this.readAt(n, required, issued);
  }

  private readAt(n: SNode, required: number, issued: number): void {
    n.host!.linearizableRead(this.clockMs(n) + OP_TIMEOUT_TICKS * TICK_MS).then(
      (readIndex) => {
        this.stats.reads++;
        if (readIndex < required)
          this.failure ??= new SimFailure(
            `ReadIndex not linearizable: a read on ${n.id} issued at t=${issued} got read index ${readIndex}, but ${required} was committed before`,
          );
      },
      (e: unknown) => {
        if (!(e instanceof HostError)) this.failure ??= e;
      },
    );
  }

  // ----------------------------------------------------------------------------------------
  // Clients

  private clientActions(): void {
    for (const c of this.clients) {
      if (c.busy) {
        // The host answers every proposal by its deadline (or the node crashed: then the client
        // was told at once).
        const node = c.busy.node ? this.nodes.get(c.busy.node) : undefined;
        const paused = node ? node.pausedTicks - (c.busy.pausedBase ?? 0) : 0;
        if (this.now - c.busy.at > OP_TIMEOUT_TICKS + 2 * ELECTION_TICKS + paused)
          fail(`client${c.id}'s ${c.busy.kind} on ${c.busy.node} was never answered`);
        continue;
      }
      const ob = c.todo.find((o) => o.notBefore <= this.now);
      let op: ClientOp | undefined;
      if (ob) op = this.obligationOp(c, ob);
      else if ((this.faults || this.workload) && this.rng.nextFloat() < this.opRate)
        op = this.randomOp(c);
      if (!op) continue;
      if (ob) op.ob = ob;
      if (this.propose(op)) {
        if (ob) c.todo.splice(c.todo.indexOf(ob), 1);
        c.busy = op;
      }
    }
  }

  private op(
    c: Client,
    kind: OpKind,
    st: string,
    cmd: Command,
    extra: Partial<ClientOp> = {},
  ): ClientOp {
    return { id: this.nextOpId++, client: c, kind, cmd, st, at: this.now, ...extra };
  }

  private obligationOp(c: Client, ob: Obligation): ClientOp {
    const { st, txnId } = ob;
    switch (ob.kind) {
      case 'finish':
        return this.op(
          c,
          'finish',
          st,
          { finish: { storage: st, txnId, tid: Z64 } },
          { txnId, txn: ob.txn },
        );
      case 'abort':
        return this.op(
          c,
          'abort',
          st,
          { abort: { storage: st, txnId, reason: 'client' } },
          { txnId },
        );
      case 'prepare':
        return this.op(
          c,
          'prepare',
          st,
          { prepare: { txnId, txn: ob.txn! } },
          { txnId, txn: ob.txn },
        );
      case 'final': {
        const txn: Txn = {
          storage: st,
          user: 'final',
          stores: [{ oid: p64(BigInt(1_000_000 + this.nextOpId)), data: Buffer.from('final') }],
        };
        return this.op(c, 'final', st, { commit: { tid: Z64, txn } }, { txn });
      }
      case 'commit':
        return this.op(c, 'commit', st, ob.cmd!, { txn: ob.txn });
    }
  }

  private randomTxn(c: Client, st: string, id: number): Txn {
    const r = this.rng;
    const pool: Buffer[] = [];
    for (let i = 1; i <= OID_SPACE; i++) pool.push(p64(BigInt(i)));
    for (const f of c.fresh) if (f.st === st) pool.push(f.oid);
    const stores: NonNullable<Txn['stores']> = [];
    const used = new Set<string>();
    const count = 1 + r.nextInt(3);
    for (let i = 0; i < count; i++) {
      const oid = pool[r.nextInt(pool.length)];
      if (used.has(hex(oid))) continue;
      used.add(hex(oid));
      const serial = c.known.get(objKey(st, oid));
      const del = serial !== undefined && r.nextFloat() < 0.05;
      stores.push({
        oid,
        serial: serial ?? Buffer.alloc(0),
        ...(del ? { delete: true } : { data: Buffer.from(`c${c.id}-op${id}`) }),
      });
      c.fresh = c.fresh.filter((f) => !(f.st === st && f.oid.equals(oid)));
    }
    const checks: NonNullable<Txn['checks']> = [];
    if (r.nextFloat() < 0.2) {
      const oid = pool[r.nextInt(pool.length)];
      if (!used.has(hex(oid)))
        checks.push({ oid, serial: c.known.get(objKey(st, oid)) ?? Buffer.alloc(0) });
    }
    return { storage: st, user: `client${c.id}`, description: `op${id}`, stores, checks };
  }

  private randomOp(c: Client): ClientOp | undefined {
    const r = this.rng;
    const st = STORAGES[r.nextInt(STORAGES.length)];
    const x = r.nextFloat();
    const id = this.nextOpId;
    if (x < 0.55) {
      const txn = this.randomTxn(c, st, id);
      // Half the commits are in the client's session: retried after an unknown outcome.
      const session =
        r.nextFloat() < 0.5 ? { sessionId: `client${c.id}`, seq: ++c.seq } : undefined;
      return this.op(c, 'commit', st, { commit: { tid: Z64, txn, ...session } }, { txn });
    }
    if (x < 0.75) {
      const txn = this.randomTxn(c, st, id);
      const txnId = `c${c.id}-t${id}`;
      return this.op(c, 'prepare', st, { prepare: { txnId, txn } }, { txnId, txn });
    }
    if (x < 0.87) {
      if (c.fresh.length >= CLIENT_NEW_OIDS_MAX) return undefined;
      return this.op(c, 'newOids', st, { newOids: { storage: st, count: 1 + r.nextInt(4) } });
    }
    if (x < 0.97) {
      if (c.tids.length === 0) return undefined;
      const t = c.tids[r.nextInt(c.tids.length)];
      return this.op(c, 'undo', t.st, {
        undo: { tid: Z64, storage: t.st, undoTid: t.tid, user: `client${c.id}` },
      });
    }
    const all = this.clients.flatMap((cl) => cl.tids).filter((t) => t.st === st);
    if (all.length === 0) return undefined;
    const t = all[r.nextInt(all.length)];
    return this.op(c, 'pack', st, { pack: { storage: st, packTid: t.tid, gc: false } });
  }

  /** Propose on the current leader through its host (as a forwarded command arrives there). */
  private propose(op: ClientOp): boolean {
    const leader = this.leader();
    if (!leader || this.paused(leader) || leader.host!.view().role !== 'leader') return false;
    op.node = leader.id;
    op.at = this.now;
    op.pausedBase = leader.pausedTicks;
    leader.ops.add(op);
    this.stats.proposed++;
    leader
      .host!.proposeLocal(op.cmd, this.clockMs(leader) + OP_TIMEOUT_TICKS * TICK_MS)
      .then(
        ({ index, result }) => {
          leader.ops.delete(op);
          this.resolved(op, result, index);
        },
        (e: unknown) => {
          leader.ops.delete(op);
          if (!(e instanceof HostError)) throw e;
          else if (e.kind === 'not-leader') this.refused(op, e.message);
          else this.unknown(op, e.message);
        },
      )
      .catch((e: unknown) => (this.failure ??= e));
    return true;
  }

  /** Certainly not committed (no leader, or another entry took its index): try again later. */
  private refused(op: ClientOp, why: string): void {
    const c = op.client;
    if (c.busy !== op) return;
    c.busy = undefined;
    this.stats.refused++;
    this.trace(`client${c.id} ${op.kind} refused: ${why}`);
    if (op.ob) c.todo.push({ ...op.ob, notBefore: this.now + 1 });
  }

  /** The leader's apply returned `r` to the client. */
  private resolved(op: ClientOp, r: ApplyResult, index: number): void {
    const c = op.client;
    if (c.busy !== op) return; // already timed out
    c.busy = undefined;
    this.stats.acked++;
    const txnKey = `${op.st}\0${op.txnId}`;
    if (!r.ok) {
      const err = r.error;
      if (err.kind === 'CONFLICT' || err.kind === 'READ_CONFLICT') this.stats.conflicts++;
      if (err.kind === 'LOCKED') this.stats.locked++;
      if (err instanceof StorageError && err.conflict)
        c.known.set(objKey(op.st, err.conflict.oid), Buffer.from(err.conflict.actual));
      if (op.kind === 'finish' && this.ackedPrepares.has(txnKey))
        fail(
          `a successful prepare was followed by a failing finish: ${op.txnId} at ${index}: ${err.kind}`,
        );
      if (op.kind === 'final' && err.kind !== 'CONFLICT') fail(`final commit failed: ${err.kind}`);
      return;
    }
    switch (op.kind) {
      case 'commit':
      case 'final':
      case 'finish':
      case 'undo': {
        if (!r.tid) fail(`${op.kind} at ${index} acknowledged without a TID`);
        const stores =
          op.kind === 'undo' ? (r.oids ?? []) : (op.txn!.stores ?? []).map((s) => s.oid);
        for (const oid of stores) c.known.set(objKey(op.st, oid), Buffer.from(r.tid));
        c.tids.push({ st: op.st, tid: Buffer.from(r.tid) });
        this.acked.set(hex(r.tid), index);
        this.stats[op.kind === 'finish' ? 'finishes' : op.kind === 'undo' ? 'undos' : 'commits']++;
        break;
      }
      case 'prepare':
        this.stats.prepares++;
        this.ackedPrepares.add(txnKey);
        c.todo.push({
          kind: 'finish',
          st: op.st,
          txnId: op.txnId!,
          txn: op.txn,
          notBefore: this.now + 1 + this.rng.nextInt(30),
        });
        break;
      case 'abort':
        this.stats.aborts++;
        break;
      case 'newOids':
        this.stats.newOids++;
        for (const oid of r.oids ?? []) c.fresh.push({ st: op.st, oid: Buffer.from(oid) });
        break;
      case 'pack':
        this.stats.packs++;
        break;
    }
  }

  /** The client learns nothing about the outcome (crash, deadline, leadership change). */
  private unknown(op: ClientOp, why: string): void {
    const c = op.client;
    if (c.busy !== op) return;
    c.busy = undefined;
    this.stats.unknownOutcomes++;
    this.trace(`client${c.id} ${op.kind} outcome unknown: ${why}`);
    const later = this.now + 1 + this.rng.nextInt(10);
    const base = { st: op.st, txnId: op.txnId ?? '', txn: op.txn, notBefore: later };
    switch (op.kind) {
      case 'commit':
        // A session commit is sent again as it was: the model checks it is applied once.
        if ('commit' in op.cmd && op.cmd.commit.sessionId)
          c.todo.push({ ...base, kind: 'commit', cmd: op.cmd });
        else for (const s of op.txn!.stores ?? []) c.known.delete(objKey(op.st, s.oid));
        break;
      case 'prepare':
        // Either vote again (a retried vote of a voted transaction succeeds) or abort it.
        c.todo.push({ ...base, kind: this.rng.nextFloat() < 0.5 ? 'prepare' : 'abort' });
        break;
      case 'finish':
      case 'abort':
        c.todo.push({ ...base, kind: op.kind });
        break;
      case 'final':
        c.todo.push({ ...base, kind: 'final' });
        break;
      default:
        break;
    }
  }

  // ----------------------------------------------------------------------------------------
  // End of seed

  private async finalChecks(leader: SNode): Promise<void> {
    const conf = leader.host!.raw.status().conf;
    const members = [...conf.voters, ...conf.learners].map((id) => this.nodes.get(id)!);
    const index = leader.store!.appliedIndex;
    if (this.model.txns.size > 0)
      for (const [k, t] of this.model.txns)
        if (t.state === 'prepared')
          fail(`transaction ${k.replace('\0', '/')} was left voted (its locks never released)`);
    let dump: string | undefined;
    for (const n of members) {
      const store = n.store!;
      if (store.appliedIndex !== index)
        fail(`${n.id} converged at ${store.appliedIndex}, the leader at ${index}`);
      // Every replica holds the same bytes.
      const h = createHash('sha256');
      for await (const [k, v] of n.db!.iterator()) h.update(k).update(v);
      const d = h.digest('hex');
      if (dump !== undefined && d !== dump)
        fail(
          `${n.id}'s database differs from ${members[0].id}'s at the same applied index ${index}`,
        );
      dump = d;
      if (store.preparedTransactions().length > 0)
        fail(`${n.id} still holds voted transactions after convergence`);
      // The store agrees with the model object by object...
      for (const [k, o] of this.model.objs) {
        const [st, oidHex] = k.split('/');
        const oid = Buffer.from(oidHex, 'hex');
        let serial: Buffer | undefined;
        try {
          serial = (await store.load(st, oid)).serial;
        } catch (e) {
          if (!(e instanceof StorageError) || e.kind !== 'NOT_FOUND') throw e;
        }
        const want = o.deleted || o.serial.equals(Z64) ? undefined : o.serial;
        if ((serial ? hex(serial) : 'none') !== (want ? hex(want) : 'none'))
          fail(
            `${n.id}: object ${k} has serial ${serial ? hex(serial) : 'none'}, the history says ${want ? hex(want) : 'none'}`,
          );
      }
      // ...and transaction by transaction: each committed exactly once, none invented.
      for (const st of STORAGES) {
        const tids: string[] = [];
        for await (const t of store.iterate(st)) tids.push(hex(t.tid));
        const want = [...this.model.commits]
          .filter(([, c]) => c.st === st)
          .map(([t]) => t)
          .sort();
        if (tids.join(',') !== want.join(','))
          fail(
            `${n.id}: storage ${st} holds transactions [${tids.length}] != committed history [${want.length}]`,
          );
      }
      for (const [tid] of this.acked)
        if (!this.model.commits.has(tid))
          fail(`acknowledged transaction ${tid} is not in the history`);
    }
  }
}

function decodeEntry(e: Entry): Command {
  if (e.data.length === 0) return { noop: {} };
  try {
    return commandCodec.decode(e.data);
  } catch {
    fail(`undecodable entry at ${e.index}: ${dec.decode(e.data).slice(0, 40)}`);
  }
}
