import assert from 'node:assert/strict';
import { runSeed } from './sim';

/** CI runs a larger budget: `npm run sim -- --seconds 100` (see test/sim/README.md). */
const SEEDS = 150;

describe('simulator', function () {
  this.timeout(120_000);

  it(`keeps every safety invariant and converges after healing, for ${SEEDS} seeds`, () => {
    const failures: string[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const res = runSeed(seed);
      if (!res.ok)
        failures.push(`seed ${seed}: ${res.failure}\n  reproduce with SEED=${seed} npm run sim`);
    }
    assert.deepEqual(failures, []);
  });

  it('is deterministic: a seed replays identically', () => {
    const a = runSeed(77);
    const b = runSeed(77);
    assert.deepEqual(a, b);
  });
});
