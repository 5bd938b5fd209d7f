/**
 * The ZEO 5 listener of a live three-node cluster (real processes, real LevelDB), driven by a
 * protocol client written from ZEO's description: every ClientStorage method, the exceptions
 * as the Python client decodes them, invalidation order around tpc_finish, malformed input, and
 * a client moving to another node after kill -9 of its own without losing a commit.
 */
import * as assert from 'node:assert/strict';
import { Z64, hex, idCompare, p64, u64 } from '../../src/util/ids';
import { eventually, sleep } from '../harness';
import { ZeoCluster, type ZeoMember } from '../harness/zeo-cluster';
import { Disconnected, ServerError, ZeoClient } from './zeo-client';

const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);

describe('ZEO 5 protocol on a three-node cluster', function () {
  this.timeout(60_000);
  const cluster = new ZeoCluster('zeo', {
    ZEORAFT_STORAGES: '1,archive:ro',
    ZEORAFT_TXN_TIMEOUT_MS: '5000',
    ZEORAFT_LOCK_WAIT_MS: '1000',
  });
  const members = cluster.members;
  const clients: ZeoClient[] = [];
  let txnCounter = 1000;

  async function connect(
    m: ZeoMember,
    storage = '1',
    readOnly = false,
  ): Promise<{ c: ZeoClient; last: Buffer }> {
    const c = await ZeoClient.connect(m.zeo);
    clients.push(c);
    const last = await c.call('register', storage, readOnly);
    return { c, last: buf(last) };
  }

  /** Commit stores through the two-phase protocol; returns the TID. */
  async function commit(
    c: ZeoClient,
    stores: [Buffer, Buffer, Buffer][],
    user = 'alice',
  ): Promise<Buffer> {
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(user), b('test'), { note: 'x' }, null, ' ');
    for (const [oid, serial, data] of stores) c.oneWay('storea', oid, serial, data, id);
    const vote = await c.call('vote', id);
    assert.deepEqual(vote, [], 'no conflicts');
    return buf(await c.call('tpc_finish', id));
  }

  async function newOid(c: ZeoClient): Promise<Buffer> {
    const oids = await c.call('new_oids', 1);
    assert.equal(oids.length, 1);
    return buf(oids[0]);
  }

  before(async function () {
    await cluster.start();
    // Writes need a leader: retry the first allocation until one is elected.
    const { c } = await connect(members[0]);
    await eventually(() => c.call('new_oids', 1).then(() => true), 20_000, 'a leader');
  });

  after(async () => {
    for (const c of clients) c.close();
    await cluster.stop();
  });

  it('greets with M5 and answers ruok with JSON status before any handshake', async () => {
    const c = await ZeoClient.connect(members[0].zeo, 'ruok');
    clients.push(c);
    assert.equal(c.greeting, 'M5');
    await c.closedPromise;
    const status = JSON.parse(c.rawMessages[1].toString('utf8'));
    assert.ok(status['1'], 'status of storage 1');
    assert.equal(typeof status['1']['last-transaction'], 'string');
    assert.ok('connections' in status['1']);
  });

  it('registers, then answers get_info, lastTransaction, ping and server_status', async () => {
    const { c, last } = await connect(members[1]);
    assert.equal(last.length, 8);
    const info = await c.call('get_info');
    assert.equal(info.supportsUndo, true);
    assert.ok(info.interfaces.some((i: string[]) => i[1] === 'IStorageIteration'));
    assert.equal(typeof info.length, 'number');
    assert.deepEqual(buf(await c.call('lastTransaction')), last);
    assert.equal(await c.call('ping'), null);
    const st = await c.call('server_status');
    assert.ok(st.connections >= 1);
    assert.equal(st['zeoraft-node'], 'n2');
  });

  it('refuses an unknown storage (ValueError) and a writable register of a read-only one', async () => {
    const c = await ZeoClient.connect(members[0].zeo);
    clients.push(c);
    const e1 = await c.call('register', 'nope', false).catch((e) => e);
    assert.ok(e1 instanceof ServerError);
    assert.equal(e1.pyClass, 'builtins.ValueError');
    const e2 = await c.call('register', 'archive', false).catch((e) => e);
    assert.equal(e2.pyClass, 'ZODB.POSException.ReadOnlyError');
    assert.deepEqual(e2.pyArgs, []);
    // A read-only registration works, and writes through it are ReadOnlyError.
    assert.equal((await c.call('register', 'archive', true)).length, 8);
    const e3 = await c.call('new_oids', 3).catch((e) => e);
    assert.equal(e3.pyClass, 'ZODB.POSException.ReadOnlyError');
    const e4 = await c.call('pack', Date.now() / 1000, 1).catch((e) => e);
    assert.equal(e4.pyClass, 'ZODB.POSException.ReadOnlyError');
  });

  it('closes a connection that calls anything before register', async () => {
    const c = await ZeoClient.connect(members[0].zeo);
    clients.push(c);
    const e = await c.call('lastTransaction').catch((x) => x);
    assert.ok(e instanceof Disconnected);
  });

  it('allocates OIDs, commits in two phases, and loads with loadBefore, loadSerial, history, getTid', async () => {
    const { c } = await connect(members[0]);
    const oids = (await c.call('new_oids')).map(buf);
    assert.equal(oids.length, 100, 'ZEO default batch');
    assert.equal(new Set(oids.map(hex)).size, 100);
    const oid = oids[0];
    const t1 = await commit(c, [[oid, Z64, b('v1')]]);
    const t2 = await commit(c, [[oid, t1, b('v2')]]);
    assert.ok(idCompare(t2, t1) > 0);
    assert.deepEqual(buf(await c.call('lastTransaction')), t2);
    const cur = await c.call('loadBefore', oid, p64(u64(t2) + 1n));
    assert.deepEqual([buf(cur[0]), buf(cur[1]), cur[2]], [b('v2'), t2, null]);
    const old = await c.call('loadBefore', oid, t2);
    assert.deepEqual([buf(old[0]), buf(old[1]), buf(old[2])], [b('v1'), t1, t2]);
    assert.equal(await c.call('loadBefore', oid, t1), null, 'nothing before the first revision');
    assert.deepEqual(buf(await c.call('loadSerial', oid, t1)), b('v1'));
    assert.deepEqual(buf(await c.call('getTid', oid)), t2);
    const h = await c.call('history', oid, 5);
    assert.equal(h.length, 2);
    assert.deepEqual(buf(h[0].tid), t2);
    assert.deepEqual(buf(h[0].user_name), b('alice'));
    assert.equal(typeof h[0].time, 'number');
    // The same data is readable through another node (after it applied t2).
    const other = await connect(members[2]);
    const r = await other.c.call('loadBefore', oid, p64(u64(t2) + 1n));
    assert.deepEqual(buf(r[0]), b('v2'));
  });

  it('raises POSKeyError for unknown objects and TypeError for wrong argument types', async () => {
    const { c } = await connect(members[0]);
    const missing = p64(0xfffffff0n);
    const now = p64(u64(buf(await c.call('lastTransaction'))) + 1n);
    const e = await c.call('loadBefore', missing, now).catch((x) => x);
    assert.equal(e.pyClass, 'ZODB.POSException.POSKeyError');
    assert.deepEqual(buf(e.pyArgs[0]), missing);
    const e2 = await c.call('loadSerial', missing, p64(5n)).catch((x) => x);
    assert.equal(e2.pyClass, 'ZODB.POSException.POSKeyError');
    const e3 = await c.call('history', missing, 1).catch((x) => x);
    assert.equal(e3.pyClass, 'ZODB.POSException.POSKeyError');
    const e4 = await c.call('loadBefore', 42, 'x').catch((x) => x);
    assert.equal(e4.pyClass, 'builtins.TypeError');
    const e5 = await c.call('loadBefore', b('short'), Z64).catch((x) => x);
    assert.equal(e5.pyClass, 'builtins.TypeError');
    const e6 = await c.call('new_oids', 1, 2, 3).catch((x) => x);
    assert.equal(e6.pyClass, 'builtins.TypeError');
    assert.equal(await c.call('ping'), null, 'the connection survives error replies');
  });

  it('raises StorageTransactionError for a vote of a transaction that was not begun', async () => {
    const { c } = await connect(members[0]);
    const e = await c.call('vote', 123456).catch((x) => x);
    assert.equal(e.pyClass, 'ZODB.POSException.StorageTransactionError');
    assert.equal(await c.call('tpc_finish', 123456), null, 'ZEO answers None for a stale id');
    assert.equal(await c.call('tpc_abort', 123456), null);
  });

  it('returns write conflicts from vote for client resolution, then commits the resolved data', async () => {
    const { c } = await connect(members[0]);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('base')]]);
    const t2 = await commit(c, [[oid, t1, b('theirs')]]);
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    c.oneWay('storea', oid, t1, b('mine'), id);
    const vote = await c.call('vote', id);
    assert.equal(vote.length, 1);
    assert.deepEqual(buf(vote[0].oid), oid);
    assert.deepEqual(vote[0].serials.map(buf), [t2, t1], 'serials are (committed, read)');
    assert.deepEqual(buf(vote[0].data), b('mine'));
    // The client resolved the conflict: it stores against the committed serial and votes again.
    c.oneWay('storea', oid, t2, b('merged'), id);
    assert.deepEqual(await c.call('vote', id), []);
    const t3 = buf(await c.call('tpc_finish', id));
    const r = await c.call('loadBefore', oid, p64(u64(t3) + 1n));
    assert.deepEqual(buf(r[0]), b('merged'));
  });

  it('raises ReadConflictError with oid and serials when checkCurrentSerial fails', async () => {
    const { c } = await connect(members[0]);
    const [a, x] = [await newOid(c), await newOid(c)];
    const t1 = await commit(c, [[a, Z64, b('a1')]]);
    const t2 = await commit(c, [[a, t1, b('a2')]]);
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    c.oneWay('checkCurrentSerialInTransaction', a, t1, id);
    c.oneWay('storea', x, Z64, b('x'), id);
    const e = await c.call('vote', id).catch((z) => z);
    assert.equal(e.pyClass, 'ZODB.POSException.ReadConflictError');
    assert.deepEqual(buf(e.pyArgs.oid), a);
    assert.deepEqual(e.pyArgs.serials.map(buf), [t2, t1]);
    assert.equal(typeof e.pyArgs.message, 'string');
    assert.equal(await c.call('tpc_abort', id), null);
  });

  it('holds voted objects until tpc_abort, then lets another transaction commit them', async () => {
    const { c } = await connect(members[0]);
    const { c: d } = await connect(members[1]);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('one')]]);
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    c.oneWay('storea', oid, t1, b('held'), id);
    assert.deepEqual(await c.call('vote', id), []);
    // d cannot take the object while c holds it (lock wait is 1 s in this cluster).
    const id2 = txnCounter++;
    d.oneWay('tpc_begin', id2, b(''), b(''), {}, null, ' ');
    d.oneWay('storea', oid, t1, b('other'), id2);
    const e = await d.call('vote', id2).catch((x) => x);
    assert.equal(e.pyClass, 'ZODB.POSException.ConflictError');
    await c.call('tpc_abort', id);
    const t2 = await commit(d, [[oid, t1, b('other')]]);
    assert.ok(idCompare(t2, t1) > 0);
  });

  it('deletes objects with deleteObject', async () => {
    const { c } = await connect(members[0]);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('doomed')]]);
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    c.oneWay('deleteObject', oid, t1, id);
    assert.deepEqual(await c.call('vote', id), []);
    const t2 = buf(await c.call('tpc_finish', id));
    const e = await c.call('loadBefore', oid, p64(u64(t2) + 1n)).catch((x) => x);
    assert.equal(e.pyClass, 'ZODB.POSException.POSKeyError');
  });

  it('sends invalidateTransaction to other connections in TID order, never to the committer, and answers tpc_finish after earlier invalidations', async () => {
    const { c: a } = await connect(members[0]);
    const { c: bb } = await connect(members[0]);
    const { c: far } = await connect(members[2]);
    const oid1 = await newOid(a);
    const oid2 = await newOid(a);
    const tb = await commit(bb, [[oid1, Z64, b('from b')]]);
    const ta = await commit(a, [[oid2, Z64, b('from a')]]);
    // a heard about b's transaction before its own tpc_finish reply, and not about its own.
    const invA = a.events.findIndex(
      (e) => e.kind === 'call' && e.method === 'invalidateTransaction' && buf(e.args[0]).equals(tb),
    );
    const finishA = a.events.findIndex(
      (e) => e.kind === 'reply' && e.value instanceof Uint8Array && buf(e.value).equals(ta),
    );
    assert.ok(invA >= 0 && finishA > invA, 'invalidation of tb precedes the tpc_finish reply');
    assert.ok(!a.calls('invalidateTransaction').some((x) => buf(x[0]).equals(ta)));
    assert.ok(!bb.calls('invalidateTransaction').some((x) => buf(x[0]).equals(tb)));
    assert.ok(a.calls('info').length >= 1, 'info after tpc_finish');
    // Others, on this node and another, get both in TID order with the OIDs.
    await bb.until(
      () => bb.calls('invalidateTransaction').some((x) => buf(x[0]).equals(ta)),
      5000,
      'ta at b',
    );
    await far.until(
      () => far.calls('invalidateTransaction').some((x) => buf(x[0]).equals(ta)),
      5000,
      'ta at far',
    );
    const farInv = far.calls('invalidateTransaction');
    const i = farInv.findIndex((x) => buf(x[0]).equals(tb));
    const j = farInv.findIndex((x) => buf(x[0]).equals(ta));
    assert.ok(i >= 0 && j > i);
    assert.deepEqual(farInv[i][1].map(buf), [oid1]);
    for (let k = 1; k < farInv.length; k++)
      assert.ok(idCompare(buf(farInv[k - 1][0]), buf(farInv[k][0])) < 0);
  });

  it('answers getInvalidations with (tid, oids) inside the history window and None outside it', async () => {
    const { c } = await connect(members[0]);
    const oid = await newOid(c);
    const before = buf(await c.call('lastTransaction'));
    const t1 = await commit(c, [[oid, Z64, b('x')]]);
    const r = await c.call('getInvalidations', before);
    assert.deepEqual(buf(r[0]), t1);
    assert.ok(r[1].some((o: Uint8Array) => buf(o).equals(oid)));
    const same = await c.call('getInvalidations', t1);
    assert.deepEqual([buf(same[0]), same[1]], [t1, []]);
    // The cluster keeps its whole history (the window is not reached): even a TID from 1900 is
    // answered exactly, with every object changed since.
    const all = await c.call('getInvalidations', p64(1n));
    assert.deepEqual(buf(all[0]), t1);
    assert.ok(all[1].some((o: Uint8Array) => buf(o).equals(oid)));
  });

  it('undoes a transaction inside a transaction (undoLog, undoInfo, undoa)', async () => {
    const { c } = await connect(members[0]);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('good')]]);
    const t2 = await commit(c, [[oid, t1, b('bad')]], 'mallory');
    const log = await c.call('undoLog', 0, -5);
    assert.deepEqual(buf(log[0].id), t2);
    assert.deepEqual(buf(log[0].user_name), b('mallory'));
    assert.equal(log[0].note, 'x', 'the extension dict round-trips');
    const info = await c.call('undoInfo', 0, 20, { user_name: b('mallory') });
    assert.ok(info.length >= 1 && info.every((d: any) => buf(d.user_name).equals(b('mallory'))));
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b(''), b('undo'), {}, null, ' ');
    c.oneWay('undoa', log[0].id, id);
    const vote = await c.call('vote', id);
    assert.deepEqual(vote.map(buf), [oid], 'vote names the undone objects');
    const t3 = buf(await c.call('tpc_finish', id));
    const r = await c.call('loadBefore', oid, p64(u64(t3) + 1n));
    assert.deepEqual(buf(r[0]), b('good'));
    // Undoing t2 again conflicts: the object changed since.
    const id2 = txnCounter++;
    c.oneWay('tpc_begin', id2, b(''), b(''), {}, null, ' ');
    c.oneWay('undoa', t2, id2);
    const e = await c.call('vote', id2).catch((x) => x);
    assert.equal(e.pyClass, 'ZODB.POSException.MultipleUndoErrors');
  });

  it('iterates transactions and records, and current records with record_iternext', async () => {
    const { c } = await connect(members[0]);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('it')]]);
    const iid = await c.call('iterator_start', t1, t1);
    const txn = await c.call('iterator_next', iid);
    assert.deepEqual(buf(txn[0]), t1);
    assert.equal(txn[1], ' ');
    assert.deepEqual(buf(txn[2]), b('alice'));
    assert.deepEqual(txn[4], { note: 'x' });
    const rid = await c.call('iterator_record_start', iid, t1);
    const rec = await c.call('iterator_record_next', rid);
    assert.deepEqual([buf(rec[0]), buf(rec[1]), buf(rec[2]), rec[3]], [oid, t1, b('it'), null]);
    assert.equal(await c.call('iterator_record_next', rid), null);
    assert.equal(await c.call('iterator_next', iid), null);
    const iid2 = await c.call('iterator_start', null, null);
    assert.ok(await c.call('iterator_next', iid2));
    c.oneWay('iterator_gc', [iid2]);
    const e = await c.call('iterator_next', iid2).catch((x) => x);
    assert.equal(e.pyClass, 'builtins.KeyError');
    const first = await c.call('record_iternext', null);
    assert.equal(first.length, 4);
    const at = await c.call('record_iternext', oid);
    assert.deepEqual([buf(at[0]), buf(at[2])], [oid, b('it')]);
  });

  it('packs (ZEO pack(time, wait) returns None)', async () => {
    const { c } = await connect(members[0]);
    assert.equal(await c.call('pack', Date.now() / 1000 - 3600, 1), null);
  });

  it('packs at a time before every transaction (ZODB testPackYesterday) and keeps every revision and undo', async () => {
    const { c } = await connect(members[1]);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('y1')]]);
    const t2 = await commit(c, [[oid, t1, b('y2')]]);
    assert.equal(await c.call('pack', Date.now() / 1000 - 10_000, 1), null);
    assert.deepEqual(buf(await c.call('loadSerial', oid, t1)), b('y1'));
    const old = await c.call('loadBefore', oid, t2);
    assert.deepEqual([buf(old[0]), buf(old[1]), buf(old[2])], [b('y1'), t1, t2]);
    const cur = await c.call('loadBefore', oid, p64(u64(t2) + 1n));
    assert.deepEqual([buf(cur[0]), buf(cur[1]), cur[2]], [b('y2'), t2, null]);
    assert.deepEqual(
      (await c.call('history', oid, 5)).map((h: any) => buf(h.tid)),
      [t2, t1],
    );
    const undoable = (await c.call('undoLog', 0, -20)).map((d: any) => hex(buf(d.id)));
    assert.ok(undoable.includes(hex(t1)) && undoable.includes(hex(t2)), 'both still undoable');
  });

  it('closes connections on malformed input and keeps serving everyone else', async () => {
    const port = members[0].zeo;
    // A wrong handshake.
    const c1 = await ZeoClient.connect(port, 'Z4');
    clients.push(c1);
    await c1.closedPromise;
    // A huge length.
    const c2 = await ZeoClient.connect(port);
    clients.push(c2);
    c2.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
    await c2.closedPromise;
    // Not msgpack, and msgpack of the wrong shape.
    const c3 = await ZeoClient.connect(port);
    clients.push(c3);
    c3.sendRaw(Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]));
    await c3.closedPromise;
    const c4 = await ZeoClient.connect(port);
    clients.push(c4);
    await c4.call('register', '1', false);
    c4.sendMessage(1, 0, 'loadBefore', 'not a tuple');
    await c4.closedPromise;
    // An unknown method after register.
    const c5 = await ZeoClient.connect(port);
    clients.push(c5);
    await c5.call('register', '1', false);
    assert.ok((await c5.call('no_such_method').catch((e) => e)) instanceof Disconnected);
    // A one-way call with bad arguments.
    const c6 = await ZeoClient.connect(port);
    clients.push(c6);
    await c6.call('register', '1', false);
    c6.oneWay('storea', 1, 2, 3, 4);
    await c6.closedPromise;
    // A truncated frame, then the peer goes away; a zero-length message.
    const c7 = await ZeoClient.connect(port);
    c7.sendRaw(Buffer.from([0, 0, 0, 50, 1, 2]));
    c7.close();
    const c8 = await ZeoClient.connect(port);
    clients.push(c8);
    c8.sendRaw(Buffer.from([0, 0, 0, 0]));
    await c8.closedPromise;
    // Heartbeats are ignored, and the node still serves.
    const { c } = await connect(members[0]);
    c.sendMessage(-1, 0, '.reply', null);
    const oid = await newOid(c);
    await commit(c, [[oid, Z64, b('still fine')]]);
    assert.ok(members[0].proc?.alive);
  });

  it('moves to another node after kill -9 of its own, verifies its cache and loses no commit', async () => {
    const victim = members[0];
    const { c } = await connect(victim);
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('before the crash')]]);
    const cacheTid = t1;
    await victim.proc!.kill('SIGKILL');
    await c.closedPromise;
    // ClientStorage tries every address; the survivors answer once they have a leader.
    const { c: c2, last } = await eventually(
      async () => {
        for (const m of members.slice(1)) {
          try {
            return await connect(m);
          } catch {
            // try the next address
          }
        }
        return undefined;
      },
      20_000,
      'a surviving node',
    );
    assert.ok(idCompare(last, cacheTid) >= 0, 'the new node is not behind the client');
    const inv = await c2.call('getInvalidations', cacheTid);
    assert.ok(inv && idCompare(buf(inv[0]), cacheTid) >= 0);
    const r = await c2.call('loadBefore', oid, p64(u64(last) + 1n));
    assert.deepEqual(buf(r[0]), b('before the crash'));
    // And it can write again once a leader is elected among the survivors.
    const t2 = await eventually(
      () => commit(c2, [[oid, t1, b('after the crash')]]).catch(() => undefined),
      20_000,
      'a commit after failover',
    );
    assert.ok(idCompare(t2, t1) > 0);
    await sleep(10);
  });
});
