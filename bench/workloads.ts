/**
 * The workloads, written once against the Target interface and run against each system.
 * Key ranges are disjoint per workload so they do not disturb one another on one cluster.
 */
import { ClientStorage } from '../src/client/client-storage';
import { StorageRpc } from '../src/client/rpc';
import { u64 } from '../src/util/ids';
import { EtcdTarget } from './etcd/cluster';
import { fillHistoryInChild } from './lib/history-fill';
import { oidOf, ZeoRaftTarget } from './lib/zeoraft';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTempDir, removeDir, sleep, waitFor } from './lib/proc';
import { closedLoop, LatencySummary, median, nowMs, openLoop, summarize } from './lib/stats';
import type { AckId, Conn, Target } from './lib/target';

export const VALUE_BYTES = 256;
/** Client connections are spread over this many gRPC channels (TCP connections) per node. */
export const CHANNELS_PER_NODE = 8;

const COMMIT_KEYS = 10_000;
const COMMIT_KEY_BASE = 0;
const HOT_KEYS = 100;
const HOT_KEY_BASE = 20_000;
const LOAD_KEY_BASE = 30_000;
const FANOUT_KEY_BASE = 50_000;
const FANOUT_KEYS = 1000;
const FAILOVER_KEY_BASE = 100_000;
const CLIENT_COMMIT_KEY_BASE = 60_000; // up to four points of COMMIT_KEYS keys
let clientCommitPoints = 0;
/** Concurrencies of the `commit (ClientStorage)` row, next to the raw `Commit` row's. */
export const CLIENT_COMMIT_CLIENTS = [1, 64];
const MEMORY_KEY_BASE = 10_000_000;
const HISTORY_KEY = 9_000_000;
/** Read-modify-write attempts before an operation is counted as failed. */
const RMW_ATTEMPTS_MAX = 100;
/** Open-loop writers keep at most this many commits outstanding. */
const OPEN_LOOP_INFLIGHT_MAX = 256;

export interface Sizes {
  durationMs: number;
  warmupMs: number;
  commitClients: number[];
  conflictClients: number;
  loadClients: number;
  subscribers: number;
  writerPerSecond: number;
  failoverTrials: number;
  objects: number;
  /** Keys read by the load workloads (and warmed in the client cache). */
  loadKeys: number;
  /** Loads through the 1 MiB client cache in the memory workload. */
  cacheBoundLoads: number;
  /** Transactions in the store of the history workload's standalone node. */
  historyTransactions: number;
}

function value(seed: number): Buffer {
  const b = Buffer.alloc(VALUE_BYTES, seed & 0xff);
  b.writeUInt32BE(seed >>> 0, 0);
  return b;
}

function randomInt(n: number): number {
  return Math.floor(Math.random() * n);
}

const T0 = nowMs();
function log(msg: string): void {
  process.stderr.write(`[bench ${((nowMs() - T0) / 1000).toFixed(1)} s] ${msg}\n`);
}

/** Errors seen by a workload, first few kept as examples. */
class ErrorTally {
  count = 0;
  readonly examples: string[] = [];
  add = (e: unknown): void => {
    this.count++;
    if (this.examples.length < 3) this.examples.push(String((e as Error)?.message ?? e));
  };
}

/** A closed-loop run's throughput point. */
/** CPU seconds all nodes used between a loop's window edges (closedLoop's onWindow). */
class CpuWindow {
  private startS: number | undefined;
  private usedS: number | undefined;

  constructor(private readonly t: Target) {}

  private total(): number | undefined {
    let sum = 0;
    for (let i = 0; i < this.t.nodeCount; i++) {
      const s = this.t.cpuSeconds(i);
      if (s === undefined) return undefined;
      sum += s;
    }
    return sum;
  }

  readonly edge = (e: 'start' | 'end'): void => {
    const now = this.total();
    if (e === 'start') this.startS = now;
    else if (now !== undefined && this.startS !== undefined) this.usedS = now - this.startS;
  };

  msPer(ops: number): number | undefined {
    return this.usedS === undefined || ops === 0 ? undefined : (this.usedS * 1000) / ops;
  }
}

function throughputPoint(
  clients: number,
  r: Awaited<ReturnType<typeof closedLoop>>,
  errors: ErrorTally,
): ThroughputPoint {
  return {
    clients,
    perSecond: r.ok / r.seconds,
    failed: r.failed,
    errors: errors.count,
    errorExamples: errors.examples,
    ...summarize(r.latenciesMs),
  };
}

async function populate(t: Target, conn: Conn, base: number, count: number): Promise<void> {
  const batch = Math.min(t.maxBatch, 1000);
  for (let k = 0; k < count; k += batch)
    await conn.putMany(base + k, Math.min(batch, count - k), value(k));
}

// ---------------------------------------------------------------------------------------------

export interface ThroughputPoint extends LatencySummary {
  clients: number;
  perSecond: number;
  /**
   * CPU time of all nodes (user + system) per successful operation over the measured window:
   * what the work costs, whatever else the machine runs at the time.
   */
  cpuMsPerOp?: number;
  failed: number;
  errors: number;
  errorExamples: string[];
}

export interface Baseline {
  /** One 256-byte append + fdatasync to a file in the temp dir. */
  fsync: LatencySummary;
  /** One cheap call to the leader (ZeoRaft LastTransaction, etcd Maintenance.Status). */
  roundTrip: LatencySummary;
  /** MISSION §7: a single client's commit within 2 × (fsync + round trip), from the medians. */
  singleCommitBoundMs: number;
}

/** What a single commit cannot beat on this machine: an fsync and a round trip. */
export async function baseline(t: Target): Promise<Baseline> {
  const dir = makeTempDir('fsync');
  const fsyncs: number[] = [];
  try {
    const fd = fs.openSync(path.join(dir, 'f'), 'a');
    const data = Buffer.alloc(VALUE_BYTES, 1);
    for (let i = 0; i < 200; i++) {
      const t0 = nowMs();
      fs.writeSync(fd, data);
      fs.fdatasyncSync(fd);
      fsyncs.push(nowMs() - t0);
    }
    fs.closeSync(fd);
  } finally {
    removeDir(dir);
  }
  const conn = t.conn(await t.leader(), 0);
  const rtts: number[] = [];
  for (let i = 0; i < 500; i++) {
    const t0 = nowMs();
    await conn.ping();
    rtts.push(nowMs() - t0);
  }
  const fsync = summarize(fsyncs);
  const roundTrip = summarize(rtts);
  const b = { fsync, roundTrip, singleCommitBoundMs: 2 * (fsync.p50Ms + roundTrip.p50Ms) };
  log(
    `${t.name} baseline: fsync p50 ${fsync.p50Ms.toFixed(2)} ms, round trip p50 ${roundTrip.p50Ms.toFixed(2)} ms`,
  );
  return b;
}

/**
 * C clients, each writing one 256-byte value among the keys it owns (key % C === client).
 * `afterPoint` runs after each point (the ClientStorage row is measured right after the raw one
 * of the same C, so the two see the same machine).
 */
export async function commitWorkload(
  t: Target,
  sizes: Sizes,
  afterPoint?: (clients: number) => Promise<void>,
): Promise<ThroughputPoint[]> {
  const points: ThroughputPoint[] = [];
  for (const clients of sizes.commitClients) {
    const leader = await t.leader();
    const conns = Array.from({ length: clients }, (_, c) => t.conn(leader, c % CHANNELS_PER_NODE));
    const owned = Math.floor(COMMIT_KEYS / clients);
    const errors = new ErrorTally();
    const cpu = new CpuWindow(t);
    const r = await closedLoop(
      clients,
      sizes.durationMs,
      sizes.warmupMs,
      async (c) => {
        const key = COMMIT_KEY_BASE + c + clients * randomInt(owned);
        await conns[c].put(key, value(key));
        return true;
      },
      errors.add,
      cpu.edge,
    );
    const p = { ...throughputPoint(clients, r, errors), cpuMsPerOp: cpu.msPer(r.ok) };
    log(
      `${t.name} commit C=${clients}: ${p.perSecond.toFixed(0)}/s p50 ${p.p50Ms.toFixed(2)} ms p99 ${p.p99Ms.toFixed(2)} ms, CPU ${p.cpuMsPerOp?.toFixed(3)} ms per commit`,
    );
    points.push(p);
    await afterPoint?.(clients);
  }
  return points;
}

/**
 * ClientStorage.commit() as an application runs it: one ClientStorage (one connection, its
 * Subscribe stream, its cache) shared by C concurrent committers, each writing one 256-byte value
 * among the keys it owns (key % C === committer) based on the serial of its last write there, like
 * the raw `Commit` row. A commit returns once the client's own view includes it.
 */
export async function clientCommitPoint(
  t: ZeoRaftTarget,
  sizes: Sizes,
  clients: number,
): Promise<ThroughputPoint> {
  const leader = await t.leader();
  const others = Array.from({ length: t.nodeCount }, (_, i) => i).filter((i) => i !== leader);
  const cs = await ClientStorage.open({
    addresses: [leader, ...others].map((i) => t.address(i)),
    cache: { memoryBytes: 64 << 20 },
    clientName: `bench commit C=${clients}`,
  });
  try {
    const owned = Math.floor(COMMIT_KEYS / clients);
    // Each point writes keys of its own: its committers start without serials, so keys an
    // earlier point wrote would all be conflicts (based on "new object", current serial set).
    const keyBase = CLIENT_COMMIT_KEY_BASE + COMMIT_KEYS * (clientCommitPoints++ % 4);
    const serials = new Map<number, Buffer>();
    const errors = new ErrorTally();
    const r = await closedLoop(
      clients,
      sizes.durationMs,
      sizes.warmupMs,
      async (c) => {
        const key = keyBase + c + clients * randomInt(owned);
        const tid = await cs.commit({
          stores: [{ oid: oidOf(key), serial: serials.get(key), data: value(key) }],
        });
        serials.set(key, tid);
        return true;
      },
      errors.add,
    );
    const p = throughputPoint(clients, r, errors);
    log(
      `${t.name} commit (ClientStorage) C=${clients}: ${p.perSecond.toFixed(0)}/s p50 ${p.p50Ms.toFixed(2)} ms p99 ${p.p99Ms.toFixed(2)} ms`,
    );
    return p;
  } finally {
    await cs.close();
  }
}

export interface ConflictResult extends ThroughputPoint {
  conflictsPerSecond: number;
}

/** C clients doing read-modify-write on a hot set of 100 keys, retrying on conflict. */
export async function conflictWorkload(t: Target, sizes: Sizes): Promise<ConflictResult> {
  const leader = await t.leader();
  await populate(t, t.conn(leader), HOT_KEY_BASE, HOT_KEYS);
  const clients = sizes.conflictClients;
  const conns = Array.from({ length: clients }, (_, c) => t.conn(leader, c % CHANNELS_PER_NODE));
  let conflicts = 0;
  let measuring = false;
  const errors = new ErrorTally();
  const start = nowMs();
  const r = await closedLoop(
    clients,
    sizes.durationMs,
    sizes.warmupMs,
    async (c) => {
      measuring ||= nowMs() - start >= sizes.warmupMs;
      const key = HOT_KEY_BASE + randomInt(HOT_KEYS);
      for (let attempt = 0; attempt < RMW_ATTEMPTS_MAX; attempt++) {
        if ((await conns[c].readModifyWrite(key)) === 'ok') return true;
        if (measuring) conflicts++;
      }
      return false;
    },
    errors.add,
  );
  const res: ConflictResult = {
    clients,
    perSecond: r.ok / r.seconds,
    conflictsPerSecond: conflicts / r.seconds,
    failed: r.failed,
    errors: errors.count,
    errorExamples: errors.examples,
    ...summarize(r.latenciesMs),
  };
  log(
    `${t.name} conflicts C=${clients}: ${res.perSecond.toFixed(0)} ok/s, ${res.conflictsPerSecond.toFixed(0)} conflicts/s`,
  );
  return res;
}

// ---------------------------------------------------------------------------------------------

export interface LoadResults {
  follower: ThroughputPoint;
  linearizable: ThroughputPoint;
  cached?: ThroughputPoint & { hitRatio: number };
  cachedSkipped?: string;
}

/** Remote reads from a follower (local state) and linearizable reads (Sync + Load, or quorum Range). */
export async function loadWorkload(t: Target, sizes: Sizes): Promise<LoadResults> {
  const leader = await t.leader();
  await populate(t, t.conn(leader), LOAD_KEY_BASE, sizes.loadKeys);
  const follower = (leader + 1) % t.nodeCount;
  const run = async (linearizable: boolean): Promise<ThroughputPoint> => {
    const clients = sizes.loadClients;
    const conns = Array.from({ length: clients }, (_, c) =>
      t.conn(follower, c % CHANNELS_PER_NODE),
    );
    const errors = new ErrorTally();
    const r = await closedLoop(
      clients,
      sizes.durationMs,
      sizes.warmupMs,
      async (c) => {
        await conns[c].get(LOAD_KEY_BASE + randomInt(sizes.loadKeys), linearizable);
        return true;
      },
      errors.add,
    );
    const p = {
      clients,
      perSecond: r.ok / r.seconds,
      failed: r.failed,
      errors: errors.count,
      errorExamples: errors.examples,
      ...summarize(r.latenciesMs),
    };
    log(
      `${t.name} loads ${linearizable ? 'linearizable' : 'follower'}: ${p.perSecond.toFixed(0)}/s p99 ${p.p99Ms.toFixed(2)} ms`,
    );
    return p;
  };
  const res: LoadResults = { follower: await run(false), linearizable: await run(true) };
  if (t instanceof ZeoRaftTarget) {
    try {
      res.cached = await cachedLoads(t, sizes);
    } catch (e) {
      res.cachedSkipped = `ClientStorage not usable: ${String((e as Error)?.message ?? e)}`;
      log(res.cachedSkipped);
    }
  } else res.cachedSkipped = 'etcd has no client cache';
  return res;
}

/** One caller loading warmed objects through a ClientStorage memory cache, back to back. */
async function cachedLoads(
  t: ZeoRaftTarget,
  sizes: Sizes,
): Promise<ThroughputPoint & { hitRatio: number }> {
  const leader = await t.leader();
  const cs = await ClientStorage.open({
    addresses: [t.address((leader + 1) % t.nodeCount)],
    cache: { memoryBytes: 64 << 20 },
  });
  try {
    const oids = Array.from({ length: sizes.loadKeys }, (_, i) => oidOf(LOAD_KEY_BASE + i));
    await cs.prefetch(oids);
    const before = cs.cacheStats().memory.count;
    const lat: number[] = [];
    const warmEnd = nowMs() + sizes.warmupMs;
    while (nowMs() < warmEnd) await cs.load(oids[randomInt(oids.length)]);
    const t0 = nowMs();
    const end = t0 + sizes.durationMs;
    let n = 0;
    // Latency is taken per 1000 loads (a single hrtime read costs about as much as a hit).
    for (;;) {
      const b0 = nowMs();
      if (b0 >= end) break;
      for (let i = 0; i < 1000; i++) await cs.load(oids[(n + i * 7919) % oids.length]);
      n += 1000;
      lat.push((nowMs() - b0) / 1000);
    }
    const seconds = (nowMs() - t0) / 1000;
    const p = {
      clients: 1,
      perSecond: n / seconds,
      failed: 0,
      errors: 0,
      errorExamples: [],
      hitRatio: before / oids.length,
      ...summarize(lat),
    };
    log(
      `zeoraft cached loads: ${p.perSecond.toFixed(0)}/s (objects cached ${before}/${oids.length})`,
    );
    return p;
  } finally {
    await cs.close();
  }
}

// ---------------------------------------------------------------------------------------------

export interface FanoutResult extends LatencySummary {
  subscribers: number;
  commits: number;
  deliveries: number;
  missing: number;
  outOfOrder: number;
  /** Deliveries that arrived before the writer saw its acknowledgement (counted as 0 ms). */
  beforeAck: number;
  /** The same deliveries timed from when the writer sent the commit. */
  fromSend: LatencySummary;
  /** Commits per second the writer achieved (the target is sizes.writerPerSecond). */
  writerPerSecond: number;
  streamErrors: number;
}

/** 100 subscribers over all nodes, one writer at a fixed rate: ack-to-receipt delay. */
export async function fanoutWorkload(t: Target, sizes: Sizes): Promise<FanoutResult> {
  const leader = await t.leader();
  const writer = t.conn(leader, 0);
  const received: { id: AckId; atMs: number }[][] = [];
  const lastId: AckId[] = [];
  let outOfOrder = 0;
  const streamErrors = new ErrorTally();
  const cancels: (() => void)[] = [];
  for (let i = 0; i < sizes.subscribers; i++) {
    received.push([]);
    lastId.push(-1n);
    const conn = t.conn(i % t.nodeCount, 100 + i);
    cancels.push(
      await conn.subscribe((id) => {
        if (id <= lastId[i]) outOfOrder++;
        lastId[i] = id;
        received[i].push({ id, atMs: nowMs() });
      }, streamErrors.add),
    );
  }
  const acked = new Map<AckId, number>();
  const sent = new Map<AckId, number>();
  const w0 = nowMs();
  await openLoop(sizes.writerPerSecond, sizes.durationMs, OPEN_LOOP_INFLIGHT_MAX, async (seq) => {
    const key = FANOUT_KEY_BASE + (seq % FANOUT_KEYS);
    const sentAt = nowMs();
    const id = await writer.put(key, value(seq));
    acked.set(id, nowMs());
    sent.set(id, sentAt);
  });
  const writerSeconds = (nowMs() - w0) / 1000;
  const complete = (): boolean => received.every((r) => r.length >= acked.size);
  await waitFor('subscribers to catch up', () => (complete() ? true : undefined), 5000).catch(
    () => undefined,
  );
  for (const c of cancels) c();
  const delays: number[] = [];
  const fromSend: number[] = [];
  let missing = 0;
  let beforeAck = 0;
  let deliveries = 0;
  for (const r of received) {
    const got = new Set<AckId>();
    for (const { id, atMs } of r) {
      got.add(id);
      const ackAt = acked.get(id);
      if (ackAt === undefined) continue;
      deliveries++;
      if (atMs < ackAt) beforeAck++;
      delays.push(Math.max(0, atMs - ackAt));
      fromSend.push(atMs - (sent.get(id) ?? ackAt));
    }
    for (const id of acked.keys()) if (!got.has(id)) missing++;
  }
  const res: FanoutResult = {
    subscribers: sizes.subscribers,
    commits: acked.size,
    writerPerSecond: acked.size / writerSeconds,
    fromSend: summarize(fromSend),
    deliveries,
    missing,
    outOfOrder,
    beforeAck,
    streamErrors: streamErrors.count,
    ...summarize(delays),
  };
  log(
    `${t.name} fanout: p50 ${res.p50Ms.toFixed(2)} ms p99 ${res.p99Ms.toFixed(2)} ms missing ${missing} out-of-order ${outOfOrder}`,
  );
  return res;
}

// ---------------------------------------------------------------------------------------------

export interface FailoverTrial {
  killedNode: number;
  /** Longest gap between successive acknowledged commits around the kill. */
  windowMs: number;
  /** From the kill to the first acknowledgement after it. */
  resumeMs: number;
  /** From the kill to a new leader agreed by the surviving nodes. */
  newLeaderMs: number;
}

export interface FailoverResult {
  trials: FailoverTrial[];
  windowP50Ms: number;
  windowMaxMs: number;
  resumeP50Ms: number;
  resumeMaxMs: number;
  newLeaderP50Ms: number;
  newLeaderMaxMs: number;
  acked: number;
  failedCommits: number;
  lost: number;
  verifyErrors: number;
}

/** A writer at a fixed rate while the leader is SIGKILLed and restarted, several times. */
export async function failoverWorkload(t: Target, sizes: Sizes): Promise<FailoverResult> {
  let target = await t.leader();
  const acks: { key: number; id: AckId; sentMs: number; atMs: number }[] = [];
  let failed = 0;
  let stop = false;
  const writerRun = openLoop(
    sizes.writerPerSecond,
    Infinity,
    OPEN_LOOP_INFLIGHT_MAX,
    async (seq) => {
      const node = target;
      const key = FAILOVER_KEY_BASE + seq;
      const sentMs = nowMs();
      try {
        const id = await t.conn(node, 0).put(key, value(seq));
        acks.push({ key, id, sentMs, atMs: nowMs() });
      } catch {
        failed++;
        // Try the next live node (followers forward writes to the leader).
        if (target === node) {
          let next = (node + 1) % t.nodeCount;
          while (!t.isAlive(next) && next !== node) next = (next + 1) % t.nodeCount;
          target = next;
        }
      }
    },
    () => stop,
  );
  const trials: FailoverTrial[] = [];
  try {
    for (let trial = 0; trial < sizes.failoverTrials; trial++) {
      await sleep(1500);
      const leader = await t.leader();
      const killAt = nowMs();
      await t.kill(leader);
      const newLeaderMs = await t.leader(30_000).then(() => nowMs() - killAt);
      // Writes resume with the first acknowledged commit that was sent after the kill (a reply
      // already on its way from the old leader does not count).
      const resumed = (): number[] => acks.filter((a) => a.sentMs > killAt).map((a) => a.atMs);
      await waitFor(
        'a commit sent after the kill to be acknowledged',
        () => (resumed().length ? true : undefined),
        30_000,
      );
      const firstAfter = Math.min(...resumed());
      const before = acks.filter((a) => a.atMs <= killAt).map((a) => a.atMs);
      const lastBefore = before.length ? Math.max(...before) : killAt;
      const tr = {
        killedNode: leader,
        windowMs: firstAfter - lastBefore,
        resumeMs: firstAfter - killAt,
        newLeaderMs,
      };
      trials.push(tr);
      log(
        `${t.name} failover ${trial + 1}: window ${tr.windowMs.toFixed(0)} ms, resume ${tr.resumeMs.toFixed(0)} ms, new leader ${newLeaderMs.toFixed(0)} ms`,
      );
      await t.restart(leader);
      await t.leader(30_000);
    }
    await sleep(1000);
  } finally {
    stop = true;
    await writerRun;
  }
  // Every acknowledged commit must be readable, with the acknowledged version.
  const verifier = t.conn(await t.leader(), 1);
  let lost = 0;
  const verifyErrors = new ErrorTally();
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < acks.length) {
        const a = acks[next++];
        try {
          if (!(await verifier.verify(a.key, a.id, value(a.key - FAILOVER_KEY_BASE)))) lost++;
        } catch (e) {
          lost++;
          verifyErrors.add(e);
        }
      }
    }),
  );
  const w = trials.map((x) => x.windowMs);
  const rs = trials.map((x) => x.resumeMs);
  const nl = trials.map((x) => x.newLeaderMs);
  const res: FailoverResult = {
    trials,
    windowP50Ms: median(w),
    windowMaxMs: Math.max(...w),
    resumeP50Ms: median(rs),
    resumeMaxMs: Math.max(...rs),
    newLeaderP50Ms: median(nl),
    newLeaderMaxMs: Math.max(...nl),
    acked: acks.length,
    failedCommits: failed,
    lost,
    verifyErrors: verifyErrors.count,
  };
  log(
    `${t.name} failover: ${acks.length} acked, ${lost} lost${verifyErrors.examples.length ? ` (${verifyErrors.examples[0]})` : ''}`,
  );
  return res;
}

// ---------------------------------------------------------------------------------------------

export interface MemoryResult {
  /** Objects requested. */
  objects: number;
  /** Objects acknowledged (less than `objects` when loading failed). */
  loaded: number;
  loadSeconds: number;
  rssBytes: (number | null)[];
  rssMaxBytes: number;
  /** RSS of every node after each tenth of the load. */
  samples: { loaded: number; seconds: number; rssBytes: (number | null)[] }[];
  /** Why loading stopped early. */
  loadError?: string;
  clientCache?: { maxBytes: number; peakBytes: number; finalBytes: number; loads: number };
  clientCacheSkipped?: string;
}

const mib = (x: number | null): string => (x === null ? '?' : `${(x / 2 ** 20).toFixed(0)} MiB`);

/** Load N objects in big transactions, sampling each node's RSS as it goes and at the end. */
export async function memoryWorkload(t: Target, sizes: Sizes): Promise<MemoryResult> {
  const leader = await t.leader();
  const batch = Math.min(t.maxBatch, 1000);
  const loaders = 4;
  let nextKey = 0;
  let loaded = 0;
  let reported = 0;
  let loadError: string | undefined;
  const samples: MemoryResult['samples'] = [];
  const rssNow = (): (number | null)[] =>
    Array.from({ length: t.nodeCount }, (_, i) => t.rssBytes(i) ?? null);
  const t0 = nowMs();
  await Promise.all(
    Array.from({ length: loaders }, async (_, l) => {
      const conn = t.conn(leader, l);
      while (nextKey < sizes.objects && loadError === undefined) {
        const first = nextKey;
        const count = Math.min(batch, sizes.objects - first);
        nextKey += count;
        try {
          await conn.putMany(MEMORY_KEY_BASE + first, count, value(first));
        } catch (e) {
          loadError ??= `after ${loaded} objects: ${String((e as Error)?.message ?? e)}`;
          return;
        }
        loaded += count;
        if (loaded - reported >= sizes.objects / 10) {
          reported = loaded;
          const seconds = (nowMs() - t0) / 1000;
          const rssBytes = rssNow();
          samples.push({ loaded, seconds, rssBytes });
          log(
            `${t.name} memory: ${loaded} objects loaded (${seconds.toFixed(0)} s), RSS ${rssBytes.map(mib).join(', ')}`,
          );
        }
      }
    }),
  );
  const loadSeconds = (nowMs() - t0) / 1000;
  if (loadError) log(`${t.name} memory: loading failed ${loadError}`);
  await sleep(2000);
  const rss = rssNow();
  const res: MemoryResult = {
    objects: sizes.objects,
    loaded,
    loadSeconds,
    rssBytes: rss,
    rssMaxBytes: Math.max(...rss.map((x) => x ?? 0)),
    samples,
    loadError,
  };
  log(`${t.name} memory: ${loaded} objects, RSS ${rss.map(mib).join(', ')}`);
  if (t instanceof ZeoRaftTarget && !loadError) {
    try {
      res.clientCache = await clientCacheBound(t, Math.min(loaded, sizes.cacheBoundLoads));
    } catch (e) {
      res.clientCacheSkipped = `ClientStorage not usable: ${String((e as Error)?.message ?? e)}`;
    }
  } else res.clientCacheSkipped = loadError ? 'loading failed' : 'etcd has no client cache';
  return res;
}

/** Load more objects than fit through a ClientStorage with a 1 MiB memory cache; track its size. */
async function clientCacheBound(
  t: ZeoRaftTarget,
  loads: number,
): Promise<MemoryResult['clientCache']> {
  const maxBytes = 1 << 20;
  const cs = await ClientStorage.open({
    addresses: [t.address(await t.leader())],
    cache: { memoryBytes: maxBytes },
  });
  try {
    let peak = 0;
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < loads) {
          await cs.load(oidOf(MEMORY_KEY_BASE + next++));
          peak = Math.max(peak, cs.cacheStats().memory.bytes);
        }
      }),
    );
    const r = {
      maxBytes: cs.cacheStats().memory.maxBytes,
      peakBytes: peak,
      finalBytes: cs.cacheStats().memory.bytes,
      loads,
    };
    log(`zeoraft client cache: peak ${r.peakBytes} bytes of ${r.maxBytes} bound`);
    return r;
  } finally {
    await cs.close();
  }
}

// ---------------------------------------------------------------------------------------------

/** Timed rounds of the history workload; each round makes each call once, one at a time. */
const HISTORY_CALLS = 200;
const HISTORY_WARMUP_CALLS = 50;
/** The Subscribe streams' progress interval (the default), so a first Progress is not a tick. */
const HISTORY_PROGRESS_MS = 1000;

export interface HistoryResult {
  /** Where it ran: a standalone ZeoRaft node on a filled store, or the bench's etcd cluster. */
  where: string;
  /** Transactions in the store (ZeoRaft) or the cluster's revision (etcd) when measured. */
  transactions: number;
  /** Seconds to fill the store (ZeoRaft), and for the node to start on it. */
  fillSeconds?: number;
  startSeconds?: number;
  /** Seconds from the node's "ready" until it was idle (its start-up scan done); measured after. */
  settleSeconds?: number;
  /** `Storage.Status` / `Maintenance.Status`. */
  status: LatencySummary;
  /** A stream from the current position to its first message (ZeoRaft) / the `created` (etcd). */
  openNow: LatencySummary;
  /** A stream resuming one transaction back, to the first event (that transaction). */
  openRecent: LatencySummary;
  /** ZeoRaft: a stream resuming from the first TID, outside the window, to its Reset. */
  openReset?: LatencySummary;
}

/**
 * Time each of `ops` `HISTORY_CALLS` times after `HISTORY_WARMUP_CALLS` untimed rounds, in turns
 * (one call of each per round), so a passing disturbance falls on all of them alike.
 */
async function timeInTurns(
  ops: Record<string, () => Promise<void>>,
): Promise<Record<string, LatencySummary>> {
  const names = Object.keys(ops);
  const ms = new Map<string, number[]>(names.map((n) => [n, []]));
  for (let round = 0; round < HISTORY_WARMUP_CALLS + HISTORY_CALLS; round++)
    for (const n of names) {
      const t0 = nowMs();
      await ops[n]();
      if (round >= HISTORY_WARMUP_CALLS) ms.get(n)!.push(nowMs() - t0);
    }
  return Object.fromEntries(names.map((n) => [n, summarize(ms.get(n)!)]));
}

/** Open a Subscribe stream and wait for its first event (of kind `expect`); then cancel it. */
function firstEvent(
  rpc: StorageRpc,
  fromTid: Buffer | undefined,
  expect: 'commit' | 'progress' | 'reset',
): Promise<void> {
  const stream = rpc.subscribe({
    fromTid: fromTid ?? Buffer.alloc(0),
    progressIntervalMs: HISTORY_PROGRESS_MS,
  });
  return new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (e?: unknown): void => {
      if (done) return;
      done = true;
      stream.cancel();
      if (e) reject(e);
      else resolve();
    };
    stream.on('data', (ev) => {
      const kind = ev.commit ? 'commit' : ev.progress ? 'progress' : ev.reset ? 'reset' : 'other';
      if (kind === expect) finish();
      else finish(new Error(`first Subscribe event is ${kind}, expected ${expect}`));
    });
    stream.on('error', (e) => finish(e));
    stream.on('end', () => finish(new Error('Subscribe ended before its first event')));
  });
}

const summaryText = (s: LatencySummary): string =>
  `p50 ${s.p50Ms.toFixed(2)} ms p99 ${s.p99Ms.toFixed(2)} ms`;

/**
 * What a `Status` and opening a `Subscribe` stream cost with a long history. ZeoRaft: a store of
 * `historyTransactions` one-object transactions made with the production apply (history-fill.ts),
 * in a child process, served by a standalone node started on it; calls from a gRPC client in this
 * process. etcd: the
 * same calls on the bench's etcd cluster as the earlier workloads left it (its revision is
 * recorded): etcd's Status and watch creation read no history.
 */
export async function historyWorkload(t: Target, sizes: Sizes): Promise<HistoryResult> {
  if (t instanceof EtcdTarget) return etcdHistory(t);
  if (!(t instanceof ZeoRaftTarget)) throw new Error(`no history workload for ${t.name}`);
  const dir = makeTempDir('history');
  try {
    const n = sizes.historyTransactions;
    log(`${t.name} history: filling a store with ${n} transactions`);
    const filled = await fillHistoryInChild(path.join(dir, 'state'), n, VALUE_BYTES, (line) =>
      log(`${t.name} history: ${line}`),
    );
    log(`${t.name} history: filled in ${filled.seconds.toFixed(1)} s; starting a standalone node`);
    const node = await t.startStandalone('h1', dir);
    log(
      `${t.name} history: node ready in ${node.startSeconds.toFixed(1)} s, idle ` +
        `${node.settleSeconds.toFixed(1)} s later`,
    );
    const rpc = new StorageRpc(node.address, { timeoutMs: 30_000 });
    try {
      const st = await rpc.call('Status', {});
      const info = st.storages.find((x) => x.name === '1');
      if (!info || u64(info.lastTid) !== u64(filled.lastTid))
        throw new Error('the standalone node does not serve the filled store');
      // A resume point outside the retained window (the node's default: the newest 100,000
      // transactions) gets a Reset; with fewer transactions every point is inside it.
      const resets = u64(info.oldestResumableTid) > u64(filled.firstTid);
      const timed = await timeInTurns({
        status: async () => void (await rpc.call('Status', {})),
        openNow: () => firstEvent(rpc, undefined, 'progress'),
        openRecent: () => firstEvent(rpc, filled.previousTid, 'commit'),
        ...(resets ? { openReset: () => firstEvent(rpc, filled.firstTid, 'reset') } : {}),
      });
      const res: HistoryResult = {
        where: 'standalone ZeoRaft node on a filled store',
        transactions: n,
        fillSeconds: filled.seconds,
        startSeconds: node.startSeconds,
        settleSeconds: node.settleSeconds,
        status: timed.status,
        openNow: timed.openNow,
        openRecent: timed.openRecent,
        openReset: timed.openReset,
      };
      log(
        `${t.name} history ${n}: Status ${summaryText(res.status)}; Subscribe from now ` +
          `${summaryText(res.openNow)}, one back ${summaryText(res.openRecent)}` +
          (res.openReset ? `, to a Reset ${summaryText(res.openReset)}` : ''),
      );
      return res;
    } finally {
      rpc.close();
      await node.stop();
    }
  } finally {
    removeDir(dir);
  }
}

async function etcdHistory(t: EtcdTarget): Promise<HistoryResult> {
  const node = await t.leader();
  // Two writes on the watched prefix, so "one back" has an event to deliver.
  const conn = t.conn(node, 0);
  await conn.put(HISTORY_KEY, value(1));
  const last = await conn.put(HISTORY_KEY, value(2));
  const { revision } = await t.status(node);
  const timed = await timeInTurns({
    status: async () => void (await t.status(node)),
    openNow: () => t.openWatch(node, 0, 'created'),
    openRecent: () => t.openWatch(node, 0, 'event', last),
  });
  const res: HistoryResult = {
    where: 'the bench etcd cluster (leader) after the other workloads',
    transactions: Number(revision),
    status: timed.status,
    openNow: timed.openNow,
    openRecent: timed.openRecent,
  };
  log(
    `${t.name} history (revision ${revision}): Status ${summaryText(res.status)}; watch created ` +
      `${summaryText(res.openNow)}, one back ${summaryText(res.openRecent)}`,
  );
  return res;
}
