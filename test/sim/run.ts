/**
 * Simulator CLI.
 *   npm run sim -- --seeds N [--start S]     run seeds S..S+N-1 (default S=1)
 *   npm run sim -- --seconds T [--start S]   run consecutive seeds for a time budget (CI)
 *   SEED=s npm run sim                       replay one seed with a readable trace
 *   --max-failures F (default 5) stops after F failing seeds; --quiet omits the reproduce hints
 */
import { SimStats, runSeed } from './sim';

function arg(name: string): number | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = Number(process.argv[i + 1]);
  if (!Number.isFinite(v)) throw new Error(`--${name} needs a number`);
  return v;
}

function main(): number {
  const one = process.env.SEED;
  if (one !== undefined && one !== '') {
    const seed = Number(one);
    const res = runSeed(seed, { trace: (line) => console.log(line) });
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
    const res = runSeed(seed);
    ran++;
    for (const [k, v] of Object.entries(res.stats as SimStats)) totals[k] = (totals[k] ?? 0) + v;
    if (!res.ok) {
      failures++;
      console.log(`FAIL seed ${seed}: ${res.failure}`);
      if (!quiet) console.log(`reproduce with SEED=${seed} npm run sim`);
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

process.exitCode = main();
