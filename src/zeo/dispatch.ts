/**
 * The methods a registered ZEO client may call: each checks its arity, decodes its arguments and
 * calls the part of the session that serves it (storage-calls.ts, txn-staging.ts,
 * session-iterators.ts, txn-finish.ts). session.ts looks methods up here.
 */
import { arity, idArg, intArg, numberArg, optionalIdArg, textArg, txnHandleArg } from './args';
import { typeError } from './errors';
import type { SessionContext } from './session-context';
import type { SessionIterators } from './session-iterators';
import { NEW_OIDS_MAX, type StorageCalls } from './storage-calls';
import type { TxnFinish } from './txn-finish';
import type { TxnStaging } from './txn-staging';

/** The parts of one session that its methods call. */
export interface SessionParts {
  readonly ctx: SessionContext;
  readonly calls: StorageCalls;
  readonly staging: TxnStaging;
  readonly iterators: SessionIterators;
  readonly finish: TxnFinish;
}

/** One-way calls a client makes (errors close the connection, as in ZEO). */
export const ONE_WAY = new Set([
  'tpc_begin',
  'storea',
  'checkCurrentSerialInTransaction',
  'deleteObject',
  'undoa',
  'restorea',
  'storeBlobStart',
  'storeBlobChunk',
  'storeBlobEnd',
  'storeBlobShared',
  'iterator_gc',
  'set_client_label',
]);

export const METHODS: Record<string, (this: SessionParts, args: unknown[]) => unknown> = {
  get_info: function (a) {
    arity(a, 'get_info', 0);
    return this.calls.getInfo();
  },
  lastTransaction: function (a) {
    arity(a, 'lastTransaction', 0);
    return this.calls.lastTransaction();
  },
  getInvalidations: function (a) {
    arity(a, 'getInvalidations', 1);
    return this.calls.getInvalidations(idArg(a[0], 'tid'));
  },
  loadBefore: function (a) {
    arity(a, 'loadBefore', 2);
    return this.calls.loadBefore(idArg(a[0], 'oid'), idArg(a[1], 'tid'));
  },
  loadSerial: function (a) {
    arity(a, 'loadSerial', 2);
    return this.calls.loadSerial(idArg(a[0], 'oid'), idArg(a[1], 'serial'));
  },
  getTid: function (a) {
    arity(a, 'getTid', 1);
    return this.calls.getTid(idArg(a[0], 'oid'));
  },
  history: function (a) {
    arity(a, 'history', 1, 2);
    return this.calls.history(idArg(a[0], 'oid'), intArg(a[1], 'size', 1));
  },
  record_iternext: function (a) {
    arity(a, 'record_iternext', 0, 1);
    return this.iterators.recordIternext(optionalIdArg(a[0], 'next'));
  },
  new_oids: function (a) {
    arity(a, 'new_oids', 0, 1);
    return this.calls.newOids(intArg(a[0], 'n', NEW_OIDS_MAX));
  },
  new_oid: async function (a) {
    arity(a, 'new_oid', 0);
    return (await this.calls.newOids(1))[0];
  },
  tpc_begin: function (a) {
    arity(a, 'tpc_begin', 4, 6);
    return this.staging.tpcBegin(a);
  },
  storea: function (a) {
    arity(a, 'storea', 4);
    this.staging.storea(a);
  },
  deleteObject: function (a) {
    arity(a, 'deleteObject', 3);
    this.staging.deleteObject(a);
  },
  checkCurrentSerialInTransaction: function (a) {
    arity(a, 'checkCurrentSerialInTransaction', 3);
    this.staging.checkCurrentSerialInTransaction(a);
  },
  undoa: function (a) {
    arity(a, 'undoa', 2);
    this.staging.undo(a);
  },
  undo: function (a) {
    arity(a, 'undo', 2);
    this.staging.undo(a);
  },
  restorea: function (a) {
    arity(a, 'restorea', 5);
    this.staging.restorea(a);
  },
  storeBlobStart: function (a) {
    arity(a, 'storeBlobStart', 0);
    this.staging.storeBlobStart();
  },
  storeBlobChunk: function (a) {
    arity(a, 'storeBlobChunk', 1);
    this.staging.storeBlobChunk(a);
  },
  storeBlobEnd: function (a) {
    arity(a, 'storeBlobEnd', 4);
    this.staging.storeBlobEnd(a);
  },
  storeBlobShared: function (a) {
    this.staging.storeBlobShared(a);
  },
  sendBlob: function (a) {
    arity(a, 'sendBlob', 2);
    return this.calls.sendBlob(idArg(a[0], 'oid'), idArg(a[1], 'serial'));
  },
  vote: function (a) {
    arity(a, 'vote', 1);
    return this.finish.vote(txnHandleArg(a[0]));
  },
  tpc_finish: function (a) {
    arity(a, 'tpc_finish', 1);
    return this.finish.tpcFinish(txnHandleArg(a[0]));
  },
  tpc_abort: function (a) {
    arity(a, 'tpc_abort', 1);
    return this.finish.tpcAbort(txnHandleArg(a[0]));
  },
  undoLog: function (a) {
    arity(a, 'undoLog', 0, 2);
    return this.calls.undoLog(intArg(a[0], 'first', 0), intArg(a[1], 'last', -20), undefined);
  },
  undoInfo: function (a) {
    arity(a, 'undoInfo', 0, 3);
    const spec = a[2];
    if (spec !== undefined && spec !== null && (typeof spec !== 'object' || Array.isArray(spec)))
      throw typeError('specification must be a dict or None');
    return this.calls.undoLog(
      intArg(a[0], 'first', 0),
      intArg(a[1], 'last', -20),
      (spec ?? undefined) as Record<string, unknown> | undefined,
    );
  },
  pack: function (a) {
    arity(a, 'pack', 1, 2);
    return this.calls.pack(numberArg(a[0], 'time'), intArg(a[1], 'wait', 1));
  },
  iterator_start: function (a) {
    arity(a, 'iterator_start', 0, 2);
    return this.iterators.iteratorStart(optionalIdArg(a[0], 'start'), optionalIdArg(a[1], 'stop'));
  },
  iterator_next: function (a) {
    arity(a, 'iterator_next', 1);
    return this.iterators.iteratorNext(intArg(a[0], 'iid'));
  },
  iterator_record_start: function (a) {
    arity(a, 'iterator_record_start', 2);
    return this.iterators.iteratorRecordStart(intArg(a[0], 'txn_iid'), idArg(a[1], 'tid'));
  },
  iterator_record_next: function (a) {
    arity(a, 'iterator_record_next', 1);
    return this.iterators.iteratorRecordNext(intArg(a[0], 'iid'));
  },
  iterator_gc: function (a) {
    arity(a, 'iterator_gc', 1);
    if (!Array.isArray(a[0])) throw typeError('iids must be a list');
    for (const iid of a[0]) this.iterators.closeIterator(intArg(iid, 'iid'));
  },
  server_status: function (a) {
    arity(a, 'server_status', 0);
    return this.calls.serverStatus(this.ctx.st);
  },
  set_client_label: function (a) {
    arity(a, 'set_client_label', 1);
    this.ctx.label = textArg(a[0], 'label', 256);
  },
  ping: function () {
    return null;
  },
};
