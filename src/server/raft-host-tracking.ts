/**
 * What the Raft host keeps track of while it waits: proposals waiting for their entry to apply,
 * and outstanding ReadIndex requests.
 */
import { Entry, ReadState } from '../raft';
import type { ApplyResult } from '../storage/object-store';
import { assert } from '../util/assert';

interface Pending {
  term: number;
  resolve: (r: ApplyResult) => void;
  reject: (e: Error) => void;
}

/**
 * Proposals waiting for their entry to apply, by log index. A proposal resolves only with the
 * result of its own entry: same index AND term (another leader may have put a different entry
 * at that index, and then the proposal failed).
 */
export class ProposalTracker {
  private readonly pending = new Map<number, Pending>();

  get size(): number {
    return this.pending.size;
  }

  /**
   * A proposal appended at index. An older term's proposal still waiting there was overwritten in
   * this node's log, but another node may still hold it and commit it later: its outcome is
   * unknown (`superseded`), and it stops waiting here.
   */
  add(index: number, p: Pending, superseded: () => Error): void {
    const old = this.pending.get(index);
    if (old) {
      assert(old.term < p.term, `two proposals of term ${p.term} waiting on index ${index}`);
      old.reject(superseded());
    }
    this.pending.set(index, p);
  }

  /** Drop the proposal at index if it is still the one of `term` (deadline); true if dropped. */
  expire(index: number, term: number): boolean {
    if (this.pending.get(index)?.term !== term) return false;
    this.pending.delete(index);
    return true;
  }

  /**
   * Entry e was applied (result r) or skipped: settle the proposal waiting on its index.
   * Returns what happened to it, or undefined when none waited.
   */
  settle(
    e: Entry,
    r: ApplyResult | undefined,
    refusal: () => Error,
  ): 'committed' | 'failed' | undefined {
    const p = this.pending.get(e.index);
    if (!p) return undefined;
    this.pending.delete(e.index);
    if (p.term !== e.term) {
      p.reject(refusal());
      return 'failed';
    }
    // A proposal's entry is new to this node's state machine: it cannot have been applied (and
    // so skipped) before it was proposed.
    assert(r !== undefined, `proposal at ${e.index} settled by an entry that was not applied`);
    p.resolve(r);
    return 'committed';
  }

  rejectAll(e: () => Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(e());
  }
}

/**
 * Outstanding ReadIndex requests by context. Contexts are unique cluster-wide: a prefix drawn
 * per host incarnation, the node id and a counter.
 */
export class ReadTracker {
  private readonly waiting = new Map<string, (index: number) => void>();
  private counter = 0;

  constructor(
    private readonly nodeId: string,
    private readonly prefix: string,
  ) {}

  /** A fresh context; `answered` runs with the read index when a ReadState names it. */
  issue(answered: (index: number) => void): { context: Buffer; cancel: () => void } {
    const context = Buffer.from(`${this.prefix}:${this.nodeId}:${++this.counter}`);
    const key = context.toString('hex');
    this.waiting.set(key, answered);
    return { context, cancel: () => this.waiting.delete(key) };
  }

  /** The core answered a read: only the request with exactly that context is answered. */
  answer(rs: ReadState): void {
    const key = Buffer.from(rs.context).toString('hex');
    const fn = this.waiting.get(key);
    if (!fn) return;
    this.waiting.delete(key);
    fn(rs.index);
  }
}
