/**
 * Storage conformance, modelled on ZODB's storage test mix-ins (BasicStorage, MVCCStorage /
 * RevisionStorage, HistoryStorage, TransactionalUndoStorage, PackableStorage, IteratorStorage,
 * ReadConflict, Synchronization, persistence), run against the real ObjectStore on LevelDB.
 */
import * as assert from 'node:assert/strict';
import { AssertionError } from '../../src/util/assert';
import { StorageError } from '../../src/storage/errors';
import {
  CommitEvent,
  InstallStep,
  MAX_NEW_OIDS,
  ObjectStore,
  VOTE_RENEW_MAX_MS,
} from '../../src/storage/object-store';
import { Z64, hex, idCompare, p64, tidFromTime, tidToTime, u64 } from '../../src/util/ids';
import {
  ST,
  TestStore,
  collect,
  data,
  expectError,
  mustTid,
  oid,
  rejectsWith,
  tempDir,
  tidOf,
} from './helpers';

function assertIncreasing(tids: Buffer[]): void {
  for (let i = 1; i < tids.length; i++) {
    assert.ok(idCompare(tids[i - 1], tids[i]) < 0, `TID ${i} does not increase`);
  }
}

describe('ObjectStore conformance', function () {
  let t: TestStore;
  const extra: TestStore[] = [];

  beforeEach(async function () {
    t = await TestStore.create();
  });

  afterEach(async function () {
    await t.destroy();
    for (const x of extra.splice(0)) await x.destroy();
  });

  describe('BasicStorage', function () {
    it('stores a new object with the z64 serial and loads it back with the commit TID as serial', async function () {
      const tid = await t.put(oid(1), Z64, 'hello');
      const r = await t.store.load(ST, oid(1));
      assert.deepEqual(r.data, data('hello'));
      assert.deepEqual(r.serial, tid);
      assert.deepEqual(t.store.lastTid, tid);
      assert.deepEqual(t.store.storageSummary(ST).lastTid, tid);
    });

    it('treats an empty serial as z64 for a new object', async function () {
      const tid = await t.put(oid(1), Buffer.alloc(0), 'x');
      assert.deepEqual((await t.store.load(ST, oid(1))).serial, tid);
    });

    it('stores a second revision based on the current serial', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      assert.ok(idCompare(s1, s2) < 0);
      const r = await t.store.load(ST, oid(1));
      assert.deepEqual(r, { data: data('v2'), serial: s2 });
    });

    it('answers NOT_FOUND for an unknown object on every read', async function () {
      await rejectsWith(t.store.load(ST, oid(7)), 'NOT_FOUND');
      await rejectsWith(t.store.loadBefore(ST, oid(7), tidOf(5)), 'NOT_FOUND');
      await rejectsWith(t.store.loadSerial(ST, oid(7), tidOf(5)), 'NOT_FOUND');
      await rejectsWith(t.store.history(ST, oid(7), 10), 'NOT_FOUND');
      // not-found is permanent, not something a client should retry
      await t.store.load(ST, oid(7)).catch((e: StorageError) => assert.equal(e.transient, false));
    });

    it('reports a stale serial as a CONFLICT naming oid, expected and actual serial and the current data', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const before = t.store.lastTid;
      const e = expectError(
        await t.commit([{ oid: oid(1), serial: s1, data: data('v3') }]),
        'CONFLICT',
      );
      assert.equal(e.transient, true);
      assert.deepEqual(e.conflict?.oid, oid(1));
      assert.deepEqual(e.conflict?.expected, s1);
      assert.deepEqual(e.conflict?.actual, s2);
      assert.deepEqual(e.conflict?.currentData, data('v2'));
      assert.deepEqual(t.store.lastTid, before, 'a failed commit does not take a TID');
      assert.equal(t.store.appliedIndex, t.index, 'a failed command is still applied');
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('v2'));
    });

    it('reports a CONFLICT when a new object is stored over an existing one', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const e = expectError(
        await t.commit([{ oid: oid(1), serial: Z64, data: data('x') }]),
        'CONFLICT',
      );
      assert.deepEqual(e.conflict?.expected, Z64);
      assert.deepEqual(e.conflict?.actual, s1);
    });

    it('writes nothing of a transaction when one of its stores conflicts', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await t.put(oid(1), s1, 'b');
      const e = expectError(
        await t.commit([
          { oid: oid(2), serial: Z64, data: data('new') },
          { oid: oid(1), serial: s1, data: data('stale') },
        ]),
        'CONFLICT',
      );
      assert.deepEqual(e.conflict?.oid, oid(1));
      await rejectsWith(t.store.load(ST, oid(2)), 'NOT_FOUND');
      assert.equal(t.store.storageSummary(ST).objectCount, 1);
    });

    it('has no spurious conflicts: transactions from one snapshot touching different objects both commit', async function () {
      const sa = await t.put(oid(1), Z64, 'a');
      const sb = await t.put(oid(2), Z64, 'b');
      // both "clients" read at the same point, then write disjoint objects
      const t1 = await t.put(oid(1), sa, 'a2');
      const t2 = await t.put(oid(2), sb, 'b2');
      assert.ok(idCompare(t1, t2) < 0);
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('a2'));
      assert.deepEqual((await t.store.load(ST, oid(2))).data, data('b2'));
    });

    it('commits several objects atomically under one TID', async function () {
      const tid = await t.mustCommit([
        { oid: oid(1), serial: Z64, data: data('a') },
        { oid: oid(2), serial: Z64, data: data('b') },
      ]);
      assert.deepEqual((await t.store.load(ST, oid(1))).serial, tid);
      assert.deepEqual((await t.store.load(ST, oid(2))).serial, tid);
      assert.equal(t.store.storageSummary(ST).objectCount, 2);
    });

    it('deletes an object: load is NOT_FOUND, history keeps the deletion, re-creation is based on the deletion', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const r = await t.commit([{ oid: oid(1), serial: s1, delete: true }]);
      const sd = mustTid(r);
      assert.deepEqual(r.ok && r.oids, [oid(1)]);
      await rejectsWith(t.store.load(ST, oid(1)), 'NOT_FOUND');
      await rejectsWith(t.store.loadSerial(ST, oid(1), sd), 'NOT_FOUND');
      assert.equal(t.store.storageSummary(ST).objectCount, 0);
      const h = await t.store.history(ST, oid(1), 10);
      assert.deepEqual(
        h.map((x) => [x.tid, x.size]),
        [
          [sd, 0],
          [s1, 2],
        ],
      );
      // a stale delete conflicts like a stale store
      expectError(await t.commit([{ oid: oid(1), serial: s1, delete: true }]), 'CONFLICT');
      const s3 = await t.put(oid(1), sd, 'again');
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('again'), serial: s3 });
      assert.equal(t.store.storageSummary(ST).objectCount, 1);
    });

    it('rejects malformed commands as INVALID results without crashing', async function () {
      const invalid = [
        { commit: { tid: Z64, txn: { storage: '', stores: [] } } },
        {
          commit: {
            tid: Z64,
            txn: { storage: ST, stores: [{ oid: Buffer.alloc(3), data: data('x') }] },
          },
        },
        {
          commit: {
            tid: Z64,
            txn: {
              storage: ST,
              stores: [{ oid: oid(1), serial: Buffer.alloc(4), data: data('x') }],
            },
          },
        },
        {
          commit: {
            tid: Z64,
            txn: {
              storage: ST,
              stores: [{ oid: oid(1), data: data('x') }],
              checks: [{ oid: oid(1) }],
            },
          },
        },
        { undo: { tid: Z64, storage: ST, undoTid: Buffer.alloc(2) } },
        { pack: { storage: ST, packTid: Buffer.alloc(9) } },
        { newOids: { storage: ST, count: 0 } },
        { newOids: { storage: ST, count: MAX_NEW_OIDS + 1 } },
        { newOids: { storage: '', count: 1 } },
        { prepare: { txnId: '', txn: { storage: ST, stores: [] } } },
        {} as never,
      ];
      for (const cmd of invalid) expectError(await t.apply(cmd), 'INVALID');
      assert.equal(t.store.appliedIndex, invalid.length);
      assert.deepEqual(t.store.lastTid, Z64);
    });

    it('rejects storage names that do not fit the key layout as INVALID results, not crashes', async function () {
      const long = 'x'.repeat(65);
      const cmds = [
        {
          commit: { tid: Z64, txn: { storage: long, stores: [{ oid: oid(1), data: data('x') }] } },
        },
        {
          prepare: {
            txnId: 'a',
            txn: { storage: long, stores: [{ oid: oid(1), data: data('x') }] },
          },
        },
        { finish: { storage: '', txnId: 'a', tid: Z64 } },
        { finish: { storage: long, txnId: 'a', tid: Z64 } },
        { undo: { tid: Z64, storage: '', undoTid: tidOf(1) } },
        { pack: { storage: '', packTid: tidOf(1) } },
        { pack: { storage: long, packTid: tidOf(1) } },
        { newOids: { storage: long, count: 1 } },
        { abort: { storage: '', txnId: 'a' } },
        { finish: { txnId: 'a', tid: Z64 } } as never, // a decoded command with the field absent
      ];
      for (const cmd of cmds) expectError(await t.apply(cmd), 'INVALID');
      assert.equal(t.store.appliedIndex, cmds.length);
      // the store is still usable
      await t.put(oid(1), Z64, 'ok');
    });

    it('rejects commands that would overflow the OID counter as INVALID results, not crashes', async function () {
      const maxOid = p64((1n << 64n) - 1n);
      expectError(await t.commit([{ oid: maxOid, serial: Z64, data: data('x') }]), 'INVALID');
      expectError(await t.commit([{ oid: maxOid, serial: Z64, delete: true }]), 'INVALID');
      // the next-to-last OID is fine, and so is checking the last one
      await t.put(p64((1n << 64n) - 2n), Z64, 'almost');
      mustTid(await t.commit([], { checks: [{ oid: maxOid, serial: Z64 }] }));
      // the counter is now at the last OID, which is never handed out either
      assert.deepEqual(t.store.storageSummary(ST).nextOid, maxOid);
      expectError(await t.apply({ newOids: { storage: ST, count: 1 } }), 'INVALID');
      assert.deepEqual(t.store.storageSummary(ST).nextOid, maxOid);
    });
  });

  describe('MVCCStorage / RevisionStorage: loadBefore and loadSerial', function () {
    it('returns the revision with start < tid <= end, and no end for the current revision', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const s3 = await t.put(oid(1), s2, 'v3');
      const next = (b: Buffer) => p64(u64(b) + 1n);

      assert.deepEqual(await t.store.loadBefore(ST, oid(1), s2), {
        found: true,
        data: data('v1'),
        start: s1,
        end: s2,
      });
      assert.deepEqual(await t.store.loadBefore(ST, oid(1), next(s1)), {
        found: true,
        data: data('v1'),
        start: s1,
        end: s2,
      });
      assert.deepEqual(await t.store.loadBefore(ST, oid(1), s3), {
        found: true,
        data: data('v2'),
        start: s2,
        end: s3,
      });
      const cur = await t.store.loadBefore(ST, oid(1), next(s3));
      assert.deepEqual(cur, { found: true, data: data('v3'), start: s3, end: undefined });
      const far = await t.store.loadBefore(ST, oid(1), p64((1n << 64n) - 1n));
      assert.equal(far.end, undefined);
      assert.deepEqual(far.start, s3);
    });

    it('answers found:false when the object has no revision before the TID', async function () {
      await t.put(oid(2), Z64, 'other');
      const s1 = await t.put(oid(1), Z64, 'v1');
      assert.deepEqual(await t.store.loadBefore(ST, oid(1), s1), { found: false });
      assert.deepEqual(await t.store.loadBefore(ST, oid(1), tidOf(1)), { found: false });
    });

    it('answers NOT_FOUND for an unknown oid and for a time when the object was deleted', async function () {
      await rejectsWith(t.store.loadBefore(ST, oid(9), tidOf(1)), 'NOT_FOUND');
      const s1 = await t.put(oid(1), Z64, 'v1');
      const sd = await t.mustCommit([{ oid: oid(1), serial: s1, delete: true }]);
      await rejectsWith(t.store.loadBefore(ST, oid(1), p64(u64(sd) + 1n)), 'NOT_FOUND');
      assert.deepEqual((await t.store.loadBefore(ST, oid(1), sd)).data, data('v1'));
    });

    it('loadSerial returns each revision by its serial and NOT_FOUND for serials it never had', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const other = await t.put(oid(2), Z64, 'x');
      assert.deepEqual(await t.store.loadSerial(ST, oid(1), s1), data('v1'));
      assert.deepEqual(await t.store.loadSerial(ST, oid(1), s2), data('v2'));
      await rejectsWith(t.store.loadSerial(ST, oid(1), other), 'NOT_FOUND');
      await rejectsWith(t.store.loadSerial(ST, oid(1), tidOf(1e9)), 'NOT_FOUND');
    });
  });

  describe('HistoryStorage', function () {
    it('lists revisions newest first with transaction metadata, limited by size', async function () {
      const s1 = await t.put(oid(1), Z64, 'a', { user: 'alice', description: 'first' });
      const s2 = await t.put(oid(1), s1, 'bb', {
        user: 'bob',
        description: 'second',
        extension: Buffer.from([1, 2, 3]),
      });
      const s3 = await t.put(oid(1), s2, 'ccc');
      const h = await t.store.history(ST, oid(1), 10);
      assert.deepEqual(h, [
        { tid: s3, user: '', description: '', extension: Buffer.alloc(0), size: 3 },
        { tid: s2, user: 'bob', description: 'second', extension: Buffer.from([1, 2, 3]), size: 2 },
        { tid: s1, user: 'alice', description: 'first', extension: Buffer.alloc(0), size: 1 },
      ]);
      assert.deepEqual(
        (await t.store.history(ST, oid(1), 2)).map((x) => x.tid),
        [s3, s2],
      );
      assert.deepEqual(
        (await t.store.history(ST, oid(1), 1)).map((x) => x.tid),
        [s3],
      );
    });
  });

  describe('TIDs', function () {
    it("names each commit's previous TID in its storage, the same after a restart (a seek) as before (remembered)", async function () {
      const want: Array<[string, Buffer, Buffer]> = [];
      const last = new Map<string, Buffer>([
        [ST, Z64],
        ['two', Z64],
      ]);
      const serials = new Map<string, Buffer>();
      for (let i = 0; i < 12; i++) {
        const st = i % 3 === 0 ? 'two' : ST;
        const o = oid(1 + (i % 2));
        const tid = await t.put(o, serials.get(`${st}/${i % 2}`) ?? Z64, `v${i}`, { storage: st });
        serials.set(`${st}/${i % 2}`, tid);
        want.push([st, tid, last.get(st)!]);
        last.set(st, tid);
      }
      const answers = async (): Promise<string[]> =>
        Promise.all(want.map(async ([st, tid]) => hex(await t.store.previousTid(st, tid))));
      const expected = want.map(([, , prev]) => hex(prev));
      assert.deepEqual(await answers(), expected);
      await t.reopen();
      assert.deepEqual(await answers(), expected);
    });

    it('strictly increase even when the proposed TID goes backwards', async function () {
      const now = Date.UTC(2030, 0, 1);
      const proposals = [now, now, now - 60_000, now - 86_400_000, now + 1, 0];
      const tids: Buffer[] = [];
      let serial = Z64;
      for (const ms of proposals) {
        serial = await t.put(oid(1), serial, `v${tids.length}`, { tid: tidFromTime(ms) });
        tids.push(serial);
      }
      assertIncreasing(tids);
      assert.deepEqual(
        tids[0],
        tidFromTime(now),
        'a proposed TID ahead of the last one is used as is',
      );
      assert.deepEqual(tids[1], p64(u64(tids[0]) + 1n), 'otherwise the TID is last + 1');
      assert.deepEqual(t.store.lastTid, tids[tids.length - 1]);
    });

    it('uses the proposed TID when it is ahead and increases across storages', async function () {
      const a = await t.put(oid(1), Z64, 'a', { tid: tidOf(1000) });
      const b = await t.put(oid(1), Z64, 'b', { tid: tidOf(500), storage: 'two' });
      const c = await t.put(oid(1), a, 'c', { tid: tidOf(2000) });
      assert.deepEqual([a, b, c], [tidOf(1000), tidOf(1001), tidOf(2000)]);
      assert.deepEqual(t.store.storageSummary('two').lastTid, tidOf(1001));
      assert.deepEqual(t.store.storageSummary(ST).lastTid, tidOf(2000));
    });

    it('use the TimeStamp layout: a TID is a readable UTC time', function () {
      // minutes since 1900-01-01 in the high word, seconds scaled by 2^32/60 in the low word
      assert.deepEqual(tidFromTime(Date.UTC(1900, 0, 1)), Z64);
      const t2000 = tidFromTime(Date.UTC(2000, 0, 1, 0, 0, 30));
      assert.equal(t2000.readUInt32BE(0), 100 * 12 * 31 * 24 * 60);
      assert.equal(t2000.readUInt32BE(4), 2 ** 31);
      for (const ms of [
        Date.UTC(2024, 1, 29, 23, 59, 59, 999),
        Date.UTC(2026, 10, 25, 12, 0, 0, 123),
        Date.UTC(1999, 11, 31, 23, 59, 0, 1),
        1_750_000_000_000,
      ]) {
        const back = tidToTime(tidFromTime(ms));
        assert.ok(Math.abs(back - ms) < 1, `${new Date(ms).toISOString()} came back as ${back}`);
      }
      let prev = tidFromTime(Date.UTC(2025, 0, 1));
      for (let ms = Date.UTC(2025, 0, 1) + 997; ms < Date.UTC(2025, 0, 3); ms += 3_600_017) {
        const cur = tidFromTime(ms);
        assert.ok(idCompare(prev, cur) < 0, 'TIDs order like the times they encode');
        prev = cur;
      }
    });
  });

  describe('newOids', function () {
    it('hands out unique increasing OIDs starting at 1 and bumps past stored OIDs', async function () {
      const r1 = await t.apply({ newOids: { storage: ST, count: 3 } });
      assert.ok(r1.ok);
      assert.deepEqual(r1.oids, [oid(1), oid(2), oid(3)]);
      const r2 = await t.apply({ newOids: { storage: ST, count: 2 } });
      assert.ok(r2.ok);
      assert.deepEqual(r2.oids, [oid(4), oid(5)]);
      // a client stored an OID beyond the counter (e.g. handed out before a failover)
      await t.put(oid(100), Z64, 'far');
      const r3 = await t.apply({ newOids: { storage: ST, count: 1 } });
      assert.ok(r3.ok);
      assert.deepEqual(r3.oids, [oid(101)]);
      // stores below the counter do not move it back
      await t.put(oid(2), Z64, 'near');
      const r4 = await t.apply({ newOids: { storage: ST, count: 1 } });
      assert.ok(r4.ok);
      assert.deepEqual(r4.oids, [oid(102)]);
      assert.deepEqual(t.store.storageSummary(ST).nextOid, oid(103));
      // per storage
      const other = await t.apply({ newOids: { storage: 'other', count: 1 } });
      assert.ok(other.ok);
      assert.deepEqual(other.oids, [oid(1)]);
    });

    it('keeps the counter across close and reopen', async function () {
      await t.apply({ newOids: { storage: ST, count: 10 } });
      await t.reopen();
      const r = await t.apply({ newOids: { storage: ST, count: 1 } });
      assert.ok(r.ok);
      assert.deepEqual(r.oids, [oid(11)]);
    });
  });

  describe('two-phase commit', function () {
    const prepare = (txnId: string, stores: any[], checks: any[] = [], storage = ST) =>
      t.apply({ prepare: { txnId, txn: { storage, stores, checks }, deadlineMs: 1234 } });

    it('vote locks its objects: a commit or vote on them gets LOCKED, a disjoint commit succeeds', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      assert.deepEqual(await prepare('t1', [{ oid: oid(1), serial: s1, data: data('b') }]), {
        ok: true,
      });
      assert.equal(t.store.lockHolder(ST, oid(1)), 't1');
      assert.deepEqual(t.store.preparedTransactions(), [
        { storage: ST, txnId: 't1', deadlineMs: 1234, oids: [oid(1)] },
      ]);
      const e = expectError(
        await t.commit([{ oid: oid(1), serial: s1, data: data('c') }]),
        'LOCKED',
      );
      assert.equal(e.transient, true);
      expectError(await prepare('t2', [{ oid: oid(1), serial: s1, data: data('c') }]), 'LOCKED');
      // a read-only check of a locked object also waits for the voted transaction
      expectError(await t.commit([], { checks: [{ oid: oid(1), serial: s1 }] }), 'LOCKED');
      await t.put(oid(2), Z64, 'disjoint');
      // reads are not blocked and still see the committed state
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('a'));
      // the same oid in another storage is not locked
      await t.put(oid(1), Z64, 'elsewhere', { storage: 'other' });
    });

    it('finish commits with a TID, releases the locks and emits one commit event', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      const events: CommitEvent[] = [];
      t.store.onCommit((ev) => events.push(ev));
      await prepare('t1', [
        { oid: oid(1), serial: s1, data: data('b') },
        { oid: oid(2), serial: Z64, data: data('new') },
      ]);
      const r = await t.apply({
        finish: { storage: ST, txnId: 't1', tid: tidFromTime(Date.UTC(2040, 0, 1)) },
      });
      const tid = mustTid(r);
      assert.deepEqual(tid, tidFromTime(Date.UTC(2040, 0, 1)));
      assert.deepEqual(r.ok && r.oids, [oid(1), oid(2)]);
      assert.equal(t.store.lockHolder(ST, oid(1)), undefined);
      assert.deepEqual(t.store.preparedTransactions(), []);
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('b'), serial: tid });
      assert.deepEqual(
        events.map((e) => e.tid),
        [tid],
      );
      await t.put(oid(1), tid, 'c');
    });

    it('a retry-only vote under a voted id is accepted only with the same content', async function () {
      const vote = (d: string) =>
        t.apply({
          prepare: {
            txnId: 'k/1',
            txn: { storage: ST, stores: [{ oid: oid(1), serial: Z64, data: data(d) }] },
            deadlineMs: 1234,
            retryOnly: true,
          },
        });
      assert.deepEqual(await vote('first'), { ok: true });
      const e = expectError(await vote('second'), 'DUPLICATE_ID');
      assert.match(e.message, /already voted with a different content/);
      assert.deepEqual(await vote('first'), { ok: true }, 'an identical vote is a retry');
      const tid = mustTid(await t.apply({ finish: { storage: ST, txnId: 'k/1', tid: Z64 } }));
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('first'), serial: tid });
    });

    it('finish twice returns the same TID without committing again', async function () {
      await prepare('t1', [{ oid: oid(1), serial: Z64, data: data('a') }]);
      const tid = mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }));
      const events: CommitEvent[] = [];
      t.store.onCommit((ev) => events.push(ev));
      const again = await t.apply({ finish: { storage: ST, txnId: 't1', tid: tidOf(1) } });
      assert.deepEqual(mustTid(again), tid);
      assert.deepEqual(t.store.lastTid, tid);
      assert.equal(events.length, 0);
      await t.reopen();
      assert.deepEqual(
        mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } })),
        tid,
      );
      // a finished transaction id cannot be voted again
      expectError(await prepare('t1', [{ oid: oid(3), serial: Z64, data: data('x') }]), 'INVALID');
    });

    it('a retried vote succeeds without taking the locks twice', async function () {
      const stores = [{ oid: oid(1), serial: Z64, data: data('a') }];
      assert.ok((await prepare('t1', stores)).ok);
      assert.ok((await prepare('t1', stores)).ok);
      assert.equal(t.store.preparedTransactions().length, 1);
      mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }));
    });

    it('a vote whose serials are stale fails with CONFLICT and holds nothing', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await t.put(oid(1), s1, 'b');
      expectError(await prepare('t1', [{ oid: oid(1), serial: s1, data: data('c') }]), 'CONFLICT');
      assert.equal(t.store.lockHolder(ST, oid(1)), undefined);
      expectError(
        await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }),
        'UNKNOWN_TRANSACTION',
      );
    });

    it('once voted, finish succeeds whatever else committed in between', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await prepare('t1', [{ oid: oid(1), serial: s1, data: data('mine') }]);
      for (let i = 0; i < 5; i++) await t.put(oid(10 + i), Z64, `other${i}`, { tid: tidOf(1e12) });
      const tid = mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }));
      assert.ok(idCompare(tid, tidOf(1e12)) > 0);
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('mine'));
    });

    it('abort releases the locks; finish after abort is UNKNOWN_TRANSACTION; abort of unknown is ok', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await prepare('t1', [{ oid: oid(1), serial: s1, data: data('b') }]);
      assert.deepEqual(await t.apply({ abort: { storage: ST, txnId: 't1', reason: 'timeout' } }), {
        ok: true,
      });
      assert.equal(t.store.lockHolder(ST, oid(1)), undefined);
      expectError(
        await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }),
        'UNKNOWN_TRANSACTION',
      );
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('a'));
      await t.put(oid(1), s1, 'c');
      assert.deepEqual(await t.apply({ abort: { storage: ST, txnId: 'never' } }), { ok: true });
    });

    it('a timeout abort decided before a renewal was applied leaves the vote finishable', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await prepare('t1', [{ oid: oid(1), serial: s1, data: data('b') }]); // deadline 1234
      // The leader saw deadline 1234 pass and proposed the abort; the owner's renewal got in first.
      await t.apply({ renew: { storage: ST, txnId: 't1', deadlineMs: 2000 } });
      const late = { storage: ST, txnId: 't1', reason: 'timeout', expiredDeadlineMs: 1234 };
      assert.deepEqual(await t.apply({ abort: late }), { ok: true });
      assert.equal(t.store.lockHolder(ST, oid(1)), 't1');
      // An abort decided on the current deadline (no renewal since) does abort.
      await t.apply({ abort: { ...late, expiredDeadlineMs: 2000 } });
      assert.equal(t.store.lockHolder(ST, oid(1)), undefined);
      expectError(
        await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }),
        'UNKNOWN_TRANSACTION',
      );
    });

    it('a vote renewed after the leader saw it expire is finished with its data', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await prepare('t1', [{ oid: oid(1), serial: s1, data: data('b') }]);
      await t.apply({ renew: { storage: ST, txnId: 't1', deadlineMs: 2000 } });
      await t.apply({
        abort: { storage: ST, txnId: 't1', reason: 'timeout', expiredDeadlineMs: 1234 },
      });
      mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }));
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('b'));
    });

    it('finish of a transaction that was never voted is UNKNOWN_TRANSACTION', async function () {
      const e = expectError(
        await t.apply({ finish: { storage: ST, txnId: 'nope', tid: Z64 } }),
        'UNKNOWN_TRANSACTION',
      );
      assert.equal(e.transient, false);
    });

    describe('at a given TID (restore)', function () {
      const at = (txnId: string, tid: Buffer, stores: any[], status?: string, storage = ST) =>
        t.apply({
          prepare: { txnId, txn: { storage, stores, status }, deadlineMs: 1234, tid },
        });

      it('commits at the TID with its status, restored records as given, and backpointers that hold', async function () {
        const [t1, t2, t3] = [tidOf(10), tidOf(20), tidOf(30)];
        assert.deepEqual(
          await at('r1', t1, [
            { oid: oid(1), data: data('a'), restore: true },
            { oid: oid(2), data: data('b'), restore: true },
          ]),
          { ok: true },
        );
        assert.deepEqual(
          mustTid(await t.apply({ finish: { storage: ST, txnId: 'r1', tid: tidOf(99) } })),
          t1,
        );
        // No serial check; a record without data; a backpointer to the same data is kept, one to
        // other data (or to a transaction that did not write the object) is dropped.
        assert.ok(
          (
            await at(
              'r2',
              t2,
              [
                { oid: oid(1), data: data('a'), dataTid: t1, restore: true },
                { oid: oid(2), delete: true, dataTid: t1, restore: true },
                { oid: oid(3), data: data('c'), dataTid: t1, restore: true },
              ],
              'p',
            )
          ).ok,
        );
        mustTid(await t.apply({ finish: { storage: ST, txnId: 'r2', tid: Z64 } }));
        assert.ok(
          (await at('r3', t3, [{ oid: oid(1), data: data('x'), dataTid: t1, restore: true }])).ok,
        );
        mustTid(await t.apply({ finish: { storage: ST, txnId: 'r3', tid: Z64 } }));
        const all = await collect(t.store.iterate(ST));
        assert.deepEqual(
          all.map((x) => [x.tid, x.status]),
          [
            [t1, ' '],
            [t2, 'p'],
            [t3, ' '],
          ],
        );
        assert.deepEqual(all[1].records, [
          { oid: oid(1), data: data('a'), deleted: false, dataTid: t1 },
          { oid: oid(2), data: Buffer.alloc(0), deleted: true, dataTid: Z64 },
          { oid: oid(3), data: data('c'), deleted: false, dataTid: Z64 },
        ]);
        assert.deepEqual(all[2].records[0].dataTid, Z64);
        await rejectsWith(t.store.load(ST, oid(2)), 'NOT_FOUND');
        assert.deepEqual(t.store.lastTid, t3);
        // Afterwards an ordinary store: later TIDs, conflict checks against the restored serials.
        expectError(await t.commit([{ oid: oid(1), serial: t2, data: data('y') }]), 'CONFLICT');
        assert.ok(idCompare(await t.put(oid(1), t3, 'y'), t3) > 0);
      });

      it('refuses a TID not above the last of every storage (INVALID, naming both)', async function () {
        await t.put(oid(1), Z64, 'a', { storage: 'other' });
        const last = t.store.lastTid;
        for (const tid of [last, tidOf(1), Buffer.alloc(8, 0xff)]) {
          const e = expectError(
            await at('r', tid, [{ oid: oid(5), data: data('x'), restore: true }]),
            'INVALID',
          );
          assert.match(e.message, /is not above the last TID|is the largest/);
        }
        assert.deepEqual(t.store.preparedTransactions(), []);
      });

      it('holds every other commit and vote until its finish or abort, also across reopen', async function () {
        const s1 = await t.put(oid(1), Z64, 'a');
        // Votes only when nothing else is voted.
        assert.ok((await prepare('t1', [{ oid: oid(1), serial: s1, data: data('b') }])).ok);
        const tid = p64(u64(t.store.lastTid) + 100n);
        expectError(
          await at('r1', tid, [{ oid: oid(9), data: data('r'), restore: true }]),
          'LOCKED',
        );
        mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }));
        const at2 = p64(u64(t.store.lastTid) + 100n);
        assert.ok((await at('r1', at2, [{ oid: oid(9), data: data('r'), restore: true }])).ok);
        await t.reopen();
        // Nothing else commits or votes, in any storage, nor undoes; the lock is everyone's.
        expectError(await t.commit([{ oid: oid(2), serial: Z64, data: data('c') }]), 'LOCKED');
        expectError(
          await t.commit([{ oid: oid(2), serial: Z64, data: data('c') }], { storage: 'other' }),
          'LOCKED',
        );
        expectError(await prepare('t2', [{ oid: oid(3), serial: Z64, data: data('d') }]), 'LOCKED');
        expectError(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s1 } }), 'LOCKED');
        assert.equal(t.store.lockedForOthers('other', oid(4), 't2', false), true);
        assert.equal(t.store.lockedForOthers(ST, oid(4), 'r1', false), false);
        // Its own vote again is a retry, not another vote.
        assert.ok((await at('r1', at2, [{ oid: oid(9), data: data('r'), restore: true }])).ok);
        assert.deepEqual(
          mustTid(await t.apply({ finish: { storage: ST, txnId: 'r1', tid: Z64 } })),
          at2,
        );
        assert.ok(idCompare(await t.put(oid(2), Z64, 'c'), at2) > 0);
        // An abort releases it too.
        const at3 = p64(u64(t.store.lastTid) + 100n);
        assert.ok((await at('r2', at3, [{ oid: oid(8), data: data('q'), restore: true }])).ok);
        expectError(await t.commit([{ oid: oid(3), serial: Z64, data: data('d') }]), 'LOCKED');
        assert.ok((await t.apply({ abort: { storage: ST, txnId: 'r2' } })).ok);
        mustTid(await t.commit([{ oid: oid(3), serial: Z64, data: data('d') }]));
        await rejectsWith(t.store.load(ST, oid(8)), 'NOT_FOUND');
      });
    });

    it('voted transactions and their locks survive close and reopen', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      await prepare(
        't1',
        [{ oid: oid(1), serial: s1, data: data('b') }],
        [{ oid: oid(2), serial: Z64 }],
      );
      await t.reopen();
      assert.equal(t.store.lockHolder(ST, oid(1)), 't1');
      assert.equal(t.store.lockHolder(ST, oid(2)), 't1');
      assert.deepEqual(t.store.preparedTransactions(), [
        { storage: ST, txnId: 't1', deadlineMs: 1234, oids: [oid(1), oid(2)] },
      ]);
      expectError(await t.commit([{ oid: oid(1), serial: s1, data: data('c') }]), 'LOCKED');
      const tid = mustTid(await t.apply({ finish: { storage: ST, txnId: 't1', tid: Z64 } }));
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('b'), serial: tid });
      await rejectsWith(t.store.load(ST, oid(2)), 'NOT_FOUND');
      assert.equal(t.store.lockHolder(ST, oid(2)), undefined);
    });

    it('keeps the owner node and first deadline of a vote, across renewal, a vote again and reopen', async function () {
      const owned = (txnId: string, owner: string) =>
        t.apply({
          prepare: {
            txnId,
            txn: { storage: ST, stores: [{ oid: oid(1), serial: Z64, data: data('a') }] },
            deadlineMs: 1234,
            owner,
          },
        });
      assert.deepEqual(await owned('t1', 'n2'), { ok: true });
      const summary = { storage: ST, txnId: 't1', deadlineMs: 1234, oids: [oid(1)] };
      const ownedBy = { owner: 'n2', votedDeadlineMs: 1234 };
      assert.deepEqual(t.store.preparedTransactions(), [{ ...summary, ...ownedBy }]);
      assert.ok((await t.apply({ renew: { storage: ST, txnId: 't1', deadlineMs: 5000 } })).ok);
      await t.reopen();
      assert.deepEqual(t.store.preparedTransactions(), [
        { ...summary, deadlineMs: 5000, ...ownedBy },
      ]);
      // A vote again names the node that voted last.
      assert.deepEqual(await owned('t1', 'n3'), { ok: true });
      assert.deepEqual(t.store.preparedTransactions(), [
        { ...summary, deadlineMs: 5000, owner: 'n3', votedDeadlineMs: 1234 },
      ]);
    });

    it('renews a vote at most VOTE_RENEW_MAX_MS past its first deadline, across votes and reopen', async function () {
      const bound = 1234 + VOTE_RENEW_MAX_MS;
      const deadline = () => t.store.preparedTransactions()[0].deadlineMs;
      const renew = (deadlineMs?: number) =>
        t.apply({ renew: { storage: ST, txnId: 't1', deadlineMs } });
      await prepare('t1', [{ oid: oid(1), serial: Z64, data: data('a') }]);
      assert.deepEqual(await renew(5000), { ok: true });
      assert.equal(deadline(), 5000);
      assert.deepEqual(await renew(bound + 1), { ok: true });
      assert.equal(deadline(), bound);
      // Voting again keeps the first deadline the bound counts from.
      await prepare('t1', [{ oid: oid(1), serial: Z64, data: data('a') }]);
      await t.reopen();
      assert.deepEqual(await renew(bound + 10 * VOTE_RENEW_MAX_MS), { ok: true });
      assert.equal(deadline(), bound);
      // A renewal without a deadline does not lift it.
      assert.deepEqual(await renew(undefined), { ok: true });
      assert.equal(deadline(), bound);
      assert.equal(t.store.lockHolder(ST, oid(1)), 't1');
    });
  });

  describe('ReadConflict: checkCurrentSerial', function () {
    it('passes a current check without writing the checked object', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      const r = await t.commit([{ oid: oid(2), serial: Z64, data: data('b') }], {
        checks: [{ oid: oid(1), serial: s1 }],
      });
      mustTid(r);
      assert.deepEqual(r.ok && r.oids, [oid(2)]);
      assert.deepEqual((await t.store.load(ST, oid(1))).serial, s1);
    });

    it('fails a stale check with READ_CONFLICT naming the object and both serials', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      const s2 = await t.put(oid(1), s1, 'b');
      const e = expectError(
        await t.commit([{ oid: oid(2), serial: Z64, data: data('x') }], {
          checks: [{ oid: oid(1), serial: s1 }],
        }),
        'READ_CONFLICT',
      );
      assert.equal(e.transient, true);
      assert.deepEqual(e.conflict, {
        oid: oid(1),
        expected: s1,
        actual: s2,
        currentData: data('b'),
      });
      await rejectsWith(t.store.load(ST, oid(2)), 'NOT_FOUND');
    });

    it('checks that an object still does not exist with the z64 serial', async function () {
      mustTid(await t.commit([], { checks: [{ oid: oid(5), serial: Z64 }] }));
      await t.put(oid(5), Z64, 'now it does');
      expectError(await t.commit([], { checks: [{ oid: oid(5) }] }), 'READ_CONFLICT');
    });
  });

  describe('TransactionalUndoStorage', function () {
    it('undo restores the previous data as a new transaction', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const r = await t.apply({
        undo: { tid: Z64, storage: ST, undoTid: s2, user: 'u', description: 'undo v2' },
      });
      const s3 = mustTid(r);
      assert.deepEqual(r.ok && r.oids, [oid(1)]);
      assert.ok(idCompare(s3, s2) > 0);
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v1'), serial: s3 });
      const h = await t.store.history(ST, oid(1), 10);
      assert.deepEqual(
        h.map((x) => [x.tid, x.description]),
        [
          [s3, 'undo v2'],
          [s2, ''],
          [s1, ''],
        ],
      );
      // undoing the undo redoes v2
      const s4 = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s3 } }));
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v2'), serial: s4 });
    });

    it('undo of a creation deletes the object', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const su = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s1 } }));
      await rejectsWith(t.store.load(ST, oid(1)), 'NOT_FOUND');
      assert.equal(t.store.storageSummary(ST).objectCount, 0);
      assert.deepEqual(await t.store.loadBefore(ST, oid(1), su), {
        found: true,
        data: data('v1'),
        start: s1,
        end: su,
      });
      // and undoing that undo brings it back
      const s3 = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: su } }));
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v1'), serial: s3 });
      assert.equal(t.store.storageSummary(ST).objectCount, 1);
    });

    it('undo of a delete restores the data', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const sd = await t.mustCommit([{ oid: oid(1), serial: s1, delete: true }]);
      const su = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: sd } }));
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v1'), serial: su });
    });

    it('undo of a multi-object transaction restores all of them', async function () {
      const s1 = await t.mustCommit([
        { oid: oid(1), serial: Z64, data: data('a1') },
        { oid: oid(2), serial: Z64, data: data('b1') },
      ]);
      const s2 = await t.mustCommit([
        { oid: oid(1), serial: s1, data: data('a2') },
        { oid: oid(2), serial: s1, data: data('b2') },
        { oid: oid(3), serial: Z64, data: data('c2') },
      ]);
      const r = await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } });
      mustTid(r);
      assert.deepEqual(r.ok && r.oids, [oid(1), oid(2), oid(3)]);
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('a1'));
      assert.deepEqual((await t.store.load(ST, oid(2))).data, data('b1'));
      await rejectsWith(t.store.load(ST, oid(3)), 'NOT_FOUND');
    });

    it('fails with UNDO_CONFLICT when an object changed since, and changes nothing', async function () {
      const s1 = await t.mustCommit([
        { oid: oid(1), serial: Z64, data: data('a1') },
        { oid: oid(2), serial: Z64, data: data('b1') },
      ]);
      const s2 = await t.put(oid(2), s1, 'b2');
      const before = t.store.lastTid;
      const e = expectError(
        await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s1 } }),
        'UNDO_CONFLICT',
      );
      assert.equal(e.transient, true);
      assert.deepEqual(e.conflict, {
        oid: oid(2),
        expected: s1,
        actual: s2,
        currentData: data('b2'),
      });
      assert.deepEqual(t.store.lastTid, before);
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('a1'));
    });

    it('undoes a transaction whose data an undo made current again (FileStorage copies then)', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const s3 = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } }));
      // s3 restored s1's data: undoing s1 (the creation) is possible and deletes the object.
      const s4 = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s1 } }));
      await rejectsWith(t.store.load(ST, oid(1)), 'NOT_FOUND');
      const recs = new Map<string, Buffer>();
      for await (const x of t.store.iterate(ST, s3, s4))
        for (const r of x.records) recs.set(hex(x.tid), r.deleted ? Z64 : r.dataTid);
      assert.deepEqual(recs.get(hex(s3)), s1, 'the undo record names the data it restored');
      assert.deepEqual(recs.get(hex(s4)), Z64, 'the undone creation is a deletion');
    });

    it('refuses with UNDO_CONFLICT an undo that would need conflict resolution', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const s3 = await t.put(oid(1), s2, 'v3');
      const e = expectError(
        await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } }),
        'UNDO_CONFLICT',
      );
      assert.deepEqual(e.conflict, {
        oid: oid(1),
        expected: s2,
        actual: s3,
        currentData: data('v3'),
      });
      const plan = await t.store.planUndo(ST, [s2]);
      assert.deepEqual(plan.conflicts, [
        { oid: oid(1), committed: s3, undone: s2, data: data('v1') },
      ]);
      // Several undos in one plan see each other: undoing s3 then s2 restores v1 without conflict.
      const both = await t.store.planUndo(ST, [s3, s2]);
      assert.deepEqual(both.conflicts, []);
      assert.deepEqual(
        both.stores.map((x) => [x.oid, x.serial, x.data]),
        [[oid(1), s3, data('v1')]],
      );
    });

    it('answers NOT_FOUND for undo of a TID that is not a transaction of this storage', async function () {
      const s1 = await t.put(oid(1), Z64, 'a', { storage: 'other' });
      expectError(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s1 } }), 'NOT_FOUND');
      expectError(
        await t.apply({ undo: { tid: Z64, storage: ST, undoTid: tidOf(12345) } }),
        'NOT_FOUND',
      );
    });

    it('undo of an object locked by a voted transaction is LOCKED', async function () {
      const s1 = await t.put(oid(1), Z64, 'a');
      const s2 = await t.put(oid(1), s1, 'b');
      await t.apply({
        prepare: {
          txnId: 'v',
          txn: { storage: ST, stores: [{ oid: oid(1), serial: s2, data: data('c') }] },
        },
      });
      expectError(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } }), 'LOCKED');
    });

    it('undoLog lists transactions newest first, skipping `first`, up to `last - first` entries', async function () {
      const tids: Buffer[] = [];
      for (let i = 0; i < 5; i++) {
        tids.push(await t.put(oid(10 + i), Z64, `x${i}`, { user: `u${i}`, description: `d${i}` }));
      }
      await t.put(oid(1), Z64, 'other storage', { storage: 'other' });
      const all = await t.store.undoLog(ST, 0, 100);
      assert.deepEqual(
        all.map((x) => x.tid),
        [...tids].reverse(),
      );
      assert.deepEqual(
        all.map((x) => [x.user, x.description]),
        [4, 3, 2, 1, 0].map((i) => [`u${i}`, `d${i}`]),
      );
      assert.deepEqual(
        (await t.store.undoLog(ST, 1, 3)).map((x) => x.tid),
        [tids[3], tids[2]],
      );
      assert.deepEqual(await t.store.undoLog(ST, 5, 10), []);
    });
  });

  describe('PackableStorage', function () {
    async function threeRevisions(): Promise<Buffer[]> {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const s3 = await t.put(oid(1), s2, 'v3');
      return [s1, s2, s3];
    }

    it('removes revisions not needed to read at or after the pack time', async function () {
      const [s1, s2, s3] = await threeRevisions();
      const r = await t.apply({ pack: { storage: ST, packTid: s2 } });
      assert.deepEqual(r, { ok: true, removed: 1 });
      assert.deepEqual(t.store.storageSummary(ST).packTid, s2);
      // current data intact
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v3'), serial: s3 });
      // the revision current at the pack time is kept, later ones too
      assert.deepEqual(await t.store.loadSerial(ST, oid(1), s2), data('v2'));
      assert.deepEqual((await t.store.loadBefore(ST, oid(1), s3)).data, data('v2'));
      assert.deepEqual((await t.store.loadBefore(ST, oid(1), p64(u64(s2) + 1n))).start, s2);
      // the older one is gone, and says so
      await rejectsWith(t.store.loadSerial(ST, oid(1), s1), 'HISTORY_PACKED');
      await rejectsWith(t.store.loadBefore(ST, oid(1), s2), 'HISTORY_PACKED');
      await rejectsWith(t.store.loadBefore(ST, oid(1), s1), 'HISTORY_PACKED');
      assert.deepEqual(
        (await t.store.history(ST, oid(1), 10)).map((x) => x.tid),
        [s3, s2],
      );
    });

    it('packing at the last TID leaves only current revisions; packing further is clamped', async function () {
      const [, , s3] = await threeRevisions();
      const r = await t.apply({ pack: { storage: ST, packTid: p64((1n << 63n) - 1n) } });
      assert.deepEqual(r, { ok: true, removed: 2 });
      assert.deepEqual(t.store.storageSummary(ST).packTid, s3, 'never pack past the newest TID');
      assert.deepEqual((await t.store.history(ST, oid(1), 10)).length, 1);
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v3'), serial: s3 });
      // objects created later are readable at all times after the pack
      const s4 = await t.put(oid(2), Z64, 'later');
      assert.deepEqual(await t.store.loadBefore(ST, oid(2), s4), { found: false });
    });

    it('never moves the pack time backwards', async function () {
      const [s1, s2] = await threeRevisions();
      await t.apply({ pack: { storage: ST, packTid: s2 } });
      assert.deepEqual(await t.apply({ pack: { storage: ST, packTid: s1 } }), {
        ok: true,
        removed: 0,
      });
      assert.deepEqual(t.store.storageSummary(ST).packTid, s2);
    });

    it('removes an object deleted before the pack time entirely', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const sd = await t.mustCommit([{ oid: oid(1), serial: s1, delete: true }]);
      await t.put(oid(2), Z64, 'keep');
      const r = await t.apply({ pack: { storage: ST, packTid: sd } });
      assert.deepEqual(r, { ok: true, removed: 2 });
      await rejectsWith(t.store.history(ST, oid(1), 10), 'NOT_FOUND');
      await rejectsWith(t.store.loadBefore(ST, oid(1), sd), 'NOT_FOUND');
      // with no revision left the object may be created afresh
      await t.put(oid(1), Z64, 'reborn');
      assert.equal(t.store.storageSummary(ST).objectCount, 2);
    });

    it('undo of a transaction at or before the pack time is HISTORY_PACKED, and undoLog omits it', async function () {
      const [, s2, s3] = await threeRevisions();
      const s4 = await t.put(oid(2), Z64, 'x');
      const s5 = await t.put(oid(3), Z64, 'after the pack');
      await t.apply({ pack: { storage: ST, packTid: s4 } });
      assert.deepEqual(
        (await t.store.undoLog(ST, 0, 10)).map((x) => x.tid),
        [s5],
      );
      expectError(
        await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } }),
        'HISTORY_PACKED',
      );
      expectError(
        await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s3 } }),
        'HISTORY_PACKED',
      );
      // oid 2 was created at s4 (the pack time): its prior state cannot be proven from the record
      expectError(
        await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s4 } }),
        'HISTORY_PACKED',
      );
    });

    it('with gc, removes objects unreachable from the root and keeps reachable and later-written ones', async function () {
      // root(0) -> 1 -> 2; 3 is unreachable; 4 was referenced by 1 only in an old revision
      const s1 = await t.mustCommit([
        { oid: oid(0), serial: Z64, data: data('root'), refs: [oid(1)] },
        { oid: oid(1), serial: Z64, data: data('one'), refs: [oid(2), oid(4)] },
        { oid: oid(2), serial: Z64, data: data('two') },
        { oid: oid(3), serial: Z64, data: data('three') },
        { oid: oid(4), serial: Z64, data: data('four') },
      ]);
      const s2 = await t.mustCommit([
        { oid: oid(1), serial: s1, data: data('one2'), refs: [oid(2)] },
      ]);
      // after the pack time: 5 is new and unreferenced, 6 is new and references 3
      const packAt = s2;
      await t.mustCommit([
        { oid: oid(5), serial: Z64, data: data('five') },
        { oid: oid(6), serial: Z64, data: data('six'), refs: [oid(3)] },
      ]);
      const r = await t.apply({ pack: { storage: ST, packTid: packAt, gc: true } });
      assert.ok(r.ok);
      assert.equal(r.removed, 2, 'the old revision of 1 and the only revision of 4');
      for (const n of [0, 1, 2, 3, 5, 6]) await t.store.load(ST, oid(n));
      await rejectsWith(t.store.load(ST, oid(4)), 'NOT_FOUND');
      await rejectsWith(t.store.history(ST, oid(4), 1), 'NOT_FOUND');
      assert.equal(t.store.storageSummary(ST).objectCount, 6);

      // now drop the reference from 6 to 3 and pack again with gc at the newest TID
      const s6 = (await t.store.load(ST, oid(6))).serial;
      const last = await t.mustCommit([{ oid: oid(6), serial: s6, data: data('six2') }]);
      await t.apply({ pack: { storage: ST, packTid: last, gc: true } });
      for (const n of [0, 1, 2]) await t.store.load(ST, oid(n));
      for (const n of [3, 5, 6]) await rejectsWith(t.store.load(ST, oid(n)), 'NOT_FOUND');
      assert.equal(t.store.storageSummary(ST).objectCount, 3);
    });

    it('keeps what a voted transaction holds, so that its finish still succeeds', async function () {
      // a voted transaction re-creates an object deleted before the pack time
      const s1 = await t.put(oid(1), Z64, 'v1');
      const sd = await t.mustCommit([{ oid: oid(1), serial: s1, delete: true }]);
      await t.apply({
        prepare: {
          txnId: 'v',
          txn: { storage: ST, stores: [{ oid: oid(1), serial: sd, data: data('v2') }] },
        },
      });
      await t.apply({ pack: { storage: ST, packTid: t.store.lastTid } });
      const tid = mustTid(await t.apply({ finish: { storage: ST, txnId: 'v', tid: Z64 } }));
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v2'), serial: tid });
      assert.equal(t.store.storageSummary(ST).objectCount, 1);
    });

    it('with gc, keeps objects a voted transaction writes or references', async function () {
      // 0 is the root; 1 and 2 are unreachable; the voted transaction updates 1 and links 2 from the root
      const s0 = await t.mustCommit([
        { oid: oid(0), serial: Z64, data: data('root') },
        { oid: oid(1), serial: Z64, data: data('one') },
        { oid: oid(2), serial: Z64, data: data('two') },
        { oid: oid(3), serial: Z64, data: data('garbage') },
      ]);
      await t.apply({
        prepare: {
          txnId: 'v',
          txn: {
            storage: ST,
            stores: [
              { oid: oid(0), serial: s0, data: data('root2'), refs: [oid(2)] },
              { oid: oid(1), serial: s0, data: data('one2') },
            ],
          },
        },
      });
      await t.apply({ pack: { storage: ST, packTid: t.store.lastTid, gc: true } });
      await rejectsWith(t.store.load(ST, oid(3)), 'NOT_FOUND');
      mustTid(await t.apply({ finish: { storage: ST, txnId: 'v', tid: Z64 } }));
      assert.deepEqual((await t.store.load(ST, oid(1))).data, data('one2'));
      assert.deepEqual((await t.store.load(ST, oid(2))).data, data('two'), 'no dangling reference');
    });

    it('without gc keeps unreachable objects', async function () {
      await t.put(oid(3), Z64, 'unreachable');
      await t.apply({ pack: { storage: ST, packTid: t.store.lastTid } });
      await t.store.load(ST, oid(3));
    });
  });

  describe('IteratorStorage', function () {
    it('iterates transactions in TID order with metadata and records, start and stop inclusive', async function () {
      const s1 = await t.put(oid(1), Z64, 'a', {
        user: 'u1',
        description: 'd1',
        extension: data('e'),
      });
      const s2 = await t.mustCommit([
        { oid: oid(1), serial: s1, data: data('b') },
        { oid: oid(2), serial: Z64, data: data('c') },
      ]);
      const s3 = await t.mustCommit([{ oid: oid(2), serial: s2, delete: true }]);
      await t.put(oid(1), Z64, 'elsewhere', { storage: 'other' });
      const all = await collect(t.store.iterate(ST));
      assert.deepEqual(
        all.map((x) => x.tid),
        [s1, s2, s3],
      );
      assert.deepEqual(all[0], {
        tid: s1,
        user: 'u1',
        description: 'd1',
        extension: data('e'),
        status: ' ',
        records: [{ oid: oid(1), data: data('a'), deleted: false, dataTid: Z64 }],
      });
      assert.deepEqual(all[1].records, [
        { oid: oid(1), data: data('b'), deleted: false, dataTid: Z64 },
        { oid: oid(2), data: data('c'), deleted: false, dataTid: Z64 },
      ]);
      assert.deepEqual(all[2].records, [
        { oid: oid(2), data: Buffer.alloc(0), deleted: true, dataTid: Z64 },
      ]);
      assert.deepEqual(
        (await collect(t.store.iterate(ST, s2, s3))).map((x) => x.tid),
        [s2, s3],
      );
      assert.deepEqual(
        (await collect(t.store.iterate(ST, s2, s2))).map((x) => x.tid),
        [s2],
      );
      assert.deepEqual(
        (await collect(t.store.iterate(ST, p64(u64(s1) + 1n)))).map((x) => x.tid),
        [s2, s3],
      );
      assert.deepEqual(
        (await collect(t.store.iterate(ST, Z64, p64(u64(s2) - 1n)))).map((x) => x.tid),
        [s1],
      );
      assert.deepEqual(await t.store.oldestTid(ST), s1);
      assert.deepEqual(await t.store.oldestTid('nothing'), Z64);
      assert.deepEqual(await t.store.transactionOids(ST, s2), [oid(1), oid(2)]);
      assert.equal(await t.store.transactionOids(ST, tidOf(99_999)), undefined);
    });

    it("gives an undo's records the TID whose data they restore", async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      const su = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } }));
      const [u] = await collect(t.store.iterate(ST, su, su));
      assert.deepEqual(u.records, [{ oid: oid(1), data: data('v1'), deleted: false, dataTid: s1 }]);
    });

    it('still lists packed transactions, without their removed records', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const s2 = await t.put(oid(1), s1, 'v2');
      await t.apply({ pack: { storage: ST, packTid: s2 } });
      const all = await collect(t.store.iterate(ST));
      assert.deepEqual(
        all.map((x) => [x.tid, x.records.length]),
        [
          [s1, 0],
          [s2, 1],
        ],
      );
    });
  });

  describe('several storages', function () {
    it('keeps the same oid in two storages apart', async function () {
      const a = await t.put(oid(1), Z64, 'in one');
      const b = await t.put(oid(1), Z64, 'in two', { storage: 'two' });
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('in one'), serial: a });
      assert.deepEqual(await t.store.load('two', oid(1)), { data: data('in two'), serial: b });
      // a conflict in one storage is judged by that storage's serial only
      expectError(
        await t.commit([{ oid: oid(1), serial: a, data: data('x') }], { storage: 'two' }),
        'CONFLICT',
      );
      await t.put(oid(1), a, 'one again');
      assert.deepEqual(t.store.storageNames(), [ST, 'two']);
      assert.equal(t.store.storageSummary('two').objectCount, 1);
      await t.apply({ pack: { storage: 'two', packTid: t.store.lastTid } });
      assert.equal(
        (await t.store.history(ST, oid(1), 10)).length,
        2,
        'packing one storage leaves the other',
      );
      // Transactions up to the pack time cannot be undone, so undoLog no longer lists them.
      assert.deepEqual(await t.store.undoLog('two', 0, 10).then((l) => l.map((x) => x.tid)), []);
      assert.deepEqual(await t.store.undoLog(ST, 0, 10).then((l) => l.length), 2);
      await rejectsWith(t.store.load('three', oid(1)), 'NOT_FOUND');
    });
  });

  describe('persistence', function () {
    it('keeps appliedIndex, lastTid, data, history and storage metadata across close and reopen', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1', { user: 'me' });
      const s2 = await t.put(oid(1), s1, 'v2');
      await t.put(oid(1), Z64, 'x', { storage: 'two' });
      expectError(await t.commit([{ oid: oid(1), serial: s1, data: data('stale') }]), 'CONFLICT');
      await t.apply({ noop: {} });
      const index = t.store.appliedIndex;
      const last = t.store.lastTid;
      const summary = t.store.storageSummary(ST);
      await t.reopen();
      assert.equal(t.store.appliedIndex, index);
      assert.deepEqual(t.store.lastTid, last);
      assert.deepEqual(t.store.storageSummary(ST), summary);
      assert.deepEqual(t.store.storageNames(), [ST, 'two']);
      assert.deepEqual(await t.store.load(ST, oid(1)), { data: data('v2'), serial: s2 });
      assert.deepEqual(
        (await t.store.history(ST, oid(1), 5)).map((x) => [x.tid, x.user]),
        [
          [s2, ''],
          [s1, 'me'],
        ],
      );
      // TIDs keep increasing after the reopen
      const s3 = await t.put(oid(1), s2, 'v3', { tid: tidOf(1) });
      assert.ok(idCompare(s3, last) > 0);
    });
  });

  describe('snapshot and restore', function () {
    async function readAll(s: ObjectStore): Promise<unknown> {
      const out: Record<string, unknown> = {
        index: s.appliedIndex,
        lastTid: hex(s.lastTid),
        names: s.storageNames(),
        prepared: s.preparedTransactions(),
      };
      for (const st of s.storageNames()) {
        out[`summary ${st}`] = s.storageSummary(st);
        out[`txns ${st}`] = await collect(s.iterate(st));
        for (let n = 0; n < 4; n++) {
          out[`load ${st} ${n}`] = await s.load(st, oid(n)).catch((e: StorageError) => e.kind);
          out[`history ${st} ${n}`] = await s
            .history(st, oid(n), 100)
            .catch((e: StorageError) => e.kind);
          out[`lock ${st} ${n}`] = s.lockHolder(st, oid(n));
        }
      }
      return out;
    }

    async function populate(): Promise<void> {
      const s1 = await t.put(oid(1), Z64, 'v1');
      await t.put(oid(1), s1, Buffer.alloc(700_000, 7)); // forces several 1 MiB chunks
      await t.put(oid(2), Z64, Buffer.alloc(700_000, 8));
      await t.put(oid(1), Z64, 'two', { storage: 'two' });
      const s3 = await t.put(oid(3), Z64, 'three');
      await t.apply({ pack: { storage: ST, packTid: s1 } });
      await t.apply({ newOids: { storage: ST, count: 5 } });
      await t.apply({
        prepare: {
          txnId: 'p',
          txn: { storage: ST, stores: [{ oid: oid(3), serial: s3, data: data('p') }] },
        },
      });
    }

    it('carries expired-vote records through a snapshot, so a restored store still refuses re-voting them', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const vote = {
        prepare: {
          txnId: 'late',
          txn: { storage: ST, stores: [{ oid: oid(1), serial: s1, data: data('late') }] },
        },
      };
      await t.apply(vote);
      await t.apply({ abort: { storage: ST, txnId: 'late', reason: 'timeout' } });
      expectError(await t.apply(vote), 'INVALID');
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      other.index = await other.store.restore(async function* () {
        yield* chunks;
      });
      expectError(await other.apply(vote), 'INVALID');
      await other.reopen();
      assert.deepEqual((await other.store.load(ST, oid(1))).data, data('v1'));
    });

    it("keeps a removed member's tombstone through a reopen and a snapshot, and refuses its id again", async function () {
      const rec = { id: 'n3', peerAddress: '127.0.0.1:1', clientAddress: '127.0.0.1:2' };
      assert.deepEqual((await t.apply({ member: rec })).ok, true);
      assert.deepEqual(
        t.store.members().map((m) => m.id),
        ['n3'],
      );
      assert.equal(t.store.isRemovedMember('n3'), false);
      assert.equal((await t.apply({ member: { id: 'n3', remove: true } })).ok, true);
      assert.deepEqual(t.store.members(), []);
      assert.equal(t.store.isRemovedMember('n3'), true);
      expectError(await t.apply({ member: rec }), 'INVALID');
      await t.reopen();
      assert.equal(t.store.isRemovedMember('n3'), true);
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      other.index = await other.store.restore(async function* () {
        yield* chunks;
      });
      assert.equal(other.store.isRemovedMember('n3'), true);
      assert.deepEqual(other.store.members(), []);
      expectError(await other.apply({ member: rec }), 'INVALID');
    });

    it('restores into a fresh store with identical reads and applied index', async function () {
      await populate();
      const snap = t.store.snapshot();
      assert.equal(snap.index, t.store.appliedIndex);
      const chunks = await collect(snap.chunks);
      assert.ok(chunks.length >= 2, 'a large state is split into chunks');
      const other = await TestStore.create();
      extra.push(other);
      await other.put(oid(9), Z64, 'to be replaced');
      const index = await other.store.restore(async function* () {
        yield* chunks;
      });
      assert.equal(index, snap.index);
      assert.deepEqual(await readAll(other.store), await readAll(t.store));
      await rejectsWith(other.store.load(ST, oid(9)), 'NOT_FOUND');
      // the restored store goes on from there, locks included
      other.index = index;
      expectError(await other.commit([{ oid: oid(3), serial: Z64, data: data('x') }]), 'LOCKED');
      mustTid(await other.apply({ finish: { storage: ST, txnId: 'p', tid: Z64 } }));
      await other.reopen();
      assert.deepEqual((await other.store.load(ST, oid(3))).data, data('p'));
    });

    it('describes the state at the time snapshot() was called, not later applies', async function () {
      const s1 = await t.put(oid(1), Z64, 'v1');
      const snap = t.store.snapshot();
      const expected = await readAll(t.store);
      await t.put(oid(1), s1, 'v2');
      const other = await TestStore.create();
      extra.push(other);
      const chunks = await collect(snap.chunks);
      assert.equal(
        await other.store.restore(async function* () {
          yield* chunks;
        }),
        snap.index,
      );
      assert.deepEqual(await readAll(other.store), expected);
    });

    /** A store over `other`'s directory whose install hook runs `hook` at each step. */
    async function withHook(other: TestStore, hook: (step: InstallStep) => void): Promise<void> {
      await other.store.close();
      other.store = await ObjectStore.open(other.dir, { sync: false, onInstallStep: hook });
    }

    it('an install failing while staging leaves the current state serving, and nothing behind', async function () {
      await populate();
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      await other.put(oid(9), Z64, 'old state');
      const before = await readAll(other.store);
      // Stands in for ENOSPC or EIO after the first chunk was staged.
      await withHook(other, (step) => {
        if (step === 'chunk') throw new Error('ENOSPC: simulated full disk');
      });
      await assert.rejects(
        other.store.restore(async function* () {
          yield* chunks;
        }),
        /ENOSPC/,
      );
      assert.equal(other.store.unhealthy, undefined);
      assert.equal((await other.store.load(ST, oid(9))).data.toString(), 'old state');
      await other.reopen();
      assert.equal(other.store.interruptedInstall, false);
      assert.deepEqual(await readAll(other.store), before);
      const snap = await collect(other.store.snapshot().chunks);
      assert.deepEqual(snap.length, 1, 'no staged records left behind');
    });

    it('an install failing after the switch began leaves the store unhealthy; reopening completes it', async function () {
      await populate();
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      await other.put(oid(9), Z64, 'old state');
      await withHook(other, (step) => {
        if (step === 'cleared') throw new Error('EIO: simulated write failure');
      });
      await assert.rejects(
        other.store.restore(async function* () {
          yield* chunks;
        }),
        /EIO/,
      );
      assert.match(other.store.unhealthy ?? '', /snapshot install failed/);
      await rejectsWith(other.store.load(ST, oid(9)), 'UNAVAILABLE');
      await other.reopen();
      assert.equal(other.store.interruptedInstall, false);
      assert.equal(other.store.appliedIndex, t.store.appliedIndex);
      assert.deepEqual(await readAll(other.store), await readAll(t.store));
    });

    it('a store left by an install that cleared first (no phase in its record) is discarded', async function () {
      await populate();
      const other = await TestStore.create();
      extra.push(other);
      const s9 = await other.put(oid(9), Z64, 'partial state');
      await other.store.close();
      const { Level } = await import('level');
      const db = new Level<Buffer, Buffer>(other.dir, {
        keyEncoding: 'buffer',
        valueEncoding: 'buffer',
      });
      await db.put(Buffer.from('I'), Buffer.alloc(8), { sync: true });
      await db.close();
      other.store = await ObjectStore.open(other.dir, { sync: false });
      assert.equal(other.store.interruptedInstall, true);
      assert.equal(other.store.appliedIndex, 0, 'claims nothing it does not hold');
      await rejectsWith(other.store.loadSerial(ST, oid(9), s9), 'NOT_FOUND');
      await other.store.installRecovered();
      await other.reopen();
      assert.equal(other.store.interruptedInstall, false);
    });

    it('reads go on from the current state while staging, wait during the switch, and fail UNAVAILABLE when they overlapped it', async function () {
      await populate();
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      await other.put(oid(9), Z64, 'old state');
      await other.put(oid(10), Z64, 'old state');
      const reads: Record<string, Promise<unknown>> = {};
      const kindOf = (p: Promise<unknown>): Promise<string> =>
        p.then(
          (r) => (r as { data: Buffer }).data.toString(),
          (e: unknown) => (e as StorageError).kind,
        );
      await withHook(other, (step) => {
        if (step === 'switching') {
          reads.switching9 = kindOf(other.store.load(ST, oid(9)));
          reads.switching3 = other.store.load(ST, oid(3));
        }
      });
      const it = other.store.iterate(ST);
      const first = await it.next(); // a read started before the install...
      assert.equal(first.done, false);
      let passes = 0;
      await other.store.restore(async function* () {
        passes++;
        for (const c of chunks) {
          yield c;
          // The second pass stages: a read meanwhile is answered from the current state.
          if (passes === 2 && !reads.staging)
            reads.staging = Promise.resolve(await kindOf(other.store.load(ST, oid(9))));
        }
      });
      assert.equal(await reads.staging, 'old state', 'the current state serves while staging');
      assert.equal(
        await reads.switching9,
        'NOT_FOUND',
        'reads during the switch see the new state',
      );
      assert.deepEqual(
        ((await reads.switching3) as { data: Buffer }).data,
        (await t.store.load(ST, oid(3))).data,
      );
      await assert.rejects(
        (async () => {
          for await (const x of it) void x; // ...and continued after the switch fails
        })(),
        (e: unknown) => e instanceof StorageError && e.kind === 'UNAVAILABLE',
      );
    });

    it('refuses a snapshot whose index differs from the expected one, leaving the state alone', async function () {
      await populate();
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      await other.put(oid(9), Z64, 'old state');
      await rejectsWith(
        other.store.restore(async function* () {
          yield* chunks;
        }, t.store.appliedIndex + 1),
        'INVALID',
      );
      assert.equal((await other.store.load(ST, oid(9))).data.toString(), 'old state');
      assert.equal(other.store.unhealthy, undefined);
    });

    it('refuses a snapshot stream that ends before its last chunk', async function () {
      await populate();
      const chunks = await collect(t.store.snapshot().chunks);
      const other = await TestStore.create();
      extra.push(other);
      await assert.rejects(
        other.store.restore(async function* () {
          yield* chunks.slice(0, -1);
        }),
        /before its last chunk/,
      );
    });
  });

  describe('apply', function () {
    it('asserts that indexes increase and leaves the state alone when they do not', async function () {
      await t.put(oid(1), Z64, 'v1');
      const last = t.store.lastTid;
      await assert.rejects(
        t.store.apply(1, {
          commit: { tid: Z64, txn: { storage: ST, stores: [{ oid: oid(2), data: data('x') }] } },
        }),
        AssertionError,
      );
      await assert.rejects(t.store.apply(0, { noop: {} }), AssertionError);
      assert.equal(t.store.appliedIndex, 1);
      assert.deepEqual(t.store.lastTid, last);
      await rejectsWith(t.store.load(ST, oid(2)), 'NOT_FOUND');
      // gaps are fine (entries that are not state machine commands)
      assert.deepEqual(await t.store.apply(10, { noop: {} }), { ok: true });
      assert.equal(t.store.appliedIndex, 10);
    });
  });

  describe('Synchronization: commit events', function () {
    it('arrive in TID order, once per committed transaction, naming every written oid', async function () {
      const events: CommitEvent[] = [];
      const off = t.store.onCommit((ev) => events.push(ev));
      const s1 = await t.mustCommit([
        { oid: oid(1), serial: Z64, data: data('a') },
        { oid: oid(2), serial: Z64, data: data('b') },
      ]);
      expectError(await t.commit([{ oid: oid(1), serial: Z64, data: data('x') }]), 'CONFLICT');
      const s2 = await t.mustCommit([{ oid: oid(2), serial: s1, delete: true }], { tid: tidOf(1) });
      await t.apply({
        prepare: {
          txnId: 'x',
          txn: { storage: 'two', stores: [{ oid: oid(1), serial: Z64, data: data('c') }] },
        },
      });
      await t.apply({ newOids: { storage: ST, count: 2 } });
      await t.apply({ pack: { storage: ST, packTid: s1 } });
      const s3 = mustTid(await t.apply({ finish: { storage: 'two', txnId: 'x', tid: Z64 } }));
      const s4 = mustTid(await t.apply({ undo: { tid: Z64, storage: ST, undoTid: s2 } }));
      off();
      await t.put(oid(5), Z64, 'unobserved');

      assert.deepEqual(
        events.map((e) => [e.storage, hex(e.tid)]),
        [
          [ST, hex(s1)],
          [ST, hex(s2)],
          ['two', hex(s3)],
          [ST, hex(s4)],
        ],
      );
      assertIncreasing(events.map((e) => e.tid));
      assert.deepEqual(events[0].records, [
        { oid: oid(1), data: data('a'), deleted: false },
        { oid: oid(2), data: data('b'), deleted: false },
      ]);
      assert.deepEqual(events[1].records, [{ oid: oid(2), data: undefined, deleted: true }]);
      assert.deepEqual(events[3].records, [{ oid: oid(2), data: data('b'), deleted: false }]);
      assert.deepEqual(
        events.map((e) => e.index),
        [1, 3, 7, 8],
      );
    });

    it('are emitted after the transaction is readable', async function () {
      const seen: Array<Promise<unknown>> = [];
      t.store.onCommit((ev) => seen.push(t.store.load(ev.storage, ev.records[0].oid)));
      await t.put(oid(1), Z64, 'visible');
      assert.equal(seen.length, 1);
      assert.deepEqual(((await seen[0]) as { data: Buffer }).data, data('visible'));
    });
  });
});

describe('ObjectStore on a fresh directory', function () {
  it('starts empty', async function () {
    const dir = tempDir();
    const t = await TestStore.create(dir);
    try {
      assert.equal(t.store.appliedIndex, 0);
      assert.deepEqual(t.store.lastTid, Z64);
      assert.deepEqual(t.store.storageNames(), []);
      assert.deepEqual(t.store.storageSummary(ST), {
        name: ST,
        lastTid: Z64,
        objectCount: 0,
        packTid: Z64,
        nextOid: oid(1),
      });
      assert.deepEqual(await collect(t.store.iterate(ST)), []);
      assert.deepEqual(await t.store.undoLog(ST, 0, 10), []);
    } finally {
      await t.destroy();
    }
  });
});
