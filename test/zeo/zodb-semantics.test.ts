/**
 * What ZODB's and ZEO's own storage suites (test/zodb/run_suites.py) expect of the ZEO door, one
 * test per kind of failure they found, at the protocol level against a live three-node cluster:
 * loads at maxtid, stores of new objects without a serial, errors instead of dropped connections,
 * undo and pack as FileStorage does them, reply/invalidation order, reserved conflicts, and votes
 * that outlive their client or node.
 */
import * as assert from 'node:assert/strict';
import { readIntSetRecord, readLengthRecord } from '../../src/storage/zodb-resolve';
import { Z64, hex, idCompare, p64, tidToTime, u64 } from '../../src/util/ids';
import { eventually, sleep } from '../harness';
import { ZeoCluster, type ZeoMember } from '../harness/zeo-cluster';
import { Disconnected, ServerError, ZeoClient } from './zeo-client';

const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);
/** What ClientStorage.load sends: loadBefore(oid, maxtid). */
const MAXTID = Buffer.from('7fffffffffffffff', 'hex');

/**
 * ZODB records (ZODB.serialize's format: a class pickle, then a state pickle) of a
 * PersistentMapping, written by ZODB 6 with pickle protocol 3. `rootOf(oid)` refers to `oid`
 * with a persistent id (oid, None) as ObjectWriter writes it; `leaf(n)` refers to nothing.
 */
const CLASS_PICKLE =
  '80036370657273697374656e742e6d617070696e670a50657273697374656e744d617070696e670a71004e8671012e';
const rootOf = (oid: Buffer): Buffer =>
  Buffer.concat([
    Buffer.from(
      `${CLASS_PICKLE}80037d710258040000006461746171037d710458040000006b657074710543`,
      'hex',
    ),
    Buffer.from([8]),
    oid,
    Buffer.from('71064e8671075173732e', 'hex'),
  ]);
const leaf = (n: number): Buffer =>
  Buffer.from(
    `${CLASS_PICKLE}80037d710258040000006461746171037d710458010000006e71054b${n.toString(16).padStart(2, '0')}73732e`,
    'hex',
  );

/** A BTrees.Length record as ZODB 6 writes it (class pickle, then the int state), 0 <= n < 256. */
const lengthRecord = (n: number): Buffer =>
  Buffer.from(
    `8003634254726565732e4c656e6774680a4c656e6774680a71002e80034b${n.toString(16).padStart(2, '0')}2e`,
    'hex',
  );

/** A BTrees.IIBTree.IISet record as ZODB 6 writes it, keys 0 <= k < 256 (at least four). */
const iiSet = (keys: number[]): Buffer =>
  Buffer.from(
    '8003634254726565732e494942547265650a49495365740a71002e800328' +
      keys.map((k) => `4b${k.toString(16).padStart(2, '0')}`).join('') +
      '7471018571022e',
    'hex',
  );

describe('ZEO door: what the ZODB and ZEO storage suites expect', function () {
  this.timeout(60_000);
  const cluster = new ZeoCluster('zeo-zodb', {
    ZEORAFT_STORAGES: '1,misc,undo,undopack,gc,opaque,order,reserve,lease,closing,hot',
    // Far longer than any wait below: a vote released in time was released by its lease.
    ZEORAFT_TXN_TIMEOUT_MS: '120000',
    ZEORAFT_LOCK_WAIT_MS: '3000',
  });
  const members = cluster.members;
  const clients: ZeoClient[] = [];
  let txnCounter = 5000;

  async function connect(m: ZeoMember, storage: string): Promise<ZeoClient> {
    const c = await ZeoClient.connect(m.zeo);
    clients.push(c);
    await c.call('register', storage, false);
    return c;
  }

  function begin(c: ZeoClient, opts: { tid?: Buffer } = {}): number {
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b('alice'), b('test'), {}, opts.tid ?? null, ' ');
    return id;
  }

  async function commit(c: ZeoClient, stores: [Buffer, Buffer | null, Buffer][]): Promise<Buffer> {
    const id = begin(c);
    for (const [oid, serial, data] of stores) c.oneWay('storea', oid, serial, data, id);
    assert.deepEqual(await c.call('vote', id), [], 'no conflicts');
    return buf(await c.call('tpc_finish', id));
  }

  async function undo(c: ZeoClient, tids: Buffer[]): Promise<{ vote: any; tid?: Buffer }> {
    const id = begin(c);
    for (const t of tids) c.oneWay('undoa', t, id);
    const vote = await c.call('vote', id).catch((e) => e);
    if (vote instanceof Error) return { vote };
    return { vote, tid: buf(await c.call('tpc_finish', id)) };
  }

  async function newOid(c: ZeoClient): Promise<Buffer> {
    return buf((await c.call('new_oids', 1))[0]);
  }

  const current = async (c: ZeoClient, oid: Buffer): Promise<any> =>
    c.call('loadBefore', oid, MAXTID);

  before(async function () {
    await cluster.start();
    const c = await connect(members[0], 'misc');
    await eventually(() => c.call('new_oids', 1).then(() => true), 20_000, 'a leader');
  });

  after(async () => {
    for (const c of clients) c.close();
    await cluster.stop();
  });

  it('answers loadBefore(oid, maxtid) (ClientStorage.load) on every node without waiting for that TID', async () => {
    const c = await connect(members[0], 'misc');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('v1')]]);
    for (const m of members) {
      const d = await connect(m, 'misc');
      const r = await current(d, oid);
      assert.deepEqual([buf(r[0]), buf(r[1]), r[2]], [b('v1'), t1, null], `node ${m.id}`);
    }
  });

  it('answers reads of missing objects and revisions with POSKeyError and keeps the connection', async () => {
    const c = await connect(members[1], 'misc');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('only')]]);
    const missing = p64(0xfffff0n);
    for (const [method, args] of [
      ['loadBefore', [missing, MAXTID]],
      ['loadSerial', [missing, t1]],
      ['loadSerial', [oid, p64(u64(t1) - 1n)]],
      ['loadSerial', [oid, p64(u64(t1) + (1n << 40n))]], // a serial from the future
      ['history', [missing, 1]],
      ['getTid', [missing]],
    ] as [string, unknown[]][]) {
      const e = await c.call(method, ...args).catch((x) => x);
      assert.ok(e instanceof ServerError, `${method} answers`);
      assert.equal(e.pyClass, 'ZODB.POSException.POSKeyError', method);
    }
    assert.equal(await c.call('loadBefore', oid, t1), null, 'no revision before the first');
    assert.equal(await c.call('ping'), null);
  });

  it('stores a new object with serial None or "\\0" * 8 (a str), as FileStorage does, and not an existing one', async () => {
    const c = await connect(members[0], 'misc');
    const [x, y] = [await newOid(c), await newOid(c)];
    const id = begin(c);
    c.oneWay('storea', x, null, b('x'), id);
    c.oneWay('storea', y, '\0'.repeat(8), b('y'), id);
    assert.deepEqual(await c.call('vote', id), []);
    const t1 = buf(await c.call('tpc_finish', id));
    assert.deepEqual(buf((await current(c, y))[1]), t1);
    // On an existing object a missing serial is a conflict the client cannot resolve.
    const id2 = begin(c);
    c.oneWay('storea', x, null, b('x2'), id2);
    const vote = await c.call('vote', id2);
    assert.equal(vote.length, 1);
    assert.deepEqual(buf(vote[0].oid), x);
    assert.deepEqual(vote[0].serials.map(buf), [t1, Z64]);
    assert.equal(await c.call('tpc_abort', id2), null);
  });

  it('fails tpc_begin with a TID not above the last at vote (StorageError) and keeps the connection', async () => {
    const c = await connect(members[2], 'misc');
    const oid = await newOid(c);
    const id = begin(c, { tid: p64(1n) });
    c.oneWay('storea', oid, Z64, b('restored'), id);
    const e = await c.call('vote', id).catch((x) => x);
    assert.ok(e instanceof ServerError);
    assert.equal(e.pyClass, 'ZODB.POSException.StorageError');
    assert.match(String(e.pyArgs[0]), /is not above the last TID/);
    assert.equal(await c.call('tpc_abort', id), null);
    assert.equal(await c.call('ping'), null);
  });

  it('undoes as FileStorage: creations, several undos in one transaction, undos of undos', async () => {
    const c = await connect(members[0], 'undo');
    const [x, y] = [await newOid(c), await newOid(c)];
    const t1 = await commit(c, [[x, Z64, b('x1')]]);
    // Undoing a creation: the object is gone, getTid raises POSKeyError (a KeyError).
    const u1 = await undo(c, [t1]);
    assert.deepEqual(u1.vote.map(buf), [x], 'vote names the undone objects');
    const e = await c.call('getTid', x).catch((z) => z);
    assert.equal(e.pyClass, 'ZODB.POSException.POSKeyError');
    // Undoing that undo brings it back.
    await undo(c, [u1.tid as Buffer]);
    assert.deepEqual(buf((await current(c, x))[0]), b('x1'));
    // Two undos in one transaction, the later one seeing the earlier one's result.
    const s1 = await commit(c, [[y, Z64, b('y1')]]);
    const s2 = await commit(c, [[y, s1, b('y2')]]);
    const s3 = await commit(c, [[y, s2, b('y3')]]);
    const both = await undo(c, [s3, s2]);
    assert.deepEqual(both.vote.map(buf), [y]);
    assert.deepEqual(buf((await current(c, y))[0]), b('y1'));
    // The data of s1 is current again, so s1 (the creation) can be undone now.
    await undo(c, [s1]);
    assert.equal(
      (await c.call('getTid', y).catch((z) => z)).pyClass,
      'ZODB.POSException.POSKeyError',
    );
  });

  it('answers an undo that would need conflict resolution with UndoError, as ZEO with client-side resolution', async () => {
    const c = await connect(members[1], 'undo');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('a')]]);
    const t2 = await commit(c, [[oid, t1, b('b')]]);
    await commit(c, [[oid, t2, b('c')]]);
    const r = await undo(c, [t2]);
    assert.ok(r.vote instanceof ServerError);
    assert.equal(r.vote.pyClass, 'ZODB.POSException.MultipleUndoErrors');
    assert.deepEqual(buf(r.vote.pyArgs._errs[0][1]), oid);
    assert.equal(await c.call('ping'), null);
  });

  it('undoes after a pack as FileStorage (ZODB testTransactionalUndoAfterPack): undoInfo counts only what follows the pack time', async () => {
    const c = await connect(members[1], 'undopack');
    // The root object itself, so that the pack's garbage collection keeps it.
    const r0 = await commit(c, [[Z64, Z64, leaf(50)]]);
    const r1 = await commit(c, [[Z64, r0, leaf(51)]]);
    await sleep(20);
    const r2 = await commit(c, [[Z64, r1, leaf(52)]]);
    const r3 = await commit(c, [[Z64, r2, leaf(53)]]);
    const ids = async (): Promise<string[]> =>
      (await c.call('undoInfo', 0, 20, null)).map((d: any) => hex(buf(d.id)));
    assert.deepEqual(await ids(), [r3, r2, r1, r0].map(hex));
    // Pack between r1 and r2: r1 stays (current at the pack time), r0 goes.
    assert.equal(await c.call('pack', (tidToTime(r1) + 5) / 1000, 1), null);
    assert.deepEqual(await ids(), [r3, r2].map(hex), 'only transactions after the pack time');
    assert.deepEqual(buf(await c.call('loadSerial', Z64, r1)), leaf(51));
    assert.equal(
      (await c.call('loadSerial', Z64, r0).catch((x) => x)).pyClass,
      'ZODB.POSException.POSKeyError',
    );
    // The last transaction is undone to the state before it.
    const u = await undo(c, [r3]);
    assert.deepEqual(u.vote.map(buf), [Z64]);
    const [data, serial, end] = await current(c, Z64);
    assert.deepEqual([buf(data), buf(serial), end], [leaf(52), u.tid, null]);
    assert.deepEqual(await ids(), [u.tid as Buffer, r3, r2].map(hex));
  });

  it('packs as FileStorage: unreachable objects and old revisions go (POSKeyError), undoLog forgets, later packs lose nothing', async () => {
    const c = await connect(members[0], 'gc');
    const [kept, garbage] = [await newOid(c), await newOid(c)];
    const t1 = await commit(c, [
      [Z64, Z64, rootOf(kept)],
      [kept, Z64, leaf(1)],
      [garbage, Z64, leaf(9)],
    ]);
    await sleep(20);
    const t2 = await commit(c, [[kept, t1, leaf(2)]]);
    // A pack between t1 and t2 keeps what reads at t2 need; one "tomorrow" packs up to now.
    assert.equal(await c.call('pack', (tidToTime(t1) + 5) / 1000, 1), null);
    assert.deepEqual(
      buf(await c.call('loadSerial', kept, t1)),
      leaf(1),
      'current at the pack time',
    );
    assert.equal(await c.call('pack', Date.now() / 1000 + 86_400, 1), null);
    assert.equal(
      (await c.call('loadSerial', kept, t1).catch((x) => x)).pyClass,
      'ZODB.POSException.POSKeyError',
    );
    assert.equal(
      (await current(c, garbage).catch((x) => x)).pyClass,
      'ZODB.POSException.POSKeyError',
    );
    assert.deepEqual((await current(c, kept)).slice(0, 2).map(buf), [leaf(2), t2]);
    assert.deepEqual(buf((await current(c, Z64))[0]), rootOf(kept));
    assert.deepEqual(await c.call('undoLog', 0, 20), [], 'nothing before the pack is undoable');
    // A pack at an earlier time than the last one changes nothing.
    assert.equal(await c.call('pack', tidToTime(t1) / 1000, 1), null);
    assert.deepEqual(buf((await current(c, kept))[0]), leaf(2));
    // Records that are not ZODB pickles have unknown references: nothing is collected then.
    const d = await connect(members[2], 'opaque');
    const [r, o] = [await newOid(d), await newOid(d)];
    await commit(d, [
      [Z64, Z64, rootOf(r)],
      [o, Z64, b('not a pickle: may refer to anything')],
    ]);
    await d.call('pack', Date.now() / 1000 + 60, 1);
    assert.deepEqual(buf((await current(d, o))[0]), b('not a pickle: may refer to anything'));
  });

  it('never sends a load reply after an invalidation of a transaction newer than its data (loads racing commits on every node)', async function () {
    const w = await connect(members[0], 'order');
    const oid = await newOid(w);
    let serial = await commit(w, [[oid, Z64, b('0')]]);
    const readers = await Promise.all(members.map((m) => connect(m, 'order')));
    const LOADS_IN_FLIGHT = 8;
    // ZEORAFT_ORDER_COMMITS=2000 makes a long run of it.
    const COMMITS = Number(process.env.ZEORAFT_ORDER_COMMITS ?? 100);
    this.timeout(120_000 + COMMITS * 600);
    let writing = true;
    const loops = readers.map(async (r) => {
      const loop = async (): Promise<void> => {
        while (writing) await r.call('loadBefore', oid, MAXTID);
      };
      await Promise.all(Array.from({ length: LOADS_IN_FLIGHT }, loop));
    });
    for (let i = 1; i <= COMMITS; i++) serial = await commit(w, [[oid, serial, b(String(i))]]);
    writing = false;
    await Promise.all(loops);
    const checked: number[] = [];
    for (const r of readers) {
      await r.until(
        () => r.calls('invalidateTransaction').some((x) => buf(x[0]).equals(serial)),
        10_000,
        'the last invalidation',
      );
      // Replay what the client saw, in order: a reply whose data is current (end None) must not
      // start before the newest invalidation of the object received before it.
      let newest = Z64;
      let replies = 0;
      let outOfOrder = 0;
      for (const ev of r.events) {
        if (ev.kind === 'call' && ev.method === 'invalidateTransaction') {
          if (ev.args[1].some((o: Uint8Array) => buf(o).equals(oid))) newest = buf(ev.args[0]);
        } else if (ev.kind === 'reply' && Array.isArray(ev.value) && ev.value.length === 3) {
          replies++;
          if (ev.value[2] === null && idCompare(buf(ev.value[1]), newest) < 0) outOfOrder++;
        }
      }
      assert.ok(replies > COMMITS, `${replies} load replies interleaved with ${COMMITS} commits`);
      assert.equal(outOfOrder, 0, `${outOfOrder} of ${replies} replies were stale`);
      checked.push(replies);
    }
    console.log(`      load replies checked per node: ${checked.join(', ')}; stale: 0`);
  });

  it('holds the objects of a vote that answered conflicts, so the resolved vote is not overtaken', async () => {
    const c = await connect(members[1], 'reserve');
    const d = await connect(members[2], 'reserve');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('base')]]);
    const t2 = await commit(d, [[oid, t1, b('theirs')]]);
    const id = begin(c);
    c.oneWay('storea', oid, t1, b('mine'), id);
    const conflicts = await c.call('vote', id);
    assert.deepEqual(conflicts[0].serials.map(buf), [t2, t1]);
    // A competitor now waits behind the reservation instead of committing first.
    const id2 = begin(d);
    d.oneWay('storea', oid, t2, b('overtaker'), id2);
    const competitor = d.call('vote', id2);
    c.oneWay('storea', oid, t2, b('mine, merged'), id);
    assert.deepEqual(await c.call('vote', id), [], 'the resolved vote succeeds');
    const t3 = buf(await c.call('tpc_finish', id));
    const late = await competitor;
    assert.equal(late.length, 1, 'the competitor meets the new data as a conflict');
    assert.deepEqual(late[0].serials.map(buf), [t3, t2]);
    await d.call('tpc_abort', id2);
  });

  it('resolves conflicting BTrees.Length changes on the server, as a ZEO server by default: concurrent votes all commit', async () => {
    const cs = [await connect(members[0], 'hot'), await connect(members[1], 'hot')];
    cs.push(await connect(members[2], 'hot'));
    const oid = await newOid(cs[0]);
    const t1 = await commit(cs[0], [[oid, Z64, lengthRecord(5)]]);
    // Three clients on three nodes add 1, 3 and 10 to the value 5 they read; all vote at once.
    const ids = cs.map((c) => begin(c));
    [6, 8, 15].forEach((v, i) => cs[i].oneWay('storea', oid, t1, lengthRecord(v), ids[i]));
    const votes = await Promise.all(cs.map((c, i) => c.call('vote', ids[i])));
    // No conflict for the client to resolve; the object is named as changed by the server, so the
    // client does not cache its own data for it.
    for (const v of votes) assert.deepEqual(v.map(buf), [oid]);
    const tids = await Promise.all(cs.map((c, i) => c.call('tpc_finish', ids[i])));
    assert.equal(new Set(tids.map((t: Uint8Array) => hex(buf(t)))).size, 3);
    // Read on every node after the last of them (a client that saw it gets at least that state).
    const after = p64(
      [...tids].map((t: Uint8Array) => u64(buf(t))).reduce((x, y) => (x > y ? x : y)) + 1n,
    );
    for (const c of cs) {
      const [data, start] = await c.call('loadBefore', oid, after);
      assert.equal(readLengthRecord(buf(data)).value, 5n + 1n + 3n + 10n);
      assert.equal(u64(buf(start)), u64(after) - 1n);
    }
    // A Length change the server cannot resolve (the revision it was based on is not a Length)
    // goes back to the client at once, as any other conflict.
    const l = await newOid(cs[0]);
    const l1 = await commit(cs[0], [[l, Z64, leaf(1)]]);
    const id2 = begin(cs[0]);
    cs[0].oneWay('storea', l, l1, lengthRecord(1), id2);
    assert.deepEqual((await cs[0].call('vote', id2)).map(buf), [l]);
    const l2 = buf(await cs[0].call('tpc_finish', id2));
    const lid = begin(cs[0]);
    cs[0].oneWay('storea', l, l1, lengthRecord(2), lid);
    const lc = await cs[0].call('vote', lid);
    assert.equal(lc.length, 1);
    assert.deepEqual(lc[0].serials.map(buf), [l2, l1]);
    await cs[0].call('tpc_abort', lid);
    // Anything else that conflicts still goes back to the client.
    const m = await newOid(cs[0]);
    const s1 = await commit(cs[0], [[m, Z64, leaf(1)]]);
    const s2 = await commit(cs[0], [[m, s1, leaf(2)]]);
    const id = begin(cs[0]);
    cs[0].oneWay('storea', m, s1, leaf(3), id);
    const conflicts = await cs[0].call('vote', id);
    assert.deepEqual(conflicts[0].serials.map(buf), [s2, s1]);
    await cs[0].call('tpc_abort', id);
  });

  it('merges concurrent inserts into one BTrees set on the server, as a ZEO server by default', async () => {
    const [c, d] = [await connect(members[1], 'hot'), await connect(members[2], 'hot')];
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, iiSet([1, 5, 9])]]);
    const [ic, id] = [begin(c), begin(d)];
    c.oneWay('storea', oid, t1, iiSet([1, 3, 5, 9]), ic);
    d.oneWay('storea', oid, t1, iiSet([1, 5, 9, 12]), id);
    // c votes first; d's vote waits for c's lock (a set's lock is exclusive), then is merged.
    assert.deepEqual((await c.call('vote', ic)).map(buf), [oid]);
    const dVote = d.call('vote', id);
    const tc = await c.call('tpc_finish', ic);
    assert.deepEqual((await dVote).map(buf), [oid]);
    const tids = [tc, await d.call('tpc_finish', id)];
    const after = p64(
      [...tids].map((t: Uint8Array) => u64(buf(t))).reduce((x, y) => (x > y ? x : y)) + 1n,
    );
    const [data] = await c.call('loadBefore', oid, after);
    assert.deepEqual(readIntSetRecord(buf(data)).keys, [1n, 3n, 5n, 9n, 12n]);
    // The same key inserted by two clients is a conflict for the client, as in BTrees.
    const last = buf((await c.call('loadBefore', oid, after))[1]);
    const ie = begin(c);
    c.oneWay('storea', oid, t1, iiSet([1, 5, 9, 12]), ie);
    const conflicts = await c.call('vote', ie);
    assert.deepEqual(conflicts[0].serials.map(buf), [last, t1]);
    await c.call('tpc_abort', ie);
  });

  it('closes a connection beginning a second transaction before the first ends (ZEO checkSecondBeginFails), and a closed connection releases its vote at once (checkDisconnectedOnThread2Close)', async () => {
    const c = await connect(members[1], 'closing');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('one')]]);
    const id = begin(c);
    c.oneWay('storea', oid, t1, b('voted by c'), id);
    assert.deepEqual(await c.call('vote', id), []);
    // ZEO's server refuses a second simultaneous tpc_begin from one client: a one-way call cannot
    // answer, so the connection closes (the client's threads see ClientDisconnected), and the vote
    // it held goes with it.
    begin(c);
    const pending = c.call('tpc_finish', id).catch((e) => e);
    await c.closedPromise;
    assert.ok((await pending) instanceof Disconnected, 'tpc_finish is not answered');
    // Far before the transaction timeout (2 min): the vote went with its connection.
    const seen = await connect(members[0], 'closing');
    assert.deepEqual(
      buf((await current(seen, oid))[1]),
      t1,
      'the closed connection committed nothing',
    );
    for (const m of [members[1], members[0]]) {
      const d = await connect(m, 'closing');
      const base = buf((await current(d, oid))[1]);
      const t = await eventually(
        () => commit(d, [[oid, base, b(`from ${m.id}`)]]).catch(() => undefined),
        10_000,
        `a commit through ${m.id}`,
      );
      assert.ok(idCompare(t, t1) > 0);
    }
  });

  it('aborts on every node the vote of a client that went away', async () => {
    const c = await connect(members[0], 'lease');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('one')]]);
    const id = begin(c);
    c.oneWay('storea', oid, t1, b('held'), id);
    assert.deepEqual(await c.call('vote', id), []);
    c.close();
    for (const m of members.slice(1)) {
      const d = await connect(m, 'lease');
      const base = buf((await current(d, oid))[1]);
      await eventually(
        () => commit(d, [[oid, base, b(`from ${m.id}`)]]).catch(() => undefined),
        10_000,
        `a commit through ${m.id}`,
      );
    }
  });

  it('aborts the vote of a session whose node died within about a lease, and the client learns its fate elsewhere', async () => {
    const victim = members[2];
    const c = await connect(victim, 'lease');
    const oid = await newOid(c);
    const t1 = await commit(c, [[oid, Z64, b('before')]]);
    const id = begin(c);
    c.oneWay('storea', oid, t1, b('voted, never finished'), id);
    assert.deepEqual(await c.call('vote', id), []);
    const killedAt = Date.now();
    await victim.proc!.kill('SIGKILL');
    // The transaction timeout is two minutes: only the vote's lease can release it this soon.
    const d = await eventually(() => connect(members[0], 'lease').catch(() => undefined), 10_000);
    const t2 = await eventually(
      () => commit(d, [[oid, t1, b('after')]]).catch(() => undefined),
      15_000,
      'a commit of the voted object',
    );
    console.log(
      `      the voted object committed by another client ${Date.now() - killedAt} ms after the kill`,
    );
    // The client, reconnecting to a survivor, sees that its transaction never committed.
    const again = await connect(members[1], 'lease');
    const inv = await again.call('getInvalidations', t1);
    assert.deepEqual(buf(inv[0]), t2);
    assert.deepEqual(buf((await current(again, oid))[0]), b('after'));
    assert.equal(hex(buf((await current(again, oid))[1])), hex(t2));
  });
});
