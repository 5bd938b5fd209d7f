/**
 * A ZEO session's calls outside a transaction: reads (loads, history, the undo log, invalidations
 * since a TID, blobs sent to the client, storage info and status), new OIDs and pack. Reads come
 * from the node's applied state, after waiting for it to reach the client's view.
 */
import { MAX_NEW_OIDS } from '../storage/object-store';
import { StorageError } from '../storage/errors';
import { UNDO_LOG_PAGE_MAX } from '../server/storage-api';
import { hex, idCompare, idNext, p64, tidToTime, u64 } from '../util/ids';
import { toBuffer } from './args';
import { ZeoDisconnect } from './errors';
import { ReplyThen, type SessionContext, bytes, decodeExtension } from './session-context';

/** ZEO hands out at most this many OIDs per new_oids call. */
export const NEW_OIDS_MAX = 100;
/** getInvalidations scans at most this many transactions; a client further behind drops its cache. */
const INVALIDATIONS_SCAN_MAX_TXNS = 10_000;

export class StorageCalls {
  constructor(private readonly ctx: SessionContext) {}

  getInfo(): Record<string, unknown> {
    const s = this.ctx.node.store.storageSummary(this.ctx.st);
    return {
      length: s.objectCount,
      size: 0,
      name: `ZeoRaft storage ${this.ctx.st} on node ${this.ctx.node.config.nodeId}`,
      supportsUndo: true,
      supports_record_iternext: true,
      interfaces: [
        ['ZODB.interfaces', 'IStorageIteration'],
        ['ZODB.interfaces', 'IStorageUndoable'],
        ['ZODB.interfaces', 'IStorageCurrentRecordIteration'],
        // Blobs in ZEO's non-shared mode (the client's blob_dir is its cache; see sendBlob).
        ['ZODB.interfaces', 'IBlobStorage'],
      ],
    };
  }

  lastTransaction(): Buffer {
    return this.ctx.api.lastTransaction(this.ctx.st);
  }

  /** (tid, oids) changed after `tid`, or null when history that old is not kept (drop the cache). */
  async getInvalidations(tid: Buffer): Promise<[Buffer, Buffer[]] | null> {
    const st = this.ctx.st;
    const last = this.ctx.api.lastTransaction(st);
    if (idCompare(tid, last) >= 0) return [last, []];
    const oldest = await this.ctx.api.oldestResumable(st);
    if (idCompare(idNext(tid), oldest) < 0) return null;
    const oids = new Map<string, Buffer>();
    let latest = tid;
    let n = 0;
    for await (const t of this.ctx.api.iterate(st, idNext(tid), last)) {
      if (++n > INVALIDATIONS_SCAN_MAX_TXNS) return null;
      for (const oid of (await this.ctx.node.store.transactionOids(st, t.tid)) ?? [])
        oids.set(hex(oid), oid);
      latest = t.tid;
    }
    return [latest, [...oids.values()]];
  }

  // ------------------------------------------------------------------------------------------
  // Reads

  /**
   * (data, start, end) of the revision with start < tid <= end, or None. The reply is written
   * before any invalidation of a transaction applied during the read (outbox.ts): the client
   * caches it, as current when end is None.
   */
  async loadBefore(oid: Buffer, tid: Buffer): Promise<ReplyThen> {
    if (u64(tid) > 0n) await this.ctx.caughtUp(p64(u64(tid) - 1n));
    this.ctx.stats.loads++;
    const hold = this.ctx.outbox.hold();
    try {
      const r = await this.ctx.api.loadBefore(this.ctx.st, oid, tid);
      const reply = r.found ? [r.data ?? Buffer.alloc(0), r.start as Buffer, r.end ?? null] : null;
      return new ReplyThen(reply, () => this.ctx.outbox.release(hold));
    } catch (e) {
      this.ctx.outbox.release(hold);
      // Packed-away history reads like "no revision" (ZODB then raises ReadConflictError).
      if (e instanceof StorageError && e.kind === 'HISTORY_PACKED')
        return new ReplyThen(null, () => undefined);
      return this.ctx.fromStorage(e, oid);
    }
  }

  async loadSerial(oid: Buffer, serial: Buffer): Promise<Buffer> {
    await this.ctx.caughtUp(serial);
    this.ctx.stats.loads++;
    try {
      return await this.ctx.api.loadSerial(this.ctx.st, oid, serial);
    } catch (e) {
      return this.ctx.fromStorage(e, oid);
    }
  }

  /** The current serial; POSKeyError (a KeyError) for an unknown object or an undone creation. */
  async getTid(oid: Buffer): Promise<Buffer> {
    try {
      return (await this.ctx.api.load(this.ctx.st, oid)).serial;
    } catch (e) {
      return this.ctx.fromStorage(e, oid);
    }
  }

  async history(oid: Buffer, size: number): Promise<Record<string, unknown>[]> {
    try {
      const entries = await this.ctx.api.history(this.ctx.st, oid, size);
      return entries.map((e) => ({
        time: tidToTime(e.tid) / 1000,
        tid: e.tid,
        serial: e.tid,
        user_name: bytes(e.user),
        description: bytes(e.description),
        size: e.size,
      }));
    } catch (e) {
      return this.ctx.fromStorage(e, oid);
    }
  }

  async undoLog(
    first: number,
    last: number,
    spec: Record<string, unknown> | undefined,
  ): Promise<Record<string, unknown>[]> {
    if (last < 0) last = first - last;
    first = Math.max(0, first);
    last = Math.min(Math.max(last, first), first + UNDO_LOG_PAGE_MAX);
    const entries = await this.ctx.api.undoLog(this.ctx.st, first, last);
    const out = entries.map((e) => ({
      ...decodeExtension(e.extension),
      id: e.tid,
      time: tidToTime(e.tid) / 1000,
      user_name: bytes(e.user),
      description: bytes(e.description),
    }));
    if (!spec) return out;
    const eq = (x: unknown, y: unknown): boolean =>
      x instanceof Uint8Array && y instanceof Uint8Array
        ? Buffer.compare(toBuffer(x), toBuffer(y)) === 0
        : x === y;
    return out.filter((d) =>
      Object.entries(spec).every(([k, v]) => eq((d as Record<string, unknown>)[k], v)),
    );
  }

  serverStatus(st: string): Record<string, unknown> {
    const s = this.ctx.statsFor(st);
    const v = this.ctx.api.view();
    return {
      ...s,
      waiting: 0,
      'timeout-thread-is-alive': true,
      'last-transaction': hex(this.ctx.api.lastTransaction(st)),
      'zeoraft-node': v.nodeId,
      'zeoraft-role': v.role,
      'zeoraft-leader': v.leaderId,
    };
  }

  /**
   * ZEO's sendBlob: the blob of revision `serial` goes to the client as receiveBlobStart,
   * receiveBlobChunk..., receiveBlobStop (one stored chunk per message, each written once the
   * previous ones drained), then the reply. A revision without a blob is POSKeyError.
   */
  async sendBlob(oid: Buffer, serial: Buffer): Promise<null> {
    await this.ctx.caughtUp(serial);
    const st = this.ctx.st;
    let blob: { blobId: Buffer; size: number };
    try {
      blob = await this.ctx.node.store.blobOf(st, oid, serial);
    } catch (e) {
      return this.ctx.fromStorage(e, oid);
    }
    this.ctx.peer.callAsync('receiveBlobStart', [oid, serial]);
    try {
      for await (const chunk of this.ctx.node.store.blobChunks(st, blob.blobId, blob.size)) {
        if (this.ctx.closed) throw new ZeoDisconnect('client left during sendBlob');
        await this.ctx.peer.callAsyncDrained('receiveBlobChunk', [oid, serial, chunk]);
      }
    } catch (e) {
      if (e instanceof ZeoDisconnect) throw e;
      // The client holds a partial download it cannot discard by itself: it reconnects.
      throw new ZeoDisconnect(`sendBlob failed part-way: ${e instanceof Error ? e.message : e}`);
    }
    this.ctx.peer.callAsync('receiveBlobStop', [oid, serial]);
    return null;
  }

  // ------------------------------------------------------------------------------------------
  // Writes

  async newOids(n: number): Promise<Buffer[]> {
    this.ctx.writable();
    const count = Math.min(Math.max(n, 1), NEW_OIDS_MAX, MAX_NEW_OIDS);
    const r = await this.ctx.propose({ newOids: { storage: this.ctx.st, count } });
    if (!r.ok) return this.ctx.fromStorage(r.error);
    return r.oids ?? [];
  }

  async pack(time: number, wait: number): Promise<null> {
    this.ctx.writable();
    // As FileStorage's pack: revisions not needed to read at or after the pack time go, and so
    // do objects unreachable from the root then (references read from the ZODB pickles at
    // store time; an unreadable record reachable then stops the collection).
    const run = async (): Promise<void> => {
      // A time after now packs as of now (nothing newer exists); in bounded steps (pack-gc.ts).
      const packTid = this.ctx.api.packTidAt(time);
      try {
        await this.ctx.api.pack(this.ctx.st, packTid, true, (cmd) => this.ctx.propose(cmd));
      } catch (e) {
        this.ctx.fromStorage(e);
      }
      const s = this.ctx.node.store.storageSummary(this.ctx.st);
      this.ctx.peer.callAsync('info', [{ length: s.objectCount, size: 0 }]);
    };
    if (wait) await run();
    else
      run().catch((e: unknown) =>
        this.ctx.node.log.warn({ error: String(e) }, 'zeo: background pack failed'),
      );
    return null;
  }
}
