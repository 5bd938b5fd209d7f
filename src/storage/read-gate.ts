/**
 * Reads against snapshot installs: a read waits out an install's switch to the new state, and one
 * that overlapped an install fails UNAVAILABLE rather than answer from a mix of states. Also keeps
 * why the store cannot serve (a failed install, a broken invariant a read found).
 */
import { StorageError } from './errors';

export class ReadGate {
  /** Set while a snapshot install switches to the new state; readers wait for it. */
  private installRunning: Promise<void> | undefined;
  /** Counts installs started: a read that saw it change read from a state being replaced. */
  private installs = 0;
  /** Why the store cannot serve (an install failed after clearing the old state); undefined when fine. */
  private brokenReason: string | undefined;
  /** A read found the stored state inconsistent (a broken invariant): the node must not be ready. */
  private corruptionSeen: string | undefined;

  /** The number of installs started so far (a read's generation). */
  get generation(): number {
    return this.installs;
  }

  /** Why this store cannot serve (a failed install, a broken invariant), or undefined. */
  get unhealthy(): string | undefined {
    return this.brokenReason ?? this.corruptionSeen;
  }

  /** Wait out a running install; returns the generation a read starts in. */
  async readable(): Promise<number> {
    while (this.installRunning) await this.installRunning;
    if (this.brokenReason) throw new StorageError('UNAVAILABLE', this.brokenReason);
    return this.installs;
  }

  /** Throw UNAVAILABLE when an install started since the read began (its result may mix states). */
  stillValid(gen: number): void {
    if (this.brokenReason) throw new StorageError('UNAVAILABLE', this.brokenReason);
    if (gen !== this.installs || this.installRunning)
      throw new StorageError(
        'UNAVAILABLE',
        'the node replaced its state with a snapshot during the read; retry',
      );
  }

  /**
   * Run a read of the database: after any running install, and failing UNAVAILABLE (never with a
   * mixed or half-restored answer) when an install started while it ran.
   */
  async guarded<T>(fn: () => Promise<T>): Promise<T> {
    const gen = await this.readable();
    let r: T;
    try {
      r = await fn();
    } catch (e) {
      this.stillValid(gen);
      throw e;
    }
    this.stillValid(gen);
    return r;
  }

  /** A read found the state inconsistent; returns the first inconsistency seen (for the assert). */
  corrupt(why: string): string {
    this.corruptionSeen ??= why;
    return this.corruptionSeen;
  }

  /** An install starts switching to its new state: reads wait until the returned call. */
  switching(): () => void {
    let finished!: () => void;
    this.installRunning = new Promise<void>((resolve) => (finished = resolve));
    this.installs++;
    return () => {
      this.installRunning = undefined;
      finished();
    };
  }

  /** An install failed part-way: the store cannot serve until it is opened again. */
  broken(reason: string): void {
    this.brokenReason = reason;
  }
}
