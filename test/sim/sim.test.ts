import assert from 'node:assert/strict';
import { runSeed } from './sim';

/** CI runs a larger budget: `npm run sim -- --seconds 100` (see test/sim/README.md). */
const SEEDS = 150;
/** Seeds found failing by fresh-seed runs, kept once the simulator or the code was fixed. */
const REGRESSION_SEEDS = [9586444, 45061, 2656375];

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

  it('passes the seeds that once failed (test/sim/README.md)', () => {
    // 9586444: check-quorum off, a member removed during the heal (not yet shut down) campaigned
    // in the partial-partition phase and deposed the leader, which only check-quorum prevents.
    // 45061: a paused leader got a read request twice; the copy, queued behind a newer read, let
    // late acknowledgements of the first one's heartbeats confirm the newer read (stale).
    // 2656375: pre-vote and check-quorum off; a voter whose log predated the leader's
    // membership ran its term up, did not know the leader and ignored its lower-term appends,
    // so the leader (needing its vote) never learned the higher term and never committed.
    for (const seed of REGRESSION_SEEDS) {
      const res = runSeed(seed);
      assert.ok(res.ok, `seed ${seed}: ${res.failure}`);
    }
  });

  it('is deterministic: a seed replays identically', () => {
    const a = runSeed(77);
    const b = runSeed(77);
    assert.deepEqual(a, b);
  });
});
