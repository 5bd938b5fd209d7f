/**
 * Blobs at the ZEO door (ZEO's non-shared blob mode) of a real node process: storeBlobStart /
 * storeBlobChunk / storeBlobEnd in a transaction, sendBlob answering with receiveBlobStart,
 * receiveBlobChunk..., receiveBlobStop before its reply, the blob limit (ZEORAFT_MAX_BLOB_BYTES)
 * reported at vote, bad input refused, and pack removing the blob of a revision it removes.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Z64 } from '../../src/util/ids';
import { NodeProcess, eventually, freePort, rmDir, tmpDir } from '../harness';
import { ServerError, ZeoClient } from './zeo-client';

const MiB = 1 << 20;
const b = (s: string): Buffer => Buffer.from(s);
const buf = (u: Uint8Array): Buffer => Buffer.from(u);
/** The size of the storeBlobChunk messages ZEO's ClientStorage sends. */
const ZEO_CHUNK_BYTES = 59000;

describe('ZEO door: blobs', function () {
  this.timeout(120_000);
  let dir: string;
  let proc: NodeProcess;
  let zeo: number;
  const clients: ZeoClient[] = [];
  let txn = 1;

  async function connect(): Promise<ZeoClient> {
    const c = await ZeoClient.connect(zeo);
    clients.push(c);
    await c.call('register', '1', false);
    return c;
  }

  function sendBlobChunks(c: ZeoClient, data: Buffer): void {
    c.oneWay('storeBlobStart');
    for (let off = 0; off < data.length; off += ZEO_CHUNK_BYTES)
      c.oneWay('storeBlobChunk', data.subarray(off, off + ZEO_CHUNK_BYTES));
  }

  /** ZEO's storeBlob: storea, then the blob's chunks and storeBlobEnd. Returns the vote's promise. */
  function storeBlob(c: ZeoClient, id: number, oid: Buffer, serial: Buffer, data: Buffer) {
    c.oneWay('storea', oid, serial, b('pickle'), id);
    sendBlobChunks(c, data);
    c.oneWay('storeBlobEnd', oid, serial, b('pickle'), id);
  }

  async function commitBlob(c: ZeoClient, oid: Buffer, serial: Buffer, data: Buffer) {
    const id = txn++;
    c.oneWay('tpc_begin', id, b('u'), b('blob'), {}, null, ' ');
    storeBlob(c, id, oid, serial, data);
    assert.deepEqual(await c.call('vote', id), []);
    return buf(await c.call('tpc_finish', id));
  }

  /** sendBlob, returning the data received and checking the order of the calls before the reply. */
  async function fetchBlob(c: ZeoClient, oid: Buffer, serial: Buffer): Promise<Buffer> {
    const from = c.events.length;
    await c.call('sendBlob', oid, serial);
    const evs = c.events.slice(from);
    const names = evs.map((e) => (e.kind === 'call' ? e.method : 'reply'));
    assert.equal(names[0], 'receiveBlobStart');
    assert.equal(names[names.length - 1], 'reply');
    assert.equal(names[names.length - 2], 'receiveBlobStop');
    const parts: Buffer[] = [];
    for (const e of evs)
      if (e.kind === 'call' && e.method === 'receiveBlobChunk') {
        assert.deepEqual(buf(e.args[0]), oid);
        assert.deepEqual(buf(e.args[1]), serial);
        parts.push(buf(e.args[2]));
      }
    return Buffer.concat(parts);
  }

  before(async () => {
    dir = tmpDir('zeo-blobs');
    zeo = await freePort();
    proc = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'n1',
      ZEORAFT_DATA_DIR: dir,
      ZEORAFT_LISTEN: `127.0.0.1:${await freePort()}`,
      ZEORAFT_ZEO_LISTEN: `127.0.0.1:${zeo}`,
      ZEORAFT_MAX_BLOB_BYTES: String(8 * MiB),
    });
    const c = await connect();
    await eventually(() => c.call('new_oids', 1).then(() => true), 20_000, 'a leader');
  });

  after(async () => {
    for (const c of clients) c.close();
    await proc?.kill('SIGKILL');
    rmDir(dir);
  });

  it('stores a blob in a transaction and sends it to another connection before answering sendBlob', async () => {
    const c = await connect();
    const oid = buf((await c.call('new_oids', 1))[0]);
    const data = randomBytes(3 * MiB + 4321);
    const tid = await commitBlob(c, oid, Z64, data);
    const d = await connect();
    const got = await fetchBlob(d, oid, tid);
    assert.equal(got.length, data.length);
    assert.ok(got.equals(data), 'the blob comes back byte for byte');
    // The object's record is the pickle stored with it.
    const [record] = await d.call('loadBefore', oid, Buffer.alloc(8, 0xff));
    assert.deepEqual(buf(record), b('pickle'));
  });

  it('refuses a blob over ZEORAFT_MAX_BLOB_BYTES at vote, and the connection keeps working', async () => {
    const c = await connect();
    const oid = buf((await c.call('new_oids', 1))[0]);
    const id = txn++;
    c.oneWay('tpc_begin', id, b('u'), b('too big'), {}, null, ' ');
    storeBlob(c, id, oid, Z64, Buffer.alloc(8 * MiB + 1, 7));
    await assert.rejects(c.call('vote', id), (e: ServerError) => {
      assert.match(e.message, /ZEORAFT_MAX_BLOB_BYTES/);
      return true;
    });
    await c.call('tpc_abort', id);
    const tid = await commitBlob(c, oid, Z64, b('small'));
    assert.equal((await fetchBlob(c, oid, tid)).toString(), 'small');
  });

  it('answers sendBlob of a revision without a blob with POSKeyError, and refuses a shared blob directory', async () => {
    const c = await connect();
    const oid = buf((await c.call('new_oids', 1))[0]);
    const id = txn++;
    c.oneWay('tpc_begin', id, b('u'), b('plain'), {}, null, ' ');
    c.oneWay('storea', oid, Z64, b('no blob'), id);
    await c.call('vote', id);
    const tid = buf(await c.call('tpc_finish', id));
    await assert.rejects(c.call('sendBlob', oid, tid), /POSKeyError/);
    const id2 = txn++;
    c.oneWay('tpc_begin', id2, b('u'), b('shared'), {}, null, ' ');
    c.oneWay('storeBlobShared', oid, tid, b('x'), 'file.tmp', id2);
    await assert.rejects(c.call('vote', id2), /shared blob directory is not supported/);
  });

  it('closes a connection that sends blob chunks without storeBlobStart', async () => {
    const c = await connect();
    c.oneWay('storeBlobChunk', b('stray'));
    await c.closedPromise;
    const d = await connect();
    assert.equal(await d.call('ping'), null);
  });

  it('pack removes the blob of a revision it removes and keeps the current one', async () => {
    const c = await connect();
    const oid = buf((await c.call('new_oids', 1))[0]);
    // Its records are not ZODB pickles (their references are unknown): pack drops old revisions only.
    const t1 = await commitBlob(c, oid, Z64, b('first'));
    const t2 = await commitBlob(c, oid, t1, b('second'));
    assert.equal((await fetchBlob(c, oid, t1)).toString(), 'first');
    await c.call('pack', Date.now() / 1000 + 1, 1);
    await assert.rejects(c.call('sendBlob', oid, t1), /POSKeyError/);
    assert.equal((await fetchBlob(c, oid, t2)).toString(), 'second');
  });
});
