/**
 * ClientStorage against a real three-node cluster while its leader is killed (SIGKILL) and
 * restarted: read-modify-write counters through the clients' caches lose no acknowledged
 * increment and gain no unacknowledged one, and every client's cache ends up current.
 */
import * as assert from 'node:assert/strict';
import { ClientStorage } from '../../src/client';
import { CommitUnknownError } from '../../src/client/errors';
import { sleep } from '../harness';
import { TestCluster } from '../harness/cluster';
import { text } from './helpers';

const CLIENTS = 5;
const COUNTERS = 3;
const LEADER_KILLS = 3;

describe('ClientStorage failover on a three-node cluster', function () {
  this.timeout(90_000);
  let cluster: TestCluster;
  const clients: ClientStorage[] = [];

  before(async () => {
    cluster = await TestCluster.start(3);
  });
  after(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    await cluster?.stop();
  });

  it('keeps every acknowledged increment, exactly once, while the leader is killed repeatedly', async () => {
    const addresses = cluster.members.map((m) => `127.0.0.1:${m.client}`);
    const open = async (i: number): Promise<ClientStorage> => {
      // Each client prefers a different node, so some sit on followers and some on the leader.
      const rotated = addresses.map((_, j) => addresses[(i + j) % addresses.length]);
      const c = await ClientStorage.open({
        addresses: rotated,
        timeoutMs: 2000,
        retryWindowMs: 20_000,
        cache: { memoryBytes: 1 << 20 },
        clientName: `counter-${i}`,
      });
      clients.push(c);
      return c;
    };

    const setup = await open(0);
    const counters: Buffer[] = [];
    for (let i = 0; i < COUNTERS; i++) counters.push(await setup.newOid());
    await setup.commit({ stores: counters.map((oid) => ({ oid, data: Buffer.from('0') })) });

    const workers = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => open(i + 1)));
    const acked = new Array<number>(COUNTERS).fill(0);
    const unknown = new Array<number>(COUNTERS).fill(0);
    const failures: string[] = [];
    let stop = false;

    const work = async (c: ClientStorage, w: number): Promise<void> => {
      for (let n = 0; !stop; n++) {
        const k = (w + n) % COUNTERS;
        const oid = counters[k];
        try {
          await c.transact(
            async (txn) => {
              const r = await txn.load(oid);
              txn.store(oid, r.serial, Buffer.from(String(Number(text(r.data)) + 1)));
            },
            { attempts: 100 },
          );
          acked[k]++;
        } catch (e) {
          if (e instanceof CommitUnknownError) unknown[k]++;
          else failures.push(String(e));
        }
      }
    };
    const running = workers.map((c, w) => work(c, w));

    for (let i = 0; i < LEADER_KILLS; i++) {
      await sleep(1500);
      const leader = await cluster.leader();
      await cluster.kill(leader);
      await sleep(1000);
      await cluster.startNode(leader);
    }
    await sleep(1500);
    stop = true;
    await Promise.all(running);

    const total = acked.reduce((a, b) => a + b, 0);
    if (process.env.ZEORAFT_TEST_VERBOSE)
      console.log({ acked, failures: failures.length, first: failures[0] });
    assert.ok(total > 20, `only ${total} increments were acknowledged`);
    assert.deepEqual(unknown, new Array<number>(COUNTERS).fill(0), 'no commit left in doubt');

    // A fresh client reads the final values from the cluster...
    const check = await ClientStorage.open({ addresses, timeoutMs: 3000 });
    clients.push(check);
    await check.sync();
    const finals: number[] = [];
    for (const oid of counters) finals.push(Number(text((await check.load(oid)).data)));
    assert.deepEqual(finals, acked, `failures: ${failures.slice(0, 3).join('; ')}`);
    // ...and every worker's cache agrees once synced.
    for (const c of workers) {
      await c.sync();
      const view = c.snapshotView();
      for (let k = 0; k < COUNTERS; k++) {
        assert.equal(Number(text((await c.load(counters[k])).data)), acked[k]);
        assert.equal(Number(text((await view.load(counters[k])).data)), acked[k]);
      }
    }
  });
});
