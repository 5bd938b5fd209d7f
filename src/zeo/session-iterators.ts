/**
 * A ZEO session's iteration: transaction iterators and the record iterators of their transactions
 * (iterator_start, iterator_next, iterator_record_start, iterator_record_next, iterator_gc), bounded
 * per connection, and record_iternext over the current objects (IStorageCurrentRecordIteration).
 */
import type { TransactionInfo } from '../storage/object-store';
import { StorageError } from '../storage/errors';
import { Z64, hex, idNext } from '../util/ids';
import { ZeoDisconnect, keyError, posKeyError, storageError } from './errors';
import { type SessionContext, bytes, decodeExtension } from './session-context';

/** Current records (deleted objects included) one record_iternext call reads at most. */
const RECORD_ITERNEXT_SCAN_MAX_RECORDS = 100_000;
/** Open transaction/record iterators per connection. */
const ITERATORS_MAX = 100;

interface TxnIterator {
  kind: 'txn';
  gen: AsyncGenerator<TransactionInfo>;
  last?: TransactionInfo;
}
interface RecordIterator {
  kind: 'record';
  records: TransactionInfo['records'];
  tid: Buffer;
  next: number;
}

export class SessionIterators {
  private readonly iterators = new Map<number, TxnIterator | RecordIterator>();
  private nextIteratorId = 0;

  constructor(private readonly ctx: SessionContext) {}

  /**
   * IStorageCurrentRecordIteration: (oid, tid, data, next_oid) of the first object at or after
   * `next`. One seek in the store's index of current objects, so gaps in the OID space cost
   * nothing; the work of one call is bounded by RECORD_ITERNEXT_SCAN_MAX_RECORDS (runs of deleted
   * objects) and stops when the client leaves.
   */
  async recordIternext(next: Buffer | undefined): Promise<[Buffer, Buffer, Buffer, Buffer | null]> {
    const st = this.ctx.st;
    // Each pass is one bounded scan; another pass only when an object is deleted under us.
    for (let pass = 0; pass < 10; pass++) {
      const from = next ?? Z64;
      const r = await this.ctx.node.store.currentObjects(
        st,
        from,
        2,
        RECORD_ITERNEXT_SCAN_MAX_RECORDS,
        () => this.ctx.closed,
      );
      if (this.ctx.closed) throw new ZeoDisconnect('client left during record_iternext');
      if (r.oids.length === 0) {
        if (r.exhausted)
          throw storageError(
            `no object at or after ${hex(from)} among the next ${RECORD_ITERNEXT_SCAN_MAX_RECORDS} records (deleted objects); pack the storage or resume from ${hex(r.resumeAt ?? from)}`,
          );
        throw posKeyError(from);
      }
      const oid = r.oids[0];
      try {
        const cur = await this.ctx.api.load(st, oid);
        return [
          oid,
          cur.serial,
          cur.data,
          r.oids[1] ?? (r.exhausted ? (r.resumeAt ?? null) : null),
        ];
      } catch (e) {
        // Deleted between the scan and the load: look again from the next OID.
        if (!(e instanceof StorageError && e.kind === 'NOT_FOUND')) throw e;
        next = idNext(oid);
      }
    }
    throw storageError('objects kept being deleted during record_iternext; try again');
  }

  iteratorStart(start: Buffer | undefined, stop: Buffer | undefined): number {
    if (this.iterators.size >= ITERATORS_MAX)
      throw storageError(`too many open iterators (at most ${ITERATORS_MAX})`);
    const iid = this.nextIteratorId++;
    this.iterators.set(iid, {
      kind: 'txn',
      gen: this.ctx.api.iterate(this.ctx.st, start ?? Z64, stop),
    });
    return iid;
  }

  async iteratorNext(iid: number): Promise<unknown[] | null> {
    const it = this.iterators.get(iid);
    if (!it || it.kind !== 'txn') throw keyError(`no transaction iterator ${iid}`);
    const r = await it.gen.next();
    if (r.done) {
      this.iterators.delete(iid);
      return null;
    }
    it.last = r.value;
    const t = r.value;
    return [t.tid, t.status, bytes(t.user), bytes(t.description), decodeExtension(t.extension)];
  }

  iteratorRecordStart(txnIid: number, tid: Buffer): number {
    const it = this.iterators.get(txnIid);
    if (!it || it.kind !== 'txn' || !it.last) throw keyError(`no transaction iterator ${txnIid}`);
    if (!it.last.tid.equals(tid))
      throw storageError(`out-of-order request for the records of transaction ${hex(tid)}`);
    if (this.iterators.size >= ITERATORS_MAX)
      throw storageError(`too many open iterators (at most ${ITERATORS_MAX})`);
    const iid = this.nextIteratorId++;
    this.iterators.set(iid, { kind: 'record', records: it.last.records, tid, next: 0 });
    return iid;
  }

  iteratorRecordNext(iid: number): unknown[] | null {
    const it = this.iterators.get(iid);
    if (!it || it.kind !== 'record') throw keyError(`no record iterator ${iid}`);
    const r = it.records[it.next++];
    if (!r) {
      this.iterators.delete(iid);
      return null;
    }
    const dataTxn = r.dataTid && !r.dataTid.equals(Z64) ? r.dataTid : null;
    return [r.oid, it.tid, r.deleted ? null : r.data, dataTxn];
  }

  closeIterator(iid: number): void {
    const it = this.iterators.get(iid);
    this.iterators.delete(iid);
    if (it?.kind === 'txn') void it.gen.return(undefined).catch(() => undefined);
  }

  /** Close every open iterator (the connection is gone). */
  closeAll(): void {
    for (const iid of [...this.iterators.keys()]) this.closeIterator(iid);
  }
}
