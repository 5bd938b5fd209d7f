/**
 * The blob methods of the Storage API over real gRPC to a real node process: UploadBlob (client
 * streaming, resumable at the size BlobUploadStatus reports), a Commit naming the upload, and
 * DownloadBlob (server streaming from an offset); the blob limit and bad input refused clearly.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { StorageRpc } from '../../src/client/rpc';
import { Z64, p64 } from '../../src/util/ids';
import { NodeProcess, freePort, rmDir, tmpDir } from '../harness';

const MiB = 1 << 20;

describe('Storage API: blobs over gRPC', function () {
  this.timeout(120_000);
  let dir: string;
  let node: NodeProcess;
  let rpc: StorageRpc;
  let nextOid = 1000;

  /** One UploadBlob stream of `parts`; resolves with the answer or rejects with the gRPC error. */
  function upload(
    parts: Buffer[],
    first: { blobId?: Buffer; offset?: number } = {},
  ): Promise<{ blobId: Buffer; size: number }> {
    return new Promise((resolve, reject) => {
      const call = rpc.raw.UploadBlob((err, res) =>
        err ? reject(err) : resolve({ blobId: res!.blobId, size: Number(res!.size) }),
      );
      const msgs = parts.length ? parts : [Buffer.alloc(0)];
      msgs.forEach((data, i) =>
        call.write({
          storage: '1',
          ...(i === 0 ? { blobId: first.blobId, offset: first.offset ?? 0 } : {}),
          data,
        }),
      );
      call.end();
    });
  }

  function download(
    oid: Buffer,
    serial: Buffer,
    offset = 0,
  ): Promise<{ data: Buffer; chunks: number; size: number }> {
    return new Promise((resolve, reject) => {
      const parts: Buffer[] = [];
      let size = -1;
      const call = rpc.raw.DownloadBlob({ storage: '1', oid, serial, offset });
      call.on('data', (c) => {
        assert.ok(c.data.length <= MiB, 'a chunk is at most 1 MiB');
        assert.equal(Number(c.offset), offset + parts.reduce((n, p) => n + p.length, 0));
        size = Number(c.size);
        parts.push(c.data);
      });
      call.on('error', reject);
      call.on('end', () => resolve({ data: Buffer.concat(parts), chunks: parts.length, size }));
    });
  }

  async function commit(blobId: Buffer, serial = Z64, oid = p64(BigInt(nextOid++))) {
    const r = await rpc.call('Commit', {
      transaction: { storage: '1', stores: [{ oid, serial, data: Buffer.from('pickle'), blobId }] },
    });
    return { oid, tid: r.tid };
  }

  const code = (c: grpc.status, re: RegExp) => (e: grpc.ServiceError & { code?: number }) => {
    assert.equal(e.code, c, e.message);
    assert.match(e.message, re);
    return true;
  };

  before(async () => {
    dir = tmpDir('blob-grpc');
    const port = await freePort();
    node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'solo',
      ZEORAFT_DATA_DIR: dir,
      ZEORAFT_LISTEN: `127.0.0.1:${port}`,
      ZEORAFT_MAX_BLOB_BYTES: String(6 * MiB),
    });
    rpc = new StorageRpc(`127.0.0.1:${port}`);
  });
  after(async () => {
    rpc?.close();
    await node?.kill('SIGTERM');
    rmDir(dir);
  });

  it('uploads in a stream, commits the upload, and downloads it whole and from an offset', async () => {
    const data = randomBytes(2 * MiB + 123_456);
    const parts: Buffer[] = [];
    for (let off = 0; off < data.length; off += 700_000)
      parts.push(data.subarray(off, off + 700_000));
    const up = await upload(parts);
    assert.equal(up.blobId.length, 16);
    assert.equal(up.size, data.length);
    const { oid, tid } = await commit(up.blobId);
    const all = await download(oid, tid);
    assert.ok(all.data.equals(data));
    assert.equal(all.size, data.length);
    const tail = await download(oid, tid, MiB + 5);
    assert.ok(tail.data.equals(data.subarray(MiB + 5)));
    const none = await download(oid, tid, data.length);
    assert.equal(none.data.length, 0);
    await assert.rejects(
      download(oid, tid, data.length + 1),
      code(grpc.status.OUT_OF_RANGE, /past/),
    );
    // An empty blob.
    const empty = await upload([]);
    const e = await commit(empty.blobId);
    const got = await download(e.oid, e.tid);
    assert.equal(got.data.length, 0);
    assert.equal(got.size, 0);
  });

  it('resumes an upload at the size BlobUploadStatus reports, also after a broken stream', async () => {
    const data = randomBytes(3 * MiB);
    const first = await upload([data.subarray(0, MiB)]);
    assert.equal(first.size, MiB);
    // A broken stream: some of it may have landed, BlobUploadStatus says how much.
    await new Promise<void>((resolve) => {
      const call = rpc.raw.UploadBlob(() => resolve());
      call.write({
        storage: '1',
        blobId: first.blobId,
        offset: MiB,
        data: data.subarray(MiB, 2 * MiB),
      });
      setTimeout(() => call.cancel(), 50);
    });
    const { size } = await rpc.call('BlobUploadStatus', { storage: '1', blobId: first.blobId });
    assert.ok(Number(size) === MiB || Number(size) === 2 * MiB, `status ${size}`);
    await assert.rejects(
      upload([data.subarray(MiB + 1)], { blobId: first.blobId, offset: Number(size) + 1 }),
      code(grpc.status.FAILED_PRECONDITION, /resume at offset/),
    );
    const done = await upload([data.subarray(Number(size))], {
      blobId: first.blobId,
      offset: Number(size),
    });
    assert.equal(done.size, data.length);
    const { oid, tid } = await commit(done.blobId);
    assert.ok((await download(oid, tid)).data.equals(data));
    // Committed: no longer an open upload.
    await assert.rejects(
      rpc.call('BlobUploadStatus', { storage: '1', blobId: first.blobId }),
      /no open upload/,
    );
  });

  it('refuses a blob over ZEORAFT_MAX_BLOB_BYTES, and bad blob ids', async () => {
    await assert.rejects(
      upload([randomBytes(4 * MiB), randomBytes(3 * MiB)]),
      code(grpc.status.RESOURCE_EXHAUSTED, /max_blob_bytes|ZEORAFT_MAX_BLOB_BYTES/),
    );
    await assert.rejects(
      rpc.call('Commit', {
        transaction: {
          stores: [{ oid: p64(5n), data: Buffer.from('x'), blobId: Buffer.alloc(3) }],
        },
      }),
      /blob_id must be 16 bytes/,
    );
    await assert.rejects(
      rpc.call('Commit', {
        transaction: {
          stores: [{ oid: p64(5n), data: Buffer.from('x'), blobId: randomBytes(16) }],
        },
      }),
      /not an open upload/,
    );
    await assert.rejects(
      upload([Buffer.from('x')], { blobId: randomBytes(16), offset: 5 }),
      code(grpc.status.NOT_FOUND, /no open upload/),
    );
    // A new upload under an id the client chose.
    const mine = randomBytes(16);
    const up = await upload([Buffer.from('chosen')], { blobId: mine, offset: 0 });
    assert.deepEqual(up.blobId, mine);
    assert.equal(up.size, 6);
    const plain = await rpc.call('Commit', {
      transaction: { stores: [{ oid: p64(6n), data: Buffer.from('no blob') }] },
    });
    await assert.rejects(download(p64(6n), plain.tid), code(grpc.status.NOT_FOUND, /no blob/));
  });
});
