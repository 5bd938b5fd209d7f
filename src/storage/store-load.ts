/**
 * Loading the object store's in-memory state from its records: on open, and after a snapshot
 * install replaced them. Also numbers the transactions of a storage written before they were.
 */
import { ID_BYTES, Z64, idEquals } from '../util/ids';
import { type StorageMeta, memberCodec, preparedCodec, storageMetaCodec } from './codec';
import type { ApplyContext } from './apply-context';
import * as K from './keys';
import { type BatchOp, serialOf } from './store-records';

/** N records written per batch when numbering the transactions of a store written without them. */
const TXN_NUMBER_BATCH_KEYS = 10_000;

/** Load the in-memory state from the database; `publish` makes it visible to readers. */
export async function loadState(ctx: ApplyContext, publish = true): Promise<void> {
  ctx.w.metas.clear();
  ctx.locks.clear();
  ctx.members.clear();
  ctx.blobs.clear();
  await ctx.sessions.load(ctx.db);
  const uploads: Array<{ key: Buffer; value: Buffer }> = [];
  for await (const [key, value] of ctx.db.iterator({
    gte: Buffer.from([K.TAG.blobUpload]),
    lt: Buffer.from([K.TAG.blobUpload + 1]),
  }))
    uploads.push({ key, value });
  ctx.blobs.load(uploads);
  for await (const [key, value] of ctx.db.iterator({
    gte: Buffer.from([K.TAG.member]),
    lt: Buffer.from([K.TAG.member + 1]),
  })) {
    ctx.members.set(key.subarray(1).toString('utf8'), memberCodec.decode(value));
  }
  const g = await ctx.db.get(K.globalKey);
  if (g) {
    ctx.w.appliedIdx = Number(g.readBigUInt64BE(0));
    ctx.w.lastTidGlobal = Buffer.from(g.subarray(8, 16));
  } else {
    ctx.w.appliedIdx = 0;
    ctx.w.lastTidGlobal = Z64;
  }
  for await (const [key, value] of ctx.db.iterator({
    gte: Buffer.from([K.TAG.storage]),
    lt: Buffer.from([K.TAG.storage + 1]),
  })) {
    ctx.w.metas.set(K.keyStorage(key), storageMetaCodec.decode(value));
  }
  for (const [st, meta] of ctx.w.metas)
    if (!meta.txnCount && !idEquals(serialOf(meta.lastTid), Z64)) await numberTxns(ctx, st, meta);
  for await (const [key, value] of ctx.db.iterator({
    gte: Buffer.from([K.TAG.prepared]),
    lt: Buffer.from([K.TAG.prepared + 1]),
  })) {
    const st = K.keyStorage(key);
    const txnId = key.subarray(2 + key[1]).toString('utf8');
    ctx.locks.hold(st, txnId, preparedCodec.decode(value));
  }
  if (publish) ctx.w.publish();
}

/**
 * A storage written before transactions were numbered (its meta has no count, its
 * transactions no N records): number them, oldest first. Idempotent: the count is written last,
 * so an interrupted run is repeated on the next open. Every replica derives the same records
 * from the same T records.
 */
async function numberTxns(ctx: ApplyContext, st: string, meta: StorageMeta): Promise<void> {
  const tp = K.txnPrefix(st);
  let n = 0;
  let ops: BatchOp[] = [];
  for await (const [key] of ctx.db.iterator({
    gte: tp,
    lt: K.prefixEnd(tp),
    values: false,
  } as any)) {
    n++;
    const tid = Buffer.from((key as Buffer).subarray((key as Buffer).length - ID_BYTES));
    ops.push({ type: 'put', key: K.txnNumberKey(st, n), value: tid });
    if (ops.length >= TXN_NUMBER_BATCH_KEYS) {
      await ctx.db.batch(ops);
      ops = [];
    }
  }
  const numbered: StorageMeta = { ...meta, txnCount: n };
  ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(numbered) });
  await ctx.db.batch(ops, { sync: true });
  ctx.w.metas.set(st, numbered);
}
