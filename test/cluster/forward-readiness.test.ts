/**
 * What a follower answers when it cannot reach a leader, and what /readyz says about a node that
 * cannot serve, with real processes: a write forwarded to a leader that is gone (the call never
 * left the follower) is retried with the next leader instead of being answered "outcome unknown";
 * a write over a size limit sent through a follower is refused with RESOURCE_EXHAUSTED naming the
 * limit (not UNAVAILABLE), and a large one inside the limits is forwarded and committed; the
 * leader's own refusal of forwarded writes past its memory budget reaches the client as the same
 * transient RESOURCE_EXHAUSTED, and nothing refused is committed;
 * /readyz is 503 with a reason on a node without a leader and on a node whose stored state
 * breaks an invariant.
 */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Level } from 'level';
import { ZeoRaftError } from '../../src/client/errors';
import { StorageRpc } from '../../src/client/rpc';
import * as K from '../../src/storage/keys';
import { Z64, p64 } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { eventually, sleep } from '../harness/index';
import { rejectsWith } from '../security/helpers';

const LIVENESS_MS = 15_000;
/** Deadline of calls carrying tens of MiB (a loaded machine copies them slowly). */
const LARGE_MS = 120_000;

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

  it('refuses a write over a size limit sent through a follower with RESOURCE_EXHAUSTED naming the limit, and forwards one inside the limits', async () => {
    cluster = await TestCluster.start(3);
    const leader = await cluster.leader();
    const follower = cluster.alive().find((id) => id !== leader) as string;
    const rpc = cluster.rpc(follower);
    const MiB = 1 << 20;
    // Inside the limits (ZEORAFT_MAX_TXN_BYTES, 32 MiB): forwarded to the leader and committed.
    const large = Buffer.alloc(24 * MiB, 7);
    const { tid } = await rpc.call(
      'Commit',
      { transaction: { stores: [{ oid: p64(1n), data: large }] } },
      LARGE_MS,
    );
    // Read where the commit was answered: that node has applied it.
    const loaded = await rpc.call('Load', { oid: p64(1n) }, LARGE_MS);
    assert.deepEqual(loaded.serial, tid);
    assert.ok(Buffer.from(loaded.data).equals(large), 'the forwarded data committed whole');
    // Past a limit, by data, by extension or by objects, in a Commit or a Vote: refused with the
    // limit's name.
    const small = [{ oid: p64(2n), data: Buffer.from('x') }];
    const over: Array<[string, object, RegExp]> = [
      [
        'data',
        { stores: [{ oid: p64(2n), data: Buffer.alloc(33 * MiB, 1) }] },
        /limit max_txn_bytes exceeded/,
      ],
      [
        'extension',
        { extension: Buffer.alloc(33 * MiB, 2), stores: small },
        /limit max_txn_bytes exceeded/,
      ],
      [
        'objects',
        {
          stores: Array.from({ length: 100_001 }, (_, i) => ({
            oid: p64(BigInt(0x10000 + i)),
            data: Buffer.from('o'),
          })),
        },
        /limit max_txn_objects exceeded/,
      ],
    ];
    for (const [what, transaction, message] of over) {
      await rejectsWith(
        rpc.call('Commit', { transaction }, LARGE_MS),
        grpc.status.RESOURCE_EXHAUSTED,
        message,
      ).catch((e: Error) => assert.fail(`Commit over ${what}: ${e.message}`));
      await rejectsWith(
        rpc.call('Vote', { transactionId: what, transaction }, LARGE_MS),
        grpc.status.RESOURCE_EXHAUSTED,
        message,
      ).catch((e: Error) => assert.fail(`Vote over ${what}: ${e.message}`));
    }
    // Nothing of the refused writes committed, and the follower keeps forwarding.
    await rejectsWith(cluster.rpc(leader).call('Load', { oid: p64(2n) }), grpc.status.NOT_FOUND);
    await rpc.call('Commit', { transaction: { stores: small } }, LIVENESS_MS);
    assert.deepEqual(
      Buffer.from((await rpc.call('Load', { oid: p64(2n) })).data),
      Buffer.from('x'),
    );
  });

  it("answers the leader's refusal of forwarded writes past its memory budget as the transient RESOURCE_EXHAUSTED, committing none of them", async () => {
    const MiB = 1 << 20;
    // Every node has a 16 MiB budget, except one follower that admits far more: what it forwards
    // is refused by the leader's own budget.
    cluster = await TestCluster.start(3, { ZEORAFT_MAX_TXN_MEMORY_BYTES: String(16 * MiB) });
    const first = await cluster.leader();
    const follower = cluster.alive().find((id) => id !== first) as string;
    await cluster.kill(follower);
    await cluster.startNode(follower, { ZEORAFT_MAX_TXN_MEMORY_BYTES: String(1024 * MiB) });
    // Whichever node leads now, it has the small budget.
    const leader = await cluster.leader();
    assert.notEqual(leader, follower);
    const txnOf = (k: number): { stores: { oid: Buffer; data: Buffer }[] } => ({
      stores: Array.from({ length: 5_000 }, (_, i) => ({
        oid: p64(BigInt((k + 1) * 0x100000 + i)),
        data: Buffer.alloc(100, i),
      })),
    });
    // Twelve concurrent 5000-object commits (each charged ~11 MiB) through the follower.
    const rpcs: StorageRpc[] = [];
    const outcomes = await Promise.allSettled(
      Array.from({ length: 12 }, (_, k) => {
        const r = new StorageRpc(`127.0.0.1:${cluster.member(follower).client}`, {
          timeoutMs: 60_000,
          channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
        });
        rpcs.push(r);
        return r.call('Commit', { transaction: txnOf(k) });
      }),
    );
    for (const r of rpcs) r.close();
    const refused = outcomes.flatMap((o, k) =>
      o.status === 'rejected' ? [{ k, e: o.reason }] : [],
    );
    assert.ok(refused.length >= 1, 'the leader refused some of them at its budget');
    assert.ok(refused.length < 12, 'the leader admitted at least one');
    for (const { e } of refused) {
      assert.ok(e instanceof ZeoRaftError, String(e));
      assert.equal(e.grpcCode, grpc.status.RESOURCE_EXHAUSTED, e.message);
      // Refused by the leader (the follower's own budget admits them all).
      assert.match(
        e.message,
        /forwarding to leader .* failed: .*max_txn_memory_bytes.*retry later/,
      );
      assert.equal(e.detail?.transient, true, e.message);
    }
    // Refused ones committed nothing; sent again one by one, they commit.
    const rpc = cluster.rpc(follower);
    for (let k = 0; k < 12; k++) {
      const last = txnOf(k).stores[4_999];
      if (refused.some((r) => r.k === k)) {
        await rejectsWith(
          cluster.rpc(leader).call('Load', { oid: last.oid }),
          grpc.status.NOT_FOUND,
        );
        await rpc.call('Commit', { transaction: txnOf(k) }, LARGE_MS);
      }
      assert.deepEqual(Buffer.from((await rpc.call('Load', { oid: last.oid })).data), last.data);
    }
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
