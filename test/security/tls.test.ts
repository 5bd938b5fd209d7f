/**
 * TLS over real connections: clients over TLS (and with client certificates), mutual TLS between
 * peers with a cluster CA, a peer whose certificate comes from another CA (refused: it never
 * learns of a leader), and a peer with the wrong cluster key (refused likewise).
 */
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { StorageRpc } from '../../src/client/rpc';
import { tlsEnv } from '../../src/cli/certs';
import { p64 } from '../../src/util/ids';
import { TestCluster, LinkProxy } from '../harness/cluster';
import { CLI, NodeProcess, eventually, freePort, rmDir, sleep, tmpDir } from '../harness';
import { httpGet, rejectsWith } from './helpers';

const oid = (n: number): Buffer => p64(BigInt(n));

/** A cluster whose nodes get per-node settings; does not wait for a leader (some tests expect none). */
async function cluster(envFor: (id: string) => Record<string, string>): Promise<TestCluster> {
  const c = new TestCluster();
  for (let i = 1; i <= 3; i++)
    c.members.push({
      id: `n${i}`,
      client: await freePort(),
      peer: await freePort(),
      http: await freePort(),
    });
  for (const a of c.members)
    for (const b of c.members)
      if (a !== b) c.proxies.set(`${a.id}>${b.id}`, await LinkProxy.start(b.peer));
  await Promise.all(c.members.map((m) => c.startNode(m.id, envFor(m.id))));
  return c;
}

function peerTls(dir: string, id: string): Record<string, string> {
  const e = tlsEnv(dir, id);
  return {
    ZEORAFT_PEER_TLS_CERT: e.ZEORAFT_PEER_TLS_CERT,
    ZEORAFT_PEER_TLS_KEY: e.ZEORAFT_PEER_TLS_KEY,
    ZEORAFT_PEER_TLS_CA: e.ZEORAFT_PEER_TLS_CA,
  };
}

async function leaderOf(rpc: StorageRpc): Promise<string> {
  return (await rpc.call('Status', {}, 1000)).leaderId;
}

describe('security: TLS and mutual TLS', function () {
  let dir: string;
  let certs: string;
  let foreign: string;
  let ca: Buffer;

  before(() => {
    dir = tmpDir('sec-tls');
    certs = path.join(dir, 'certs');
    foreign = path.join(dir, 'foreign');
    execFileSync(process.execPath, [CLI, 'certs', '--out', certs, '--nodes', 'n1,n2,n3']);
    execFileSync(process.execPath, [CLI, 'certs', '--out', foreign, '--nodes', 'n3']);
    ca = fs.readFileSync(path.join(certs, 'ca.crt'));
  });
  after(() => rmDir(dir));

  describe('a cluster with TLS for clients, mTLS and a cluster key between peers', () => {
    let c: TestCluster;
    const rpcs: StorageRpc[] = [];
    const tlsRpc = (id: string, creds?: grpc.ChannelCredentials): StorageRpc => {
      const r = new StorageRpc(`127.0.0.1:${c.member(id).client}`, {
        timeoutMs: 3000,
        credentials: creds ?? grpc.credentials.createSsl(ca),
      });
      rpcs.push(r);
      return r;
    };
    before(async () => {
      c = await cluster((id) => ({
        ...tlsEnv(certs, id),
        ZEORAFT_CLUSTER_KEY: 'secret-of-the-tls-test',
      }));
    });
    after(async () => {
      for (const r of rpcs) r.close();
      await c.stop();
    });

    it('forms, and serves clients that trust the CA', async () => {
      const leader = await eventually(
        async () => {
          const ls = await Promise.all(['n1', 'n2', 'n3'].map((id) => leaderOf(tlsRpc(id))));
          return ls.every((l) => l && l === ls[0]) ? ls[0] : undefined;
        },
        15_000,
        'a leader over mTLS',
      );
      assert.ok(leader);
      // A write through a follower is forwarded to the leader over mTLS.
      const follower = ['n1', 'n2', 'n3'].find((id) => id !== leader)!;
      const { tid } = await tlsRpc(follower).call('Commit', {
        transaction: { stores: [{ oid: oid(1), data: Buffer.from('over tls') }] },
      });
      const l = await tlsRpc(leader).call('Load', { oid: oid(1), seenTid: tid });
      assert.deepEqual(l.data, Buffer.from('over tls'));
    });

    it('refuses plaintext clients and clients that trust another CA', async () => {
      await rejectsWith(
        tlsRpc('n1', grpc.credentials.createInsecure()).call('Status', {}, 1500),
        grpc.status.UNAVAILABLE,
      );
      const other = fs.readFileSync(path.join(foreign, 'ca.crt'));
      await rejectsWith(
        tlsRpc('n1', grpc.credentials.createSsl(other)).call('Status', {}, 1500),
        grpc.status.UNAVAILABLE,
      );
    });
  });

  it('requires client certificates signed by the CA when client auth is on', async () => {
    const d = tmpDir('sec-tls-solo');
    const port = await freePort();
    const node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'solo',
      ZEORAFT_DATA_DIR: d,
      ZEORAFT_LISTEN: `127.0.0.1:${port}`,
      ...tlsEnv(certs, 'n1'),
      ZEORAFT_TLS_CLIENT_AUTH: 'true',
    });
    const rpcs: StorageRpc[] = [];
    const mk = (creds: grpc.ChannelCredentials): StorageRpc => {
      const r = new StorageRpc(`127.0.0.1:${port}`, { timeoutMs: 2000, credentials: creds });
      rpcs.push(r);
      return r;
    };
    try {
      await rejectsWith(
        mk(grpc.credentials.createSsl(ca)).call('Status', {}),
        grpc.status.UNAVAILABLE,
      );
      const f = (n: string): Buffer => fs.readFileSync(path.join(foreign, n));
      await rejectsWith(
        mk(grpc.credentials.createSsl(ca, f('client.key'), f('client.crt'))).call('Status', {}),
        grpc.status.UNAVAILABLE,
      );
      const g = (n: string): Buffer => fs.readFileSync(path.join(certs, n));
      const ok = await mk(grpc.credentials.createSsl(ca, g('client.key'), g('client.crt'))).call(
        'Status',
        {},
      );
      assert.equal(ok.nodeId, 'solo');
    } finally {
      for (const r of rpcs) r.close();
      await node.kill('SIGKILL');
      rmDir(d);
    }
  });

  async function twoAgainstOne(
    envFor: (id: string) => Record<string, string>,
  ): Promise<{ c: TestCluster; leader: string }> {
    const c = await cluster(envFor);
    const leader = await c.leader(['n1', 'n2'], 15_000);
    // Well past several election timeouts (10 ticks of 50 ms): n3 has heard from nobody.
    await sleep(1500);
    const s3 = await c.rpc('n3').call('Status', {});
    assert.equal(s3.leaderId, '', `n3 must not know a leader, it says ${s3.leaderId}`);
    assert.ok(['n1', 'n2'].includes(leader));
    return { c, leader };
  }

  it('refuses a peer whose certificate comes from another CA, both ways: it never learns of a leader', async () => {
    const { c, leader } = await twoAgainstOne((id) => peerTls(id === 'n3' ? foreign : certs, id));
    try {
      const { tid } = await c.rpc('n1').call('Commit', {
        transaction: { stores: [{ oid: oid(2), data: Buffer.from('two of three') }] },
      });
      assert.equal(tid.length, 8, 'the two good nodes still commit');
      // The leader refused n3's connections, and n3 the leader's (its heartbeats), in the handshake.
      for (const id of [leader, 'n3']) {
        const m = await httpGet(c.member(id).http, '/metrics');
        assert.match(
          m.body,
          /zeoraft_auth_failures_total\{[^}]*reason="peer_tls"[^}]*\} [1-9]/,
          `${id} counted refused handshakes`,
        );
      }
    } finally {
      await c.stop();
    }
  });

  it('refuses a peer with the wrong cluster key, both ways, and counts it', async () => {
    const { c, leader } = await twoAgainstOne((id) => ({
      ZEORAFT_CLUSTER_KEY: id === 'n3' ? 'the-wrong-cluster-key' : 'the-right-cluster-key',
    }));
    try {
      // The leader refused n3's hellos (its votes), and n3 the leader's (its heartbeats).
      for (const id of [leader, 'n3']) {
        const m = await httpGet(c.member(id).http, '/metrics');
        assert.match(
          m.body,
          /zeoraft_auth_failures_total\{[^}]*reason="cluster_key"[^}]*\} [1-9]/,
          `${id} counted refusals`,
        );
      }
    } finally {
      await c.stop();
    }
  });
});
