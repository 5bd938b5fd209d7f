/**
 * A ZEO vote names its owner node, and lives as long as that node and its session do, not only as
 * long as its lease renewals keep up (server/node.ts abortExpired). Real node processes: renewals
 * spaced past the lease (ZEORAFT_VOTE_RENEW_MS, as renewals fall behind on a loaded machine) do
 * not lose a vote made through the leader or a follower; a vote whose session stays open still
 * goes at the transaction timeout; one whose node died goes about a lease after; and a standalone
 * node restarted after a crash aborts the votes of its sessions that are gone.
 */
import * as assert from 'node:assert/strict';
import { StorageRpc } from '../../src/client/rpc';
import { Z64, idCompare } from '../../src/util/ids';
import { NodeProcess, eventually, freePort, rmDir, sleep, tmpDir } from '../harness';
import { ZeoCluster, type ZeoMember } from '../harness/zeo-cluster';
import { ZeoClient } from './zeo-client';

const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);
const MAXTID = Buffer.from('7fffffffffffffff', 'hex');
/** Renewals this far apart: without an owner that the leader hears from, every lease would lapse. */
const RENEW_MS = 3_000;
const TXN_TIMEOUT_MS = 6_000;

describe('ZEO door: a vote lives while its owner node and session do', function () {
  this.timeout(120_000);
  const cluster = new ZeoCluster('zeo-owner', {
    ZEORAFT_STORAGES: 'owner',
    ZEORAFT_VOTE_RENEW_MS: String(RENEW_MS),
    ZEORAFT_TXN_TIMEOUT_MS: String(TXN_TIMEOUT_MS),
    ZEORAFT_LOCK_WAIT_MS: '500',
  });
  const members = cluster.members;
  const clients: ZeoClient[] = [];
  let txnCounter = 7000;

  async function connect(port: number): Promise<ZeoClient> {
    const c = await ZeoClient.connect(port);
    clients.push(c);
    await c.call('register', 'owner', false);
    return c;
  }

  function begin(c: ZeoClient): number {
    const id = txnCounter++;
    c.oneWay('tpc_begin', id, b('alice'), b('test'), {}, null, ' ');
    return id;
  }

  /** A voted (not finished) store of `data` over `base`. */
  async function vote(c: ZeoClient, oid: Buffer, base: Buffer, data: string): Promise<number> {
    const id = begin(c);
    c.oneWay('storea', oid, base, b(data), id);
    assert.deepEqual(await c.call('vote', id), [], 'no conflicts');
    return id;
  }

  /** One commit attempt on a fresh connection: its TID, or undefined if it did not commit. */
  async function tryCommit(
    port: number,
    oid: Buffer,
    base: Buffer,
    data: string,
  ): Promise<Buffer | undefined> {
    const c = await connect(port).catch(() => undefined);
    if (!c) return undefined;
    try {
      const id = begin(c);
      c.oneWay('storea', oid, base, b(data), id);
      const r = await c.call('vote', id).catch(() => undefined);
      if (!Array.isArray(r) || r.length) return undefined;
      return buf(await c.call('tpc_finish', id));
    } catch {
      return undefined;
    } finally {
      c.close();
    }
  }

  /** A new object committed with `data`: its oid and TID. */
  async function created(c: ZeoClient, data: string): Promise<[Buffer, Buffer]> {
    const oid = buf((await c.call('new_oids', 1))[0]);
    const id = begin(c);
    c.oneWay('storea', oid, Z64, b(data), id);
    assert.deepEqual(await c.call('vote', id), []);
    return [oid, buf(await c.call('tpc_finish', id))];
  }

  async function leaderId(): Promise<string> {
    const rpc = new StorageRpc(`127.0.0.1:${members[0].client}`, { timeoutMs: 5000 });
    try {
      return await eventually(
        async () => (await rpc.call('Status', {}, 1000)).leaderId || undefined,
        20_000,
        'a leader',
      );
    } finally {
      rpc.close();
    }
  }

  before(async () => {
    await cluster.start();
    const c = await connect(members[0].zeo);
    await eventually(() => c.call('new_oids', 1).then(() => true), 20_000, 'a leader');
  });

  after(async () => {
    for (const c of clients) c.close();
    await cluster.stop();
  });

  it('keeps votes whose renewals lapse for several leases, made through the leader and through followers; their finish commits', async () => {
    const leader = await leaderId();
    assert.ok(members.some((m) => m.id === leader));
    const votes = await Promise.all(
      members.map(async (m) => {
        const c = await connect(m.zeo);
        const [oid, t1] = await created(c, `before ${m.id}`);
        return { m, c, oid, t1, id: await vote(c, oid, t1, `voted through ${m.id}`) };
      }),
    );
    // Two and a half leases without a renewal (the next is RENEW_MS after the vote).
    await sleep(2_500);
    for (const { m, c, oid, t1, id } of votes) {
      const role = m.id === leader ? 'leader' : 'follower';
      const tid = buf(await c.call('tpc_finish', id));
      assert.ok(idCompare(tid, t1) > 0, `the vote through the ${role} committed`);
      const cur = await c.call('loadBefore', oid, MAXTID);
      assert.deepEqual([buf(cur[0]), buf(cur[1])], [b(`voted through ${m.id}`), tid]);
    }
  });

  it('aborts at the transaction timeout a vote whose node and session live on', async () => {
    const [owner, other] = [members[1], members[0]];
    const c = await connect(owner.zeo);
    const [oid, t1] = await created(c, 'held');
    const id = await vote(c, oid, t1, 'never finished');
    const votedAt = Date.now();
    const t2 = await eventually(
      () => tryCommit(other.zeo, oid, t1, 'after the timeout'),
      TXN_TIMEOUT_MS + 10_000,
      'a commit of the voted object',
    );
    const heldMs = Date.now() - votedAt;
    console.log(
      `      a live owner's vote held its object ${heldMs} ms (timeout ${TXN_TIMEOUT_MS})`,
    );
    assert.ok(heldMs >= TXN_TIMEOUT_MS - 500, `released after ${heldMs} ms, before the timeout`);
    await assert.rejects(c.call('tpc_finish', id));
    const cur = await connect(other.zeo).then((d) => d.call('loadBefore', oid, MAXTID));
    assert.deepEqual([buf(cur[0]), buf(cur[1])], [b('after the timeout'), t2]);
  });

  it('aborts the vote of a node that died about a lease after, not at its renewal or timeout', async () => {
    const leader = await leaderId();
    const victim = members.find((m) => m.id !== leader) as ZeoMember;
    const survivor = members.find((m) => m !== victim) as ZeoMember;
    const c = await connect(victim.zeo);
    const [oid, t1] = await created(c, 'before');
    await vote(c, oid, t1, 'voted, never finished');
    const killedAt = Date.now();
    await victim.proc!.kill('SIGKILL');
    const t2 = await eventually(
      () => tryCommit(survivor.zeo, oid, t1, 'after'),
      15_000,
      'a commit of the voted object',
    );
    const releasedMs = Date.now() - killedAt;
    console.log(`      the dead owner's vote released ${releasedMs} ms after the kill`);
    assert.ok(releasedMs < RENEW_MS, `released ${releasedMs} ms after the kill`);
    assert.ok(idCompare(t2, t1) > 0);
  });
});

describe('ZEO door: a standalone node restarted after a crash', function () {
  this.timeout(60_000);
  let dir = '';
  let proc: NodeProcess | undefined;
  const clients: ZeoClient[] = [];

  afterEach(async () => {
    for (const c of clients) c.close();
    await proc?.kill('SIGKILL');
    rmDir(dir);
  });

  it('aborts the votes of its sessions that are gone, long before the transaction timeout', async () => {
    dir = tmpDir('zeo-owner-solo');
    const env = {
      ZEORAFT_NODE_ID: 'solo',
      ZEORAFT_DATA_DIR: dir,
      ZEORAFT_LISTEN: `127.0.0.1:${await freePort()}`,
      ZEORAFT_ZEO_LISTEN: `127.0.0.1:${await freePort()}`,
      ZEORAFT_STORAGES: 'owner',
      ZEORAFT_TXN_TIMEOUT_MS: '60000',
    };
    const zeo = Number(env.ZEORAFT_ZEO_LISTEN.split(':')[1]);
    const connect = async (): Promise<ZeoClient> => {
      const c = await ZeoClient.connect(zeo);
      clients.push(c);
      await c.call('register', 'owner', false);
      return c;
    };
    proc = await NodeProcess.start(env);
    const c = await connect();
    const oid = buf((await c.call('new_oids', 1))[0]);
    c.oneWay('tpc_begin', 1, b('alice'), b('t'), {}, null, ' ');
    c.oneWay('storea', oid, Z64, b('voted before the crash'), 1);
    assert.deepEqual(await c.call('vote', 1), []);
    await proc.kill('SIGKILL');
    proc = await NodeProcess.start(env);
    const restartedAt = Date.now();
    const d = await connect();
    const tid = await eventually(
      async () => {
        d.oneWay('tpc_begin', 2, b('bob'), b('t'), {}, null, ' ');
        d.oneWay('storea', oid, Z64, b('after the restart'), 2);
        const r = await d.call('vote', 2).catch(() => undefined);
        if (Array.isArray(r) && !r.length) return buf(await d.call('tpc_finish', 2));
        await d.call('tpc_abort', 2);
        return undefined;
      },
      10_000,
      'a commit of the object voted before the crash',
    );
    console.log(
      `      the crashed session's vote released ${Date.now() - restartedAt} ms after the restart`,
    );
    const cur = await d.call('loadBefore', oid, MAXTID);
    assert.deepEqual([buf(cur[0]), buf(cur[1])], [b('after the restart'), tid]);
  });
});
