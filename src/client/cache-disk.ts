/**
 * The persistent cache: object revisions in a LevelDB directory, bounded in bytes, surviving
 * restarts of the client together with the last TID it is valid for.
 *
 * The validity ranges and sizes live in an in-memory index (rebuilt from LevelDB on open), so
 * every decision — is this revision current, what does an invalidation change, what to evict — is
 * synchronous and cannot interleave with an invalidation. LevelDB holds the data and a copy of
 * the index. Writes are queued and applied as atomic batches in the order they were made, so after
 * a crash the directory holds a prefix of the in-memory history: a state the cache really was in,
 * with the last TID it was valid for.
 *
 * Key layout (one tag byte, then fixed-size ids):
 *   'v'                 format and storage name (JSON); a mismatch clears the directory
 *   't'                 the last TID whose invalidations are applied (8 bytes)
 *   'm' oid start       meta: data size (u32 BE), then `end` (8 bytes) when not current
 *   'd' oid start       the revision's data (immutable: a revision's bytes never change)
 */
import { Level } from 'level';
import { CacheIndex, Revision, idKey } from './cache-index';
import { ID_BYTES, idCompare } from '../util/ids';

/** Bytes charged per revision on top of its data: two keys, the meta value, LevelDB's framing. */
export const DISK_ENTRY_OVERHEAD_BYTES = 96;
const FORMAT = 1;
const KEY_VERSION = Buffer.from('v');
const KEY_LAST_TID = Buffer.from('t');
const TAG_META = 0x6d; // 'm'
const TAG_DATA = 0x64; // 'd'
/** Most operations written in one LevelDB batch. */
const BATCH_MAX_OPS = 1000;

type Db = Level<Buffer, Buffer>;
type Op = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };
type QueueItem = Op | { type: 'clear' };

function revKey(tag: number, oid: Uint8Array, start: Uint8Array): Buffer {
  const k = Buffer.alloc(1 + 2 * ID_BYTES);
  k[0] = tag;
  k.set(oid, 1);
  k.set(start, 1 + ID_BYTES);
  return k;
}

function metaValue(size: number, end: Buffer | undefined): Buffer {
  const v = Buffer.alloc(4 + (end ? ID_BYTES : 0));
  v.writeUInt32BE(size, 0);
  if (end) v.set(end, 4);
  return v;
}

export interface DiskCacheStats {
  bytes: number;
  count: number;
  maxBytes: number;
}

export class DiskCache {
  private readonly index: CacheIndex<undefined>;
  private queue: QueueItem[] = [];
  /** Data written but maybe not yet in LevelDB, by data key (latin1). */
  private readonly overlay = new Map<string, Buffer>();
  private flushing: Promise<void> | undefined;
  private lastTidValue: Buffer | undefined;
  private failure: unknown;
  private closed = false;
  private version = Buffer.alloc(0);

  private constructor(
    private readonly db: Db,
    readonly maxBytes: number,
    private readonly onError: (e: unknown) => void,
  ) {
    this.index = new CacheIndex<undefined>(maxBytes, (r) => this.dropRevision(r));
  }

  /** Open (or create) the cache in `dir` for `storage`, rebuilding the index from disk. */
  static async open(
    dir: string,
    maxBytes: number,
    storage: string,
    onError: (e: unknown) => void = () => undefined,
  ): Promise<DiskCache> {
    const db: Db = new Level<Buffer, Buffer>(dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    });
    await db.open();
    const cache = new DiskCache(db, maxBytes, onError);
    await cache.load(storage);
    return cache;
  }

  private async load(storage: string): Promise<void> {
    this.version = Buffer.from(JSON.stringify({ format: FORMAT, storage }));
    const stored = await this.db.get(KEY_VERSION);
    if (!stored || !stored.equals(this.version)) {
      await this.db.clear();
      await this.db.put(KEY_VERSION, this.version);
      return;
    }
    const t = await this.db.get(KEY_LAST_TID);
    this.lastTidValue = t && t.length === ID_BYTES ? Buffer.from(t) : undefined;
    for await (const [k, v] of this.db.iterator({
      gte: Buffer.from([TAG_META]),
      lt: Buffer.from([TAG_META + 1]),
    })) {
      const oid = Buffer.from(k.subarray(1, 1 + ID_BYTES));
      const start = Buffer.from(k.subarray(1 + ID_BYTES));
      const size = v.readUInt32BE(0);
      const end = v.length >= 4 + ID_BYTES ? Buffer.from(v.subarray(4, 4 + ID_BYTES)) : undefined;
      // insert() evicts (and queues deletes) if the configured bound shrank since last time.
      this.index.insert(oid, start, end, size + DISK_ENTRY_OVERHEAD_BYTES, undefined);
    }
    if (!this.lastTidValue) this.clear();
  }

  /** The last TID this cache is valid for (undefined for an empty, never-synchronized cache). */
  get lastTid(): Buffer | undefined {
    return this.lastTidValue;
  }

  get stats(): DiskCacheStats {
    return { bytes: this.index.bytes, count: this.index.count, maxBytes: this.maxBytes };
  }

  /** The start (serial) of the cached current revision of `oid`, if any. */
  currentStart(oid: Uint8Array): Buffer | undefined {
    return this.index.current(idKey(oid))?.start;
  }

  /** The cached revision valid before `before` (see CacheIndex.before). */
  before(oid: Uint8Array, before: Uint8Array): { start: Buffer; end?: Buffer } | undefined {
    const r = this.index.before(idKey(oid), before);
    return r && { start: r.start, end: r.end };
  }

  hasSerial(oid: Uint8Array, serial: Uint8Array): boolean {
    return !!this.index.serial(idKey(oid), serial);
  }

  isCurrent(oid: Uint8Array, start: Uint8Array): boolean {
    return this.index.isCurrent(idKey(oid), start);
  }

  /**
   * The data of revision (oid, start), or undefined if it is not (or no longer) cached. A
   * revision's data never changes, so this read needs no ordering with invalidations; callers
   * re-check validity with the synchronous methods after it resolves.
   */
  async readData(oid: Uint8Array, start: Uint8Array): Promise<Buffer | undefined> {
    if (this.failure || this.closed) return undefined;
    const k = revKey(TAG_DATA, oid, start);
    const pending = this.overlay.get(k.toString('latin1'));
    if (pending) return pending;
    try {
      return (await this.db.get(k)) ?? undefined;
    } catch (e) {
      this.fail(e);
      return undefined;
    }
  }

  store(oid: Buffer, start: Buffer, end: Buffer | undefined, data: Buffer): void {
    if (this.failure || this.closed) return;
    const r = this.index.insert(
      oid,
      start,
      end,
      data.length + DISK_ENTRY_OVERHEAD_BYTES,
      undefined,
    );
    if (!r) return;
    const dk = revKey(TAG_DATA, oid, start);
    this.overlay.set(dk.toString('latin1'), data);
    this.push({ type: 'put', key: dk, value: data });
    this.push({
      type: 'put',
      key: revKey(TAG_META, oid, start),
      value: metaValue(data.length, r.end),
    });
  }

  invalidate(oid: Uint8Array, tid: Buffer): void {
    if (this.failure || this.closed) return;
    const r = this.index.invalidate(idKey(oid), tid);
    if (r)
      this.push({
        type: 'put',
        key: revKey(TAG_META, r.oid, r.start),
        value: metaValue(r.size - DISK_ENTRY_OVERHEAD_BYTES, r.end),
      });
  }

  setLastTid(tid: Buffer): void {
    if (this.failure || this.closed) return;
    if (this.lastTidValue && idCompare(tid, this.lastTidValue) <= 0) return;
    this.lastTidValue = tid;
    this.push({ type: 'put', key: KEY_LAST_TID, value: tid });
  }

  /** Forget everything (a Reset from the server): the directory is emptied in queue order. */
  clear(): void {
    if (this.failure || this.closed) return;
    this.index.clear();
    this.overlay.clear();
    this.lastTidValue = undefined;
    this.queue.push({ type: 'clear' });
    this.kick();
  }

  /** Resolves once every write made so far is in LevelDB. */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    await this.db.close();
  }

  private dropRevision(r: Revision<undefined>): void {
    const dk = revKey(TAG_DATA, r.oid, r.start);
    this.overlay.delete(dk.toString('latin1'));
    this.push({ type: 'del', key: dk });
    this.push({ type: 'del', key: revKey(TAG_META, r.oid, r.start) });
  }

  private push(op: Op): void {
    this.queue.push(op);
    this.kick();
  }

  private kick(): void {
    if (this.flushing) return;
    this.flushing = this.drain().finally(() => (this.flushing = undefined));
  }

  private async drain(): Promise<void> {
    // Let the current synchronous burst of writes accumulate into one batch.
    await new Promise<void>((resolve) => setImmediate(resolve));
    while (this.queue.length > 0 && !this.failure) {
      if (this.queue[0].type === 'clear') {
        this.queue.shift();
        await this.db
          .clear()
          .then(() => this.db.put(KEY_VERSION, this.version))
          .catch((e: unknown) => this.fail(e));
        continue;
      }
      const ops: Op[] = [];
      while (ops.length < BATCH_MAX_OPS) {
        const op = this.queue.at(0);
        if (!op || op.type === 'clear') break;
        ops.push(op);
        this.queue.shift();
      }
      try {
        await this.db.batch(ops);
      } catch (e) {
        this.fail(e);
        return;
      }
      for (const op of ops) {
        if (op.type !== 'put' || op.key[0] !== TAG_DATA) continue;
        const k = op.key.toString('latin1');
        if (this.overlay.get(k) === op.value) this.overlay.delete(k);
      }
    }
  }

  /** A LevelDB failure disables the cache (every lookup misses) rather than risk stale reads. */
  private fail(e: unknown): void {
    if (this.failure) return;
    this.failure = e ?? new Error('disk cache failure');
    this.index.clear();
    this.overlay.clear();
    this.queue = [];
    this.onError(e);
  }
}
