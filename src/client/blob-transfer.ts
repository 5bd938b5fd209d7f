/**
 * One attempt of a blob upload or download over a node's Storage service (storage.proto "Blobs").
 * ClientStorage retries them across failover, resuming at the offset that landed. Memory: one
 * chunk of BLOB_TRANSFER_CHUNK_BYTES in flight per call, writes wait for the stream to drain.
 */
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { fromGrpcError } from './errors';
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
