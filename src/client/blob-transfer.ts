/**
 * One attempt of a blob upload or download over a node's Storage service (storage.proto "Blobs"),
 * and the whole transfer that retries them across failover, resuming at the offset that landed.
 * Memory: one chunk of BLOB_TRANSFER_CHUNK_BYTES in flight per call, writes wait for the stream to
 * drain.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { ConnectionManager } from './connection-manager';
import { NotFoundError, ZeoRaftError, fromGrpcError } from './errors';
import type { StorageRpc } from './rpc';

/** Bytes per message sent (and the read size of a blob file). */
export const BLOB_TRANSFER_CHUNK_BYTES = 1 << 20;

/** Chunks of `source` (a Buffer or a file path) from `offset`. */
async function* chunksOf(source: Buffer | string, offset: number): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(source)) {
    for (let i = offset; i < source.length; i += BLOB_TRANSFER_CHUNK_BYTES)
      yield source.subarray(i, i + BLOB_TRANSFER_CHUNK_BYTES);
    return;
  }
  const stream = fs.createReadStream(source, {
    start: offset,
    highWaterMark: BLOB_TRANSFER_CHUNK_BYTES,
  });
  for await (const chunk of stream) yield chunk as Buffer;
}

/** Upload `source` from `offset` under `blobId`; resolves with the upload's size. */
export function uploadOnce(
  rpc: StorageRpc,
  storage: string,
  blobId: Buffer,
  source: Buffer | string,
  offset: number,
  deadlineMs: number,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const call = rpc.raw.UploadBlob(rpc.metadata(), { deadline: deadlineMs }, (err, res) =>
      err ? reject(fromGrpcError(err)) : resolve(Number(res!.size)),
    );
    (async () => {
      let first = true;
      for await (const data of chunksOf(source, offset)) {
        const msg = first ? { storage, blobId, offset, data } : { storage, data };
        first = false;
        if (!call.write(msg)) await new Promise((r) => call.once('drain', r));
      }
      if (first) call.write({ storage, blobId, offset, data: Buffer.alloc(0) });
      call.end();
    })().catch((e: unknown) => {
      call.cancel();
      reject(e);
    });
  });
}

/**
 * Download the blob of (oid, serial) from `offset`, appending to the open file `fd`; resolves with
 * the blob's whole size and the bytes now in the file. A broken stream rejects after writing what
 * arrived (the caller resumes at the file's size).
 */
export function downloadOnce(
  rpc: StorageRpc,
  req: { storage: string; oid: Buffer; serial: Buffer; seenTid: Buffer },
  fd: fs.promises.FileHandle,
  offset: number,
  deadlineMs: number,
): Promise<{ size: number; written: number }> {
  return new Promise((resolve, reject) => {
    let written = offset;
    let size = -1;
    let writing: Promise<void> = Promise.resolve();
    let failed = false;
    const call = rpc.raw.DownloadBlob({ ...req, offset }, rpc.metadata(), {
      deadline: deadlineMs,
    });
    call.on('data', (c: { offset: number | string; size: number | string; data: Buffer }) => {
      size = Number(c.size);
      if (Number(c.offset) !== written) {
        failed = true;
        call.cancel();
        reject(new Error(`blob chunk at ${c.offset}, expected ${written}`));
        return;
      }
      written += c.data.length;
      // One chunk written at a time: the stream waits meanwhile.
      call.pause();
      writing = writing
        .then(() => fd.write(c.data).then(() => undefined))
        .then(
          () => {
            call.resume();
          },
          (e: unknown) => {
            failed = true;
            call.cancel();
            reject(e);
          },
        );
    });
    call.on('error', (e: grpc.ServiceError) => {
      if (failed) return;
      failed = true;
      void writing.then(() => reject(fromGrpcError(e)));
    });
    call.on('end', () => {
      void writing.then(() => {
        if (!failed) resolve({ size, written });
      });
    });
  });
}

/** What a resuming transfer needs of the client's connections (connection-manager.ts). */
type Nodes = Pick<ConnectionManager, 'withFailover' | 'timeoutMs' | 'retryWindowMs'>;

/**
 * Upload a blob (a Buffer, or the path of a file read in 1 MiB pieces) under a new id. Across
 * failover the upload resumes at the size that landed (the id is chosen here, so even a first
 * attempt that broke is resumed). Resolves with the upload's id.
 */
export async function uploadResuming(
  nodes: Nodes,
  storage: string,
  source: Buffer | string,
  attemptTimeoutMs: number,
): Promise<Buffer> {
  const blobId = randomBytes(16);
  const end = Date.now() + nodes.retryWindowMs;
  const total = Buffer.isBuffer(source) ? source.length : (await fs.promises.stat(source)).size;
  return nodes.withFailover(end, async (conn, attempt) => {
    let offset = 0;
    if (attempt > 0)
      offset = await conn.rpc.call('BlobUploadStatus', { storage, blobId }, nodes.timeoutMs).then(
        (r) => Number(r.size),
        (e: unknown) => {
          if (e instanceof NotFoundError) return 0; // nothing landed
          throw e;
        },
      );
    const size = await uploadOnce(
      conn.rpc,
      storage,
      blobId,
      source,
      offset,
      Date.now() + attemptTimeoutMs,
    );
    if (size !== total)
      throw new ZeoRaftError(`blob upload holds ${size} bytes, the source ${total}`);
    return blobId;
  });
}

/**
 * Download the blob of (oid, serial) into the empty file `fd`, resumed at the bytes received
 * across failover; `seenTid` is read at each attempt.
 */
export async function downloadResuming(
  nodes: Nodes,
  req: { storage: string; oid: Buffer; serial: Buffer; seenTid: () => Buffer },
  fd: fs.promises.FileHandle,
  attemptTimeoutMs: number,
): Promise<void> {
  const end = Date.now() + nodes.retryWindowMs;
  const { storage, oid, serial } = req;
  await nodes.withFailover(end, async (conn) => {
    const offset = (await fd.stat()).size;
    const r = await downloadOnce(
      conn.rpc,
      { storage, oid, serial, seenTid: req.seenTid() },
      fd,
      offset,
      Date.now() + attemptTimeoutMs,
    );
    if (r.size >= 0 && r.written !== r.size)
      throw new ZeoRaftError(`blob download ended at ${r.written} of ${r.size} bytes`);
  });
}
