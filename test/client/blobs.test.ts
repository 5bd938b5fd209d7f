/**
 * ClientStorage blobs against a real node process: storeBlob (from a Buffer and from a file) in a
 * transaction, loadBlob by another client into its blob cache (a read-only file holding the blob),
 * the cache answering without the node once it holds a revision, and the cache staying within its
 * bound of bytes.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ClientStorage } from '../../src/client/client-storage';
import { NotFoundError } from '../../src/client/errors';
import { StorageRpc } from '../../src/client/rpc';
import { Z64, hex } from '../../src/util/ids';
import { NodeProcess, freePort, rmDir, tmpDir } from '../harness';

const MiB = 1 << 20;

function dirBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .filter((n) => n.endsWith('.blob'))
    .reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

describe('ClientStorage: blobs', function () {
  this.timeout(120_000);
  let dir: string;
  let node: NodeProcess;
  let address: string;
  const clients: ClientStorage[] = [];

  async function client(blobCache?: { dir: string; bytes?: number }): Promise<ClientStorage> {
    const c = await ClientStorage.open({ addresses: [address], blobCache });
    clients.push(c);
    return c;
  }

  before(async () => {
    dir = tmpDir('client-blobs');
    const port = await freePort();
    address = `127.0.0.1:${port}`;
    node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'solo',
      ZEORAFT_DATA_DIR: path.join(dir, 'node'),
      ZEORAFT_LISTEN: address,
    });
  });
  after(async () => {
    for (const c of clients) await c.close();
    await node?.kill('SIGTERM');
    rmDir(dir);
  });

  it('stores blobs from a Buffer and a file, and another client loads them into its cache', async () => {
    const writer = await client();
    const a = randomBytes(2 * MiB + 17);
    const b = randomBytes(300_000);
    const file = path.join(dir, 'upload.bin');
    fs.writeFileSync(file, b);
    const oidA = await writer.newOid();
    const oidB = await writer.newOid();
    const txn = writer.tpcBegin({ description: 'two blobs' });
    await writer.storeBlob(txn, oidA, Z64, Buffer.from('pickle a'), a);
    await writer.storeBlob(txn, oidB, Z64, Buffer.from('pickle b'), file);
    await writer.tpcVote(txn);
    const tid = await writer.tpcFinish(txn);

    const cacheDir = path.join(dir, 'cache1');
    const reader = await client({ dir: cacheDir, bytes: 16 * MiB });
    const pa = await reader.loadBlob(oidA, tid);
    assert.ok(fs.readFileSync(pa).equals(a));
    assert.ok(fs.readFileSync(await reader.loadBlob(oidB, tid)).equals(b));
    assert.equal(fs.statSync(pa).mode & 0o222, 0, 'a cached blob file is read-only');
    assert.deepEqual((await reader.load(oidA)).data, Buffer.from('pickle a'));
    await assert.rejects(reader.loadBlob(oidA, Z64), NotFoundError);

    // Pack the revision away on the node: the cache still answers for it (it never asks again).
    await writer.commit({ stores: [{ oid: oidA, serial: tid, data: Buffer.from('no blob now') }] });
    const rpc = new StorageRpc(address);
    await rpc.call('Pack', { storage: '1', packTime: Date.now() / 1000 + 1 });
    rpc.close();
    const fresh = await client({ dir: path.join(dir, 'cache-fresh') });
    await assert.rejects(fresh.loadBlob(oidA, tid), NotFoundError);
    assert.ok(fs.readFileSync(await reader.loadBlob(oidA, tid)).equals(a));
  });

  it('keeps its blob cache within its bound, least recently used out first', async () => {
    const writer = await client();
    const cacheDir = path.join(dir, 'cache2');
    const reader = await client({ dir: cacheDir, bytes: 3 * MiB });
    const loaded: { oid: Buffer; tid: Buffer }[] = [];
    for (let i = 0; i < 5; i++) {
      const oid = await writer.newOid();
      const txn = writer.tpcBegin();
      await writer.storeBlob(txn, oid, Z64, Buffer.from(`p${i}`), randomBytes(MiB));
      await writer.tpcVote(txn);
      const tid = await writer.tpcFinish(txn);
      await reader.loadBlob(oid, tid);
      loaded.push({ oid, tid });
      assert.ok(dirBytes(cacheDir) <= 3 * MiB, `cache holds ${dirBytes(cacheDir)} bytes`);
    }
    const cached = (l: { oid: Buffer; tid: Buffer }) =>
      fs.existsSync(path.join(cacheDir, `${hex(l.oid)}-${hex(l.tid)}.blob`));
    assert.deepEqual(loaded.map(cached), [false, false, true, true, true]);
    // A new client on the same directory finds what is there, within the bound.
    await reader.close();
    const again = await client({ dir: cacheDir, bytes: 2 * MiB });
    assert.ok(dirBytes(cacheDir) <= 2 * MiB);
    const last = loaded[loaded.length - 1];
    assert.equal(fs.readFileSync(await again.loadBlob(last.oid, last.tid)).length, MiB);
  });
});
