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
  isIntSetRecord,
  isLengthRecord,
  lengthDelta,
  mergeSets,
  readIntSetRecord,
  readLengthRecord,
  resolveIntSet,
  writeIntSetRecord,
  writeLengthRecord,
} from '../../src/storage/zodb-resolve';
import { BUCKET_MERGE_CASES } from './bucket-merge-cases';
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

/** The class pickle ZODB 6 writes for a BTrees.IIBTree.IISet. */
const IISET = '8003634254726565732e494942547265650a49495365740a71002e';
/** Set records written by ZODB 6's ObjectWriter. */
const SETS: [bigint[], string][] = [
  [[], IISET + '8003298571012e'],
  [[5n], IISET + '80034b058571018571022e'],
  [[1n, 2n], IISET + '80034b014b028671018571022e'],
  [[1n, 2n, 3n], IISET + '80034b014b024b038771018571022e'],
  [
    [-5n, 1n, 300n, 70000n, 2147483647n],
    IISET + '8003284afbffffff4b014d2c014a701101004affffff7f7471018571022e',
  ],
  [
    [1099511627776n, 4611686018427387904n],
    '8003634254726565732e4c4c42547265650a4c4c5365740a71002e' +
      '80038a060000000000018a0800000000000000408671018571022e',
  ],
];
/** The first bucket of an IITreeSet of 0..299 (keys 0..59), whose next bucket is OID 3. */
const BUCKET =
  IISET +
  '8003284b004b014b024b034b044b054b064b074b084b094b0a4b0b4b0c4b0d4b0e4b0f4b104b114b124b134b14' +
  '4b154b164b174b184b194b1a4b1b4b1c4b1d4b1e4b1f4b204b214b224b234b244b254b264b274b284b294b2a4b2b' +
  '4b2c4b2d4b2e4b2f4b304b314b324b334b344b354b364b374b384b394b3a4b3b7471014308000000000000000371' +
  '026800867103518671042e';
const range = (a: number, b: number): bigint[] =>
  Array.from({ length: b - a }, (_, i) => BigInt(a + i));

describe('BTrees sets with integer keys', function () {
  it('reads the keys (and next bucket) ZODB wrote and writes them back byte for byte', function () {
    for (const [keys, h] of SETS) {
      const r = readIntSetRecord(record(h));
      assert.deepEqual(r.keys, keys);
      assert.equal(r.next, undefined);
      assert.equal(writeIntSetRecord(r, keys).toString('hex'), h);
    }
    const b = readIntSetRecord(record(BUCKET));
    assert.deepEqual(b.keys, range(0, 60));
    assert.equal(b.next, '0000000000000003');
    assert.equal(writeIntSetRecord(b, range(0, 60)).toString('hex'), BUCKET);
    // Any keys written in any form read back (tuple forms of 0 to 4+ keys).
    for (const n of [0, 1, 2, 3, 4, 70])
      for (const like of [readIntSetRecord(record(SETS[4][1])), b])
        assert.deepEqual(
          readIntSetRecord(writeIntSetRecord(like, range(7, 7 + n))).keys,
          range(7, 7 + n),
        );
  });

  it("merges as BTrees' bucket merge does (400 answers recorded from BTrees)", function () {
    const keys = (x: string): bigint[] => (x ? x.split('.').map((k) => BigInt(k)) : []);
    const cases = BUCKET_MERGE_CASES.split(' ');
    assert.equal(cases.length, 400);
    let conflicts = 0;
    for (const c of cases) {
      const [o, a, b, want] = c.split('|');
      const got = mergeSets(keys(o), keys(a), keys(b));
      if (want === 'x') conflicts++;
      assert.deepEqual(got, want === 'x' ? undefined : keys(want), c);
    }
    assert.ok(conflicts > 50 && conflicts < 350, 'both outcomes are covered');
  });

  it('resolves records: merged keys in the form of mine; another class or next bucket conflicts', function () {
    const like = readIntSetRecord(record(SETS[4][1]));
    const rec = (ks: number[]): Buffer => writeIntSetRecord(like, ks.map(BigInt));
    const merged = resolveIntSet(rec([1, 5, 9]), rec([1, 5, 9, 12]), rec([1, 3, 5, 9]));
    assert.ok(merged);
    assert.deepEqual(readIntSetRecord(merged).keys, [1n, 3n, 5n, 9n, 12n]);
    assert.equal(resolveIntSet(rec([1, 5]), rec([1, 5, 7]), rec([1, 5, 7])), undefined);
    const b = readIntSetRecord(record(BUCKET));
    const bucket = (ks: number[], next: string): Buffer =>
      writeIntSetRecord(
        {
          ...b,
          suffix: Buffer.from(b.suffix.toString('hex').replace('0000000000000003', next), 'hex'),
        },
        ks.map(BigInt),
      );
    assert.ok(
      resolveIntSet(
        bucket([1, 2], '0000000000000003'),
        bucket([1, 2, 3], '0000000000000003'),
        bucket([0, 1, 2], '0000000000000003'),
      ),
    );
    assert.equal(
      resolveIntSet(
        bucket([1, 2], '0000000000000003'),
        bucket([1, 2, 3], '0000000000000009'),
        bucket([0, 1, 2], '0000000000000003'),
      ),
      undefined,
      'a bucket split or merged beside it',
    );
    const ll = readIntSetRecord(record(SETS[5][1]));
    assert.equal(
      resolveIntSet(rec([1]), writeIntSetRecord(ll, [1n, 2n]), rec([0, 1])),
      undefined,
      'another class',
    );
  });

  it('refuses other classes and malformed records with PickleStateError, also when mutated at random', function () {
    const oo = Buffer.from('\x80\x03cBTrees.OOBTree\nOOSet\nq\x00.\x80\x03)\x85q\x01.', 'latin1');
    const unordered = record(IISET + '80034b024b018671018571022e');
    for (const bad of [
      oo,
      unordered,
      record(ZODB6[1][1]),
      record(SETS[2][1]).subarray(0, record(SETS[2][1]).length - 1),
    ]) {
      assert.throws(() => readIntSetRecord(bad), PickleStateError, bad.toString('hex'));
      assert.equal(isIntSetRecord(bad), false);
    }
    assert.equal(isIntSetRecord(record(BUCKET)), true);
    const seeds = [...SETS.map(([, h]) => record(h)), record(BUCKET)];
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: seeds.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.nat(),
        (i, flips, cut) => {
          const b = Buffer.from(seeds[i]);
          for (const [at, v] of flips) b[at % b.length] = v;
          for (const x of [b, b.subarray(0, cut % (b.length + 1))]) {
            try {
              const r = readIntSetRecord(x);
              assert.deepEqual(readIntSetRecord(writeIntSetRecord(r, r.keys)).keys, r.keys);
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

describe('object store: integer-key sets resolved on the server', function () {
  let s: TestStore;
  beforeEach(async () => {
    s = await TestStore.create();
  });
  afterEach(async () => {
    await s.destroy();
  });
  const like = readIntSetRecord(record(SETS[4][1]));
  const set = (ks: number[]): Buffer => writeIntSetRecord(like, ks.map(BigInt));
  const S = oid(9);
  const keysOf = async (): Promise<bigint[]> =>
    readIntSetRecord((await s.store.load(ST, S)).data).keys;

  it('merges a vote based on an older revision with the committed one, and finishes it', async () => {
    const t0 = await s.put(S, Z64, set([1, 5, 9]));
    // Another transaction inserted 12 meanwhile; this one, based on t0, inserts 3.
    await s.mustCommit([{ oid: S, serial: t0, data: set([1, 5, 9, 12]), resolve: true }]);
    mustOk(
      await s.apply({
        prepare: {
          txnId: 'a',
          txn: {
            storage: ST,
            stores: [{ oid: S, serial: t0, data: set([1, 3, 5, 9]), resolve: true }],
          },
        },
      }),
    );
    // Its lock is exclusive: nothing changes the set before its finish writes the merge.
    expectError(
      await s.apply({
        prepare: {
          txnId: 'b',
          txn: {
            storage: ST,
            stores: [{ oid: S, serial: t0, data: set([1, 4, 5, 9]), resolve: true }],
          },
        },
      }),
      'LOCKED',
    );
    mustTid(await s.apply({ finish: { storage: ST, txnId: 'a', tid: Z64 } }));
    assert.deepEqual(await keysOf(), [1n, 3n, 5n, 9n, 12n]);
    // The same key inserted by both sides conflicts, as in BTrees.
    expectError(
      await s.apply({
        prepare: {
          txnId: 'c',
          txn: {
            storage: ST,
            stores: [{ oid: S, serial: t0, data: set([1, 3, 5, 9]), resolve: true }],
          },
        },
      }),
      'CONFLICT',
    );
    // Without the flag, no resolution.
    expectError(await s.commit([{ oid: S, serial: t0, data: set([1, 2, 5, 9]) }]), 'CONFLICT');
  });
});
