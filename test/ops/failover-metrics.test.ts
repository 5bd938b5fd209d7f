/**
 * What an operator sees on a real three-node cluster: /livez and /readyz, the standard gRPC health
 * service and reflection on the client port, and the Prometheus metrics telling the story of a
 * kill -9 of the leader (a survivor becomes leader, leader changes are counted, every node knows
 * a leader again).
 */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { service as healthService } from 'grpc-health-check';
import { eventually } from '../harness';
import { LocalCluster, OpsNode, httpGet, scrape } from './local-cluster';

/** The reflection protocol's .proto, shipped inside @grpc/reflection. */
const REFLECTION_PROTO = path.resolve(
  path.dirname(require.resolve('@grpc/reflection')),
  '../proto/grpc/reflection/v1/reflection.proto',
);

function healthCheck(n: OpsNode, serviceName: string): Promise<string> {
  const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
  const client = new Health(n.clientAddress, grpc.credentials.createInsecure()) as any;
  return new Promise((resolve, reject) =>
    client.Check(
      { service: serviceName },
      { deadline: Date.now() + 5000 },
      (err: grpc.ServiceError | null, res: { status: string }) => {
        client.close();
        if (err) reject(err);
        else resolve(res.status);
      },
    ),
  );
}

function listServices(n: OpsNode): Promise<string[]> {
  const pkg = grpc.loadPackageDefinition(
    protoLoader.loadSync(REFLECTION_PROTO, { keepCase: true, oneofs: true, defaults: true }),
  ) as any;
  const client = new pkg.grpc.reflection.v1.ServerReflection(
    n.clientAddress,
    grpc.credentials.createInsecure(),
  );
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo({ deadline: Date.now() + 5000 });
    call.on('data', (res: { list_services_response?: { service: { name: string }[] } }) => {
      resolve((res.list_services_response?.service ?? []).map((s) => s.name));
      call.end();
    });
    call.on('error', (e: Error) => reject(e));
    call.on('end', () => client.close());
    call.write({ list_services: '' });
  });
}

describe('operations: endpoints and failover metrics of a three-node cluster', function () {
  this.timeout(120_000);
  let cluster: LocalCluster;

  before(async () => {
    cluster = await LocalCluster.start('ops-metrics');
  });
  after(async () => {
    await cluster?.stop();
  });

  it('answers /livez and /readyz on every node', async () => {
    for (const n of cluster.nodes) {
      const live = await httpGet(n.httpAddress, '/livez');
      assert.equal(live.status, 200);
      const ready = await eventually(
        async () => {
          const r = await httpGet(n.httpAddress, '/readyz');
          return r.status === 200 ? r : undefined;
        },
        20_000,
        `${n.id} /readyz`,
      );
      assert.match(ready.body, /^ok: leader n\d/);
    }
  });

  it('serves the standard gRPC health service: SERVING for the server and for zeoraft.v1.Storage', async () => {
    // Health follows readiness (polled every HEALTH_POLL_MS), so it may lag /readyz briefly.
    for (const n of cluster.nodes)
      for (const name of ['', 'zeoraft.v1.Storage'])
        await eventually(
          async () => (await healthCheck(n, name)) === 'SERVING',
          10_000,
          `${n.id} health ${name || '(server)'} SERVING`,
        );
    await assert.rejects(healthCheck(cluster.nodes[0], 'no.such.Service'), { code: 5 });
  });

  it('serves gRPC reflection listing zeoraft.v1.Storage, Admin and health', async () => {
    const names = await listServices(cluster.nodes[0]);
    for (const s of ['zeoraft.v1.Storage', 'zeoraft.v1.Admin', 'grpc.health.v1.Health'])
      assert.ok(names.includes(s), `${s} in ${names.join(', ')}`);
  });

  it('after kill -9 of the leader, a survivor leads, leader changes are counted, and every node has a leader', async () => {
    const leader = await cluster.leader();
    const survivors = cluster.nodes.filter((n) => n !== leader);
    // Before: exactly the leader says is_leader 1; everyone has a leader.
    for (const n of cluster.nodes) {
      assert.equal(await scrape(n, 'zeoraft_raft_has_leader'), 1, `${n.id} has_leader`);
      assert.equal(await scrape(n, 'zeoraft_raft_is_leader'), n === leader ? 1 : 0);
    }
    const changesBefore = new Map<string, number>();
    for (const n of survivors)
      changesBefore.set(n.id, (await scrape(n, 'zeoraft_raft_leader_changes_seen_total')) ?? -1);

    await leader.proc.kill('SIGKILL');

    const newLeader = await eventually(
      async () => {
        for (const n of survivors) if ((await scrape(n, 'zeoraft_raft_is_leader')) === 1) return n;
        return undefined;
      },
      30_000,
      'a survivor to report zeoraft_raft_is_leader 1',
    );
    assert.notEqual(newLeader.id, leader.id);
    for (const n of survivors) {
      await eventually(
        async () => (await scrape(n, 'zeoraft_raft_has_leader')) === 1,
        30_000,
        `${n.id} zeoraft_raft_has_leader back to 1`,
      );
      const after = (await scrape(n, 'zeoraft_raft_leader_changes_seen_total')) ?? -1;
      assert.ok(
        after > changesBefore.get(n.id)!,
        `${n.id} leader changes ${changesBefore.get(n.id)} -> ${after}`,
      );
      const ready = await eventually(
        async () => (await httpGet(n.httpAddress, '/readyz')).status === 200,
        30_000,
        `${n.id} ready again`,
      );
      assert.ok(ready);
      // Health follows readiness within HEALTH_POLL_MS.
      await eventually(
        async () => (await healthCheck(n, '')) === 'SERVING',
        10_000,
        `${n.id} health SERVING again`,
      );
    }
    // Exactly one survivor leads.
    const leading = [];
    for (const n of survivors)
      if ((await scrape(n, 'zeoraft_raft_is_leader')) === 1) leading.push(n.id);
    assert.deepEqual(leading, [newLeader.id]);
  });
});
