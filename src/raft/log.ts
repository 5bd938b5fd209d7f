import { assert } from '../util/assert';
import { CompactedError, RaftError } from './errors';
import { RaftStorage, limitSize } from './storage';
import { Unstable } from './unstable';
import { Entry, SnapshotMeta } from './types';

/**
 * The replicated log as one node sees it: the durable part (read through RaftStorage) followed
 * by the unstable tail (not yet persisted).
 *
 * Invariants: applied <= committed <= lastIndex(); firstIndex() - 1 <= committed.
 * Storage entries below unstable.offset agree with this log; storage entries at or above it
 * are stale and will be overwritten when the host persists the unstable tail.
 */
export class RaftLog {
  readonly unstable: Unstable;
  /** Highest index known to be committed. */
  committed: number;
  /** Highest index the host has applied (confirmed through advance()). */
  applied: number;

  constructor(readonly storage: RaftStorage) {
    const first = storage.firstIndex();
    this.unstable = new Unstable(storage.lastIndex() + 1);
    this.committed = first - 1;
    this.applied = first - 1;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  /** Last index that is durable and agrees with this log; 0 while a snapshot is being installed. */
  lastStableIndex(): number {
    if (this.unstable.snapshot) return 0;
    return Math.min(this.storage.lastIndex(), this.unstable.offset - 1);
  }

  /** Term of entry i, or undefined when i is compacted (< firstIndex() - 1) or beyond lastIndex(). */
  term(i: number): number | undefined {
    if (i < this.firstIndex() - 1 || i > this.lastIndex()) return undefined;
    const t = this.unstable.maybeTerm(i);
    if (t !== undefined) return t;
    try {
      return this.storage.term(i);
    } catch (e) {
      if (e instanceof RaftError) return undefined;
      throw e;
    }
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    assert(t !== undefined, 'term of last index must be known');
    return t;
  }

  matchTerm(i: number, term: number): boolean {
    const t = this.term(i);
    return t !== undefined && t === term;
  }

  /** §5.4.1: a candidate's log (lastIndex, lastTerm) is at least as up to date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const myTerm = this.lastTerm();
    return lastTerm > myTerm || (lastTerm === myTerm && lastIndex >= this.lastIndex());
  }

  /**
   * Follower side of Append: if our entry at `index` has `logTerm`, append `ents` (dropping any
   * conflicting suffix), advance commit to min(committed, last new index), and return the last
   * new index; otherwise return undefined.
   */
  maybeAppend(
    index: number,
    logTerm: number,
    committed: number,
    ents: Entry[],
  ): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastNew = index + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      assert(
        ci > this.committed,
        `entry ${ci} conflicts with committed entry (committed ${this.committed})`,
      );
      this.append(ents.slice(ci - (index + 1)));
    }
    this.commitTo(Math.min(committed, lastNew));
    return lastNew;
  }

  /** Index of the first entry in ents that is new or conflicts with ours; 0 if all match. */
  private findConflict(ents: Entry[]): number {
    for (const e of ents) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * The largest index <= `index` whose term is <= `term`, with that term (0 when unknown).
   * Used to skip a whole term per rejection while probing.
   */
  findConflictByTerm(index: number, term: number): [number, number] {
    for (let i = index; i >= 0; i--) {
      const t = this.term(i);
      if (t === undefined) return [i, 0];
      if (t <= term) return [i, t];
    }
    return [0, 0];
  }

  /** Append ents (consecutive), truncating our suffix from ents[0].index. Returns lastIndex(). */
  append(ents: Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    assert(
      ents[0].index - 1 >= this.committed,
      `append at ${ents[0].index} would truncate committed ${this.committed}`,
    );
    assert(
      ents[0].index <= this.lastIndex() + 1,
      `append at ${ents[0].index} leaves a gap after ${this.lastIndex()}`,
    );
    this.unstable.truncateAndAppend(ents);
    return this.lastIndex();
  }

  unstableEntries(): Entry[] {
    return this.unstable.entries;
  }

  /** Committed entries not yet applied, up to maxBytes (at least one when any). */
  nextCommittedEnts(maxBytes: number): Entry[] {
    if (this.unstable.snapshot) return []; // apply the snapshot first
    const lo = Math.max(this.applied + 1, this.firstIndex());
    const hi = this.committed + 1;
    if (lo >= hi) return [];
    return this.slice(lo, hi, maxBytes);
  }

  hasNextCommittedEnts(): boolean {
    if (this.unstable.snapshot) return false;
    return this.committed > Math.max(this.applied, this.firstIndex() - 1);
  }

  snapshot(): SnapshotMeta {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }

  /** Entries from i to the end, at most maxBytes (at least one when any). Throws CompactedError. */
  entries(i: number, maxBytes: number): Entry[] {
    if (i > this.lastIndex()) return [];
    return this.slice(i, this.lastIndex() + 1, maxBytes);
  }

  /** Entries [lo, hi). Throws CompactedError if lo < firstIndex(). */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    const first = this.firstIndex();
    if (lo < first) throw new CompactedError(lo, first);
    assert(hi <= this.lastIndex() + 1, `slice [${lo},${hi}) beyond last index ${this.lastIndex()}`);
    if (lo >= hi) return [];
    let ents: Entry[] = [];
    const off = this.unstable.offset;
    if (lo < off) {
      const storedHi = Math.min(hi, off);
      ents = this.storage.entries(lo, storedHi, maxBytes);
      if (ents.length < storedHi - lo) return ents; // size limit reached inside storage
    }
    if (hi > off) {
      const u = this.unstable.slice(Math.max(lo, off), hi);
      ents = ents.length > 0 ? ents.concat(u) : u;
    }
    return limitSize(ents, maxBytes);
  }

  /** Leader: commit maxIndex if it is from the current term (§5.4.2). */
  maybeCommit(maxIndex: number, term: number): boolean {
    if (maxIndex > this.committed && this.term(maxIndex) === term) {
      this.commitTo(maxIndex);
      return true;
    }
    return false;
  }

  commitTo(index: number): void {
    if (index <= this.committed) return; // commit never decreases
    assert(index <= this.lastIndex(), `commit ${index} beyond last index ${this.lastIndex()}`);
    this.committed = index;
  }

  appliedTo(index: number): void {
    if (index === 0) return;
    assert(
      index <= this.committed && index >= this.applied,
      `applied ${index} outside [${this.applied}, ${this.committed}]`,
    );
    this.applied = index;
  }

  stableTo(index: number, term: number): void {
    this.unstable.stableTo(index, term);
  }

  stableSnapTo(index: number): void {
    this.unstable.stableSnapTo(index);
  }

  /** Replace the log by a snapshot (follower installing one sent by the leader). */
  restore(s: SnapshotMeta): void {
    this.committed = s.index;
    this.unstable.restore(s);
  }
}
