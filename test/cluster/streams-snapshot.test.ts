/**
 * Subscribe streams with real processes where the state under them changes wholesale: a
 * subscriber on a node that installs a Raft snapshot gets every transaction the snapshot brought
 * (or a Reset with the new position), never a silent gap; a ZEO connection there is closed so
 * its client verifies its cache; a stream from the all-zero TID gets the whole history; and a
 * slow reader does not make the node pile up listeners.
 */
import * as assert from 'node:assert/strict';
import type { SubscribeEvent__Output } from '../../src/generated/zeoraft/v1/SubscribeEvent';
import { Z64, hex, idCompare, p64 } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { eventually, freePort, sleep } from '../harness/index';
import { ZeoClient } from '../zeo/zeo-client';

const LIVENESS_MS = 20_000;
const SNAPSHOT_ENTRIES = 20;

/** Commit `count` new revisions of objects 1..objects on the leader; returns the last TID. */
async function commitMany(
  cluster: TestCluster,
  count: number,
  serials: Map<string, Buffer>,
  opts: { objects?: number; bytes?: number } = {},
): Promise<Buffer> {
  let last = Z64;
  for (let i = 0; i < count; i++) {
    const oid = p64(BigInt(1 + ((serials.size + i) % (opts.objects ?? 10))));
    const data = Buffer.alloc(opts.bytes ?? 32, i % 251);
    last = await eventually(
      async () => {
        const leader = await cluster.leader(undefined, LIVENESS_MS);
        const r = await cluster.rpc(leader).call('Commit', {
          transaction: { stores: [{ oid, serial: serials.get(hex(oid)) ?? Z64, data }] },
        });
        serials.set(hex(oid), r.tid);
        return r.tid as Buffer;
      },
      LIVENESS_MS,
      'a commit',
    );
  }
  return last;
}

class Recorder {
  readonly events: SubscribeEvent__Output[] = [];
  error: unknown;

  constructor(stream: NodeJS.EventEmitter) {
    stream.on('data', (ev: SubscribeEvent__Output) => this.events.push(ev));
    stream.on('error', (e) => (this.error = e));
  }

  commitTids(): string[] {
    return this.events.filter((e) => e.commit).map((e) => hex(e.commit!.tid));
  }

  resets(): SubscribeEvent__Output[] {
    return this.events.filter((e) => e.reset);
  }

  /** Whether a commit at or after `tid` arrived. */
  sawTid(tid: Buffer): boolean {
    return this.events.some((e) => e.commit && idCompare(e.commit.tid, tid) >= 0);
  }
}

describe('cluster: streams across a snapshot install', function () {
  this.timeout(300_000);
  let cluster: TestCluster;

  afterEach(async () => {
    await cluster?.stop();
  });

  it('a subscriber on a node that installs a snapshot receives every transaction, in order, once', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES) });
    const serials = new Map<string, Buffer>();
    await commitMany(cluster, 10, serials);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    await cluster.kill(victim);
    await commitMany(cluster, 6 * SNAPSHOT_ENTRIES, serials); // the leader compacts past it
    // Restart it cut off, so the stream is open before the snapshot arrives.
    cluster.isolate(victim);
    await cluster.startNode(victim);
    const from = (await cluster.rpc(victim).call('Status', {})).lastTid as Buffer;
    const rec = new Recorder(
      cluster.rpc(victim).subscribe({ fromTid: from, progressIntervalMs: 100 }),
    );
    await sleep(300);
    cluster.healAll();
    const last = await commitMany(cluster, 10, serials);
    await eventually(() => rec.sawTid(last), LIVENESS_MS, 'the subscriber to see the last commit');
    assert.equal(rec.error, undefined, String(rec.error));
    assert.deepEqual(rec.resets(), [], 'the whole history is kept: no Reset');
    const want = (await cluster.rpc(victim).iterate({ start: from }, 30_000))
      .map((t) => hex(t.tid))
      .filter((t) => t !== hex(from));
    const got = rec.commitTids();
    assert.ok(
      want.length >= 6 * SNAPSHOT_ENTRIES + 10,
      `${want.length} transactions after ${hex(from)}`,
    );
    assert.deepEqual(got, want, 'every transaction after the resume point, in order, once');
    const metrics = await (
      await fetch(`http://127.0.0.1:${cluster.member(victim).http}/metrics`)
    ).text();
    assert.match(metrics, /zeoraft_snapshot_received_total(\{[^}]*\})? [1-9]/);
  });

  it('a subscriber too far behind for the history window gets a Reset with the new position', async () => {
    cluster = await TestCluster.start(3, {
      ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES),
      ZEORAFT_HISTORY_MAX_TRANSACTIONS: '30',
    });
    const serials = new Map<string, Buffer>();
    await commitMany(cluster, 10, serials);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    await cluster.kill(victim);
    const snapTid = await commitMany(cluster, 6 * SNAPSHOT_ENTRIES, serials);
    cluster.isolate(victim);
    await cluster.startNode(victim);
    const rec = new Recorder(cluster.rpc(victim).subscribe({ progressIntervalMs: 100 }));
    await sleep(300);
    cluster.healAll();
    const last = await commitMany(cluster, 10, serials);
    await eventually(() => rec.sawTid(last), LIVENESS_MS, 'the subscriber to see the last commit');
    const resets = rec.resets();
    assert.equal(resets.length, 1, 'one Reset');
    assert.ok(idCompare(resets[0].reset!.tid, snapTid) >= 0, 'the Reset names the new position');
    // After the Reset: every transaction after its TID, in order.
    const after = rec.events
      .slice(rec.events.indexOf(resets[0]) + 1)
      .filter((e) => e.commit)
      .map((e) => hex(e.commit!.tid));
    const want = (await cluster.rpc(victim).iterate({ start: resets[0].reset!.tid }, 30_000))
      .map((t) => hex(t.tid))
      .filter((t) => t !== hex(resets[0].reset!.tid));
    assert.deepEqual(after, want);
  });

  it('closes ZEO connections on a node that installs a snapshot, so clients verify their caches', async () => {
    const zeoPorts = [await freePort(), await freePort(), await freePort()];
    cluster = await TestCluster.start(3, { ZEORAFT_SNAPSHOT_ENTRIES: String(SNAPSHOT_ENTRIES) });
    const serials = new Map<string, Buffer>();
    await commitMany(cluster, 10, serials);
    const leader = await cluster.leader();
    const victim = cluster.alive().find((id) => id !== leader) as string;
    const zeoPort = zeoPorts[Number(victim.slice(1)) - 1];
    await cluster.kill(victim);
    await commitMany(cluster, 6 * SNAPSHOT_ENTRIES, serials);
    cluster.isolate(victim);
    await cluster.startNode(victim, { ZEORAFT_ZEO_LISTEN: `127.0.0.1:${zeoPort}` });
    const zeo = await ZeoClient.connect(zeoPort);
    await zeo.call('register', '1', false);
    await sleep(300);
    assert.equal(zeo.closed, false, 'the registered connection stays open while nothing changes');
    cluster.healAll();
    await Promise.race([
      zeo.closedPromise,
      sleep(LIVENESS_MS).then(() => {
        throw new Error('the ZEO connection was not closed by the snapshot install');
      }),
    ]);
    const metrics = await (
      await fetch(`http://127.0.0.1:${cluster.member(victim).http}/metrics`)
    ).text();
    assert.match(metrics, /zeoraft_snapshot_received_total(\{[^}]*\})? [1-9]/);
  });
});

describe('cluster: Subscribe streams', function () {
  this.timeout(120_000);
  let cluster: TestCluster;

  afterEach(async () => {
    await cluster?.stop();
  });

  it('streams the whole history from the all-zero TID when it is all kept', async () => {
    cluster = await TestCluster.start(3);
    const serials = new Map<string, Buffer>();
    const last = await commitMany(cluster, 15, serials);
    const node = cluster.alive()[0];
    const rec = new Recorder(cluster.rpc(node).subscribe({ fromTid: Z64 }));
    await eventually(() => rec.sawTid(last), LIVENESS_MS, 'the whole history');
    assert.deepEqual(rec.resets(), []);
    const want = (await cluster.rpc(node).iterate({}, 30_000)).map((t) => hex(t.tid));
    assert.equal(want.length, 15);
    assert.deepEqual(rec.commitTids(), want);
  });

  it('a slowly reading subscriber does not add a listener per blocked write', async () => {
    cluster = await TestCluster.start(3);
    const leader = await cluster.leader();
    const serials = new Map<string, Buffer>();
    const last = await commitMany(cluster, 480, serials, { objects: 120, bytes: 48 << 10 });
    // Catching up from the beginning writes 480 events at once to a reader taking each slowly:
    // the stream's buffer fills and empties over and over (a write waits for 'drain' each time).
    const stream = cluster.rpc(leader).subscribe({ fromTid: Z64, includeData: true });
    const rec = new Recorder(stream);
    stream.on('data', () => {
      stream.pause();
      setTimeout(() => stream.resume(), 2);
    });
    await eventually(() => rec.sawTid(last), LIVENESS_MS * 3, 'every event read');
    stream.cancel();
    assert.equal(rec.commitTids().length, 480);
    const out = cluster.procs.get(leader)!.output;
    assert.doesNotMatch(out, /MaxListenersExceededWarning/, out);
  });

  it('cuts off a subscriber whose catch-up cannot keep up, with its resume point (the held-back commits are bounded)', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SUBSCRIBER_BUFFER_EVENTS: '20' });
    const leader = await cluster.leader();
    const serials = new Map<string, Buffer>();
    await commitMany(cluster, 100, serials, { objects: 100, bytes: 64 << 10 });
    // A catch-up from the beginning that nobody reads blocks on backpressure...
    const stream = cluster.rpc(leader).subscribe({ fromTid: Z64, includeData: true });
    const rec = new Recorder(stream);
    stream.pause();
    await sleep(500);
    // ...while more commits than the buffer holds arrive.
    await commitMany(cluster, 30, serials, { objects: 100 });
    stream.resume();
    await eventually(() => rec.error, LIVENESS_MS, 'the subscriber to be cut off');
    const e = rec.error as { code?: number; details?: string };
    assert.equal(e.code, 8 /* RESOURCE_EXHAUSTED */, String(rec.error));
    assert.match(e.details ?? '', /while catching up.*resume from TID [0-9a-f]{16}/);
    // Whatever it received before is in order and unique.
    const tids = rec.commitTids();
    assert.deepEqual(tids, [...new Set(tids)].sort());
  });
});
