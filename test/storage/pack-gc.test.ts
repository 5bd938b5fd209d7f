/**
 * Pack with garbage collection in bounded steps (storage/pack-gc.ts, storage/pack-steps.ts) on
 * real LevelDB stores: it removes what is unreachable from the root at the pack time and keeps
 * everything reachable or written later; it leaves the same state as the whole pack in one
 * command; replicas applying the same steps end identical; and what commits while the pack runs
 * (the barrier) never loses an object it needs.
 */
import * as assert from 'node:assert/strict';
import type { Command, StoreOp } from '../../src/storage/codec';
import { snapshotChunkCodec } from '../../src/storage/codec';
import type { ApplyResult } from '../../src/storage/object-store';
import { packWalk, runPack } from '../../src/storage/pack-gc';
import {
  PACK_ABANDONED_AFTER_MS,
  PACK_STEP_OBJECTS_MAX,
  PACK_STEP_REVISIONS_MAX,
  PackStep,
} from '../../src/storage/pack-steps';
import { Z64, hex, p64, tidFromTime, tidToTime, u64 } from '../../src/util/ids';
import { Mulberry32 } from '../../src/util/prng';
import { ST, TestStore, expectError, mustTid, oid, rejectsWith } from './helpers';

/** A store of object `o` referencing `refs`. */
function obj(o: number, refs: number[], serial: Buffer = Z64): StoreOp {
  return { oid: oid(o), serial, data: Buffer.from(`object ${o}`), refs: refs.map(oid) };
}

/** Every R (revision) and C (current) record of a store, as hex key=value lines. */
async function objectRecords(t: TestStore): Promise<string[]> {
  const out: string[] = [];
  for await (const chunk of t.store.snapshot().chunks) {
    const c = snapshotChunkCodec.decode(chunk);
    c.keys.forEach((k, i) => {
      if (k[0] === 0x52 || k[0] === 0x43 || k[0] === 0x51)
        out.push(`${Buffer.from(k).toString('hex')}=${Buffer.from(c.values[i]).toString('hex')}`);
    });
  }
  return out;
}

function pack(t: TestStore, gc = true, packTid?: Buffer) {
  return runPack({
    store: t.store,
    propose: (cmd) => t.apply(cmd),
    storage: ST,
    packTid: packTid ?? t.store.lastTid,
    gc,
    now: () => performance.now(),
  });
}

async function exists(t: TestStore, o: number): Promise<boolean> {
  try {
    await t.store.load(ST, oid(o));
    return true;
  } catch {
    return false;
  }
}

describe('pack with garbage collection in steps', function () {
  this.timeout(300_000);
  const stores: TestStore[] = [];
  const fresh = async (): Promise<TestStore> => {
    const t = await TestStore.create();
    stores.push(t);
    return t;
  };
  afterEach(async function () {
    while (stores.length) await stores.pop()!.destroy();
  });

  it('removes objects unreachable from the root at the pack time and keeps the rest', async function () {
    const t = await fresh();
    // root -> 1 -> 2; 3 -> 4 unreachable (a cycle 4 -> 3 too); 5 referenced only weakly
    // (not a declared reference); 6 written after the pack time references 7.
    await t.mustCommit([
      obj(0, [1]),
      obj(1, [2]),
      obj(2, []),
      obj(3, [4]),
      obj(4, [3]),
      obj(5, []),
    ]);
    await t.mustCommit([obj(7, [])]);
    const packTid = t.store.lastTid;
    await t.mustCommit([obj(6, [7])]);
    const r = await pack(t, true, packTid);
    assert.equal(r.collected, 3);
    assert.equal(r.walk?.abandoned, undefined);
    for (const o of [0, 1, 2, 6, 7]) assert.ok(await exists(t, o), `object ${o} kept`);
    for (const o of [3, 4, 5]) assert.ok(!(await exists(t, o)), `object ${o} collected`);
    assert.equal(t.store.storageSummary(ST).objectCount, 5);
    assert.equal(t.store.packState(ST), undefined, 'the pack state is cleared at the end');
    assert.deepEqual(t.store.storageSummary(ST).packTid, packTid);
    // Collected objects' history is gone too.
    await rejectsWith(t.store.loadBefore(ST, oid(3), t.store.lastTid), 'NOT_FOUND');
  });

  it('leaves the same objects and revisions as the whole pack, over several steps', async function () {
    const rng = new Mulberry32(17);
    const n = PACK_STEP_OBJECTS_MAX * 2 + 123;
    const whole = await fresh();
    const steps = await fresh();
    const cmds: Command[] = [];
    // A random graph in several transactions, a few revisions per object, some deletions.
    const refs = (o: number): number[] =>
      Array.from({ length: rng.nextInt(4) }, () => (o * 7 + rng.nextInt(n)) % n).filter(
        (x) => x !== o,
      );
    const serials = new Map<number, Buffer>();
    const commitAll = async (stores: StoreOp[]) => {
      const cmd: Command = { commit: { tid: Z64, txn: { storage: ST, stores } } };
      cmds.push(cmd);
      const a = mustTid(await whole.apply(cmd));
      const b = mustTid(await steps.apply(cmd));
      assert.deepEqual(a, b);
      for (const s of stores) serials.set(Number(Buffer.from(s.oid).readBigUInt64BE(0)), a);
    };
    for (let o = 0; o < n; o += 500) {
      const batch: StoreOp[] = [];
      for (let i = o; i < Math.min(n, o + 500); i++)
        batch.push(obj(i, i === 0 ? [1, 2, 3] : refs(i)));
      await commitAll(batch);
    }
    for (let round = 0; round < 3; round++) {
      const batch: StoreOp[] = [];
      for (let i = round; i < n; i += 7) {
        if (rng.nextInt(20) === 0 && i !== 0)
          batch.push({ oid: oid(i), serial: serials.get(i), delete: true });
        else batch.push(obj(i, i === 0 ? [1, 2, 3, 4, 5] : refs(i), serials.get(i)));
      }
      await commitAll(
        batch.filter(
          (s) => !s.delete || serials.has(Number(Buffer.from(s.oid).readBigUInt64BE(0))),
        ),
      );
    }
    const packTid = whole.store.lastTid;
    // Written after the pack time: kept, with what they reference.
    await commitAll([obj(n - 1, [n - 2, n - 3], serials.get(n - 1))]);
    const rw = await whole.apply({ pack: { storage: ST, packTid, gc: true } });
    assert.ok(rw.ok);
    const rs = await pack(steps, true, packTid);
    assert.ok(rs.sweepSteps > 2, `several sweep steps (${rs.sweepSteps})`);
    assert.ok(rs.collected > 0, 'the random graph has garbage');
    assert.equal(rs.removed, rw.removed);
    assert.deepEqual(await objectRecords(steps), await objectRecords(whole));
    assert.equal(
      steps.store.storageSummary(ST).objectCount,
      whole.store.storageSummary(ST).objectCount,
    );
  });

  it('is identical on every replica: a second store applying the same steps ends the same', async function () {
    const leader = await fresh();
    const follower = await fresh();
    const log: Command[] = [];
    const both = async (cmd: Command): Promise<ApplyResult> => {
      log.push(cmd);
      const a = await leader.apply(cmd);
      const b = await follower.apply(cmd);
      assert.deepEqual(b, a);
      return a;
    };
    for (let i = 0; i < 50; i++)
      await both({
        commit: {
          tid: Z64,
          // 0 -> 1 -> ... -> 24; 25 -> ... -> 49 unreachable
          txn: {
            storage: ST,
            stores: [obj(i, i === 24 ? [] : i % 3 === 0 ? [i + 1, i + 3] : [i + 1])],
          },
        },
      });
    // Only the leader walks; the follower applies the log.
    const r = await runPack({
      store: leader.store,
      propose: both,
      storage: ST,
      packTid: leader.store.lastTid,
      gc: true,
      now: () => 0,
    });
    assert.ok(log.some((c) => 'pack' in c && c.pack.step === PackStep.DOOM));
    assert.equal(r.collected, 25);
    assert.deepEqual(await objectRecords(follower), await objectRecords(leader));
  });

  it('goes on after a snapshot taken in the middle of it, on the store that installed it', async function () {
    const t = await fresh();
    await t.mustCommit([obj(0, [1]), obj(1, []), obj(2, [3]), obj(3, [])]);
    const r = await t.apply({
      pack: { storage: ST, packTid: t.store.lastTid, gc: true, step: PackStep.START },
    });
    const packId = Number(t.store.packState(ST)!.id);
    const walk = await packWalk(t.store, ST, r.ok ? r.tid! : Z64);
    await t.apply({
      pack: { storage: ST, packTid: Z64, packId, step: PackStep.DOOM, oids: walk.garbage },
    });
    const chunks: Buffer[] = [];
    for await (const c of t.store.snapshot().chunks) chunks.push(c);
    const other = await fresh();
    other.index = await other.store.restore(async function* () {
      yield* chunks;
    });
    const state = (x: TestStore) => {
      const p = x.store.packState(ST)!;
      return [Number(p.id), hex(p.packTid!), Number(p.doomed ?? 0), p.cancelled || '', !!p.gc];
    };
    assert.deepEqual(state(other), state(t));
    assert.equal(state(other)[2], 2);
    for (const s of [t, other]) {
      const done = await s.apply({
        pack: { storage: ST, packTid: Z64, packId, step: PackStep.SWEEP, fromOid: Z64 },
      });
      assert.ok(done.ok && done.oids?.length === 0);
    }
    assert.deepEqual(await objectRecords(other), await objectRecords(t));
    assert.ok(!(await exists(other, 2)) && !(await exists(other, 3)) && (await exists(other, 1)));
  });

  it('sweeps an object with more revisions than one step removes over several steps', async function () {
    const t = await fresh();
    let serial = mustTid(await t.commit([obj(0, [1]), obj(1, [])]));
    const total = PACK_STEP_REVISIONS_MAX + 2500;
    for (let done = 1; done < total;) {
      const items: { index: number; cmd: Command }[] = [];
      for (let i = 0; i < 1000 && done < total; i++, done++) {
        // A commit's TID is the last one plus one here (proposed TIDs are zero).
        items.push({
          index: ++t.index,
          cmd: { commit: { tid: Z64, txn: { storage: ST, stores: [obj(1, [], serial)] } } },
        });
        serial = p64(u64(serial) + 1n);
      }
      const rs = await t.store.applyBatch(items);
      assert.deepEqual(mustTid(rs[rs.length - 1]), serial);
    }
    const r = await pack(t);
    assert.equal(r.removed, total - 1);
    assert.ok(r.sweepSteps >= 2);
    assert.deepEqual((await t.store.load(ST, oid(1))).serial, serial);
    assert.equal((await t.store.history(ST, oid(1), 10)).length, 1);
  });

  describe('commits while the pack runs', function () {
    /** root -> 1; 2 -> 3 unreachable. Returns the serials. */
    async function graph(t: TestStore): Promise<Map<number, Buffer>> {
      const tid = mustTid(await t.commit([obj(0, [1]), obj(1, []), obj(2, [3]), obj(3, [])]));
      return new Map([0, 1, 2, 3].map((o) => [o, tid]));
    }
    async function start(t: TestStore): Promise<{ packId: number; packTid: Buffer }> {
      const r = await t.apply({
        pack: { storage: ST, packTid: t.store.lastTid, gc: true, step: PackStep.START },
      });
      assert.ok(r.ok);
      return { packId: Number(t.store.packState(ST)!.id), packTid: r.tid! };
    }
    async function sweepAll(t: TestStore, packId: number, packTid: Buffer): Promise<void> {
      let from: Buffer = Z64;
      for (let i = 0; i < 100; i++) {
        const r = await t.apply({
          pack: { storage: ST, packTid, packId, step: PackStep.SWEEP, fromOid: from },
        });
        assert.ok(r.ok, r.ok ? '' : r.error.message);
        if (!r.oids?.length) return;
        from = Buffer.from(r.oids[0]);
      }
      assert.fail('the sweep did not end');
    }

    it('a commit referencing an unreachable object after the walk cancels the collection', async function () {
      const t = await fresh();
      const s = await graph(t);
      const { packId, packTid } = await start(t);
      const walk = await packWalk(t.store, ST, packTid);
      assert.deepEqual(walk.garbage.map(hex), [hex(oid(2)), hex(oid(3))]);
      // A client holding a stale reference links 2 again (after the walk, before the marks).
      await t.mustCommit([obj(1, [2], s.get(1))]);
      const r = await t.apply({
        pack: { storage: ST, packTid, packId, step: PackStep.DOOM, oids: walk.garbage },
      });
      assert.ok(r.ok);
      assert.match(t.store.packState(ST)!.cancelled ?? '', /written or referenced after the pack/);
      await sweepAll(t, packId, packTid);
      for (const o of [0, 1, 2, 3]) assert.ok(await exists(t, o), `object ${o} kept`);
    });

    it('a commit referencing a marked object before the sweep cancels it; during the sweep it is refused', async function () {
      for (const when of ['marked', 'sweeping'] as const) {
        const t = await fresh();
        const s = await graph(t);
        // Many live objects first, so the sweep takes several steps and 2, 3 come late.
        await t.mustCommit(
          Array.from({ length: PACK_STEP_OBJECTS_MAX + 10 }, (_, i) => obj(10 + i, [])),
        );
        await t.mustCommit([
          obj(
            1,
            Array.from({ length: PACK_STEP_OBJECTS_MAX + 10 }, (_, i) => 10 + i),
            s.get(1),
          ),
        ]);
        s.set(1, t.store.lastTid);
        // 2 and 3 become the last OIDs so the first sweep step does not reach them.
        const { packId, packTid } = await start(t);
        const walk = await packWalk(t.store, ST, packTid);
        assert.deepEqual(walk.garbage.map(hex), [hex(oid(2)), hex(oid(3))]);
        assert.ok(
          (
            await t.apply({
              pack: { storage: ST, packTid, packId, step: PackStep.DOOM, oids: walk.garbage },
            })
          ).ok,
        );
        if (when === 'marked') {
          await t.mustCommit([obj(1, [3], s.get(1))]);
          assert.match(t.store.packState(ST)!.cancelled ?? '', /referenced again/);
          await sweepAll(t, packId, packTid);
          for (const o of [2, 3]) assert.ok(await exists(t, o), `object ${o} kept`);
        } else {
          const first = await t.apply({
            pack: { storage: ST, packTid, packId, step: PackStep.SWEEP, fromOid: oid(4) },
          });
          assert.ok(first.ok && first.oids?.length, 'the sweep goes on');
          const refused = expectError(await t.commit([obj(1, [3], s.get(1))]), 'CONFLICT');
          assert.match(refused.message, /unreachable at the pack time/);
          // A vote is refused alike; nothing of either is written.
          expectError(
            await t.apply({
              prepare: { txnId: 'v', txn: { storage: ST, stores: [obj(5, [2])] } },
            }),
            'CONFLICT',
          );
          assert.deepEqual((await t.store.load(ST, oid(1))).serial, s.get(1));
          await sweepAll(t, packId, packTid);
          for (const o of [2, 3]) assert.ok(!(await exists(t, o)), `object ${o} collected`);
        }
        assert.equal(t.store.packState(ST), undefined);
      }
    });

    it('a vote holding an unreachable object keeps it, and its finish commits', async function () {
      const t = await fresh();
      const s = await graph(t);
      const { packId, packTid } = await start(t);
      const walk = await packWalk(t.store, ST, packTid);
      const voted = await t.apply({
        prepare: { txnId: 'v1', txn: { storage: ST, stores: [obj(1, [2], s.get(1))] } },
      });
      assert.ok(voted.ok);
      await t.apply({
        pack: { storage: ST, packTid, packId, step: PackStep.DOOM, oids: walk.garbage },
      });
      assert.ok(t.store.packState(ST)!.cancelled);
      await sweepAll(t, packId, packTid);
      mustTid(await t.apply({ finish: { storage: ST, txnId: 'v1', tid: Z64 } }));
      for (const o of [2, 3]) assert.ok(await exists(t, o), `object ${o} kept`);
    });

    it('keeps an unreachable record it cannot read, and collects nothing when one is reachable', async function () {
      const t = await fresh();
      await t.mustCommit([
        obj(0, [1]),
        obj(1, []),
        { ...obj(2, []), refs: [], opaque: true },
        obj(3, []),
      ]);
      let r = await pack(t);
      assert.equal(r.walk?.unreadableKept, 1);
      assert.ok(await exists(t, 2), 'the unreadable record is kept');
      assert.ok(!(await exists(t, 3)));
      // Now the root reaches an unreadable record: its references are unknown, nothing goes.
      await t.mustCommit([obj(4, []), { ...obj(5, []), refs: [], opaque: true }]);
      await t.mustCommit([obj(0, [1, 5], (await t.store.load(ST, oid(0))).serial)]);
      r = await pack(t);
      assert.match(r.walk?.abandoned ?? '', /references are unknown/);
      assert.equal(r.collected, 0);
      assert.ok(await exists(t, 4));
    });

    it('a pack left unfinished stops collecting an hour (of TIDs) after it began', async function () {
      const t = await fresh();
      const s = await graph(t);
      // More objects than one sweep step takes, after 2 and 3 (so a step from 4 does not end).
      const many = Array.from({ length: PACK_STEP_OBJECTS_MAX + 10 }, (_, i) => 10 + i);
      await t.mustCommit(many.map((o) => obj(o, [])));
      await t.mustCommit([obj(0, [1, ...many], s.get(0))]);
      const { packId, packTid } = await start(t);
      const walk = await packWalk(t.store, ST, packTid);
      assert.deepEqual(walk.garbage.map(hex), [hex(oid(2)), hex(oid(3))]);
      await t.apply({
        pack: { storage: ST, packTid, packId, step: PackStep.DOOM, oids: walk.garbage },
      });
      await t.apply({
        pack: { storage: ST, packTid, packId, step: PackStep.SWEEP, fromOid: oid(4) },
      });
      // Its driver went away. Within the hour a reference to a marked object is refused...
      expectError(await t.commit([obj(1, [2], s.get(1))]), 'CONFLICT');
      // ...after it (the log's TIDs say so), the pack is abandoned and the commit goes through.
      const later = tidFromTime(tidToTime(t.store.lastTid) + PACK_ABANDONED_AFTER_MS + 1000);
      const s1 = mustTid(await t.commit([obj(1, [], s.get(1))], { tid: later }));
      mustTid(await t.commit([obj(1, [2], s1)]));
      assert.match(t.store.packState(ST)!.cancelled ?? '', /abandoned/);
      await sweepAll(t, packId, packTid);
      for (const o of [2, 3]) assert.ok(await exists(t, o), `object ${o} kept`);
    });

    it('a pack started again replaces an unfinished one; steps of the old one are refused', async function () {
      const t = await fresh();
      await graph(t);
      const first = await start(t);
      const second = await start(t);
      assert.notEqual(first.packId, second.packId);
      const r = await t.apply({
        pack: { ...first, storage: ST, step: PackStep.SWEEP, fromOid: Z64 },
      });
      assert.match(expectError(r, 'INVALID').message, /not running/);
      await sweepAll(t, second.packId, second.packTid);
    });
  });
});
