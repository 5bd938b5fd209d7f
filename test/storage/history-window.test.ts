/**
 * The retained-history window is kept as transactions commit (a count in the storage's meta and
 * an N record per transaction), never found by scanning: its values must equal those of a full
 * scan of the transaction records after commits, undo, pack, a snapshot install, a restart, and
 * on a store written before transactions were numbered.
 */
import * as assert from 'node:assert/strict';
import { Level } from 'level';
import * as K from '../../src/storage/keys';
import { storageMetaCodec } from '../../src/storage/codec';
import { ObjectStore } from '../../src/storage/object-store';
import { CommitFeed } from '../../src/server/commit-feed';
import { Z64, idCompare, idEquals, idNext, tidFromTime } from '../../src/util/ids';
import { ST, TestStore, collect, data, mustTid, oid } from './helpers';

const OTHER = 'two';
const WINDOWS = [1, 2, 5, 17, 40, 1000];
/** Commit times: one transaction a second from here (TIDs derive from them). */
const BASE_MS = Date.UTC(2026, 0, 1);

/** Every TID on record in a storage, oldest first, read by a full scan. */
async function scan(store: ObjectStore, st: string): Promise<Buffer[]> {
  return (await collect(store.iterate(st))).map((t) => t.tid);
}

/** The window's values computed from a full scan. */
async function expectedWindow(store: ObjectStore, st: string, n: number) {
  const tids = await scan(store, st);
  if (tids.length === 0) return { count: 0, oldestTid: Z64, windowOldestTid: Z64 };
  return {
    count: tids.length,
    oldestTid: tids[0],
    windowOldestTid: tids[Math.max(0, tids.length - n)],
  };
}

/** The oldest resumable TID as defined by a scan of the whole history (the reference). */
function expectedResumable(tids: Buffer[], max: number, nowMs: number, maxAgeMs: number): Buffer {
  if (tids.length === 0) return Z64;
  const byAge = tidFromTime(nowMs - maxAgeMs);
  const all = tids.length <= max;
  if (all && idCompare(tids[0], byAge) >= 0) return Z64;
  const oldest = all ? tids[0] : idNext(tids[tids.length - max]);
  return idCompare(byAge, oldest) > 0 ? byAge : oldest;
}

async function checkAgainstScan(store: ObjectStore, what: string): Promise<void> {
  for (const st of [ST, OTHER, 'never-written']) {
    for (const n of WINDOWS) {
      assert.deepEqual(
        await store.historyWindow(st, n),
        await expectedWindow(store, st, n),
        `${what}: storage ${st}, window ${n}`,
      );
    }
    const tids = await scan(store, st);
    for (const max of WINDOWS)
      for (const ageS of [0, 3, 10, 1e6]) {
        const nowMs = BASE_MS + 30_000;
        const feed = new CommitFeed(store, {
          historyMaxTransactions: max,
          historyMaxAgeMs: ageS * 1000,
          nowMs: () => nowMs,
        });
        assert.deepEqual(
          await feed.oldestResumable(st),
          expectedResumable(tids, max, nowMs, ageS * 1000),
          `${what}: storage ${st}, ${max} transactions, ${ageS} s`,
        );
      }
  }
}

describe('history window kept as transactions commit (real LevelDB)', function () {
  const stores: TestStore[] = [];
  afterEach(async function () {
    while (stores.length) await stores.pop()!.destroy();
  });

  /** A history in two storages, with an undo and a pack in it, checked along the way. */
  async function populate(t: TestStore): Promise<void> {
    let second = 0;
    const at = (): Buffer => tidFromTime(BASE_MS + 1000 * second++);
    const serials = new Map<number, Buffer>();
    for (let i = 0; i < 24; i++) {
      const o = i % 5;
      const st = i % 3 === 0 ? OTHER : ST;
      const key = o + (st === OTHER ? 100 : 0);
      const s = await t.put(oid(key), serials.get(key) ?? Z64, `v${i}`, { storage: st, tid: at() });
      serials.set(key, s);
    }
    await checkAgainstScan(t.store, 'after commits');
    const undone = (await scan(t.store, ST)).at(-1)!; // nothing later changed its objects
    const u = await t.apply({ undo: { tid: at(), storage: ST, undoTid: undone } });
    mustTid(u);
    await checkAgainstScan(t.store, 'after undo');
    const packAt = (await scan(t.store, ST))[10];
    assert.ok((await t.apply({ pack: { storage: ST, packTid: packAt, gc: true } })).ok);
    await t.put(oid(50), Z64, 'after pack', { tid: at() });
    await checkAgainstScan(t.store, 'after pack');
  }

  it('equals a full scan after commits, undo, pack and a restart', async function () {
    const t = await TestStore.create();
    stores.push(t);
    await populate(t);
    await t.reopen();
    await checkAgainstScan(t.store, 'after a restart');
    await t.put(oid(51), Z64, 'after restart', { tid: tidFromTime(BASE_MS + 60_000) });
    await checkAgainstScan(t.store, 'after a commit after the restart');
  });

  it('equals a full scan after a snapshot install replaced a longer history', async function () {
    const source = await TestStore.create();
    const target = await TestStore.create();
    stores.push(source, target);
    await populate(source);
    // The target has a history of its own, longer than the snapshot's: none of it may remain.
    for (let i = 0; i < 40; i++) await target.put(oid(200 + i), Z64, data(`t${i}`));
    // Read (and keep) the target's own window first: none of it may be answered after the install.
    await checkAgainstScan(target.store, 'before a snapshot install');
    const snap = source.store.snapshot();
    const chunks = await collect(snap.chunks);
    target.index = await target.store.restore(async function* () {
      yield* chunks;
    });
    await checkAgainstScan(target.store, 'after a snapshot install');
    await target.put(oid(52), Z64, 'after install', { tid: tidFromTime(BASE_MS + 70_000) });
    await checkAgainstScan(target.store, 'after a commit after the install');
    await target.reopen();
    await checkAgainstScan(target.store, 'after a restart after the install');
  });

  it('numbers the transactions of a store written before they were numbered', async function () {
    const t = await TestStore.create();
    stores.push(t);
    await populate(t);
    await t.store.close();
    // Take the store back to the earlier layout: no N records, no count in the storage meta.
    const db = new Level<Buffer, Buffer>(t.dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    await db.clear({ gte: Buffer.from([K.TAG.txnNumber]), lt: Buffer.from([K.TAG.txnNumber + 1]) });
    for (const st of [ST, OTHER]) {
      const meta = storageMetaCodec.decode((await db.get(K.storageKey(st)))!);
      assert.ok(meta.txnCount, 'a numbered store keeps its count in the meta');
      delete meta.txnCount;
      await db.put(K.storageKey(st), storageMetaCodec.encode(meta));
    }
    await db.close();
    t.store = await ObjectStore.open(t.dir, { sync: false });
    t.index = t.store.appliedIndex;
    await checkAgainstScan(t.store, 'after numbering on open');
    await t.put(oid(53), Z64, 'after numbering', { tid: tidFromTime(BASE_MS + 80_000) });
    await checkAgainstScan(t.store, 'after a commit after numbering');
    const w = await t.store.historyWindow(ST, 1);
    assert.ok(idEquals(w.windowOldestTid, t.store.storageSummary(ST).lastTid));
  });

  it('reads no N record again until a commit moves the window, and one after it', async function () {
    const t = await TestStore.create();
    stores.push(t);
    await populate(t);
    // Count the N-record reads the store makes (the real LevelDB answers them).
    const db = (t.store as unknown as { db: { get: (k: Buffer) => Promise<unknown> } }).db;
    const get = db.get.bind(db);
    let nReads = 0;
    db.get = (k: Buffer) => {
      if (k[0] === K.TAG.txnNumber) nReads++;
      return get(k);
    };
    try {
      const first = await t.store.historyWindow(ST, 5);
      for (let i = 0; i < 3; i++) assert.deepEqual(await t.store.historyWindow(ST, 5), first);
      assert.ok(nReads <= 2, `${nReads} N-record reads for the first look`);
      const afterFirst = nReads;
      await t.put(oid(60), Z64, 'moves the window', { tid: tidFromTime(BASE_MS + 90_000) });
      const moved = await t.store.historyWindow(ST, 5);
      assert.equal(moved.count, first.count + 1);
      assert.deepEqual(moved, await expectedWindow(t.store, ST, 5));
      // Transaction 1's TID is kept; only the window's new oldest is read.
      assert.equal(nReads, afterFirst + 1);
      await t.store.historyWindow(ST, 5);
      assert.equal(nReads, afterFirst + 1);
    } finally {
      db.get = get;
    }
  });

  it('reports a missing N record as corruption, not as a shorter history', async function () {
    const t = await TestStore.create();
    stores.push(t);
    await populate(t);
    await t.store.close();
    const db = new Level<Buffer, Buffer>(t.dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    await db.del(K.txnNumberKey(ST, 1));
    await db.close();
    t.store = await ObjectStore.open(t.dir, { sync: false });
    await assert.rejects(t.store.historyWindow(ST, 5), /no N record/);
    assert.match(t.store.unhealthy ?? '', /no N record/);
  });
});
