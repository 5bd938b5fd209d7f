/**
 * Blobs in the object store (storage/blob-store.ts): chunked uploads applied as commands, committed
 * by the store naming them, read back chunk by chunk, held by votes, dropped by abort, expiry and
 * pack (with undo sharing a blob), carried by snapshots and kept across a restart.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Command } from '../../src/storage/codec';
import { BLOB_CHUNK_BYTES_MAX, BLOB_UPLOAD_EXPIRY_MS } from '../../src/storage/blob-store';
import { ObjectStore } from '../../src/storage/object-store';
import { Z64, p64, tidFromTime } from '../../src/util/ids';
import { rmDir, tmpDir } from '../harness/index';

const ST = '1';
const oid = (n: number): Buffer => p64(BigInt(n));
const T0 = Date.UTC(2026, 0, 1);

describe('ObjectStore blobs', () => {
  let dir: string;
  let store: ObjectStore;
  let index = 0;
  let clockMs = T0;

  const apply = async (cmd: Command) => store.apply(++index, cmd);
  const ok = async (cmd: Command) => {
    const r = await apply(cmd);
    assert.ok(r.ok, r.ok ? '' : `${r.error.kind}: ${r.error.message}`);
    return r;
  };
  const refused = async (cmd: Command, kind: string, re: RegExp) => {
    const r = await apply(cmd);
    assert.ok(!r.ok, 'expected a refusal');
    assert.equal(r.error.kind, kind);
    assert.match(r.error.message, re);
  };
  const now = (): Buffer => tidFromTime((clockMs += 1000));
  const chunk = (blobId: Buffer, offset: number, data: Buffer): Command => ({
    blobChunk: { storage: ST, blobId, offset, data, tid: now() },
  });
  /** Upload `data` in chunks of `size` bytes; returns the blob id. */
  const upload = async (data: Buffer, size = BLOB_CHUNK_BYTES_MAX): Promise<Buffer> => {
    const id = randomBytes(16);
    let off = 0;
    do {
      const part = data.subarray(off, off + size);
      await ok(chunk(id, off, part));
      off += part.length;
    } while (off < data.length);
    return id;
  };
  const commitBlob = async (o: number, serial: Buffer, blobId: Buffer) =>
    (
      await ok({
        commit: {
          tid: now(),
          txn: {
            storage: ST,
            stores: [{ oid: oid(o), serial, data: Buffer.from('pickle'), blobId }],
          },
        },
      })
    ).tid as Buffer;
  const readBlob = async (o: number, serial: Buffer): Promise<Buffer> => {
    const { blobId, size } = await store.blobOf(ST, oid(o), serial);
    const parts: Buffer[] = [];
    for await (const c of store.blobChunks(ST, blobId, size)) {
      assert.ok(c.length <= BLOB_CHUNK_BYTES_MAX, 'a read chunk is at most one stored chunk');
      parts.push(Buffer.from(c));
    }
    return Buffer.concat(parts);
  };
  const keysWithTag = async (tag: string): Promise<number> => {
    let n = 0;
    const { chunks } = store.snapshot();
    const { snapshotChunkCodec } = await import('../../src/storage/codec');
    for await (const raw of chunks)
      for (const k of snapshotChunkCodec.decode(raw).keys ?? [])
        if (k[0] === tag.charCodeAt(0)) n++;
    return n;
  };

  beforeEach(async () => {
    dir = tmpDir('blobs');
    store = await ObjectStore.open(dir, { sync: false });
    index = 0;
  });
  afterEach(async () => {
    await store.close();
    rmDir(dir);
  });

  it('commits a blob uploaded in chunks and reads it back chunk by chunk', async () => {
    const data = randomBytes(3 * BLOB_CHUNK_BYTES_MAX + 12345);
    const id = await upload(data);
    const tid = await commitBlob(1, Z64, id);
    assert.deepEqual(await readBlob(1, tid), data);
    assert.equal((await store.blobOf(ST, oid(1), tid)).size, data.length);
    assert.deepEqual((await store.load(ST, oid(1))).data, Buffer.from('pickle'));
    // An empty blob is one empty chunk.
    const empty = await upload(Buffer.alloc(0));
    const t2 = await commitBlob(2, Z64, empty);
    assert.equal((await readBlob(2, t2)).length, 0);
    await assert.rejects(store.blobOf(ST, oid(1), Z64), /no blob for revision/);
  });

  it('accepts a retried last chunk, and refuses gaps, overlaps, oversized chunks and appends to a committed blob', async () => {
    const id = randomBytes(16);
    const a = randomBytes(1000);
    await ok(chunk(id, 0, a));
    await ok(chunk(id, 0, a)); // its answer was lost: the retry changes nothing
    await refused(chunk(id, 2000, a), 'INVALID', /next chunk starts there/);
    await refused(chunk(id, 500, a), 'INVALID', /neither the next one nor a retry/);
    await refused(chunk(id, 1000, Buffer.alloc(BLOB_CHUNK_BYTES_MAX + 1)), 'INVALID', /at most/);
    await refused(chunk(randomBytes(16), 5, a), 'INVALID', /start again at offset 0/);
    await refused(chunk(Buffer.alloc(3), 0, a), 'INVALID', /16 bytes/);
    await ok(chunk(id, 1000, a));
    const tid = await commitBlob(1, Z64, id);
    assert.equal((await readBlob(1, tid)).length, 2000);
    await refused(chunk(id, 2000, a), 'INVALID', /is committed/);
    await refused(chunk(id, 0, a), 'INVALID', /is committed/);
  });

  it('refuses a store naming no open upload, or one upload twice', async () => {
    await refused(
      {
        commit: {
          tid: now(),
          txn: {
            storage: ST,
            stores: [{ oid: oid(1), data: Buffer.from('x'), blobId: randomBytes(16) }],
          },
        },
      },
      'INVALID',
      /not an open upload/,
    );
    const id = await upload(randomBytes(10));
    await refused(
      {
        commit: {
          tid: now(),
          txn: {
            storage: ST,
            stores: [
              { oid: oid(1), data: Buffer.from('x'), blobId: id },
              { oid: oid(2), data: Buffer.from('y'), blobId: id },
            ],
          },
        },
      },
      'INVALID',
      /named twice/,
    );
    // Committed once, an upload cannot be named by a client store again.
    await commitBlob(1, Z64, id);
    await refused(
      {
        commit: {
          tid: now(),
          txn: { storage: ST, stores: [{ oid: oid(3), data: Buffer.from('z'), blobId: id }] },
        },
      },
      'INVALID',
      /not an open upload/,
    );
  });

  it('holds an upload while its vote lives: finish commits it, abort drops its chunks', async () => {
    const data = randomBytes(2 * BLOB_CHUNK_BYTES_MAX);
    const id = await upload(data);
    const txn = { storage: ST, stores: [{ oid: oid(1), data: Buffer.from('p'), blobId: id }] };
    await ok({ prepare: { txnId: 'a', txn } });
    await refused(
      { prepare: { txnId: 'b', txn: { ...txn, stores: [{ ...txn.stores[0], oid: oid(2) }] } } },
      'INVALID',
      /another voted transaction/,
    );
    await refused(chunk(id, data.length, Buffer.from('more')), 'INVALID', /voted transaction/);
    const fin = await ok({ finish: { storage: ST, txnId: 'a', tid: now() } });
    assert.deepEqual(await readBlob(1, fin.tid as Buffer), data);

    const id2 = await upload(randomBytes(3 * BLOB_CHUNK_BYTES_MAX));
    const before = await keysWithTag('A');
    await ok({
      prepare: {
        txnId: 'c',
        txn: { storage: ST, stores: [{ oid: oid(3), data: Buffer.from('q'), blobId: id2 }] },
      },
    });
    await ok({ abort: { storage: ST, txnId: 'c' } });
    assert.equal(await keysWithTag('A'), before - 3, 'the aborted upload lost its chunks');
    assert.equal(await keysWithTag('U'), 0);
  });

  it('drops an upload no transaction committed after the expiry, at a later chunk command', async () => {
    const stale = await upload(randomBytes(5000), 1000);
    assert.equal(await keysWithTag('A'), 5);
    clockMs += BLOB_UPLOAD_EXPIRY_MS + 60_000;
    await upload(randomBytes(10));
    assert.equal(await keysWithTag('A'), 1, 'only the new upload is left');
    await refused(
      {
        commit: {
          tid: now(),
          txn: { storage: ST, stores: [{ oid: oid(1), data: Buffer.from('x'), blobId: stale }] },
        },
      },
      'INVALID',
      /expired/,
    );
  });

  it('pack removes the blobs of the revisions it removes, and keeps a blob an undo revision still names', async () => {
    const d1 = randomBytes(BLOB_CHUNK_BYTES_MAX + 1);
    const d2 = randomBytes(100);
    const t1 = await commitBlob(1, Z64, await upload(d1));
    const t2 = await commitBlob(1, t1, await upload(d2));
    assert.equal(await keysWithTag('B'), 2);
    // Undo t2: the object's new revision names t1's blob again.
    const u = await ok({ undo: { tid: now(), storage: ST, undoTid: t2 } });
    const t3 = u.tid as Buffer;
    assert.deepEqual(await readBlob(1, t3), d1);
    // Pack at t3: t1's and t2's revisions go; t2's blob goes with them, t1's stays (t3 names it).
    await ok({ pack: { storage: ST, packTid: t3 } });
    assert.equal(await keysWithTag('B'), 1);
    assert.equal(await keysWithTag('A'), 2);
    assert.deepEqual(await readBlob(1, t3), d1);
    await assert.rejects(store.blobOf(ST, oid(1), t2), /no blob/);
    // A new revision, then a pack past it: the last revision naming the blob goes, and the blob.
    const t4 = await commitBlob(1, t3, await upload(d2));
    await ok({ pack: { storage: ST, packTid: t4 } });
    assert.equal(await keysWithTag('B'), 1);
    assert.equal(await keysWithTag('A'), 1);
    assert.deepEqual(await readBlob(1, t4), d2);
  });

  it('carries blobs and open uploads in snapshots and across a restart', async () => {
    const data = randomBytes(2 * BLOB_CHUNK_BYTES_MAX + 7);
    const tid = await commitBlob(1, Z64, await upload(data));
    const open = randomBytes(16);
    await ok(chunk(open, 0, Buffer.from('half')));
    const snap = store.snapshot();
    const chunks: Buffer[] = [];
    for await (const c of snap.chunks) {
      assert.ok(c.length <= 3 * BLOB_CHUNK_BYTES_MAX, 'a snapshot chunk stays bounded');
      chunks.push(c);
    }
    const dir2 = tmpDir('blobs-restored');
    const other = await ObjectStore.open(dir2, { sync: false });
    try {
      await other.restore(async function* () {
        yield* chunks;
      }, snap.index);
      const { blobId, size } = await other.blobOf(ST, oid(1), tid);
      const parts: Buffer[] = [];
      for await (const c of other.blobChunks(ST, blobId, size)) parts.push(Buffer.from(c));
      assert.deepEqual(Buffer.concat(parts), data);
      // The open upload continues where it was on the restored node.
      const r = await other.apply(snap.index + 1, {
        blobChunk: { storage: ST, blobId: open, offset: 4, data: Buffer.from('-rest'), tid: now() },
      });
      assert.ok(r.ok);
    } finally {
      await other.close();
      rmDir(dir2);
    }
    // Restart: the open upload is still known (it is appended to, not restarted).
    await store.close();
    store = await ObjectStore.open(dir, { sync: false });
    await ok(chunk(open, 4, Buffer.from('-rest')));
    const t2 = await commitBlob(2, Z64, open);
    assert.equal((await readBlob(2, t2)).toString(), 'half-rest');
  });
});
