import assert from 'node:assert/strict';
import { AssertionError } from '../../src/util/assert';
import { LateBound } from '../../src/util/late-bound';

describe('LateBound', () => {
  it('hands out the value once it is bound', () => {
    const h = new LateBound<{ n: number }>('the receiver');
    const v = { n: 1 };
    h.bind(v);
    assert.equal(h.get(), v);
  });

  it('refuses a use before the value is bound, naming what was used', () => {
    const h = new LateBound<number>('the receiver');
    assert.throws(
      () => h.get(),
      (e: unknown) =>
        e instanceof AssertionError && /the receiver used before it was bound/.test(e.message),
    );
  });

  it('refuses a second binding', () => {
    const h = new LateBound<number>('the receiver');
    h.bind(1);
    assert.throws(() => h.bind(2), AssertionError);
    assert.equal(h.get(), 1);
  });
});
