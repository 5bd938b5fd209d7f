/**
 * Snapshot install is all-or-nothing with real processes: a follower killed (SIGKILL, at each
 * durable step of the install, chosen with the test-only ZEORAFT_TEST_CRASH_AT) restarts with one
 * whole state (the one it had, or the snapshot's) and converges to the leader's state; a
 * malformed snapshot is refused and the state it would have replaced keeps serving; a full disk
 * while a snapshot arrives (ENOSPC from the kernel: the incoming file is on /dev/full) stops the
 * node in order, and once there is room it installs the snapshot; while an install runs the node
 * answers /readyz 503 saying so, and its loads never see a cleared or half-restored state.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { peerCallMetadata } from '../../src/server/peer-auth';
import { raftPackage, toProto } from '../../src/server/peer-transport';
import { MessageType } from '../../src/raft';
import { snapshotChunkCodec } from '../../src/storage/codec';
import { INSTALL_STEPS } from '../../src/storage/object-store';
import { Z64, hex, idCompare, p64 } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { TEST_CLUSTER_KEY, eventually, sleep } from '../harness/index';

const LIVENESS_MS = 20_000;
/** Objects written; each is OBJECT_BYTES, so the state spans several 1 MiB snapshot chunks. */
const OBJECTS = 40;
const OBJECT_BYTES = 64 << 10;
/** Log entries kept past a snapshot (ZEORAFT_SNAPSHOT_ENTRIES): the leader compacts quickly. */
const SNAPSHOT_ENTRIES = 20;

class Writer {
  private readonly serials = new Map<string, Buffer>();
  private n = 0;

  constructor(private readonly cluster: TestCluster) {}

  /** `count` read-modify-write commits on the leader, cycling over the objects. */
  async commit(count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const oid = p64(BigInt(1 + (this.n % OBJECTS)));
      const data = Buffer.alloc(OBJECT_BYTES, this.n % 251);
      data.write(`commit ${this.n}`);
      this.n++;
      await eventually(
        async () => {
          const leader = await this.cluster.leader(undefined, LIVENESS_MS);
          const r = await this.cluster.rpc(leader).call('Commit', {
            transaction: {
              stores: [{ oid, serial: this.serials.get(hex(oid)) ?? Z64, data }],
            },
          });
          this.serials.set(hex(oid), r.tid);
          return true;
        },
        LIVENESS_MS,
        `commit ${this.n}`,
      );
    }
  }
}

async function status(cluster: TestCluster, id: string): Promise<any> {
  return cluster.rpc(id).call('Status', {}, 2000);
}

async function readyz(cluster: TestCluster, id: string): Promise<{ code: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${cluster.member(id).http}/readyz`);
  return { code: r.status, body: await r.text() };
}

/** `id` has applied what the leader has, and its loads and its Iterate match the leader's. */
async function assertSameState(cluster: TestCluster, id: string): Promise<void> {
  const leader = await cluster.leader(undefined, LIVENESS_MS);
  const target = (await status(cluster, leader)).appliedIndex;
  await eventually(
    async () => (await status(cluster, id)).appliedIndex >= target,
    LIVENESS_MS,
    `${id} to apply up to ${target}`,
  );
  for (let i = 1; i <= OBJECTS; i++) {
    const oid = p64(BigInt(i));
    const a = await cluster.rpc(leader).call('Load', { oid });
    const b = await cluster.rpc(id).call('Load', { oid });
    assert.equal(hex(b.serial), hex(a.serial), `serial of ${hex(oid)} on ${id}`);
    assert.ok(Buffer.from(b.data).equals(Buffer.from(a.data)), `data of ${hex(oid)} on ${id}`);
  }
  const summary = (ts: any[]): string[] =>
    ts.map(
      (t) =>
        `${hex(t.tid)}:${t.records
          .map((r: any) => `${hex(r.oid)}=${Buffer.from(r.data).subarray(0, 16).toString('hex')}`)
          .join(',')}`,
    );
  const want = summary(await cluster.rpc(leader).iterate({}, 30_000));
  const got = summary(await cluster.rpc(id).iterate({}, 30_000));
  assert.equal(got.length, want.length, `transactions on ${id}`);
  assert.deepEqual(got, want);
  const r = await readyz(cluster, id);
  assert.equal(r.code, 200, `${id} /readyz: ${r.body}`);
}

describe('cluster: snapshot install is all-or-nothing', function () {
  this.timeout(600_000);
  let cluster: TestCluster;

  afterEach(async () => {
    await cluster?.stop();
  });

  it('recovers a follower killed at every step of a snapshot install to one whole state', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES) });
    const w = new Writer(cluster);
    await w.commit(OBJECTS);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    // A commit is acknowledged once a majority holds it: the victim may still be behind. A
    // rolled-back install leaves it with what it held at the kill, so it must hold everything.
    await assertSameState(cluster, victim);
    for (const step of INSTALL_STEPS) {
      await cluster.kill(victim);
      const atKill = (await status(cluster, leader)).lastTid as Buffer;
      // Enough entries for the leader to compact past everything the victim holds.
      await w.commit(4 * SNAPSHOT_ENTRIES);
      const p = cluster.spawnNode(victim, {
        ZEORAFT_TEST_CRASH_AT: `snapshot-install:${step}`,
      });
      const exit = await Promise.race([
        p.exit(),
        new Promise<never>((_, reject) =>
          setTimeout(
            () => reject(new Error(`${victim} did not reach install step ${step}: ${p.output}`)),
            LIVENESS_MS,
          ),
        ),
      ]);
      assert.equal(exit.signal, 'SIGKILL', `${victim} killed at ${step}: ${p.output}`);
      await cluster.kill(victim); // forget its client connection
      // Restarted cut off from the others, it holds one whole state: the one it had (the install
      // is rolled back) or the snapshot's (rolled forward, once the switch had begun).
      cluster.isolate(victim);
      await cluster.startNode(victim);
      const forward = INSTALL_STEPS.indexOf(step) >= INSTALL_STEPS.indexOf('switching');
      const held = (await status(cluster, victim)).lastTid as Buffer;
      assert.equal(
        idCompare(held, atKill) > 0,
        forward,
        `killed at ${step}, ${victim} restarted at ${hex(held)} (leader at its kill: ${hex(atKill)})`,
      );
      for (let i = 1; i <= OBJECTS; i++)
        await cluster.rpc(victim).call('Load', { oid: p64(BigInt(i)) }); // every object is whole
      assert.doesNotMatch(cluster.procs.get(victim)!.output, /interrupted snapshot install/);
      cluster.healAll();
      await w.commit(5);
      await assertSameState(cluster, victim);
    }
  });

  it('refuses a malformed or truncated snapshot and keeps serving the state it had', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES) });
    const w = new Writer(cluster);
    await w.commit(OBJECTS);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    await assertSameState(cluster, victim);
    const applied = (await status(cluster, victim)).appliedIndex;
    const Raft = raftPackage().zeoraft.v1.raft.Raft;
    const client = new Raft(
      `127.0.0.1:${cluster.member(victim).peer}`,
      grpc.credentials.createInsecure(),
    );
    // Sent as the leader, with the cluster's key: the install itself must refuse it.
    const clusterKey = cluster.extraEnv.ZEORAFT_CLUSTER_KEY ?? TEST_CLUSTER_KEY;
    const chunk = (keys: Buffer[], values: Buffer[], last: boolean): Buffer =>
      snapshotChunkCodec.encode({ keys, values, last });
    const global = Buffer.alloc(16);
    global.writeBigUInt64BE(BigInt(applied + 1000));
    const bad: Array<[string, Buffer[]]> = [
      ['undecodable bytes', [Buffer.from('not a snapshot chunk at all, just bytes')]],
      ['no last chunk', [chunk([Buffer.from('G')], [global], false)]],
      [
        'keys out of order',
        [chunk([Buffer.from('S\x011'), Buffer.from('G')], [Buffer.alloc(0), global], true)],
      ],
      ['a record of the wrong size', [chunk([Buffer.from('G')], [Buffer.alloc(3)], true)]],
      ['no applied index', [chunk([], [], true)]],
    ];
    try {
      for (const [what, chunks] of bad) {
        const err = await new Promise<grpc.ServiceError | null>((resolve) => {
          const call = client.Snapshot(
            peerCallMetadata(leader, clusterKey),
            { deadline: Date.now() + 10_000 },
            (e) => resolve(e),
          );
          call.write({
            message: toProto({
              type: MessageType.Snapshot,
              from: leader,
              to: victim,
              term: 1_000_000,
              logTerm: 0,
              index: 0,
              entries: [],
              commit: applied + 1000,
              reject: false,
              rejectHint: 0,
              snapshot: {
                index: applied + 1000,
                term: 1_000_000,
                conf: { voters: ['n1', 'n2', 'n3'], learners: [] },
              },
            }),
          });
          for (const c of chunks) call.write({ chunk: c });
          call.end();
        });
        assert.ok(err, `${what}: refused`);
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `${what}: ${err.details}`);
        assert.ok(cluster.procs.get(victim)!.alive, `${victim} still runs after ${what}`);
        assert.equal((await status(cluster, victim)).appliedIndex >= applied, true);
        await assertSameState(cluster, victim);
      }
    } finally {
      client.close();
    }
    await w.commit(5);
    await assertSameState(cluster, victim);
  });
  it('stops in order on a full disk while receiving a snapshot, then installs it once there is room', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES) });
    const w = new Writer(cluster);
    await w.commit(OBJECTS);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    await assertSameState(cluster, victim);
    await cluster.kill(victim);
    const atKill = (await status(cluster, leader)).lastTid as Buffer;
    // Enough entries for the leader to compact past everything the victim holds.
    await w.commit(4 * SNAPSHOT_ENTRIES);
    // Where the victim receives a snapshot (peer-snapshot.ts), every write fails with ENOSPC.
    const incoming = path.join(cluster.dataDir(victim), 'snapshot-incoming.tmp');
    fs.symlinkSync('/dev/full', incoming);
    const p = cluster.spawnNode(victim);
    const exit = await Promise.race([
      p.exit(),
      new Promise<never>((_, reject) =>
        setTimeout(
          () => reject(new Error(`${victim} kept running on a full disk: ${p.output}`)),
          LIVENESS_MS,
        ),
      ),
    ]);
    // The orderly fatal exit (code 70, the reason logged), not a crash on an unhandled error.
    assert.equal(exit.code, 70, `${victim} exit ${JSON.stringify(exit)}: ${p.output}`);
    assert.match(p.output, /ENOSPC/);
    assert.match(p.output, /raft loop failed; exiting/);
    assert.doesNotMatch(p.output, /Unhandled 'error' event|uncaught/i);
    // The disk has room again: the victim restarts with the state it had, then installs.
    fs.rmSync(incoming);
    cluster.isolate(victim);
    await cluster.startNode(victim);
    const held = (await status(cluster, victim)).lastTid as Buffer;
    assert.equal(hex(held), hex(atKill), `${victim} restarted with the state it had`);
    cluster.healAll();
    await w.commit(5);
    await assertSameState(cluster, victim);
    assert.ok(!fs.existsSync(incoming), 'the received snapshot file is removed after the install');
  });
  it('answers /readyz 503 while it installs a snapshot, and its loads never see a cleared or partial state', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES) });
    // A state of about 32 MiB, so an install spans many /readyz polls.
    const LARGE = 32;
    const large = (i: number): Buffer => Buffer.alloc(1 << 20, i);
    const leader = await cluster.leader();
    for (let i = 0; i < LARGE; i++)
      await cluster
        .rpc(leader)
        .call(
          'Commit',
          { transaction: { stores: [{ oid: p64(BigInt(1000 + i)), data: large(i) }] } },
          LIVENESS_MS,
        );
    const w = new Writer(cluster);
    await w.commit(OBJECTS);
    const victim = cluster.alive().find((id) => id !== leader) as string;
    await assertSameState(cluster, victim);
    await cluster.kill(victim);
    await w.commit(4 * SNAPSHOT_ENTRIES);
    cluster.isolate(victim);
    await cluster.startNode(victim);
    // Watch it from the moment the snapshot can arrive until it holds the leader's state.
    const reasons = new Map<string, number>();
    const loads = new Map<string, number>();
    let watching = true;
    const polls = (async () => {
      while (watching) {
        const r = await readyz(cluster, victim).catch((e: Error) => ({ code: 0, body: e.message }));
        const key = `${r.code} ${r.body.trim().replace(/[0-9]+/g, 'N')}`;
        reasons.set(key, (reasons.get(key) ?? 0) + 1);
        await sleep(5);
      }
    })();
    const reads = (async () => {
      for (let n = 0; watching; n++) {
        const i = n % LARGE;
        const got = await cluster
          .rpc(victim)
          .call('Load', { oid: p64(BigInt(1000 + i)) }, LIVENESS_MS)
          .then(
            (l) => (Buffer.from(l.data).equals(large(i)) ? 'whole' : 'changed data'),
            (e: { grpcCode?: number }) => `status ${grpc.status[e.grpcCode ?? -1] ?? 'none'}`,
          );
        loads.set(got, (loads.get(got) ?? 0) + 1);
        await sleep(5);
      }
    })();
    cluster.healAll();
    await w.commit(5);
    await assertSameState(cluster, victim);
    watching = false;
    await Promise.all([polls, reads]);
    const seen = JSON.stringify([...reasons]);
    assert.ok(reasons.has('503 not ready: installing a snapshot'), `/readyz answers: ${seen}`);
    // Loads wait for the switch (or fail UNAVAILABLE, transient, when they overlapped it): none
    // finds an object missing or changed.
    for (const k of loads.keys())
      assert.ok(
        ['whole', 'status UNAVAILABLE'].includes(k),
        `loads: ${JSON.stringify([...loads])}`,
      );
    assert.ok((loads.get('whole') ?? 0) > 0);
  });
});
