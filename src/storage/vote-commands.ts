/**
 * Two-phase commit: vote (prepare), finish, abort, and the renewal of a vote's deadline. A vote
 * takes its objects' locks (lock-table.ts) so that its finish cannot fail; a vote's stores that
 * the server resolves itself (zodb-resolve.ts) are chosen at the vote and rewritten at the finish;
 * a vote at a given TID (a restore) lets nothing else commit before its finish.
 */
import { assert } from '../util/assert';
import { ID_BYTES, Z64, hex, idCompare, idEquals, tidToIso } from '../util/ids';
import {
  type Command,
  type PreparedRecord,
  type ResolvedStore,
  type StoreOp,
  type Txn,
  preparedCodec,
} from './codec';
import type { ApplyContext } from './apply-context';
import { blobContext } from './blob-store';
import { applyCommit, checkTxn, validateTxn } from './commit-commands';
import { StorageError } from './errors';
import * as K from './keys';
import { sharedOf } from './lock-table';
import { packBarrier } from './pack-steps';
import {
  type BatchOp,
  buf,
  isLastOid,
  parseCurrent,
  revisionData,
  serialOf,
} from './store-records';
import type { ApplyResult } from './store-types';
import {
  PickleStateError,
  applyLengthDelta,
  isLengthRecord,
  lengthDelta,
  readLengthRecord,
  resolveIntSet,
} from './zodb-resolve';

/**
 * How far past the deadline of its first vote a vote's locks may be renewed: a vote holds its
 * objects at most from the vote to that deadline plus this, however often it is renewed (the ZEO
 * door renews only up to the transaction timeout, which the configuration keeps below this).
 */
export const VOTE_RENEW_MAX_MS = 10 * 60_000;

/** The deadline of a vote's first vote (its current one in records written before it was kept). */
function votedDeadline(rec: PreparedRecord): number {
  return Number(rec.votedDeadlineMs || rec.deadlineMs || 0);
}

/** Whether two transactions have the same content (their canonical encodings are equal). */
function sameTxn(a: Txn, b: Txn): boolean {
  return preparedCodec.encode({ txn: a }).equals(preparedCodec.encode({ txn: b }));
}

/** A TID as a time for messages; any 8 bytes (a TID may name no valid date). */
function tidTime(tid: Uint8Array): string {
  try {
    return tidToIso(tid);
  } catch {
    return 'not a time';
  }
}

/**
 * While a transaction is voted at a given TID, its finish must be the next commit (TIDs strictly
 * increase): other commits, undos and votes wait (LOCKED, transient), as behind a ZEO server's
 * commit lock.
 */
export function checkVotedAtTid(ctx: ApplyContext, cmd: Command): void {
  const held = ctx.locks.votedAtTid;
  if (held === undefined) return;
  const c = cmd as Record<string, any>;
  const other =
    !!c.commit ||
    !!c.undo ||
    (!!c.prepare && `${c.prepare.txn?.storage}\0${c.prepare.txnId}` !== held);
  if (other)
    throw new StorageError(
      'LOCKED',
      `a transaction at a given TID (a restore) is voted in storage ${JSON.stringify(held.split('\0')[0])}: nothing else commits before its finish`,
    );
}

export async function applyPrepare(
  ctx: ApplyContext,
  p: {
    txnId: string;
    txn: Txn;
    deadlineMs?: number;
    reserve?: boolean;
    retryOnly?: boolean;
    tid?: Uint8Array;
    owner?: string;
  },
  ops: BatchOp[],
  _after: Array<() => void>,
): Promise<ApplyResult> {
  validateTxn(p.txn);
  if (!p.txnId) throw new StorageError('INVALID', 'vote without a transaction id');
  const st = p.txn.storage;
  if (await ctx.w.read(K.finishedKey(st, p.txnId))) {
    throw new StorageError('INVALID', `transaction ${p.txnId} was already finished`);
  }
  // A vote holds its locks at most one transaction timeout: voting an expired one again would
  // renew its locks for ever.
  if (await ctx.w.read(K.expiredKey(st, p.txnId))) {
    throw new StorageError(
      'INVALID',
      `transaction ${p.txnId} was aborted when its vote expired (ZEORAFT_TXN_TIMEOUT_MS); its locks are not renewed: begin a new transaction`,
    );
  }
  // A transaction voted again replaces its earlier vote (a retried vote, or the vote after the
  // client resolved conflicts on objects it had reserved): its own locks do not stand in its way.
  const again = ctx.locks.vote(st, p.txnId) !== undefined;
  const earlier = again
    ? preparedCodec.decode((await ctx.w.read(K.preparedKey(st, p.txnId)))!)
    : undefined;
  if (earlier && p.retryOnly) {
    // Only a retry may come under a voted id: another transaction reusing it must not replace
    // the vote (its first client was told it holds) nor be taken for it.
    if (earlier.reserve || !sameTxn(earlier.txn, p.txn))
      throw new StorageError(
        'DUPLICATE_ID',
        `transaction id ${p.txnId} is already voted with a different content; a new transaction needs a new id`,
      );
  }
  const atTid = p.tid?.length ? buf(p.tid) : undefined;
  if (atTid) checkVoteAtTid(ctx, st, p.txnId, atTid, again, p.reserve === true);
  const blobCtx = blobContext((k) => ctx.w.read(k), ops);
  if (!p.reserve)
    await ctx.blobs.checkStores(
      st,
      p.txn.stores ?? [],
      again ? `${st}\0${p.txnId}` : undefined,
      blobCtx,
    );
  const resolved = p.reserve || atTid ? [] : await resolvableStores(ctx, p.txn);
  await checkTxn(
    ctx,
    p.txn,
    again ? p.txnId : undefined,
    p.reserve === true,
    new Set(resolved.map((r) => hex(r.oid))),
    sharedOf({ txn: p.txn, resolved }),
  );
  if (!p.reserve) await packBarrier(ctx.packCtx, p.txn, ops, false);
  // Voting again keeps the first vote's deadline, so the locks are never renewed past it.
  const deadlineMs = earlier?.deadlineMs ? Number(earlier.deadlineMs) : (p.deadlineMs ?? 0);
  const votedDeadlineMs = earlier ? votedDeadline(earlier) : deadlineMs;
  const rec: PreparedRecord = { txn: p.txn, deadlineMs, votedDeadlineMs };
  if (p.reserve) rec.reserve = true;
  if (resolved.length) rec.resolved = resolved;
  // Committed blobs the vote names (undo) are referenced by it until finish or abort.
  if (!p.reserve) await ctx.blobs.holdCommitted(st, p.txn.stores ?? [], 1, blobCtx);
  if (earlier && !earlier.reserve)
    await ctx.blobs.holdCommitted(st, earlier.txn.stores ?? [], -1, blobCtx);
  if (atTid) rec.tid = atTid;
  if (p.owner) rec.owner = p.owner;
  ops.push({ type: 'put', key: K.preparedKey(st, p.txnId), value: preparedCodec.encode(rec) });
  // Locks are taken now (not after the write) so that the next command applied sees them.
  if (again) ctx.locks.release(st, p.txnId);
  ctx.locks.hold(st, p.txnId, rec);
  return { ok: true };
}

/** A vote at a given TID: above every TID, alone, and not a reservation. */
function checkVoteAtTid(
  ctx: ApplyContext,
  st: string,
  txnId: string,
  tid: Buffer,
  again: boolean,
  reserve: boolean,
): void {
  if (tid.length !== ID_BYTES) throw new StorageError('INVALID', 'a TID must be 8 bytes');
  if (reserve) throw new StorageError('INVALID', 'a reservation cannot name a TID');
  if (isLastOid(tid))
    throw new StorageError('INVALID', `TID ${hex(tid)} is the largest: nothing could follow it`);
  if (idCompare(tid, ctx.w.lastTidGlobal) <= 0) {
    const stLast = serialOf(ctx.w.meta(st).lastTid);
    throw new StorageError(
      'INVALID',
      `TID ${hex(tid)} (${tidTime(tid)}) is not above the last TID ${hex(ctx.w.lastTidGlobal)} (${tidTime(ctx.w.lastTidGlobal)}; storage ${JSON.stringify(st)}'s last is ${hex(stLast)}): TIDs strictly increase across every storage of the cluster, so a restore goes into a storage before anything newer is committed in the cluster`,
    );
  }
  const others = ctx.locks.voteCount - (again ? 1 : 0);
  if (others > 0)
    throw new StorageError(
      'LOCKED',
      `${others} other transaction(s) voted: a transaction at a given TID votes when nothing else is voted`,
    );
}

export async function applyFinish(
  ctx: ApplyContext,
  f: { storage: string; txnId: string; tid: Uint8Array },
  ops: BatchOp[],
  after: Array<() => void>,
): Promise<ApplyResult> {
  const st = f.storage;
  const done = await ctx.w.read(K.finishedKey(st, f.txnId));
  if (done) return { ok: true, tid: Buffer.from(done) };
  const raw = await ctx.w.read(K.preparedKey(st, f.txnId));
  if (!raw)
    throw new StorageError(
      'UNKNOWN_TRANSACTION',
      `transaction ${f.txnId} was not voted (under this key) or was aborted`,
    );
  const rec = preparedCodec.decode(raw);
  if (rec.reserve)
    throw new StorageError(
      'UNKNOWN_TRANSACTION',
      `transaction ${f.txnId} holds a reservation and was not voted`,
    );
  const txn = rec.resolved?.length ? await resolveAtFinish(ctx, st, f.txnId, rec) : rec.txn;
  // Locked since the vote, so the conflict check cannot fail: a failure here is a bug.
  const shared = sharedOf(rec);
  const current = await checkTxn(ctx, txn, f.txnId, false, shared, shared).catch((e: unknown) => {
    throw new Error(
      `voted transaction ${f.txnId} no longer passes its conflict check: ${String(e)}`,
    );
  });
  const atTid = rec.tid?.length ? buf(rec.tid) : undefined;
  const result = await applyCommit(ctx, txn, atTid ?? f.tid, ops, after, current);
  assert(result.ok && result.tid, 'finish of a voted transaction must commit');
  assert(!atTid || idEquals(result.tid, atTid), `${f.txnId} committed beside its given TID`);
  ops.push({ type: 'del', key: K.preparedKey(st, f.txnId) });
  ops.push({ type: 'put', key: K.finishedKey(st, f.txnId), value: result.tid });
  ctx.locks.release(st, f.txnId);
  return result;
}

/**
 * The stores of a vote that are resolved on the server (StoreOp.resolve), deciding from
 * replicated state only, so every replica decides alike:
 * - those whose data, the revision they are based on and the object's current revision are all
 *   BTrees.Length records: their change is kept (a lock shared with other Length stores of the
 *   object), and finish writes the committed value plus it;
 * - those based on an older revision than the current one whose three records are integer-key
 *   BTrees sets that BTrees' merge resolves: the merged record, written at finish (the lock is
 *   exclusive, so the committed record does not change before).
 * Others stay ordinary stores (a conflict on them goes back to the client).
 */
async function resolvableStores(ctx: ApplyContext, txn: Txn): Promise<ResolvedStore[]> {
  const out: ResolvedStore[] = [];
  for (const s of txn.stores ?? []) {
    if (!s.resolve || s.delete || !s.data || idEquals(serialOf(s.serial), Z64)) continue;
    const oid = buf(s.oid);
    const cur = await ctx.w.read(K.currentKey(txn.storage, oid));
    if (!cur || parseCurrent(cur).deleted) continue;
    const currentSerial = parseCurrent(cur).serial;
    const length = isLengthRecord(s.data);
    // A set based on the current revision has nothing to resolve.
    if (!length && idEquals(currentSerial, serialOf(s.serial))) continue;
    const base = await revisionData(ctx.w.readState, txn.storage, oid, serialOf(s.serial));
    const committed = await revisionData(ctx.w.readState, txn.storage, oid, currentSerial);
    if (!base || !committed) continue;
    if (length) {
      try {
        readLengthRecord(committed);
        out.push({ oid, delta: lengthDelta(base, s.data).toString() });
      } catch (e) {
        if (!(e instanceof PickleStateError)) throw e;
      }
      continue;
    }
    try {
      const merged = resolveIntSet(base, committed, s.data);
      if (merged) out.push({ oid, data: merged });
    } catch (e) {
      if (!(e instanceof PickleStateError)) throw e;
    }
  }
  return out;
}

/**
 * A voted transaction's stores with its resolved ones rewritten against the committed state:
 * the current value moved on by the transaction's change, based on the current serial. Cannot
 * fail: only resolved stores (always Length records) change an object while it is shared.
 */
async function resolveAtFinish(
  ctx: ApplyContext,
  st: string,
  txnId: string,
  rec: PreparedRecord,
): Promise<Txn> {
  const resolved = new Map((rec.resolved ?? []).map((r) => [hex(r.oid), r]));
  const stores: StoreOp[] = [];
  for (const s of rec.txn.stores ?? []) {
    const r = resolved.get(hex(s.oid));
    if (r === undefined) {
      stores.push(s);
      continue;
    }
    const oid = buf(s.oid);
    const cur = await ctx.w.read(K.currentKey(st, oid));
    assert(cur && !parseCurrent(cur).deleted, `resolved object ${hex(oid)} of ${txnId} is gone`);
    const serial = parseCurrent(cur).serial;
    if (r.data?.length) {
      // A merged set: locked exclusively since the vote merged it with this very revision.
      stores.push({ ...s, serial, data: buf(r.data) });
      continue;
    }
    const committed = await revisionData(ctx.w.readState, st, oid, serial);
    assert(committed, `resolved object ${hex(oid)} of ${txnId} has no current data`);
    const delta = BigInt(r.delta ?? '0');
    stores.push({ ...s, serial, data: applyLengthDelta(committed, buf(s.data), delta) });
  }
  return { ...rec.txn, stores };
}

/** A new deadline for a voted transaction; a no-op once it was finished or aborted. */
export async function applyRenew(
  ctx: ApplyContext,
  r: { storage: string; txnId: string; deadlineMs?: number },
  ops: BatchOp[],
): Promise<ApplyResult> {
  const p = ctx.locks.vote(r.storage, r.txnId);
  if (!p) return { ok: true };
  const raw = await ctx.w.read(K.preparedKey(r.storage, r.txnId));
  assert(raw, `voted transaction ${r.txnId} has no record`);
  const rec = preparedCodec.decode(raw);
  // A vote's locks are renewed up to VOTE_RENEW_MAX_MS past its first deadline and no further,
  // whoever asks: computed from replicated values only, so every node applies the same deadline.
  const voted = votedDeadline(rec);
  rec.votedDeadlineMs = voted;
  rec.deadlineMs =
    voted > 0 ? Math.min(r.deadlineMs || Infinity, voted + VOTE_RENEW_MAX_MS) : (r.deadlineMs ?? 0);
  assert(
    voted === 0 || (rec.deadlineMs > 0 && rec.deadlineMs <= voted + VOTE_RENEW_MAX_MS),
    `renewed deadline of ${r.txnId} is past its bound`,
  );
  ops.push({
    type: 'put',
    key: K.preparedKey(r.storage, r.txnId),
    value: preparedCodec.encode(rec),
  });
  p.deadlineMs = rec.deadlineMs;
  return { ok: true };
}

export async function applyAbort(
  ctx: ApplyContext,
  a: { storage: string; txnId: string; reason?: string; expiredDeadlineMs?: number },
  ops: BatchOp[],
  _after: Array<() => void>,
): Promise<ApplyResult> {
  const p = ctx.locks.vote(a.storage, a.txnId);
  if (!p) return { ok: true };
  // A timeout abort decided on a deadline that a renewal has since moved: the owner renewed in
  // time (its renewal was applied first), so the vote stays and can be finished.
  if (a.reason === 'timeout' && a.expiredDeadlineMs && p.deadlineMs !== a.expiredDeadlineMs)
    return { ok: true };
  // The transaction is over: uploads only its vote named go with it.
  const voted = await ctx.w.read(K.preparedKey(a.storage, a.txnId));
  assert(voted, `voted transaction ${a.txnId} has no record`);
  const votedStores = preparedCodec.decode(voted).txn.stores ?? [];
  const blobCtx = blobContext((k) => ctx.w.read(k), ops);
  await ctx.blobs.holdCommitted(a.storage, votedStores, -1, blobCtx);
  await ctx.blobs.dropUploads(a.storage, votedStores, blobCtx);
  ops.push({ type: 'del', key: K.preparedKey(a.storage, a.txnId) });
  if (a.reason === 'timeout') {
    const deadline = Buffer.alloc(8);
    deadline.writeBigUInt64BE(BigInt(Math.max(0, Math.floor(p.deadlineMs))));
    ops.push({ type: 'put', key: K.expiredKey(a.storage, a.txnId), value: deadline });
  }
  ctx.locks.release(a.storage, a.txnId);
  return { ok: true };
}
