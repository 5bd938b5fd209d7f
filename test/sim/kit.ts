/**
 * The simulation kit both simulators share: a seeded network (drop, duplicate, delay and so
 * reorder, partitions, isolation of the leader, asymmetric link cuts), and for the storage
 * simulator a simulated clock with timers and a run queue, and a simulated disk whose crash loses
 * unsynced writes and whose fsyncs take varying (sometimes stalling) time.
 *
 * Everything is driven by one PRNG, so a seed replays identically.
 */
import { MemoryLevel } from 'memory-level';
import { Message, MessageType } from '../../src/raft';
import type { Prng } from '../../src/util/prng';

export class SimFailure extends Error {}

export function fail(msg: string): never {
  throw new SimFailure(msg);
}

const MSG_NAMES = MessageType as unknown as Record<number, string>;

/** One line per message, for traces. */
export function fmtMsg(m: Message): string {
  let s = `${m.from}->${m.to} ${MSG_NAMES[m.type]} t${m.term}`;
  if (m.type === MessageType.Append)
    s += ` prev=${m.index}/${m.logTerm} n=${m.entries.length} c=${m.commit}`;
  else if (m.type === MessageType.AppendResp)
    s += ` idx=${m.index}${m.reject ? ` REJECT hint=${m.rejectHint}/${m.logTerm}` : ''}`;
  else if (m.type === MessageType.Heartbeat) s += ` c=${m.commit}`;
  else if (m.type === MessageType.Vote || m.type === MessageType.PreVote)
    s += ` last=${m.index}/${m.logTerm}`;
  else if (m.type === MessageType.VoteResp || m.type === MessageType.PreVoteResp)
    s += m.reject ? ' reject' : ' grant';
  else if (m.type === MessageType.Snapshot) s += ` snap=${m.snapshot?.index}/${m.snapshot?.term}`;
  else if (m.type === MessageType.ReadIndexResp) s += ` idx=${m.index}`;
  return s;
}

// ------------------------------------------------------------------------------------------
// Network

/** A seed's network fault profile. */
export interface NetProfile {
  dropRate: number;
  dupRate: number;
  /** Ticks a message may be delayed beyond the next one (so messages reorder). */
  maxDelay: number;
  /** Per tick: chance of a new partition (and twice that of healing one). */
  partitionRate: number;
  /**
   * Chance that a message is held up far longer than usual (the receiver stalls in a GC pause
   * or a slow handler with the message already in its socket buffer): it is handled up to
   * `longDelayMax` ticks late, often after an election timeout, when its sender may have been
   * deposed; having crossed the network, a later partition does not stop it (a link cut when
   * it is sent does). Drawn by the simulators that opt in (0 or absent: never).
   */
  longDelayRate?: number;
  longDelayMax?: number;
}

export function drawNetProfile(r: Prng): NetProfile {
  return {
    dropRate: r.nextFloat() * 0.15,
    dupRate: r.nextFloat() * 0.05,
    maxDelay: r.nextFloat() < 0.3 ? 4 + r.nextInt(6) : r.nextInt(4),
    partitionRate: 0.003 + r.nextFloat() * 0.03,
  };
}

interface InFlight<T> {
  at: number;
  /** Absent for out-of-band items (snapshot-transfer reports), which no cut stops. */
  link?: { from: string; to: string };
  /** Already in the receiver's buffer (a long delay): only the receiver being down stops it. */
  arrived?: boolean;
  item: T;
}

/**
 * Messages in flight between nodes, in ticks. While faults are on, a message is dropped,
 * duplicated or delayed by the profile; items due at the same tick are delivered in random order.
 */
export class SimNetwork<T> {
  private q: InFlight<T>[] = [];
  /** Directed links that are cut: "a>b". */
  readonly cut = new Set<string>();
  dropped = 0;
  delivered = 0;

  constructor(
    private readonly rng: Prng,
    readonly p: NetProfile,
    private readonly trace: (line: string) => void,
  ) {}

  /** Send item from -> to at tick `now`. Returns false when it was dropped. */
  send(now: number, from: string, to: string, item: T, faults: boolean): boolean {
    const r = this.rng;
    if (faults && r.nextFloat() < this.p.dropRate) {
      this.dropped++;
      return false;
    }
    const copies = faults && r.nextFloat() < this.p.dupRate ? 2 : 1;
    const { longDelayRate = 0, longDelayMax = 0 } = this.p;
    for (let i = 0; i < copies; i++) {
      const at = now + 1 + (faults ? r.nextInt(this.p.maxDelay + 1) : 0);
      // (No draw at all when the profile has no long delays: other simulators' seeds stay put.)
      if (faults && longDelayRate > 0 && r.nextFloat() < longDelayRate) {
        if (this.blocked(from, to)) {
          this.dropped++;
          continue;
        }
        this.q.push({
          at: at + 1 + r.nextInt(longDelayMax),
          link: { from, to },
          item,
          arrived: true,
        });
      } else this.q.push({ at, link: { from, to }, item });
    }
    return true;
  }

  /**
   * Drop every message in flight on a link (as if every connection were reset); out-of-band
   * items stay. Returns how many were dropped.
   */
  dropInFlight(onDrop?: (item: T) => void): number {
    const before = this.q.length;
    const kept: InFlight<T>[] = [];
    for (const f of this.q) {
      if (f.link === undefined) kept.push(f);
      else onDrop?.(f.item);
    }
    this.q = kept;
    this.dropped += before - this.q.length;
    return before - this.q.length;
  }

  /** An out-of-band item (a report to a node), delivered at tick `at` whatever the links. */
  schedule(at: number, item: T): void {
    this.q.push({ at, item });
  }

  /** A delay drawn like a message's, for things that travel outside messages. */
  delay(faults: boolean, extra = 0): number {
    return 1 + (faults ? this.rng.nextInt(this.p.maxDelay + 1 + extra) : 0);
  }

  blocked(from: string, to: string): boolean {
    return this.cut.has(`${from}>${to}`);
  }

  /**
   * Items due at tick `now`, in random order, each with whether its link is up (`isUp(to)` and
   * not cut); undeliverable ones are counted as dropped. Items for a `held` (paused) receiver
   * stay queued until it resumes.
   */
  takeDue(
    now: number,
    isUp: (id: string) => boolean,
    held?: (id: string) => boolean,
    onHeldDrop?: (item: T) => void,
  ): { item: T; ok: boolean }[] {
    const due: InFlight<T>[] = [];
    const later: InFlight<T>[] = [];
    for (const f of this.q) {
      if (f.at > now) later.push(f);
      else if (f.link && held?.(f.link.to)) {
        // The receiver is paused: what reaches it waits in its buffer (no cut stops it then).
        if (isUp(f.link.to) && (f.arrived || !this.blocked(f.link.from, f.link.to)))
          later.push({ ...f, arrived: true });
        else {
          this.dropped++;
          onHeldDrop?.(f.item);
        }
      } else due.push(f);
    }
    this.q = later;
    for (let i = due.length - 1; i > 0; i--) {
      const j = this.rng.nextInt(i + 1);
      [due[i], due[j]] = [due[j], due[i]];
    }
    return this.interleaveBacklog(due).map((f) => {
      const ok =
        !f.link || (isUp(f.link.to) && (f.arrived || !this.blocked(f.link.from, f.link.to)));
      if (f.link) {
        if (ok) this.delivered++;
        else this.dropped++;
      }
      return { item: f.item, ok };
    });
  }

  /**
   * Items that waited in a receiver's buffer are handled connection by connection: in the
   * order they arrived on their link, the links (and the other items) interleaved at random.
   * Without such items, `due` is returned as it is.
   */
  private interleaveBacklog(due: InFlight<T>[]): InFlight<T>[] {
    if (!due.some((f) => f.arrived)) return due;
    const groups: InFlight<T>[][] = [];
    const byLink = new Map<string, InFlight<T>[]>();
    for (const f of due) {
      if (!f.arrived || !f.link) {
        groups.push([f]);
        continue;
      }
      const key = `${f.link.from}>${f.link.to}`;
      let g = byLink.get(key);
      if (!g) {
        g = [];
        byLink.set(key, g);
        groups.push(g);
      }
      g.push(f);
    }
    for (const g of byLink.values()) g.sort((a, b) => a.at - b.at);
    const out: InFlight<T>[] = [];
    while (groups.length > 0) {
      const i = this.rng.nextInt(groups.length);
      out.push(groups[i].shift()!);
      if (groups[i].length === 0) groups.splice(i, 1);
    }
    return out;
  }

  /**
   * One tick of partition faults: now and then cut the network (isolate the leader, split in two
   * groups, or cut random directed links), and heal it again.
   */
  partitionStep(ids: string[], leader: string | undefined): void {
    const r = this.rng;
    if (r.nextFloat() < this.p.partitionRate) {
      this.cut.clear();
      const kind = r.nextFloat();
      if (kind < 0.25 && leader) {
        // Isolate the leader (it keeps believing it leads until check-quorum or a higher term).
        for (const b of ids) {
          if (b === leader) continue;
          this.cut.add(`${leader}>${b}`);
          this.cut.add(`${b}>${leader}`);
        }
        this.trace(`ISOLATE leader ${leader}`);
      } else if (kind < 0.65) {
        const side = new Map(ids.map((id) => [id, r.nextFloat() < 0.5]));
        for (const a of ids)
          for (const b of ids) if (side.get(a) !== side.get(b)) this.cut.add(`${a}>${b}`);
        this.trace(
          `PARTITION ${ids.filter((id) => side.get(id)).join(',')} | ${ids.filter((id) => !side.get(id)).join(',')}`,
        );
      } else {
        for (const a of ids)
          for (const b of ids) if (a !== b && r.nextFloat() < 0.25) this.cut.add(`${a}>${b}`);
        this.trace(`ASYMMETRIC cut ${[...this.cut].join(' ')}`);
      }
    } else if (this.cut.size > 0 && r.nextFloat() < this.p.partitionRate * 2) {
      this.heal();
      this.trace('HEAL network');
    }
  }

  heal(): void {
    this.cut.clear();
  }
}

// ------------------------------------------------------------------------------------------
// Time

/** Bound on run-queue rounds in one settle(): more means the hosts never go quiet (a livelock). */
const SETTLE_ROUNDS_MAX = 100_000;

const macrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Simulated time in milliseconds, with timers and a run queue ("soon"). Nothing here reads the
 * real clock: timers fire when the simulator advances time, and settle() runs queued work (and
 * lets promise chains, including memory-level's, finish) until everything is waiting on a
 * timer or the network.
 */
export class SimTime {
  nowMs = 0;
  private timers: { at: number; seq: number; fn: () => void }[] = [];
  private queue: (() => void)[] = [];
  private seq = 0;

  /** Run fn at simulated time `at` (ms); the returned function cancels it. */
  at(at: number, fn: () => void): () => void {
    const t = { at, seq: this.seq++, fn };
    this.timers.push(t);
    return () => {
      const i = this.timers.indexOf(t);
      if (i >= 0) this.timers.splice(i, 1);
    };
  }

  soon(fn: () => void): void {
    this.queue.push(fn);
  }

  private nextDue(): (() => void) | undefined {
    let best = -1;
    for (let i = 0; i < this.timers.length; i++) {
      const t = this.timers[i];
      if (t.at > this.nowMs) continue;
      if (
        best < 0 ||
        t.at < this.timers[best].at ||
        (t.at === this.timers[best].at && t.seq < this.timers[best].seq)
      )
        best = i;
    }
    if (best < 0) return undefined;
    return this.timers.splice(best, 1)[0].fn;
  }

  /** Run queued work and due timers until nothing is left to run at the current time. */
  async settle(): Promise<void> {
    for (let round = 0; ; round++) {
      if (round > SETTLE_ROUNDS_MAX) fail('livelock: the hosts never went quiet');
      if (this.queue.length > 0) {
        const q = this.queue;
        this.queue = [];
        for (const fn of q) fn();
      } else {
        const fn = this.nextDue();
        if (fn) fn();
      }
      await macrotask();
      if (this.queue.length === 0 && !this.timers.some((t) => t.at <= this.nowMs)) {
        await macrotask();
        if (this.queue.length === 0 && !this.timers.some((t) => t.at <= this.nowMs)) return;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Disk

type DiskOp =
  | { type: 'put'; key: Buffer; value: Buffer }
  | { type: 'del'; key: Buffer }
  | { type: 'clear'; range: ClearRange };

/** The ranges of `clear()` the disk models (the keys between the bounds are removed). */
interface ClearRange {
  gt?: Buffer;
  gte?: Buffer;
  lt?: Buffer;
}

/** How a simulated disk's writes take time (decided per write by the simulator). */
export interface DiskTiming {
  /** Milliseconds an fsync takes (0 for an unsynced write: it only reaches the page cache). */
  syncMs(): number;
  /** Run fn after ms of simulated time. */
  after(ms: number, fn: () => void): void;
}

/**
 * A node's disk holding one LevelDB database. Writes are serialised (LevelDB's write queue); a
 * write with `sync: false` reaches the page cache at once, a synced one takes the fsync time the
 * simulator draws (sometimes longer than an election timeout) and then makes every earlier write
 * durable too (LevelDB appends to one log file). A crash keeps the durable state plus, with power
 * loss, only a prefix of the later writes (without power loss: all written ones); writes still
 * waiting in the queue are lost, and the promises of the crashed incarnation never settle.
 */
export class SimDisk {
  private durable = new Map<string, Buffer>();
  /** Written but not yet known durable, oldest first. */
  private journal: DiskOp[][] = [];
  private tail: Promise<void> = Promise.resolve();
  private generation = 0;
  /** Writes issued and not yet completed. */
  inFlight = 0;

  constructor(private readonly timing: DiskTiming) {}

  get unsynced(): number {
    return this.journal.length;
  }

  /** A crash: keep the first `keep` unsynced writes, lose the rest and everything queued. */
  crash(keep: number): void {
    for (const b of this.journal.slice(0, keep)) this.fold(b);
    this.journal = [];
    this.generation++;
    this.tail = Promise.resolve();
    this.inFlight = 0;
  }

  /** The disk's content wiped (a replaced drive, an operator's rm -rf). */
  wipe(): void {
    this.crash(0);
    this.durable.clear();
  }

  /** Open the database as the durable state has it, with every write going through the model. */
  async open(): Promise<MemoryLevel<Buffer, Buffer>> {
    const db = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    const init = [...this.durable].map(([k, v]) => ({
      type: 'put' as const,
      key: Buffer.from(k, 'latin1'),
      value: v,
    }));
    if (init.length) await db.batch(init);
    const d = db as any;
    const batch = db.batch.bind(db) as (...a: any[]) => Promise<void>;
    const clear = db.clear.bind(db) as (...a: any[]) => Promise<void>;
    const copy = (ops: DiskOp[]): DiskOp[] =>
      ops.map((op) =>
        op.type === 'put'
          ? { type: 'put', key: Buffer.from(op.key), value: Buffer.from(op.value) }
          : { type: 'del', key: Buffer.from((op as { key: Buffer }).key) },
      );
    d.batch = (ops?: DiskOp[], o?: { sync?: boolean }) => {
      if (ops !== undefined) return this.write(copy(ops), o?.sync === true, () => batch(ops, o));
      // A chained batch (src/util/level-batch.ts): the same write, once write() is called.
      const queued: DiskOp[] = [];
      const chained = {
        put: (key: Buffer, value: Buffer) => (queued.push({ type: 'put', key, value }), chained),
        del: (key: Buffer) => (queued.push({ type: 'del', key }), chained),
        write: (wo?: { sync?: boolean }) =>
          this.write(copy(queued), wo?.sync === true, () => batch(queued, wo)),
      };
      return chained;
    };
    d.put = (key: Buffer, value: Buffer, o?: { sync?: boolean }) =>
      this.write(copy([{ type: 'put', key, value }]), o?.sync === true, () =>
        batch([{ type: 'put', key, value }], o),
      );
    d.del = (key: Buffer, o?: { sync?: boolean }) =>
      this.write(copy([{ type: 'del', key }]), o?.sync === true, () =>
        batch([{ type: 'del', key }], o),
      );
    d.clear = (o?: ClearRange) => {
      const keys = Object.keys(o ?? {});
      if (keys.some((k) => k !== 'gt' && k !== 'gte' && k !== 'lt'))
        throw new Error(`simulated disk: clear(${keys.join(', ')}) is not modelled`);
      const range: ClearRange = {};
      if (o?.gt) range.gt = Buffer.from(o.gt);
      if (o?.gte) range.gte = Buffer.from(o.gte);
      if (o?.lt) range.lt = Buffer.from(o.lt);
      return this.write([{ type: 'clear', range }], false, () => clear(o));
    };
    return db;
  }

  /** Queue a write; it becomes visible when it completes, durable when a sync completes. */
  private write(ops: DiskOp[], sync: boolean, apply: () => Promise<void>): Promise<void> {
    const gen = this.generation;
    const never = new Promise<void>(() => undefined);
    this.inFlight++;
    const done = this.tail.then(async () => {
      if (gen !== this.generation) return never;
      this.journal.push(ops);
      const mine = this.journal.length;
      await apply();
      if (sync) {
        const ms = this.timing.syncMs();
        await new Promise<void>((resolve) => this.timing.after(ms, resolve));
        if (gen !== this.generation) return never;
        // The fsync made this write and every earlier one durable.
        for (const b of this.journal.splice(0, mine)) this.fold(b);
      }
      this.inFlight--;
    });
    this.tail = done;
    return done;
  }

  private fold(ops: DiskOp[]): void {
    for (const op of ops) {
      if (op.type === 'clear') {
        const { gt, gte, lt } = op.range;
        for (const k of [...this.durable.keys()]) {
          const key = Buffer.from(k, 'latin1');
          if (gt && Buffer.compare(key, gt) <= 0) continue;
          if (gte && Buffer.compare(key, gte) < 0) continue;
          if (lt && Buffer.compare(key, lt) >= 0) continue;
          this.durable.delete(k);
        }
      } else if (op.type === 'put') this.durable.set(op.key.toString('latin1'), op.value);
      else this.durable.delete(op.key.toString('latin1'));
    }
  }
}
