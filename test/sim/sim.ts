/**
 * Deterministic cluster simulator: one seed drives a 3–5 node cluster of real RawNodes over an
 * in-memory network (drop, delay, reorder, duplicate, partitions) and in-memory disks (crashes
 * lose whatever was not yet "fsynced"), with compactions, snapshots, membership changes,
 * leadership transfers, proposals and reads. Safety invariants are checked after every step;
 * a liveness phase then heals everything and requires convergence within a tick bound.
 *
 * runSeed() is the reusable core; run.ts is the CLI and sim.test.ts the mocha entry.
 */
import { Mulberry32 } from '../../src/util/prng';
import { NetProfile, SimFailure, SimNetwork, drawNetProfile, fail, fmtMsg } from './kit';
import {
  ConfChangeType,
  ConfState,
  Entry,
  EntryType,
  Message,
  MessageType,
  MemoryStorage,
  RawNode,
  Ready,
  RaftError,
  decodeConfChange,
} from '../../src/raft';

export interface SimOptions {
  /** Ticks of the fault phase. */
  safetyTicks?: number;
  /** Max ticks of the healed phase before convergence is declared failed. */
  livenessTicks?: number;
  /** Receives a readable line per event / delivered message (SEED=s replay). */
  trace?: (line: string) => void;
}

export interface SimStats {
  ticks: number;
  delivered: number;
  dropped: number;
  crashes: number;
  leaders: number;
  proposed: number;
  committedProposals: number;
  snapshotsInstalled: number;
  compactions: number;
  confChangesApplied: number;
  reads: number;
  readsIssued: number;
  transfers: number;
  appliesLagged: number;
  partialPartitions: number;
  pauses: number;
  maxTerm: number;
}

export interface SimResult {
  seed: number;
  ok: boolean;
  failure?: string;
  stats: SimStats;
}

/** The state machine: a hash chain over applied entries, plus membership as of `index`. */
interface SmState {
  index: number;
  hash: number;
  conf: ConfState;
}

function copySm(s: SmState): SmState {
  return {
    index: s.index,
    hash: s.hash,
    conf: { voters: [...s.conf.voters], learners: [...s.conf.learners] },
  };
}

const dec = new TextDecoder();
const enc = new TextEncoder();

function entryKey(e: Entry): string {
  return `${e.type}:${dec.decode(e.data)}`;
}

function mix(h: number, s: string): number {
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return h;
}

interface SimNode {
  id: string;
  storage: MemoryStorage;
  /** State-machine data of storage.snapshot(), i.e. the durable snapshot file. */
  snapData: SmState;
  up: boolean;
  retired: boolean;
  raw?: RawNode;
  pending?: Ready;
  /** pending's `messages` already left (as the production host sends them before persisting). */
  pendingSent?: boolean;
  sm: SmState;
  /** Snapshot data received from the network, awaiting the core's decision (volatile). */
  staged: Map<number, SmState>;
  /**
   * A Ready persisted and sent whose committed entries the (slow) state machine applies only at
   * tick `until`; advance() waits for it. Meanwhile the node ticks and steps.
   */
  lagging?: { rd: Ready; until: number };
  /**
   * The process is paused (a GC pause, a stalled host) from tick `pausedFrom` until
   * `pausedUntil`: it neither ticks nor handles messages, which wait in its buffer, nor serves
   * clients, who wait too.
   */
  pausedFrom: number;
  pausedUntil: number;
  incarnation: number;
  downUntil: number;
  /** Ticks this node's clock has run (all incarnations; pauses and skipped ticks excluded). */
  ticks: number;
  /** Peer -> `ticks` when a message from it was last delivered here (this incarnation). */
  heardAt: Map<string, number>;
}

type NetItem =
  | { kind: 'msg'; m: Message; snap?: SmState }
  /** A snapshot-transfer outcome reported back to the sender. */
  | { kind: 'report'; node: string; incarnation: number; peer: string; ok: boolean };

const MAX_NODES = 7;
const ELECTION_TICKS = 10;

/**
 * Ticks the healed cluster has to converge. Seed 1115098 needs ~900: a follower 70 entries
 * behind catches up one entry per Append, sent back to probing by appends the simulated network
 * still reorders after healing (slow, never stuck; a faster catch-up is open work).
 */
const LIVENESS_TICKS = 1200;

/** Ticks the converged cluster runs with its leader cut off from one follower voter. */
const PARTIAL_PARTITION_TICKS = 6 * ELECTION_TICKS;

export function runSeed(seed: number, opts: SimOptions = {}): SimResult {
  const sim = new Sim(seed, opts);
  try {
    sim.run();
    return { seed, ok: true, stats: sim.stats };
  } catch (e) {
    const msg =
      e instanceof SimFailure ? e.message : `exception: ${(e as Error).stack ?? String(e)}`;
    return { seed, ok: false, failure: `t=${sim.now}: ${msg}`, stats: sim.stats };
  }
}

class Sim {
  readonly rng: Mulberry32;
  now = 0;
  readonly stats: SimStats = {
    ticks: 0,
    delivered: 0,
    dropped: 0,
    crashes: 0,
    leaders: 0,
    proposed: 0,
    committedProposals: 0,
    snapshotsInstalled: 0,
    compactions: 0,
    confChangesApplied: 0,
    reads: 0,
    readsIssued: 0,
    transfers: 0,
    appliesLagged: 0,
    partialPartitions: 0,
    pauses: 0,
    maxTerm: 0,
  };
  private readonly nodes = new Map<string, SimNode>();
  private nextNodeNo = 1;
  private readonly net: SimNetwork<NetItem>;
  private faults = true;

  // Per-seed fault profile.
  private readonly netProfile: NetProfile;
  private readonly crashRate: number;
  private readonly leaderCrashRate: number;
  /** Adversarial scheduling: crash leaders right after they apply a commit (Figure 8 hunting). */
  private readonly crashAfterCommitRate: number;
  private leaderJustApplied: SimNode | undefined;
  /** Adversarial scheduling: crash a node right after it persisted a vote and sent its messages. */
  private readonly crashAfterVoteRate: number;
  /** Adversarial scheduling: crash a new leader after persisting its first entries, before sending. */
  private readonly crashNewLeaderRate: number;
  private readonly persistRate: number;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly maxSizePerMsg: number;
  private readonly maxInflight: number;
  private readonly maxUncommitted: number;
  /** Chance that a Ready's committed entries are applied late, and by up to how many ticks. */
  private readonly applyLagRate: number;
  private readonly applyLagMax: number;
  /** Per tick with a leader: chance of proposing a membership change. */
  private readonly confChangeRate: number;
  /** Per tick: chance of pausing a process (often the leader's) for up to 4 election timeouts. */
  private readonly pauseRate: number;

  // Checker state.
  private readonly leaderOfTerm = new Map<number, string>();
  /** index -> "term|key" of the entry applied there (state machine safety). */
  private readonly appliedAt = new Map<number, string>();
  /**
   * index -> the term of the node that first applied it: the entry was committed in that term or
   * an earlier one (a node learns of a commit from a leader whose term it then has).
   */
  private readonly committedByTerm = new Map<number, number>();
  /** index -> state hash after applying it. */
  private readonly hashAt = new Map<number, number>();
  /** "index|term" -> key and previous term (log matching). */
  private readonly logAt = new Map<string, { key: string; prevTerm: number | undefined }>();
  private maxCommitSeen = 0;
  /** index -> term of the entry every node considering it committed must hold there. */
  private readonly committedTerm = new Map<number, number>();
  /** node -> commit index up to which its log was checked against committedTerm. */
  private readonly commitChecked = new Map<string, number>();
  private readonly reads = new Map<number, { required: number; node: string }>();
  private nextReadId = 1;
  private nextProposalId = 1;
  /** proposal id -> index it was appended at (until it is applied somewhere). */
  private readonly pendingProposals = new Map<number, { index: number; term: number }>();
  private readonly lastLeaderSeen = new Map<string, number>();
  /** Removed node -> earliest tick to shut it down and the index of its removal. */
  private readonly retireAt = new Map<string, { at: number; index: number }>();
  /** Leader -> term, commit index and voters at the last check of its commits against disks. */
  private readonly leaderCommitChecked = new Map<
    string,
    { term: number; commit: number; voters: string[] }
  >();
  /** "index|term" of every membership change the simulator's clients got into a leader's log. */
  private readonly confProposedAt = new Set<string>();
  /**
   * Node -> "term|target" pairs for which, since its last ready(), a call into its core left it
   * leading term `term` with a transfer to `target` in flight and `target` known to hold its
   * whole log: the moments a TimeoutNow to `target` may be sent.
   */
  private readonly timeoutNowAllowed = new Map<string, Set<string>>();
  /**
   * Check-quorum leader -> since when (its own `ticks`) it has led in this term with the same
   * membership and no leadership transfer in flight.
   */
  private readonly quorumWatch = new Map<
    string,
    { term: number; incarnation: number; since: number; members: string }
  >();

  constructor(
    readonly seed: number,
    private readonly opts: SimOptions,
  ) {
    this.rng = new Mulberry32(seed);
    const r = this.rng;
    this.netProfile = drawNetProfile(r);
    this.net = new SimNetwork<NetItem>(r, this.netProfile, (line) => this.trace(line));
    this.crashRate = r.nextFloat() * 0.008;
    this.leaderCrashRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.03 : 0;
    this.crashAfterCommitRate = r.nextFloat() < 0.4 ? r.nextFloat() * 0.3 : 0;
    this.crashAfterVoteRate = r.nextFloat() < 0.4 ? r.nextFloat() * 0.3 : 0;
    this.crashNewLeaderRate = r.nextFloat() < 0.4 ? r.nextFloat() * 0.4 : 0;
    this.persistRate = 0.3 + r.nextFloat() * 0.7;
    this.preVote = r.nextFloat() < 0.8;
    this.checkQuorum = r.nextFloat() < 0.8;
    // Often tiny, so that entries travel one per message (exposes commit-rule bugs, Figure 8).
    this.maxSizePerMsg = [1, 1, 8, 64, 1024][r.nextInt(5)];
    this.maxInflight = 1 + r.nextInt(8);
    this.maxUncommitted = r.nextFloat() < 0.5 ? 0 : 64 + r.nextInt(512);
    // Messages held up past an election timeout (their sender may be deposed when they arrive).
    this.netProfile.longDelayRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.03 : 0;
    this.netProfile.longDelayMax = 2 * ELECTION_TICKS + r.nextInt(3 * ELECTION_TICKS);
    // A slow state machine: committed entries applied up to three election timeouts late.
    this.applyLagRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.5 : 0;
    this.applyLagMax = 1 + r.nextInt(3 * ELECTION_TICKS);
    this.confChangeRate = r.nextFloat() < 0.5 ? 0.015 : 0.08;
    this.pauseRate = r.nextFloat() < 0.5 ? 0.002 + r.nextFloat() * 0.01 : 0;
    const n = r.nextFloat() < 0.5 ? 3 : 3 + r.nextInt(3);
    const voters: string[] = [];
    for (let i = 0; i < n; i++) voters.push(`n${this.nextNodeNo++}`);
    for (const id of voters) {
      const storage = MemoryStorage.bootstrap({ voters, learners: [] });
      this.addNode(id, storage, { index: 1, hash: 0, conf: { voters: [...voters], learners: [] } });
    }
    const p = this.netProfile;
    this.trace(
      `seed ${seed}: ${n} voters, drop=${p.dropRate.toFixed(3)} dup=${p.dupRate.toFixed(3)} delay<=${p.maxDelay} ` +
        `crash=${this.crashRate.toFixed(4)} leaderCrash=${this.leaderCrashRate.toFixed(3)} partition=${p.partitionRate.toFixed(3)} persist=${this.persistRate.toFixed(2)} preVote=${this.preVote} ` +
        `checkQuorum=${this.checkQuorum} maxMsg=${this.maxSizePerMsg} inflight=${this.maxInflight} uncommitted=${this.maxUncommitted} ` +
        `longDelay=${(p.longDelayRate ?? 0).toFixed(3)}/${p.longDelayMax} applyLag=${this.applyLagRate.toFixed(2)}/${this.applyLagMax} confChange=${this.confChangeRate} pause=${this.pauseRate.toFixed(3)}`,
    );
  }

  private trace(line: string): void {
    if (this.opts.trace) this.opts.trace(`[t=${this.now}] ${line}`);
  }

  private addNode(id: string, storage: MemoryStorage, snapData: SmState): void {
    const node: SimNode = {
      id,
      storage,
      snapData,
      up: false,
      retired: false,
      sm: copySm(snapData),
      staged: new Map(),
      incarnation: 0,
      downUntil: 0,
      pausedFrom: 0,
      pausedUntil: 0,
      ticks: 0,
      heardAt: new Map(),
    };
    this.nodes.set(id, node);
    this.start(node);
  }

  private start(node: SimNode): void {
    node.sm = copySm(node.snapData);
    node.staged = new Map();
    node.pending = undefined;
    node.heardAt = new Map();
    this.timeoutNowAllowed.delete(node.id);
    node.incarnation++;
    node.raw = new RawNode({
      id: node.id,
      electionTicks: ELECTION_TICKS,
      heartbeatTicks: 1,
      storage: node.storage,
      applied: node.sm.index,
      rng: this.rng.fork(node.incarnation * 31 + node.id.length),
      preVote: this.preVote,
      checkQuorum: this.checkQuorum,
      maxSizePerMsg: this.maxSizePerMsg,
      maxInflightMsgs: this.maxInflight,
      maxUncommittedEntriesBytes: this.maxUncommitted,
    });
    node.up = true;
  }

  private crash(node: SimNode): void {
    this.trace(`CRASH ${node.id}${node.pending ? ' (unpersisted Ready lost)' : ''}`);
    node.up = false;
    node.raw = undefined;
    node.pending = undefined;
    node.lagging = undefined;
    node.pausedUntil = 0;
    node.staged = new Map();
    this.stats.crashes++;
  }

  run(): void {
    const safetyTicks = this.opts.safetyTicks ?? 500;
    const livenessTicks = this.opts.livenessTicks ?? LIVENESS_TICKS;
    for (let i = 0; i < safetyTicks; i++) this.step();
    // Liveness: heal everything and stop injecting faults.
    this.faults = false;
    this.net.heal();
    this.trace('=== HEAL: liveness phase ===');
    for (const n of this.nodes.values()) {
      n.pausedUntil = 0;
      if (!n.up && !n.retired) this.start(n);
    }
    let finalId = 0;
    let finalAt = { index: 0, term: 0 };
    for (let i = 0; i < livenessTicks; i++) {
      this.step();
      const leader = this.leader();
      if (!leader) continue;
      const raw = leader.raw!;
      const superseded =
        finalId !== 0 &&
        this.pendingProposals.has(finalId) &&
        raw.termAt(finalAt.index) !== finalAt.term;
      if (finalId === 0 || superseded) {
        // Propose a final entry (again, if the previous attempt was lost with its leader).
        try {
          const id = this.nextProposalId++;
          const index = this.propose(leader, enc.encode(`p${id}`));
          finalAt = { index, term: raw.basicStatus().term };
          finalId = id;
          this.pendingProposals.set(id, finalAt);
        } catch (e) {
          if (!(e instanceof RaftError)) throw e;
        }
        continue;
      }
      if (this.converged(leader, finalId)) {
        this.trace(`converged after ${i} liveness ticks`);
        // No committed entry was lost: the final leader still holds every one of them.
        this.checkLeaderCompleteness(leader, leader.raw!.basicStatus().firstIndex);
        this.partialPartition(leader);
        return;
      }
    }
    const l = this.leader();
    fail(
      `liveness: no convergence within ${livenessTicks} ticks after healing (leader=${l?.id ?? 'none'}, ` +
        `pending proposals=${[...this.pendingProposals.values()]
          .slice(0, 5)
          .map((p) => `${p.index}/${p.term}`)
          .join(',')}, ` +
        `nodes=${this.nodesLine()})`,
    );
  }

  /** Every up node's role, term, commit, applied and last index, for failure messages. */
  private nodesLine(): string {
    return [...this.nodes.values()]
      .filter((n) => n.up)
      .map((n) => {
        const s = n.raw!.status();
        return `${n.id}:${s.role}/t${s.term}/c${s.commit}/a${s.applied}/last${s.lastIndex}`;
      })
      .join(' ');
  }

  /**
   * Liveness under a partial partition: the converged cluster's leader loses its links to one
   * follower voter while the others keep committing (proposals every few ticks, so the cut
   * follower falls behind before its first election timeout). With pre-vote or check-quorum
   * on, the cut follower must not depose a leader that still hears from a quorum (a pre-vote
   * that makes its receivers adopt its term would), and commits must go on.
   */
  private partialPartition(leader: SimNode): void {
    if (!this.preVote && !this.checkQuorum) return; // then a cut follower may disrupt: plain Raft
    const raw = leader.raw!;
    const s0 = raw.status();
    const voters = s0.conf.voters;
    if (voters.length < 3 || !voters.includes(leader.id)) return;
    const others = voters.filter((v) => v !== leader.id);
    const cutId = others[this.rng.nextInt(others.length)];
    this.stats.partialPartitions++;
    this.trace(`=== CUT ${leader.id} <-> ${cutId}: partial partition, leader must stay ===`);
    // Connections reset at the cut: nothing from before it (a pre-vote grant held by a long
    // delay, answering a campaign of the same term) arrives during the phase. Such a stale grant
    // lets the cut follower win its pre-vote and disrupt the leader, as in etcd; the phase checks
    // the steady state.
    this.net.dropInFlight();
    this.net.cut.add(`${leader.id}>${cutId}`);
    this.net.cut.add(`${cutId}>${leader.id}`);
    if (!this.checkQuorum) {
      // A removed member still running (its removal applied during the heal, not yet retired)
      // hears no more heartbeats and campaigns. Without check-quorum nothing stops it: pre-vote
      // alone lets any member whose log is as long grant it (thesis §4.2.3, the production host
      // runs with check-quorum on). Such a node is cut off for the phase; with check-quorum on it
      // stays connected and must not disrupt either.
      const members = new Set([...voters, ...s0.conf.learners]);
      for (const n of this.nodes.values()) {
        if (members.has(n.id) || n.retired) continue;
        this.trace(`=== CUT ${n.id} from all: a removed member, and check-quorum is off ===`);
        for (const m of this.nodes.keys())
          if (m !== n.id) {
            this.net.cut.add(`${n.id}>${m}`);
            this.net.cut.add(`${m}>${n.id}`);
          }
      }
    }
    const proposed: number[] = [];
    for (let i = 0; i < PARTIAL_PARTITION_TICKS; i++) {
      if (i % 5 === 0 && i < PARTIAL_PARTITION_TICKS - 2 * ELECTION_TICKS) {
        const id = this.nextProposalId++;
        try {
          const index = this.propose(leader, enc.encode(`p${id}`));
          this.pendingProposals.set(id, { index, term: s0.term });
          proposed.push(id);
        } catch (e) {
          if (!(e instanceof RaftError)) throw e;
        }
      }
      this.step();
      const s = raw.basicStatus();
      if (s.role !== 'leader' || s.term !== s0.term)
        fail(
          `liveness: leader ${leader.id} of term ${s0.term}, cut off from ${cutId} only, lost its leadership (now ${s.role} in term ${s.term})`,
        );
    }
    const stuck = proposed.filter((id) => this.pendingProposals.has(id));
    if (stuck.length > 0)
      fail(
        `liveness: leader ${leader.id} cut off from ${cutId} only stopped committing (${stuck.length} of ${proposed.length} proposals not applied; nodes=${this.nodesLine()})`,
      );
    this.net.heal();
  }

  private leader(): SimNode | undefined {
    let best: SimNode | undefined;
    let bestTerm = -1;
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      const s = n.raw!.basicStatus();
      if (s.role === 'leader' && s.term > bestTerm) {
        best = n;
        bestTerm = s.term;
      }
    }
    return best;
  }

  private converged(leader: SimNode, finalId: number): boolean {
    const ls = leader.raw!.status();
    if (this.pendingProposals.has(finalId)) return false;
    // A just-elected leader's commit index (and so its configuration) may lag until an entry of
    // its own term commits.
    if (leader.raw!.termAt(ls.commit) !== ls.term) return false;
    // Every proposal ever accepted must be resolved: committed (then it left pendingProposals),
    // or visibly superseded — the leader's log holds another entry at its index — so the host
    // can refuse it.
    for (const p of this.pendingProposals.values()) {
      if (p.index <= ls.commit && this.appliedAt.get(p.index)?.startsWith(`${p.term}|`)) {
        fail(`proposal at ${p.index}/${p.term} is committed but was never applied`);
      }
      if (leader.raw!.termAt(p.index) === p.term) return false;
    }
    for (const id of [...ls.conf.voters, ...ls.conf.learners]) {
      const n = this.nodes.get(id);
      if (!n || !n.up) return false;
      const s = n.raw!.status();
      if (s.applied < ls.commit || n.pending || n.lagging) return false;
    }
    return true;
  }

  private step(): void {
    this.now++;
    this.stats.ticks++;
    this.stats.delivered = this.net.delivered;
    this.stats.dropped = this.net.dropped;
    if (this.faults) this.injectFaults();
    this.clientActions();
    for (const n of this.nodes.values()) {
      // A process resuming from a pause first serves the clients that waited (one of its reads
      // may be confirmed by acknowledgements that waited in its buffer meanwhile).
      if (n.up && n.pausedUntil === this.now) {
        const reads = 1 + this.rng.nextInt(3);
        for (let i = 0; i < reads; i++) this.issueRead(n);
      }
    }
    for (const n of this.nodes.values()) {
      if (!n.up || this.paused(n)) continue;
      if (this.faults && this.rng.nextFloat() < 0.02) continue; // clock drift: a skipped tick
      const before = n.raw!.basicStatus().role;
      n.ticks++;
      n.raw!.tick();
      if (before === 'leader') this.noteTransfer(n); // a removed leader hands off on a tick
      this.checkCampaign(n, before);
    }
    this.deliver();
    for (const n of this.nodes.values()) if (!this.paused(n)) this.processReady(n);
    this.check();
  }

  private paused(n: SimNode): boolean {
    return n.pausedFrom <= this.now && this.now < n.pausedUntil;
  }

  /** Pause n from tick `from` for up to four election timeouts. */
  private pause(n: SimNode, from: number): void {
    n.pausedFrom = from;
    n.pausedUntil = from + 1 + this.rng.nextInt(4 * ELECTION_TICKS);
    this.stats.pauses++;
    this.trace(`PAUSE ${n.id} t=${from}..${n.pausedUntil}`);
  }

  private injectFaults(): void {
    const r = this.rng;
    for (const n of this.nodes.values()) {
      if (n.retired) continue;
      if (n.up && r.nextFloat() < this.crashRate) {
        this.crash(n);
        n.downUntil = this.now + 1 + r.nextInt(40);
      } else if (!n.up && this.now >= n.downUntil) {
        this.trace(`RESTART ${n.id}`);
        this.start(n);
      }
    }
    const leader = this.leader();
    const lja = this.leaderJustApplied;
    this.leaderJustApplied = undefined;
    if (lja && lja.up && r.nextFloat() < this.crashAfterCommitRate) {
      this.crash(lja);
      lja.downUntil = this.now + 1 + r.nextInt(25);
    } else if (leader && r.nextFloat() < this.leaderCrashRate) {
      // Crash the leader, often right after it appended entries it has not replicated.
      this.crash(leader);
      leader.downUntil = this.now + 1 + r.nextInt(25);
    }
    for (const [id, { at, index }] of this.retireAt) {
      const n = this.nodes.get(id)!;
      // Like an operator, shut a removed node down only once a remaining voter has applied its
      // removal (else the others may still need its vote under the old configuration).
      const acknowledged = [...this.nodes.values()].some(
        (m) => m.id !== id && !m.retired && m.sm.index >= index && m.sm.conf.voters.includes(m.id),
      );
      if (this.now >= at && !n.retired && acknowledged) {
        this.trace(`RETIRE ${id} (removed from the cluster)`);
        if (n.up) this.crash(n);
        n.retired = true;
      }
    }
    this.net.partitionStep([...this.nodes.keys()], leader?.id);
    if (this.pauseRate > 0 && r.nextFloat() < this.pauseRate) {
      const n = leader && !this.paused(leader) && r.nextFloat() < 0.6 ? leader : this.randomUp();
      if (n) this.pause(n, this.now);
    }
    if (r.nextFloat() < 0.03) {
      const n = this.randomUp();
      if (n) this.compact(n);
    }
  }

  /** A random node that is up and not paused. */
  private randomUp(): SimNode | undefined {
    const ups = [...this.nodes.values()].filter((n) => n.up && !this.paused(n));
    return ups.length ? ups[this.rng.nextInt(ups.length)] : undefined;
  }

  private compact(n: SimNode): void {
    if (n.sm.index <= n.storage.snapshot().index) return;
    n.storage.createSnapshot(n.sm.index, n.sm.conf);
    n.snapData = copySm(n.sm);
    const keep = this.rng.nextInt(4);
    const to = Math.max(n.storage.firstIndex(), n.sm.index - keep);
    n.storage.compact(to);
    this.stats.compactions++;
    this.trace(`COMPACT ${n.id} snapshot@${n.sm.index} first=${n.storage.firstIndex()}`);
  }

  private clientActions(): void {
    const r = this.rng;
    const highest = this.leader();
    const leader = highest && !this.paused(highest) ? highest : undefined;
    if (this.faults && r.nextFloat() < 0.4) {
      const n = leader && r.nextFloat() < 0.85 ? leader : this.randomUp();
      if (n) {
        const count = 1 + r.nextInt(3); // several proposals in one tick get batched
        for (let i = 0; i < count; i++) {
          const id = this.nextProposalId++;
          try {
            const idx = this.propose(n, enc.encode(`p${id}`));
            this.pendingProposals.set(id, { index: idx, term: n.raw!.basicStatus().term });
            this.stats.proposed++;
          } catch (e) {
            if (!(e instanceof RaftError)) throw e;
            break;
          }
        }
      }
    }
    if (r.nextFloat() < 0.3) {
      // Half the reads go to a node that believes it leads: a deposed leader that does not know
      // it yet must not answer them from its stale commit index.
      const leaders = [...this.nodes.values()].filter(
        (m) => m.up && !this.paused(m) && m.raw!.basicStatus().role === 'leader',
      );
      const n =
        leaders.length > 0 && r.nextFloat() < 0.5
          ? leaders[r.nextInt(leaders.length)]
          : this.randomUp();
      if (n) this.issueRead(n);
    }
    if (!this.faults || !leader) return;
    if (r.nextFloat() < this.confChangeRate) this.confChange(leader);
    if (r.nextFloat() < 0.005) {
      const voters = leader.raw!.status().conf.voters.filter((v) => v !== leader.id);
      if (voters.length > 0) {
        const to = voters[r.nextInt(voters.length)];
        this.trace(`TRANSFER leadership ${leader.id} -> ${to}`);
        this.stats.transfers++;
        leader.raw!.transferLeadership(to);
        this.noteTransfer(leader);
      }
    }
  }

  /**
   * A linearizable read on n: its answer must cover every entry committed anywhere before now
   * (checked when the read state comes out of a Ready).
   */
  private issueRead(n: SimNode): void {
    const id = this.nextReadId++;
    try {
      n.raw!.readIndex(enc.encode(`r${id}`));
      this.reads.set(id, { required: this.maxCommitSeen, node: n.id });
      this.stats.readsIssued++;
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return;
    }
    // Adversarial pause point: a leader stalls right after sending the heartbeats that confirm
    // a read, so their acknowledgements wait in its buffer while the others may move on.
    if (
      this.faults &&
      this.pauseRate > 0 &&
      !this.paused(n) &&
      n.pausedUntil <= this.now &&
      n.raw!.basicStatus().role === 'leader' &&
      this.rng.nextFloat() < 0.3
    )
      this.pause(n, this.now + 1);
  }

  /**
   * n.propose(data), checking §3.10: a leader that is transferring leadership accepts no
   * proposal (it would keep the target behind, and what the target has not received when it
   * campaigns is lost). Throws what propose() throws.
   */
  private propose(n: SimNode, data: Uint8Array): number {
    const transferee = n.raw!.status().leadTransferee;
    const index = n.raw!.propose(data);
    if (transferee !== '')
      fail(
        `${n.id} accepted a proposal (at ${index}) while transferring leadership to ${transferee} (§3.10)`,
      );
    return index;
  }

  /**
   * leader.proposeConfChange(cc), checking the rules that keep single-server membership changes
   * safe when they take effect as they are applied (as in etcd). A leader accepts a change only
   * - once an entry of its own term is committed (Ongaro's 2015 correction to thesis §4.1:
   *   until then its log may end in an earlier leader's uncommitted change, and a second change
   *   on top of it can make two disjoint majorities);
   * - when every membership change in its log is applied (one change at a time: its own view of
   *   the voters, and so the change it validates, is current);
   * - not while it transfers leadership (§3.10).
   * Throws what proposeConfChange() throws.
   */
  private proposeConfChange(n: SimNode, cc: { type: ConfChangeType; node: string }): number {
    const raw = n.raw!;
    const s = raw.status();
    const ownTermCommitted = raw.termAt(s.commit) === s.term;
    let unapplied: number | undefined;
    for (let i = s.applied + 1; i <= s.lastIndex && unapplied === undefined; i++) {
      const at = `${i}|${raw.termAt(i)}`;
      if (
        this.confProposedAt.has(at) ||
        this.logAt.get(at)?.key.startsWith(`${EntryType.ConfChange}:`)
      )
        unapplied = i;
    }
    const index = raw.proposeConfChange(cc);
    this.confProposedAt.add(`${index}|${s.term}`);
    const what = `${n.id} accepted a membership change (at ${index}, term ${s.term})`;
    if (s.leadTransferee !== '')
      fail(`${what} while transferring leadership to ${s.leadTransferee} (§3.10)`);
    if (!ownTermCommitted)
      fail(`${what} before an entry of its own term is committed (commit ${s.commit})`);
    if (unapplied !== undefined)
      fail(
        `${what} with the membership change at ${unapplied} in its log not yet applied (applied ${s.applied}): two changes in flight`,
      );
    return index;
  }

  private confChange(leader: SimNode): void {
    const r = this.rng;
    const conf = leader.raw!.status().conf;
    const members = conf.voters.length + conf.learners.length;
    const choice = r.nextInt(4);
    let cc: { type: ConfChangeType; node: string } | undefined;
    let fresh = false;
    if (choice === 0 && this.nextNodeNo <= MAX_NODES && members < 6) {
      cc = {
        type: r.nextFloat() < 0.8 ? ConfChangeType.AddLearner : ConfChangeType.AddVoter,
        node: `n${this.nextNodeNo}`,
      };
      fresh = true;
    } else if (choice === 1 && conf.learners.length > 0) {
      cc = {
        type: ConfChangeType.PromoteLearner,
        node: conf.learners[r.nextInt(conf.learners.length)],
      };
    } else if (choice === 2 && members > 2) {
      // Never shrink two voters to one: see the note in src/raft/confchange.ts.
      const all = [...(conf.voters.length >= 3 ? conf.voters : []), ...conf.learners];
      if (all.length > 0)
        cc = { type: ConfChangeType.RemoveNode, node: all[r.nextInt(all.length)] };
    }
    if (!cc) return;
    try {
      this.proposeConfChange(leader, cc);
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return;
    }
    this.trace(`PROPOSE conf change ${ConfChangeType[cc.type]} ${cc.node} at ${leader.id}`);
    if (fresh) {
      this.nextNodeNo++;
      // A joining node starts with an empty disk and learns everything from the leader.
      this.addNode(cc.node, new MemoryStorage(), {
        index: 0,
        hash: 0,
        conf: { voters: [], learners: [] },
      });
    }
  }

  private send(from: SimNode, m: Message): void {
    let snap: SmState | undefined;
    if (m.type === MessageType.Snapshot) {
      // The host streams the snapshot data; it can only serve the snapshot it holds on disk.
      const ok = from.snapData.index === m.snapshot!.index;
      if (ok) snap = copySm(from.snapData);
      const lost = !ok || (this.faults && this.rng.nextFloat() < this.netProfile.dropRate);
      this.net.schedule(this.now + this.net.delay(true, 2), {
        kind: 'report',
        node: from.id,
        incarnation: from.incarnation,
        peer: m.to,
        ok: !lost,
      });
      if (lost) return;
    }
    this.net.send(this.now, from.id, m.to, { kind: 'msg', m, snap }, this.faults);
  }

  private deliver(): void {
    const due = this.net.takeDue(
      this.now,
      (id) => !!this.nodes.get(id)?.up,
      (id) => this.paused(this.nodes.get(id)!),
    );
    for (const { item, ok } of due) {
      if (item.kind === 'report') {
        const n = this.nodes.get(item.node)!;
        if (n.up && n.incarnation === item.incarnation) n.raw!.reportSnapshot(item.peer, item.ok);
        continue;
      }
      if (!ok) continue;
      const { m, snap } = item;
      const to = this.nodes.get(m.to)!;
      if (this.opts.trace) this.trace(fmtMsg(m));
      if (m.type === MessageType.Snapshot && snap) to.staged.set(snap.index, copySm(snap));
      const before = to.raw!.basicStatus();
      to.heardAt.set(m.from, to.ticks);
      to.raw!.step({ ...m });
      if (m.type === MessageType.AppendResp || m.type === MessageType.TransferLeader)
        this.noteTransfer(to);
      if (m.type === MessageType.TimeoutNow) this.checkCampaign(to, before.role);
      if (m.type === MessageType.Append) this.checkAppendCommit(to, before.commit, m);
    }
  }

  private processReady(n: SimNode): void {
    for (let round = 0; round < 2 && n.up; round++) {
      const raw = n.raw!;
      if (n.lagging) {
        if (this.faults && this.now < n.lagging.until) return;
        const rd = n.lagging.rd;
        n.lagging = undefined;
        this.finishReady(n, rd, [], false);
        continue;
      }
      if (!n.pending) {
        if (!raw.hasReady()) return;
        n.pending = raw.ready();
        this.checkNewEntries(n, n.pending);
        this.checkTimeoutNow(n, n.pending);
        // Half the time rd.messages leave at once and the Ready is persisted later, with
        // answers (votes, acknowledgements) stepped in meanwhile, as in the production host.
        n.pendingSent = this.faults && this.rng.nextFloat() < 0.5;
        if (n.pendingSent) for (const m of n.pending.messages) this.send(n, m);
      }
      // Persist at a random later point: a crash before it loses the whole Ready.
      if (this.faults && this.rng.nextFloat() >= this.persistRate) return;
      const rd = n.pending;
      const sent = n.pendingSent === true;
      n.pending = undefined;
      n.pendingSent = undefined;
      const before = n.storage.hardState();
      this.persistAndApply(n, rd, sent);
      // Adversarial crash point: right after a vote for another node was made durable and sent.
      const voted =
        rd.hardState !== undefined &&
        rd.hardState.vote !== '' &&
        rd.hardState.vote !== n.id &&
        (rd.hardState.vote !== before.vote || rd.hardState.term !== before.term);
      if (this.faults && n.up && voted && this.rng.nextFloat() < this.crashAfterVoteRate) {
        this.crash(n);
        n.downUntil = this.now + 1 + this.rng.nextInt(3);
      }
    }
  }

  /** Log matching and "committed entries are never overwritten", for every entry a node logs. */
  private checkNewEntries(n: SimNode, rd: Ready): void {
    if (rd.softState)
      this.trace(`${n.id} is ${rd.softState.role} (leader '${rd.softState.leader}')`);
    const commit = n.raw!.basicStatus().commit;
    let prevTerm = rd.entries.length > 0 ? n.raw!.termAt(rd.entries[0].index - 1) : undefined;
    for (const e of rd.entries) {
      const key = entryKey(e);
      const k = `${e.index}|${e.term}`;
      const seen = this.logAt.get(k);
      if (seen) {
        if (seen.key !== key)
          fail(`log matching: ${n.id} has ${key} at ${k}, another node has ${seen.key}`);
        if (seen.prevTerm !== undefined && prevTerm !== undefined && seen.prevTerm !== prevTerm) {
          fail(
            `log matching: ${n.id} entry ${k} follows term ${prevTerm}, elsewhere term ${seen.prevTerm}`,
          );
        }
      } else {
        this.logAt.set(k, { key, prevTerm });
      }
      // A node may hold stale, never-committed entries at an index committed elsewhere, but
      // never once it considers that index committed.
      const committed = e.index <= commit ? this.appliedAt.get(e.index) : undefined;
      if (committed !== undefined && committed !== `${e.term}|${key}`) {
        fail(
          `committed entry lost: ${n.id} logs ${e.term}|${key} at ${e.index}, committed was ${committed}`,
        );
      }
      prevTerm = e.term;
    }
  }

  private persistAndApply(n: SimNode, rd: Ready, sent: boolean): void {
    // rd.messages may leave before the Ready is durable (the core's contract: a leader counts
    // itself only after advance(), acknowledgements and votes come in messagesAfterAppend); a
    // crash in between loses the Ready although its messages are out.
    const earlySend = sent || (this.faults && this.rng.nextFloat() < 0.5);
    if (earlySend && !sent) {
      for (const m of rd.messages) this.send(n, m);
      if (this.rng.nextFloat() < this.crashNewLeaderRate) {
        this.crash(n);
        n.downUntil = this.now + 1 + this.rng.nextInt(25);
        return;
      }
    }
    if (rd.snapshot) {
      const data = n.staged.get(rd.snapshot.index);
      if (!data)
        fail(`${n.id} asked to install snapshot ${rd.snapshot.index} whose data it never received`);
      if (data.index <= n.sm.index)
        fail(`${n.id} applied index would go backwards: snapshot ${data.index} <= ${n.sm.index}`);
      const h = this.hashAt.get(data.index);
      if (h !== undefined && h !== data.hash)
        fail(`snapshot ${data.index} state differs from applied state`);
      n.storage.applySnapshot(rd.snapshot);
      n.snapData = copySm(data);
      n.sm = copySm(data);
      for (const idx of [...n.staged.keys()]) if (idx <= data.index) n.staged.delete(idx);
      this.stats.snapshotsInstalled++;
      this.trace(`${n.id} INSTALL snapshot ${data.index}`);
    }
    if (rd.hardState) n.storage.setHardState(rd.hardState);
    n.storage.append(rd.entries);
    // Committed entries may be applied before or after sending (they are already durable on a
    // quorum); a crash between the two loses the messages.
    if (
      this.faults &&
      rd.softState?.role === 'leader' &&
      rd.entries.length > 0 &&
      this.rng.nextFloat() < this.crashNewLeaderRate
    ) {
      // Crash between fsync and send: the new leader's entries exist only on its own disk.
      this.crash(n);
      n.downUntil = this.now + 1 + this.rng.nextInt(25);
      return;
    }
    // Only now, with the Ready durable: acknowledgements and votes.
    const late = [...(earlySend ? [] : rd.messages), ...rd.messagesAfterAppend];
    if (this.faults && rd.committedEntries.length > 0 && this.rng.nextFloat() < this.applyLagRate) {
      // A slow state machine: everything is sent, the entries are applied (and the Ready
      // advanced) later. The core meanwhile sees them committed but not applied.
      for (const m of late) this.send(n, m);
      n.lagging = { rd, until: this.now + 1 + this.rng.nextInt(this.applyLagMax) };
      this.stats.appliesLagged++;
      return;
    }
    const applyFirst = this.faults && this.rng.nextFloat() < 0.5;
    if (!applyFirst) for (const m of late) this.send(n, m);
    this.finishReady(n, rd, applyFirst ? late : [], applyFirst);
  }

  /** Apply rd's committed entries, send `late`, take its read states and advance. */
  private finishReady(n: SimNode, rd: Ready, late: Message[], applyFirst: boolean): void {
    const raw = n.raw!;
    for (const e of rd.committedEntries) this.apply(n, e);
    if (rd.committedEntries.length > 0 && raw.basicStatus().role === 'leader') {
      if (applyFirst && this.rng.nextFloat() < this.crashAfterCommitRate) {
        this.crash(n);
        n.downUntil = this.now + 1 + this.rng.nextInt(25);
        return;
      }
      this.leaderJustApplied = n;
    }
    for (const m of late) this.send(n, m);
    for (const rs of rd.readStates) {
      const id = Number(dec.decode(rs.context).slice(1));
      const req = this.reads.get(id);
      if (!req) fail(`${n.id} got a read state for unknown request ${id}`); // duplicates are fine
      if (rs.index < req.required) {
        fail(
          `ReadIndex not linearizable: read r${id} answered at ${rs.index} but ${req.required} was committed before it was issued`,
        );
      }
      this.stats.reads++;
    }
    raw.advance(rd);
  }

  private apply(n: SimNode, e: Entry): void {
    if (e.index !== n.sm.index + 1)
      fail(`${n.id} applies ${e.index} after ${n.sm.index} (gap or going backwards)`);
    const key = entryKey(e);
    const rec = `${e.term}|${key}`;
    const prev = this.appliedAt.get(e.index);
    if (prev !== undefined && prev !== rec)
      fail(
        `state machine safety: ${n.id} applies ${rec} at ${e.index}, another node applied ${prev}`,
      );
    n.sm.hash = mix(n.sm.hash, `${e.index}|${rec}`);
    n.sm.index = e.index;
    const h = this.hashAt.get(e.index);
    if (h !== undefined && h !== n.sm.hash)
      fail(`state machine safety: ${n.id} state hash at ${e.index} differs`);
    if (prev === undefined) {
      this.appliedAt.set(e.index, rec);
      this.committedByTerm.set(e.index, n.raw!.basicStatus().term);
      this.hashAt.set(e.index, n.sm.hash);
      const s = dec.decode(e.data);
      if (e.type === EntryType.Normal && s.startsWith('p')) this.stats.committedProposals++;
    }
    if (e.type === EntryType.Normal && e.data.length > 0)
      this.pendingProposals.delete(Number(dec.decode(e.data).slice(1)));
    if (e.type === EntryType.ConfChange) {
      const cc = decodeConfChange(e.data);
      n.sm.conf = n.raw!.applyConfChange(cc);
      this.noteTransfer(n); // a removed leader hands off
      if (prev === undefined) {
        this.stats.confChangesApplied++;
        this.trace(
          `${n.id} APPLY conf change ${ConfChangeType[cc.type]} ${cc.node} -> voters=${n.sm.conf.voters} learners=${n.sm.conf.learners}`,
        );
      }
      if (cc.type === ConfChangeType.RemoveNode && !this.retireAt.has(cc.node))
        this.retireAt.set(cc.node, { at: this.now + 30, index: e.index });
    }
  }

  private check(): void {
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      const s = n.raw!.basicStatus();
      this.checkCommitted(n, s.commit);
      if (s.commit > this.maxCommitSeen) this.maxCommitSeen = s.commit;
      if (s.term > this.stats.maxTerm) this.stats.maxTerm = s.term;
      if (s.role !== 'leader') continue;
      const other = this.leaderOfTerm.get(s.term);
      if (other !== undefined && other !== n.id)
        fail(`two leaders in term ${s.term}: ${other} and ${n.id}`);
      if (other === undefined) {
        this.leaderOfTerm.set(s.term, n.id);
        this.stats.leaders++;
      }
      // A leader acts only on an election that survives a crash: its term and its vote for
      // itself are on its disk (otherwise it can restart in an older term and vote again).
      const durable = n.storage.hardState();
      if (durable.term !== s.term || durable.vote !== n.id)
        fail(
          `${n.id} leads term ${s.term} on an election that is not durable (disk: term ${durable.term}, vote '${durable.vote}')`,
        );
      if (this.lastLeaderSeen.get(n.id) !== s.term) {
        this.lastLeaderSeen.set(n.id, s.term);
        this.checkLeaderCompleteness(n, s.firstIndex);
      }
      this.checkCommitDurable(n, s.term, s.commit);
      this.checkQuorumLease(n, s.term);
    }
  }

  /**
   * The commit history: every entry a node considers committed is the one every other node
   * considered committed at that index (same term, and by log matching the same entry), checked
   * as soon as its commit index covers it, before anything is applied.
   */
  private checkCommitted(n: SimNode, commit: number): void {
    const raw = n.raw!;
    const from = Math.min(this.commitChecked.get(n.id) ?? 0, commit);
    for (let i = from + 1; i <= commit; i++) {
      const t = raw.termAt(i);
      if (t === undefined) continue; // inside its snapshot
      const c = this.committedTerm.get(i);
      if (c === undefined) this.committedTerm.set(i, t);
      else if (c !== t)
        fail(
          `committed history: ${n.id} considers ${i}/${t} committed, but ${i}/${c} was committed`,
        );
    }
    this.commitChecked.set(n.id, commit);
  }

  /**
   * A follower starts a campaign (pre-vote or vote) only once every membership change it knows
   * committed is applied: until then its view of the voters may be stale, and it could win, or
   * count votes, under a configuration the cluster has left behind (with apply lag, by more
   * than one change).
   */
  private checkCampaign(n: SimNode, before: string): void {
    if (before !== 'follower' || !n.up) return;
    const s = n.raw!.basicStatus();
    if (s.role !== 'precandidate' && s.role !== 'candidate') return;
    for (let i = s.applied + 1; i <= s.commit; i++) {
      const key = this.logAt.get(`${i}|${n.raw!.termAt(i)}`)?.key;
      if (key?.startsWith(`${EntryType.ConfChange}:`))
        fail(
          `${n.id} campaigns (${s.role}, term ${s.term}) with the membership change at ${i} committed but not applied (applied ${s.applied})`,
        );
    }
  }

  /**
   * After a call into n's core that can start a transfer or send TimeoutNow (a step of an
   * AppendResp or TransferLeader, a leader's tick, a transfer request, a membership change
   * applied): note whether it leaves n leading with the transfer's target caught up.
   */
  private noteTransfer(n: SimNode): void {
    if (n.raw!.basicStatus().role !== 'leader') return;
    const s = n.raw!.status();
    if (s.leadTransferee === '' || s.progress[s.leadTransferee]?.match !== s.lastIndex) return;
    let allowed = this.timeoutNowAllowed.get(n.id);
    if (allowed === undefined) this.timeoutNowAllowed.set(n.id, (allowed = new Set()));
    allowed.add(`${s.term}|${s.leadTransferee}`);
  }

  /**
   * §3.10: a leader sends TimeoutNow only to a target it knows holds its whole log (match equal
   * to its last index): a lagging target campaigns without the leader's newest entries (and
   * loses, or wins and drops them). The message was made by one of the calls since n's
   * previous ready(); one of them must have left n leading in the message's term with the
   * target caught up (noteTransfer).
   */
  private checkTimeoutNow(n: SimNode, rd: Ready): void {
    const allowed = this.timeoutNowAllowed.get(n.id);
    this.timeoutNowAllowed.delete(n.id);
    for (const m of rd.messages) {
      if (m.type !== MessageType.TimeoutNow) continue;
      if (allowed?.has(`${m.term}|${m.to}`)) continue;
      fail(
        `${n.id} sends TimeoutNow (term ${m.term}) to ${m.to} although no step since its previous Ready left it leading with ${m.to} holding its whole log (§3.10)`,
      );
    }
  }

  /**
   * §5.3 and §4 (the quorum is of voters): an entry a leader considers committed is on the disks
   * of a majority of the voters in its configuration (learners do not count). Once acknowledged
   * it stays there: only a leader lacking it could overwrite it, and none can be elected by a
   * majority of its holders. Checked on every move of a leader's commit index in its term.
   */
  private checkCommitDurable(n: SimNode, term: number, commit: number): void {
    const seen = this.leaderCommitChecked.get(n.id);
    const voters = n.raw!.status().conf.voters;
    this.leaderCommitChecked.set(n.id, { term, commit, voters });
    if (seen === undefined || seen.term !== term || commit <= seen.commit) return;
    const t = n.raw!.termAt(commit);
    if (t === undefined) return;
    const holds = (v: string): boolean => {
      const d = this.nodes.get(v)?.storage;
      if (!d) return false;
      return commit < d.firstIndex() || (commit <= d.lastIndex() && d.term(commit) === t);
    };
    // The commit may have moved before a membership change the leader applied in this step.
    const majority = (vs: string[]) => vs.filter(holds).length >= Math.floor(vs.length / 2) + 1;
    if (!majority(voters) && !majority(seen.voters))
      fail(
        `${n.id} (term ${term}) commits ${commit}/${t}, which only ${voters.filter(holds).join(',') || 'no voter'} of its voters ${voters.join(',')} (before this step ${seen.voters.join(',')}) hold on disk`,
      );
  }

  /**
   * Check-quorum (thesis §6.2): a leader steps down when an election timeout passes without it
   * hearing from a majority of the voters. Its timer counts its own ticks and restarts with a
   * leadership transfer (as in etcd), and a new member counts as heard; so the check applies
   * once the leader has led for three election timeouts with the same membership and no
   * transfer in flight, and then requires that it heard from a majority (itself included) within
   * the last two. Any message delivered counts as heard (the core counts only answers in its
   * term), so the check errs on the side of the leader.
   */
  private checkQuorumLease(n: SimNode, term: number): void {
    if (!this.checkQuorum) return;
    const s = n.raw!.status();
    const members = `${s.conf.voters.join(',')}|${s.conf.learners.join(',')}`;
    let w = this.quorumWatch.get(n.id);
    if (w === undefined || w.term !== term || w.incarnation !== n.incarnation) {
      w = { term, incarnation: n.incarnation, since: n.ticks, members };
      this.quorumWatch.set(n.id, w);
    }
    if (w.members !== members || s.leadTransferee !== '') {
      w.members = members;
      w.since = n.ticks;
    }
    if (n.ticks - w.since < 3 * ELECTION_TICKS) return;
    const from = n.ticks - 2 * ELECTION_TICKS + 1;
    const heard = s.conf.voters.filter(
      (v) => v === n.id || (n.heardAt.get(v) ?? -Infinity) >= from,
    );
    if (heard.length < Math.floor(s.conf.voters.length / 2) + 1)
      fail(
        `check-quorum: ${n.id} still leads term ${term} having heard from only ${heard.join(',') || 'no voter'} of ${s.conf.voters.join(',')} in ${2 * ELECTION_TICKS} of its ticks`,
      );
  }

  /**
   * §5.3: an Append moves the receiver's commit index to at most min(leaderCommit, index of the
   * last new entry). Entries beyond the Append's may be a stale suffix the Append did not
   * reach; no fault here makes that reachable under the core's probing (the first Append a
   * follower accepts in a term starts where its log diverges and so truncates such a suffix,
   * see test/sim/README.md), so the rule itself is checked.
   */
  private checkAppendCommit(n: SimNode, before: number, m: Message): void {
    const commit = n.raw!.basicStatus().commit;
    const bound = Math.max(before, Math.min(m.commit, m.index + m.entries.length));
    if (commit > bound)
      fail(
        `${n.id} commits ${commit} on an Append from ${m.from} ending at ${m.index + m.entries.length} with commit ${m.commit} (§5.3 bound ${bound})`,
      );
  }

  /**
   * §5.4: a new leader's log holds every entry committed in an earlier term. (A leader elected
   * late, e.g. by votes that waited in a paused node's buffer, need not hold what a later term
   * committed.)
   */
  private checkLeaderCompleteness(n: SimNode, firstIndex: number): void {
    const leaderTerm = n.raw!.basicStatus().term;
    for (const [index, rec] of this.appliedAt) {
      if (index < firstIndex) continue;
      if (this.committedByTerm.get(index)! > leaderTerm) continue;
      const term = Number(rec.slice(0, rec.indexOf('|')));
      const t = n.raw!.termAt(index);
      if (t !== term)
        fail(
          `leader completeness: leader ${n.id} has term ${t} at committed index ${index} (committed term ${term})`,
        );
    }
  }
}
