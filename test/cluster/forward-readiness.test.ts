/**
 * What a follower answers when it cannot reach a leader, and what /readyz says about a node that
 * cannot serve, with real processes: a write forwarded to a leader that is gone (the call never
 * left the follower) is retried with the next leader instead of being answered "outcome unknown";
 * /readyz is 503 with a reason on a node without a leader and on a node whose stored state
 * breaks an invariant.
 */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { Level } from 'level';
import { ZeoRaftError } from '../../src/client/errors';
import * as K from '../../src/storage/keys';
import { Z64, p64 } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { eventually, sleep } from '../harness/index';

const LIVENESS_MS = 15_000;

async function readyz(cluster: TestCluster, id: string): Promise<{ code: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${cluster.member(id).http}/readyz`);
  return { code: r.status, body: await r.text() };
}

describe('cluster: forwarding without a leader, and readiness', function () {
  this.timeout(120_000);
  let cluster: TestCluster;

  afterEach(async () => {
    await cluster?.stop();
  });

  it('retries a write a follower could not send to a dead leader instead of answering OUTCOME_UNKNOWN', async () => {
    cluster = await TestCluster.start(3);
    const leader = await cluster.leader();
    const follower = cluster.alive().find((id) => id !== leader) as string;
    const rpc = cluster.rpc(follower);
    await rpc.call('Commit', {
      transaction: { stores: [{ oid: p64(1n), data: Buffer.from('x') }] },
    });
    await cluster.kill(leader);
    await sleep(300); // the follower's connection to the dead leader is known broken
    // Each write goes to the dead leader first (no connection: it never leaves the follower),
    // then to the next leader once one is elected.
    const outcomes = await Promise.all(
      [2, 3, 4, 5].map((n) =>
        rpc
          .call(
            'Commit',
            {
              transaction: {
                stores: [{ oid: p64(BigInt(n)), serial: Z64, data: Buffer.from('y') }],
              },
            },
            LIVENESS_MS,
          )
          .then(
            () => 'ok',
            (e: unknown) =>
              e instanceof ZeoRaftError ? `${e.code} ${e.detail?.kind}: ${e.message}` : String(e),
          ),
      ),
    );
    assert.deepEqual(outcomes, ['ok', 'ok', 'ok', 'ok']);
  });

  it('answers /readyz 503 with a reason on a node without a leader', async () => {
    cluster = await TestCluster.start(3);
    const leader = await cluster.leader();
    const survivor = cluster.alive().find((id) => id !== leader) as string;
    assert.equal((await readyz(cluster, survivor)).code, 200);
    for (const id of cluster.alive()) if (id !== survivor) await cluster.kill(id);
    await eventually(
      async () => {
        const r = await readyz(cluster, survivor);
        return r.code === 503 && /no leader/.test(r.body);
      },
      LIVENESS_MS,
      'the survivor to say it has no leader',
    );
  });

  it('answers /readyz 503 with a reason on a node whose state breaks an invariant', async () => {
    cluster = await TestCluster.start(3);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    const oid = p64(7n);
    const { tid } = await cluster
      .rpc(leader)
      .call('Commit', { transaction: { stores: [{ oid, data: Buffer.from('v') }] } });
    await eventually(
      async () => (await cluster.rpc(victim).call('Load', { oid, seenTid: tid })).data.length > 0,
      LIVENESS_MS,
      'the victim to have the object',
    );
    // Damage the victim's state on disk: the current revision of the object disappears.
    await cluster.kill(victim, 'SIGTERM');
    const db = new Level<Buffer, Buffer>(path.join(cluster.dataDir(victim), 'state'), {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
    });
    await db.open();
    await db.del(K.revisionKey('1', oid, tid), { sync: true });
    await db.close();
    await cluster.startNode(victim);
    await eventually(
      async () => (await readyz(cluster, victim)).code === 200,
      LIVENESS_MS,
      'the damaged node to start serving',
    );
    await assert.rejects(cluster.rpc(victim).call('Load', { oid }), /is missing/);
    const r = await readyz(cluster, victim);
    assert.equal(r.code, 503, r.body);
    assert.match(r.body, /current revision .* is missing/);
  });
});
