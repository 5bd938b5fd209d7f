/** Timers as the caller has them: the system clock, or the simulator's. */
export interface WaitClock {
  /** Milliseconds since the epoch, in the clock deadlines are given in. */
  nowMs(): number;
  /** Run fn once, ms from now; the returned function cancels it. */
  after(ms: number, fn: () => void): () => void;
}

/** The system clock, for waits whose deadlines come from Date.now() (gRPC deadlines). */
export const systemWaitClock: WaitClock = {
  nowMs: () => Date.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

/**
 * Waits for a condition on state that changes in steps ("applied up to X", "a leader is known"):
 * each wait resolves once its condition holds when notify() says the state changed, or rejects
 * at its deadline. A wait that ends, either way, leaves nothing behind (its timer cancelled, its
 * check removed), so the number pending is bounded by the callers waiting.
 */
export class Waiters {
  private readonly checks = new Set<() => void>();

  constructor(private readonly clock: WaitClock) {}

  /** Waits pending. */
  get size(): number {
    return this.checks.size;
  }

  /** The state changed: re-check every pending wait. */
  notify(): void {
    for (const check of [...this.checks]) check();
  }

  /** Resolve when cond() holds (now, or at a later notify()); reject with onTimeout() at deadlineMs. */
  until(cond: () => boolean, deadlineMs: number, onTimeout: () => Error): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (cond()) {
          done();
          resolve();
        }
      };
      const cancel = this.clock.after(Math.max(0, deadlineMs - this.clock.nowMs()), () => {
        done();
        reject(onTimeout());
      });
      const done = (): void => {
        cancel();
        this.checks.delete(check);
      };
      this.checks.add(check);
    });
  }
}
