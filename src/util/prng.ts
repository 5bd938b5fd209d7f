/**
 * A small seeded pseudo-random number generator (mulberry32 seeded through splitmix32).
 * Deterministic: the same seed always yields the same sequence, on every platform.
 * Used by the Raft core (randomized election timeouts) and the simulator; never for security.
 */
export interface Prng {
  /** A uniformly distributed integer in [0, n). Requires n >= 1. */
  nextInt(n: number): number;
  /** A uniformly distributed float in [0, 1). */
  nextFloat(): number;
}

function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export class Mulberry32 implements Prng {
  private state: number;

  constructor(seed: number) {
    this.state = splitmix32(seed >>> 0);
  }

  nextFloat(): number {
    this.state = (this.state + 0x6d2b79f5) | 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  nextInt(n: number): number {
    if (!(n >= 1) || !Number.isInteger(n))
      throw new RangeError(`nextInt: n must be a positive integer, got ${n}`);
    return Math.floor(this.nextFloat() * n);
  }

  /** A child generator whose sequence depends only on this one's current state and `salt`. */
  fork(salt: number): Mulberry32 {
    return new Mulberry32((this.nextInt(0x7fffffff) ^ Math.imul(salt + 1, 0x9e3779b1)) >>> 0);
  }
}
