/**
 * Restoring transactions through the ZEO door (ZODB's restore and tpc_begin with a TID and status,
 * what copyTransactionsFrom and zodbconvert send) against a live three-node cluster: the records
 * are kept as given at their TIDs, with status and metadata, records without data and
 * backpointers; a TID not above the last is refused; while a transaction is voted at a given TID
 * nothing else commits; read-only clients cannot restore.
 */
import * as assert from 'node:assert/strict';
import { Z64, hex, idCompare, p64, tidFromTime, u64 } from '../../src/util/ids';
import { eventually, sleep } from '../harness';
import { ZeoCluster, type ZeoMember } from '../harness/zeo-cluster';
import { ServerError, ZeoClient } from './zeo-client';

const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);
const MAXTID = Buffer.from('7fffffffffffffff', 'hex');
const add = (tid: Buffer, n: number): Buffer => p64(u64(tid) + BigInt(n));

interface Restored {
  tid: Buffer;
  status?: string;
  user?: string;
  description?: string;
  ext?: Record<string, unknown>;
  records: { oid: Buffer; data: Buffer | null; prev?: Buffer }[];
}

describe('ZEO door: restore at given TIDs (copyTransactionsFrom)', function () {
  this.timeout(60_000);
  const cluster = new ZeoCluster('zeo-restore', {
    ZEORAFT_STORAGES: '1,other,ro:ro',
    ZEORAFT_LOCK_WAIT_MS: '10000',
  });
  const members = cluster.members;
  const clients: ZeoClient[] = [];
  let txnCounter = 9000;

  async function connect(m: ZeoMember, storage: string, readOnly = false): Promise<ZeoClient> {
    const c = await ZeoClient.connect(m.zeo);
    clients.push(c);
    await c.call('register', storage, readOnly);
    return c;
  }

  /** tpc_begin at the TID, the restores, and the vote (its answer, or the error it raised). */
  async function restoreVote(c: ZeoClient, t: Restored): Promise<{ id: number; vote: any }> {
    const id = txnCounter++;
    c.oneWay(
      'tpc_begin',
      id,
      b(t.user ?? ''),
      b(t.description ?? ''),
      t.ext ?? {},
      t.tid,
      t.status ?? ' ',
    );
    for (const r of t.records) c.oneWay('restorea', r.oid, t.tid, r.data, r.prev ?? null, id);
    const vote = await c.call('vote', id).catch((e) => e);
    return { id, vote };
  }

  async function restore(c: ZeoClient, t: Restored): Promise<Buffer> {
    const { id, vote } = await restoreVote(c, t);
    if (vote instanceof Error) throw vote;
    return buf(await c.call('tpc_finish', id));
  }

  async function commit(c: ZeoClient, oid: Buffer, serial: Buffer, data: Buffer): Promise<Buffer> {
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b('bob'), b('commit'), {}, null, ' ');
    c.oneWay('storea', oid, serial, data, id);
    assert.deepEqual(await c.call('vote', id), []);
    return buf(await c.call('tpc_finish', id));
  }

  /** Every transaction of the storage from `start`: [tid, status, user, description, ext, records]. */
  async function iterate(c: ZeoClient, start: Buffer): Promise<any[]> {
    const out: any[] = [];
    const iid = await c.call('iterator_start', start, null);
    for (;;) {
      const t = await c.call('iterator_next', iid);
      if (t === null) return out;
      const rid = await c.call('iterator_record_start', iid, t[0]);
      const records: any[] = [];
      for (let r = await c.call('iterator_record_next', rid); r;) {
        records.push(r);
        r = await c.call('iterator_record_next', rid);
      }
      out.push([...t, records]);
    }
  }

  before(async function () {
    await cluster.start();
    const c = await connect(members[0], 'other');
    await eventually(() => c.call('new_oids', 1).then(() => true), 20_000, 'a leader');
  });

  after(async () => {
    for (const c of clients) c.close();
    await cluster.stop();
  });

  it('keeps the TIDs, status, metadata, records without data and backpointers as given', async () => {
    const c = await connect(members[1], '1');
    // Source TIDs from an hour ago: above everything in this fresh cluster.
    const t0 = tidFromTime(Date.now() - 3_600_000);
    const [t1, t2, t3, t4] = [add(t0, 1), add(t0, 2), add(t0, 3), add(t0, 4)];
    const [x, y] = [p64(1n), p64(7n)];
    assert.deepEqual(
      await restore(c, {
        tid: t1,
        user: '/ alice',
        description: 'create',
        ext: { note: 'first', n: 1 },
        records: [
          { oid: x, data: b('x1') },
          { oid: y, data: b('y1') },
        ],
      }),
      t1,
    );
    assert.deepEqual(
      await restore(c, { tid: t2, status: 'p', records: [{ oid: x, data: b('x2') }] }),
      t2,
    );
    // An undo as FileStorage records it: x back to t1's data (a backpointer), y's creation undone.
    await restore(c, {
      tid: t3,
      description: 'undo',
      records: [
        { oid: x, data: b('x1'), prev: t1 },
        { oid: y, data: null, prev: t1 },
      ],
    });
    // A backpointer whose data differs here is dropped (FileStorage treats it as a hint).
    await restore(c, { tid: t4, status: 'u', records: [{ oid: y, data: b('y4'), prev: t2 }] });

    const txns = await iterate(c, Z64);
    assert.deepEqual(
      txns.map((t) => [hex(t[0]), t[1], buf(t[2]).toString(), buf(t[3]).toString(), t[4]]),
      [
        [hex(t1), ' ', '/ alice', 'create', { note: 'first', n: 1 }],
        [hex(t2), 'p', '', '', {}],
        [hex(t3), ' ', '', 'undo', {}],
        [hex(t4), 'u', '', '', {}],
      ],
    );
    const recs = txns.map((t) =>
      t[5].map((r: any[]) => [
        hex(r[0]),
        hex(r[1]),
        r[2] && buf(r[2]).toString(),
        r[3] && hex(r[3]),
      ]),
    );
    assert.deepEqual(recs, [
      [
        [hex(x), hex(t1), 'x1', null],
        [hex(y), hex(t1), 'y1', null],
      ],
      [[hex(x), hex(t2), 'x2', null]],
      [
        [hex(x), hex(t3), 'x1', hex(t1)],
        [hex(y), hex(t3), null, null],
      ],
      [[hex(y), hex(t4), 'y4', null]],
    ]);
    const [data, start, end] = await c.call('loadBefore', x, MAXTID);
    assert.deepEqual([buf(data).toString(), buf(start), end], ['x1', t3, null]);
    assert.deepEqual(buf(await c.call('loadSerial', x, t2)), b('x2'));
    assert.deepEqual(buf(await c.call('lastTransaction')), t4);

    // A restored database is an ordinary one afterwards: new OIDs come after the restored ones,
    // commits get later TIDs, stores are conflict-checked against the restored serials.
    const oid = buf((await c.call('new_oids', 1))[0]);
    assert.ok(u64(oid) > 7n, `new OID ${hex(oid)} after the restored ones`);
    const t5 = await commit(c, x, t3, b('x5'));
    assert.ok(idCompare(t5, t4) > 0);
  });

  it('refuses a TID not above the last one, at vote, and keeps the connection', async () => {
    const c = await connect(members[2], '1');
    const last = buf(await c.call('lastTransaction'));
    for (const tid of [last, p64(1n)]) {
      const { id, vote } = await restoreVote(c, { tid, records: [{ oid: p64(3n), data: b('z') }] });
      assert.ok(vote instanceof ServerError, `vote at ${hex(tid)} refused`);
      assert.equal(vote.pyClass, 'ZODB.POSException.StorageError');
      assert.match(String(vote.pyArgs[0]), /is not above the last TID/);
      assert.equal(await c.call('tpc_abort', id), null);
    }
    // A status ZODB does not know, and non-UTF-8 metadata (which would not be kept exactly).
    const next = add(last, 1);
    const bad = await restoreVote(c, { tid: next, status: 'x', records: [] });
    assert.match(String(bad.vote.pyArgs[0]), /status "x" is not one of/);
    await c.call('tpc_abort', bad.id);
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, Buffer.from([0xff, 0xfe]), b(''), {}, next, ' ');
    const e = await c.call('vote', id).catch((z) => z);
    assert.match(String(e.pyArgs[0]), /user of a restored transaction is not UTF-8/);
    await c.call('tpc_abort', id);
    assert.equal(await c.call('ping'), null);
    await assert.rejects(c.call('loadBefore', p64(3n), MAXTID), (x: any) =>
      /POSKeyError/.test(x.pyClass),
    );
  });

  it('commits nothing else while a transaction is voted at a given TID; its abort releases them', async () => {
    const r = await connect(members[0], '1');
    const w = await connect(members[1], 'other');
    const oid = buf((await w.call('new_oids', 1))[0]);
    for (const finish of [true, false]) {
      // Above the last TID of both storages (TIDs increase across the cluster).
      const [l1, l2] = [buf(await r.call('lastTransaction')), buf(await w.call('lastTransaction'))];
      const at = add(idCompare(l1, l2) > 0 ? l1 : l2, 1000);
      const { id, vote } = await restoreVote(r, {
        tid: at,
        records: [{ oid: p64(40n), data: b(`at ${finish}`) }],
      });
      assert.deepEqual(vote, []);
      // A commit in another storage, through another node, waits for the finish or abort.
      let settled = false;
      const serial = await w.call('getTid', oid).then(buf, () => Z64);
      const other = commit(w, oid, serial, b(`other ${finish}`)).finally(() => (settled = true));
      await sleep(500);
      assert.equal(settled, false, 'a commit went ahead of the vote at a given TID');
      if (finish) assert.deepEqual(buf(await r.call('tpc_finish', id)), at);
      else assert.equal(await r.call('tpc_abort', id), null);
      const t = await other;
      assert.ok(idCompare(t, at) > 0, 'the waiting commit comes after the given TID');
    }
    const [data] = await r.call('loadBefore', p64(40n), MAXTID);
    assert.equal(buf(data).toString(), 'at true');
  });

  it('is a write: refused on a read-only storage and a read-only connection', async () => {
    const c = await connect(members[0], 'ro', true);
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, tidFromTime(Date.now()), ' ');
    c.oneWay('restorea', p64(1n), Z64, b('data'), null, id);
    await c.closedPromise; // a one-way call that fails closes the connection, as in ZEO
    const d = await connect(members[1], '1', true);
    d.oneWay('tpc_begin', id, b(''), b(''), {}, tidFromTime(Date.now()), ' ');
    await d.closedPromise;
    const e = await connect(members[2], 'ro', true);
    assert.deepEqual(buf(await e.call('lastTransaction')), Z64);
  });
});
