/**
 * The current-serial cache: C records (an object's current serial) kept in memory, bounded, for
 * the conflict check of every commit and for loads. It only ever holds values whose batch has
 * landed, so apply and readers share it.
 */
import type { BatchOp, Db } from './store-records';
import * as K from './keys';
import { PresenceFilter } from './presence-filter';

/** Current-serial records cached in memory by default (about 150 bytes each). */
export const CURRENT_CACHE_ENTRIES = 100_000;

export class CurrentSerialCache {
  /** Current-serial records by key (latin1); null = known absent. Oldest first (evicted first). */
  /**
   * Values are kept as latin1 strings, not Buffers: a small Buffer is a view into a shared 8 KiB
   * pool slab and would keep the whole slab alive (measured: ~1.2 KiB of RSS per cached entry).
   */
  private readonly currentCache = new Map<string, string | null>();
  private batchesLanded = 0;
  /** Which C records may exist (presence-filter.ts); rebuilt whenever the state is replaced. */
  private filter = new PresenceFilter(undefined);
  /** Reads the filter answered without LevelDB (objects known to be new). */
  absentByFilter = 0;

  /** The presence filter is built by `replaced()` once the store's state is in place. */
  constructor(
    private readonly db: Db,
    private readonly entriesMax = CURRENT_CACHE_ENTRIES,
  ) {}

  /** Resolves when the presence filter in use has finished its scan. */
  get filterBuilt(): Promise<void> {
    return this.filter.built;
  }

  /**
   * The C record (current serial) of an object, through a bounded cache of written values: every
   * commit conflict-checks each object it touches, and most touch recently written ones. The cache
   * only ever holds values whose batch has landed, so readers may use it too.
   */
  async read(key: Buffer): Promise<Buffer | undefined> {
    const k = key.toString('latin1');
    const hit = this.currentCache.get(k);
    if (hit !== undefined) return hit === null ? undefined : Buffer.from(hit, 'latin1');
    if (!this.filter.mightContain(key)) {
      this.absentByFilter++;
      return undefined;
    }
    // A batch landing while this read was out may have written the key: then the value read is
    // stale and must not be cached (landed() has cached the new one).
    const landed = this.batchesLanded;
    const v = await this.db.get(key);
    if (landed === this.batchesLanded) this.rememberCurrent(key, v ?? null, k);
    return v;
  }

  /**
   * The C records of many objects: hits from memory, every miss in one LevelDB getMany (one trip
   * to LevelDB's thread pool instead of one per object: a commit of 30,000 new objects spent
   * most of its time waiting on those trips one by one).
   */
  async readMany(keys: Buffer[]): Promise<(Buffer | undefined)[]> {
    const out: (Buffer | undefined)[] = new Array(keys.length);
    const missing: number[] = [];
    keys.forEach((key, i) => {
      const hit = this.currentCache.get(key.toString('latin1'));
      if (hit !== undefined) out[i] = hit === null ? undefined : Buffer.from(hit, 'latin1');
      else if (this.filter.mightContain(key)) missing.push(i);
      else {
        out[i] = undefined;
        this.absentByFilter++;
      }
    });
    if (missing.length === 0) return out;
    const landed = this.batchesLanded;
    const got = await this.db.getMany(missing.map((i) => keys[i]));
    missing.forEach((i, j) => {
      out[i] = got[j];
      if (landed === this.batchesLanded) this.rememberCurrent(keys[i], got[j] ?? null);
    });
    return out;
  }

  /** A batch has landed: remember the C records it wrote. */
  landed(ops: BatchOp[]): void {
    this.batchesLanded++;
    for (const op of ops)
      if (op.key[0] === K.TAG.current) {
        if (op.type === 'put') this.filter.add(op.key);
        this.rememberCurrent(op.key, op.type === 'put' ? op.value : null);
      }
  }

  /**
   * The state is being replaced (a snapshot install): forget everything; reads in flight must not
   * fill the cache, and the presence filter stops answering until `replaced()`.
   */
  reset(): void {
    this.currentCache.clear();
    this.batchesLanded++;
    this.filter.drop();
  }

  /**
   * The state is in place (opened, recovered from an interrupted install, or replaced by one):
   * build a new presence filter over it.
   */
  replaced(): void {
    this.reset();
    this.filter = new PresenceFilter(this.db);
  }

  private rememberCurrent(key: Buffer, value: Buffer | null, k = key.toString('latin1')): void {
    this.currentCache.delete(k);
    this.currentCache.set(k, value === null ? null : value.toString('latin1'));
    if (this.currentCache.size > this.entriesMax)
      this.currentCache.delete(this.currentCache.keys().next().value as string);
  }
}
