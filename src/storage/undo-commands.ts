/**
 * Transactional undo: the plan that undoes transactions as FileStorage does (used by the undo
 * command and, outside apply, by the ZEO door's undo), and the undo command that commits it.
 */
import { Z64, hex, idCompare, isId } from '../util/ids';
import { type Revision, type StoreOp, type Txn, revisionCodec, txnRecordCodec } from './codec';
import type { ApplyContext } from './apply-context';
import { applyCommit } from './commit-commands';
import { StorageError } from './errors';
import * as K from './keys';
import {
  type BatchOp,
  buf,
  emptyMeta,
  parseCurrent,
  revisionBefore,
  revisionData,
} from './store-records';
import type { ApplyResult, UndoPlan, UndoResolution } from './store-types';

export async function applyUndo(
  ctx: ApplyContext,
  u: {
    tid: Uint8Array;
    storage: string;
    undoTid: Uint8Array;
    user?: string;
    description?: string;
  },
  ops: BatchOp[],
  after: Array<() => void>,
): Promise<ApplyResult> {
  const st = u.storage;
  if (!isId(u.undoTid)) throw new StorageError('INVALID', 'undo needs an 8-byte TID');
  const plan = await planUndo(ctx, st, [buf(u.undoTid)], true);
  const c = plan.conflicts[0];
  if (c) {
    const cur = await ctx.db.get(K.currentKey(st, c.oid));
    const deleted = !cur || parseCurrent(cur).deleted;
    throw new StorageError(
      'UNDO_CONFLICT',
      `object ${hex(c.oid)} was changed after transaction ${hex(c.undone)}; undoing it needs conflict resolution`,
      {
        oid: c.oid,
        expected: c.undone,
        actual: c.committed,
        currentData: deleted
          ? undefined
          : await revisionData(ctx.w.readState, st, c.oid, c.committed),
      },
    );
  }
  const txn: Txn = {
    storage: st,
    user: u.user ?? '',
    description: u.description ?? '',
    stores: plan.stores,
  };
  return applyCommit(ctx, txn, u.tid, ops, after, undefined);
}

/**
 * Plan the transactional undo of `undoTids` (in that order, as one transaction), as
 * FileStorage does: an object goes back to its revision before the undone transaction when
 * that transaction's revision is still current, or when the current revision holds the same
 * data (a later undo or an identical store made it so; several undos in one transaction see
 * each other's results). Undoing a creation deletes the object. Otherwise the undo conflicts:
 * undoing a creation that later transactions changed is an UNDO_CONFLICT; anything else needs
 * conflict resolution, which is the client's (UndoPlan.conflicts). Reads the landed state (or,
 * in apply, the batch's state); the stores are based on current serials, so committing them
 * re-checks that nothing moved.
 */
export async function planUndo(
  ctx: ApplyContext,
  st: string,
  undoTids: Buffer[],
  inApply: boolean,
): Promise<UndoPlan> {
  // Apply reads the batch's state; a reader (the ZEO door staging an undo) the landed state
  // only, even while a batch is being applied.
  const get = (k: Buffer): Promise<Buffer | undefined> => (inApply ? ctx.w.read(k) : ctx.db.get(k));
  const packTid = (inApply ? ctx.w.meta(st) : (ctx.w.published.get(st) ?? emptyMeta())).packTid;
  interface Planned {
    committed: Buffer;
    deleted: boolean;
    data: Buffer;
    /** The transaction whose data this is (following undo's back-pointers). */
    dataTid: Buffer;
  }
  const planned = new Map<string, Planned>();
  const stores = new Map<string, StoreOp>();
  const conflicts = new Map<string, UndoResolution>();
  const oids = new Map<string, Buffer>();
  const revOf = async (oid: Buffer, tid: Buffer): Promise<Revision | undefined> => {
    const r = await get(K.revisionKey(st, oid, tid));
    return r ? revisionCodec.decode(r) : undefined;
  };
  for (const undoTid of undoTids) {
    const raw = await get(K.txnKey(st, undoTid));
    if (!raw)
      throw new StorageError('NOT_FOUND', `no transaction ${hex(undoTid)} in storage ${st}`);
    if (packTid && packTid.length && idCompare(undoTid, buf(packTid)) <= 0)
      throw new StorageError('HISTORY_PACKED', `transaction ${hex(undoTid)} was packed away`);
    for (const o of txnRecordCodec.decode(raw).oids ?? []) {
      const oid = buf(o);
      const k = hex(oid);
      oids.set(k, oid);
      const undone = await revOf(oid, undoTid);
      if (!undone)
        throw new StorageError('UNDO_CONFLICT', `revision ${hex(undoTid)} of ${k} is gone`);
      let cur = planned.get(k);
      if (!cur) {
        const c = await get(K.currentKey(st, oid));
        if (!c) throw new StorageError('UNDO_CONFLICT', `object ${k} no longer exists`);
        const pc = parseCurrent(c);
        const rev = await revOf(oid, pc.serial);
        if (!rev) throw new StorageError('UNDO_CONFLICT', `object ${k} no longer exists`);
        cur = {
          committed: Buffer.from(pc.serial),
          deleted: pc.deleted,
          data: buf(rev.data),
          dataTid: rev.dataTid && rev.dataTid.length ? buf(rev.dataTid) : Buffer.from(pc.serial),
        };
      }
      const undoneDataTid = undone.dataTid && undone.dataTid.length ? buf(undone.dataTid) : undoTid;
      const same =
        cur.dataTid.equals(undoneDataTid) ||
        (cur.deleted === (undone.deleted === true) && cur.data.equals(buf(undone.data)));
      const pre = await revisionBefore(ctx.db, st, oid, undoTid);
      const preRev = pre ? revisionCodec.decode(pre.value) : undefined;
      const conflict = {
        oid,
        expected: undoTid,
        actual: cur.committed,
        currentData: cur.deleted ? undefined : cur.data,
      };
      if (!same && !pre)
        throw new StorageError(
          'UNDO_CONFLICT',
          `can't undo the creation of ${k} by ${hex(undoTid)}: later transactions changed it`,
          conflict,
        );
      if (!same && preRev && !preRev.deleted && !cur.deleted) {
        conflicts.set(k, {
          oid,
          committed: cur.committed,
          undone: undoTid,
          data: buf(preRev.data),
        });
      } else if (!same) {
        throw new StorageError(
          'UNDO_CONFLICT',
          `object ${k} was changed after transaction ${hex(undoTid)}`,
          conflict,
        );
      } else conflicts.delete(k);
      const restoreDeleted = !pre || !preRev || preRev.deleted === true;
      const op: StoreOp = restoreDeleted
        ? { oid, serial: cur.committed, delete: true }
        : { oid, serial: cur.committed, data: buf(preRev.data), refs: preRev.refs };
      if (!restoreDeleted && preRev?.opaque) op.opaque = true;
      // The restored revision's blob is named again (it gains a revision; nothing is copied).
      if (!restoreDeleted && preRev?.blobId?.length) op.blobId = buf(preRev.blobId);
      const preDataTid =
        pre && preRev?.dataTid && preRev.dataTid.length ? buf(preRev.dataTid) : pre?.tid;
      if (preDataTid && !restoreDeleted) op.dataTid = preDataTid;
      stores.set(k, op);
      planned.set(k, {
        committed: cur.committed,
        deleted: restoreDeleted,
        data: restoreDeleted ? Buffer.alloc(0) : buf(preRev?.data),
        dataTid: preDataTid ?? Z64,
      });
    }
  }
  return {
    stores: [...stores.values()],
    oids: [...oids.values()],
    conflicts: [...conflicts.values()],
  };
}
