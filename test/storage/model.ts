/**
 * A plain in-memory model of the object store's semantics, for the property test in
 * model.test.ts. It keeps per object the list of surviving revisions (what pack leaves) and, for
 * checking that pack preserves reads after the pack time, the full history pack never touches.
 *
 * Ids are bigints; answers are rendered as plain JSON-able values (ids as hex) so that they can
 * be compared with the real store's answers with deepStrictEqual.
 */
import { Command, Txn } from '../../src/storage/codec';
import { StorageErrorKind } from '../../src/storage/errors';
import { MAX_NEW_OIDS } from '../../src/storage/object-store';
import { p64, u64 } from '../../src/util/ids';

const LAST_ID = (1n << 64n) - 1n;
const MAX_STORAGE_NAME_BYTES = 64;

export function hx(n: bigint): string {
  return p64(n).toString('hex');
}

function idOf(b: Uint8Array | undefined): bigint {
  return b && b.length === 8 ? u64(b) : 0n;
}

/** An ApplyResult as plain data. */
export interface NResult {
  ok: boolean;
  kind?: StorageErrorKind;
  tid?: string;
  oids?: string[];
  removed?: number;
  conflict?: { oid: string; expected: string; actual: string; currentData?: string };
}

/** A read's answer as plain data: a value or an error kind. */
export type NRead = { value: unknown } | { error: StorageErrorKind };

export interface NEvent {
  index: number;
  storage: string;
  tid: string;
  records: { oid: string; deleted: boolean; data?: string }[];
}

interface Rev {
  tid: bigint;
  deleted: boolean;
  data: Buffer;
  refs: bigint[];
  dataTid: bigint;
  /** Its references are unknown: no gc while it exists. */
  opaque: boolean;
}

interface TxnRec {
  user: string;
  description: string;
  extension: Buffer;
  oids: bigint[];
}

class ModelError extends Error {
  constructor(
    readonly kind: StorageErrorKind,
    readonly conflict?: NResult['conflict'],
  ) {
    super(kind);
  }
}

class StorageModel {
  /** Surviving revisions per oid, ascending by TID. */
  readonly revs = new Map<bigint, Rev[]>();
  /** Every revision ever written (pack keeps them here; gc forgets collected objects). */
  readonly full = new Map<bigint, Rev[]>();
  /** The current-serial record; removed only by pack. */
  readonly cur = new Map<bigint, { serial: bigint; deleted: boolean }>();
  readonly txns = new Map<bigint, TxnRec>();
  lastTid = 0n;
  nextOid = 1n;
  packTid = 0n;
  objectCount = 0;
  touched = false;
}

interface Prepared {
  storage: string;
  txnId: string;
  txn: Txn;
  /** Locks only: cannot be finished. */
  reserve: boolean;
}

export class Model {
  readonly storages = new Map<string, StorageModel>();
  lastTid = 0n;
  appliedIndex = 0;
  /** `${storage}\0${oid}` -> txnId */
  readonly locks = new Map<string, string>();
  readonly prepared = new Map<string, Prepared>();
  readonly finished = new Map<string, bigint>();
  readonly events: NEvent[] = [];
  /** Every TID committed, in order (all storages). */
  readonly tids: bigint[] = [];

  sm(st: string): StorageModel {
    let s = this.storages.get(st);
    if (!s) {
      s = new StorageModel();
      this.storages.set(st, s);
    }
    return s;
  }

  storageNames(): string[] {
    return [...this.storages.entries()]
      .filter(([, s]) => s.touched)
      .map(([n]) => n)
      .sort();
  }

  // ------------------------------------------------------------------------------------------
  // Commands

  apply(index: number, cmd: Command): NResult {
    this.appliedIndex = index;
    try {
      return this.applyOp(cmd);
    } catch (e) {
      if (!(e instanceof ModelError)) throw e;
      const r: NResult = { ok: false, kind: e.kind };
      if (e.conflict) r.conflict = e.conflict;
      return r;
    }
  }

  private applyOp(cmd: Command): NResult {
    const c = cmd as Record<string, any>;
    // every command that names a storage must name one that fits the key layout
    let named: unknown = null;
    if (c.commit) named = c.commit.txn ? c.commit.txn.storage : null;
    else if (c.prepare) named = c.prepare.txn ? c.prepare.txn.storage : null;
    else {
      const k = ['finish', 'abort', 'undo', 'pack', 'newOids', 'renew'].find((x) => c[x]);
      if (k) named = c[k].storage;
    }
    if (named !== null) {
      const n = typeof named === 'string' ? Buffer.byteLength(named, 'utf8') : 0;
      if (n < 1 || n > MAX_STORAGE_NAME_BYTES) throw new ModelError('INVALID');
    }
    if (c.commit) return this.commit(c.commit.txn, idOf(c.commit.tid), undefined, undefined);
    if (c.prepare) return this.prepare(c.prepare.txnId, c.prepare.txn, c.prepare.reserve === true);
    if (c.finish) return this.finish(c.finish.storage, c.finish.txnId, idOf(c.finish.tid));
    if (c.abort) return this.abort(c.abort.storage, c.abort.txnId);
    if (c.undo) return this.undo(c.undo);
    if (c.pack) return this.pack(c.pack.storage, c.pack.packTid, c.pack.gc === true);
    if (c.newOids) return this.newOids(c.newOids.storage, c.newOids.count);
    if (c.noop || c.renew) return { ok: true }; // renew only moves a deadline
    throw new ModelError('INVALID');
  }

  private validate(txn: Txn | undefined): asserts txn is Txn {
    if (!txn || !txn.storage) throw new ModelError('INVALID');
    const seen = new Set<string>();
    for (const op of [...(txn.stores ?? []), ...(txn.checks ?? [])]) {
      if (!op.oid || op.oid.length !== 8) throw new ModelError('INVALID');
      if (op.serial && op.serial.length !== 0 && op.serial.length !== 8)
        throw new ModelError('INVALID');
      const h = Buffer.from(op.oid).toString('hex');
      if (seen.has(h)) throw new ModelError('INVALID');
      seen.add(h);
    }
    if ((txn.stores ?? []).some((s) => u64(s.oid) === LAST_ID)) throw new ModelError('INVALID');
  }

  /** The data of the surviving revision at `serial`, if any. */
  private revData(s: StorageModel, oid: bigint, serial: bigint): Buffer | undefined {
    return s.revs.get(oid)?.find((r) => r.tid === serial)?.data;
  }

  private conflictInfo(
    s: StorageModel,
    oid: bigint,
    expected: bigint,
    actual: bigint,
    deleted: boolean,
  ) {
    const info: NResult['conflict'] = { oid: hx(oid), expected: hx(expected), actual: hx(actual) };
    const d = deleted || !s.cur.has(oid) ? undefined : this.revData(s, oid, actual);
    if (d !== undefined) info.currentData = d.toString('hex');
    return info;
  }

  /** Stores, then checks: a lock held by another transaction, then the serial. */
  private check(txn: Txn, own: string | undefined, locksOnly = false): void {
    const s = this.sm(txn.storage);
    const all = [
      ...(txn.stores ?? []).map((op) => ({ op, kind: 'CONFLICT' as const })),
      ...(txn.checks ?? []).map((op) => ({ op, kind: 'READ_CONFLICT' as const })),
    ];
    for (const { op, kind } of all) {
      const oid = u64(op.oid);
      const holder = this.locks.get(`${txn.storage}\0${oid}`);
      if (holder !== undefined && holder !== own) throw new ModelError('LOCKED');
      const c = s.cur.get(oid) ?? { serial: 0n, deleted: false };
      const expected = idOf(op.serial);
      if (!locksOnly && expected !== c.serial) {
        throw new ModelError(kind, this.conflictInfo(s, oid, expected, c.serial, c.deleted));
      }
    }
  }

  private commit(
    txn: Txn | undefined,
    proposed: bigint,
    own: string | undefined,
    dataTids: Map<bigint, bigint> | undefined,
  ): NResult {
    this.validate(txn);
    this.check(txn, own);
    const st = txn.storage;
    const s = this.sm(st);
    const tid = proposed > this.lastTid + 1n ? proposed : this.lastTid + 1n;
    const records: NEvent['records'] = [];
    const oids: bigint[] = [];
    for (const op of txn.stores ?? []) {
      const oid = u64(op.oid);
      const prev = s.cur.get(oid) ?? { serial: 0n, deleted: false };
      const existed = prev.serial !== 0n && !prev.deleted;
      const deleted = op.delete === true;
      const rev: Rev = {
        tid,
        deleted,
        data: deleted ? Buffer.alloc(0) : Buffer.from(op.data ?? []),
        refs: deleted ? [] : (op.refs ?? []).map((r) => idOf(r)),
        dataTid: dataTids?.get(oid) ?? 0n,
        opaque: !deleted && op.opaque === true,
      };
      for (const m of [s.revs, s.full]) {
        const l = m.get(oid) ?? [];
        l.push(rev);
        m.set(oid, l);
      }
      s.cur.set(oid, { serial: tid, deleted });
      if (existed && deleted) s.objectCount--;
      if (!existed && !deleted) s.objectCount++;
      if (oid >= s.nextOid) s.nextOid = oid + 1n;
      oids.push(oid);
      records.push(
        deleted
          ? { oid: hx(oid), deleted: true }
          : { oid: hx(oid), deleted: false, data: rev.data.toString('hex') },
      );
    }
    s.txns.set(tid, {
      user: txn.user ?? '',
      description: txn.description ?? '',
      extension: Buffer.from(txn.extension ?? []),
      oids,
    });
    s.lastTid = tid;
    s.touched = true;
    this.lastTid = tid;
    this.tids.push(tid);
    this.events.push({ index: this.appliedIndex, storage: st, tid: hx(tid), records });
    return { ok: true, tid: hx(tid), oids: oids.map(hx) };
  }

  private lockedOids(txn: Txn): bigint[] {
    return [...(txn.stores ?? []), ...(txn.checks ?? [])].map((o) => u64(o.oid));
  }

  private prepare(txnId: string, txn: Txn | undefined, reserve = false): NResult {
    this.validate(txn);
    if (!txnId) throw new ModelError('INVALID');
    const key = `${txn.storage}\0${txnId}`;
    if (this.finished.has(key)) throw new ModelError('INVALID');
    // Voting again replaces the earlier vote; its own locks do not count.
    const earlier = this.prepared.get(key);
    this.check(txn, earlier ? txnId : undefined, reserve);
    if (earlier) this.release(earlier);
    for (const oid of this.lockedOids(txn)) this.locks.set(`${txn.storage}\0${oid}`, txnId);
    this.prepared.set(key, { storage: txn.storage, txnId, txn, reserve });
    return { ok: true };
  }

  private release(p: Prepared): void {
    for (const oid of this.lockedOids(p.txn)) this.locks.delete(`${p.storage}\0${oid}`);
    this.prepared.delete(`${p.storage}\0${p.txnId}`);
  }

  private finish(st: string, txnId: string, proposed: bigint): NResult {
    const key = `${st}\0${txnId}`;
    const done = this.finished.get(key);
    if (done !== undefined) return { ok: true, tid: hx(done) };
    const p = this.prepared.get(key);
    if (!p || p.reserve) throw new ModelError('UNKNOWN_TRANSACTION');
    const r = this.commit(p.txn, proposed, txnId, undefined);
    if (!r.ok || !r.tid) throw new Error('model: finish of a voted transaction failed');
    this.finished.set(key, BigInt(`0x${r.tid}`));
    this.release(p);
    return r;
  }

  private abort(st: string, txnId: string): NResult {
    const p = this.prepared.get(`${st}\0${txnId}`);
    if (p) this.release(p);
    return { ok: true };
  }

  private undo(u: {
    tid: Uint8Array;
    storage: string;
    undoTid: Uint8Array;
    user?: string;
    description?: string;
  }): NResult {
    if (!u.undoTid || u.undoTid.length !== 8) throw new ModelError('INVALID');
    const s = this.sm(u.storage);
    const undoTid = u64(u.undoTid);
    const rec = s.txns.get(undoTid);
    if (!rec) throw new ModelError('NOT_FOUND');
    if (s.packTid > 0n && undoTid <= s.packTid) throw new ModelError('HISTORY_PACKED');
    // FileStorage's rule: undo restores the revision before undoTid when the current revision
    // holds what undoTid wrote (the same transaction's data, or equal bytes); undoing a creation
    // deletes; anything else conflicts (resolution is the client's).
    const stores: NonNullable<Txn['stores']> = [];
    const dataTids = new Map<bigint, bigint>();
    let resolvable: NResult['conflict'] | undefined;
    for (const oid of rec.oids) {
      const c = s.cur.get(oid);
      const revs = s.revs.get(oid) ?? [];
      const undone = revs.find((r) => r.tid === undoTid);
      const current = c ? revs.find((r) => r.tid === c.serial) : undefined;
      if (!c || !undone || !current) throw new ModelError('UNDO_CONFLICT');
      const srcOf = (r: Rev): bigint => (r.dataTid ? r.dataTid : r.tid);
      const same =
        srcOf(current) === srcOf(undone) ||
        (current.deleted === undone.deleted && current.data.equals(undone.data));
      const before = revs.filter((r) => r.tid < undoTid);
      const prev = before[before.length - 1];
      if (!same && (!prev || prev.deleted || c.deleted))
        throw new ModelError(
          'UNDO_CONFLICT',
          this.conflictInfo(s, oid, undoTid, c.serial, c.deleted),
        );
      // A conflict that resolution could settle is reported after every other check.
      if (!same) resolvable ??= this.conflictInfo(s, oid, undoTid, c.serial, c.deleted);
      if (!prev || prev.deleted)
        stores.push({ oid: p64(oid), serial: p64(c.serial), delete: true });
      else {
        stores.push({
          oid: p64(oid),
          serial: p64(c.serial),
          data: prev.data,
          refs: prev.refs.map(p64),
          ...(prev.opaque ? { opaque: true } : {}),
        });
        dataTids.set(oid, prev.dataTid ? prev.dataTid : prev.tid);
      }
    }
    if (resolvable) throw new ModelError('UNDO_CONFLICT', resolvable);
    const txn: Txn = {
      storage: u.storage,
      user: u.user ?? '',
      description: u.description ?? '',
      stores,
    };
    return this.commit(txn, idOf(u.tid), undefined, dataTids);
  }

  private pack(st: string, packTidRaw: Uint8Array, gc: boolean): NResult {
    if (!packTidRaw || packTidRaw.length !== 8) throw new ModelError('INVALID');
    const s = this.sm(st);
    const asked = u64(packTidRaw);
    const clamped = asked > this.lastTid ? this.lastTid : asked;
    const packTid = clamped > s.packTid ? clamped : s.packTid;
    const objects = [...s.cur.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const old = new Map<bigint, Rev[]>();
    const hasLater = new Set<bigint>();
    let reachable: Set<bigint> | undefined;
    for (const oid of objects) {
      const revs = s.revs.get(oid) ?? [];
      old.set(
        oid,
        revs.filter((r) => r.tid <= packTid),
      );
      if (revs.some((r) => r.tid > packTid)) hasLater.add(oid);
    }
    const opaque = objects.some((oid) => (s.revs.get(oid) ?? []).some((r) => r.opaque));
    if (gc && !opaque) {
      // Reachable from the root (oid 0) as of packTid, from any later revision, or written later.
      reachable = new Set<bigint>();
      const todo: bigint[] = [0n];
      for (const oid of objects) {
        for (const r of s.revs.get(oid) ?? []) if (r.tid > packTid) todo.push(...r.refs);
        if (hasLater.has(oid)) todo.push(oid);
      }
      // voted transactions' objects and the references their stores will commit
      for (const p of this.prepared.values()) {
        if (p.storage !== st) continue;
        todo.push(...this.lockedOids(p.txn));
        for (const op of p.txn.stores ?? []) todo.push(...(op.refs ?? []).map((r) => idOf(r)));
      }
      while (todo.length) {
        const oid = todo.pop() as bigint;
        if (reachable.has(oid)) continue;
        reachable.add(oid);
        const o = old.get(oid);
        const keep = o?.[o.length - 1];
        if (keep && !keep.deleted) todo.push(...keep.refs);
      }
    }
    let removed = 0;
    for (const oid of objects) {
      const o = old.get(oid) as Rev[];
      const garbage = reachable !== undefined && !reachable.has(oid);
      const last = o[o.length - 1];
      const held = this.locks.has(`${st}\0${oid}`);
      const keepLast = !garbage && last !== undefined && (held || !last.deleted);
      const drop = keepLast ? o.length - 1 : o.length;
      removed += drop;
      const dropped = new Set(o.slice(0, drop).map((r) => r.tid));
      s.revs.set(
        oid,
        (s.revs.get(oid) ?? []).filter((r) => !dropped.has(r.tid)),
      );
      if (!hasLater.has(oid) && !keepLast && o.length > 0) {
        s.cur.delete(oid);
        s.revs.delete(oid);
        if (!last.deleted) {
          s.objectCount--;
          s.full.delete(oid); // collected: its past is no longer a promise
        }
      }
    }
    s.packTid = packTid;
    s.touched = true;
    return { ok: true, removed };
  }

  private newOids(st: string, count: number): NResult {
    if (!st) throw new ModelError('INVALID');
    if (!Number.isInteger(count) || count < 1 || count > MAX_NEW_OIDS)
      throw new ModelError('INVALID');
    const s = this.sm(st);
    const next = s.nextOid === 0n ? 1n : s.nextOid;
    if (next + BigInt(count) > LAST_ID) throw new ModelError('INVALID');
    const oids: string[] = [];
    for (let i = 0n; i < BigInt(count); i++) oids.push(hx(next + i));
    s.nextOid = next + BigInt(count);
    s.touched = true;
    return { ok: true, oids };
  }

  // ------------------------------------------------------------------------------------------
  // Reads

  load(st: string, oid: bigint): NRead {
    const s = this.sm(st);
    const c = s.cur.get(oid);
    if (!c || c.deleted) return { error: 'NOT_FOUND' };
    const d = this.revData(s, oid, c.serial) as Buffer;
    return { value: { data: d.toString('hex'), serial: hx(c.serial) } };
  }

  loadBefore(st: string, oid: bigint, before: bigint): NRead {
    const s = this.sm(st);
    if (!s.cur.has(oid)) return { error: 'NOT_FOUND' };
    const revs = s.revs.get(oid) ?? [];
    const prior = revs.filter((r) => r.tid < before);
    const prev = prior[prior.length - 1];
    if (!prev)
      return s.packTid > 0n && before <= s.packTid
        ? { error: 'HISTORY_PACKED' }
        : { value: { found: false } };
    if (prev.deleted) return { error: 'NOT_FOUND' };
    const end = revs.find((r) => r.tid >= before);
    const value: Record<string, unknown> = {
      found: true,
      data: prev.data.toString('hex'),
      start: hx(prev.tid),
    };
    if (end) value.end = hx(end.tid);
    return { value };
  }

  /**
   * What loadBefore would answer had nothing ever been packed, with "no data" (a deleted
   * revision, no revision, or an unknown object) folded into one answer. For `before` after the
   * pack time the real store must agree: pack removes only what reads at or after it do not need.
   */
  unpackedLoadBefore(st: string, oid: bigint, before: bigint): unknown {
    const revs = this.sm(st).full.get(oid) ?? [];
    const prior = revs.filter((r) => r.tid < before);
    const prev = prior[prior.length - 1];
    if (!prev || prev.deleted) return 'absent';
    const end = revs.find((r) => r.tid >= before);
    const value: Record<string, unknown> = {
      found: true,
      data: prev.data.toString('hex'),
      start: hx(prev.tid),
    };
    if (end) value.end = hx(end.tid);
    return value;
  }

  loadSerial(st: string, oid: bigint, serial: bigint): NRead {
    const s = this.sm(st);
    const r = s.revs.get(oid)?.find((x) => x.tid === serial);
    if (!r) {
      if (s.packTid > 0n && serial <= s.packTid && s.cur.has(oid))
        return { error: 'HISTORY_PACKED' };
      return { error: 'NOT_FOUND' };
    }
    if (r.deleted) return { error: 'NOT_FOUND' };
    return { value: r.data.toString('hex') };
  }

  history(st: string, oid: bigint, size: number): NRead {
    const s = this.sm(st);
    const revs = [...(s.revs.get(oid) ?? [])].reverse().slice(0, size);
    if (revs.length === 0) return { error: 'NOT_FOUND' };
    return {
      value: revs.map((r) => {
        const t = s.txns.get(r.tid) as TxnRec;
        return {
          tid: hx(r.tid),
          user: t.user,
          description: t.description,
          extension: t.extension.toString('hex'),
          size: r.data.length,
        };
      }),
    };
  }

  iterate(st: string): unknown[] {
    const s = this.sm(st);
    return [...s.txns.entries()]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([tid, t]) => ({
        tid: hx(tid),
        user: t.user,
        description: t.description,
        extension: t.extension.toString('hex'),
        // The model has no restores, which alone give another status.
        status: ' ',
        records: t.oids.flatMap((oid) => {
          const r = s.revs.get(oid)?.find((x) => x.tid === tid);
          if (!r) return [];
          return [
            {
              oid: hx(oid),
              data: r.data.toString('hex'),
              deleted: r.deleted,
              dataTid: hx(r.dataTid),
            },
          ];
        }),
      }));
  }

  summary(st: string): unknown {
    const s = this.sm(st);
    return {
      name: st,
      lastTid: hx(s.lastTid),
      objectCount: s.objectCount,
      packTid: hx(s.packTid),
      nextOid: hx(s.nextOid),
    };
  }

  lockHolder(st: string, oid: bigint): string | undefined {
    return this.locks.get(`${st}\0${oid}`);
  }
}
