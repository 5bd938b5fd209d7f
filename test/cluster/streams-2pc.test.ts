/**
 * Two-phase commit through the log and Subscribe streams on a real three-node cluster:
 * locks held between vote and finish/abort, voted transactions aborted at the transaction
 * timeout, a vote that survives a leader kill, every subscriber on every node receiving every
 * transaction exactly once and in order through a leader kill, and a slow subscriber cut off
 * without slowing anyone else.
 */
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { ZeoRaftError } from '../../src/client/errors';
import * as http2 from 'node:http2';
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import type { StorageRpc } from '../../src/client/rpc';
import { PROTO_DIR } from '../../src/util/proto-path';
import type { SubscribeEvent__Output } from '../../src/generated/zeoraft/v1/SubscribeEvent';
import { Z64, hex, idCompare, p64 } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { eventually, sleep } from '../harness/index';

const oid = (n: number): Buffer => p64(BigInt(n));
const LIVENESS_MS = 10_000;

async function commitOne(rpc: StorageRpc, o: Buffer, data: string): Promise<Buffer> {
  let serial = Z64;
  try {
    serial = (await rpc.call('Load', { oid: o })).serial;
  } catch (e) {
    if (!(e instanceof ZeoRaftError && e.code === 'ZEORAFT_NOT_FOUND')) throw e;
  }
  return (
    await rpc.call('Commit', {
      transaction: { stores: [{ oid: o, serial, data: Buffer.from(data) }] },
    })
  ).tid;
}

describe('cluster: two-phase commit and subscription streams', function () {
  this.timeout(120_000);
  let cluster: TestCluster;
  afterEach(async () => {
    await cluster?.stop();
  });

  it('holds locks from vote to abort, aborts a vanished client at the timeout, and finishes a vote after a leader kill', async () => {
    cluster = await TestCluster.start(3, {
      ZEORAFT_LOCK_WAIT_MS: '300',
      ZEORAFT_TXN_TIMEOUT_MS: '2000',
    });
    const leader = await cluster.leader();
    const follower = cluster.alive().find((id) => id !== leader) as string;
    const a = cluster.rpc(follower);
    const t0 = await commitOne(a, oid(1), 'v0');

    // Vote then abort: the lock blocks a competing commit until the abort releases it.
    await a.call('Vote', {
      transactionId: 'held',
      transaction: { stores: [{ oid: oid(1), serial: t0, data: Buffer.from('held') }] },
    });
    const blocked = await a
      .call('Commit', {
        transaction: { stores: [{ oid: oid(1), serial: t0, data: Buffer.from('other') }] },
      })
      .catch((e) => e);
    assert.equal((blocked as ZeoRaftError).grpcCode, grpc.status.ABORTED);
    assert.equal((blocked as ZeoRaftError).detail?.kind, 'LOCKED');
    await a.call('Abort', { transactionId: 'held' });
    const t1 = await commitOne(a, oid(1), 'after-abort');
    assert.ok(idCompare(t1, t0) > 0);

    // Vote then vanish: the leader aborts it after the transaction timeout, releasing the lock.
    await a.call('Vote', {
      transactionId: 'vanished',
      transaction: { stores: [{ oid: oid(1), serial: t1, data: Buffer.from('never') }] },
    });
    const t2 = await eventually(
      () => commitOne(a, oid(1), 'after-timeout').catch(() => undefined),
      LIVENESS_MS,
      'the timeout abort',
    );
    const late = await a.call('Finish', { transactionId: 'vanished' }).catch((e) => e);
    assert.equal(
      (late as ZeoRaftError).grpcCode,
      grpc.status.FAILED_PRECONDITION,
      'a timed-out vote cannot finish',
    );

    // Vote, kill the leader, finish on the new leader: a successful vote always finishes.
    await a.call('Vote', {
      transactionId: 'survivor',
      transaction: {
        stores: [
          { oid: oid(1), serial: t2, data: Buffer.from('survived') },
          { oid: oid(2), data: Buffer.from('new') },
        ],
      },
    });
    await cluster.kill(leader);
    const survivors = cluster.alive();
    await cluster.leader(survivors, LIVENESS_MS);
    const fin = await eventually(
      () =>
        cluster
          .rpc(survivors[0])
          .call('Finish', { transactionId: 'survivor' })
          .catch(() => undefined),
      LIVENESS_MS,
      'finish on the new leader',
    );
    for (const id of survivors) {
      const got = await cluster.rpc(id).call('Load', { oid: oid(1), seenTid: fin.tid });
      assert.deepEqual(got.data, Buffer.from('survived'));
      assert.deepEqual(got.serial, fin.tid);
    }
  });

  it('delivers every transaction exactly once and in order to subscribers on every node through a leader kill', async () => {
    cluster = await TestCluster.start(3);
    const start = (await cluster.rpc('n1').call('Sync', {})).tid;
    const received = new Map<string, Buffer[]>();
    const streams: Array<() => void> = [];
    let stopAll = false;

    // One subscriber per node; when its node dies it resumes on another from the last TID it got.
    const follow = async (name: string, home: string): Promise<void> => {
      const got: Buffer[] = [];
      received.set(name, got);
      let node = home;
      while (!stopAll) {
        const from = got.length ? got[got.length - 1] : start;
        const stream = cluster.rpc(node).subscribe({ fromTid: from, progressIntervalMs: 100 });
        streams.push(() => stream.cancel());
        try {
          for await (const ev of stream as AsyncIterable<SubscribeEvent__Output>) {
            if (stopAll) break;
            if (ev.reset) throw new Error(`unexpected reset for ${name}`);
            if (ev.commit) got.push(ev.commit.tid);
          }
        } catch (e) {
          if ((e as Error).message.startsWith('unexpected')) throw e;
        }
        stream.cancel();
        const alive = cluster.alive();
        if (!alive.includes(node)) node = alive[0];
        await sleep(50);
      }
    };
    const followers = cluster.alive().map((id) => follow(`sub-${id}`, id));
    const acked: Buffer[] = [];
    let writing = true;
    const writer = (async () => {
      let i = 0;
      while (writing) {
        const nodes = cluster.alive();
        try {
          acked.push(
            await commitOne(cluster.rpc(nodes[i % nodes.length]), oid(100 + (i % 20)), `e${i}`),
          );
        } catch {
          await sleep(50);
        }
        i++;
      }
    })();
    await eventually(() => acked.length >= 30, LIVENESS_MS, '30 commits');
    const old = await cluster.leader();
    await cluster.kill(old);
    await cluster.leader(cluster.alive(), LIVENESS_MS);
    const before = acked.length;
    await eventually(() => acked.length >= before + 30, LIVENESS_MS, '30 more commits');
    writing = false;
    await writer;
    // A linearizable point first: the node read from must hold every acknowledged commit.
    await cluster.rpc(cluster.alive()[0]).call('Sync', {}, 20_000);
    const all = (
      await cluster.rpc(cluster.alive()[0]).iterate({ start: p64(BigInt('0x' + hex(start)) + 1n) })
    ).map((t) => hex(t.tid));
    for (const a of acked)
      assert.ok(all.includes(hex(a)), `acknowledged ${hex(a)} is in the history`);
    await eventually(
      () => [...received.values()].every((g) => g.length >= all.length),
      LIVENESS_MS,
      'every subscriber to catch up',
    );
    stopAll = true;
    for (const s of streams) s();
    await Promise.all(followers);
    for (const [name, got] of received) {
      assert.deepEqual(
        got.slice(0, all.length).map(hex),
        all,
        `${name} received every transaction once, in TID order`,
      );
      assert.equal(got.length, all.length, `${name} received nothing extra`);
    }
  });

  it('cuts off a subscriber that does not read, with its resume point, without slowing the others', async () => {
    cluster = await TestCluster.start(3, { ZEORAFT_SUBSCRIBER_BUFFER_EVENTS: '20' });
    const leader = await cluster.leader();
    const rpc = cluster.rpc(leader);
    const start = (await rpc.call('Sync', {})).tid;
    // A raw HTTP/2 gRPC call whose response is never read: flow control stops the server's
    // writes to it, as with a client process that stopped reading its socket.
    const slow = rawSubscribe(cluster.member(leader).client, { fromTid: start, includeData: true });
    const fast: Buffer[] = [];
    const fastStream = rpc.subscribe({ fromTid: start });
    fastStream.on('data', (ev: SubscribeEvent__Output) => ev.commit && fast.push(ev.commit.tid));
    fastStream.on('error', () => undefined); // cancelled at the end
    const big = Buffer.alloc(16 * 1024, 7);
    const tids: Buffer[] = [];
    for (let i = 0; i < 200; i++)
      tids.push(
        (await rpc.call('Commit', { transaction: { stores: [{ oid: oid(5000 + i), data: big }] } }))
          .tid,
      );
    await eventually(
      () => fast.length >= tids.length,
      LIVENESS_MS,
      'the reading subscriber to get everything',
    );
    assert.deepEqual(fast.map(hex), tids.map(hex));
    const status = await slow.finish();
    assert.equal(status.code, grpc.status.RESOURCE_EXHAUSTED, status.message);
    assert.match(status.message, /subscriber too slow; resume from TID [0-9a-f]{16}/);
    assert.ok(
      slow.messages() < tids.length,
      'the slow subscriber was cut off before receiving everything',
    );
    fastStream.cancel();
  });
});

/**
 * A Subscribe call over a bare HTTP/2 stream that does not read its response until finish():
 * grpc-js clients buffer whatever arrives, so they cannot play a client that stopped reading.
 */
function rawSubscribe(
  port: number,
  req: object,
): { finish(): Promise<{ code: number; message: string }>; messages(): number } {
  const root = protobuf.loadSync(path.join(PROTO_DIR, 'zeoraft/v1/storage.proto'));
  const T = root.lookupType('zeoraft.v1.SubscribeRequest');
  const body = Buffer.from(T.encode(T.fromObject(req)).finish());
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  const session = http2.connect(`http://127.0.0.1:${port}`);
  const stream = session.request({
    ':method': 'POST',
    ':path': '/zeoraft.v1.Storage/Subscribe',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  stream.pause();
  stream.end(frame);
  let bytes = 0;
  let trailers: http2.IncomingHttpHeaders | undefined;
  stream.on('trailers', (t) => (trailers = t));
  return {
    messages: () => Math.floor(bytes / (16 * 1024)),
    finish: () =>
      new Promise((resolve) => {
        stream.on('data', (d: Buffer) => (bytes += d.length));
        stream.on('end', () => {
          session.close();
          resolve({
            code: Number(trailers?.['grpc-status'] ?? -1),
            message: decodeURIComponent(String(trailers?.['grpc-message'] ?? '')),
          });
        });
        stream.resume();
      }),
  };
}
