/**
 * The reference model of the storage simulator: ZODB semantics over the committed history, in
 * log order. It predicts each command's result (conflict, read conflict, lock, TID =
 * max(proposed, last + 1), per-object serial chains, newOids ranges never reused, a voted
 * transaction's finish always commits, retried finishes return the original TID, undo and pack
 * effects, a client session's retried commit answered as the first time and never committed
 * again) and fails the seed on any difference from what the store answered.
 */
import { Command, Txn } from '../../src/storage/codec';
import { ApplyResult } from '../../src/storage/object-store';
import { Z64, hex, idCompare, idMax, idNext, p64, u64 } from '../../src/util/ids';
import { fail } from './kit';

export function objKey(st: string, oid: Uint8Array): string {
  return `${st}/${hex(oid)}`;
}

export function serialOf(b: Uint8Array | undefined): Buffer {
  return b && b.length > 0 ? Buffer.from(b) : Z64;
}

export function resultKey(r: ApplyResult): string {
  if (!r.ok) return `error ${r.error.kind}`;
  return (
    `ok` +
    (r.tid ? ` tid=${hex(r.tid)}` : '') +
    (r.oids ? ` oids=${r.oids.map(hex).join(',')}` : '') +
    (r.removed !== undefined ? ` removed=${r.removed}` : '')
  );
}

export function cmdKind(cmd: Command): string {
  return Object.keys(cmd)[0] ?? 'empty';
}

// ------------------------------------------------------------------------------------------
// The reference model: ZODB semantics over the committed history, in log order

interface ObjModel {
  serial: Buffer;
  deleted: boolean;
  /** Revisions, oldest first: whether each is a deletion, its data, and whose data it is. */
  revs: RevModel[];
}

interface RevModel {
  tid: Buffer;
  deleted: boolean;
  /** The data (hex; '' for a deletion). */
  data: string;
  /** The TID that wrote this data (an undo restores an older revision's data). */
  src: string;
}

interface TxnModel {
  state: 'prepared' | 'finished' | 'aborted';
  txn: Txn;
  tid?: Buffer;
}

export class Model {
  lastTid: Buffer = Z64;
  readonly objs = new Map<string, ObjModel>();
  /** objKey -> key of the voted transaction holding it. */
  readonly locks = new Map<string, string>();
  readonly txns = new Map<string, TxnModel>();
  /** TID -> storage and OIDs of every committed transaction. */
  readonly commits = new Map<string, { st: string; oids: Buffer[]; index: number }>();
  readonly nextOid = new Map<string, bigint>();
  readonly packTid = new Map<string, Buffer>();
  /** Client session -> its last sequence number and the answer it got (resultKey, no OIDs). */
  readonly sessions = new Map<string, { seq: number; answer: string }>();
  /** Session commits answered from the record (applied retries). */
  sessionReplays = 0;
  /** OIDs ever handed out by newOids, per storage. */
  readonly allocated = new Set<string>();

  private obj(st: string, oid: Uint8Array): ObjModel {
    return this.objs.get(objKey(st, oid)) ?? { serial: Z64, deleted: false, revs: [] };
  }

  /** The result the store must give for `cmd` at `index`; throws SimFailure on a mismatch with `r`. */
  apply(index: number, cmd: Command, r: ApplyResult): void {
    const where = `index ${index} (${cmdKind(cmd)})`;
    const expectErr = (kind: string): void => {
      if (r.ok || r.error.kind !== kind)
        fail(`model: ${where} should fail with ${kind}, store says ${resultKey(r)}`);
    };
    const expectOk = (): void => {
      if (!r.ok)
        fail(`model: ${where} should succeed, store says ${resultKey(r)}: ${r.error.message}`);
    };
    if ('commit' in cmd && cmd.commit?.sessionId) {
      // A client session's commit: the first answer applied is final (exactly once).
      const { sessionId, seq = 0 } = cmd.commit;
      const last = this.sessions.get(sessionId);
      if (last && seq < last.seq) return expectErr('SEQUENCE_OLD');
      if (last && seq === last.seq) {
        if (resultKey(r).replace(/ oids=.*/, '') !== last.answer)
          fail(
            `model: ${where} retry ${sessionId}#${seq} got ${resultKey(r)}, first ${last.answer}`,
          );
        this.sessionReplays++;
        return;
      }
      const bad = this.check(cmd.commit.txn, undefined);
      if (bad) expectErr(bad);
      else {
        expectOk();
        this.commit(index, where, cmd.commit.txn, cmd.commit.tid, r);
      }
      this.sessions.set(sessionId, { seq, answer: resultKey(r).replace(/ oids=.*/, '') });
    } else if ('commit' in cmd && cmd.commit) {
      const bad = this.check(cmd.commit.txn, undefined);
      if (bad) return expectErr(bad);
      expectOk();
      this.commit(index, where, cmd.commit.txn, cmd.commit.tid, r);
    } else if ('prepare' in cmd && cmd.prepare) {
      const st = cmd.prepare.txn.storage;
      const k = `${st}\0${cmd.prepare.txnId}`;
      const t = this.txns.get(k);
      if (t?.state === 'prepared') return expectOk(); // a retried vote
      if (t?.state === 'finished') return expectErr('INVALID');
      const bad = this.check(cmd.prepare.txn, undefined);
      if (bad) return expectErr(bad);
      expectOk();
      this.txns.set(k, { state: 'prepared', txn: cmd.prepare.txn });
      for (const o of this.lockedOids(cmd.prepare.txn)) this.locks.set(objKey(st, o), k);
    } else if ('finish' in cmd && cmd.finish) {
      const k = `${cmd.finish.storage}\0${cmd.finish.txnId}`;
      const t = this.txns.get(k);
      if (t?.state === 'finished') {
        // A retried finish answers with the original TID and commits nothing.
        expectOk();
        if (!r.ok || !r.tid || idCompare(r.tid, t.tid!) !== 0)
          fail(`model: ${where} retried finish of ${cmd.finish.txnId} gave ${resultKey(r)}`);
        return;
      }
      if (t?.state !== 'prepared') return expectErr('UNKNOWN_TRANSACTION');
      if (!r.ok)
        fail(`a successful prepare was followed by a failing finish: ${where}: ${resultKey(r)}`);
      for (const o of this.lockedOids(t.txn)) this.locks.delete(objKey(cmd.finish.storage, o));
      const bad = this.check(t.txn, undefined);
      if (bad) fail(`model: voted transaction ${cmd.finish.txnId} fails its check (${bad})`);
      t.tid = this.commit(index, where, t.txn, cmd.finish.tid, r);
      t.state = 'finished';
    } else if ('abort' in cmd && cmd.abort) {
      expectOk();
      const k = `${cmd.abort.storage}\0${cmd.abort.txnId}`;
      const t = this.txns.get(k);
      if (t?.state === 'prepared') {
        for (const o of this.lockedOids(t.txn)) this.locks.delete(objKey(cmd.abort.storage, o));
        t.state = 'aborted';
      }
    } else if ('newOids' in cmd && cmd.newOids) {
      expectOk();
      const st = cmd.newOids.storage;
      const next = this.nextOid.get(st) ?? 1n;
      const want = Array.from({ length: cmd.newOids.count }, (_, i) => hex(p64(next + BigInt(i))));
      const got = (r.ok && r.oids ? r.oids : []).map(hex);
      if (got.join(',') !== want.join(','))
        fail(`model: ${where} newOids gave ${got}, expected ${want}`);
      for (const h of got) {
        if (this.allocated.has(`${st}/${h}`) || this.objs.has(`${st}/${h}`))
          fail(`newOids handed out ${st}/${h} twice (or an OID already in use)`);
        this.allocated.add(`${st}/${h}`);
      }
      this.nextOid.set(st, next + BigInt(cmd.newOids.count));
    } else if ('undo' in cmd && cmd.undo) {
      this.undo(index, where, cmd.undo, r, expectErr, expectOk);
    } else if ('pack' in cmd && cmd.pack) {
      expectOk();
      const st = cmd.pack.storage;
      const req = Buffer.from(cmd.pack.packTid);
      const packTid = idMax(
        this.packTid.get(st) ?? Z64,
        idCompare(req, this.lastTid) > 0 ? this.lastTid : req,
      );
      this.packTid.set(st, packTid);
      // A deletion at or before the pack TID disappears with its object (unless a vote holds it).
      for (const [k, o] of this.objs) {
        if (!k.startsWith(`${st}/`) || !o.deleted || idCompare(o.serial, packTid) > 0) continue;
        if (this.locks.has(k)) continue;
        this.objs.set(k, { serial: Z64, deleted: false, revs: [] });
      }
    } else {
      // noop (empty entries, membership changes)
      expectOk();
      if (r.ok && (r.tid || r.oids)) fail(`model: ${where} noop returned ${resultKey(r)}`);
    }
  }

  private lockedOids(txn: Txn): Uint8Array[] {
    return [...(txn.stores ?? []), ...(txn.checks ?? [])].map((s) => s.oid);
  }

  /** The error kind the conflict check of `txn` must give, or undefined (checked in checkTxn's order). */
  private check(txn: Txn, own: string | undefined): string | undefined {
    const all = [
      ...(txn.stores ?? []).map((s) => ({ op: s, kind: 'CONFLICT' })),
      ...(txn.checks ?? []).map((c) => ({ op: c, kind: 'READ_CONFLICT' })),
    ];
    for (const { op, kind } of all) {
      const holder = this.locks.get(objKey(txn.storage, op.oid));
      if (holder !== undefined && holder !== own) return 'LOCKED';
      if (idCompare(serialOf(op.serial), this.obj(txn.storage, op.oid).serial) !== 0) return kind;
    }
    return undefined;
  }

  /** Record a successful commit: checks the TID rule and each object's serial chain. */
  private commit(
    index: number,
    where: string,
    txn: Txn,
    proposed: Uint8Array | undefined,
    r: ApplyResult,
    restores?: Map<string, { deleted: boolean; data: string; src?: string }>,
  ): Buffer {
    if (!r.ok || !r.tid) fail(`model: ${where} committed without a TID`);
    const want = idMax(
      proposed && proposed.length === 8 ? Buffer.from(proposed) : Z64,
      idNext(this.lastTid),
    );
    if (idCompare(r.tid, want) !== 0)
      fail(`TID rule: ${where} got ${hex(r.tid)}, expected max(proposed, last + 1) = ${hex(want)}`);
    if (idCompare(r.tid, this.lastTid) <= 0)
      fail(`TIDs not increasing in log order: ${where} ${hex(r.tid)} after ${hex(this.lastTid)}`);
    const stores = txn.stores ?? [];
    const got = (r.oids ?? []).map(hex).join(',');
    if (got !== stores.map((s) => hex(s.oid)).join(','))
      fail(`model: ${where} committed OIDs ${got}, the transaction stores others`);
    const st = txn.storage;
    let next = this.nextOid.get(st) ?? 1n;
    for (const s of stores) {
      const k = objKey(st, s.oid);
      const o = this.obj(st, s.oid);
      // Serial chain: the base serial of the new revision is the TID of the previous one.
      if (idCompare(serialOf(s.serial), o.serial) !== 0)
        fail(
          `serial chain broken: ${where} stores ${k} on ${hex(serialOf(s.serial))}, previous revision is ${hex(o.serial)}`,
        );
      const restored = restores?.get(k);
      const deleted = restored ? restored.deleted : s.delete === true;
      const rev: RevModel = restored
        ? { tid: r.tid, deleted, data: restored.data, src: restored.src ?? hex(r.tid) }
        : {
            tid: r.tid,
            deleted,
            data: deleted ? '' : hex(s.data ?? Z64.subarray(0, 0)),
            src: hex(r.tid),
          };
      this.objs.set(k, { serial: r.tid, deleted, revs: [...o.revs, rev] });
      const n = u64(s.oid);
      if (n >= next) next = n + 1n;
    }
    this.nextOid.set(st, next);
    this.lastTid = r.tid;
    this.commits.set(hex(r.tid), { st, oids: stores.map((s) => Buffer.from(s.oid)), index });
    return r.tid;
  }

  private undo(
    index: number,
    where: string,
    u: { tid: Uint8Array; storage: string; undoTid: Uint8Array },
    r: ApplyResult,
    expectErr: (k: string) => void,
    expectOk: () => void,
  ): void {
    const st = u.storage;
    const undone = this.commits.get(hex(u.undoTid));
    if (!undone || undone.st !== st) return expectErr('NOT_FOUND');
    const packTid = this.packTid.get(st) ?? Z64;
    if (idCompare(packTid, Z64) !== 0 && idCompare(u.undoTid, packTid) <= 0)
      return expectErr('HISTORY_PACKED');
    // FileStorage's rule: an object goes back to its revision before undoTid when its current
    // revision holds what undoTid wrote (that transaction's data, or equal bytes); undoing a
    // creation deletes it; anything else conflicts.
    const stores: NonNullable<Txn['stores']> = [];
    const restores = new Map<string, { deleted: boolean; data: string; src?: string }>();
    let conflict = false;
    for (const oid of undone.oids) {
      const o = this.obj(st, oid);
      const cur = o.revs[o.revs.length - 1];
      const gone = o.revs.find((x) => idCompare(x.tid, u.undoTid) === 0);
      if (!cur || !gone || idCompare(cur.tid, o.serial) !== 0) return expectErr('UNDO_CONFLICT');
      const same = cur.src === gone.src || (cur.deleted === gone.deleted && cur.data === gone.data);
      const before = o.revs.filter((x) => idCompare(x.tid, u.undoTid) < 0);
      const prev = before[before.length - 1];
      if (!same && (!prev || prev.deleted || cur.deleted)) return expectErr('UNDO_CONFLICT');
      if (!same) conflict = true; // would need conflict resolution
      stores.push({ oid, serial: o.serial });
      restores.set(
        objKey(st, oid),
        prev && !prev.deleted
          ? { deleted: false, data: prev.data, src: prev.src }
          : { deleted: true, data: '' },
      );
    }
    if (conflict) return expectErr('UNDO_CONFLICT');
    const txn: Txn = { storage: st, stores };
    const bad = this.check(txn, undefined);
    if (bad) return expectErr(bad);
    expectOk();
    this.commit(index, where, txn, u.tid, r, restores);
  }
}
