/**
 * Bad input against every Storage and Admin RPC of a live node, as raw bytes (so even invalid
 * encodings reach the server): wrong-length OIDs and TIDs, missing fields, unknown storages,
 * payloads over the message limit, invalid UTF-8, absurd counts, the transaction and
 * per-connection limits, streams cancelled mid-transaction, and a client that vanishes between
 * vote and finish (its transaction is aborted after ZEORAFT_TXN_TIMEOUT_MS).
 */
import * as assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type * as protobuf from 'protobufjs';
import { StorageRpc } from '../../src/client/rpc';
import { p64 } from '../../src/util/ids';
import { NodeProcess, eventually, freePort, rmDir, tmpDir } from '../harness';
import { RawAnswer, protoRoot, rawStream, rawUnary } from './helpers';

const S = grpc.status;
const oid = (n: number): Buffer => p64(BigInt(n));
const bytes = (n: number): Buffer => Buffer.alloc(n, 7);
/** A placeholder replaced by invalid UTF-8 of the same length once encoded. */
const BAD = 'XXXX';

const STREAMS = new Set(['Iterate', 'Subscribe', 'DownloadBlob']);
const MAX_MESSAGE_BYTES = 1 << 20;

interface Case {
  method: string;
  what: string;
  req: Record<string, unknown> | Buffer;
  codes: grpc.status[];
  message?: RegExp;
}

const storageCases: Case[] = [
  {
    method: 'Open',
    what: 'unknown storage',
    req: { storage: 'nope' },
    codes: [S.NOT_FOUND],
    message: /unknown storage "nope"/,
  },
  {
    method: 'Open',
    what: 'short last_tid',
    req: { lastTid: bytes(7) },
    codes: [S.INVALID_ARGUMENT],
    message: /last_tid/,
  },
  {
    method: 'Open',
    what: 'invalid UTF-8 client_name',
    req: { clientName: BAD },
    codes: [S.INVALID_ARGUMENT],
    message: /UTF-8/,
  },
  {
    method: 'Load',
    what: 'missing oid',
    req: {},
    codes: [S.INVALID_ARGUMENT],
    message: /oid is required/,
  },
  {
    method: 'Load',
    what: '7-byte oid',
    req: { oid: bytes(7) },
    codes: [S.INVALID_ARGUMENT],
    message: /exactly 8 bytes/,
  },
  { method: 'Load', what: '9-byte oid', req: { oid: bytes(9) }, codes: [S.INVALID_ARGUMENT] },
  {
    method: 'Load',
    what: 'unknown storage',
    req: { storage: 'nope', oid: oid(1) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'Load',
    what: 'short seen_tid',
    req: { oid: oid(1), seenTid: bytes(3) },
    codes: [S.INVALID_ARGUMENT],
  },
  { method: 'Load', what: 'unknown oid', req: { oid: oid(424242) }, codes: [S.NOT_FOUND] },
  {
    method: 'LoadBefore',
    what: 'missing before_tid',
    req: { oid: oid(1) },
    codes: [S.INVALID_ARGUMENT],
    message: /before_tid/,
  },
  {
    method: 'LoadBefore',
    what: '9-byte before_tid',
    req: { oid: oid(1), beforeTid: bytes(9) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'LoadSerial',
    what: 'missing serial',
    req: { oid: oid(1) },
    codes: [S.INVALID_ARGUMENT],
    message: /serial/,
  },
  {
    method: 'LoadSerial',
    what: '7-byte oid',
    req: { oid: bytes(7), serial: oid(1) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'History',
    what: 'negative size',
    req: { oid: oid(1), size: -1 },
    codes: [S.INVALID_ARGUMENT],
    message: /size/,
  },
  { method: 'History', what: 'missing oid', req: { size: 3 }, codes: [S.INVALID_ARGUMENT] },
  {
    method: 'LastTransaction',
    what: 'unknown storage',
    req: { storage: 'nope' },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'LastTransaction',
    what: 'invalid UTF-8 storage',
    req: { storage: BAD },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'NewOids',
    what: 'negative count',
    req: { count: -1 },
    codes: [S.INVALID_ARGUMENT],
    message: /count/,
  },
  {
    method: 'NewOids',
    what: 'read-only storage',
    req: { storage: 'archive' },
    codes: [S.PERMISSION_DENIED],
    message: /read-only/,
  },
  { method: 'NewOids', what: 'unknown storage', req: { storage: 'nope' }, codes: [S.NOT_FOUND] },
  {
    method: 'Commit',
    what: 'missing transaction',
    req: {},
    codes: [S.INVALID_ARGUMENT],
    message: /transaction is required/,
  },
  {
    method: 'Commit',
    what: '7-byte store oid',
    req: { transaction: { stores: [{ oid: bytes(7), data: bytes(1) }] } },
    codes: [S.INVALID_ARGUMENT],
    message: /stores\[0\]\.oid/,
  },
  {
    method: 'Commit',
    what: 'short ref',
    req: { transaction: { stores: [{ oid: oid(1), data: bytes(1), refs: [bytes(3)] }] } },
    codes: [S.INVALID_ARGUMENT],
    message: /refs/,
  },
  {
    method: 'Commit',
    what: 'delete without serial',
    req: { transaction: { deletes: [{ oid: oid(1) }] } },
    codes: [S.INVALID_ARGUMENT],
    message: /deletes\[0\]\.serial/,
  },
  {
    method: 'Commit',
    what: 'invalid UTF-8 user',
    req: { transaction: { user: BAD, stores: [{ oid: oid(9), data: bytes(1) }] } },
    codes: [S.INVALID_ARGUMENT],
    message: /UTF-8/,
  },
  {
    method: 'Commit',
    what: 'too many objects',
    req: {
      transaction: {
        stores: Array.from({ length: 11 }, (_, i) => ({ oid: oid(100 + i), data: bytes(1) })),
      },
    },
    codes: [S.RESOURCE_EXHAUSTED],
    message: /max_txn_objects/,
  },
  {
    method: 'Commit',
    what: 'too many data bytes',
    req: { transaction: { stores: [{ oid: oid(9), data: bytes(200_000) }] } },
    codes: [S.RESOURCE_EXHAUSTED],
    message: /max_txn_bytes/,
  },
  {
    method: 'Commit',
    what: 'read-only storage',
    req: { transaction: { storage: 'archive', stores: [{ oid: oid(9), data: bytes(1) }] } },
    codes: [S.PERMISSION_DENIED],
  },
  {
    method: 'Commit',
    what: 'session without a sequence number',
    req: { transaction: { stores: [{ oid: oid(9), data: bytes(1) }] }, sessionId: 's' },
    codes: [S.INVALID_ARGUMENT],
    message: /sequence number/,
  },
  {
    method: 'Commit',
    what: 'sequence number without a session',
    req: { transaction: { stores: [{ oid: oid(9), data: bytes(1) }] }, sequence: 3 },
    codes: [S.INVALID_ARGUMENT],
    message: /need a session_id/,
  },
  {
    method: 'Commit',
    what: 'over-long session_id',
    req: {
      transaction: { stores: [{ oid: oid(9), data: bytes(1) }] },
      sessionId: 'x'.repeat(65),
      sequence: 1,
    },
    codes: [S.INVALID_ARGUMENT],
    message: /session_id/,
  },
  {
    method: 'Commit',
    what: '7-byte session_since_tid',
    req: {
      transaction: { stores: [{ oid: oid(9), data: bytes(1) }] },
      sessionId: 's',
      sequence: 1,
      sessionSinceTid: bytes(7),
    },
    codes: [S.INVALID_ARGUMENT],
    message: /session_since_tid/,
  },
  {
    method: 'Vote',
    what: 'missing transaction_id',
    req: { transaction: { stores: [{ oid: oid(9), data: bytes(1) }] } },
    codes: [S.INVALID_ARGUMENT],
    message: /transaction_id/,
  },
  {
    method: 'Vote',
    what: 'over-long transaction_id',
    req: { transactionId: 'x'.repeat(65), transaction: {} },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'Vote',
    what: 'missing transaction',
    req: { transactionId: 't-none' },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'Finish',
    what: 'never voted',
    req: { transactionId: 'never-voted' },
    codes: [S.FAILED_PRECONDITION],
  },
  { method: 'Finish', what: 'missing transaction_id', req: {}, codes: [S.INVALID_ARGUMENT] },
  { method: 'Abort', what: 'missing transaction_id', req: {}, codes: [S.INVALID_ARGUMENT] },
  {
    method: 'Abort',
    what: 'never voted',
    req: { transactionId: 'never-voted' },
    codes: [S.OK, S.FAILED_PRECONDITION],
  },
  { method: 'Undo', what: '7-byte tid', req: { tid: bytes(7) }, codes: [S.INVALID_ARGUMENT] },
  {
    method: 'Undo',
    what: 'unknown tid',
    req: { tid: oid(5) },
    codes: [S.NOT_FOUND, S.FAILED_PRECONDITION, S.ABORTED, S.INVALID_ARGUMENT],
  },
  { method: 'UndoLog', what: 'negative first', req: { first: -1 }, codes: [S.INVALID_ARGUMENT] },
  {
    method: 'UndoLog',
    what: 'last before first',
    req: { first: 10, last: 5 },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'Pack',
    what: 'neither tid nor time',
    req: {},
    codes: [S.INVALID_ARGUMENT],
    message: /pack_tid or a positive pack_time/,
  },
  {
    method: 'Pack',
    what: '5-byte pack_tid',
    req: { packTid: bytes(5) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'Pack',
    what: 'negative pack_time',
    req: { packTime: -5 },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'Iterate',
    what: '7-byte start',
    req: { start: bytes(7) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'Iterate',
    what: 'stop before start',
    req: { start: p64(0xffffn), stop: oid(1) },
    codes: [S.INVALID_ARGUMENT],
  },
  { method: 'Iterate', what: 'unknown storage', req: { storage: 'nope' }, codes: [S.NOT_FOUND] },
  {
    method: 'Subscribe',
    what: '9-byte from_tid',
    req: { fromTid: bytes(9) },
    codes: [S.INVALID_ARGUMENT],
  },
  { method: 'Subscribe', what: 'unknown storage', req: { storage: 'nope' }, codes: [S.NOT_FOUND] },
  { method: 'Sync', what: 'unknown storage', req: { storage: 'nope' }, codes: [S.NOT_FOUND] },
  // UploadBlob is client-streaming: a raw call sends its one message and half-closes.
  {
    method: 'UploadBlob',
    what: 'unknown storage',
    req: { storage: 'nope', data: bytes(3) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'UploadBlob',
    what: 'read-only storage',
    req: { storage: 'archive', data: bytes(3) },
    codes: [S.PERMISSION_DENIED],
  },
  {
    method: 'UploadBlob',
    what: '5-byte blob_id',
    req: { blobId: bytes(5), data: bytes(3) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'UploadBlob',
    what: 'resume of an upload that never started',
    req: { blobId: bytes(16), offset: 5, data: bytes(3) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'BlobUploadStatus',
    what: 'unknown storage',
    req: { storage: 'nope', blobId: bytes(16) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'BlobUploadStatus',
    what: '5-byte blob_id',
    req: { blobId: bytes(5) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'BlobUploadStatus',
    what: 'upload that never started',
    req: { blobId: bytes(16) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'DownloadBlob',
    what: 'short oid',
    req: { oid: bytes(3), serial: bytes(8) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'DownloadBlob',
    what: '7-byte serial',
    req: { oid: oid(1), serial: bytes(7) },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'DownloadBlob',
    what: 'unknown oid',
    req: { oid: oid(424242), serial: bytes(8) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'DownloadBlob',
    what: 'unknown storage',
    req: { storage: 'nope', oid: oid(1), serial: bytes(8) },
    codes: [S.NOT_FOUND],
  },
  {
    method: 'Status',
    what: 'unknown fields only',
    req: Buffer.from([0xf8, 0x07, 0x01]),
    codes: [S.OK],
  },
];

const adminCases: Case[] = [
  { method: 'Members', what: 'empty request', req: {}, codes: [S.OK] },
  {
    method: 'AddMember',
    what: 'bad id',
    req: { id: 'bad id!', peerAddress: 'a:1', clientAddress: 'b:2' },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'AddMember',
    what: 'bad peer address',
    req: { id: 'n9', peerAddress: 'nope', clientAddress: 'b:2' },
    codes: [S.INVALID_ARGUMENT],
  },
  {
    method: 'AddMember',
    what: 'existing member',
    req: { id: 'n1', peerAddress: 'a:1', clientAddress: 'b:2' },
    codes: [S.ALREADY_EXISTS],
  },
  { method: 'PromoteMember', what: 'unknown member', req: { id: 'ghost' }, codes: [S.NOT_FOUND] },
  { method: 'PromoteMember', what: 'empty id', req: {}, codes: [S.INVALID_ARGUMENT] },
  { method: 'RemoveMember', what: 'unknown member', req: { id: 'ghost' }, codes: [S.NOT_FOUND] },
  { method: 'TransferLeader', what: 'unknown member', req: { id: 'ghost' }, codes: [S.NOT_FOUND] },
  {
    method: 'TransferLeader',
    what: 'invalid UTF-8 id',
    req: { id: BAD },
    codes: [S.INVALID_ARGUMENT],
  },
  { method: 'Snapshot', what: 'empty request', req: {}, codes: [S.OK] },
];

describe('security: bad input on every Storage and Admin RPC', function () {
  let dir: string;
  let node: NodeProcess;
  let address: string;
  let client: grpc.Client;
  let root: protobuf.Root;
  const services: Record<string, protobuf.Service> = {};

  function encode(service: string, method: string, req: Case['req']): Buffer {
    if (Buffer.isBuffer(req)) return req;
    const m = services[service].methods[method];
    const T = root.lookupType(m.requestType);
    const b = Buffer.from(T.encode(T.fromObject(req)).finish());
    const i = b.indexOf(BAD);
    if (i >= 0) Buffer.from([0xff, 0xfe, 0xc3, 0x28]).copy(b, i);
    return b;
  }

  function send(service: string, method: string, body: Buffer): Promise<RawAnswer> {
    const p = `/zeoraft.v1.${service}/${method}`;
    return STREAMS.has(method) ? rawStream(client, p, body) : rawUnary(client, p, body);
  }

  before(async () => {
    root = protoRoot();
    services.Storage = root.lookupService('zeoraft.v1.Storage');
    services.Admin = root.lookupService('zeoraft.v1.Admin');
    dir = tmpDir('sec-bad');
    const [port, peer] = [await freePort(), await freePort()];
    address = `127.0.0.1:${port}`;
    node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'n1',
      ZEORAFT_DATA_DIR: path.join(dir, 'n1'),
      ZEORAFT_LISTEN: address,
      ZEORAFT_PEER_LISTEN: `127.0.0.1:${peer}`,
      ZEORAFT_PEERS: `n1=127.0.0.1:${peer}=${address}`,
      ZEORAFT_STORAGES: '1,archive:ro',
      ZEORAFT_TICK_MS: '20',
      ZEORAFT_MAX_MESSAGE_BYTES: String(MAX_MESSAGE_BYTES),
      ZEORAFT_MAX_TXN_OBJECTS: '10',
      ZEORAFT_MAX_TXN_BYTES: '100000',
      ZEORAFT_MAX_TXNS_PER_CONNECTION: '2',
      ZEORAFT_MAX_SUBSCRIBERS_PER_CONNECTION: '2',
      ZEORAFT_TXN_TIMEOUT_MS: '1500',
      ZEORAFT_LOCK_WAIT_MS: '200',
    });
    client = new grpc.Client(address, grpc.credentials.createInsecure());
    const rpc = new StorageRpc(address, { timeoutMs: 3000 });
    await eventually(async () => (await rpc.call('Status', {})).leaderId === 'n1');
    await rpc.call('Commit', { transaction: { stores: [{ oid: oid(1), data: bytes(3) }] } });
    rpc.close();
  });
  after(async () => {
    client?.close();
    await node.kill('SIGKILL');
    rmDir(dir);
  });

  const all = [
    ...storageCases.map((c) => ({ service: 'Storage', ...c })),
    ...adminCases.map((c) => ({ service: 'Admin', ...c })),
  ];
  for (const c of all)
    it(`${c.service}.${c.method}: ${c.what} -> ${c.codes.map((x) => S[x]).join('|')}`, async () => {
      const a = await send(c.service, c.method, encode(c.service, c.method, c.req));
      assert.ok(c.codes.includes(a.code), `got ${S[a.code]}: ${a.details}`);
      if (c.message) assert.match(a.details, c.message);
    });

  it('answers every method covered by the table', () => {
    for (const [name, svc] of Object.entries(services))
      for (const m of Object.keys(svc.methods))
        assert.ok(
          all.some((c) => c.service === name && c.method === m),
          `${name}.${m} has no bad-input case`,
        );
  });

  it('refuses a message over the limit on every method with RESOURCE_EXHAUSTED', async () => {
    const huge = Buffer.alloc(MAX_MESSAGE_BYTES + 1024);
    for (const [name, svc] of Object.entries(services))
      for (const m of Object.keys(svc.methods)) {
        const a = await send(name, m, huge);
        assert.equal(a.code, S.RESOURCE_EXHAUSTED, `${name}.${m}: ${S[a.code]} ${a.details}`);
      }
  });

  it('answers undecodable bytes on every method with a status, never a crash', async () => {
    const junk = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    for (const [name, svc] of Object.entries(services))
      for (const m of Object.keys(svc.methods)) {
        const a = await send(name, m, junk);
        assert.ok(a.code !== S.OK && a.code !== S.UNKNOWN, `${name}.${m}: ${S[a.code]}`);
      }
    assert.ok(node.alive);
  });

  it('limits subscribe streams per connection', async () => {
    const body = encode('Storage', 'Subscribe', {});
    const p = '/zeoraft.v1.Storage/Subscribe';
    const open = [rawStream(client, p, body, 1500), rawStream(client, p, body, 1500)];
    await new Promise((r) => setTimeout(r, 300));
    const third = await rawStream(client, p, body, 1500);
    assert.equal(third.code, S.RESOURCE_EXHAUSTED);
    assert.match(third.details, /max_subscribers_per_connection/);
    const firsts = await Promise.all(open);
    assert.ok(
      firsts.every((f) => f.code === S.CANCELLED),
      'the first two were served until cancelled',
    );
    // Closed streams no longer count.
    const again = await rawStream(client, p, body, 200);
    assert.equal(again.code, S.CANCELLED, again.details);
  });

  it('limits voted transactions per connection', async () => {
    const vote = (id: string, o: number): Promise<RawAnswer> =>
      send(
        'Storage',
        'Vote',
        encode('Storage', 'Vote', {
          transactionId: id,
          transaction: { stores: [{ oid: oid(o), data: bytes(2) }] },
        }),
      );
    assert.equal((await vote('pc-1', 201)).code, S.OK);
    assert.equal((await vote('pc-2', 202)).code, S.OK);
    const third = await vote('pc-3', 203);
    assert.equal(third.code, S.RESOURCE_EXHAUSTED, third.details);
    assert.match(third.details, /max_txns_per_connection/);
    for (const id of ['pc-1', 'pc-2'])
      assert.equal(
        (await send('Storage', 'Abort', encode('Storage', 'Abort', { transactionId: id }))).code,
        S.OK,
      );
    assert.equal((await vote('pc-3', 203)).code, S.OK, 'aborted transactions no longer count');
    await send('Storage', 'Abort', encode('Storage', 'Abort', { transactionId: 'pc-3' }));
  });

  it('keeps serving after streams are cancelled mid-transaction', async () => {
    const rpc = new StorageRpc(address, { timeoutMs: 3000 });
    try {
      for (let i = 0; i < 30; i++)
        await rpc.call('Commit', {
          transaction: { stores: [{ oid: oid(300 + i), data: bytes(10) }] },
        });
      await rpc.call('Vote', {
        transactionId: 'mid',
        transaction: { stores: [{ oid: oid(399), data: bytes(1) }] },
      });
      // Cancel an iteration after its first records and a subscription while a transaction is voted.
      const it1 = await rawStream(
        client,
        '/zeoraft.v1.Storage/Iterate',
        encode('Storage', 'Iterate', {}),
        5,
      );
      const sub = await rawStream(
        client,
        '/zeoraft.v1.Storage/Subscribe',
        encode('Storage', 'Subscribe', { fromTid: Buffer.alloc(0) }),
        50,
      );
      assert.ok([S.CANCELLED, S.OK].includes(it1.code));
      assert.equal(sub.code, S.CANCELLED);
      const { tid } = await rpc.call('Finish', { transactionId: 'mid' });
      assert.deepEqual((await rpc.call('Load', { oid: oid(399) })).serial, tid);
    } finally {
      rpc.close();
    }
  });

  it('aborts the voted transaction of a client that vanished, after the transaction timeout', async () => {
    const script = `
      const { StorageRpc } = require(${JSON.stringify(path.resolve(__dirname, '../../src/client/rpc.js'))});
      const r = new StorageRpc(${JSON.stringify(address)});
      r.call('Vote', { transactionId: 'vanish', transaction: { stores: [{ oid: Buffer.from('00000000000001f4', 'hex'), data: Buffer.from('v') }] } })
        .then(() => console.log('voted'), (e) => console.log('failed ' + e.message));
      setInterval(() => undefined, 1000);`;
    const child: ChildProcess = spawn(process.execPath, ['-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const rpc = new StorageRpc(address, { timeoutMs: 3000 });
    try {
      await eventually(() => out.includes('voted'), 10_000, `the child to vote (${out})`);
      process.kill(child.pid!, 'SIGKILL');
      await exited;
      const started = Date.now();
      // The object is held by the voted transaction...
      const held = await rpc
        .call('Commit', { transaction: { stores: [{ oid: oid(500), data: bytes(1) }] } })
        .then(
          () => undefined,
          (e: Error & { grpcCode?: number }) => e,
        );
      assert.equal(held?.grpcCode, S.ABORTED, String(held));
      // ...until the leader aborts it past ZEORAFT_TXN_TIMEOUT_MS (1.5 s).
      await eventually(
        () => rpc.call('Commit', { transaction: { stores: [{ oid: oid(500), data: bytes(1) }] } }),
        10_000,
        'the abandoned transaction to be aborted',
      );
      assert.ok(Date.now() - started < 8000);
      const fin = await send(
        'Storage',
        'Finish',
        encode('Storage', 'Finish', { transactionId: 'vanish' }),
      );
      assert.equal(fin.code, S.FAILED_PRECONDITION, 'finish after the timeout abort fails');
      assert.match(node.output, /"why":"past its deadline","msg":"aborting voted transaction"/);
    } finally {
      rpc.close();
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
    }
  });
});
