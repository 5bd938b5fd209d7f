/**
 * Simulator CLI.
 *   npm run sim -- --seeds N [--start S]     run seeds S..S+N-1 (default S=1)
 *   npm run sim -- --seconds T [--start S]   run consecutive seeds for a time budget (CI)
 *   SEED=s npm run sim                       replay one seed with a readable trace
 *   --max-failures F (default 5) stops after F failing seeds; --quiet omits the reproduce hints
 *   --storage                                 run whole storage nodes (the production Raft host,
 *                                             log and ObjectStore: storage-sim.ts) instead of
 *                                             the Raft core alone
 *   --inject NAME                             run with a planted bug, to show the simulator
 *                                             catches it: NAME is a patch in test/sim/bugs/
 *                                             (applied to a private copy of the sources, built
 *                                             and run there; the tree itself is never changed)
 *                                             or, with --storage, a fault of the simulated
 *                                             environment (no-flush)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SimStats, runSeed } from './sim';
import { STORAGE_SIM_FAULTS, StorageSimOptions, runStorageSeed } from './storage-sim';

function arg(name: string): number | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = Number(process.argv[i + 1]);
  if (!Number.isFinite(v)) throw new Error(`--${name} needs a number`);
  return v;
}

function strArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? undefined : process.argv[i + 1];
}

const storage = process.argv.includes('--storage');
/** The repository (this file runs from dist/test/sim/). */
const ROOT = path.resolve(__dirname, '../../..');
const BUGS_DIR = path.join(ROOT, 'test/sim/bugs');

/**
 * Run this CLI, without --inject, on a private copy of the sources with the planted bug's patch
 * applied. Returns the exit code.
 */
function runPlanted(name: string): number {
  const patch = path.join(BUGS_DIR, `${name}.patch`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `zeoraft-${name}-`));
  try {
    for (const entry of ['src', 'test', 'proto', 'package.json', 'tsconfig.json'])
      fs.cpSync(path.join(ROOT, entry), path.join(tmp, entry), { recursive: true });
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(tmp, 'node_modules'), 'dir');
    execFileSync('patch', ['-s', '-p1', '-d', tmp, '-i', patch], { stdio: 'inherit' });
    execFileSync(path.join(ROOT, 'node_modules/.bin/tsc'), ['-p', tmp], { stdio: 'inherit' });
    const args = process.argv.slice(2);
    args.splice(args.indexOf('--inject'), 2);
    const res = spawnSync(process.execPath, [path.join(tmp, 'dist/test/sim/run.js'), ...args], {
      stdio: 'inherit',
      env: { ...process.env, ZEORAFT_PLANTED: name },
    });
    return res.status ?? 2;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const injectArg = strArg('inject');
const planted = injectArg !== undefined && fs.existsSync(path.join(BUGS_DIR, `${injectArg}.patch`));
if (
  injectArg !== undefined &&
  !planted &&
  !(storage && (STORAGE_SIM_FAULTS as readonly string[]).includes(injectArg))
)
  throw new Error(
    `--inject: unknown bug ${injectArg} (patches: ${fs
      .readdirSync(BUGS_DIR)
      .map((f) => f.replace(/\.patch$/, ''))
      .join(', ')}; with --storage also ${STORAGE_SIM_FAULTS.join(', ')})`,
  );
const inject = planted ? undefined : (injectArg as StorageSimOptions['inject']);
const injected = injectArg ?? process.env.ZEORAFT_PLANTED;
const reproduce = (seed: number): string =>
  storage
    ? `reproduce with SEED=${seed} npm run sim -- --storage${injected ? ` --inject ${injected}` : ''}`
    : `reproduce with SEED=${seed} npm run sim${injected ? ` -- --inject ${injected}` : ''}`;

/** One seed of the selected simulator. */
async function runOne(
  seed: number,
  trace?: (line: string) => void,
): Promise<{ ok: boolean; failure?: string; stats: object }> {
  return storage ? runStorageSeed(seed, { trace, inject }) : runSeed(seed, { trace });
}

async function main(): Promise<number> {
  const one = process.env.SEED;
  if (one !== undefined && one !== '') {
    const seed = Number(one);
    const res = await runOne(seed, (line) => console.log(line));
    console.log(JSON.stringify(res.stats));
    if (!res.ok) {
      console.log(`FAIL seed ${seed}: ${res.failure}`);
      return 1;
    }
    console.log(`seed ${seed} ok`);
    return 0;
  }
  const start = arg('start') ?? 1;
  const maxFailures = arg('max-failures') ?? 5;
  const quiet = process.argv.includes('--quiet');
  const seconds = arg('seconds');
  const count = arg('seeds') ?? (seconds === undefined ? 200 : Infinity);
  const t0 = Date.now();
  let ran = 0;
  let failures = 0;
  const totals: Record<string, number> = {};
  for (let seed = start; ran < count; seed++) {
    if (seconds !== undefined && Date.now() - t0 > seconds * 1000) break;
    const res = await runOne(seed);
    ran++;
    for (const [k, v] of Object.entries(res.stats as SimStats)) totals[k] = (totals[k] ?? 0) + v;
    if (!res.ok) {
      failures++;
      console.log(`FAIL seed ${seed}: ${res.failure}`);
      if (!quiet) console.log(reproduce(seed));
      if (failures >= maxFailures) break;
    }
  }
  const secs = (Date.now() - t0) / 1000;
  console.log(`totals: ${JSON.stringify(totals)}`);
  console.log(
    `${ran} seeds, ${failures} failed, ${secs.toFixed(1)} s, ${(ran / secs).toFixed(1)} seeds/s`,
  );
  return failures > 0 ? 1 : 0;
}

(planted ? Promise.resolve(runPlanted(injectArg!)) : main()).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(e);
    process.exitCode = 2;
  },
);
