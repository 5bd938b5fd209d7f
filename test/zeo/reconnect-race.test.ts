/**
 * ZODB's racetest `test_race_external_invalidate_vs_disconnect` at the protocol level, against a
 * live three-node cluster: while one client commits, others reconnect over and over (to every
 * node), verify their caches with getInvalidations from the last TID they knew, read, follow the
 * invalidations a while and leave. Between the cache verification and the invalidations that
 * follow it nothing is missed, and what a connection reads as of the TID it verified to is one
 * transaction's state (two objects always written together are equal).
 */
import * as assert from 'node:assert/strict';
import { Z64, hex, idCompare, p64, u64 } from '../../src/util/ids';
import { eventually, sleep } from '../harness';
import { ZeoCluster, type ZeoMember } from '../harness/zeo-cluster';
import { ZeoClient } from './zeo-client';

const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);
/** Commits of the pair by the writer. */
const COMMITS = 60;
const STORAGE = 'race';

/** What one reconnection saw. */
interface Visit {
  node: string;
  /** The TID the client knew before (its cache's last TID). */
  known: Buffer;
  /** getInvalidations(known): the TID it covers and the objects it names. */
  verifiedTo: Buffer;
  oids: string[];
  /** invalidateTransaction TIDs received on the connection, in order. */
  invalidations: Buffer[];
}

describe('ZEO door: reconnecting clients racing commits (ZODB racetest)', function () {
  this.timeout(180_000);
  const cluster = new ZeoCluster('zeo-race', {
    ZEORAFT_STORAGES: `1,${STORAGE}`,
  });
  const members = cluster.members;
  const clients: ZeoClient[] = [];
  let txn = 1;

  before(async () => {
    await cluster.start();
  });

  after(async () => {
    for (const c of clients) c.close();
    await cluster.stop();
  });

  async function connect(m: ZeoMember): Promise<ZeoClient> {
    const c = await ZeoClient.connect(m.zeo);
    clients.push(c);
    await c.call('register', STORAGE, false);
    return c;
  }

  it('misses no invalidation between cache verification and the stream, and reads whole transactions', async () => {
    const w = await connect(members[0]);
    await eventually(() => w.call('new_oids', 1).then(() => true), 20_000, 'a leader');
    const [x, y] = (await w.call('new_oids', 2)).map(buf);
    const commitPair = async (value: string, sx: Buffer, sy: Buffer): Promise<Buffer> => {
      const id = txn++;
      w.oneWay('tpc_begin', id, b('writer'), b(''), {}, null, ' ');
      w.oneWay('storea', x, sx, b(value), id);
      w.oneWay('storea', y, sy, b(value), id);
      assert.deepEqual(await w.call('vote', id), []);
      return buf(await w.call('tpc_finish', id));
    };
    const tids = [await commitPair('0', Z64, Z64)];
    let writing = true;
    const visits: Visit[] = [];
    const torn: string[] = [];
    const readers = members.map(async (m) => {
      let known = tids[0];
      while (writing) {
        const c = await connect(m);
        const r = await c.call('getInvalidations', known);
        assert.ok(r, `${m.id}: getInvalidations(${hex(known)}) inside the kept history`);
        const verifiedTo = buf(r[0]);
        // Read as of the verified TID, as the client's MVCC does for a new transaction.
        const at = p64(u64(verifiedTo) + 1n);
        const [rx, ry] = await Promise.all([
          c.call('loadBefore', x, at),
          c.call('loadBefore', y, at),
        ]);
        if (!buf(rx[0]).equals(buf(ry[0])) || !buf(rx[1]).equals(buf(ry[1])))
          torn.push(
            `${m.id} at ${hex(verifiedTo)}: ${buf(rx[0])}@${hex(buf(rx[1]))} vs ${buf(ry[0])}@${hex(buf(ry[1]))}`,
          );
        await sleep(10 + Math.floor(Math.random() * 40)); // follow the stream a little while
        const invalidations = c.calls('invalidateTransaction').map((a) => buf(a[0]));
        c.close();
        visits.push({
          node: m.id,
          known,
          verifiedTo,
          oids: r[1].map((o: Uint8Array) => hex(buf(o))),
          invalidations,
        });
        known = [verifiedTo, ...invalidations].reduce((a, t) => (idCompare(t, a) > 0 ? t : a));
      }
    });
    let sx = tids[0];
    let sy = tids[0];
    for (let i = 1; i <= COMMITS; i++) {
      const t = await commitPair(String(i), sx, sy);
      tids.push(t);
      sx = sy = t;
    }
    writing = false;
    await Promise.all(readers);

    assert.deepEqual(torn, [], 'loads as of one TID see one transaction of the pair');
    const pair = [hex(x), hex(y)].sort();
    const committedIn = (lo: Buffer, hi: Buffer): Buffer[] =>
      tids.filter((t) => idCompare(t, lo) > 0 && idCompare(t, hi) <= 0);
    for (const v of visits) {
      const where = `${v.node}, known ${hex(v.known)}, verified to ${hex(v.verifiedTo)}`;
      // The verification names the pair exactly when a commit of it lies in (known, verifiedTo].
      const changed = committedIn(v.known, v.verifiedTo).length > 0;
      assert.deepEqual([...v.oids].sort(), changed ? pair : [], where);
      // Invalidations come in TID order, and after the verified TID none is missing up to the
      // newest one received.
      for (let k = 1; k < v.invalidations.length; k++)
        assert.ok(idCompare(v.invalidations[k - 1], v.invalidations[k]) < 0, `${where}: order`);
      const newest = v.invalidations[v.invalidations.length - 1];
      if (!newest || idCompare(newest, v.verifiedTo) <= 0) continue;
      const got = new Set(v.invalidations.map(hex));
      const missing = committedIn(v.verifiedTo, newest).filter((t) => !got.has(hex(t)));
      assert.deepEqual(missing.map(hex), [], `${where}: invalidations missed`);
    }
    const followed = visits.filter((v) => v.invalidations.length > 0).length;
    assert.ok(
      visits.length >= 3 && followed >= 1,
      `${visits.length} visits, ${followed} with invalidations`,
    );
  });
});
