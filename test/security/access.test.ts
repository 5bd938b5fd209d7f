/**
 * Access control over real gRPC to real node processes: security keys and roles, address
 * allow-lists, read-only nodes and storages, the ZEO listener with keys on, and the metrics and
 * logs of what was refused.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ClientStorage } from '../../src/client/client-storage';
import { ReadOnlyError } from '../../src/client/errors';
import { addKey } from '../../src/cli/keys';
import { AllowList, hashKey } from '../../src/server/security';
import { p64 } from '../../src/util/ids';
import { NodeProcess, eventually, freePort, rmDir, sleep, tmpDir } from '../harness';
import { adminCall, httpGet, rejectsWith, rpcWithKey } from './helpers';

const oid = (n: number): Buffer => p64(BigInt(n));

describe('security: allow-list matching', () => {
  it('matches IPv4 and IPv6 CIDRs, and IPv4-mapped IPv6 addresses as IPv4', () => {
    const a = new AllowList(['10.0.0.0/8', '::1', '2001:db8::/32']);
    assert.ok(a.allows('10.1.2.3'));
    assert.ok(a.allows('::ffff:10.9.9.9'));
    assert.ok(!a.allows('127.0.0.1'));
    assert.ok(a.allows('::1'));
    assert.ok(a.allows('2001:db8:1::5'));
    assert.ok(!a.allows('2001:db9::1'));
    assert.ok(!a.allows(undefined));
    assert.ok(new AllowList([]).allows('192.0.2.1'), 'an empty list allows everyone');
    assert.throws(() => new AllowList(['10.0.0.0/33']), /prefix/);
    assert.throws(() => new AllowList(['example.com']), /not an IP/);
  });

  it('stores only a SHA-256 of each key', () => {
    const dir = tmpDir('keys');
    try {
      const file = path.join(dir, 'keys.json');
      const key = addKey(file, 'read-only', ['1']);
      const text = fs.readFileSync(file, 'utf8');
      assert.ok(!text.includes(key), 'the key itself is not stored');
      assert.ok(text.includes(hashKey(key)));
      assert.ok(key.length >= 40, 'keys carry 256 random bits');
    } finally {
      rmDir(dir);
    }
  });
});

describe('security: keys and roles on a node', function () {
  let dir: string;
  let node: NodeProcess;
  let address: string;
  let httpPort: number;
  let zeoPort: number;
  const keys: Record<string, string> = {};
  let keysFile: string;

  before(async () => {
    dir = tmpDir('sec-keys');
    keysFile = path.join(dir, 'keys.json');
    keys.admin = addKey(keysFile, 'admin', ['*']);
    keys.rw = addKey(keysFile, 'read-write', ['1']);
    keys.ro = addKey(keysFile, 'read-only', ['1', 'archive']);
    keys.other = addKey(keysFile, 'read-write', ['other']);
    const [client, peer] = [await freePort(), await freePort()];
    httpPort = await freePort();
    zeoPort = await freePort();
    address = `127.0.0.1:${client}`;
    // A one-member Raft cluster, so the Admin service is there too.
    node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'n1',
      ZEORAFT_DATA_DIR: path.join(dir, 'n1'),
      ZEORAFT_LISTEN: address,
      ZEORAFT_PEER_LISTEN: `127.0.0.1:${peer}`,
      ZEORAFT_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
      ZEORAFT_ZEO_LISTEN: `127.0.0.1:${zeoPort}`,
      ZEORAFT_PEERS: `n1=127.0.0.1:${peer}=${address}`,
      ZEORAFT_STORAGES: '1,other,archive:ro',
      ZEORAFT_KEYS_FILE: keysFile,
      ZEORAFT_TICK_MS: '20',
    });
    await eventually(
      async () => (await rpcWithKey(address, keys.admin).call('Status', {})).leaderId === 'n1',
    );
  });
  after(async () => {
    await node.kill('SIGTERM');
    rmDir(dir);
  });

  it('refuses a request without a key, or with a wrong one, as UNAUTHENTICATED', async () => {
    await rejectsWith(
      rpcWithKey(address).call('Load', { oid: oid(1) }),
      grpc.status.UNAUTHENTICATED,
      /key is required/,
    );
    await rejectsWith(
      rpcWithKey(address, 'zrk_not-a-key').call('Status', {}),
      grpc.status.UNAUTHENTICATED,
      /invalid security key/,
    );
  });

  it('lets a read-write key commit and read its storage', async () => {
    const rw = rpcWithKey(address, keys.rw);
    const { tid } = await rw.call('Commit', {
      transaction: { stores: [{ oid: oid(1), data: Buffer.from('one') }] },
    });
    const l = await rw.call('Load', { oid: oid(1) });
    assert.deepEqual(l.serial, tid);
  });

  it('refuses a write with a read-only key as PERMISSION_DENIED saying so, and opens read-only', async () => {
    const ro = rpcWithKey(address, keys.ro);
    assert.deepEqual((await ro.call('Load', { oid: oid(1) })).data, Buffer.from('one'));
    const e = await rejectsWith(
      ro.call('Commit', { transaction: { stores: [{ oid: oid(2), data: Buffer.from('x') }] } }),
      grpc.status.PERMISSION_DENIED,
      /read-only: Commit is a write/,
    );
    assert.ok(e instanceof ReadOnlyError, 'a read-only refusal is a ReadOnlyError');
    for (const m of ['NewOids', 'Finish', 'Abort', 'Undo', 'Pack'] as const)
      await rejectsWith(
        ro.call(m, { transactionId: 't', tid: oid(1), packTime: 1 } as never),
        grpc.status.PERMISSION_DENIED,
        /read-only/,
      );
    const open = await ro.call('Open', { storage: '1' });
    assert.equal(open.info?.readOnly, true, 'Open with a read-only key reports read-only');
  });

  it("refuses a storage not in the key's list, naming it", async () => {
    await rejectsWith(
      rpcWithKey(address, keys.rw).call('Load', { storage: 'other', oid: oid(1) }),
      grpc.status.PERMISSION_DENIED,
      /may not use storage "other"/,
    );
    await rejectsWith(
      rpcWithKey(address, keys.other).call('Load', { oid: oid(1) }),
      grpc.status.PERMISSION_DENIED,
      /may not use storage "1"/,
    );
    await rejectsWith(
      rpcWithKey(address, keys.other).call('Load', { storage: 'other', oid: oid(1) }),
      grpc.status.NOT_FOUND,
    );
  });

  it('allows the Admin service only to admin keys', async () => {
    const none = await adminCall(address, 'Members', {});
    assert.equal(none.err?.code, grpc.status.UNAUTHENTICATED);
    const rw = await adminCall(address, 'Members', {}, keys.rw);
    assert.equal(rw.err?.code, grpc.status.PERMISSION_DENIED);
    assert.match(rw.err?.details ?? '', /needs the admin role/);
    const ok = await adminCall(address, 'Members', {}, keys.admin);
    assert.equal(ok.err, undefined, String(ok.err));
    assert.equal(ok.res.members.length, 1);
  });

  it('keeps a client with a read-only key and read-only fallback working read-only', async () => {
    const c = await ClientStorage.open({
      addresses: [address],
      credentials: { key: keys.ro },
      readOnlyFallback: true,
      timeoutMs: 3000,
      retryWindowMs: 3000,
    });
    try {
      assert.equal(c.isReadOnly, true);
      assert.deepEqual((await c.load(oid(1))).data, Buffer.from('one'));
      await assert.rejects(
        c.commit({ stores: [{ oid: oid(3), data: Buffer.from('no') }] }),
        ReadOnlyError,
      );
    } finally {
      await c.close();
    }
  });

  it('accepts a key added while the node runs', async () => {
    const fresh = addKey(keysFile, 'read-only', ['*']);
    await eventually(
      async () => (await rpcWithKey(address, fresh).call('LastTransaction', {})).tid.length === 8,
      5000,
      'the new key to be accepted',
    );
  });

  it('shows a key in Status only the storages it may use', async () => {
    const names = async (key: string): Promise<string[]> =>
      (await rpcWithKey(address, key).call('Status', {})).storages.map((s) => s.name).sort();
    assert.deepEqual(await names(keys.rw), ['1']);
    assert.deepEqual(await names(keys.other), ['other']);
    assert.deepEqual(await names(keys.admin), ['1', 'archive', 'other']);
  });

  it('ends the open Subscribe stream of a key that is revoked or loses the storage', async () => {
    const revoked = addKey(keysFile, 'read-only', ['1']);
    const narrowed = addKey(keysFile, 'read-only', ['1']);
    const open = (key: string): Promise<{ code: number; details: string; events: number }> =>
      new Promise((resolve) => {
        let events = 0;
        const s = rpcWithKey(address, key).subscribe({ progressIntervalMs: 50 });
        s.on('data', () => events++);
        s.on('error', () => undefined);
        s.on('status', (st: grpc.StatusObject) =>
          resolve({ code: st.code, details: st.details, events }),
        );
      });
    await eventually(
      async () => (await rpcWithKey(address, revoked).call('LastTransaction', {})).tid.length === 8,
      5000,
      'the new keys to be accepted',
    );
    const [a, b] = [open(revoked), open(narrowed)];
    await sleep(300);
    // Rewrite the file: one key gone, the other moved to another storage.
    const file = JSON.parse(fs.readFileSync(keysFile, 'utf8')) as {
      keys: Array<{ hash: string; storages: string[] }>;
    };
    file.keys = file.keys.filter((k) => k.hash !== hashKey(revoked));
    for (const k of file.keys) if (k.hash === hashKey(narrowed)) k.storages = ['other'];
    fs.writeFileSync(keysFile, JSON.stringify(file));
    const [ra, rb] = await Promise.all([a, b]);
    assert.equal(ra.code, grpc.status.UNAUTHENTICATED, ra.details);
    assert.match(ra.details, /revoked/);
    assert.ok(ra.events > 0, 'the stream was delivering before');
    assert.equal(rb.code, grpc.status.PERMISSION_DENIED, rb.details);
    assert.match(rb.details, /may no longer use storage "1"/);
  });

  it('does not open the ZEO listener when keys are on (ZEO clients cannot send a key)', async () => {
    const err = await new Promise<Error | undefined>((resolve) => {
      const s = net.connect(zeoPort, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(undefined);
      });
      s.once('error', resolve);
    });
    assert.ok(err, 'the ZEO port is closed');
    assert.match(node.output, /zeo: listener off/);
  });

  it('counts and logs refusals (rate-limited)', async () => {
    const m = await httpGet(httpPort, '/metrics');
    assert.match(m.body, /zeoraft_auth_failures_total\{[^}]*reason="missing_key"[^}]*\} [1-9]/);
    assert.match(m.body, /zeoraft_auth_failures_total\{[^}]*reason="read_only_key"[^}]*\} [1-9]/);
    assert.match(m.body, /zeoraft_auth_failures_total\{[^}]*reason="permission"[^}]*\} [1-9]/);
    // Five read-only refusals above, one warning line for them in the window.
    const lines = node.output.split('\n').filter((l) => l.includes('"reason":"read_only_key"'));
    assert.ok(lines.length >= 1 && lines.length < 5, `${lines.length} warnings`);
    assert.match(lines[0], /127\.0\.0\.1/);
  });
});

describe('security: address allow-lists and read-only nodes', function () {
  const dirs: string[] = [];
  const nodes: NodeProcess[] = [];
  afterEach(async () => {
    await Promise.all(nodes.splice(0).map((n) => n.kill('SIGKILL')));
    for (const d of dirs.splice(0)) rmDir(d);
  });

  async function standalone(
    env: Record<string, string>,
  ): Promise<{ address: string; http: number }> {
    const dir = tmpDir('sec-allow');
    dirs.push(dir);
    const port = await freePort();
    const http = await freePort();
    nodes.push(
      await NodeProcess.start({
        ZEORAFT_NODE_ID: 'solo',
        ZEORAFT_DATA_DIR: dir,
        ZEORAFT_LISTEN: `127.0.0.1:${port}`,
        ZEORAFT_HTTP_LISTEN: `127.0.0.1:${http}`,
        ...env,
      }),
    );
    return { address: `127.0.0.1:${port}`, http };
  }

  it('refuses a 127.0.0.1 client when only 10.0.0.0/8 is allowed', async () => {
    const n = await standalone({
      ZEORAFT_ALLOW_CLIENTS: '10.0.0.0/8',
      ZEORAFT_ALLOW_HTTP: '10.0.0.0/8,fd00::/8',
    });
    await rejectsWith(
      rpcWithKey(n.address).call('Status', {}),
      grpc.status.PERMISSION_DENIED,
      /not allowed on the client listener/,
    );
    await assert.rejects(httpGet(n.http, '/metrics'), 'the HTTP listener drops the connection');
  });

  it('accepts clients when ::1 and 127.0.0.1/32 are allowed', async () => {
    const n = await standalone({
      ZEORAFT_ALLOW_CLIENTS: '::1,127.0.0.1/32',
      ZEORAFT_ALLOW_HTTP: '127.0.0.0/8',
    });
    const s = await rpcWithKey(n.address).call('Status', {});
    assert.equal(s.nodeId, 'solo');
    const m = await httpGet(n.http, '/metrics');
    assert.equal(m.status, 200);
  });

  it('makes a read-only node refuse writes and a read-only storage refuse writes', async () => {
    const n = await standalone({ ZEORAFT_READ_ONLY: 'true', ZEORAFT_STORAGES: '1,archive:ro' });
    const rpc = rpcWithKey(n.address);
    await rejectsWith(
      rpc.call('Commit', { transaction: { stores: [{ oid: oid(1), data: Buffer.from('x') }] } }),
      grpc.status.PERMISSION_DENIED,
      /node solo is read-only/,
    );
    const open = await rpc.call('Open', { storage: '1' });
    assert.equal(open.info?.readOnly, true);
    // A client with read-only fallback works read-only against the mirror.
    const c = await ClientStorage.open({
      addresses: [n.address],
      readOnlyFallback: true,
      timeoutMs: 2000,
      retryWindowMs: 2000,
    });
    try {
      assert.equal(c.isReadOnly, true);
      await assert.rejects(
        c.commit({ stores: [{ oid: oid(1), data: Buffer.from('x') }] }),
        ReadOnlyError,
      );
    } finally {
      await c.close();
    }
    const w = await standalone({ ZEORAFT_STORAGES: '1,archive:ro' });
    const wr = rpcWithKey(w.address);
    await wr.call('Commit', { transaction: { stores: [{ oid: oid(1), data: Buffer.from('x') }] } });
    await rejectsWith(
      wr.call('Commit', {
        transaction: { storage: 'archive', stores: [{ oid: oid(1), data: Buffer.from('x') }] },
      }),
      grpc.status.PERMISSION_DENIED,
      /storage "archive" is read-only/,
    );
  });
});
