/**
 * The Raft peer port under attack, against real three-node clusters. With the default settings
 * (a cluster key, as `zeoraft cluster` and the compose file set up) a process that merely reaches
 * the peer port is refused for every forged message: a crafted Snapshot, a forged Append or
 * AppendResp, TimeoutNow from the leader's id, heartbeats with a huge term, a forwarded commit or
 * member record. A holder of the key (a member) can speak only for itself, and the leader checks
 * forwarded commands as it checks a client's own request. With peer mutual TLS a client
 * certificate is refused and a node certificate speaks only for its node. Only with
 * `--insecure-peers` do the forged messages get through, and the node says so at every start.
 * A member refuses to start without peer authentication, and `zeoraft cluster` makes a key that
 * survives restarts.
 */
import * as assert from 'node:assert/strict';
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { StorageRpc } from '../../src/client/rpc';
import { tlsEnv } from '../../src/cli/certs';
import type { RaftClient } from '../../src/generated/zeoraft/v1/raft/Raft';
import type { ForwardRequest } from '../../src/generated/zeoraft/v1/raft/ForwardRequest';
import type { Message as PMessage } from '../../src/generated/zeoraft/v1/raft/Message';
import { MessageType } from '../../src/raft';
import { commandCodec } from '../../src/storage/codec';
import { VOTE_RENEW_MAX_MS } from '../../src/storage/object-store';
import { PEER_ID_METADATA, peerCallMetadata } from '../../src/server/peer-auth';
import { raftPackage } from '../../src/server/peer-transport';
import { FRAME_BYTES_MAX, FrameKind, FrameReader, STREAM_ALPN } from '../../src/server/peer-wire';
import { Z64, p64 } from '../../src/util/ids';
import { LinkProxy, TestCluster } from '../harness/cluster';
import {
  CLI,
  NodeProcess,
  TEST_CLUSTER_KEY,
  eventually,
  freePort,
  rmDir,
  sleep,
  tmpDir,
} from '../harness';
import { addKey } from '../../src/cli/keys';
import { StreamTarget, adminCall, httpGet, raftStream, rpcWithKey } from './helpers';

const oid = (n: number): Buffer => p64(BigInt(n));
/** The term forged messages claim: far above anything a test cluster reaches on its own. */
const FORGED_TERM = 1_000_000;

/** A cluster whose nodes get per-node settings (and no wait for a leader). */
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
  try {
    await Promise.all(c.members.map((m) => c.startNode(m.id, envFor(m.id))));
  } catch (e) {
    await c.stop();
    throw e;
  }
  return c;
}

function raftClient(port: number, creds = grpc.credentials.createInsecure()): RaftClient {
  const Raft = raftPackage().zeoraft.v1.raft.Raft;
  return new Raft(`127.0.0.1:${port}`, creds);
}

interface Answer {
  code: grpc.status;
  details: string;
}

const answer = (err: grpc.ServiceError | null): Answer =>
  err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: '' };

/** Send envelopes on a Raft stream and wait for the receiver's answer. */
const stream = raftStream;

function forward(c: RaftClient, md: grpc.Metadata, req: ForwardRequest): Promise<Answer> {
  return new Promise((resolve) =>
    c.Forward(req, md, { deadline: Date.now() + 5000 }, (err) => resolve(answer(err))),
  );
}

/** A crafted snapshot: a Snapshot message far ahead of the cluster, and one chunk of junk. */
function snapshot(c: RaftClient, md: grpc.Metadata, from: string, to: string): Promise<Answer> {
  return new Promise((resolve) => {
    const call = c.Snapshot(md, { deadline: Date.now() + 5000 }, (err) => resolve(answer(err)));
    call.on('error', () => undefined);
    call.write({
      message: msg(MessageType.Snapshot, from, to, 1000, {
        snapshot: { index: 1_000_000, term: 1000, conf: { voters: [from], learners: [] } },
      }),
    });
    call.write({ chunk: Buffer.from('not a snapshot chunk') });
    call.end();
  });
}

function msg(
  type: MessageType,
  from: string,
  to: string,
  term: number,
  extra: Partial<PMessage> = {},
): PMessage {
  return { type, from, to, term, logTerm: 0, index: 0, entries: [], commit: 0, ...extra };
}

const noCredentials = (id: string): grpc.Metadata => {
  const md = new grpc.Metadata();
  md.set(PEER_ID_METADATA, id);
  return md;
};

const commitCommand = (storage: string, n: number, data: string): Buffer =>
  commandCodec.encode({
    commit: {
      tid: Z64,
      txn: { storage, stores: [{ oid: oid(n), serial: Z64, data: Buffer.from(data) }] },
    },
  });

const memberCommand = (): Buffer =>
  commandCodec.encode({
    member: { id: 'n9', peerAddress: '127.0.0.1:1', clientAddress: '127.0.0.1:2' },
  });

async function term(c: TestCluster, id: string): Promise<number> {
  return (await c.rpc(id).call('Status', {}, 2000)).term;
}

describe('security: the peer port', function () {
  this.timeout(120_000);

  describe('with the default settings (a cluster key)', () => {
    let c: TestCluster;
    let leader: string;
    let follower: string;
    let other: string;
    const clients: RaftClient[] = [];
    const peer = (id: string): RaftClient => {
      const r = raftClient(c.member(id).peer);
      clients.push(r);
      return r;
    };
    const port = (id: string): StreamTarget => ({ port: c.member(id).peer, id });

    before(async () => {
      // The harness gives every member the run's cluster key, as `zeoraft cluster` would.
      c = await TestCluster.start(3, { ZEORAFT_STORAGES: '1,archive:ro' });
      leader = await c.leader();
      [follower, other] = c.members.map((m) => m.id).filter((id) => id !== leader);
      await c.rpc(leader).call('Commit', {
        transaction: { stores: [{ oid: oid(1), data: Buffer.from('before the attack') }] },
      });
    });
    after(async () => {
      for (const r of clients) r.close();
      await c?.stop();
    });

    it('refuses every forged message from a process without the key, and changes nothing', async () => {
      const termsBefore = await Promise.all(c.members.map((m) => term(c, m.id)));
      const attacks: Array<[string, Promise<Answer>]> = [
        [
          'heartbeats with a huge term',
          stream(port(follower), noCredentials(leader), [
            { from: leader, messages: [msg(MessageType.Heartbeat, leader, follower, FORGED_TERM)] },
          ]),
        ],
        [
          'a forged Append',
          stream(port(follower), noCredentials(leader), [
            {
              from: leader,
              messages: [
                msg(MessageType.Append, leader, follower, termsBefore[0], {
                  index: 1,
                  logTerm: 1,
                  entries: [{ index: 2, term: termsBefore[0], type: 0, data: Buffer.alloc(0) }],
                }),
              ],
            },
          ]),
        ],
        [
          'a forged AppendResp',
          stream(port(leader), noCredentials(follower), [
            {
              from: follower,
              messages: [
                msg(MessageType.AppendResp, follower, leader, termsBefore[0], { index: 1e6 }),
              ],
            },
          ]),
        ],
        [
          "TimeoutNow from the leader's id",
          stream(port(follower), noCredentials(leader), [
            {
              from: leader,
              messages: [msg(MessageType.TimeoutNow, leader, follower, FORGED_TERM)],
            },
          ]),
        ],
        ['a crafted Snapshot', snapshot(peer(follower), noCredentials(leader), leader, follower)],
        [
          'a forwarded commit',
          forward(peer(leader), noCredentials(follower), {
            command: commitCommand('1', 1, 'forged'),
            from: follower,
          }),
        ],
        [
          'a forwarded member record',
          forward(peer(leader), noCredentials(follower), {
            command: memberCommand(),
            from: follower,
            caller: { node: true },
          }),
        ],
        [
          'a token made with another key',
          stream(port(follower), peerCallMetadata(leader, 'another-key-of-32-characters-xx'), [
            { from: leader, messages: [msg(MessageType.Heartbeat, leader, follower, FORGED_TERM)] },
          ]),
        ],
      ];
      for (const [what, p] of attacks) {
        const a = await p;
        assert.equal(a.code, grpc.status.UNAUTHENTICATED, `${what}: ${a.details}`);
      }
      // Nothing moved: no node took the forged term (a loaded machine may hold an election of
      // its own, at term + 1), and the data is as it was.
      await sleep(500);
      const termsAfter = await Promise.all(c.members.map((m) => term(c, m.id)));
      for (const t of termsAfter) assert.ok(t < FORGED_TERM, `a node took the forged term: ${t}`);
      for (const m of c.members) {
        const l = await c.rpc(m.id).call('Load', { oid: oid(1) });
        assert.deepEqual(l.data, Buffer.from('before the attack'), `${m.id} kept its data`);
      }
      const metrics = await httpGet(c.member(follower).http, '/metrics');
      assert.match(
        metrics.body,
        /zeoraft_auth_failures_total\{[^}]*reason="cluster_key"[^}]*\} [1-9]/,
      );
    });

    it('lets a member speak only for itself: a message from another id is refused', async () => {
      // A holder of the key, authenticated as `other`, forging messages of the leader.
      const md = (): grpc.Metadata => peerCallMetadata(other, TEST_CLUSTER_KEY);
      const forged = await stream(port(follower), md(), [
        { from: other, messages: [msg(MessageType.Heartbeat, leader, follower, FORGED_TERM)] },
      ]);
      assert.equal(forged.code, grpc.status.PERMISSION_DENIED, forged.details);
      assert.match(forged.details, /authenticated as node/);
      const envelope = await stream(port(follower), md(), [{ from: leader, messages: [] }]);
      assert.equal(envelope.code, grpc.status.PERMISSION_DENIED, envelope.details);
      const misrouted = await stream(port(follower), md(), [
        { from: other, messages: [msg(MessageType.Heartbeat, other, leader, 0)] },
      ]);
      assert.equal(misrouted.code, grpc.status.PERMISSION_DENIED, misrouted.details);
      assert.match(misrouted.details, /addressed to/);
      const snap = await snapshot(peer(follower), md(), leader, follower);
      assert.equal(snap.code, grpc.status.PERMISSION_DENIED, snap.details);
      const fwd = await forward(peer(leader), md(), {
        command: commitCommand('1', 2, 'x'),
        from: follower,
      });
      assert.equal(fwd.code, grpc.status.PERMISSION_DENIED, fwd.details);
      // Its own empty envelope is fine: the refusals above are about the sender, not the key.
      const own = await stream(port(follower), md(), [{ from: other, messages: [] }]);
      assert.equal(own.code, grpc.status.OK, own.details);
      assert.ok((await term(c, follower)) < FORGED_TERM, 'the forged term was not taken');
    });

    it('checks forwarded commands on the leader as it checks a client request', async () => {
      const md = (): grpc.Metadata => peerCallMetadata(follower, TEST_CLUSTER_KEY);
      const ro = await forward(peer(leader), md(), {
        command: commitCommand('archive', 3, 'into a read-only storage'),
        from: follower,
      });
      assert.equal(ro.code, grpc.status.PERMISSION_DENIED, ro.details);
      assert.match(ro.details, /storage "archive" is read-only/);
      const member = await forward(peer(leader), md(), {
        command: memberCommand(),
        from: follower,
      });
      assert.equal(member.code, grpc.status.PERMISSION_DENIED, member.details);
      assert.match(member.details, /member command is proposed only by a node itself/);
      const readOnlyKey = await forward(peer(leader), md(), {
        command: commitCommand('1', 3, 'with a read-only key'),
        from: follower,
        caller: { key: { id: 'k1', role: 'read-only', storages: ['*'] } },
      });
      assert.equal(readOnlyKey.code, grpc.status.PERMISSION_DENIED, readOnlyKey.details);
      const otherStorage = await forward(peer(leader), md(), {
        command: commitCommand('1', 3, 'with a key for another storage'),
        from: follower,
        caller: { key: { id: 'k2', role: 'read-write', storages: ['archive'] } },
      });
      assert.equal(otherStorage.code, grpc.status.PERMISSION_DENIED, otherStorage.details);
      // A member's forward of an allowed write goes through (to whichever node leads now).
      const ok = await eventually(
        async () => {
          const a = await forward(peer(await c.leader()), md(), {
            command: commitCommand('1', 3, 'forwarded'),
            from: follower,
            caller: { key: { id: 'k3', role: 'read-write', storages: ['1'] } },
          });
          return a.code === grpc.status.UNAVAILABLE ? undefined : a;
        },
        15_000,
        'a forward the leader answers',
      );
      assert.equal(ok.code, grpc.status.OK, ok.details);
      const now = await c.leader();
      const l = await c.rpc(now).call('Load', { oid: oid(3) });
      assert.deepEqual(l.data, Buffer.from('forwarded'));
      const a = await c
        .rpc(now)
        .call('Load', { storage: 'archive', oid: oid(3) })
        .catch((e: Error) => e);
      assert.ok(a instanceof Error, 'nothing was written into the read-only storage');
      const metrics = (await httpGet(c.member(leader).http, '/metrics')).body;
      assert.match(
        metrics,
        /zeoraft_auth_failures_total\{[^}]*reason="forward_read_only"[^}]*\} [1-9]/,
      );
      assert.match(
        metrics,
        /zeoraft_auth_failures_total\{[^}]*reason="forward_permission"[^}]*\} [1-9]/,
      );
    });

    it("refuses a forwarded vote, renew, finish or abort of another owner's transaction", async () => {
      const md = (): grpc.Metadata => peerCallMetadata(follower, TEST_CLUSTER_KEY);
      const k1 = { key: { id: 'k1', role: 'read-write', storages: ['*'] } };
      const to = await c.leader();
      // A client without a key votes "victim": its id is "-/victim" in the replicated commands.
      await c.rpc(to).call('Vote', {
        transactionId: 'victim',
        transaction: { stores: [{ oid: oid(20), data: Buffer.from('the victim') }] },
      });
      const cmds: Array<[string, Buffer, ForwardRequest['caller']]> = [
        [
          'an abort of the anonymous vote for key k1',
          commandCodec.encode({ abort: { storage: '1', txnId: '-/victim', reason: 'client' } }),
          k1,
        ],
        [
          'a finish of the anonymous vote for key k1',
          commandCodec.encode({ finish: { storage: '1', txnId: '-/victim', tid: Z64 } }),
          k1,
        ],
        [
          'a renew of the anonymous vote for key k1',
          commandCodec.encode({ renew: { storage: '1', txnId: '-/victim', leaseMs: 60_000 } }),
          k1,
        ],
        [
          "a vote under key k2's id for key k1",
          commandCodec.encode({
            prepare: {
              txnId: '"k2"/t',
              txn: {
                storage: '1',
                stores: [{ oid: oid(21), serial: Z64, data: Buffer.from('x') }],
              },
              deadlineMs: Date.now() + 30_000,
            },
          }),
          k1,
        ],
        [
          "an abort of key k1's id for a client without a key",
          commandCodec.encode({ abort: { storage: '1', txnId: '"k1"/t', reason: 'client' } }),
          {},
        ],
      ];
      for (const [what, command, caller] of cmds) {
        const a = await forward(peer(to), md(), { command, from: follower, caller });
        assert.equal(a.code, grpc.status.PERMISSION_DENIED, `${what}: ${a.details}`);
        assert.match(a.details, /does not belong to/, what);
      }
      // The victim's vote is intact: its owner finishes it.
      const { tid } = await c.rpc(to).call('Finish', { transactionId: 'victim' });
      assert.equal(tid.length, 8);
      const l = await c.rpc(to).call('Load', { oid: oid(20) });
      assert.deepEqual(l.data, Buffer.from('the victim'));
      // A forward of k1's own vote and its abort, in k1's scope, goes through.
      for (const command of [
        commandCodec.encode({
          prepare: {
            txnId: '"k1"/own',
            txn: { storage: '1', stores: [{ oid: oid(22), serial: Z64, data: Buffer.from('y') }] },
            deadlineMs: Date.now() + 30_000,
          },
        }),
        commandCodec.encode({ abort: { storage: '1', txnId: '"k1"/own', reason: 'client' } }),
      ]) {
        const a = await forward(peer(to), md(), { command, from: follower, caller: k1 });
        assert.equal(a.code, grpc.status.OK, a.details);
      }
    });
  });

  it("refuses a client's write that a follower with other settings forwards into the leader's read-only storage", async () => {
    // n3 believes "archive" is writable; n1 and n2 have it read-only. Writes through n3 go to the
    // leader, which refuses them on its own settings.
    const c = await cluster((id) => ({
      ZEORAFT_STORAGES: id === 'n3' ? '1,archive' : '1,archive:ro',
    }));
    try {
      let leader = await c.leader();
      if (leader === 'n3') {
        await c.kill('n3', 'SIGTERM'); // hands leadership to n1 or n2
        await c.startNode('n3', { ZEORAFT_STORAGES: '1,archive' });
        leader = await c.leader();
      }
      assert.notEqual(leader, 'n3');
      await assert.rejects(
        c.rpc('n3').call('Commit', {
          transaction: { storage: 'archive', stores: [{ oid: oid(1), data: Buffer.from('x') }] },
        }),
        /storage "archive" is read-only/,
      );
      const { tid } = await c.rpc('n3').call('Commit', {
        transaction: { storage: '1', stores: [{ oid: oid(1), data: Buffer.from('fine') }] },
      });
      assert.equal(tid.length, 8);
    } finally {
      await c.stop();
    }
  });

  it('refuses a removed member for good: its stream, its calls and its id, while the rest commit', async () => {
    const c = await TestCluster.start(3);
    const clients: RaftClient[] = [];
    try {
      const leader = await c.leader();
      const [gone, stays] = c.members.map((m) => m.id).filter((id) => id !== leader);
      const admin = `127.0.0.1:${c.member(leader).client}`;
      const removed = await adminCall(admin, 'RemoveMember', { id: gone }, TEST_CLUSTER_KEY);
      assert.equal(removed.err, undefined, removed.err?.details);
      // The removal is a membership change: every remaining member applies its tombstone.
      const md = (): grpc.Metadata => peerCallMetadata(gone, TEST_CLUSTER_KEY);
      for (const id of [leader, stays])
        await eventually(
          async () => {
            const a = await stream({ port: c.member(id).peer, id }, md(), [
              { from: gone, messages: [msg(MessageType.Heartbeat, gone, id, FORGED_TERM)] },
            ]);
            return a.code === grpc.status.PERMISSION_DENIED && /was removed/.test(a.details);
          },
          20_000,
          `${id} to refuse the removed ${gone}'s Raft stream`,
        );
      const r = raftClient(c.member(leader).peer);
      clients.push(r);
      const fwd = await forward(r, md(), { command: commitCommand('1', 5, 'x'), from: gone });
      assert.equal(fwd.code, grpc.status.PERMISSION_DENIED, fwd.details);
      assert.match(fwd.details, /was removed/);
      const snap = await snapshot(r, md(), gone, leader);
      assert.equal(snap.code, grpc.status.PERMISSION_DENIED, snap.details);
      // Still a holder of the key: a member record (or tombstone) of its own is refused too.
      const tomb = await forward(r, peerCallMetadata(stays, TEST_CLUSTER_KEY), {
        command: commandCodec.encode({ member: { id: stays, remove: true } }),
        from: stays,
      });
      assert.equal(tomb.code, grpc.status.PERMISSION_DENIED, tomb.details);
      // The id is never used again.
      const again = await adminCall(
        admin,
        'AddMember',
        { id: gone, peerAddress: '127.0.0.1:1', clientAddress: '127.0.0.1:2' },
        TEST_CLUSTER_KEY,
      );
      assert.equal(again.err?.code, grpc.status.FAILED_PRECONDITION, again.err?.details);
      assert.ok((await term(c, leader)) < FORGED_TERM, 'the forged term was not taken');
      await c.rpc(leader).call('Commit', {
        transaction: { stores: [{ oid: oid(6), data: Buffer.from('after the removal') }] },
      });
      assert.equal(await c.leader([leader, stays]), leader);
    } finally {
      for (const r of clients) r.close();
      await c.stop();
    }
  });

  describe('with peer mutual TLS', () => {
    let dir: string;
    let certs: string;
    let c: TestCluster;
    const clients: RaftClient[] = [];
    const f = (n: string): Buffer => fs.readFileSync(path.join(certs, n));
    const peerTls = (id: string): Record<string, string> => {
      const e = tlsEnv(certs, id);
      return {
        ZEORAFT_PEER_TLS_CERT: e.ZEORAFT_PEER_TLS_CERT,
        ZEORAFT_PEER_TLS_KEY: e.ZEORAFT_PEER_TLS_KEY,
        ZEORAFT_PEER_TLS_CA: e.ZEORAFT_PEER_TLS_CA,
      };
    };
    const withCert = (id: string, name: string): RaftClient => {
      const creds = grpc.credentials.createSsl(f('ca.crt'), f(`${name}.key`), f(`${name}.crt`), {
        checkServerIdentity: () => undefined,
      });
      const r = raftClient(c.member(id).peer, creds);
      clients.push(r);
      return r;
    };
    const streamWithCert = (id: string, name: string): StreamTarget => ({
      port: c.member(id).peer,
      id,
      tls: {
        ca: f('ca.crt'),
        key: f(`${name}.key`),
        cert: f(`${name}.crt`),
        ALPNProtocols: [STREAM_ALPN],
        checkServerIdentity: () => undefined,
      },
    });

    before(async () => {
      dir = tmpDir('sec-peers-tls');
      certs = path.join(dir, 'certs');
      execFileSync(process.execPath, [CLI, 'certs', '--out', certs, '--nodes', 'n1,n2,n3']);
      c = await cluster(peerTls);
      await c.leader();
    });
    after(async () => {
      for (const r of clients) r.close();
      await c?.stop();
      rmDir(dir);
    });

    it('refuses a client certificate of the same CA on the peer port', async () => {
      const a = await stream(streamWithCert('n1', 'client'), noCredentials('n2'), [
        { from: 'n2', messages: [msg(MessageType.Heartbeat, 'n2', 'n1', FORGED_TERM)] },
      ]);
      assert.equal(a.code, grpc.status.UNAUTHENTICATED, a.details);
      assert.match(a.details, /names no ZeoRaft node/);
      const fwd = await forward(withCert('n1', 'client'), noCredentials('n2'), {
        command: commitCommand('1', 1, 'x'),
        from: 'n2',
      });
      assert.equal(fwd.code, grpc.status.UNAUTHENTICATED, fwd.details);
    });

    it('lets the certificate of node X speak only for X', async () => {
      const leader = await c.leader();
      const [x, target] = ['n1', 'n2', 'n3'].filter((id) => id !== leader);
      // X's certificate, claiming to be the leader on the call.
      const claim = await stream(streamWithCert(target, x), noCredentials(leader), [
        { from: leader, messages: [msg(MessageType.Heartbeat, leader, target, FORGED_TERM)] },
      ]);
      assert.equal(claim.code, grpc.status.UNAUTHENTICATED, claim.details);
      assert.match(claim.details, new RegExp(`names node ${x}`));
      // X's certificate and X on the call, with a message from the leader inside.
      const inside = await stream(streamWithCert(target, x), noCredentials(x), [
        { from: x, messages: [msg(MessageType.TimeoutNow, leader, target, FORGED_TERM)] },
      ]);
      assert.equal(inside.code, grpc.status.PERMISSION_DENIED, inside.details);
      const own = await stream(streamWithCert(target, x), noCredentials(x), [
        { from: x, messages: [] },
      ]);
      assert.equal(own.code, grpc.status.OK, own.details);
      assert.ok((await c.rpc(target).call('Status', {})).term < FORGED_TERM);
    });
  });

  it('talks only to a peer server whose certificate names the peer it dials', async () => {
    const d = tmpDir('sec-peers-dial');
    const certs = path.join(d, 'certs');
    execFileSync(process.execPath, [CLI, 'certs', '--out', certs, '--nodes', 'n1,n2,n3']);
    const f = (n: string): Buffer => fs.readFileSync(path.join(certs, n));
    const c = await cluster((id) => {
      const e = tlsEnv(certs, id);
      return {
        ZEORAFT_PEER_TLS_CERT: e.ZEORAFT_PEER_TLS_CERT,
        ZEORAFT_PEER_TLS_KEY: e.ZEORAFT_PEER_TLS_KEY,
        ZEORAFT_PEER_TLS_CA: e.ZEORAFT_PEER_TLS_CA,
      };
    });
    let fake: { close(): void } | undefined;
    try {
      const leader = await c.leader();
      const [victim, other] = ['n1', 'n2', 'n3'].filter((id) => id !== leader);
      await c.kill(victim);
      // A TLS server on the victim's peer port that counts the Raft envelopes the others send it.
      const serve = async (certOf: string): Promise<{ envelopes: number }> => {
        const seen = { envelopes: 0 };
        const sockets = new Set<tls.TLSSocket>();
        const server = tls.createServer(
          {
            ca: f('ca.crt'),
            cert: f(`${certOf}.crt`),
            key: f(`${certOf}.key`),
            requestCert: true,
            rejectUnauthorized: true,
            ALPNProtocols: [STREAM_ALPN, 'h2'],
          },
          (s) => {
            sockets.add(s);
            s.on('error', () => undefined);
            if (s.alpnProtocol !== STREAM_ALPN) return;
            const reader = new FrameReader(() => FRAME_BYTES_MAX);
            s.on('data', (d: Buffer) => {
              for (const fr of reader.push(d)) if (fr.kind === FrameKind.Envelope) seen.envelopes++;
            });
          },
        );
        server.on('tlsClientError', () => undefined);
        await new Promise<void>((resolve) =>
          server.listen(c.member(victim).peer, '127.0.0.1', () => resolve()),
        );
        fake = {
          close: () => {
            server.close();
            for (const s of sockets) s.destroy();
          },
        };
        return seen;
      };
      // Signed by the cluster CA, but naming another node: the leader sends it nothing.
      const impostor = await serve(other);
      for (let i = 0; i < 10; i++)
        await c.rpc(leader).call('Commit', {
          transaction: { stores: [{ oid: oid(40 + i), data: Buffer.from('secret') }] },
        });
      await sleep(1500);
      assert.equal(impostor.envelopes, 0, 'nothing sent to a server that is not the peer');
      fake?.close();
      // The same place with the victim's own certificate: the leader's traffic arrives (the
      // check above can see traffic when there is some).
      const genuine = await serve(victim);
      await eventually(() => genuine.envelopes > 0, 10_000, 'traffic to the genuine certificate');
    } finally {
      fake?.close();
      await c.stop();
      rmDir(d);
    }
  });

  it('rejoins a wiped member when peers use mTLS alone and clients need keys', async () => {
    // The start-up probe has no key to present: it must still see the running cluster.
    const d = tmpDir('sec-peers-rejoin');
    const certs = path.join(d, 'certs');
    execFileSync(process.execPath, [CLI, 'certs', '--out', certs, '--nodes', 'n1,n2,n3']);
    const keysFile = path.join(d, 'keys.json');
    const key = addKey(keysFile, 'admin', ['*']);
    const env = (id: string): Record<string, string> => {
      const e = tlsEnv(certs, id);
      return {
        ZEORAFT_PEER_TLS_CERT: e.ZEORAFT_PEER_TLS_CERT,
        ZEORAFT_PEER_TLS_KEY: e.ZEORAFT_PEER_TLS_KEY,
        ZEORAFT_PEER_TLS_CA: e.ZEORAFT_PEER_TLS_CA,
        ZEORAFT_KEYS_FILE: keysFile,
      };
    };
    const c = await cluster(env);
    const rpcs: StorageRpc[] = [];
    const keyed = (id: string): StorageRpc => {
      const r = rpcWithKey(`127.0.0.1:${c.member(id).client}`, key);
      rpcs.push(r);
      return r;
    };
    const leaderOf = (): Promise<string> =>
      eventually(
        async () => {
          const ls = await Promise.all(
            c.alive().map(async (id) => (await keyed(id).call('Status', {}, 1000)).leaderId),
          );
          return ls.every((l) => l && l === ls[0]) ? ls[0] : undefined;
        },
        15_000,
        'a leader',
      );
    try {
      const leader = await leaderOf();
      await keyed(leader).call('Commit', {
        transaction: { stores: [{ oid: oid(60), data: Buffer.from('kept') }] },
      });
      const victim = ['n1', 'n2', 'n3'].find((id) => id !== leader)!;
      await c.kill(victim);
      c.wipe(victim);
      const p = await c.startNode(victim, { ...env(victim), ZEORAFT_LOG_LEVEL: 'info' });
      assert.match(p.output, /joining an existing cluster/);
      // A new entry makes the leader probe the member and find it empty (then: a snapshot).
      const next = await keyed(leader).call('Commit', {
        transaction: { stores: [{ oid: oid(61), data: Buffer.from('after') }] },
      });
      const l = await eventually(
        () => keyed(victim).call('Load', { oid: oid(60), seenTid: next.tid }, 2000),
        20_000,
        'the wiped member to catch up',
      );
      assert.deepEqual(l.data, Buffer.from('kept'));
    } finally {
      for (const r of rpcs) r.close();
      await c.stop();
      rmDir(d);
    }
  });

  describe('starting', () => {
    let dir: string;
    before(() => (dir = tmpDir('sec-peers-start')));
    after(() => rmDir(dir));

    /** Start a node that must refuse to start: its exit code and output. */
    async function startFails(env: Record<string, string>): Promise<string> {
      const [client, peerPort] = [await freePort(), await freePort()];
      const child = spawn(process.execPath, [CLI, 'server'], {
        env: {
          ...process.env,
          ZEORAFT_NODE_ID: 'n1',
          ZEORAFT_DATA_DIR: path.join(dir, `n1-${client}`),
          ZEORAFT_LISTEN: `127.0.0.1:${client}`,
          ZEORAFT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
          ZEORAFT_PEERS: `n1=127.0.0.1:${peerPort}=127.0.0.1:${client},n2=127.0.0.1:1=127.0.0.1:2`,
          ...env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      clearTimeout(t);
      assert.equal(code, 1, `the node must exit with 1:\n${out}`);
      assert.doesNotMatch(out, /zeoraft node ready/);
      return out;
    }

    it('refuses to run a cluster member without peer authentication', async () => {
      const out = await startFails({ ZEORAFT_CLUSTER_KEY: '' });
      assert.match(out, /a cluster member needs peer authentication/);
      assert.match(out, /--insecure-peers/);
    });

    it('refuses a short cluster key and a missing key file', async () => {
      assert.match(await startFails({ ZEORAFT_CLUSTER_KEY: 'short' }), /at least 16 characters/);
      assert.match(
        await startFails({ ZEORAFT_CLUSTER_KEY_FILE: path.join(dir, 'absent.key') }),
        /cannot read the cluster key file/,
      );
    });

    it('refuses a transaction timeout longer than the store renews a vote', async () => {
      assert.match(
        await startFails({
          ZEORAFT_CLUSTER_KEY: TEST_CLUSTER_KEY,
          ZEORAFT_TXN_TIMEOUT_MS: String(VOTE_RENEW_MAX_MS + 1),
        }),
        /transaction timeout must be 1\.\.600000 ms/,
      );
    });

    it('runs a standalone node (no peers) with no peer settings at all', async () => {
      const port = await freePort();
      const node = await NodeProcess.start({
        ZEORAFT_NODE_ID: 'solo',
        ZEORAFT_DATA_DIR: path.join(dir, 'solo'),
        ZEORAFT_LISTEN: `127.0.0.1:${port}`,
      });
      try {
        assert.ok(!/peers are NOT authenticated/.test(node.output));
      } finally {
        await node.kill('SIGTERM');
      }
    });

    it('runs a member with the cluster key from a file (a Docker secret)', async () => {
      const [client, peerPort] = [await freePort(), await freePort()];
      const keyFile = path.join(dir, 'cluster.key');
      const key = 'a-key-kept-in-a-file-0123456789';
      fs.writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
      const node = await NodeProcess.start({
        ZEORAFT_NODE_ID: 'n1',
        ZEORAFT_DATA_DIR: path.join(dir, 'from-file'),
        ZEORAFT_LISTEN: `127.0.0.1:${client}`,
        ZEORAFT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
        ZEORAFT_PEERS: `n1=127.0.0.1:${peerPort}=127.0.0.1:${client}`,
        ZEORAFT_CLUSTER_KEY_FILE: keyFile,
      });
      const r = { port: peerPort, id: 'n1' };
      try {
        const ok = await stream(r, peerCallMetadata('n2', key), [{ from: 'n2', messages: [] }]);
        assert.equal(ok.code, grpc.status.OK, ok.details);
        const other = await stream(r, peerCallMetadata('n2', TEST_CLUSTER_KEY), [
          { from: 'n2', messages: [] },
        ]);
        assert.equal(other.code, grpc.status.UNAUTHENTICATED, other.details);
      } finally {
        await node.kill('SIGTERM');
      }
    });

    it('refuses a peer outside the allow-list, on the Raft stream and on gRPC calls', async () => {
      const [client, peerPort] = [await freePort(), await freePort()];
      const node = await NodeProcess.start({
        ZEORAFT_NODE_ID: 'n1',
        ZEORAFT_DATA_DIR: path.join(dir, 'allow-list'),
        ZEORAFT_LISTEN: `127.0.0.1:${client}`,
        ZEORAFT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
        ZEORAFT_PEERS: `n1=127.0.0.1:${peerPort}=127.0.0.1:${client}`,
        ZEORAFT_CLUSTER_KEY: TEST_CLUSTER_KEY,
        ZEORAFT_ALLOW_PEERS: '10.0.0.0/8',
      });
      const r = raftClient(peerPort);
      try {
        const md = (): grpc.Metadata => peerCallMetadata('n2', TEST_CLUSTER_KEY);
        const s = await stream({ port: peerPort, id: 'n1' }, md(), [{ from: 'n2', messages: [] }]);
        assert.equal(s.code, grpc.status.PERMISSION_DENIED, s.details);
        assert.match(s.details, /not allowed on the peer listener/);
        const f = await forward(r, md(), { command: commitCommand('1', 1, 'x'), from: 'n2' });
        assert.equal(f.code, grpc.status.PERMISSION_DENIED, f.details);
        assert.match(f.details, /not allowed on the peer listener/);
      } finally {
        r.close();
        await node.kill('SIGTERM');
      }
    });

    it('runs a member with the --insecure-peers flag, and says so', async () => {
      const [client, peerPort] = [await freePort(), await freePort()];
      const child = spawn(process.execPath, [CLI, 'server', '--insecure-peers'], {
        env: {
          ...process.env,
          ZEORAFT_LOG_LEVEL: 'warn',
          ZEORAFT_NODE_ID: 'n1',
          ZEORAFT_DATA_DIR: path.join(dir, 'flag'),
          ZEORAFT_LISTEN: `127.0.0.1:${client}`,
          ZEORAFT_PEER_LISTEN: `127.0.0.1:${peerPort}`,
          ZEORAFT_PEERS: `n1=127.0.0.1:${peerPort}=127.0.0.1:${client}`,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise((r) => child.once('exit', r));
      try {
        await eventually(() => out.includes('zeoraft node ready'), 20_000, `the node:\n${out}`);
        assert.match(out, /peers are NOT authenticated \(--insecure-peers\)/);
      } finally {
        child.kill('SIGKILL');
        await exited;
      }
    });
  });

  describe('with --insecure-peers', () => {
    let c: TestCluster;
    const clients: RaftClient[] = [];
    before(async () => {
      c = await TestCluster.start(3, {
        ZEORAFT_INSECURE_PEERS: 'true',
        ZEORAFT_STORAGES: '1,archive:ro',
      });
    });
    after(async () => {
      for (const r of clients) r.close();
      await c?.stop();
    });

    it('warns at every start', async () => {
      for (const m of c.members)
        assert.match(c.procs.get(m.id)!.output, /peers are NOT authenticated \(--insecure-peers\)/);
      const leader = await c.leader();
      const id = c.members.map((m) => m.id).find((x) => x !== leader)!;
      await c.kill(id, 'SIGTERM');
      const again = await c.startNode(id);
      await eventually(() => /peers are NOT authenticated/.test(again.output), 5000, 'warning');
    });

    it('lets anyone who reaches the peer port forge messages and write', async () => {
      const leader = await c.leader();
      const follower = c.members.map((m) => m.id).find((x) => x !== leader)!;
      const to = (id: string): RaftClient => {
        const r = raftClient(c.member(id).peer);
        clients.push(r);
        return r;
      };
      const toStream = (id: string): StreamTarget => ({ port: c.member(id).peer, id });
      // A forged heartbeat with a huge term: the follower takes the term.
      const big = (await term(c, follower)) + 1000;
      const hb = await stream(toStream(follower), noCredentials(leader), [
        { from: leader, messages: [msg(MessageType.Heartbeat, leader, follower, big)] },
      ]);
      assert.equal(hb.code, grpc.status.OK, hb.details);
      await eventually(async () => (await term(c, follower)) >= big, 5000, 'the forged term');
      // The old leader steps down on seeing the higher term; forwards go to whoever leads next.
      await eventually(async () => (await term(c, await c.leader())) >= big, 15_000, 'a new term');
      const toLeader = (req: ForwardRequest): Promise<Answer> =>
        eventually(
          async () => {
            const a = await forward(to(await c.leader()), noCredentials('n9'), req);
            return a.code === grpc.status.UNAVAILABLE ? undefined : a;
          },
          15_000,
          'a forward the leader answers',
        );
      // A forwarded commit from nobody is written.
      const fwd = await toLeader({
        command: commitCommand('1', 7, 'written by nobody'),
        from: 'n9',
      });
      assert.equal(fwd.code, grpc.status.OK, fwd.details);
      const got = await c.rpc(await c.leader()).call('Load', { oid: oid(7) });
      assert.deepEqual(got.data, Buffer.from('written by nobody'));
      // The leader's own checks still hold: no write into a read-only storage.
      const ro = await toLeader({ command: commitCommand('archive', 7, 'x'), from: 'n9' });
      assert.equal(ro.code, grpc.status.PERMISSION_DENIED, ro.details);
      // A member record claimed as a node's own: accepted, nothing proves who sent it.
      const member = await toLeader({
        command: memberCommand(),
        from: 'n9',
        caller: { node: true },
      });
      assert.equal(member.code, grpc.status.OK, member.details);
      // TimeoutNow in the leader's name: the follower it is sent to starts an election and takes
      // over (sent again should an election of the cluster's own get in the way).
      await eventually(
        async () => {
          const now = await c.leader();
          const target = c.members.map((m) => m.id).find((x) => x !== now)!;
          const tn = await stream(toStream(target), noCredentials(now), [
            {
              from: now,
              messages: [msg(MessageType.TimeoutNow, now, target, await term(c, target))],
            },
          ]);
          assert.equal(tn.code, grpc.status.OK, tn.details);
          await sleep(1000);
          return (await c.leader()) === target;
        },
        20_000,
        'the forged transfer',
      );
    });
  });

  describe('zeoraft cluster', () => {
    let dir: string;
    let launcher: ChildProcess | undefined;
    let out = '';
    let base = 0;

    /** A base port whose 12 node ports (client, peer, http, zeo for 3 nodes) are free. */
    async function freeBase(): Promise<number> {
      for (;;) {
        const b = 20_000 + Math.floor(Math.random() * 10_000);
        const ports = [1, 2, 3].flatMap((i) => [b + i, b + 100 + i, b + 200 + i, b + 1000 + i]);
        const free = await Promise.all(
          ports.map(
            (p) =>
              new Promise<boolean>((resolve) => {
                const s = net.createServer();
                s.once('error', () => resolve(false));
                s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
              }),
          ),
        );
        if (free.every(Boolean)) return b;
      }
    }

    async function startLauncher(): Promise<void> {
      out = '';
      launcher = spawn(
        process.execPath,
        [CLI, 'cluster', '--data-dir', dir, '--base-port', String(base), '--log-level', 'warn'],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      launcher.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      launcher.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      await eventually(
        async () => {
          const views = await Promise.all(
            [1, 2, 3].map(async (i) => {
              const r = new StorageRpc(`127.0.0.1:${base + i}`, { timeoutMs: 1000 });
              try {
                return (await r.call('Status', {})).leaderId;
              } finally {
                r.close();
              }
            }),
          );
          return views[0] !== '' && views.every((v) => v === views[0]);
        },
        30_000,
        `the launched cluster to elect a leader:\n${out}`,
      );
    }

    async function stopLauncher(): Promise<void> {
      const l = launcher;
      if (!l || l.exitCode !== null || l.signalCode !== null) return;
      const exited = new Promise((r) => l.once('exit', r));
      process.kill(l.pid!, 'SIGTERM');
      await exited;
    }

    async function commitAnywhere(n: number, data: string): Promise<void> {
      await eventually(
        async () => {
          for (const i of [1, 2, 3]) {
            const r = new StorageRpc(`127.0.0.1:${base + i}`, { timeoutMs: 3000 });
            try {
              await r.call('Commit', {
                transaction: { stores: [{ oid: oid(n), data: Buffer.from(data) }] },
              });
              return true;
            } catch {
              // another node, or again
            } finally {
              r.close();
            }
          }
          return false;
        },
        20_000,
        'a commit',
      );
    }

    before(async () => {
      dir = tmpDir('sec-peers-launcher');
      base = await freeBase();
    });
    after(async () => {
      await stopLauncher();
      rmDir(dir);
    });

    it('makes a cluster key under the data directory, uses it, and reuses it after a restart', async () => {
      await startLauncher();
      const file = path.join(dir, 'cluster.key');
      const key = fs.readFileSync(file, 'utf8').trim();
      assert.match(key, /^[0-9a-f]{64}$/, 'a 256-bit random key');
      assert.equal(fs.statSync(file).mode & 0o777, 0o600);
      assert.match(out, /peers authenticate with the cluster key in .*cluster\.key \(new\)/);
      await commitAnywhere(1, 'first run');
      // The peer port refuses a caller without it.
      const a = await stream({ port: base + 101, id: 'n1' }, noCredentials('n2'), [
        { from: 'n2', messages: [] },
      ]);
      assert.equal(a.code, grpc.status.UNAUTHENTICATED, a.details);
      await stopLauncher();
      await startLauncher();
      assert.equal(fs.readFileSync(file, 'utf8').trim(), key, 'the same key after a restart');
      assert.doesNotMatch(out, /\(new\)/);
      await commitAnywhere(2, 'second run');
      const rpc = new StorageRpc(`127.0.0.1:${base + 1}`, { timeoutMs: 3000 });
      try {
        const l = await rpc.call('Load', { oid: oid(1) });
        assert.deepEqual(l.data, Buffer.from('first run'));
      } finally {
        rpc.close();
      }
    });
  });
});
