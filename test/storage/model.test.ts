/**
 * Model-based property test: random command sequences are applied to the real ObjectStore (on
 * LevelDB) and to the in-memory Model of model.ts; every ApplyResult, every commit event and,
 * after each command, the load / loadBefore / loadSerial / history answers for every object must
 * agree. Reads after the pack time are also checked against the never-packed history, so a pack
 * that removes something still needed is caught even where store and model share a rule.
 *
 * Reproducing a failure: fast-check prints the seed and the shrunk path of the counterexample
 * ("Counterexample: ... Seed: <n>, Path: <p>"). Re-run just that case with
 *   FC_SEED=<n> FC_PATH=<p> npx mocha dist/test/storage/model.test.js
 * FC_RUNS=<n> changes the number of runs (default 40).
 */
import * as assert from 'node:assert/strict';
import fc from 'fast-check';
import { Command, StoreOp } from '../../src/storage/codec';
import { StorageError } from '../../src/storage/errors';
import { ApplyResult, CommitEvent, ObjectStore } from '../../src/storage/object-store';
import { Z64, hex, p64 } from '../../src/util/ids';
import { TestStore, collect } from './helpers';
import { Model, NEvent, NRead, NResult, hx } from './model';

const STORAGES = ['1', 'b'];
/** OIDs 0..OID_COUNT-1; OID 0 is the root for pack's gc. */
const OID_COUNT = 4;
const TXN_IDS = 6;
const RUNS = Number(process.env.FC_RUNS ?? 40);
const MAX_COMMANDS = 30;
const HISTORY_SIZE = 100;

// ---------------------------------------------------------------------------------------------
// Abstract commands: serials, TIDs and undo/pack targets are picked against the state at the
// time the command runs (from the model), so stale and current serials both occur.

type SerialPick = { k: 'current' } | { k: 'z64' } | { k: 'empty' } | { k: 'past'; i: number };
interface AOp {
  oid: number;
  what: 'store' | 'delete' | 'check';
  serial: SerialPick;
  data: number;
  refs: number[];
}
type ACmd =
  | { t: 'commit'; st: number; ops: AOp[]; tidDelta: number; user: string }
  | { t: 'dup'; st: number; op: AOp }
  | { t: 'prepare'; st: number; txn: number; ops: AOp[] }
  | { t: 'finish'; st: number; txn: number; voted: boolean; tidDelta: number }
  | { t: 'abort'; st: number; txn: number; voted: boolean }
  | { t: 'undo'; st: number; pick: number; recent: boolean; tidDelta: number }
  | { t: 'pack'; st: number; pick: number; offset: number; gc: boolean }
  | { t: 'newOids'; st: number; count: number }
  | { t: 'noop' };

const stArb = fc.constantFrom(0, 0, 0, 1);
const serialArb: fc.Arbitrary<SerialPick> = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ k: 'current' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'z64' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'empty' as const }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('past' as const), i: fc.nat(60) }) },
);
const opArb: fc.Arbitrary<AOp> = fc.record({
  oid: fc.integer({ min: 0, max: OID_COUNT - 1 }),
  what: fc.constantFrom('store' as const, 'store' as const, 'delete' as const, 'check' as const),
  serial: serialArb,
  data: fc.nat(9),
  refs: fc.subarray([0, 1, 2, 3], { maxLength: 2 }),
});
const opsArb = fc.uniqueArray(opArb, { selector: (o) => o.oid, maxLength: 3 });
const tidDeltaArb = fc.integer({ min: -3, max: 4 });
const txnArb = fc.nat(TXN_IDS - 1);

const cmdArb: fc.Arbitrary<ACmd> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      t: fc.constant('commit' as const),
      st: stArb,
      ops: opsArb,
      tidDelta: tidDeltaArb,
      user: fc.constantFrom('', 'alice'),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('dup' as const), st: stArb, op: opArb }) },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant('prepare' as const),
      st: stArb,
      txn: txnArb,
      ops: opsArb,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant('finish' as const),
      st: stArb,
      txn: txnArb,
      voted: fc.boolean(),
      tidDelta: tidDeltaArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('abort' as const),
      st: stArb,
      txn: txnArb,
      voted: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant('undo' as const),
      st: stArb,
      pick: fc.nat(100),
      recent: fc.boolean(),
      tidDelta: tidDeltaArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('pack' as const),
      st: stArb,
      pick: fc.nat(100),
      offset: fc.integer({ min: -1, max: 1 }),
      gc: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant('newOids' as const),
      st: stArb,
      count: fc.integer({ min: 1, max: 3 }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ t: 'noop' as const }) },
);

function max0(n: bigint): bigint {
  return n < 0n ? 0n : n;
}

/** Turn an abstract command into a concrete one, picking serials and TIDs from the model. */
function resolve(a: ACmd, m: Model): Command {
  const proposed = (delta: number) => p64(max0(m.lastTid + BigInt(delta)));
  const serial = (st: string, o: AOp): Buffer => {
    switch (o.serial.k) {
      case 'current':
        return p64(m.sm(st).cur.get(BigInt(o.oid))?.serial ?? 0n);
      case 'z64':
        return Z64;
      case 'empty':
        return Buffer.alloc(0);
      case 'past':
        return p64(m.tids.length ? m.tids[o.serial.i % m.tids.length] : 0n);
    }
  };
  const txnOf = (st: string, ops: AOp[]) => {
    const stores: StoreOp[] = [];
    const checks: { oid: Buffer; serial: Buffer }[] = [];
    for (const o of ops) {
      const base = { oid: p64(BigInt(o.oid)), serial: serial(st, o) };
      if (o.what === 'check') checks.push(base);
      else if (o.what === 'delete') stores.push({ ...base, delete: true });
      else {
        const refs = o.refs.map((r) => p64(BigInt(r)));
        stores.push({ ...base, data: Buffer.from(`d${o.data}`), refs });
      }
    }
    return { stores, checks };
  };
  /** `voted`: one of the voted transactions, if any; otherwise any transaction id. */
  const target = (x: { st: number; txn: number; voted: boolean }) => {
    const voted = [...m.prepared.values()];
    if (x.voted && voted.length) {
      const p = voted[x.txn % voted.length];
      return { storage: p.storage, txnId: p.txnId };
    }
    return { storage: STORAGES[x.st], txnId: `t${x.txn}` };
  };
  switch (a.t) {
    case 'commit': {
      const st = STORAGES[a.st];
      return {
        commit: {
          tid: proposed(a.tidDelta),
          txn: { storage: st, user: a.user, ...txnOf(st, a.ops) },
        },
      };
    }
    case 'dup': {
      const st = STORAGES[a.st];
      const { stores } = txnOf(st, [{ ...a.op, what: 'store' }]);
      return { commit: { tid: Z64, txn: { storage: st, stores: [stores[0], stores[0]] } } };
    }
    case 'prepare': {
      const st = STORAGES[a.st];
      return { prepare: { txnId: `t${a.txn}`, txn: { storage: st, ...txnOf(st, a.ops) } } };
    }
    case 'finish': {
      const { storage, txnId } = target(a);
      return { finish: { storage, txnId, tid: proposed(a.tidDelta) } };
    }
    case 'abort':
      return { abort: target(a) };
    case 'undo': {
      const st = STORAGES[a.st];
      const tids = [...m.sm(st).txns.keys()].sort((x, y) => (x < y ? -1 : 1));
      // mostly one of the last few transactions (the ones likely to be undoable)
      const i = a.recent ? Math.max(0, tids.length - 1 - (a.pick % 3)) : a.pick % (tids.length + 1);
      const undoTid = i < tids.length ? tids[i] : m.lastTid + 1000n; // no such transaction
      return {
        undo: {
          tid: proposed(a.tidDelta),
          storage: st,
          undoTid: p64(undoTid),
          description: 'undo',
        },
      };
    }
    case 'pack': {
      const i = a.pick % (m.tids.length + 1);
      const packTid = i < m.tids.length ? max0(m.tids[i] + BigInt(a.offset)) : m.lastTid + 10n;
      return { pack: { storage: STORAGES[a.st], packTid: p64(packTid), gc: a.gc } };
    }
    case 'newOids':
      return { newOids: { storage: STORAGES[a.st], count: a.count } };
    case 'noop':
      return { noop: {} };
  }
}

// ---------------------------------------------------------------------------------------------
// The real store's answers as plain data

function plain(x: unknown): unknown {
  if (x === undefined) return undefined;
  return JSON.parse(
    JSON.stringify(x, (_k, v) => {
      if (v && v.type === 'Buffer' && Array.isArray(v.data))
        return Buffer.from(v.data).toString('hex');
      if (typeof v === 'bigint') return v.toString();
      return v;
    }),
  );
}

function normResult(r: ApplyResult): NResult {
  if (!r.ok) {
    const out: NResult = { ok: false, kind: r.error.kind };
    const c = r.error.conflict;
    if (c) {
      out.conflict = { oid: hex(c.oid), expected: hex(c.expected), actual: hex(c.actual) };
      if (c.currentData) out.conflict.currentData = hex(c.currentData);
    }
    return out;
  }
  return plain(r) as NResult;
}

function normEvent(e: CommitEvent): NEvent {
  return plain({
    index: e.index,
    storage: e.storage,
    tid: hex(e.tid),
    records: e.records.map((r) => ({ oid: r.oid, deleted: r.deleted, data: r.data })),
  }) as NEvent;
}

async function read(p: Promise<unknown>): Promise<NRead> {
  try {
    return plain({ value: await p }) as NRead;
  } catch (e) {
    if (e instanceof StorageError) return { error: e.kind };
    throw e;
  }
}

function ids(xs: Iterable<bigint>): bigint[] {
  return [...new Set(xs)].filter((x) => x >= 0n).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Compare every answer of the store with the model's; `tids` are the loadBefore/loadSerial points. */
async function compare(
  store: ObjectStore,
  m: Model,
  before: bigint[],
  serials: bigint[],
  what: string,
) {
  const eq = (actual: unknown, expected: unknown, msg: string) =>
    assert.deepStrictEqual(plain(actual), plain(expected), `${what}: ${msg}`);
  eq(store.appliedIndex, m.appliedIndex, 'appliedIndex');
  eq(hex(store.lastTid), hx(m.lastTid), 'lastTid');
  eq(store.storageNames(), m.storageNames(), 'storageNames');
  for (const st of STORAGES) {
    const s = m.sm(st);
    eq(store.storageSummary(st), m.summary(st), `storageSummary(${st})`);
    for (let n = 0; n < OID_COUNT; n++) {
      const o = BigInt(n);
      const oid = p64(o);
      eq(store.lockHolder(st, oid), m.lockHolder(st, o), `lockHolder(${st}, ${n})`);
      eq(await read(store.load(st, oid)), m.load(st, o), `load(${st}, ${n})`);
      eq(
        await read(store.history(st, oid, HISTORY_SIZE)),
        m.history(st, o, HISTORY_SIZE),
        `history(${st}, ${n})`,
      );
      for (const b of before) {
        const real = await read(store.loadBefore(st, oid, p64(b)));
        eq(real, m.loadBefore(st, o, b), `loadBefore(${st}, ${n}, ${b})`);
        if (b > s.packTid) {
          // pack removes only what reads after the pack time do not need
          const r = real as { value?: { found: boolean }; error?: string };
          const folded =
            r.error === 'NOT_FOUND' || r.value?.found === false ? 'absent' : (r.value ?? r.error);
          eq(
            folded,
            m.unpackedLoadBefore(st, o, b),
            `loadBefore(${st}, ${n}, ${b}) after pack time ${s.packTid}`,
          );
        }
      }
      for (const t of serials) {
        eq(
          await read(store.loadSerial(st, oid, p64(t))),
          m.loadSerial(st, o, t),
          `loadSerial(${st}, ${n}, ${t})`,
        );
      }
    }
  }
}

/** Everything, at every TID: used at the end of a run and after reopening. */
async function compareAll(store: ObjectStore, m: Model, what: string) {
  const all = ids([1n, ...m.tids.flatMap((t) => [t, t + 1n]), m.lastTid + 1n]);
  await compare(store, m, all, ids(m.tids), what);
  for (const st of STORAGES) {
    assert.deepStrictEqual(
      plain(await collect(store.iterate(st))),
      plain(m.iterate(st)),
      `${what}: iterate(${st})`,
    );
    const log = (await store.undoLog(st, 0, 1000)).map((e) => hex(e.tid));
    const expected = [...m.sm(st).txns.keys()]
      .filter((t) => t > m.sm(st).packTid)
      .sort((a, b) => (a < b ? 1 : -1))
      .map(hx);
    assert.deepStrictEqual(log, expected, `${what}: undoLog(${st})`);
  }
}

function show(cmd: Command): string {
  return JSON.stringify(plain(cmd));
}

/** Outcome counts, printed with FC_STATS=1 to see what the generator exercises. */
const tally = new Map<string, number>();

describe('ObjectStore against an in-memory model (fast-check)', function () {
  this.timeout(120_000);

  after(function () {
    if (process.env.FC_STATS) console.log([...tally.entries()].sort());
  });

  it('agrees on every result, event and read for random command sequences', async function () {
    await fc.assert(
      fc.asyncProperty(fc.array(cmdArb, { maxLength: MAX_COMMANDS, size: 'max' }), async (cmds) => {
        const t = await TestStore.create();
        const m = new Model();
        const events: NEvent[] = [];
        t.store.onCommit((e) => events.push(normEvent(e)));
        try {
          for (const [i, a] of cmds.entries()) {
            const cmd = resolve(a, m);
            const what = `command ${i} ${show(cmd)}`;
            const real = normResult(await t.apply(cmd));
            const expected = m.apply(t.index, cmd);
            assert.deepStrictEqual(real, expected, `${what}: result`);
            const outcome = `${a.t} ${real.ok ? 'ok' : real.kind}`;
            tally.set(outcome, (tally.get(outcome) ?? 0) + 1);
            assert.deepStrictEqual(events, m.events, `${what}: commit events`);
            const recent = m.tids.slice(-4);
            const st = m.sm(STORAGES[0]);
            const before = ids([
              1n,
              ...recent,
              ...recent.map((x) => x + 1n),
              st.packTid,
              st.packTid + 1n,
              m.lastTid + 1n,
            ]);
            await compare(t.store, m, before, m.tids.slice(-2), what);
          }
          await compareAll(t.store, m, 'at the end');
          await t.reopen();
          await compareAll(t.store, m, 'after reopening');
        } finally {
          await t.destroy();
        }
      }),
      {
        numRuns: RUNS,
        seed: process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : undefined,
        path: process.env.FC_PATH,
        endOnFailure: process.env.FC_PATH !== undefined,
      },
    );
  });
});
