/**
 * `npm run bench -- --compare zeo`: ZeoRaft's ZEO door against one real ZEO server, with the same
 * Python client (ZEO.ClientStorage from the pinned .venv-zodb), one after the other on this
 * machine. ZeoRaft: the three-node cluster of the other workloads with its ZEO listeners on;
 * ZEO: `runzeo` from the same venv over a FileStorage in a temp dir, default settings (server-side
 * conflict resolution). Each point is one run of bench/zeo/zeo_bench.py (see its docstring).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Child, makeTempDir, pickFreePort, removeDir, waitFor } from '../lib/proc';
import { ZeoRaftTarget } from '../lib/zeoraft';

const REPO = path.resolve(__dirname, '../../..');
const PYTHON = path.join(REPO, '.venv-zodb/bin/python');
const RUNZEO = path.join(REPO, '.venv-zodb/bin/runzeo');
const DRIVER = path.join(REPO, 'bench/zeo/zeo_bench.py');
const ZEO_START_TIMEOUT_MS = 30_000;
/** A driver run may take this long beyond its measured time (set-up, connecting, grace). */
const DRIVER_SLACK_MS = 120_000;

export const ZEO_WORKLOADS = ['commit', 'loads', 'watch', 'hot', 'hotset', 'hotpc'] as const;
export type ZeoWorkload = (typeof ZEO_WORKLOADS)[number];

export interface ZeoSizes {
  durationS: number;
  warmupS: number;
  commitClients: number[];
  loadClients: number[];
  watchers: number;
  watchRate: number;
  hotWriters: number[];
}

export const ZEO_SIZES: Omit<ZeoSizes, 'durationS' | 'warmupS'> = {
  commitClients: [1, 8, 32],
  loadClients: [1, 8],
  watchers: 20,
  watchRate: 200,
  hotWriters: [2, 4, 8],
};

/** One driver run: its arguments and its JSON answer (or why it failed). */
interface Point {
  key: string;
  args: string[];
  result?: Record<string, unknown>;
  error?: string;
}

export interface ZeoSystemResults {
  points: Point[];
  error?: string;
}

export function havePythonVenv(): boolean {
  return fs.existsSync(PYTHON) && fs.existsSync(RUNZEO);
}

function points(only: ZeoWorkload[], s: ZeoSizes): Point[] {
  const out: Point[] = [];
  const add = (key: string, args: string[]): void => {
    out.push({ key, args });
  };
  if (only.includes('commit'))
    for (const c of s.commitClients)
      add(`commit:${c}`, ['--workload', 'commit', '--clients', String(c)]);
  if (only.includes('loads'))
    for (const c of s.loadClients) add(`load:${c}`, ['--workload', 'load', '--clients', String(c)]);
  if (only.includes('watch'))
    add('watch', [
      '--workload',
      'watch',
      '--watchers',
      String(s.watchers),
      '--rate',
      String(s.watchRate),
    ]);
  for (const kind of ['hot', 'hotset', 'hotpc'] as const)
    if (only.includes(kind))
      for (const c of s.hotWriters)
        add(`${kind}:${c}`, ['--workload', kind, '--clients', String(c)]);
  return out;
}

function runDriver(addrs: string[], args: string[], s: ZeoSizes): Promise<Record<string, unknown>> {
  const all = [
    DRIVER,
    '--addrs',
    addrs.join(','),
    '--duration',
    String(s.durationS),
    '--warmup',
    String(s.warmupS),
    ...args,
  ];
  return new Promise((resolve, reject) => {
    execFile(
      PYTHON,
      all,
      { timeout: (s.durationS + s.warmupS) * 1000 + DRIVER_SLACK_MS, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`${err.message}\n${stderr.slice(-3000)}`));
        const line = stdout.trim().split('\n').pop() ?? '';
        try {
          resolve(JSON.parse(line) as Record<string, unknown>);
        } catch {
          reject(new Error(`the driver printed no result: ${stdout.slice(-2000)}`));
        }
      },
    );
  });
}

async function runPoints(
  name: string,
  addrs: string[],
  only: ZeoWorkload[],
  s: ZeoSizes,
): Promise<Point[]> {
  const ps = points(only, s);
  for (const p of ps) {
    process.stderr.write(`[bench] ${name} ${p.key} (${new Date().toISOString()})\n`);
    try {
      p.result = await runDriver(addrs, p.args, s);
    } catch (e) {
      p.error = String((e as Error)?.message ?? e);
      process.stderr.write(`[bench] ${name} ${p.key} failed: ${p.error}\n`);
    }
  }
  return ps;
}

export async function runZeoRaft(only: ZeoWorkload[], s: ZeoSizes): Promise<ZeoSystemResults> {
  const t = new ZeoRaftTarget({ zeo: true });
  process.stderr.write(`[bench] starting zeoraft cluster with ZEO ports\n`);
  try {
    await t.start();
    const addrs = [0, 1, 2].map((i) => t.zeoAddress(i));
    return { points: await runPoints('zeoraft', addrs, only, s) };
  } catch (e) {
    return { points: [], error: String((e as Error)?.stack ?? e) };
  } finally {
    await t.stop();
  }
}

async function accepts(port: number): Promise<boolean | undefined> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(undefined));
  });
}

export async function runZeo(only: ZeoWorkload[], s: ZeoSizes): Promise<ZeoSystemResults> {
  const dir = makeTempDir('zeo');
  const port = await pickFreePort();
  process.stderr.write(`[bench] starting runzeo (FileStorage in ${dir})\n`);
  const child = Child.spawn(
    'runzeo',
    RUNZEO,
    ['-a', `127.0.0.1:${port}`, '-f', path.join(dir, 'Data.fs')],
    {},
  );
  try {
    await waitFor(
      'runzeo to listen',
      () => {
        if (!child.alive) throw new Error(`runzeo exited: ${child.recentOutput.slice(-2000)}`);
        return accepts(port);
      },
      ZEO_START_TIMEOUT_MS,
    );
    return { points: await runPoints('zeo', [`127.0.0.1:${port}`], only, s) };
  } catch (e) {
    return { points: [], error: String((e as Error)?.stack ?? e) };
  } finally {
    await child.kill();
    removeDir(dir);
  }
}

export interface ZeoRow {
  workload: string;
  metric: string;
  unit: string;
  higherBetter: boolean;
  zeoraft?: number;
  zeo?: number;
}

/** The table: one row per (point, metric), ZeoRaft beside ZEO. */
export function zeoRows(z: ZeoSystemResults, e: ZeoSystemResults | undefined): ZeoRow[] {
  const out: ZeoRow[] = [];
  const keys = [...new Set([...z.points, ...(e?.points ?? [])].map((p) => p.key))];
  const num = (
    sys: ZeoSystemResults | undefined,
    key: string,
    field: string,
  ): number | undefined => {
    const v = sys?.points.find((p) => p.key === key)?.result?.[field];
    return typeof v === 'number' ? v : undefined;
  };
  const add = (
    key: string,
    workload: string,
    metric: string,
    field: string,
    unit: string,
    higherBetter: boolean,
  ): void =>
    void out.push({
      workload,
      metric,
      unit,
      higherBetter,
      zeoraft: num(z, key, field),
      zeo: num(e, key, field),
    });
  for (const key of keys) {
    const [kind, n] = key.split(':');
    if (kind === 'commit') {
      add(key, `commit C=${n}`, 'commits/s', 'per_second', '/s', true);
      add(key, `commit C=${n}`, 'p50', 'p50_ms', 'ms', false);
      add(key, `commit C=${n}`, 'p99', 'p99_ms', 'ms', false);
    } else if (kind === 'load') {
      add(key, `loadBefore C=${n}`, 'loads/s', 'per_second', '/s', true);
      add(key, `loadBefore C=${n}`, 'p50', 'p50_ms', 'ms', false);
    } else if (kind === 'watch') {
      const w = `watch ${ZEO_SIZES.watchers} @${ZEO_SIZES.watchRate}/s`;
      add(key, w, 'writer commits/s', 'commits_per_second', '/s', true);
      add(key, w, 'missing invalidations', 'missing', '', false);
      add(key, w, 'delay p50 after finish', 'p50_ms', 'ms', false);
      add(key, w, 'delay p99 after finish', 'p99_ms', 'ms', false);
    } else if (kind === 'hot' || kind === 'hotset' || kind === 'hotpc') {
      const name = { hot: 'hot Length', hotset: 'hot IITreeSet', hotpc: 'hot PCounter' }[kind];
      const w = `${name} W=${n}`;
      add(key, w, 'commits/s', 'per_second', '/s', true);
      add(key, w, 'errors', 'errors', '', false);
      add(key, w, 'p50', 'p50_ms', 'ms', false);
    }
  }
  return out;
}

export async function compareZeo(
  only: ZeoWorkload[],
  s: ZeoSizes,
): Promise<{ zeoraft: ZeoSystemResults; zeo?: ZeoSystemResults; rows: ZeoRow[] }> {
  if (!havePythonVenv())
    throw new Error(
      `--compare zeo needs the pinned ZODB/ZEO virtual environment: run \`make zodb-venv\` (creates ${path.dirname(path.dirname(PYTHON))})`,
    );
  const zeoraft = await runZeoRaft(only, s);
  const zeo = await runZeo(only, s);
  return { zeoraft, zeo, rows: zeoRows(zeoraft, zeo) };
}
