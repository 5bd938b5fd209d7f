/**
 * `npm run bench`: start a local three-node ZeoRaft cluster (and, with --compare etcd, a
 * three-member etcd cluster), run the workloads against each, print a table and write
 * bench/results/<timestamp>.json.
 *
 *   --only commit,conflicts,loads,fanout,failover,memory,history   run a subset
 *   --quick            small sizes for a smoke run
 *   --objects N        objects loaded by the memory workload (default 1,000,000)
 *   --transactions N   transactions in the history workload's store (default 1,000,000)
 *   --duration S       seconds per measured point (default 10; --quick: 2)
 *   --compare etcd     run the same workloads against etcd too (needs the `etcd` binary)
 *   --compare zeo      the ZEO door against a real ZEO server instead (commit,loads,watch,hot,hotset,hotpc;
 *                      needs .venv-zodb: `make zodb-venv`; --duration defaults to 3 s)
 *   --profile          run the ZeoRaft nodes under --cpu-prof and print their hottest functions
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { EtcdTarget, etcdVersion } from './etcd/cluster';
import { makeTempDir } from './lib/proc';
import { summarizeProfiles } from './lib/profile';
import type { Target } from './lib/target';
import { ZeoRaftTarget } from './lib/zeoraft';
import * as w from './workloads';
import { ZEO_SIZES, ZEO_WORKLOADS, type ZeoWorkload, compareZeo } from './zeo/compare';

const WORKLOADS = [
  'commit',
  'conflicts',
  'loads',
  'fanout',
  'failover',
  'memory',
  'history',
] as const;
type Workload = (typeof WORKLOADS)[number];
const RESULTS_DIR = path.resolve(__dirname, '../../bench/results');

interface SystemResults {
  baseline?: w.Baseline;
  commit?: w.ThroughputPoint[];
  /** ClientStorage.commit() (ZeoRaft only), measured right after the raw commits. */
  clientCommit?: w.ThroughputPoint[];
  conflicts?: w.ConflictResult;
  loads?: w.LoadResults;
  fanout?: w.FanoutResult;
  failover?: w.FailoverResult;
  memory?: w.MemoryResult;
  history?: w.HistoryResult;
  /** Failures by workload. */
  errors: Partial<Record<Workload, string>>;
  /** A failure outside the workloads (e.g. the cluster did not start). */
  error?: string;
}

function parse(): {
  only: Workload[];
  sizes: w.Sizes;
  compare: boolean;
  zeo?: { only: ZeoWorkload[]; durationS: number; warmupS: number };
  profile: boolean;
  quick: boolean;
} {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      quick: { type: 'boolean', default: false },
      objects: { type: 'string' },
      transactions: { type: 'string' },
      duration: { type: 'string' },
      compare: { type: 'string' },
      profile: { type: 'boolean', default: false },
      clients: { type: 'string' },
    },
  });
  if (values.compare !== undefined && values.compare !== 'etcd' && values.compare !== 'zeo')
    throw new Error('--compare takes "etcd" or "zeo"');
  const quick = values.quick ?? false;
  const names: readonly string[] = values.compare === 'zeo' ? ZEO_WORKLOADS : WORKLOADS;
  const chosen = values.only ? values.only.split(',').map((s) => s.trim()) : [...names];
  for (const o of chosen)
    if (!names.includes(o))
      throw new Error(`unknown workload ${o}; choose from ${names.join(', ')}`);
  const zeoDurationS = values.duration ? Number(values.duration) : quick ? 1 : 3;
  const zeo =
    values.compare === 'zeo'
      ? { only: chosen as ZeoWorkload[], durationS: zeoDurationS, warmupS: quick ? 0.5 : 1 }
      : undefined;
  const only = (zeo ? [] : chosen) as Workload[];
  const durationS = values.duration ? Number(values.duration) : quick ? 1 : 10;
  const objects = values.objects ? Number(values.objects) : quick ? 5000 : 1_000_000;
  if (!(durationS > 0)) throw new Error('--duration must be a positive number of seconds');
  if (!(objects > 0)) throw new Error('--objects must be positive');
  const historyTransactions = values.transactions
    ? Number(values.transactions)
    : quick
      ? 20_000
      : 1_000_000;
  if (!(Number.isInteger(historyTransactions) && historyTransactions >= 2))
    throw new Error('--transactions must be an integer of at least 2');
  return {
    only,
    quick,
    compare: values.compare === 'etcd',
    zeo,
    profile: values.profile ?? false,
    sizes: {
      durationMs: durationS * 1000,
      warmupMs: quick ? 100 : 1000,
      commitClients: values.clients ? values.clients.split(',').map(Number) : [1, 16, 64, 256],
      conflictClients: quick ? 16 : 64,
      loadClients: 64,
      subscribers: 100,
      writerPerSecond: 200,
      failoverTrials: quick ? 1 : 5,
      objects,
      loadKeys: quick ? 2000 : 10_000,
      cacheBoundLoads: quick ? 2000 : 20_000,
      historyTransactions,
    },
  };
}

async function runAll(t: Target, only: Workload[], sizes: w.Sizes): Promise<SystemResults> {
  const r: SystemResults = { errors: {} };
  process.stderr.write(`[bench] starting ${t.name} cluster (${new Date().toISOString()})\n`);
  await t.start();
  try {
    // A workload that fails is recorded and the others still run.
    const step = async <K extends Workload>(
      name: K,
      fn: (t: Target, sizes: w.Sizes) => Promise<NonNullable<SystemResults[K]>>,
    ): Promise<void> => {
      if (!only.includes(name)) return;
      try {
        r[name] = await fn(t, sizes);
      } catch (e) {
        r.errors[name] = String((e as Error)?.stack ?? e);
        process.stderr.write(`[bench] ${t.name} ${name} failed: ${r.errors[name]}\n`);
      }
    };
    if (only.includes('commit')) r.baseline = await w.baseline(t);
    // ZeoRaft: ClientStorage.commit() right after the raw Commit point of the same C.
    const clientCommit = async (clients: number): Promise<void> => {
      if (!(t instanceof ZeoRaftTarget) || !w.CLIENT_COMMIT_CLIENTS.includes(clients)) return;
      try {
        (r.clientCommit ??= []).push(await w.clientCommitPoint(t, sizes, clients));
      } catch (e) {
        r.errors.commit = String((e as Error)?.stack ?? e);
        process.stderr.write(
          `[bench] ${t.name} commit (ClientStorage) failed: ${r.errors.commit}\n`,
        );
      }
    };
    await step('commit', (t1, s1) => w.commitWorkload(t1, s1, clientCommit));
    await step('conflicts', w.conflictWorkload);
    await step('loads', w.loadWorkload);
    await step('fanout', w.fanoutWorkload);
    await step('failover', w.failoverWorkload);
    await step('memory', w.memoryWorkload);
    await step('history', w.historyWorkload);
  } catch (e) {
    r.error = String((e as Error)?.stack ?? e);
    process.stderr.write(`[bench] ${t.name} failed: ${r.error}\n`);
  } finally {
    await t.stop();
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// The table

interface Row {
  workload: string;
  metric: string;
  /** Whether larger is better (decides the direction of the ratio's meaning; shown in the table). */
  higherBetter: boolean;
  zeoraft?: number;
  etcd?: number;
  unit: string;
}

function rows(z: SystemResults, e: SystemResults | undefined): Row[] {
  const out: Row[] = [];
  const add = (
    workload: string,
    metric: string,
    unit: string,
    higherBetter: boolean,
    get: (r: SystemResults) => number | undefined,
  ): void => {
    const zv = get(z);
    const ev = e ? get(e) : undefined;
    if (zv === undefined && ev === undefined) return;
    out.push({ workload, metric, unit, higherBetter, zeoraft: zv, etcd: ev });
  };
  add('baseline', 'fsync p50', 'ms', false, (r) => r.baseline?.fsync.p50Ms);
  add('baseline', 'round trip p50', 'ms', false, (r) => r.baseline?.roundTrip.p50Ms);
  add('baseline', '2x(fsync+round trip)', 'ms', false, (r) => r.baseline?.singleCommitBoundMs);
  const points = z.commit ?? e?.commit ?? [];
  points.forEach((p0, i) => {
    const name = `commit C=${p0.clients}`;
    add(name, 'commits/s', '/s', true, (r) => r.commit?.[i]?.perSecond);
    add(name, 'p50', 'ms', false, (r) => r.commit?.[i]?.p50Ms);
    add(name, 'p99', 'ms', false, (r) => r.commit?.[i]?.p99Ms);
    add(name, 'max', 'ms', false, (r) => r.commit?.[i]?.maxMs);
    add(name, 'CPU per commit, all nodes', 'ms', false, (r) => r.commit?.[i]?.cpuMsPerOp);
  });
  for (const c of w.CLIENT_COMMIT_CLIENTS) {
    const name = `commit (ClientStorage) C=${c}`;
    const mine = (r: SystemResults) => r.clientCommit?.find((p) => p.clients === c);
    const raw = (r: SystemResults) => r.commit?.find((p) => p.clients === c);
    add(name, 'commits/s', '/s', true, (r) => mine(r)?.perSecond);
    add(name, 'p50', 'ms', false, (r) => mine(r)?.p50Ms);
    add(name, 'p99', 'ms', false, (r) => mine(r)?.p99Ms);
    // MISSION §7: within 1.2x of the raw Commit row of the same run.
    add(name, 'raw Commit/ClientStorage commits/s', 'x', false, (r) => {
      const m = mine(r);
      const w0 = raw(r);
      return m && w0 && m.perSecond > 0 ? w0.perSecond / m.perSecond : undefined;
    });
    add(name, 'ClientStorage/raw Commit p50', 'x', false, (r) => {
      const m = mine(r);
      const w0 = raw(r);
      return m && w0 && w0.p50Ms > 0 ? m.p50Ms / w0.p50Ms : undefined;
    });
  }
  const cn = `conflicts C=${(z.conflicts ?? e?.conflicts)?.clients ?? ''} hot=100`;
  add(cn, 'commits/s', '/s', true, (r) => r.conflicts?.perSecond);
  add(cn, 'conflicts/s', '/s', false, (r) => r.conflicts?.conflictsPerSecond);
  add(cn, 'p50 (with retries)', 'ms', false, (r) => r.conflicts?.p50Ms);
  add(cn, 'p99 (with retries)', 'ms', false, (r) => r.conflicts?.p99Ms);
  add('loads cached (ClientStorage)', 'loads/s', '/s', true, (r) => r.loads?.cached?.perSecond);
  add('loads cached (ClientStorage)', 'p99 per load', 'ms', false, (r) => r.loads?.cached?.p99Ms);
  add('loads follower (serializable)', 'loads/s', '/s', true, (r) => r.loads?.follower.perSecond);
  add('loads follower (serializable)', 'p50', 'ms', false, (r) => r.loads?.follower.p50Ms);
  add('loads follower (serializable)', 'p99', 'ms', false, (r) => r.loads?.follower.p99Ms);
  add('loads linearizable', 'loads/s', '/s', true, (r) => r.loads?.linearizable.perSecond);
  add('loads linearizable', 'p50', 'ms', false, (r) => r.loads?.linearizable.p50Ms);
  add('loads linearizable', 'p99', 'ms', false, (r) => r.loads?.linearizable.p99Ms);
  add('fanout 100 subs @200/s', 'delay p50', 'ms', false, (r) => r.fanout?.p50Ms);
  add('fanout 100 subs @200/s', 'delay p99', 'ms', false, (r) => r.fanout?.p99Ms);
  add('fanout 100 subs @200/s', 'delay max', 'ms', false, (r) => r.fanout?.maxMs);
  add('fanout 100 subs @200/s', 'delivered before ack', '%', false, (r) =>
    r.fanout ? (100 * r.fanout.beforeAck) / Math.max(1, r.fanout.deliveries) : undefined,
  );
  add('fanout 100 subs @200/s', 'send->receipt p50', 'ms', false, (r) => r.fanout?.fromSend.p50Ms);
  add('fanout 100 subs @200/s', 'send->receipt p99', 'ms', false, (r) => r.fanout?.fromSend.p99Ms);
  add('fanout 100 subs @200/s', 'writer commits/s', '/s', true, (r) => r.fanout?.writerPerSecond);
  add('fanout 100 subs @200/s', 'missing', '', false, (r) => r.fanout?.missing);
  add('fanout 100 subs @200/s', 'out of order', '', false, (r) => r.fanout?.outOfOrder);
  add(
    'failover kill -9 leader',
    'no-commit window p50',
    'ms',
    false,
    (r) => r.failover?.windowP50Ms,
  );
  add(
    'failover kill -9 leader',
    'no-commit window max',
    'ms',
    false,
    (r) => r.failover?.windowMaxMs,
  );
  add(
    'failover kill -9 leader',
    'kill->first commit max',
    'ms',
    false,
    (r) => r.failover?.resumeMaxMs,
  );
  add('failover kill -9 leader', 'new leader p50', 'ms', false, (r) => r.failover?.newLeaderP50Ms);
  add('failover kill -9 leader', 'new leader max', 'ms', false, (r) => r.failover?.newLeaderMaxMs);
  add('failover kill -9 leader', 'acked commits lost', '', false, (r) => r.failover?.lost);
  const mn = `memory ${(z.memory ?? e?.memory)?.objects ?? ''} objects`;
  add(mn, 'objects loaded', '', true, (r) => r.memory?.loaded);
  add(mn, 'load rate', 'obj/s', true, (r) =>
    r.memory ? r.memory.loaded / r.memory.loadSeconds : undefined,
  );
  add(mn, 'max node RSS', 'MiB', false, (r) =>
    r.memory ? r.memory.rssMaxBytes / 2 ** 20 : undefined,
  );
  const hn = (r: SystemResults | undefined): string =>
    r?.history ? `${r.history.transactions} ${r === e ? 'revisions' : 'txns'}` : '-';
  const hw = `history (zeoraft ${hn(z)}, etcd ${hn(e)})`;
  add(hw, 'Status p50', 'ms', false, (r) => r.history?.status.p50Ms);
  add(hw, 'Status p99', 'ms', false, (r) => r.history?.status.p99Ms);
  add(hw, 'open stream from now p50', 'ms', false, (r) => r.history?.openNow.p50Ms);
  add(hw, 'open stream from now p99', 'ms', false, (r) => r.history?.openNow.p99Ms);
  add(hw, 'open stream one back p50', 'ms', false, (r) => r.history?.openRecent.p50Ms);
  add(hw, 'open stream one back p99', 'ms', false, (r) => r.history?.openRecent.p99Ms);
  add(hw, 'open stream to Reset p50', 'ms', false, (r) => r.history?.openReset?.p50Ms);
  add(hw, 'open stream to Reset p99', 'ms', false, (r) => r.history?.openReset?.p99Ms);
  add(hw, 'node busy after ready (start-up scan)', 's', false, (r) => r.history?.settleSeconds);
  add(
    'client cache (1 MiB bound)',
    'peak bytes',
    'B',
    false,
    (r) => r.memory?.clientCache?.peakBytes,
  );
  return out;
}

function fmt(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return '-';
  if (v === 0) return '0';
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function table(rs: Row[], withEtcd: boolean, other = 'etcd'): string {
  const header = withEtcd
    ? ['workload', 'metric', 'zeoraft', other, `zeoraft/${other}`, 'better']
    : ['workload', 'metric', 'zeoraft'];
  const body = rs.map((r) => {
    const unit = r.unit ? ` ${r.unit}` : '';
    const cells = [r.workload, r.metric, `${fmt(r.zeoraft)}${unit}`];
    if (withEtcd) {
      const ratio =
        r.zeoraft !== undefined && r.etcd !== undefined && r.etcd !== 0
          ? r.zeoraft / r.etcd
          : undefined;
      cells.push(
        `${fmt(r.etcd)}${unit}`,
        ratio === undefined ? '-' : `${ratio.toFixed(2)}x`,
        r.higherBetter ? 'higher' : 'lower',
      );
    }
    return cells;
  });
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i])).join(' | ');
  return [line(header), widths.map((x) => '-'.repeat(x)).join('-|-'), ...body.map(line)].join('\n');
}

/** The commit the measured build came from (with "+dirty" when the work tree differs). */
function gitHead(): string | undefined {
  try {
    const git = (args: string[]): string =>
      execFileSync('git', args, { encoding: 'utf8', cwd: path.resolve(__dirname, '../..') }).trim();
    return git(['rev-parse', 'HEAD']) + (git(['status', '--porcelain', 'src']) ? '+dirty' : '');
  } catch {
    return undefined;
  }
}

/** `--compare zeo`: the ZEO door beside a real ZEO server (bench/zeo/compare.ts). */
async function mainZeo(opts: NonNullable<ReturnType<typeof parse>['zeo']>): Promise<void> {
  const started = new Date();
  const r = await compareZeo(opts.only, { ...ZEO_SIZES, ...opts });
  const rs: Row[] = r.rows.map((x) => ({ ...x, etcd: x.zeo }));
  process.stdout.write(`\n${table(rs, true, 'zeo')}\n`);
  process.stdout.write(
    `\nSame Python client (ZEO.ClientStorage) for both; ZeoRaft clients spread over its three ` +
      `nodes' ZEO ports; ZEO is runzeo over a FileStorage. ${opts.durationS} s per point after ` +
      `${opts.warmupS} s of warm-up.\n`,
  );
  const result = {
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, node: process.version },
    gitCommit: gitHead(),
    options: opts,
    ...r,
  };
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `zeo-${started.toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify(result, null, 2));
  process.stdout.write(`\nresults: ${path.relative(process.cwd(), file)}\n`);
  const failed = [r.zeoraft, r.zeo].some((x) => x && (x.error || x.points.some((p) => p.error)));
  if (failed) {
    process.stdout.write('\nsome points failed; see the JSON file\n');
    process.exitCode = 1;
  }
}

async function main(): Promise<void> {
  const opts = parse();
  if (opts.zeo) return mainZeo(opts.zeo);
  const started = new Date();
  let compare = opts.compare;
  const etcdVer = compare ? etcdVersion() : undefined;
  if (compare && !etcdVer) {
    process.stderr.write(
      '[bench] --compare etcd: no `etcd` binary found (apt-get install etcd-server); running ZeoRaft only\n',
    );
    compare = false;
  }
  const profileDir = opts.profile ? makeTempDir('cpuprof') : undefined;
  const zeoraft = await runAll(
    new ZeoRaftTarget({ cpuProfileDir: profileDir }),
    opts.only,
    opts.sizes,
  );
  const etcd = compare ? await runAll(new EtcdTarget(), opts.only, opts.sizes) : undefined;
  const rs = rows(zeoraft, etcd);
  const out = table(rs, compare);
  process.stdout.write(`\n${out}\n`);
  process.stdout.write(
    `\nLatencies are per operation from send to reply (process.hrtime); p50 is the median. ` +
      `Clients share ${w.CHANNELS_PER_NODE} gRPC channels per node; subscribers have one channel each.\n`,
  );
  let profile: string | undefined;
  if (profileDir) {
    profile = summarizeProfiles(profileDir);
    process.stdout.write(`\n${profile}\n`);
  }
  const result = {
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    host: {
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      memBytes: os.totalmem(),
      node: process.version,
      platform: `${os.platform()} ${os.release()}`,
    },
    etcdVersion: etcdVer,
    gitCommit: gitHead(),
    options: { ...opts, compare },
    zeoraft,
    etcd,
    table: rs,
    profile,
  };
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${started.toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify(result, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2),
  );
  process.stdout.write(`\nresults: ${path.relative(process.cwd(), file)}\n`);
  const failed = [zeoraft, etcd].some((r) => r && (r.error || Object.keys(r.errors).length));
  if (failed) {
    process.stdout.write('\nsome workloads failed; see "errors" in the JSON file\n');
    process.exitCode = 1;
  }
}

main().catch((e) => {
  process.stderr.write(`${String((e as Error)?.stack ?? e)}\n`);
  process.exit(1);
});
