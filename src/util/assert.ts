/** Thrown when an internal invariant is violated: a programmer error, never an operating error. */
export class AssertionError extends Error {
  readonly code = 'ZEORAFT_ASSERTION';
  constructor(message: string) {
    super(`invariant violated: ${message}`);
    this.name = 'AssertionError';
  }
}

/** Assertions stay on in production: a broken invariant must stop the process, not corrupt data. */
export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new AssertionError(message);
}
