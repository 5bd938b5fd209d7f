/**
 * Commits: the checks every transaction passes (well-formed, not locked by another vote, based on
 * current serials) and the write of its revisions and records, shared by the single-call commit,
 * the finish of a vote, the session commit and undo; also OID allocation (newOids) and the chunks
 * of blob uploads.
 */
import { assert } from '../util/assert';
import {
  ID_BYTES,
  Z64,
  hex,
  idCompare,
  idEquals,
  idMax,
  idNext,
  isId,
  p64,
  u64,
} from '../util/ids';
import {
  type BlobChunk,
  type Revision,
  type StorageMeta,
  type StoreOp,
  type Txn,
  type TxnRecord,
  revisionCodec,
  storageMetaCodec,
  txnRecordCodec,
} from './codec';
import type { ApplyContext } from './apply-context';
import { blobContext, storeBlobId } from './blob-store';
import { StorageError } from './errors';
import * as K from './keys';
import { packBarrier } from './pack-steps';
import {
  type BatchOp,
  LAST_OID,
  buf,
  currentValue,
  isLastOid,
  parseCurrent,
  revisionData,
  serialOf,
} from './store-records';
import type { ApplyResult, CommitEvent, CommittedRecord } from './store-types';

export const MAX_NEW_OIDS = 10_000;

export function validateTxn(txn: Txn | undefined): asserts txn is Txn {
  if (!txn) throw new StorageError('INVALID', 'command without a transaction');
  if (!txn.storage) throw new StorageError('INVALID', 'transaction without a storage name');
  const seen = new Set<string>();
  for (const op of [...(txn.stores ?? []), ...(txn.checks ?? [])]) {
    if (!isId(op.oid)) throw new StorageError('INVALID', 'an OID must be exactly 8 bytes');
    if (op.serial && op.serial.length !== 0 && op.serial.length !== ID_BYTES) {
      throw new StorageError('INVALID', `serial of ${hex(op.oid)} must be 8 bytes or empty`);
    }
    const h = hex(op.oid);
    if (seen.has(h))
      throw new StorageError('INVALID', `object ${h} appears twice in one transaction`);
    seen.add(h);
  }
  // Storing (or deleting) an OID sets the counter past it; the largest OID has nothing past it.
  if ((txn.stores ?? []).some((op) => isLastOid(op.oid))) {
    throw new StorageError('INVALID', 'the largest OID cannot be stored');
  }
}

/**
 * Conflict-check every store and check of `txn`; objects locked by another transaction fail with
 * LOCKED. Stores in `resolved` (hex OIDs) are resolved on the server, so not serial-checked;
 * those also in `shared` share their lock with other shared stores of the object (Length).
 */
export async function checkTxn(
  ctx: ApplyContext,
  txn: Txn,
  ownTxnId: string | undefined,
  locksOnly = false,
  resolved?: Set<string>,
  shared?: Set<string>,
): Promise<Map<string, { serial: Buffer; deleted: boolean }>> {
  const current = new Map<string, { serial: Buffer; deleted: boolean }>();
  const st = txn.storage;
  const all = [
    ...(txn.stores ?? []).map((s) => ({ op: s, kind: 'CONFLICT' as const })),
    ...(txn.checks ?? []).map((c) => ({ op: c, kind: 'READ_CONFLICT' as const })),
  ];
  // Every current serial in one read (most commits are served from the cache; the misses of a
  // large one go to LevelDB together), then the checks in order: the first failing one is reported.
  const curs = await ctx.w.readCurrentMany(all.map(({ op }) => K.currentKey(st, buf(op.oid))));
  for (const [i, { op, kind }] of all.entries()) {
    const oid = buf(op.oid);
    const holder = ctx.locks.holder(st, oid);
    if (holder !== undefined && holder !== ownTxnId) {
      throw new StorageError('LOCKED', `object ${hex(oid)} is locked by a voted transaction`);
    }
    // A restored record is written as given (ZODB's restore skips the consistency checks).
    const isResolved = resolved?.has(hex(oid)) === true || (op as StoreOp).restore === true;
    const sharers = ctx.locks.sharers(st, oid);
    if (!shared?.has(hex(oid)) && sharers && [...sharers].some((t) => t !== ownTxnId)) {
      throw new StorageError('LOCKED', `object ${hex(oid)} is locked by a voted transaction`);
    }
    const cur = curs[i];
    const c = cur ? parseCurrent(cur) : { serial: Z64, deleted: false };
    current.set(hex(oid), c);
    const expected = serialOf(op.serial);
    if (!locksOnly && !isResolved && !idEquals(expected, c.serial)) {
      const currentData =
        c.deleted || !cur ? undefined : await revisionData(ctx.w.readState, st, oid, c.serial);
      throw new StorageError(
        kind,
        `${kind === 'CONFLICT' ? 'conflict' : 'read conflict'} on object ${hex(oid)}: based on serial ${hex(expected)}, current serial is ${hex(c.serial)}`,
        { oid, expected, actual: c.serial, currentData },
      );
    }
  }
  return current;
}

/**
 * The backpointer a restored record keeps: the source's data_tid when that transaction wrote the
 * same data for the object here, otherwise none (a hint only, as in FileStorage's restore: it may
 * be packed away). It is kept as given, so the copy's iterator reports what the source's does.
 */
async function restoredDataTid(
  ctx: ApplyContext,
  st: string,
  oid: Buffer,
  s: StoreOp,
): Promise<Buffer | undefined> {
  if (!s.dataTid?.length || s.delete) return undefined;
  const raw = await ctx.w.read(K.revisionKey(st, oid, buf(s.dataTid)));
  if (!raw) return undefined;
  const prev = revisionCodec.decode(raw);
  if (prev.deleted || !buf(prev.data).equals(buf(s.data))) return undefined;
  return buf(s.dataTid);
}

/** Write a transaction's revisions and records into `ops`; the TID is max(proposed, last + 1). */
export async function applyCommit(
  ctx: ApplyContext,
  txn: Txn | undefined,
  proposedTid: Uint8Array | undefined,
  ops: BatchOp[],
  after: Array<() => void>,
  known: Map<string, { serial: Buffer; deleted: boolean }> | undefined,
  dataTids?: Map<string, Buffer>,
): Promise<ApplyResult> {
  validateTxn(txn);
  const st = txn.storage;
  const current = known ?? (await checkTxn(ctx, txn, undefined));
  const blobCtx = blobContext((k) => ctx.w.read(k), ops);
  // A finish (known serials) was checked at its vote, which holds its uploads since.
  if (!known) await ctx.blobs.checkStores(st, txn.stores ?? [], undefined, blobCtx);
  await packBarrier(ctx.packCtx, txn, ops, known !== undefined);
  const proposed = proposedTid && proposedTid.length === ID_BYTES ? buf(proposedTid) : Z64;
  const tid = idMax(proposed, idNext(ctx.w.lastTidGlobal));
  const meta = { ...ctx.w.meta(st) };
  let nextOid = serialOf(meta.nextOid);
  if (idEquals(nextOid, Z64)) nextOid = p64(1n);
  let count = meta.objectCount ?? 0;
  const records: CommittedRecord[] = [];
  for (const s of txn.stores ?? []) {
    const oid = buf(s.oid);
    const prev = current.get(hex(oid));
    assert(prev, 'store without a conflict check');
    const existed = !idEquals(prev.serial, Z64) && !prev.deleted;
    const deleted = s.delete === true;
    const rev: Revision = deleted ? { deleted: true } : { data: buf(s.data), refs: s.refs };
    if (s.opaque && !deleted) rev.opaque = true;
    const dataTid = s.restore
      ? await restoredDataTid(ctx, st, oid, s)
      : (dataTids?.get(hex(oid)) ?? (s.dataTid?.length ? buf(s.dataTid) : undefined));
    if (dataTid && !deleted) rev.dataTid = dataTid;
    const blobId = storeBlobId(s);
    if (blobId && !deleted) {
      rev.blobId = blobId;
      rev.blobSize = (await ctx.blobs.commitStore(st, blobId, known !== undefined, blobCtx)).size;
    }
    ops.push({ type: 'put', key: K.revisionKey(st, oid, tid), value: revisionCodec.encode(rev) });
    ops.push({ type: 'put', key: K.currentKey(st, oid), value: currentValue(tid, deleted) });
    if (existed && deleted) count--;
    if (!existed && !deleted) count++;
    if (idCompare(oid, nextOid) >= 0) nextOid = idNext(oid);
    records.push({ oid, data: deleted ? undefined : buf(s.data), deleted });
  }
  const rec: TxnRecord = {
    user: txn.user ?? '',
    description: txn.description ?? '',
    extension: buf(txn.extension),
    oids: records.map((r) => r.oid),
  };
  if (txn.status && txn.status !== ' ') rec.status = txn.status;
  ops.push({ type: 'put', key: K.txnKey(st, tid), value: txnRecordCodec.encode(rec) });
  const txnCount = (meta.txnCount ?? 0) + 1;
  ops.push({ type: 'put', key: K.txnNumberKey(st, txnCount), value: tid });
  const newMeta: StorageMeta = { ...meta, lastTid: tid, nextOid, objectCount: count, txnCount };
  ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(newMeta) });
  assert(idCompare(tid, ctx.w.lastTidGlobal) > 0, 'TIDs must strictly increase');
  ctx.w.lastTidGlobal = tid;
  ctx.w.metas.set(st, newMeta);
  const index = () => ctx.w.appliedIdx;
  const previous = Buffer.from(meta.lastTid ?? Z64);
  after.push(() => {
    ctx.previousTids.remember(st, tid, previous);
    const ev: CommitEvent = { index: index(), storage: st, tid, records };
    for (const fn of ctx.commitListeners) fn(ev);
  });
  return { ok: true, tid, oids: records.map((r) => r.oid) };
}

export function applyNewOids(
  ctx: ApplyContext,
  n: { storage: string; count: number },
  ops: BatchOp[],
  _after: Array<() => void>,
): ApplyResult {
  if (!n.storage) throw new StorageError('INVALID', 'newOids without a storage name');
  if (!Number.isInteger(n.count) || n.count < 1 || n.count > MAX_NEW_OIDS) {
    throw new StorageError('INVALID', `newOids count must be 1..${MAX_NEW_OIDS}`);
  }
  const meta = ctx.w.meta(n.storage);
  let next = u64(serialOf(meta.nextOid));
  if (next === 0n) next = 1n;
  if (next + BigInt(n.count) > LAST_OID) {
    throw new StorageError('INVALID', 'newOids would run past the largest OID');
  }
  const oids: Buffer[] = [];
  for (let i = 0; i < n.count; i++) oids.push(p64(next + BigInt(i)));
  const newMeta: StorageMeta = { ...meta, nextOid: p64(next + BigInt(n.count)) };
  ops.push({
    type: 'put',
    key: K.storageKey(n.storage),
    value: storageMetaCodec.encode(newMeta),
  });
  ctx.w.metas.set(n.storage, newMeta);
  return { ok: true, oids };
}

/** One chunk of a blob upload (blob-store.ts); the result's `removed` is the upload's size. */
export async function applyBlobChunk(
  ctx: ApplyContext,
  index: number,
  c: BlobChunk,
  ops: BatchOp[],
): Promise<ApplyResult> {
  const proposed = c.tid && c.tid.length === ID_BYTES ? buf(c.tid) : Z64;
  const now = idMax(proposed, ctx.w.lastTidGlobal);
  const blobCtx = blobContext((k) => ctx.w.read(k), ops);
  const { size } = await ctx.blobs.applyChunk(c, index, now, blobCtx);
  return { ok: true, removed: size };
}
