/**
 * applyBatch applies a run of commands with one LevelDB write: it must give exactly the results
 * and the state that applying them one by one gives, including commands that see the effects of
 * earlier ones in the same batch (conflicts, a vote then its finish, undo and pack mid-batch).
 */
import * as assert from 'node:assert/strict';
import fc from 'fast-check';
import type { Command } from '../../src/storage/codec';
import { ObjectStore } from '../../src/storage/object-store';
import { Z64, hex, p64 } from '../../src/util/ids';
import { rmDir, tmpDir } from '../harness/index';

const oid = (n: number): Buffer => p64(BigInt(n));
const tid = (n: number): Buffer => p64(BigInt(n) * 1000n);

function describeResult(r: Awaited<ReturnType<ObjectStore['apply']>>): string {
  return r.ok
    ? `ok ${r.tid ? hex(r.tid) : ''} ${(r.oids ?? []).map(hex).join(',')} ${r.removed ?? ''}`
    : `${r.error.kind}`;
}

async function state(s: ObjectStore): Promise<string[]> {
  const out: string[] = [`last ${hex(s.lastTid)} applied ${s.appliedIndex}`];
  for await (const t of s.iterate('1'))
    out.push(
      `${hex(t.tid)} ${t.records.map((r) => `${hex(r.oid)}=${r.deleted ? 'x' : r.data.toString()}`).join(' ')}`,
    );
  for (let i = 0; i < 6; i++)
    out.push(
      await s.load('1', oid(i)).then(
        (l) => `${i} ${hex(l.serial)} ${l.data}`,
        (e) => `${i} ${e.kind}`,
      ),
    );
  return out;
}

describe('ObjectStore.applyBatch', () => {
  it('matches one-by-one application for random command runs, whatever the batch boundaries', async function () {
    this.timeout(60_000);
    // Commands use serials of earlier commands' TIDs (tid(k)), so some are current and some stale.
    const cmdArb = fc.oneof(
      fc
        .record({
          o: fc.integer({ min: 0, max: 5 }),
          base: fc.integer({ min: 0, max: 12 }),
          t: fc.integer({ min: 1, max: 12 }),
        })
        .map(({ o, base, t }): Command => ({
          commit: {
            tid: tid(t),
            txn: {
              storage: '1',
              stores: [
                { oid: oid(o), serial: base === 0 ? Z64 : tid(base), data: Buffer.from(`d${t}`) },
              ],
            },
          },
        })),
      fc
        .record({
          id: fc.constantFrom('a', 'b'),
          o: fc.integer({ min: 0, max: 5 }),
          base: fc.integer({ min: 0, max: 12 }),
        })
        .map(({ id, o, base }): Command => ({
          prepare: {
            txnId: id,
            txn: {
              storage: '1',
              stores: [
                { oid: oid(o), serial: base === 0 ? Z64 : tid(base), data: Buffer.from(id) },
              ],
            },
          },
        })),
      fc
        .record({ id: fc.constantFrom('a', 'b'), t: fc.integer({ min: 1, max: 12 }) })
        .map(({ id, t }): Command => ({ finish: { storage: '1', txnId: id, tid: tid(t) } })),
      fc.constantFrom('a', 'b').map((id): Command => ({ abort: { storage: '1', txnId: id } })),
      fc
        .integer({ min: 1, max: 12 })
        .map((t): Command => ({ undo: { tid: tid(t + 20), storage: '1', undoTid: tid(t) } })),
      fc
        .integer({ min: 1, max: 12 })
        .map((t): Command => ({ pack: { storage: '1', packTid: tid(t) } })),
      fc.integer({ min: 1, max: 3 }).map((n): Command => ({ newOids: { storage: '1', count: n } })),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(cmdArb, { minLength: 1, maxLength: 25 }),
        fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 10 }),
        async (cmds, cuts) => {
          const da = tmpDir('batch-a');
          const db = tmpDir('batch-b');
          const a = await ObjectStore.open(da, { sync: false });
          const b = await ObjectStore.open(db, { sync: false });
          try {
            const one: string[] = [];
            for (let i = 0; i < cmds.length; i++)
              one.push(describeResult(await a.apply(i + 1, cmds[i])));
            const batched: string[] = [];
            let i = 0;
            for (let c = 0; i < cmds.length; c++) {
              const n = cuts[c % cuts.length];
              const items = cmds.slice(i, i + n).map((cmd, k) => ({ index: i + k + 1, cmd }));
              for (const r of await b.applyBatch(items)) batched.push(describeResult(r));
              i += items.length;
            }
            assert.deepEqual(batched, one);
            assert.deepEqual(await state(b), await state(a));
          } finally {
            await a.close();
            await b.close();
            rmDir(da);
            rmDir(db);
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});
