/**
 * The in-memory cache: object revisions with their validity ranges, least-recently-used
 * eviction under a byte bound. Synchronous, so a lookup and the decision based on it cannot be
 * interleaved with an invalidation.
 */
import { CacheIndex, Revision, idKey } from './cache-index';

/** Bytes charged per revision on top of its data: the index entries and the key strings. */
export const MEMORY_ENTRY_OVERHEAD_BYTES = 160;

export interface CachedRevision {
  data: Buffer;
  start: Buffer;
  /** Absent when the revision is current as of the cache's last TID. */
  end?: Buffer;
}

export class MemoryCache {
  private readonly index: CacheIndex<Buffer>;

  constructor(readonly maxBytes: number) {
    this.index = new CacheIndex<Buffer>(maxBytes);
  }

  get bytes(): number {
    return this.index.bytes;
  }

  get count(): number {
    return this.index.count;
  }

  /** The current revision (the index's own record: callers must not modify it). */
  current(oid: Uint8Array): Readonly<Revision<Buffer>> | undefined {
    return this.index.current(idKey(oid));
  }

  before(oid: Uint8Array, before: Uint8Array): CachedRevision | undefined {
    return view(this.index.before(idKey(oid), before));
  }

  serial(oid: Uint8Array, serial: Uint8Array): CachedRevision | undefined {
    return view(this.index.serial(idKey(oid), serial));
  }

  isCurrent(oid: Uint8Array, start: Uint8Array): boolean {
    return this.index.isCurrent(idKey(oid), start);
  }

  store(oid: Buffer, start: Buffer, end: Buffer | undefined, data: Buffer): void {
    this.index.insert(oid, start, end, data.length + MEMORY_ENTRY_OVERHEAD_BYTES, data);
  }

  invalidate(oid: Uint8Array, tid: Buffer): void {
    this.index.invalidate(idKey(oid), tid);
  }

  clear(): void {
    this.index.clear();
  }
}

function view(r: Revision<Buffer> | undefined): CachedRevision | undefined {
  return r && { data: r.payload, start: r.start, end: r.end };
}
