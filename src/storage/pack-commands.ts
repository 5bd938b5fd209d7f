/**
 * Pack: the whole pack in one command (PackCmd without a step), the dispatch of a pack in steps
 * (pack-steps.ts does the steps' work), what those steps use of the store, and the one routine
 * through which a pack drops a revision (with its blob).
 */
import { assert } from '../util/assert';
import { Z64, hex, idCompare, idMax, isId } from '../util/ids';
import {
  type Revision,
  type StorageMeta,
  preparedCodec,
  revisionCodec,
  storageMetaCodec,
} from './codec';
import type { ApplyContext } from './apply-context';
import type { BatchWriter } from './batch-writer';
import { blobContext, dropRevisionBlob } from './blob-store';
import { StorageError } from './errors';
import * as K from './keys';
import type { LockTable } from './lock-table';
import {
  type PackApplyContext,
  PackStep,
  applyPackDoom,
  applyPackStart,
  applyPackSweep,
} from './pack-steps';
import { type BatchOp, type Db, type Get, buf, parseCurrent, serialOf } from './store-records';
import type { ApplyResult } from './store-types';

export async function applyPack(
  ctx: ApplyContext,
  p: { storage: string; packTid: Uint8Array; gc?: boolean },
  ops: BatchOp[],
  _after: Array<() => void>,
): Promise<ApplyResult> {
  const st = p.storage;
  if (!isId(p.packTid)) throw new StorageError('INVALID', 'pack needs an 8-byte TID');
  const meta = ctx.w.meta(st);
  // Never pack past the newest transaction: readers at the current state need its revisions.
  const packTid = idMax(
    serialOf(meta.packTid),
    idCompare(buf(p.packTid), ctx.w.lastTidGlobal) > 0 ? ctx.w.lastTidGlobal : buf(p.packTid),
  );
  let removed = 0;
  let count = meta.objectCount ?? 0;
  const blobCtx = blobContext((k) => ctx.w.read(k), ops);
  // Pass 1: per object, the revisions at or before packTid and whether any come later.
  interface Obj {
    oid: Buffer;
    old: { tid: Buffer; rev: Revision }[];
    hasLater: boolean;
    laterRefs: Uint8Array[];
  }
  const objects: Obj[] = [];
  // A revision whose references are unknown could be the only path to some object: no gc then.
  let opaque = false;
  const cPrefix = K.currentPrefix(st);
  for await (const [ckey] of ctx.db.iterator({
    gte: cPrefix,
    lt: K.prefixEnd(cPrefix),
    values: false,
  } as any)) {
    const oid = Buffer.from(ckey.subarray(cPrefix.length));
    const o: Obj = { oid, old: [], hasLater: false, laterRefs: [] };
    const rp = K.revisionPrefix(st, oid);
    for await (const [rkey, rval] of ctx.db.iterator({ gte: rp, lt: K.prefixEnd(rp) })) {
      const tid = Buffer.from(K.revisionKeyTid(rkey));
      const rev = revisionCodec.decode(rval);
      if (rev.opaque) opaque = true;
      if (idCompare(tid, packTid) <= 0) o.old.push({ tid, rev });
      else {
        o.hasLater = true;
        o.laterRefs.push(...(rev.refs ?? []));
      }
    }
    objects.push(o);
  }
  let reachable: Set<string> | undefined;
  if (p.gc && !opaque) {
    // Objects reachable from the root at packTid, or referenced by any later revision.
    const byOid = new Map(objects.map((o) => [hex(o.oid), o]));
    reachable = new Set<string>();
    const todo: string[] = [hex(Z64)];
    for (const o of objects) for (const r of o.laterRefs) todo.push(hex(r));
    for (const o of objects) if (o.hasLater) todo.push(hex(o.oid));
    // ...and what a voted transaction holds or will reference: its finish must still pass its
    // conflict check (vote guarantees finish) and must not commit a reference to a collected object.
    const pp = K.preparedPrefix(st);
    for await (const [, v] of ctx.db.iterator({ gte: pp, lt: K.prefixEnd(pp) })) {
      const voted = preparedCodec.decode(v).txn;
      for (const c of voted.checks ?? []) todo.push(hex(c.oid));
      for (const s of voted.stores ?? []) {
        todo.push(hex(s.oid));
        for (const r of s.refs ?? []) todo.push(hex(r));
      }
    }
    while (todo.length) {
      const h = todo.pop() as string;
      if (reachable.has(h)) continue;
      reachable.add(h);
      const o = byOid.get(h);
      const keep = o?.old[o.old.length - 1];
      if (keep && !keep.rev.deleted) for (const r of keep.rev.refs ?? []) todo.push(hex(r));
    }
  }
  for (const o of objects) {
    const garbage = reachable !== undefined && !reachable.has(hex(o.oid));
    // A deletion is dropped with the object's current record, unless a voted transaction holds
    // the object: its finish is checked against that current serial.
    const held = ctx.locks.holder(st, o.oid) !== undefined;
    const keepLast = !garbage && o.old.length > 0 && (held || !o.old[o.old.length - 1].rev.deleted);
    const drop = keepLast ? o.old.slice(0, -1) : o.old;
    for (const d of drop)
      await dropRevision((k) => ctx.w.read(k), st, o.oid, d.tid, ops, d.rev, blobCtx);
    removed += drop.length;
    if (!o.hasLater && !keepLast && o.old.length > 0) {
      dropCurrent(st, o.oid, ops);
      if (!o.old[o.old.length - 1].rev.deleted) count--;
    }
  }
  const newMeta: StorageMeta = { ...meta, packTid, objectCount: count };
  ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(newMeta) });
  ctx.w.metas.set(st, newMeta);
  return { ok: true, removed };
}

/** One step of a pack in steps (log.proto PackCmd.step; pack-steps.ts). */
export async function applyPackStep(
  ctx: ApplyContext,
  index: number,
  p: {
    storage: string;
    packTid: Uint8Array;
    gc?: boolean;
    step?: number;
    packId?: number;
    oids?: Uint8Array[];
    fromOid?: Uint8Array;
  },
  ops: BatchOp[],
): Promise<ApplyResult> {
  const st = p.storage;
  if (!st) throw new StorageError('INVALID', 'pack without a storage name');
  switch (p.step) {
    case PackStep.START: {
      if (!isId(p.packTid)) throw new StorageError('INVALID', 'pack needs an 8-byte TID');
      const meta = ctx.w.meta(st);
      // Never pack past the newest transaction: readers at the current state need its revisions.
      const packTid = idMax(
        serialOf(meta.packTid),
        idCompare(buf(p.packTid), ctx.w.lastTidGlobal) > 0 ? ctx.w.lastTidGlobal : buf(p.packTid),
      );
      applyPackStart(ctx.packCtx, index, st, packTid, p.gc === true, ops);
      return { ok: true, tid: packTid };
    }
    case PackStep.DOOM: {
      const n = await applyPackDoom(ctx.packCtx, st, Number(p.packId ?? 0), p.oids ?? [], ops);
      return { ok: true, removed: n };
    }
    case PackStep.SWEEP: {
      const r = await applyPackSweep(
        ctx.packCtx,
        st,
        Number(p.packId ?? 0),
        serialOf(p.fromOid),
        ops,
      );
      return { ok: true, removed: r.removed, oids: r.next ? [r.next] : [] };
    }
    default:
      throw new StorageError('INVALID', `unknown pack step ${p.step}`);
  }
}

/**
 * Remove one revision and release its blob: the one routine through which pack drops revisions.
 * `rev` is the revision when the caller has read it (otherwise it is read here).
 */
async function dropRevision(
  read: Get,
  st: string,
  oid: Buffer,
  tid: Buffer,
  ops: BatchOp[],
  rev: Revision | undefined,
  blobCtx: ReturnType<typeof blobContext>,
): Promise<void> {
  const key = K.revisionKey(st, oid, tid);
  if (!rev) {
    const raw = await read(key);
    assert(raw, `pack drops revision ${hex(tid)} of ${hex(oid)}, which does not exist`);
    rev = revisionCodec.decode(raw);
  }
  ops.push({ type: 'del', key });
  await dropRevisionBlob(st, rev, blobCtx);
}

/** Remove an object's current record (pack, once no revision of it is left). */
function dropCurrent(st: string, oid: Buffer, ops: BatchOp[]): void {
  ops.push({ type: 'del', key: K.currentKey(st, oid) });
}

/** What the steps of a pack in steps (pack-steps.ts) use of the store while it applies. */
export function packContext(db: Db, w: BatchWriter, locks: LockTable): PackApplyContext {
  return {
    read: (key) => w.read(key),
    range: async ({ gte, lt, limit, values }) => {
      if (values) return (await db.iterator({ gte, lt, limit }).all()) as Array<[Buffer, Buffer]>;
      const keys = await db.keys({ gte, lt, limit }).all();
      return keys.map((k): [Buffer, undefined] => [k, undefined]);
    },
    getMany: (keys) => db.getMany(keys),
    meta: (st) => w.meta(st),
    lastTid: () => w.lastTidGlobal,
    setMeta: (st, meta, ops) => {
      ops.push({ type: 'put', key: K.storageKey(st), value: storageMetaCodec.encode(meta) });
      w.metas.set(st, meta);
    },
    held: (st, oid) => locks.held(st, oid),
    dropRevisions: async (st, revisions, ops) => {
      const blobCtx = blobContext((k) => w.read(k), ops);
      const keys = revisions.map(({ oid, tid }) => K.revisionKey(st, oid, tid));
      const values = await db.getMany(keys);
      for (let i = 0; i < revisions.length; i++) {
        const raw = values[i];
        assert(
          raw,
          `pack drops revision ${hex(revisions[i].tid)} of ${hex(revisions[i].oid)}, which does not exist`,
        );
        const { oid, tid } = revisions[i];
        await dropRevision((k) => w.read(k), st, oid, tid, ops, revisionCodec.decode(raw), blobCtx);
      }
    },
    dropCurrent: (st, oid, ops) => dropCurrent(st, oid, ops),
    current: (v) => parseCurrent(v),
    isDeletion: (v) => revisionCodec.decode(v).deleted === true,
  };
}
