/**
 * The presence filter (src/storage/presence-filter.ts) lets the conflict check skip the LevelDB
 * read for objects that do not exist. Its invariant: every existing object is "may exist". These
 * tests create objects through every path that writes current-serial records (commits, a reopen,
 * a snapshot install into a store that had other objects) and then try to create them again as
 * new: each attempt must be a conflict, and the filter must have been in use.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PresenceFilter } from '../../src/storage/presence-filter';
import { Z64 } from '../../src/util/ids';
import { ST, TestStore, data, expectError, oid, tempDir } from './helpers';

describe('presence filter', function () {
  this.timeout(60_000);
  const stores: TestStore[] = [];
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.destroy();
  });
  // A tiny current-serial cache: the objects a test creates again are no longer cached, so only
  // the filter (or a LevelDB read) can tell the conflict check that they exist.
  async function fresh(dir?: string): Promise<TestStore> {
    const s = await TestStore.create(dir, { currentCacheEntries: 2 });
    stores.push(s);
    await s.store.presenceFilterBuilt();
    return s;
  }

  it('has no false "absent" among 10,000 random objects, and answers "absent" for new ones', async function () {
    const s = await fresh();
    assert.equal(
      new PresenceFilter(undefined).mightContain(randomBytes(17)),
      true,
      'an unbuilt filter says "may exist"',
    );
    const oids = Array.from({ length: 10_000 }, () => randomBytes(8));
    await s.mustCommit(oids.map((o) => ({ oid: o, serial: Z64, data: data('x') })));
    await s.reopen(); // the filter is now built by the scan, not by the landed batch
    await s.store.presenceFilterBuilt();
    const before = s.store.absentByFilter;
    await s.mustCommit(
      Array.from({ length: 1000 }, () => ({ oid: randomBytes(8), serial: Z64, data: data('n') })),
    );
    assert.ok(s.store.absentByFilter - before > 990, 'new objects are found absent without reads');
    for (const o of oids.slice(0, 500))
      expectError(await s.commit([{ oid: o, serial: Z64, data: data('y') }]), 'CONFLICT');
  });

  it('knows objects committed since it was built, in the same and in later batches', async function () {
    const s = await fresh();
    const before = s.store.absentByFilter;
    await s.put(oid(1), Z64, 'a');
    await s.put(oid(11), Z64, 'a'); // evict oid 1 from the cache
    await s.put(oid(12), Z64, 'a');
    assert.ok(s.store.absentByFilter > before, 'the new object was found absent without a read');
    expectError(await s.commit([{ oid: oid(1), serial: Z64, data: data('b') }]), 'CONFLICT');
    // Two creations of one object in one batch: the second sees the first through the batch.
    const r = await s.store.applyBatch([
      {
        index: ++s.index,
        cmd: {
          commit: {
            tid: Z64,
            txn: { storage: ST, stores: [{ oid: oid(2), serial: Z64, data: data('c') }] },
          },
        },
      },
      {
        index: ++s.index,
        cmd: {
          commit: {
            tid: Z64,
            txn: { storage: ST, stores: [{ oid: oid(2), serial: Z64, data: data('d') }] },
          },
        },
      },
    ]);
    assert.ok(r[0].ok);
    expectError(r[1], 'CONFLICT');
  });

  it('knows objects that were there when the store opened', async function () {
    const s = await fresh();
    for (let i = 1; i <= 50; i++) await s.put(oid(i), Z64, `v${i}`);
    await s.reopen();
    await s.store.presenceFilterBuilt();
    const before = s.store.absentByFilter;
    await s.put(oid(1000), Z64, 'new');
    assert.ok(s.store.absentByFilter > before, 'the reopened store uses its filter');
    for (let i = 1; i <= 50; i++)
      expectError(await s.commit([{ oid: oid(i), serial: Z64, data: data('again') }]), 'CONFLICT');
  });

  it("knows the objects of an installed snapshot, not only the store's own", async function () {
    const src = await fresh();
    for (let i = 1; i <= 30; i++) await src.put(oid(i), Z64, `s${i}`);
    const snap = src.store.snapshot();
    const chunks: Buffer[] = [];
    for await (const c of snap.chunks) chunks.push(c);
    const dst = await fresh(tempDir());
    await dst.put(oid(500), Z64, 'own'); // the filter held other keys before the install
    await dst.store.restore(async function* () {
      yield* chunks;
    }, snap.index);
    dst.index = dst.store.appliedIndex;
    await dst.store.presenceFilterBuilt();
    const before = dst.store.absentByFilter;
    await dst.put(oid(9999), Z64, 'new');
    assert.ok(dst.store.absentByFilter > before, 'the filter rebuilt after the install is in use');
    for (let i = 1; i <= 30; i++)
      expectError(
        await dst.commit([{ oid: oid(i), serial: Z64, data: data('again') }]),
        'CONFLICT',
      );
    // And a store opened on the installed state again.
    await dst.reopen();
    await dst.store.presenceFilterBuilt();
    expectError(await dst.commit([{ oid: oid(7), serial: Z64, data: data('again') }]), 'CONFLICT');
  });
});
