import { assert } from '../util/assert';
import { CompactedError, SnapshotOutOfDateError, UnavailableError } from './errors';
import { ConfState, Entry, HardState, SnapshotMeta, entryBytes } from './types';

/**
 * The durable log as the core READS it. The host implements it (and writes it from Ready);
 * the core never writes through this interface.
 *
 * Model: a snapshot at index S (S >= 0; S = 0 means "empty log") followed by entries
 * S+1 .. lastIndex(). firstIndex() = S + 1. term(S) is the snapshot's term.
 */
export interface RaftStorage {
  /** Persisted hard state, and the membership as of the host's applied index (see RaftConfig.applied). */
  initialState(): { hardState: HardState; conf: ConfState };
  /**
   * Entries [lo, hi), lo >= firstIndex(), hi <= lastIndex() + 1, totalling at most maxBytes
   * (entry data bytes) — but at least one entry when lo < hi. Throws CompactedError when
   * lo < firstIndex(), UnavailableError when hi > lastIndex() + 1.
   */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** Term of entry i, for firstIndex() - 1 <= i <= lastIndex(); throws Compacted/Unavailable otherwise. */
  term(i: number): number;
  /** Index of the first entry that may still be read (snapshot index + 1). */
  firstIndex(): number;
  /** Index of the last entry; firstIndex() - 1 when the log holds no entries. */
  lastIndex(): number;
  /** Metadata of the latest available snapshot; the host streams its data itself. */
  snapshot(): SnapshotMeta;
}

/** Clip ents to at most maxBytes total, but always keep the first entry. */
export function limitSize(ents: Entry[], maxBytes: number): Entry[] {
  if (ents.length === 0) return ents;
  let size = entryBytes(ents[0]);
  let n = 1;
  while (n < ents.length) {
    size += entryBytes(ents[n]);
    if (size > maxBytes) break;
    n++;
  }
  return n === ents.length ? ents : ents.slice(0, n);
}

/**
 * An in-memory RaftStorage, used by tests and the simulator (where it plays the disk) and
 * wrappable by hosts. Writes (append, setHardState, applySnapshot, createSnapshot, compact)
 * are the host's job, done when it persists a Ready.
 *
 * Invariant: ents[0] is a dummy entry holding the snapshot's (index, term); ents[i] has log
 * index ents[0].index + i.
 */
export class MemoryStorage implements RaftStorage {
  private hard: HardState = { term: 0, vote: '', commit: 0 };
  private snap: SnapshotMeta;
  private ents: Entry[];

  constructor(conf: ConfState = { voters: [], learners: [] }) {
    this.snap = { index: 0, term: 0, conf: copyConf(conf) };
    this.ents = [dummy(0, 0)];
  }

  /**
   * Storage for a node of a brand-new cluster: a snapshot at index 1, term 1 holding the
   * initial membership, so every log (also a later joiner's, which receives this or a later
   * snapshot) starts from a snapshot that carries the configuration.
   */
  static bootstrap(conf: ConfState): MemoryStorage {
    const s = new MemoryStorage(conf);
    s.snap = { index: 1, term: 1, conf: copyConf(conf) };
    s.ents = [dummy(1, 1)];
    s.hard = { term: 1, vote: '', commit: 1 };
    return s;
  }

  initialState(): { hardState: HardState; conf: ConfState } {
    return { hardState: { ...this.hard }, conf: copyConf(this.snap.conf) };
  }

  hardState(): HardState {
    return { ...this.hard };
  }

  setHardState(h: HardState): void {
    this.hard = { ...h };
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    const offset = this.ents[0].index;
    if (lo <= offset) throw new CompactedError(lo, offset + 1);
    if (hi > this.lastIndex() + 1) throw new UnavailableError(hi - 1, this.lastIndex());
    assert(lo <= hi, `entries: lo ${lo} > hi ${hi}`);
    return limitSize(this.ents.slice(lo - offset, hi - offset), maxBytes);
  }

  term(i: number): number {
    const offset = this.ents[0].index;
    if (i < offset) throw new CompactedError(i, offset + 1);
    if (i - offset >= this.ents.length) throw new UnavailableError(i, this.lastIndex());
    return this.ents[i - offset].term;
  }

  firstIndex(): number {
    return this.ents[0].index + 1;
  }

  lastIndex(): number {
    return this.ents[0].index + this.ents.length - 1;
  }

  snapshot(): SnapshotMeta {
    return { ...this.snap, conf: copyConf(this.snap.conf) };
  }

  /** Replace the whole log by a received snapshot (follower side). Older snapshots are refused. */
  applySnapshot(meta: SnapshotMeta): void {
    if (meta.index <= this.snap.index)
      throw new SnapshotOutOfDateError(meta.index, this.snap.index);
    this.snap = { ...meta, conf: copyConf(meta.conf) };
    this.ents = [dummy(meta.index, meta.term)];
  }

  /**
   * Record that the host took a state snapshot at `index` (<= applied) with membership `conf`.
   * Does not discard entries; call compact() for that.
   */
  createSnapshot(index: number, conf: ConfState): SnapshotMeta {
    if (index <= this.snap.index) throw new SnapshotOutOfDateError(index, this.snap.index);
    assert(
      index <= this.lastIndex(),
      `createSnapshot ${index} beyond last index ${this.lastIndex()}`,
    );
    this.snap = { index, term: this.term(index), conf: copyConf(conf) };
    return this.snapshot();
  }

  /** Discard entries before `index` (index becomes the dummy). Requires index <= snapshot index. */
  compact(index: number): void {
    const offset = this.ents[0].index;
    if (index <= offset) return;
    assert(index <= this.snap.index, `compact ${index} beyond snapshot ${this.snap.index}`);
    assert(index <= this.lastIndex(), `compact ${index} beyond last index ${this.lastIndex()}`);
    const rest = this.ents.slice(index - offset);
    rest[0] = dummy(rest[0].index, rest[0].term);
    this.ents = rest;
  }

  /** Append entries, truncating any existing suffix from entries[0].index on. */
  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    const last = entries[0].index + entries.length - 1;
    if (last < first) return; // all compacted
    if (first > entries[0].index) entries = entries.slice(first - entries[0].index);
    const offset = entries[0].index - this.ents[0].index;
    assert(
      offset >= 1 && offset <= this.ents.length,
      `append: gap, first new ${entries[0].index} after last ${this.lastIndex()}`,
    );
    this.ents = this.ents.slice(0, offset).concat(entries);
  }
}

function dummy(index: number, term: number): Entry {
  return { index, term, type: 0, data: new Uint8Array(0) };
}

export function copyConf(c: ConfState): ConfState {
  return { voters: [...c.voters], learners: [...c.learners] };
}
