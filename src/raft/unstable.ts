import { assert } from '../util/assert';
import { Entry, SnapshotMeta } from './types';

/**
 * The not-yet-persisted tail of the log: an optional incoming snapshot and entries that the
 * host has been (or will be) handed in a Ready but has not confirmed via advance().
 *
 * Invariant: entries[i] has log index offset + i. If snapshot is set, offset = snapshot.index + 1
 * or entries were appended after it.
 */
export class Unstable {
  snapshot: SnapshotMeta | undefined = undefined;
  entries: Entry[] = [];

  constructor(public offset: number) {}

  /** First index if a snapshot is pending (the log before it is being replaced). */
  maybeFirstIndex(): number | undefined {
    return this.snapshot ? this.snapshot.index + 1 : undefined;
  }

  maybeLastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot ? this.snapshot.index : undefined;
  }

  maybeTerm(i: number): number | undefined {
    if (i < this.offset) {
      if (this.snapshot && this.snapshot.index === i) return this.snapshot.term;
      return undefined;
    }
    const last = this.maybeLastIndex();
    if (last === undefined || i > last) return undefined;
    return this.entries[i - this.offset].term;
  }

  /** The host persisted entries up to (index, term): drop them from the unstable tail. */
  stableTo(index: number, term: number): void {
    const t = this.maybeTerm(index);
    if (t === undefined || t !== term || index < this.offset) return; // superseded meanwhile
    this.entries = this.entries.slice(index + 1 - this.offset);
    this.offset = index + 1;
  }

  stableSnapTo(index: number): void {
    if (this.snapshot && this.snapshot.index === index) this.snapshot = undefined;
  }

  restore(s: SnapshotMeta): void {
    this.offset = s.index + 1;
    this.entries = [];
    this.snapshot = s;
  }

  truncateAndAppend(ents: Entry[]): void {
    const after = ents[0].index;
    if (after === this.offset + this.entries.length) {
      this.entries = this.entries.concat(ents);
    } else if (after <= this.offset) {
      // Replaces the whole unstable tail (and, once persisted, the storage suffix from `after`).
      this.offset = after;
      this.entries = ents.slice();
    } else {
      this.entries = this.entries.slice(0, after - this.offset).concat(ents);
    }
  }

  /** Entries [lo, hi), which must lie within the unstable tail. */
  slice(lo: number, hi: number): Entry[] {
    assert(
      this.offset <= lo && lo <= hi && hi <= this.offset + this.entries.length,
      `unstable.slice [${lo},${hi}) out of [${this.offset},${this.offset + this.entries.length})`,
    );
    return this.entries.slice(lo - this.offset, hi - this.offset);
  }
}
