/**
 * The Python example (examples/python, Debian's python3-grpcio) against a real three-node cluster:
 * it commits and loads, and its Subscribe stream survives a kill -9 of the leader it is connected
 * to, resuming on another node after the last TID it received: every acknowledged transaction
 * arrives exactly once, in TID order.
 */
import * as assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { StorageRpc } from '../../src/client/rpc';
import { eventually, sleep } from '../harness';
import { LocalCluster, OpsNode, scrape } from './local-cluster';

const ROOT = path.resolve(__dirname, '../../..');
const CLIENT = path.join(ROOT, 'examples/python/zeoraft_client.py');
/** Debian's interpreter: the one that sees python3-grpcio (a pyenv python3 on PATH does not). */
const PYTHON = '/usr/bin/python3';

type Line = Record<string, any>;

class PythonClient {
  out = '';
  err = '';
  readonly exited: Promise<number | null>;
  constructor(readonly child: ChildProcess) {
    child.stdout!.on('data', (d: Buffer) => (this.out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }
  static start(nodes: OpsNode[], args: string[]): PythonClient {
    const child = spawn(
      PYTHON,
      [CLIENT, '--nodes', nodes.map((n) => n.clientAddress).join(','), ...args],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    return new PythonClient(child);
  }
  get lines(): Line[] {
    return this.out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Line);
  }
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null)
      process.kill(this.child.pid!, 'SIGTERM');
    await this.exited;
  }
}

async function runPython(nodes: OpsNode[], args: string[]): Promise<Line[]> {
  const p = PythonClient.start(nodes, args);
  const code = await p.exited;
  assert.equal(code, 0, `python ${args.join(' ')} exited ${code}:\n${p.out}\n${p.err}`);
  return p.lines;
}

/** Commit one revision through any live node, retrying through a failover. */
async function commitAnywhere(
  cluster: LocalCluster,
  oid: Buffer,
  serial: Buffer,
  n: number,
): Promise<Buffer> {
  let attempt = 0;
  return eventually(
    async () => {
      const nodes = cluster.alive;
      const node = nodes[attempt++ % nodes.length];
      const rpc = new StorageRpc(node.clientAddress, { timeoutMs: 5000 });
      try {
        const r = await rpc.call('Commit', {
          transaction: {
            description: `ops ${n}`,
            stores: [{ oid, serial, data: Buffer.from(`r${n}`) }],
          },
        });
        return r.tid;
      } finally {
        rpc.close();
      }
    },
    30_000,
    `commit ${n}`,
  );
}

describe('examples/python: a Python gRPC client across a leader failover', function () {
  this.timeout(180_000);
  let cluster: LocalCluster | undefined;

  before(async function () {
    const probe = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools'], { encoding: 'utf8' });
    if (probe.error || probe.status !== 0) {
      console.warn(
        `    skipped: ${PYTHON} cannot import grpc and grpc_tools (apt-get install python3-grpcio python3-grpc-tools; CI does)`,
      );
      this.skip();
    }
    cluster = await LocalCluster.start('ops-python');
  });
  after(async () => {
    await cluster?.stop();
  });

  it('opens storage 1, commits an object and loads it back', async () => {
    const lines = await runPython(cluster!.nodes, ['demo']);
    const committed = lines.find((l) => l.event === 'committed');
    const loaded = lines.find((l) => l.event === 'loaded');
    assert.ok(committed, JSON.stringify(lines));
    assert.equal(committed.tid.length, 16);
    assert.match(committed.time, /^\d{4}-\d\d-\d\dT/);
    assert.equal(loaded?.matches, true, JSON.stringify(lines));
    assert.equal(loaded?.serial, committed.tid);
    assert.ok(lines.some((l) => l.event === 'status' && l.leader));
  });

  it('follows the Subscribe stream through kill -9 of its node, the leader, with no gap or repeat', async () => {
    const c = cluster!;
    const leader = await c.leader();
    const others = c.nodes.filter((n) => n !== leader);
    const rpc = new StorageRpc(others[0].clientAddress);
    const start = (await rpc.call('LastTransaction', {})).tid;
    const oid = (await rpc.call('NewOids', { count: 1 })).oids[0];
    rpc.close();

    // The follower connects to the leader first, so killing the leader breaks its stream.
    const follower = PythonClient.start(
      [leader, ...others],
      ['follow', '--from', start.toString('hex'), '--seconds', '150'],
    );
    try {
      await eventually(
        () => follower.lines.some((l) => l.event === 'subscribed'),
        30_000,
        'the python client to subscribe',
      );
      // Its stream shows on the node's zeoraft_subscribers gauge.
      await eventually(
        async () => ((await scrape(leader, 'zeoraft_subscribers')) ?? 0) >= 1,
        10_000,
        `${leader.id} zeoraft_subscribers >= 1`,
      );
      const acked: string[] = [];
      let serial: Buffer = Buffer.alloc(8);
      const PER_PHASE = 10;
      for (let i = 0; i < PER_PHASE; i++) {
        serial = await commitAnywhere(c, oid, serial, i);
        acked.push(serial.toString('hex'));
      }
      await eventually(
        () => follower.lines.some((l) => l.event === 'commit' && l.tid === acked.at(-1)),
        30_000,
        'the first commits to reach the python client',
      );

      await leader.proc.kill('SIGKILL');
      await sleep(100);
      for (let i = PER_PHASE; i < 2 * PER_PHASE; i++) {
        serial = await commitAnywhere(c, oid, serial, i);
        acked.push(serial.toString('hex'));
      }
      await eventually(
        () => follower.lines.some((l) => l.event === 'commit' && l.tid === acked.at(-1)),
        60_000,
        'the python client to receive the commits made after the failover',
      );
      await follower.stop();

      const lines = follower.lines;
      const tids = lines.filter((l) => l.event === 'commit').map((l) => l.tid as string);
      assert.deepEqual([...tids].sort(), tids, 'TIDs arrive in order');
      assert.equal(new Set(tids).size, tids.length, 'no TID twice');
      for (const t of acked) assert.ok(tids.includes(t), `acknowledged ${t} was delivered`);
      const failover = lines.find((l) => l.event === 'failover');
      assert.ok(failover, `a failover was reported: ${follower.out}`);
      assert.equal(failover.node, leader.clientAddress);
      const resumed = lines.filter(
        (l) => l.event === 'subscribed' && l.node !== leader.clientAddress,
      );
      assert.ok(resumed.length > 0, 'resubscribed on another node');
      assert.ok(
        resumed[0].from_tid >= acked[PER_PHASE - 1],
        'resumed after the last TID it received',
      );
      const afterKill = lines.filter(
        (l) => l.event === 'commit' && acked.slice(PER_PHASE).includes(l.tid),
      );
      assert.ok(afterKill.every((l) => l.node !== leader.clientAddress));
    } finally {
      await follower.stop();
      if (follower.err) process.stderr.write(follower.err.slice(-2000));
    }
  });
});
