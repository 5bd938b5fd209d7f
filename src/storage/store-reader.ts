/**
 * The object store's reads: objects (load, loadBefore, loadSerial, history, current serials),
 * transactions (iterate, undoLog, the history window), blobs, storage summaries and the scans a
 * pack's walk uses. Reads see only landed batches (the published metadata, the current-serial
 * cache's landed values) and go through the read gate, so a snapshot install never gives them a
 * mixed answer.
 */
import { assert } from '../util/assert';
import { ID_BYTES, Z64, hex, idCompare, idEquals, idNext, p64 } from '../util/ids';
import {
  type StorageMeta,
  type Txn,
  blobUploadCodec,
  preparedCodec,
  revisionCodec,
  txnRecordCodec,
} from './codec';
import type { CurrentSerialCache } from './current-cache';
import { StorageError } from './errors';
import * as K from './keys';
import { isBlobId } from './blob-store';
import type { ReadGate } from './read-gate';
import {
  type Db,
  buf,
  emptyMeta,
  parseCurrent,
  revisionBefore,
  revisionData,
  serialOf,
} from './store-records';
import type {
  HistoryEntry,
  LoadBeforeResult,
  LoadResult,
  StorageSummary,
  TransactionInfo,
} from './store-types';

/** Bytes one read of a pack's walk holds at most (beyond its last record: LevelDB's highWaterMarkBytes). */
const PACK_SCAN_BATCH_BYTES = 1 << 20;

/** Reads of one load when the object keeps changing between its current record and revision. */
const LOAD_ATTEMPTS_MAX = 4;

/** What the reader sees of the store's applied state. */
export interface ReaderSource {
  /** The storages' metadata as last published: readers never see a batch before it landed. */
  published(): ReadonlyMap<string, StorageMeta>;
}

export class StoreReader {
  /**
   * The N records historyWindow read last, per storage: transaction 1's and the window's oldest.
   * A landed N record never changes until an install replaces the state (pack keeps transaction
   * records), so they stay good for the install generation they were read in: a Status or a
   * resume point with no commit since the last one reads nothing.
   */
  private readonly nRecords = new Map<string, { gen: number; tids: Map<number, Buffer> }>();

  constructor(
    private readonly db: Db,
    private readonly gate: ReadGate,
    private readonly cache: CurrentSerialCache,
    private readonly source: ReaderSource,
  ) {}

  storageSummary(st: string): StorageSummary {
    const m = this.source.published().get(st) ?? emptyMeta();
    return {
      name: st,
      lastTid: serialOf(m.lastTid),
      objectCount: m.objectCount ?? 0,
      packTid: serialOf(m.packTid),
      nextOid: m.nextOid && m.nextOid.length ? buf(m.nextOid) : p64(1n),
    };
  }

  storageNames(): string[] {
    return [...this.source.published().keys()].sort();
  }

  /** The pack in steps running on `st` (as applied and published), if any. */
  packState(st: string): StorageMeta['packing'] {
    return this.source.published().get(st)?.packing;
  }

  /**
   * Every revision of `st` in key order (OID, then TID), read from one LevelDB snapshot in batches:
   * the walk of a pack (pack-gc.ts) reads the storage's object graph with it.
   */
  async *packScanRevisions(
    st: string,
    batch: number,
  ): AsyncGenerator<Array<{ oid: Buffer; tid: Buffer; value: Buffer }>> {
    const gen = await this.gate.readable();
    const prefix = Buffer.concat([Buffer.from([K.TAG.revision]), K.storagePart(st)]);
    const it = this.db.iterator({
      gte: prefix,
      lt: K.prefixEnd(prefix),
      highWaterMarkBytes: PACK_SCAN_BATCH_BYTES,
    } as any);
    try {
      for (;;) {
        const entries = await it.nextv(batch);
        this.gate.stillValid(gen);
        if (entries.length === 0) return;
        yield entries.map(([k, v]) => ({
          oid: k.subarray(prefix.length, prefix.length + ID_BYTES),
          tid: k.subarray(prefix.length + ID_BYTES),
          value: v,
        }));
      }
    } finally {
      await it.close();
    }
  }

  /** The voted transactions of `st`: the walk of a pack keeps what they write and reference. */
  async packPreparedTxns(st: string): Promise<Txn[]> {
    const out: Txn[] = [];
    const pp = K.preparedPrefix(st);
    for await (const [, v] of this.db.iterator({ gte: pp, lt: K.prefixEnd(pp) }))
      out.push(preparedCodec.decode(v).txn);
    return out;
  }

  /** Whether history at or before `tid` may have been removed by a pack of this storage. */
  private packedAway(st: string, tid: Buffer): boolean {
    const packTid = this.storageSummary(st).packTid;
    return !idEquals(packTid, Z64) && idCompare(tid, packTid) <= 0;
  }

  async load(st: string, oid: Buffer): Promise<LoadResult> {
    const gen = await this.gate.readable();
    for (let attempt = 1; ; attempt++) {
      const cur = await this.cache.read(K.currentKey(st, oid));
      this.gate.stillValid(gen);
      if (!cur) throw new StorageError('NOT_FOUND', `no object ${hex(oid)} in storage ${st}`);
      const c = parseCurrent(cur);
      if (c.deleted)
        throw new StorageError('NOT_FOUND', `object ${hex(oid)} was deleted by ${hex(c.serial)}`);
      // The landed state only: a batch being applied is not there for readers (a pack's sweep
      // in it may be removing this very revision).
      const data = await revisionData((k) => this.db.get(k), st, oid, c.serial);
      this.gate.stillValid(gen);
      if (data !== undefined) return { data, serial: Buffer.from(c.serial) };
      // A batch that landed between the two reads may have removed the object (a pack's sweep of
      // what is unreachable drops its revisions and its current record): the current record,
      // read again, tells. Only one that still names the missing revision is corruption.
      const again = await this.db.get(K.currentKey(st, oid));
      this.gate.stillValid(gen);
      if (again && idEquals(parseCurrent(again).serial, c.serial))
        assert(
          false,
          this.gate.corrupt(
            `current revision ${hex(c.serial)} of ${hex(oid)} in storage ${st} is missing`,
          ),
        );
      if (attempt >= LOAD_ATTEMPTS_MAX)
        throw new StorageError(
          'UNAVAILABLE',
          `object ${hex(oid)} in storage ${st} changed under ${attempt} reads in a row; retry`,
        );
    }
  }

  /**
   * Existing objects of a storage in OID order from `from` on (inclusive): at most `n`, reading at
   * most `scanMaxRecords` current records (a deleted object keeps one until a pack). The read seeks
   * to `from`, so gaps in the OID space cost nothing. `exhausted` is true when the scan stopped at
   * its bound before finding `n` (more objects may follow `resumeAt`); it stops early, with what it
   * has, once `stop()` returns true.
   */
  async currentObjects(
    st: string,
    from: Buffer,
    n: number,
    scanMaxRecords: number,
    stop: () => boolean = () => false,
  ): Promise<{ oids: Buffer[]; exhausted: boolean; resumeAt?: Buffer }> {
    const cp = K.currentPrefix(st);
    const oids: Buffer[] = [];
    let scanned = 0;
    let last: Buffer | undefined;
    for await (const [key, value] of this.db.iterator({
      gte: K.currentKey(st, from),
      lt: K.prefixEnd(cp),
      limit: scanMaxRecords,
    })) {
      scanned++;
      last = Buffer.from(key.subarray(cp.length));
      if (!parseCurrent(value).deleted) oids.push(last);
      if (oids.length >= n || stop()) return { oids, exhausted: false };
    }
    const exhausted = scanned >= scanMaxRecords;
    return { oids, exhausted, resumeAt: exhausted && last ? idNext(last) : undefined };
  }

  /** The serial a store of `oid` must be based on: its current serial, z64 when it has none. */
  async currentSerial(st: string, oid: Buffer): Promise<Buffer> {
    const gen = await this.gate.readable();
    const cur = await this.cache.read(K.currentKey(st, oid));
    this.gate.stillValid(gen);
    return cur ? Buffer.from(parseCurrent(cur).serial) : Z64;
  }

  /** The revision with start < before <= end; `found: false` when the object has none before `before`. */
  loadBefore(st: string, oid: Buffer, before: Buffer): Promise<LoadBeforeResult> {
    return this.gate.guarded(() => this.loadBeforeUnguarded(st, oid, before));
  }

  private async loadBeforeUnguarded(
    st: string,
    oid: Buffer,
    before: Buffer,
  ): Promise<LoadBeforeResult> {
    const cur = await this.db.get(K.currentKey(st, oid));
    if (!cur) throw new StorageError('NOT_FOUND', `no object ${hex(oid)} in storage ${st}`);
    const prev = await revisionBefore(this.db, st, oid, before);
    if (!prev) {
      if (this.packedAway(st, before)) {
        throw new StorageError(
          'HISTORY_PACKED',
          `history of ${hex(oid)} before ${hex(before)} was packed away`,
        );
      }
      return { found: false };
    }
    const rev = revisionCodec.decode(prev.value);
    if (rev.deleted)
      throw new StorageError('NOT_FOUND', `object ${hex(oid)} did not exist before ${hex(before)}`);
    let end: Buffer | undefined;
    const rp = K.revisionPrefix(st, oid);
    for await (const [key] of this.db.iterator({
      gte: K.revisionKey(st, oid, before),
      lt: K.prefixEnd(rp),
      limit: 1,
    })) {
      end = Buffer.from(K.revisionKeyTid(key));
    }
    return { found: true, data: buf(rev.data), start: prev.tid, end };
  }

  loadSerial(st: string, oid: Buffer, serial: Buffer): Promise<Buffer> {
    return this.gate.guarded(() => this.loadSerialUnguarded(st, oid, serial));
  }

  private async loadSerialUnguarded(st: string, oid: Buffer, serial: Buffer): Promise<Buffer> {
    const r = await this.db.get(K.revisionKey(st, oid, serial));
    if (!r) {
      if (this.packedAway(st, serial) && (await this.db.get(K.currentKey(st, oid)))) {
        throw new StorageError(
          'HISTORY_PACKED',
          `revision ${hex(serial)} of ${hex(oid)} was packed away`,
        );
      }
      throw new StorageError('NOT_FOUND', `no revision ${hex(serial)} of object ${hex(oid)}`);
    }
    const rev = revisionCodec.decode(r);
    if (rev.deleted)
      throw new StorageError('NOT_FOUND', `revision ${hex(serial)} of ${hex(oid)} is a deletion`);
    return buf(rev.data);
  }

  history(st: string, oid: Buffer, size: number): Promise<HistoryEntry[]> {
    return this.gate.guarded(() => this.historyUnguarded(st, oid, size));
  }

  private async historyUnguarded(st: string, oid: Buffer, size: number): Promise<HistoryEntry[]> {
    const rp = K.revisionPrefix(st, oid);
    const out: HistoryEntry[] = [];
    for await (const [key, value] of this.db.iterator({
      gte: rp,
      lt: K.prefixEnd(rp),
      reverse: true,
      limit: size,
    })) {
      const tid = Buffer.from(K.revisionKeyTid(key));
      const t = await this.db.get(K.txnKey(st, tid));
      const rec = t ? txnRecordCodec.decode(t) : {};
      const rev = revisionCodec.decode(value);
      out.push({
        tid,
        user: rec.user ?? '',
        description: rec.description ?? '',
        extension: buf(rec.extension),
        size: rev.data?.length ?? 0,
      });
    }
    if (out.length === 0)
      throw new StorageError('NOT_FOUND', `no object ${hex(oid)} in storage ${st}`);
    return out;
  }

  /**
   * The blob of revision `serial` of an object: its id and size. NOT_FOUND when the revision does
   * not exist or has no blob.
   */
  blobOf(st: string, oid: Buffer, serial: Buffer): Promise<{ blobId: Buffer; size: number }> {
    return this.gate.guarded(async () => {
      const r = await this.db.get(K.revisionKey(st, oid, serial));
      const rev = r ? revisionCodec.decode(r) : undefined;
      if (!rev || !isBlobId(rev.blobId))
        throw new StorageError(
          'NOT_FOUND',
          `no blob for revision ${hex(serial)} of object ${hex(oid)} in storage ${st}`,
        );
      return { blobId: buf(rev.blobId), size: Number(rev.blobSize ?? 0) };
    });
  }

  /** The bytes an open upload holds so far; undefined when it is committed, expired or unknown. */
  blobUploadSize(st: string, blobId: Buffer): Promise<number | undefined> {
    return this.gate.guarded(async () => {
      const raw = await this.db.get(K.blobUploadKey(st, blobId));
      return raw ? Number(blobUploadCodec.decode(raw).size) : undefined;
    });
  }

  /**
   * The chunks of a committed blob, in order, from one consistent view (a LevelDB iterator): one
   * chunk (at most BLOB_CHUNK_BYTES_MAX) in memory at a time. Fails NOT_FOUND when the blob is gone
   * (a pack removed it), UNAVAILABLE when a snapshot install replaced the state meanwhile.
   */
  async *blobChunks(st: string, blobId: Buffer, expectedSize: number): AsyncGenerator<Buffer> {
    const gen = await this.gate.readable();
    const prefix = K.blobChunkPrefix(st, blobId);
    let seen = 0;
    let n = 0;
    const it = this.db.iterator({
      gte: prefix,
      lt: K.prefixEnd(prefix),
      highWaterMarkBytes: PACK_SCAN_BATCH_BYTES,
    } as any);
    try {
      for await (const [key, value] of it) {
        this.gate.stillValid(gen);
        assert(
          key.readUInt32BE(key.length - 4) === n,
          `blob ${hex(blobId)}: chunk ${n} is missing`,
        );
        n++;
        seen += value.length;
        if (value.length) yield value;
      }
    } finally {
      await it.close();
    }
    this.gate.stillValid(gen);
    if (n === 0)
      throw new StorageError('NOT_FOUND', `blob ${hex(blobId)} of storage ${st} is gone (packed)`);
    assert(
      seen === expectedSize,
      `blob ${hex(blobId)} holds ${seen} bytes, its revision says ${expectedSize}`,
    );
  }

  /** Committed transactions with start <= tid <= stop, in TID order. */
  async *iterate(st: string, start: Buffer = Z64, stop?: Buffer): AsyncGenerator<TransactionInfo> {
    const gen = await this.gate.readable();
    const tp = K.txnPrefix(st);
    const range = {
      gte: K.txnKey(st, start),
      ...(stop ? { lte: K.txnKey(st, stop) } : { lt: K.prefixEnd(tp) }),
    };
    for await (const [key, value] of this.db.iterator(range)) {
      const tid = Buffer.from(key.subarray(key.length - ID_BYTES));
      const rec = txnRecordCodec.decode(value);
      const records: TransactionInfo['records'] = [];
      for (const o of rec.oids ?? []) {
        const oid = buf(o);
        const r = await this.db.get(K.revisionKey(st, oid, tid));
        if (!r) continue; // removed by pack
        const rev = revisionCodec.decode(r);
        records.push({
          oid,
          data: buf(rev.data),
          deleted: rev.deleted === true,
          dataTid: serialOf(rev.dataTid),
        });
      }
      this.gate.stillValid(gen); // a record missing because an install cleared it is not a pack
      yield {
        tid,
        user: rec.user ?? '',
        description: rec.description ?? '',
        extension: buf(rec.extension),
        status: rec.status || ' ',
        records,
      };
    }
  }

  /** The OIDs written by one transaction, or undefined when there is no such transaction. */
  transactionOids(st: string, tid: Buffer): Promise<Buffer[] | undefined> {
    return this.gate.guarded(async () => {
      const t = await this.db.get(K.txnKey(st, tid));
      return t ? (txnRecordCodec.decode(t).oids ?? []).map(buf) : undefined;
    });
  }

  /**
   * The transactions of a storage on record (`count`), the oldest (`oldestTid`) and the oldest of
   * the newest `n` (`windowOldestTid`); z64 TIDs when there are none. At most two point reads of N
   * records, whatever the history's length, and none when they were read before (nRecords).
   */
  historyWindow(
    st: string,
    n: number,
  ): Promise<{ count: number; oldestTid: Buffer; windowOldestTid: Buffer }> {
    assert(Number.isInteger(n) && n >= 1, `history window of ${n} transactions`);
    return this.gate.guarded(async () => {
      // The published count is read first: its N records have landed, and stay until an install
      // replaces the state (guarded() fails a read that overlapped one).
      const count = this.source.published().get(st)?.txnCount ?? 0;
      const gen = this.gate.generation;
      if (count === 0) return { count, oldestTid: Z64, windowOldestTid: Z64 };
      const cached = this.nRecords.get(st);
      const known = cached?.gen === gen ? cached.tids : undefined;
      const at = async (i: number): Promise<Buffer> => {
        const hit = known?.get(i);
        if (hit) return hit;
        const tid = await this.db.get(K.txnNumberKey(st, i));
        if (!tid || tid.length !== ID_BYTES) {
          this.gate.stillValid(gen); // not missing because an install cleared the state under the read
          assert(
            false,
            this.gate.corrupt(`storage ${st}: transaction ${i} of ${count} has no N record`),
          );
        }
        return Buffer.from(tid);
      };
      const windowIndex = count <= n ? 1 : count - n + 1;
      // Both reads at once: one trip through LevelDB's thread pool instead of two in a row.
      const [oldestTid, windowOldestTid] = await Promise.all([
        at(1),
        windowIndex === 1 ? undefined : at(windowIndex),
      ]);
      const windowTid = windowOldestTid ?? oldestTid;
      this.gate.stillValid(gen); // what an install overlapped is not kept
      this.nRecords.set(st, {
        gen,
        tids: new Map([
          [1, oldestTid],
          [windowIndex, windowTid],
        ]),
      });
      return { count, oldestTid: Buffer.from(oldestTid), windowOldestTid: Buffer.from(windowTid) };
    });
  }

  /** The TID of the storage's transaction just before `tid` (z64 when none): one seek. */
  previousTid(st: string, tid: Buffer): Promise<Buffer> {
    return this.gate.guarded(async () => {
      const tp = K.txnPrefix(st);
      for await (const [key] of this.db.iterator({
        gte: tp,
        lt: K.txnKey(st, tid),
        reverse: true,
        limit: 1,
      }))
        return Buffer.from(key.subarray(key.length - ID_BYTES));
      return Z64;
    });
  }

  /** The oldest committed TID of a storage still on record (z64 when none). */
  async oldestTid(st: string): Promise<Buffer> {
    await this.gate.readable();
    const tp = K.txnPrefix(st);
    for await (const [key] of this.db.iterator({ gte: tp, lt: K.prefixEnd(tp), limit: 1 })) {
      return Buffer.from(key.subarray(key.length - ID_BYTES));
    }
    return Z64;
  }

  /**
   * ZODB's undoLog(first, last): newest first, skipping `first`, up to `last - first` entries.
   * Transactions at or before the pack time are not listed: they cannot be undone.
   */
  async undoLog(st: string, first: number, last: number): Promise<HistoryEntry[]> {
    await this.gate.readable(); // one LevelDB iterator: a consistent view
    const tp = K.txnPrefix(st);
    const packTid = this.storageSummary(st).packTid;
    const out: HistoryEntry[] = [];
    let i = 0;
    for await (const [key, value] of this.db.iterator({
      ...(idEquals(packTid, Z64) ? { gte: tp } : { gt: K.txnKey(st, packTid) }),
      lt: K.prefixEnd(tp),
      reverse: true,
      limit: last,
    })) {
      if (i++ < first) continue;
      const rec = txnRecordCodec.decode(value);
      out.push({
        tid: Buffer.from(key.subarray(key.length - ID_BYTES)),
        user: rec.user ?? '',
        description: rec.description ?? '',
        extension: buf(rec.extension),
        size: 0,
      });
    }
    return out;
  }
}
