import assert from 'node:assert/strict';
import { Waiters, systemWaitClock } from '../../src/util/waiters';

describe('Waiters', () => {
  it('resolves a wait once its condition holds at a notify, and forgets it', async () => {
    const w = new Waiters(systemWaitClock);
    let applied = 0;
    const done = w.until(
      () => applied >= 2,
      Date.now() + 10_000,
      () => new Error('timeout'),
    );
    applied = 1;
    w.notify();
    assert.equal(w.size, 1);
    applied = 2;
    w.notify();
    await done;
    assert.equal(w.size, 0);
  });

  it('resolves at once when the condition already holds', async () => {
    const w = new Waiters(systemWaitClock);
    await w.until(
      () => true,
      0,
      () => new Error('timeout'),
    );
    assert.equal(w.size, 0);
  });

  it('rejects at the deadline with the caller’s error and forgets the wait', async () => {
    const w = new Waiters(systemWaitClock);
    await assert.rejects(
      w.until(
        () => false,
        Date.now() + 20,
        () => new Error('applied up to 3, behind 7'),
      ),
      /applied up to 3, behind 7/,
    );
    assert.equal(w.size, 0);
  });

  it('runs on the clock it is given (a manual clock: nothing expires until it says so)', async () => {
    let now = 1000;
    const timers: { at: number; fn: () => void }[] = [];
    const clock = {
      nowMs: () => now,
      after: (ms: number, fn: () => void) => {
        const t = { at: now + ms, fn };
        timers.push(t);
        return () => timers.splice(timers.indexOf(t), 1);
      },
    };
    const w = new Waiters(clock);
    let rejected = false;
    const p = w
      .until(
        () => false,
        1500,
        () => new Error('late'),
      )
      .catch(() => (rejected = true));
    assert.equal(timers.length, 1);
    assert.equal(timers[0].at, 1500);
    now = 1500;
    timers[0].fn();
    await p;
    assert.ok(rejected);
    assert.equal(w.size, 0);
    assert.equal(timers.length, 0);
  });
});
