/**
 * MVCC snapshot views and client-side transactions.
 *
 * A SnapshotView is pinned at a TID P (the client's lastTransaction when it was made) and reads
 * with loadBefore(oid, P + 1): the revision with start <= P < end, i.e. the state right after P.
 * It never sees data newer than its start, whether the data comes from a cache or a server.
 *
 * A Transaction collects stores, read-conflict checks and deletes, and reads through its own
 * snapshot view, like a ZODB Connection inside one transaction.
 */
import { randomUUID } from 'node:crypto';
import { NotFoundError, TransactionError } from './errors';
import { Z64, hex, idNext, isId } from '../util/ids';

export interface LoadResult {
  data: Buffer;
  /** The TID that wrote this revision. */
  serial: Buffer;
}

export interface LoadBeforeResult {
  data: Buffer;
  start: Buffer;
  /** Absent when the revision is current. */
  end?: Buffer;
}

/** What a view needs from its client. */
export interface ViewSource {
  loadBefore(oid: Buffer, before: Buffer): Promise<LoadBeforeResult | undefined>;
}

export class SnapshotView {
  constructor(
    private readonly source: ViewSource,
    /** Reads see exactly the transactions with TID <= this one. */
    readonly tid: Buffer,
  ) {}

  /** The object's revision as of this view; NotFoundError when it did not exist then. */
  async load(oid: Buffer): Promise<LoadResult> {
    const r = await this.source.loadBefore(oid, idNext(this.tid));
    if (!r) throw new NotFoundError(`object ${hex(oid)} does not exist as of TID ${hex(this.tid)}`);
    return { data: r.data, serial: r.start };
  }

  /** Like load, but undefined instead of NotFoundError. */
  async tryLoad(oid: Buffer): Promise<LoadResult | undefined> {
    try {
      return await this.load(oid);
    } catch (e) {
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }
}

export interface TransactionMeta {
  user?: string;
  description?: string;
  /** Opaque bytes (ZODB pickles a dict here). */
  extension?: Buffer;
}

export type TransactionState =
  'open' | 'voting' | 'voted' | 'finishing' | 'finished' | 'aborted' | 'failed';

export interface StoreSpec {
  oid: Buffer;
  /** The serial the new data is based on (z64 for a new object). */
  serial: Buffer;
  data: Buffer;
  refs?: Buffer[];
  /** The revision's blob: an upload's id (ClientStorage.uploadBlob / storeBlob). */
  blobId?: Buffer;
}

export class Transaction {
  /** The id sent with Vote, Finish and Abort: unique per transaction, so retries are safe. */
  readonly id = randomUUID();
  readonly stores: StoreSpec[] = [];
  readonly checks: { oid: Buffer; serial: Buffer }[] = [];
  readonly deletes: { oid: Buffer; serial: Buffer }[] = [];
  state: TransactionState = 'open';
  /** The TID once finished. */
  tid: Buffer | undefined;

  constructor(
    readonly view: SnapshotView,
    readonly meta: TransactionMeta,
    private readonly allocateOid: () => Promise<Buffer>,
  ) {}

  /** Read through the transaction's snapshot view. */
  load(oid: Buffer): Promise<LoadResult> {
    return this.view.load(oid);
  }

  tryLoad(oid: Buffer): Promise<LoadResult | undefined> {
    return this.view.tryLoad(oid);
  }

  newOid(): Promise<Buffer> {
    return this.allocateOid();
  }

  /** Write `data` as the new revision of `oid`, based on revision `serial` (z64 for a new object). */
  store(oid: Buffer, serial: Buffer | undefined, data: Buffer, refs?: Buffer[]): this {
    this.mutable();
    checkId(oid, 'oid');
    const base = serial && serial.length > 0 ? serial : Z64;
    checkId(base, 'serial');
    this.stores.push({ oid, serial: base, data, refs });
    return this;
  }

  /**
   * Like store(), with a blob: `blobId` names a completed upload (ClientStorage.uploadBlob), which
   * becomes this revision's blob when the transaction commits.
   */
  storeWithBlob(
    oid: Buffer,
    serial: Buffer | undefined,
    data: Buffer,
    blobId: Buffer,
    refs?: Buffer[],
  ): this {
    if (!Buffer.isBuffer(blobId) || blobId.length !== 16)
      throw new TypeError('blobId must be 16 bytes (an upload id)');
    this.store(oid, serial, data, refs);
    this.stores[this.stores.length - 1].blobId = blobId;
    return this;
  }

  /** Fail the transaction unless `oid` is still at `serial` when it commits (read-conflict guard). */
  checkCurrentSerial(oid: Buffer, serial: Buffer): this {
    this.mutable();
    checkId(oid, 'oid');
    checkId(serial, 'serial');
    this.checks.push({ oid, serial });
    return this;
  }

  /** Delete `oid`, whose current revision must be `serial`. */
  deleteObject(oid: Buffer, serial: Buffer): this {
    this.mutable();
    checkId(oid, 'oid');
    checkId(serial, 'serial');
    this.deletes.push({ oid, serial });
    return this;
  }

  get isEmpty(): boolean {
    return this.stores.length + this.checks.length + this.deletes.length === 0;
  }

  private mutable(): void {
    if (this.state !== 'open')
      throw new TransactionError(
        `transaction ${this.id} is ${this.state}; it can no longer change`,
      );
  }
}

function checkId(b: unknown, what: string): void {
  if (!isId(b)) throw new TypeError(`${what} must be 8 bytes`);
}
