/**
 * The bookkeeping shared by the memory and the disk cache: which object revisions are cached,
 * the TID range each is valid for, their sizes, and least-recently-used order under a byte bound.
 *
 * A revision of object `oid` written by TID `start` is valid for reads "before" any TID b with
 * start < b <= end (MISSION §2.3). `end` is absent for the current revision: it is then known
 * current as of the cache's last TID (every invalidation up to it has been applied), so it may
 * serve reads before b only for b <= lastTid + 1 — the caller checks that.
 *
 * Invariants: for each oid at most one revision has no `end`; revisions of one oid are kept
 * sorted by start, newest first; `bytes` is the sum of `size` over all revisions and never
 * exceeds `maxBytes` once an insert returns.
 */
import { idCompare } from '../util/ids';

export interface Revision<P> {
  readonly oid: Buffer;
  readonly start: Buffer;
  end: Buffer | undefined;
  /** Bytes charged against the bound for this revision. */
  readonly size: number;
  readonly payload: P;
  /** oidKey + start, for the LRU map. */
  readonly key: string;
}

/** A compact map key for an 8-byte id (one char per byte). */
export function idKey(id: Uint8Array): string {
  const b = Buffer.isBuffer(id) ? id : Buffer.from(id.buffer, id.byteOffset, id.byteLength);
  // latin1Slice is what toString('latin1') calls after its argument checks; this is a hot path
  // (every cached load), and an id is always 8 bytes.
  return (b as unknown as { latin1Slice(s: number, e: number): string }).latin1Slice(0, b.length);
}

export class CacheIndex<P> {
  private readonly byOid = new Map<string, Revision<P>[]>();
  /** Insertion order is LRU order: the first entry is the least recently used. */
  private readonly lru = new Map<string, Revision<P>>();
  private bytesUsed = 0;

  constructor(
    readonly maxBytes: number,
    /** Called for every revision the index drops by itself (bound, superseded; not clear/remove). */
    private readonly onEvict: (r: Revision<P>) => void = () => undefined,
  ) {}

  get bytes(): number {
    return this.bytesUsed;
  }

  get count(): number {
    return this.lru.size;
  }

  /** The current revision of an object, if cached. Marks it recently used. */
  current(oidKey: string): Revision<P> | undefined {
    const revs = this.byOid.get(oidKey);
    const r = revs?.[0];
    if (!r || r.end) return undefined;
    this.touch(r);
    return r;
  }

  /**
   * The cached revision with start < before <= end (a current revision counts as open-ended;
   * see the class comment for when the caller may use it). Marks it recently used.
   */
  before(oidKey: string, before: Uint8Array): Revision<P> | undefined {
    const revs = this.byOid.get(oidKey);
    if (!revs) return undefined;
    for (const r of revs) {
      if (idCompare(r.start, before) >= 0) continue;
      // The newest revision starting before `before`: valid only if it lasts until `before`.
      if (r.end && idCompare(before, r.end) > 0) return undefined;
      this.touch(r);
      return r;
    }
    return undefined;
  }

  /** The revision written by `serial`, if cached. */
  serial(oidKey: string, serial: Uint8Array): Revision<P> | undefined {
    const r = this.byOid.get(oidKey)?.find((x) => idCompare(x.start, serial) === 0);
    if (r) this.touch(r);
    return r;
  }

  /** Whether (oid, start) is cached as the current revision. */
  isCurrent(oidKey: string, start: Uint8Array): boolean {
    const r = this.byOid.get(oidKey)?.[0];
    return !!r && !r.end && idCompare(r.start, start) === 0;
  }

  /**
   * Record a revision. A revision larger than the whole bound is not cached. An existing entry for
   * the same (oid, start) keeps the better-known end. A "current" revision older than a cached
   * one is not stored; a cached current revision older than a new current one is dropped.
   * Returns the revision as stored, or undefined when it was not cached.
   */
  insert(
    oid: Buffer,
    start: Buffer,
    end: Buffer | undefined,
    size: number,
    payload: P,
  ): Revision<P> | undefined {
    if (size > this.maxBytes) return undefined;
    const oidKey = idKey(oid);
    let revs = this.byOid.get(oidKey);
    const same = revs?.find((x) => idCompare(x.start, start) === 0);
    if (same) {
      if (end && !same.end) same.end = end;
      this.touch(same);
      return same;
    }
    if (!end && revs) {
      const newest = revs[0];
      // A newer revision is known: this one is not current (keep what we have).
      if (newest && idCompare(newest.start, start) > 0) return undefined;
      // An older "current" revision is superseded; its exact end is unknown, so drop it.
      if (newest && !newest.end) {
        this.remove(newest);
        this.onEvict(newest);
      }
      revs = this.byOid.get(oidKey);
    }
    const r: Revision<P> = { oid, start, end, size, payload, key: oidKey + idKey(start) };
    if (!revs) this.byOid.set(oidKey, (revs = []));
    revs.push(r);
    revs.sort((a, b) => idCompare(b.start, a.start));
    this.lru.set(r.key, r);
    this.bytesUsed += size;
    this.evictToBound(r);
    return this.lru.has(r.key) ? r : undefined;
  }

  /**
   * Apply an invalidation: the current revision of `oid` (if cached) stops being current at
   * `tid`. Returns the revision that changed.
   */
  invalidate(oidKey: string, tid: Buffer): Revision<P> | undefined {
    const r = this.byOid.get(oidKey)?.[0];
    if (!r || r.end) return undefined;
    // A revision written by `tid` or later already reflects that write.
    if (idCompare(r.start, tid) >= 0) return undefined;
    r.end = tid;
    return r;
  }

  remove(r: Revision<P>): void {
    if (!this.lru.delete(r.key)) return;
    this.bytesUsed -= r.size;
    const oidKey = r.key.slice(0, 8);
    const revs = this.byOid.get(oidKey);
    if (!revs) return;
    const i = revs.indexOf(r);
    if (i >= 0) revs.splice(i, 1);
    if (revs.length === 0) this.byOid.delete(oidKey);
  }

  removeOid(oidKey: string): Revision<P>[] {
    const revs = [...(this.byOid.get(oidKey) ?? [])];
    for (const r of revs) this.remove(r);
    return revs;
  }

  clear(): void {
    this.byOid.clear();
    this.lru.clear();
    this.bytesUsed = 0;
  }

  /** All revisions, least recently used first. */
  values(): IterableIterator<Revision<P>> {
    return this.lru.values();
  }

  private touch(r: Revision<P>): void {
    this.lru.delete(r.key);
    this.lru.set(r.key, r);
  }

  private evictToBound(keep: Revision<P>): void {
    for (const victim of this.lru.values()) {
      if (this.bytesUsed <= this.maxBytes) return;
      if (victim === keep) continue;
      this.remove(victim);
      this.onEvict(victim);
    }
  }
}
