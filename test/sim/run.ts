/**
 * Simulator CLI.
 *   npm run sim -- --seeds N [--start S]     run seeds S..S+N-1 (default S=1)
 *   npm run sim -- --seconds T [--start S]   run consecutive seeds for a time budget (CI)
 *   SEED=s npm run sim                       replay one seed with a readable trace
 *   --max-failures F (default 5) stops after F failing seeds; --quiet omits the reproduce hints
 *   --storage                                 run whole storage nodes (Raft + ObjectStore,
 *                                             storage-sim.ts) instead of the Raft core alone
 *   --inject BUG                              (with --storage) run with a hand-injected bug, to
 *                                             show the checker catches it: no-skip, no-flush,
 *                                             compact-while-replaying
 */
import { SimStats, runSeed } from './sim';
import { StorageSimOptions, runStorageSeed } from './storage-sim';

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
const inject = strArg('inject') as StorageSimOptions['inject'];
if (inject !== undefined && !['no-skip', 'no-flush', 'compact-while-replaying'].includes(inject))
  throw new Error(`--inject: unknown bug ${inject}`);
const reproduce = (seed: number): string =>
  storage
    ? `reproduce with SEED=${seed} npm run sim -- --storage${inject ? ` --inject ${inject}` : ''}`
    : `reproduce with SEED=${seed} npm run sim`;

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

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(e);
    process.exitCode = 2;
  },
);
