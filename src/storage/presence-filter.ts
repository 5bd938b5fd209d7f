/**
 * Which objects may exist: a Bloom filter over the keys of the current-serial (C) records, so the
 * conflict check of a commit that creates objects learns they are new without a LevelDB read (a
 * new object is never in the current-serial cache, and its read was half of one commit's apply).
 *
 * The one invariant: once the filter is ready, every C record in the database has its key in it.
 * It holds because the filter is filled from two sides that overlap: every batch that lands adds
 * the C keys it puts (from the moment the filter exists), and a scan of the C records over an
 * iterator created after that (an iterator reads a snapshot taken at its creation) adds every key
 * that landed before. Keys are never removed (a pack that deletes an object leaves a false
 * positive, which costs a read, never a wrong answer). A snapshot install replaces the state
 * behind the batches' back: the owner drops the filter first and builds a new one afterwards.
 *
 * 2^24 bits (2 MiB) and four hashes: about 0.2% false positives at one million objects, 8% at
 * three million; past that the filter still answers correctly, only less often "absent".
 */
import type { Db } from './store-records';
import * as K from './keys';

const BITS_LOG2 = 24;
const MASK = (1 << BITS_LOG2) - 1;
const HASHES = 4;
/** Keys the start-up scan takes per LevelDB read. */
const SCAN_BATCH_KEYS = 1000;

export class PresenceFilter {
  private readonly bits = new Uint8Array(1 << (BITS_LOG2 - 3));
  private isReady = false;
  private dropped = false;
  /** Resolves once the scan has finished (ready), or the filter was dropped. */
  readonly built: Promise<void>;

  /**
   * Create the filter and start its scan of `db` (the caller adds landed keys from now on).
   * Without a database the filter never becomes ready (every answer is "may exist").
   */
  constructor(db: Db | undefined) {
    this.built = db ? this.scan(db) : Promise.resolve();
  }

  get ready(): boolean {
    return this.isReady && !this.dropped;
  }

  /** Stop answering (the state behind it is being replaced); a scan in flight ends unused. */
  drop(): void {
    this.dropped = true;
  }

  /** False only when no C record with this key exists; true when it may. */
  mightContain(key: Buffer): boolean {
    if (!this.ready) return true;
    const [first, h2] = hashes(key);
    let h1 = first;
    for (let i = 0; i < HASHES; i++) {
      const bit = h1 & MASK;
      if ((this.bits[bit >>> 3] & (1 << (bit & 7))) === 0) return false;
      h1 = (h1 + h2) >>> 0;
    }
    return true;
  }

  add(key: Buffer): void {
    const [first, h2] = hashes(key);
    let h1 = first;
    for (let i = 0; i < HASHES; i++) {
      const bit = h1 & MASK;
      this.bits[bit >>> 3] |= 1 << (bit & 7);
      h1 = (h1 + h2) >>> 0;
    }
  }

  private async scan(db: Db): Promise<void> {
    // Wait one turn: the constructor's caller hooks the landed batches first.
    await Promise.resolve();
    const it = db.keys({
      gte: Buffer.from([K.TAG.current]),
      lt: Buffer.from([K.TAG.current + 1]),
    });
    try {
      // A batch of keys per read: one promise per batch, not per key (at a million objects the
      // per-key iteration kept the main thread busy for seconds, and every request waited on
      // it); each read is a trip through LevelDB's thread pool, so requests get in between.
      for (;;) {
        const keys = await it.nextv(SCAN_BATCH_KEYS);
        if (this.dropped) return;
        if (keys.length === 0) break;
        for (const key of keys) this.add(key);
      }
    } catch {
      // The database closed under the scan: the filter never becomes ready (reads go to LevelDB).
      return;
    } finally {
      await it.close().catch(() => undefined);
    }
    this.isReady = true;
  }
}

/** Two independent 32-bit hashes of the key (FNV-1a, and a multiplicative mix of it). */
function hashes(key: Buffer): [number, number] {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key[i];
    h = Math.imul(h, 0x01000193);
  }
  let g = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  g = Math.imul(g ^ (g >>> 13), 0xc2b2ae35);
  g = (g ^ (g >>> 16)) | 1; // odd: the probe sequence visits distinct bits
  return [h >>> 0, g >>> 0];
}
