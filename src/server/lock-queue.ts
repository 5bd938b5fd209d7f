/**
 * Votes and commits waiting for objects that a voted (or reserving) transaction holds, from both
 * doors (storage-api.ts), served in the order they started waiting on this node, as ZEO queues
 * votes behind its commit lock. Without it every
 * waiter re-proposed its prepare after every applied command and all but one met the lock again:
 * Raft rounds spent on nothing, and no order among the waiters.
 *
 * A waiter may propose when every object it needs is free in the applied state and no earlier
 * waiter (waiting, or proposing right now) needs one of them; stores resolved on the server share
 * an object with each other (ObjectStore's shared locks). The earliest waiter is never held back by
 * another waiter, only by the store's locks, which finish, abort or the vote's lease release: no
 * waiter can wait for another in a cycle. Votes proposed from other nodes are not in this line;
 * the leader's log decides between nodes, and a waiter that loses goes back to its place.
 */

/** An object a vote needs. `shared`: a store resolved on the server (only exclusive use blocks it). */
export interface LockNeed {
  storage: string;
  oid: Uint8Array;
  /** Identifies the object among every storage's (see lockNeed). */
  key: string;
  shared: boolean;
}

export function lockNeed(storage: string, oid: Uint8Array, shared: boolean): LockNeed {
  return { storage, oid, key: `${storage}\0${Buffer.from(oid).toString('hex')}`, shared };
}

interface Waiter {
  needs: LockNeed[];
  txnId: string;
  /** Proposing (or about to): its objects stay claimed against later waiters. */
  active: boolean;
  wake?: () => void;
}

export interface LockState {
  /** Whether the object is free for `txnId` (its own locks do not count). */
  isFree(need: LockNeed, txnId: string): boolean;
  /** Whether `txnId` itself holds the object (a reservation, or its earlier vote). */
  holds(need: LockNeed, txnId: string): boolean;
  /** Called after every applied command. */
  onApplied(fn: () => void): () => void;
}

/** Waiters at most in the line of one node (each ZEO connection has at most one vote waiting). */
export const LOCK_QUEUE_WAITERS_MAX = 100_000;

export class LockQueue {
  private readonly line: Waiter[] = [];
  private readonly unsubscribe: () => void;

  constructor(private readonly state: LockState) {
    this.unsubscribe = state.onApplied(() => this.pump());
  }

  get waiting(): number {
    return this.line.length;
  }

  /**
   * Whether an earlier waiter needs one of these objects (apart from those `txnId` holds already):
   * then a newcomer queues behind it.
   */
  behindOthers(needs: LockNeed[], txnId: string): boolean {
    const wanted = needs.filter((n) => !this.state.holds(n, txnId));
    return this.line.some((w) => overlaps(w.needs, wanted));
  }

  /** Take the last place in the line (as a waiter about to propose). */
  enter(needs: LockNeed[], txnId: string): LockTicket {
    if (this.line.length >= LOCK_QUEUE_WAITERS_MAX)
      throw new Error(`over ${LOCK_QUEUE_WAITERS_MAX} votes waiting for locks`);
    const w: Waiter = { needs, txnId, active: true };
    this.line.push(w);
    return new LockTicket(this, w);
  }

  /** @internal */
  wait(w: Waiter, deadlineMs: number): Promise<void> {
    w.active = false;
    return new Promise((resolve) => {
      const timer = setTimeout(done, Math.max(0, deadlineMs - Date.now()));
      function done(): void {
        clearTimeout(timer);
        w.wake = undefined;
        w.active = true;
        resolve();
      }
      w.wake = done;
      this.pump();
    });
  }

  /** @internal */
  leave(w: Waiter): void {
    const i = this.line.indexOf(w);
    if (i < 0) return;
    this.line.splice(i, 1);
    w.wake?.();
    this.pump();
  }

  /** Wake every waiter whose turn it is: its objects free and not claimed by an earlier waiter. */
  private pump(): void {
    const claimedExclusive = new Set<string>();
    const claimed = new Set<string>();
    for (const w of this.line) {
      // An object the waiter holds itself is its own whoever else waits for it (the holder of a
      // reservation votes again while others wait for it to finish).
      const held = w.needs.some(
        (n) =>
          (claimedExclusive.has(n.key) || (!n.shared && claimed.has(n.key))) &&
          !this.state.holds(n, w.txnId),
      );
      if (!w.active && !held && w.needs.every((n) => this.state.isFree(n, w.txnId))) w.wake?.();
      for (const n of w.needs) {
        claimed.add(n.key);
        if (!n.shared) claimedExclusive.add(n.key);
      }
    }
  }

  close(): void {
    this.unsubscribe();
    for (const w of [...this.line]) this.leave(w);
  }
}

/** A waiter's place in the line; `leave()` it once its vote is decided, whatever the outcome. */
export class LockTicket {
  constructor(
    private readonly queue: LockQueue,
    private readonly w: Waiter,
  ) {}

  /** Until it is this waiter's turn, or the deadline (then it proposes once more and gives up). */
  wait(deadlineMs: number): Promise<void> {
    return this.queue.wait(this.w, deadlineMs);
  }

  leave(): void {
    this.queue.leave(this.w);
  }
}

function overlaps(a: LockNeed[], b: LockNeed[]): boolean {
  const byKey = new Map(a.map((n) => [n.key, n.shared]));
  return b.some((n) => byKey.has(n.key) && !(n.shared && byKey.get(n.key)));
}
