/**
 * Server-side conflict resolution of BTrees.Length (storage/zodb-resolve.ts): the record reader
 * and writer against records written by ZODB 6 (hex fixtures recorded from
 * ZODB.serialize.ObjectWriter and Python's pickle), malformed input refused cleanly, and the object
 * store's shared locks: concurrent voted changes of one Length all count, on every replica alike.
 */
import * as assert from 'node:assert/strict';
import * as fc from 'fast-check';
import type { Command, StoreOp } from '../../src/storage/codec';
import {
  PickleStateError,
  applyLengthDelta,
  isLengthRecord,
  lengthDelta,
  readLengthRecord,
  writeLengthRecord,
} from '../../src/storage/zodb-resolve';
import { Z64, hex } from '../../src/util/ids';
import { ST, TestStore, expectError, mustTid, oid } from './helpers';

/** The class pickle ZODB 6 writes for a BTrees.Length (protocol 3, memoized). */
const CLASS3 = '8003634254726565732e4c656e6774680a4c656e6774680a71002e';

/** Records written by ZODB 6's ObjectWriter for Length(value). */
const ZODB6: [bigint, string][] = [
  [0n, '80034b002e'],
  [1n, '80034b012e'],
  [255n, '80034bff2e'],
  [256n, '80034d00012e'],
  [65535n, '80034dffff2e'],
  [65536n, '80034a000001002e'],
  [-1n, '80034affffffff2e'],
  [2147483647n, '80034affffff7f2e'],
  [2147483648n, '80038a0500000080002e'],
  [-2147483648n, '80034a000000802e'],
  [-2147483649n, '80038a05ffffff7fff2e'],
  [18446744073709551616n, '80038a090000000000000000012e'],
  [-1180591620717411303424n, '80038a090000000000000000c02e'],
].map(([v, state]) => [v as bigint, CLASS3 + (state as string)]);

/** Records of older pickle protocols (Python's pickle.Pickler at protocols 0, 1 and 2). */
const OLDER: [bigint, string][] = [
  [7n, '634254726565732e4c656e6774680a4c656e6774680a71002e4b072e'],
  [7n, '8002634254726565732e4c656e6774680a4c656e6774680a71002e80024b072e'],
  [1099511627776n, Buffer.from('cBTrees.Length\nLength\np0\n.L1099511627776L\n.').toString('hex')],
];

const record = (h: string): Buffer => Buffer.from(h, 'hex');
const lengthOf = (v: bigint): Buffer => writeLengthRecord(readLengthRecord(record(ZODB6[0][1])), v);

describe('BTrees.Length records', function () {
  it('reads the values ZODB wrote, at every pickle protocol', function () {
    for (const [v, h] of [...ZODB6, ...OLDER]) assert.equal(readLengthRecord(record(h)).value, v);
  });

  it("writes values byte for byte as ZODB's pickler does, in the record's own protocol", function () {
    for (const [v, h] of [...ZODB6, ...OLDER])
      assert.equal(writeLengthRecord(readLengthRecord(record(h)), v).toString('hex'), h);
  });

  it('round-trips any integer', function () {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 600n), max: 2n ** 600n }), (v) => {
        for (const [, h] of [ZODB6[0], ...OLDER]) {
          const like = readLengthRecord(record(h));
          assert.equal(readLengthRecord(writeLengthRecord(like, v)).value, v);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('resolves as Length._p_resolveConflict: committed + (mine - base)', function () {
    const delta = lengthDelta(lengthOf(10n), lengthOf(13n));
    assert.equal(delta, 3n);
    assert.equal(
      readLengthRecord(applyLengthDelta(lengthOf(100n), lengthOf(13n), delta)).value,
      103n,
    );
  });

  it('refuses other classes, other states and anything malformed, with PickleStateError', function () {
    const good = record(ZODB6[3][1]);
    const bad = [
      Buffer.alloc(0),
      Buffer.from('not a pickle'),
      good.subarray(0, good.length - 1), // truncated
      Buffer.concat([good, Buffer.from([0x2e])]), // trailing bytes
      // another class, same shapes
      Buffer.concat([
        Buffer.from('\x80\x03cBTrees.OOBTree\nOOBucket\nq\x00.', 'latin1'),
        good.subarray(27),
      ]),
      record(CLASS3 + '80038e2e'), // bytes, truncated
      record(CLASS3 + '800388' + '2e'), // NEWTRUE: a bool, not an int
      record('634254726565732e4c656e6774680a4c656e6774680a71002e' + '4930310a2e'), // I01: True
      record(CLASS3 + '80037d71012e'), // a dict state
      record(CLASS3 + '80034b014b022e'), // two values
      record(CLASS3 + '80038b000100002e'), // LONG4 longer than the record
      record('8003' + '63' + '6f730a73797374656d0a' + '2e' + '80034b012e'), // os.system
    ];
    for (const b of bad) {
      assert.throws(() => readLengthRecord(b), PickleStateError, b.toString('hex'));
      assert.equal(isLengthRecord(b), false);
    }
  });

  it('never fails other than with PickleStateError on mutated or random bytes', function () {
    const seeds = [...ZODB6, ...OLDER].map(([, h]) => record(h));
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: seeds.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.nat(),
        fc.uint8Array({ maxLength: 64 }),
        (i, flips, cut, random) => {
          const b = Buffer.from(seeds[i]);
          for (const [at, v] of flips) b[at % b.length] = v;
          for (const x of [b, b.subarray(0, cut % (b.length + 1)), Buffer.from(random)]) {
            try {
              const r = readLengthRecord(x);
              // What it accepts, it writes back readable.
              assert.equal(
                readLengthRecord(writeLengthRecord(r, r.value + 1n)).value,
                r.value + 1n,
              );
            } catch (e) {
              if (!(e instanceof PickleStateError)) throw e;
            }
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('object store: Length stores resolved on the server', function () {
  const stores: TestStore[] = [];
  afterEach(async () => {
    while (stores.length) await stores.pop()!.destroy();
  });
  const make = async (): Promise<TestStore> => {
    const s = await TestStore.create();
    stores.push(s);
    return s;
  };
  const L = oid(7);
  const prepare = (txnId: string, ops: StoreOp[], checks: { oid: Buffer }[] = []): Command => ({
    prepare: { txnId, txn: { storage: ST, stores: ops, checks } },
  });
  const finish = (txnId: string): Command => ({ finish: { storage: ST, txnId, tid: Z64 } });
  const valueOf = async (s: TestStore): Promise<bigint> =>
    readLengthRecord((await s.store.load(ST, L)).data).value;

  it('lets concurrent votes on one Length all commit, each adding its change', async () => {
    const s = await make();
    const t0 = await s.put(L, Z64, lengthOf(5n));
    // Three transactions read the value 5 and add 1, 2 and 10; all vote before any finishes.
    for (const [id, v] of [
      ['a', 6n],
      ['b', 7n],
      ['c', 15n],
    ] as const)
      mustOk(
        await s.apply(prepare(id, [{ oid: L, serial: t0, data: lengthOf(v), resolve: true }])),
      );
    mustTid(await s.apply(finish('b')));
    mustTid(await s.apply(finish('a')));
    assert.equal(await valueOf(s), 8n);
    // A vote based on a serial two commits old still counts its own change only.
    mustOk(
      await s.apply(prepare('d', [{ oid: L, serial: t0, data: lengthOf(4n), resolve: true }])),
    );
    mustTid(await s.apply(finish('c')));
    mustTid(await s.apply(finish('d')));
    assert.equal(await valueOf(s), 5n + 1n + 2n + 10n - 1n);
  });

  it('makes ordinary stores, checks and unflagged votes of the object wait while it is shared', async () => {
    const s = await make();
    const t0 = await s.put(L, Z64, lengthOf(1n));
    mustOk(
      await s.apply(prepare('a', [{ oid: L, serial: t0, data: lengthOf(2n), resolve: true }])),
    );
    expectError(await s.commit([{ oid: L, serial: t0, data: lengthOf(9n) }]), 'LOCKED');
    expectError(await s.apply(prepare('b', [], [{ oid: L }])), 'LOCKED');
    expectError(
      await s.apply(prepare('c', [{ oid: L, serial: t0, data: lengthOf(3n) }])),
      'LOCKED',
    );
    // ...and a resolved vote waits for an ordinary one holding the object.
    mustTid(await s.apply(finish('a')));
    const t1 = (await s.store.load(ST, L)).serial;
    mustOk(await s.apply(prepare('e', [{ oid: L, serial: t1, data: lengthOf(4n) }])));
    expectError(
      await s.apply(prepare('f', [{ oid: L, serial: t1, data: lengthOf(5n), resolve: true }])),
      'LOCKED',
    );
    mustTid(await s.apply(finish('e')));
    assert.equal(await valueOf(s), 4n);
  });

  it('leaves stores it cannot resolve to the ordinary conflict check', async () => {
    const s = await make();
    const x = oid(8);
    const t0 = await s.put(x, Z64, Buffer.from('not a Length'));
    await s.put(x, t0, Buffer.from('changed'));
    expectError(
      await s.apply(prepare('a', [{ oid: x, serial: t0, data: lengthOf(1n), resolve: true }])),
      'CONFLICT',
    );
    // The current revision is not a Length: no resolution either.
    const tl = await s.put(L, Z64, lengthOf(1n));
    await s.put(L, tl, Buffer.from('replaced by something else'));
    expectError(
      await s.apply(prepare('b', [{ oid: L, serial: tl, data: lengthOf(2n), resolve: true }])),
      'CONFLICT',
    );
  });

  it('keeps shared locks across a restart and decides alike on every replica', async () => {
    const [r1, r2] = [await make(), await make()];
    const cmds: Command[] = [];
    const t0 = Buffer.alloc(8);
    for (const s of [r1, r2]) t0.set(await s.put(L, Z64, lengthOf(0n)));
    for (let i = 0; i < 6; i++)
      cmds.push(
        prepare(`t${i}`, [{ oid: L, serial: t0, data: lengthOf(BigInt(i + 1)), resolve: true }]),
      );
    for (const s of [r1, r2]) for (const c of cmds) mustOk(await s.apply(c));
    await r2.reopen(); // locks are rebuilt from the prepared records
    expectError(await r2.commit([{ oid: L, serial: t0, data: lengthOf(1n) }]), 'LOCKED');
    for (const s of [r1, r2])
      for (const i of [3, 0, 5, 1, 4, 2]) mustTid(await s.apply(finish(`t${i}`)));
    assert.equal(await valueOf(r1), 21n);
    assert.equal(await valueOf(r2), 21n);
    const h1 = await r1.store.history(ST, L, 10);
    const h2 = await r2.store.history(ST, L, 10);
    assert.equal(h1.length, 7);
    assert.deepEqual(
      h1.map((h) => hex(h.tid)),
      h2.map((h) => hex(h.tid)),
    );
    // Nothing is left locked: an ordinary store based on the current serial commits.
    const cur = (await r2.store.load(ST, L)).serial;
    mustTid(await r2.commit([{ oid: L, serial: cur, data: lengthOf(0n) }]));
  });
});

function mustOk(r: { ok: boolean; error?: { kind: string; message: string } }): void {
  if (!r.ok) assert.fail(`expected success, got ${r.error?.kind}: ${r.error?.message}`);
}
