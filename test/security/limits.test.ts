/**
 * Every resource a client can make a node hold is bounded: each limit is hit by a real client
 * against a real node process, which refuses the offender with a clear error, keeps serving every
 * other client, loses nothing, and (for the memory limits) keeps its resident memory within a
 * generous bound where the same attack used to add hundreds of MiB.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { StorageRpc } from '../../src/client/rpc';
import { buildConfig } from '../../src/cli/config-source';
import { DEFAULT_LIMITS } from '../../src/server/config';
import { Z64, hex, p64 } from '../../src/util/ids';
import { NodeProcess, eventually, freePort, rmDir, sleep, tmpDir } from '../harness';
import { Disconnected, ServerError, ZeoClient } from '../zeo/zeo-client';
import { httpGet, rejectsWith } from './helpers';

const MiB = 1 << 20;
const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);

/** Resident memory of a process, in bytes (Linux). */
function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, 'VmRSS in /proc/<pid>/status');
  return Number(m[1]) * 1024;
}

/**
 * Prints a node's resident memory before a limit was hit and now (or at the peak), and returns
 * the growth: every limit below is hit with the node's RSS measured on both sides.
 */
function reportRss(what: string, pid: number, before: number, after = rssBytes(pid)): number {
  const mib = (n: number): string => (n / MiB).toFixed(1);
  console.log(`      RSS ${what}: ${mib(before)} -> ${mib(after)} MiB (${mib(after - before)})`);
  return after - before;
}

/** The value of one sample of the node's /metrics (0 when absent). */
async function metric(httpPort: number, name: string, labels = ''): Promise<number> {
  const { body } = await httpGet(httpPort, '/metrics');
  const line = body
    .split('\n')
    .find((l) => l.startsWith(`${name}{`) && l.includes(labels) && !l.startsWith('#'));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

interface Node {
  proc: NodeProcess;
  client: number;
  http: number;
  zeo: number;
  dir: string;
}

async function startNode(env: Record<string, string>): Promise<Node> {
  const n = {
    client: await freePort(),
    http: await freePort(),
    zeo: await freePort(),
    dir: tmpDir('limits'),
  };
  const proc = await NodeProcess.start({
    ZEORAFT_NODE_ID: 'n1',
    ZEORAFT_DATA_DIR: n.dir,
    ZEORAFT_LISTEN: `127.0.0.1:${n.client}`,
    ZEORAFT_HTTP_LISTEN: `127.0.0.1:${n.http}`,
    ZEORAFT_ZEO_LISTEN: `127.0.0.1:${n.zeo}`,
    ZEORAFT_FSYNC: 'false',
    ...env,
  });
  return { ...n, proc };
}

async function stopNode(n: Node | undefined): Promise<void> {
  if (!n) return;
  await n.proc.kill('SIGKILL');
  rmDir(n.dir);
}

/** Write to a raw socket until the server closes it (or all is written); never throws. */
function flood(port: number, chunks: Buffer[]): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.once('close', () => resolve());
    s.once('connect', async () => {
      for (const c of chunks) {
        if (s.destroyed) break;
        if (!s.write(c)) await new Promise((r) => s.once('drain', r).once('close', r));
      }
      s.end();
    });
  });
}

describe('resource limits of the ZEO listener', function () {
  this.timeout(60_000);
  let node: Node;
  const clients: ZeoClient[] = [];
  let handle = 1;

  before(async () => {
    node = await startNode({
      ZEORAFT_MAX_TXN_BYTES: String(4 * MiB),
      ZEORAFT_MAX_ZEO_CONNECTIONS: '20',
      ZEORAFT_IDLE_TIMEOUT_MS: '1500',
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    await stopNode(node);
  });

  async function connect(): Promise<ZeoClient> {
    const c = await ZeoClient.connect(node.zeo);
    clients.push(c);
    await c.call('register', '1', false);
    return c;
  }

  /** A client that keeps working while the limits are hit: a commit and a load. */
  async function stillServes(): Promise<void> {
    const c = await connect();
    const [oid] = (await c.call('new_oids', 1)).map(buf);
    const id = handle++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    c.oneWay('storea', oid, Z64, b('fine'), id);
    assert.deepEqual(await c.call('vote', id), []);
    const tid = buf(await c.call('tpc_finish', id));
    const r = await c.call('loadBefore', oid, p64(BigInt(`0x${hex(tid)}`) + 1n));
    assert.deepEqual(buf(r[0]), b('fine'));
    c.close();
  }

  it('refuses a large first message from its length header, before buffering it', async () => {
    const before = rssBytes(node.proc.pid);
    // 12 connections each announce a 64 MiB handshake and send 16 MiB of it.
    const header = Buffer.alloc(4);
    header.writeUInt32BE(64 * MiB);
    const body = Buffer.alloc(MiB, 1);
    await Promise.all(
      Array.from({ length: 12 }, () => flood(node.zeo, [header, ...Array(16).fill(body)])),
    );
    const growth = reportRss('ZEO pre-handshake frames', node.proc.pid, before);
    assert.ok(growth < 40 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    await stillServes();
  });

  it('enforces max_txn_bytes at each storea, so staged data stays bounded until vote', async () => {
    const c = await connect();
    const oids = (await c.call('new_oids', 100)).map(buf);
    const before = rssBytes(node.proc.pid);
    const id = handle++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    // 256 MiB offered in 1 MiB stores against a 4 MiB transaction limit (before the limit was
    // enforced at each storea, all of it stayed in memory until vote).
    const data = Buffer.alloc(MiB, 7);
    for (let i = 0; i < 256; i++) {
      c.oneWay('storea', oids[i % 100], Z64, data, id);
      if (i % 16 === 15) assert.equal(await c.call('ping'), null); // paced by the server
    }
    const growth = reportRss('ZEO staged storea bytes', node.proc.pid, before);
    const e = await c.call('vote', id).catch((x: unknown) => x);
    assert.ok(e instanceof ServerError, `vote refused, got ${String(e)}`);
    assert.match(e.message, /max_txn_bytes/);
    // What remains is garbage not yet collected, not staged data.
    assert.ok(growth < 96 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    // The same connection goes on: abort, then a transaction within the limit commits.
    assert.equal(await c.call('tpc_abort', id), null);
    const id2 = handle++;
    c.oneWay('tpc_begin', id2, b(''), b(''), {}, null, ' ');
    c.oneWay('storea', oids[0], Z64, b('small'), id2);
    assert.deepEqual(await c.call('vote', id2), []);
    assert.equal(buf(await c.call('tpc_finish', id2)).length, 8);
    assert.ok((await metric(node.http, 'zeoraft_limit_exceeded_total', 'max_txn_bytes')) >= 1);
  });

  it('counts metadata in the transaction bytes', async () => {
    const rss0 = rssBytes(node.proc.pid);
    const c = await connect();
    const [oid] = (await c.call('new_oids', 1)).map(buf);
    const id = handle++;
    // The extension dict alone is over the 4 MiB transaction limit.
    c.oneWay('tpc_begin', id, b(''), b(''), { blob: Buffer.alloc(5 * MiB, 1) }, null, ' ');
    c.oneWay('storea', oid, Z64, b('x'), id);
    const e = await c.call('vote', id).catch((x: unknown) => x);
    assert.ok(e instanceof ServerError);
    assert.match(e.message, /max_txn_bytes/);
    reportRss('ZEO extension over max_txn_bytes', node.proc.pid, rss0);
  });

  it('caps open connections and closes idle ones', async () => {
    const rss0 = rssBytes(node.proc.pid);
    const open: ZeoClient[] = [];
    // Connections of the other tests may still be closing: fill up to the cap of 20.
    await eventually(
      async () => {
        const c = await ZeoClient.connect(node.zeo).catch(() => undefined);
        if (!c) return true;
        clients.push(c);
        await c.call('register', '1', false).catch(() => undefined);
        if (c.closed) return true;
        open.push(c);
        return false;
      },
      20_000,
      'a connection refused at the cap',
    );
    assert.ok(open.length <= 20, `${open.length} connections accepted`);
    assert.ok(
      (await metric(node.http, 'zeoraft_limit_exceeded_total', 'max_zeo_connections')) >= 1,
    );
    // Idle connections are closed (1.5 s without traffic), which frees room for new clients.
    await Promise.all(open.map((c) => c.closedPromise));
    assert.ok((await metric(node.http, 'zeoraft_limit_exceeded_total', 'idle_timeout_ms')) >= 1);
    await stillServes();
    reportRss('ZEO connection cap and idle timeout', node.proc.pid, rss0);
  });

  it('record_iternext seeks over gaps in the OID space instead of probing every OID', async () => {
    const rss0 = rssBytes(node.proc.pid);
    const c = await connect();
    const [low] = (await c.call('new_oids', 1)).map(buf);
    const far = p64(1n << 40n);
    const id = handle++;
    c.oneWay('tpc_begin', id, b(''), b(''), {}, null, ' ');
    c.oneWay('storea', low, Z64, b('low'), id);
    c.oneWay('storea', far, Z64, b('far'), id);
    assert.deepEqual(await c.call('vote', id), []);
    await c.call('tpc_finish', id);
    // 2^40 OIDs between the two: one seek finds the far object.
    const at = await c.call('record_iternext', p64(BigInt(`0x${hex(low)}`) + 1n));
    assert.deepEqual([buf(at[0]), buf(at[2]), at[3]], [far, b('far'), null]);
    const e = await c.call('record_iternext', p64((1n << 40n) + 1n)).catch((x: unknown) => x);
    assert.ok(e instanceof ServerError);
    assert.equal(e.pyClass, 'ZODB.POSException.POSKeyError');
    // A client that leaves in the middle of a call leaves nothing running.
    const d = await connect();
    void d
      .call('record_iternext', p64(2n))
      .catch((x: unknown) => assert.ok(x instanceof Disconnected));
    d.close();
    await sleep(100);
    await stillServes();
    reportRss('ZEO record_iternext over a 2^40 gap', node.proc.pid, rss0);
  });
});

describe('resource limits of the gRPC listener', function () {
  this.timeout(90_000);
  let node: Node;
  const rpcs: StorageRpc[] = [];

  before(async () => {
    node = await startNode({
      ZEORAFT_MAX_TXN_BYTES: String(4 * MiB),
      ZEORAFT_SUBSCRIBER_BUFFER_BYTES: String(4 * MiB),
      ZEORAFT_MAX_PREPARED_TXNS: '5',
      ZEORAFT_TXN_TIMEOUT_MS: '2000',
      ZEORAFT_LOCK_WAIT_MS: '500',
    });
  });
  after(async () => {
    for (const r of rpcs) r.close();
    await stopNode(node);
  });

  /** A client on its own HTTP/2 connection (channels of one process share one otherwise). */
  function client(): StorageRpc {
    const r = new StorageRpc(`127.0.0.1:${node.client}`, {
      timeoutMs: 20_000,
      channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
    });
    rpcs.push(r);
    return r;
  }

  async function newOids(rpc: StorageRpc, n: number): Promise<Buffer[]> {
    const out: Buffer[] = [];
    while (out.length < n)
      out.push(
        ...(await rpc.call('NewOids', { count: Math.min(1000, n - out.length) })).oids.map(buf),
      );
    return out;
  }

  async function commitOne(rpc: StorageRpc, data = b('ok')): Promise<Buffer> {
    const [oid] = await newOids(rpc, 1);
    const r = await rpc.call('Commit', { transaction: { stores: [{ oid, data }] } });
    assert.deepEqual(buf((await rpc.call('Load', { oid })).data), data);
    return buf(r.tid);
  }

  it('counts the extension and every metadata field in the transaction bytes', async () => {
    const rss0 = rssBytes(node.proc.pid);
    const rpc = client();
    const [oid] = await newOids(rpc, 1);
    await rejectsWith(
      rpc.call('Commit', {
        transaction: { stores: [{ oid, data: b('x') }], extension: Buffer.alloc(5 * MiB, 1) },
      }),
      grpc.status.RESOURCE_EXHAUSTED,
      /max_txn_bytes/,
    );
    await rejectsWith(
      rpc.call('Vote', {
        transactionId: 'ext-1',
        transaction: { stores: [{ oid, data: b('x') }], extension: Buffer.alloc(5 * MiB, 1) },
      }),
      grpc.status.RESOURCE_EXHAUSTED,
      /max_txn_bytes/,
    );
    await rejectsWith(rpc.call('Load', { oid }), grpc.status.NOT_FOUND);
    await commitOne(rpc);
    reportRss('gRPC extension over max_txn_bytes', node.proc.pid, rss0);
  });

  it('cuts off a subscriber that stops reading once its buffer holds too many bytes', async () => {
    const writer = client();
    const sub = client();
    const data = Buffer.alloc(MiB, 3);
    /** 64 MiB of commits, every one a commit event carrying its 1 MiB of data. */
    const commitMany = async (): Promise<Buffer[]> => {
      const oids = await newOids(writer, 64);
      for (const oid of oids)
        await writer.call('Commit', { transaction: { stores: [{ oid, data }] } });
      return oids;
    };
    // The same writes without a subscriber first: the memory they take on their own is in the
    // baseline, so what grows below is what the frozen subscriber holds.
    await commitMany();
    const before = rssBytes(node.proc.pid);
    const stream = sub.subscribe({ includeData: true, maxDataBytes: 2 * MiB });
    let error: (Error & { code?: number }) | undefined;
    stream.on('error', (e) => (error = e));
    let received = 0;
    stream.on('data', () => received++);
    // The client stops reading: HTTP/2 flow control stops the node's writes; events queue up.
    stream.pause();
    const oids = await commitMany();
    const growth = reportRss('frozen subscriber', node.proc.pid, before);
    stream.resume();
    await eventually(() => error, 20_000, 'the subscriber to be cut off');
    assert.ok(received < oids.length, `${received} events received before the cut-off`);
    assert.equal(error?.code, grpc.status.RESOURCE_EXHAUSTED, String(error));
    assert.match(String(error?.message), /subscriber_buffer_bytes.*resume from TID/);
    assert.ok(growth < 48 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    assert.ok(
      (await metric(node.http, 'zeoraft_limit_exceeded_total', 'subscriber_buffer_bytes')) >= 1,
    );
    // Nothing was lost: the writes are there and a new subscriber resumes from the start.
    assert.deepEqual(buf((await writer.call('Load', { oid: oids[63] })).data), data);
    await commitOne(writer);
  });

  it('limits voted transactions node-wide, whatever connection they come from', async () => {
    const rss0 = rssBytes(node.proc.pid);
    const voters = Array.from({ length: 6 }, () => client());
    const oids = await newOids(voters[0], 6);
    for (let i = 0; i < 5; i++)
      await voters[i].call('Vote', {
        transactionId: `lim-${i}`,
        transaction: { stores: [{ oid: oids[i], data: b(`v${i}`) }] },
      });
    await rejectsWith(
      voters[5].call('Vote', {
        transactionId: 'lim-5',
        transaction: { stores: [{ oid: oids[5], data: b('v5') }] },
      }),
      grpc.status.RESOURCE_EXHAUSTED,
      /max_prepared_txns/,
    );
    // A retried vote of a voted transaction is not one more.
    await voters[0].call('Vote', {
      transactionId: 'lim-0',
      transaction: { stores: [{ oid: oids[0], data: b('v0') }] },
    });
    // One-call commits go on, and once a vote is finished there is room again.
    await commitOne(voters[5]);
    await voters[0].call('Finish', { transactionId: 'lim-0' });
    await voters[5].call('Vote', {
      transactionId: 'lim-5',
      transaction: { stores: [{ oid: oids[5], data: b('v5') }] },
    });
    for (let i = 1; i <= 5; i++) await voters[i].call('Finish', { transactionId: `lim-${i}` });
    for (let i = 0; i < 6; i++)
      assert.deepEqual(buf((await voters[0].call('Load', { oid: oids[i] })).data), b(`v${i}`));
    reportRss('node-wide vote limit', node.proc.pid, rss0);
  });

  it('holds the locks of a vote at most one transaction timeout: an expired vote is not renewed', async () => {
    const rss0 = rssBytes(node.proc.pid);
    const holder = client();
    const other = client();
    const [oid] = await newOids(holder, 1);
    const vote = {
      transactionId: 'renew-1',
      transaction: { stores: [{ oid, data: b('held') }] },
    };
    await holder.call('Vote', vote);
    await rejectsWith(
      other.call('Commit', { transaction: { stores: [{ oid, data: b('other') }] } }),
      grpc.status.ABORTED,
      /lock/i,
    );
    // Past the 2 s timeout the node aborts the vote and the object is free again.
    await eventually(
      () =>
        other
          .call('Commit', { transaction: { stores: [{ oid, data: b('other') }] } })
          .then(() => true),
      15_000,
      'the expired vote to release its lock',
    );
    // Voting the same transaction again does not take the locks again.
    await rejectsWith(
      holder.call('Vote', vote),
      grpc.status.INVALID_ARGUMENT,
      /aborted when its vote expired/,
    );
    await rejectsWith(
      holder.call('Finish', { transactionId: 'renew-1' }),
      grpc.status.FAILED_PRECONDITION,
    );
    assert.deepEqual(buf((await other.call('Load', { oid })).data), b('other'));
    reportRss('expired vote not renewed', node.proc.pid, rss0);
  });

  it('admits transactions against a node-wide memory budget (RESOURCE_EXHAUSTED beyond it)', async () => {
    const budgeted = await startNode({ ZEORAFT_MAX_TXN_MEMORY_BYTES: String(16 * MiB) });
    try {
      const address = `127.0.0.1:${budgeted.client}`;
      const txnOf = (k: number): { stores: { oid: Buffer; data: Buffer }[] } => ({
        stores: Array.from({ length: 5_000 }, (_, i) => {
          const oid = Buffer.alloc(8);
          oid.writeUInt32BE(k + 1, 0);
          oid.writeUInt32BE(i, 4);
          return { oid, data: Buffer.alloc(100, i) };
        }),
      });
      const before = rssBytes(budgeted.proc.pid);
      let peak = before;
      const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(budgeted.proc.pid))), 20);
      // Twelve concurrent 5000-object commits (each charged ~11 MiB) from twelve connections.
      const results = await Promise.allSettled(
        Array.from({ length: 12 }, (_, k) => {
          const r = new StorageRpc(address, {
            timeoutMs: 60_000,
            channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
          });
          rpcs.push(r);
          return r.call('Commit', { transaction: txnOf(k) });
        }),
      );
      clearInterval(sampler);
      const refused = results.flatMap((r, k) =>
        r.status === 'rejected' ? [{ k, e: r.reason }] : [],
      );
      assert.ok(refused.length >= 1, 'some commits were refused at the budget');
      assert.ok(refused.length < 12, 'at least one commit was admitted');
      for (const { e } of refused) {
        assert.equal(e.grpcCode, grpc.status.RESOURCE_EXHAUSTED, String(e));
        assert.match(e.message, /max_txn_memory_bytes.*retry later/);
        assert.equal(e.detail?.transient, true);
      }
      const growth = reportRss('memory budget (peak)', budgeted.proc.pid, before, peak);
      // Unbounded, the same twelve commits added about 230 MiB at their peak (about 50 within it).
      assert.ok(growth < 120 * MiB, `RSS peak grew by ${(growth / MiB).toFixed(1)} MiB`);
      // Nothing lost: admitted commits are readable; refused ones commit when retried one by one.
      const rpc = new StorageRpc(address, { timeoutMs: 60_000 });
      rpcs.push(rpc);
      for (let k = 0; k < 12; k++) {
        if (refused.some((r) => r.k === k)) await rpc.call('Commit', { transaction: txnOf(k) });
        const { stores } = txnOf(k);
        assert.deepEqual(
          buf((await rpc.call('Load', { oid: stores[4_999].oid })).data),
          stores[4_999].data,
        );
      }
      assert.ok(
        (await metric(budgeted.http, 'zeoraft_limit_exceeded_total', 'max_txn_memory_bytes')) >= 1,
      );
      assert.equal(await metric(budgeted.http, 'zeoraft_txn_memory_bytes'), 0);
    } finally {
      await stopNode(budgeted);
    }
  });

  it('caps client connections and closes idle ones', async () => {
    const capped = await startNode({
      ZEORAFT_MAX_CLIENT_CONNECTIONS: '3',
      ZEORAFT_IDLE_TIMEOUT_MS: '1000',
    });
    try {
      const rss0 = rssBytes(capped.proc.pid);
      const connect = (): StorageRpc => {
        const r = new StorageRpc(`127.0.0.1:${capped.client}`, {
          timeoutMs: 3_000,
          channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
        });
        rpcs.push(r);
        return r;
      };
      const open = [connect(), connect(), connect()];
      // Each holds a Subscribe stream, so none of them is idle.
      const streams = open.map((r) => r.subscribe({}));
      for (const st of streams) st.on('error', () => undefined);
      for (const r of open) await r.call('LastTransaction', {});
      await eventually(
        async () => (await metric(capped.http, 'zeoraft_connections', 'client')) === 3,
        10_000,
        'three client connections',
      );
      const extra = connect();
      await rejectsWith(extra.call('LastTransaction', {}), grpc.status.UNAVAILABLE);
      assert.ok(
        (await metric(capped.http, 'zeoraft_limit_exceeded_total', 'max_client_connections')) >= 1,
      );
      // The connections that were admitted keep working.
      for (const r of open) await r.call('LastTransaction', {});
      // Without a call in progress a connection is idle: it is closed, which makes room.
      for (const st of streams) st.cancel();
      await eventually(
        async () => (await metric(capped.http, 'zeoraft_connections', 'client')) === 0,
        10_000,
        'idle connections to be closed',
      );
      // The refused client was backing off between attempts: it gets in at its next one.
      await eventually(
        () => extra.call('LastTransaction', {}).then(() => true),
        10_000,
        'the refused client to connect',
      );
      // A closed idle connection is no error for its client: it reconnects on the next call.
      await open[0].call('LastTransaction', {});
      // A socket that never speaks gRPC does not keep its place either.
      const raw = net.connect(capped.client, '127.0.0.1');
      raw.on('error', () => undefined).resume();
      await new Promise((resolve) => raw.once('close', resolve));
      reportRss('gRPC connection cap and idle timeout', capped.proc.pid, rss0);
    } finally {
      await stopNode(capped);
    }
  });
});

describe('resource limits of the peer listener', function () {
  this.timeout(60_000);

  it('caps connections and closes those that never make a call', async () => {
    const peer = await freePort();
    const client = await freePort();
    // A one-member cluster: it runs Raft and listens for peers.
    const node = await startNode({
      ZEORAFT_LISTEN: `127.0.0.1:${client}`,
      ZEORAFT_PEER_LISTEN: `127.0.0.1:${peer}`,
      ZEORAFT_PEERS: `n1=127.0.0.1:${peer}=127.0.0.1:${client}`,
      ZEORAFT_CLUSTER_KEY: 'limits-test-cluster-key',
    });
    const sockets: net.Socket[] = [];
    try {
      const node1 = node;
      const rss0 = rssBytes(node1.proc.pid);
      // 128 connections that say nothing take every place on the peer listener...
      for (let i = 0; i < 128; i++) {
        const s = net.connect(peer, '127.0.0.1');
        s.on('error', () => undefined).resume();
        sockets.push(s);
        await new Promise((resolve, reject) => s.once('connect', resolve).once('error', reject));
      }
      await eventually(
        async () => (await metric(node1.http, 'zeoraft_connections', 'peer')) === 128,
        10_000,
        '128 peer connections',
      );
      // ...so the next one is closed as it arrives...
      const extra = net.connect(peer, '127.0.0.1');
      extra.on('error', () => undefined).resume();
      await new Promise((resolve) => extra.once('close', resolve));
      assert.ok(
        (await metric(node1.http, 'zeoraft_limit_exceeded_total', 'peer_connections_max')) >= 1,
      );
      // ...and all of them are closed within 10 s, as none of them made a call.
      await Promise.all(sockets.map((s) => new Promise((resolve) => s.once('close', resolve))));
      assert.ok(
        (await metric(node1.http, 'zeoraft_limit_exceeded_total', 'first_call_timeout_ms')) >= 1,
      );
      await eventually(
        async () => (await metric(node1.http, 'zeoraft_connections', 'peer')) === 0,
        10_000,
        'the silent peer connections to be closed',
      );
      // The node was never disturbed.
      const rpc = new StorageRpc(`127.0.0.1:${client}`, { timeoutMs: 10_000 });
      try {
        await eventually(
          () => rpc.call('NewOids', { count: 1 }).then(() => true),
          20_000,
          'a write',
        );
      } finally {
        rpc.close();
      }
      reportRss('peer connection cap and first-call timeout', node1.proc.pid, rss0);
    } finally {
      for (const s of sockets) s.destroy();
      await stopNode(node);
    }
  });
});

describe('resource limits of the HTTP listener', function () {
  this.timeout(60_000);

  it('caps HTTP connections and closes those that never send a request', async () => {
    const node = await startNode({});
    const sockets: net.Socket[] = [];
    try {
      const rss0 = rssBytes(node.proc.pid);
      // 256 connections that say nothing take every place on the HTTP listener...
      for (let i = 0; i < 256; i++) {
        const s = net.connect(node.http, '127.0.0.1');
        s.on('error', () => undefined).resume();
        sockets.push(s);
        await new Promise((resolve, reject) => s.once('connect', resolve).once('error', reject));
      }
      // ...so the next one is closed as it arrives, without an answer...
      const extra = net.connect(node.http, '127.0.0.1');
      let answered = false;
      extra.on('error', () => undefined).on('data', () => (answered = true));
      extra.once('connect', () => extra.write('GET /livez HTTP/1.1\r\nHost: x\r\n\r\n'));
      await new Promise((resolve) => extra.once('close', resolve));
      assert.equal(answered, false);
      // ...and all of them are closed within the 10 s headers timeout (checked every second).
      const t0 = Date.now();
      await Promise.all(sockets.map((s) => new Promise((resolve) => s.once('close', resolve))));
      const closedAfterMs = Date.now() - t0;
      assert.ok(closedAfterMs < 20_000, `silent HTTP connections closed after ${closedAfterMs} ms`);
      console.log(`      silent HTTP connections closed ${closedAfterMs} ms after the cap was hit`);
      // The listener serves again and counted the refusal.
      const { status } = await httpGet(node.http, '/readyz');
      assert.equal(status, 200);
      assert.ok(
        (await metric(node.http, 'zeoraft_limit_exceeded_total', 'http_connections_max')) >= 1,
      );
      reportRss('HTTP connection cap and headers timeout', node.proc.pid, rss0);
    } finally {
      for (const s of sockets) s.destroy();
      await stopNode(node);
    }
  });
});

describe('limit settings', () => {
  it('a config file may set some limits (the others keep their defaults); a bad one is refused', () => {
    const dir = tmpDir('limits-config');
    try {
      const file = `${dir}/node.json`;
      fs.writeFileSync(file, JSON.stringify({ limits: { maxTxnBytes: 1000 } }));
      const c = buildConfig({ config: file }, {});
      assert.equal(c.limits.maxTxnBytes, 1000);
      assert.equal(c.limits.maxClientConnections, DEFAULT_LIMITS.maxClientConnections);
      assert.equal(c.limits.idleTimeoutMs, DEFAULT_LIMITS.idleTimeoutMs);
      const env = buildConfig({}, { ZEORAFT_MAX_TXN_MEMORY_BYTES: String(64 * MiB) });
      assert.equal(env.limits.maxTxnMemoryBytes, 64 * MiB);
      assert.throws(
        () => buildConfig({}, { ZEORAFT_MAX_CLIENT_CONNECTIONS: '0' }),
        /max-client-connections must be a positive integer/,
      );
      fs.writeFileSync(file, JSON.stringify({ limits: { idleTimeoutMs: -5 } }));
      assert.throws(
        () => buildConfig({ config: file }, {}),
        /limit idleTimeoutMs must be a positive integer/,
      );
    } finally {
      rmDir(dir);
    }
  });
});
