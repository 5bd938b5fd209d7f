/**
 * The Storage API of one standalone node, over real gRPC to a real process on LevelDB:
 * every RPC, the error statuses of bad input, and durability across kill -9.
 */
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { StorageRpc } from '../../src/client/rpc';
import {
  ConflictError,
  ReadConflictError,
  NotFoundError,
  HistoryPackedError,
  TransactionError,
  ZeoRaftError,
} from '../../src/client/errors';
import { Z64, p64, idCompare, hex } from '../../src/util/ids';
import { NodeProcess, freePort, rmDir, tmpDir } from '../harness';

const oid = (n: number): Buffer => p64(BigInt(n));
const data = (s: string): Buffer => Buffer.from(s);

describe('standalone node: the Storage API over gRPC', function () {
  let dir: string;
  let node: NodeProcess;
  let rpc: StorageRpc;
  let port: number;

  async function start(): Promise<void> {
    node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'solo',
      ZEORAFT_DATA_DIR: dir,
      ZEORAFT_LISTEN: `127.0.0.1:${port}`,
      ZEORAFT_STORAGES: '1,other,archive:ro',
    });
    rpc = new StorageRpc(`127.0.0.1:${port}`);
  }

  before(async () => {
    dir = tmpDir('standalone');
    port = await freePort();
    await start();
  });
  after(async () => {
    rpc.close();
    await node.kill('SIGTERM');
    rmDir(dir);
  });

  async function commit(
    stores: { oid: Buffer; serial?: Buffer; data: Buffer }[],
    storage = '1',
  ): Promise<Buffer> {
    const r = await rpc.call('Commit', {
      transaction: { storage, user: 'alice', description: 'test', stores },
    });
    assert.equal(r.tid.length, 8);
    return r.tid;
  }

  it('opens a storage and reports its info', async () => {
    const r = await rpc.call('Open', { storage: '', clientName: 'test' });
    assert.equal(r.info?.name, '1');
    assert.equal(r.nodeId, 'solo');
    assert.equal(r.info?.readOnly, false);
  });

  it('commits, loads, and refuses a stale serial with the conflict details', async () => {
    const t1 = await commit([{ oid: oid(1), data: data('one') }]);
    const l = await rpc.call('Load', { oid: oid(1) });
    assert.deepEqual(l.data, data('one'));
    assert.deepEqual(l.serial, t1);
    const t2 = await commit([{ oid: oid(1), serial: t1, data: data('two') }]);
    assert.ok(idCompare(t2, t1) > 0, 'TIDs increase');
    const err = await rpc
      .call('Commit', { transaction: { stores: [{ oid: oid(1), serial: t1, data: data('x') }] } })
      .catch((e) => e);
    assert.ok(err instanceof ConflictError, String(err));
    assert.equal(err.grpcCode, grpc.status.ABORTED);
    assert.deepEqual(err.oid, oid(1));
    assert.deepEqual(err.expectedSerial, t1);
    assert.deepEqual(err.actualSerial, t2);
    assert.deepEqual(err.currentData, data('two'));
    assert.equal(err.transient, true);
  });

  it('reads history with MVCC: loadBefore, loadSerial, history', async () => {
    const a = await commit([{ oid: oid(10), data: data('a') }]);
    const b = await commit([{ oid: oid(10), serial: a, data: data('b') }]);
    const before = await rpc.call('LoadBefore', { oid: oid(10), beforeTid: b });
    assert.equal(before.found, true);
    assert.deepEqual(before.data, data('a'));
    assert.deepEqual(before.start, a);
    assert.deepEqual(before.end, b);
    const cur = await rpc.call('LoadBefore', { oid: oid(10), beforeTid: p64(0xffffffffffffffffn) });
    assert.deepEqual(cur.data, data('b'));
    assert.equal(cur.end.length, 0, 'current revision has no end');
    const none = await rpc.call('LoadBefore', { oid: oid(10), beforeTid: a });
    assert.equal(none.found, false);
    assert.deepEqual((await rpc.call('LoadSerial', { oid: oid(10), serial: a })).data, data('a'));
    const h = await rpc.call('History', { oid: oid(10), size: 5 });
    assert.deepEqual(
      h.entries.map((e) => e.tid),
      [b, a],
    );
    assert.equal(h.entries[0].user, 'alice');
  });

  it('allocates unique OIDs', async () => {
    const x = await rpc.call('NewOids', { count: 5 });
    const y = await rpc.call('NewOids', { count: 5 });
    const all = [...x.oids, ...y.oids].map(hex);
    assert.equal(new Set(all).size, 10);
  });

  it('runs two-phase commit: vote locks, finish commits, abort releases', async () => {
    const t0 = await commit([{ oid: oid(20), data: data('v0') }]);
    await rpc.call('Vote', {
      transactionId: 'tx-1',
      transaction: { stores: [{ oid: oid(20), serial: t0, data: data('v1') }] },
    });
    const fin = await rpc.call('Finish', { transactionId: 'tx-1' });
    assert.deepEqual((await rpc.call('Load', { oid: oid(20) })).serial, fin.tid);
    await rpc.call('Vote', {
      transactionId: 'tx-2',
      transaction: { stores: [{ oid: oid(20), serial: fin.tid, data: data('v2') }] },
    });
    await rpc.call('Abort', { transactionId: 'tx-2' });
    assert.deepEqual((await rpc.call('Load', { oid: oid(20) })).data, data('v1'));
    const e = await rpc.call('Finish', { transactionId: 'tx-2' }).catch((x) => x);
    assert.ok(e instanceof TransactionError, String(e));
  });

  it('holds a Commit that meets a voted lock in line until the vote is aborted, then commits it', async () => {
    const t0 = await commit([{ oid: oid(21), data: data('v0') }]);
    await rpc.call('Vote', {
      transactionId: 'tx-hold',
      transaction: { stores: [{ oid: oid(21), serial: t0, data: data('voted') }] },
    });
    // The Commit finds the object locked and waits (StorageApi.proposeWithLockWait) ...
    let answered = false;
    const waiting = rpc
      .call('Commit', {
        transaction: { stores: [{ oid: oid(21), serial: t0, data: data('waited') }] },
      })
      .finally(() => (answered = true));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(answered, false, 'the Commit waits while the vote holds the object');
    // ... and goes through once the abort releases it.
    await rpc.call('Abort', { transactionId: 'tx-hold' });
    const c = await waiting;
    const l = await rpc.call('Load', { oid: oid(21) });
    assert.deepEqual([l.data, l.serial], [data('waited'), c.tid]);
  });

  it('refuses a second Vote under an id with a different content; an identical one is a retry', async () => {
    const store = (o: number, d: string) => ({ stores: [{ oid: oid(o), data: data(d) }] });
    await rpc.call('Vote', { transactionId: '1', transaction: store(0x111, 'first') });
    const e = await rpc
      .call('Vote', { transactionId: '1', transaction: store(0x112, 'second') })
      .catch((x) => x);
    assert.ok(e instanceof ZeoRaftError, String(e));
    assert.equal(e.grpcCode, grpc.status.ALREADY_EXISTS, e.message);
    assert.match(e.message, /already voted with a different content/);
    // The same request again (a client retrying after a lost answer) is accepted.
    await rpc.call('Vote', { transactionId: '1', transaction: store(0x111, 'first') });
    const fin = await rpc.call('Finish', { transactionId: '1' });
    const l = await rpc.call('Load', { oid: oid(0x111) });
    assert.deepEqual([l.data, l.serial], [data('first'), fin.tid]);
    await assert.rejects(rpc.call('Load', { oid: oid(0x112) }), NotFoundError);
  });

  it('checkCurrentSerial raises a read conflict', async () => {
    const t = await commit([{ oid: oid(30), data: data('r') }]);
    await commit([{ oid: oid(30), serial: t, data: data('r2') }]);
    const e = await rpc
      .call('Commit', {
        transaction: {
          stores: [{ oid: oid(31), data: data('w') }],
          checks: [{ oid: oid(30), serial: t }],
        },
      })
      .catch((x) => x);
    assert.ok(e instanceof ReadConflictError, String(e));
  });

  it('undoes a transaction as a new one, and lists it in the undo log', async () => {
    const a = await commit([{ oid: oid(40), data: data('first') }]);
    const b = await commit([{ oid: oid(40), serial: a, data: data('second') }]);
    const log = await rpc.call('UndoLog', { first: 0, last: 3 });
    assert.deepEqual(log.transactions[0].tid, b);
    const u = await rpc.call('Undo', { tid: b, user: 'u', description: 'undo' });
    assert.deepEqual(u.oids, [oid(40)]);
    assert.deepEqual((await rpc.call('Load', { oid: oid(40) })).data, data('first'));
  });

  it('iterates transactions with their records', async () => {
    const t = await commit([
      { oid: oid(50), data: data('it') },
      { oid: oid(51), data: data('it2') },
    ]);
    const txns = await rpc.iterate({ start: t, stop: t });
    assert.equal(txns.length, 1);
    assert.deepEqual(
      txns[0].records.map((r) => r.oid),
      [oid(50), oid(51)],
    );
    assert.equal(txns[0].user, 'alice');
  });

  it('packs as of now when given a pack time in the far future, as ZODB does', async () => {
    const a = await commit([{ oid: oid(90), data: data('old') }], 'other');
    const b = await commit([{ oid: oid(90), serial: a, data: data('new') }], 'other');
    for (const packTime of [1e12, 1e15, Number.MAX_VALUE])
      await rpc.call('Pack', { storage: 'other', packTime });
    assert.deepEqual((await rpc.call('Load', { oid: oid(90), storage: 'other' })).serial, b);
    await assert.rejects(
      rpc.call('LoadSerial', { oid: oid(90), serial: a, storage: 'other' }),
      HistoryPackedError,
    );
  });

  it('packs away old revisions: a load at a packed-away TID is a distinct error', async () => {
    const a = await commit([{ oid: oid(60), data: data('old') }], 'other');
    const b = await commit([{ oid: oid(60), serial: a, data: data('new') }], 'other');
    const c = await commit([{ oid: oid(61), data: data('later') }], 'other');
    await rpc.call('Pack', { storage: 'other', packTid: c });
    const e = await rpc
      .call('LoadSerial', { storage: 'other', oid: oid(60), serial: a })
      .catch((x) => x);
    assert.ok(e instanceof HistoryPackedError, String(e));
    const e2 = await rpc
      .call('LoadBefore', { storage: 'other', oid: oid(60), beforeTid: b })
      .catch((x) => x);
    assert.ok(e2 instanceof HistoryPackedError, String(e2));
    assert.deepEqual(
      (await rpc.call('Load', { storage: 'other', oid: oid(60) })).data,
      data('new'),
    );
  });

  it('keeps storages apart and refuses writes to a read-only storage', async () => {
    await commit([{ oid: oid(70), data: data('in-1') }]);
    const e = await rpc.call('Load', { storage: 'other', oid: oid(70) }).catch((x) => x);
    assert.ok(e instanceof NotFoundError, String(e));
    const ro = await rpc
      .call('Commit', {
        transaction: { storage: 'archive', stores: [{ oid: oid(1), data: data('x') }] },
      })
      .catch((x) => x);
    assert.equal((ro as ZeoRaftError).grpcCode, grpc.status.PERMISSION_DENIED);
  });

  it('subscribes from a TID and receives later commits in order', async () => {
    const start = (await rpc.call('LastTransaction', {})).tid;
    const stream = rpc.subscribe({ fromTid: start, progressIntervalMs: 50 });
    const got: Buffer[] = [];
    const t1 = await commit([{ oid: oid(80), data: data('s1') }]);
    const t2 = await commit([{ oid: oid(81), data: data('s2') }]);
    for await (const ev of stream) {
      if (ev.commit) got.push(ev.commit.tid);
      if (got.length === 2) break;
    }
    stream.cancel();
    assert.deepEqual(got, [t1, t2]);
  });

  it('says a new stream is live with a Progress at once, not a progress interval later', async () => {
    const t1 = await commit([{ oid: oid(82), data: data('p1') }]);
    const t2 = await commit([{ oid: oid(83), data: data('p2') }]);
    const last = (await rpc.call('LastTransaction', {})).tid;
    // A minute between progress events: only the one that announces the live stream can come.
    const firstTwo = async (fromTid: Buffer): Promise<string[]> => {
      const stream = rpc.subscribe({ fromTid, progressIntervalMs: 60_000 });
      const got: string[] = [];
      const timer = setTimeout(() => stream.cancel(), 5000);
      try {
        for await (const ev of stream) {
          if (ev.commit) got.push(`commit ${hex(ev.commit.tid)}`);
          else if (ev.progress) got.push(`progress ${hex(ev.progress.tid)}`);
          else got.push(Object.keys(ev).join(','));
          if (got.length === 2 || ev.progress) break;
        }
      } catch (e) {
        got.push(String(e));
      } finally {
        clearTimeout(timer);
        stream.cancel();
      }
      return got;
    };
    // From the present: the Progress is the first event, at the storage's last TID.
    assert.deepEqual(await firstTwo(Buffer.alloc(0)), [`progress ${hex(last)}`]);
    // Resuming one transaction back: that transaction, then the Progress.
    assert.deepEqual(await firstTwo(t1), [`commit ${hex(t2)}`, `progress ${hex(last)}`]);
  });

  it('answers Sync and Status', async () => {
    const s = await rpc.call('Sync', {});
    const st = await rpc.call('Status', {});
    assert.deepEqual(s.tid, st.lastTid);
    assert.equal(st.role, 'standalone');
    assert.equal(st.storages.length, 3);
  });

  describe('bad input gets its status code and the node stays up', () => {
    const cases: Array<[string, () => Promise<unknown>, grpc.status]> = [
      [
        'short oid on Load',
        () => rpc.call('Load', { oid: Buffer.alloc(3) }),
        grpc.status.INVALID_ARGUMENT,
      ],
      ['missing oid on Load', () => rpc.call('Load', {}), grpc.status.INVALID_ARGUMENT],
      [
        'unknown storage',
        () => rpc.call('Load', { storage: 'nope', oid: oid(1) }),
        grpc.status.NOT_FOUND,
      ],
      ['unknown oid', () => rpc.call('Load', { oid: oid(999999) }), grpc.status.NOT_FOUND],
      [
        'long before_tid',
        () => rpc.call('LoadBefore', { oid: oid(1), beforeTid: Buffer.alloc(9) }),
        grpc.status.INVALID_ARGUMENT,
      ],
      [
        'unknown serial',
        () => rpc.call('LoadSerial', { oid: oid(1), serial: p64(5n) }),
        grpc.status.NOT_FOUND,
      ],
      [
        'history size too large',
        () => rpc.call('History', { oid: oid(1), size: 100000 }),
        grpc.status.INVALID_ARGUMENT,
      ],
      ['commit without a transaction', () => rpc.call('Commit', {}), grpc.status.INVALID_ARGUMENT],
      [
        'store with a 7-byte serial',
        () =>
          rpc.call('Commit', {
            transaction: { stores: [{ oid: oid(1), serial: Buffer.alloc(7), data: data('x') }] },
          }),
        grpc.status.INVALID_ARGUMENT,
      ],
      [
        'the same oid twice in a transaction',
        () =>
          rpc.call('Commit', {
            transaction: {
              stores: [
                { oid: oid(900), data: data('x') },
                { oid: oid(900), data: data('y') },
              ],
            },
          }),
        grpc.status.INVALID_ARGUMENT,
      ],
      [
        'vote without an id',
        () => rpc.call('Vote', { transaction: { stores: [] } }),
        grpc.status.INVALID_ARGUMENT,
      ],
      [
        'newOids count too large',
        () => rpc.call('NewOids', { count: 1_000_000 }),
        grpc.status.INVALID_ARGUMENT,
      ],
      [
        'undo of an unknown tid',
        () => rpc.call('Undo', { tid: p64(12345n) }),
        grpc.status.NOT_FOUND,
      ],
      ['pack without a time', () => rpc.call('Pack', {}), grpc.status.INVALID_ARGUMENT],
      [
        'seen_tid far in the future',
        () => rpc.call('Load', { oid: oid(1), seenTid: p64(0xfffffffffffffff0n) }, 1500),
        grpc.status.DEADLINE_EXCEEDED,
      ],
      [
        'invalid utf-8 user',
        () =>
          rpc.call('Commit', {
            transaction: {
              user: Buffer.from([0xff, 0xfe]).toString('latin1').replace(/./g, '\uFFFD'),
              stores: [],
            },
          }),
        grpc.status.INVALID_ARGUMENT,
      ],
    ];
    for (const [name, fn, code] of cases) {
      it(`${name} → ${grpc.status[code]}`, async () => {
        const e = await fn().then(
          () => undefined,
          (x: unknown) => x,
        );
        assert.ok(e instanceof ZeoRaftError, `expected an error, got ${String(e)}`);
        assert.equal(e.grpcCode, code, `${e.message}`);
        assert.ok(e.message.length > 5, 'the message says what was wrong');
        assert.ok(node.alive, 'node still up');
      });
    }
    it('iterate with stop before start → INVALID_ARGUMENT', async () => {
      const e = await rpc.iterate({ start: p64(10n), stop: p64(5n) }).catch((x) => x);
      assert.equal((e as ZeoRaftError).grpcCode, grpc.status.INVALID_ARGUMENT);
    });
  });

  it('keeps every acknowledged commit across kill -9', async () => {
    const acked: Array<{ oid: Buffer; tid: Buffer; data: Buffer }> = [];
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; i < 25; i++) {
        const o = oid(1000 + w * 100 + i);
        const d = data(`w${w}-${i}`);
        const tid = await commit([{ oid: o, data: d }]);
        acked.push({ oid: o, tid, data: d });
      }
    });
    await Promise.all(writers);
    await node.kill('SIGKILL');
    rpc.close();
    await start();
    for (const a of acked) {
      const l = await rpc.call('Load', { oid: a.oid });
      assert.deepEqual(l.data, a.data);
      assert.deepEqual(l.serial, a.tid);
    }
    assert.equal(acked.length, 100);
    assert.ok(idCompare((await rpc.call('LastTransaction', {})).tid, Z64) > 0);
  });
});
