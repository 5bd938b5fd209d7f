/**
 * The blob methods of the zeoraft.v1.Storage service (storage.proto "Blobs"): UploadBlob (client
 * streaming, chunks replicated as they arrive, resumable with BlobUploadStatus) and DownloadBlob
 * (server streaming from an offset). Memory per call is bounded by one chunk: an upload reads the
 * next message only after the previous one is replicated, a download writes the next chunk only
 * after the stream drained.
 */
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { UploadBlobRequest__Output } from '../generated/zeoraft/v1/UploadBlobRequest';
import type { UploadBlobResponse } from '../generated/zeoraft/v1/UploadBlobResponse';
import type { BlobUploadStatusRequest__Output } from '../generated/zeoraft/v1/BlobUploadStatusRequest';
import type { BlobUploadStatusResponse } from '../generated/zeoraft/v1/BlobUploadStatusResponse';
import type { DownloadBlobRequest__Output } from '../generated/zeoraft/v1/DownloadBlobRequest';
import type { BlobChunk } from '../generated/zeoraft/v1/BlobChunk';
import { BLOB_CHUNK_BYTES_MAX, BLOB_ID_BYTES } from '../storage/blob-store';
import { RpcError, fromStorageError, invalid, toServiceError } from './errors';
import type { NodeMetrics } from '../metrics/metrics';
import type { ObjectStore } from '../storage/object-store';
import type { Limits } from './limits';
import type { Replicator } from './replicator';
import type { Caller } from './callers';
import { requireId } from './validate';

/** What the blob methods share with the rest of the Storage service (storage-service.ts). */
export interface BlobServiceContext {
  storageName(name: string | undefined): string;
  writable(st: string): void;
  deadline(call: { getDeadline(): grpc.Deadline }): number;
  callerOf(call: { metadata: grpc.Metadata }): Caller;
  fresh(call: { getDeadline(): grpc.Deadline }, seen: Buffer | undefined): Promise<void>;
  unary<Req, Res>(
    method: string,
    fn: (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  ): grpc.handleUnaryCall<Req, Res>;
  serverStream<Req, Res>(
    method: string,
    fn: (call: grpc.ServerWritableStream<Req, Res>) => Promise<void>,
  ): grpc.handleServerStreamingCall<Req, Res>;
}

/** What the blob methods use of the node. */
export interface BlobServiceDeps {
  store: Pick<ObjectStore, 'blobUploadSize' | 'blobOf' | 'blobChunks'>;
  replicator: Pick<Replicator, 'propose'>;
  limits: Pick<Limits, 'reserveTxnMemory' | 'exceeded'>;
  metrics: Pick<NodeMetrics, 'startRequest'>;
  config: { limits: { maxBlobBytes: number } };
}

function blobIdArg(b: Buffer | undefined, field: string): Buffer {
  if (!b || b.length !== BLOB_ID_BYTES)
    throw invalid(`${field} must be ${BLOB_ID_BYTES} bytes (an UploadBlob answer's blob_id)`);
  return b;
}

export function blobHandlers(node: BlobServiceDeps, ctx: BlobServiceContext) {
  /** Replicate `data` from `offset` in log chunks; returns the new size. */
  async function replicate(
    call: grpc.ServerReadableStream<UploadBlobRequest__Output, UploadBlobResponse>,
    st: string,
    blobId: Buffer,
    offset: number,
    data: Buffer,
    start: boolean,
  ): Promise<number> {
    let off = offset;
    let first = start;
    for (let i = 0; i < data.length || first; i += BLOB_CHUNK_BYTES_MAX) {
      const part = data.subarray(i, i + BLOB_CHUNK_BYTES_MAX);
      const memory = node.limits.reserveTxnMemory(part.length, 'a blob chunk');
      try {
        const r = await node.replicator.propose(
          { blobChunk: { storage: st, blobId, offset: off, data: part } },
          ctx.deadline(call),
          ctx.callerOf(call),
        );
        if (!r.ok) throw fromStorageError(r.error);
      } finally {
        memory.release();
      }
      off += part.length;
      first = false;
    }
    return off;
  }

  const UploadBlob: grpc.handleClientStreamingCall<
    UploadBlobRequest__Output,
    UploadBlobResponse
  > = (call, callback) => {
    const done = node.metrics.startRequest('UploadBlob');
    let st: string | undefined;
    let blobId: Buffer | undefined;
    let size = 0;
    let chain: Promise<void> = Promise.resolve();
    let settled = false;
    const settle = (e: unknown, res?: UploadBlobResponse): void => {
      if (settled) return;
      settled = true;
      if (e) {
        const err = toServiceError(e);
        done(err.code ?? grpc.status.UNKNOWN);
        callback(err as grpc.ServiceError);
      } else {
        done(grpc.status.OK);
        callback(null, res);
      }
    };
    call.on('data', (m: UploadBlobRequest__Output) => {
      // One message at a time: the next is read once this one is replicated.
      call.pause();
      chain = chain
        .then(async () => {
          if (settled) return;
          let start = false;
          if (st === undefined) {
            st = ctx.storageName(m.storage);
            ctx.writable(st);
            const offset = Number(m.offset);
            if (m.blobId.length) blobId = blobIdArg(m.blobId, 'blob_id');
            const have = blobId ? await node.store.blobUploadSize(st, blobId) : undefined;
            if (blobId && have === undefined && offset === 0) {
              // A new upload under an id the client chose (so it can resume a first stream that
              // broke before its answer arrived).
              start = true;
            } else if (blobId) {
              if (have === undefined)
                throw new RpcError(
                  grpc.status.NOT_FOUND,
                  `no open upload ${blobId.toString('hex')} (committed, expired or never started)`,
                  { kind: 'NOT_FOUND' },
                );
              if (offset !== have)
                throw new RpcError(
                  grpc.status.FAILED_PRECONDITION,
                  `upload ${blobId.toString('hex')} holds ${have} bytes: resume at offset ${have}, not ${offset}`,
                  { kind: 'INVALID' },
                );
              size = have;
            } else {
              if (offset !== 0) throw invalid('a new upload starts at offset 0');
              blobId = randomBytes(BLOB_ID_BYTES);
              start = true;
            }
          } else if ((m.storage || '1') !== st)
            throw invalid('every message of an upload names the same storage');
          else if (m.blobId.length && !m.blobId.equals(blobId!))
            throw invalid('every message of an upload names the same blob');
          const data = m.data ?? Buffer.alloc(0);
          if (size + data.length > node.config.limits.maxBlobBytes)
            throw node.limits.exceeded(
              'max_blob_bytes',
              `a blob of more than ${node.config.limits.maxBlobBytes} bytes (ZEORAFT_MAX_BLOB_BYTES)`,
            );
          if (data.length || start) size = await replicate(call, st, blobId!, size, data, start);
        })
        .then(
          () => {
            if (!settled) call.resume();
          },
          (e: unknown) => {
            settle(e);
            call.resume(); // drain what the client still sends; its answer is the error
          },
        );
    });
    call.on('end', () => {
      void chain.then(() => {
        if (st === undefined) return settle(invalid('an upload needs at least one message'));
        settle(null, { blobId, size });
      });
    });
    call.on('error', (e) => settle(e));
    call.on('cancelled', () =>
      settle(new RpcError(grpc.status.CANCELLED, 'the client cancelled the upload')),
    );
  };

  return {
    UploadBlob,

    BlobUploadStatus: ctx.unary<BlobUploadStatusRequest__Output, BlobUploadStatusResponse>(
      'BlobUploadStatus',
      async (call) => {
        const st = ctx.storageName(call.request.storage);
        const blobId = blobIdArg(call.request.blobId, 'blob_id');
        const size = await node.store.blobUploadSize(st, blobId);
        if (size === undefined)
          throw new RpcError(
            grpc.status.NOT_FOUND,
            `no open upload ${blobId.toString('hex')} (committed, expired or never started)`,
            { kind: 'NOT_FOUND' },
          );
        return { size };
      },
    ),

    DownloadBlob: ctx.serverStream<DownloadBlobRequest__Output, BlobChunk>(
      'DownloadBlob',
      async (call) => {
        const st = ctx.storageName(call.request.storage);
        const oid = requireId(call.request.oid, 'oid');
        const serial = requireId(call.request.serial, 'serial');
        const offset = Number(call.request.offset);
        await ctx.fresh(call, call.request.seenTid);
        const blob = await node.store.blobOf(st, oid, serial);
        if (!Number.isSafeInteger(offset) || offset > blob.size)
          throw new RpcError(
            grpc.status.OUT_OF_RANGE,
            `offset ${offset} is past the blob's ${blob.size} bytes`,
            { kind: 'INVALID' },
          );
        let cancelled = false;
        call.on('cancelled', () => (cancelled = true));
        let pos = 0;
        if (blob.size === 0) call.write({ offset: 0, size: 0, data: Buffer.alloc(0) });
        for await (const chunk of node.store.blobChunks(st, blob.blobId, blob.size)) {
          if (cancelled) return;
          const end = pos + chunk.length;
          if (end > offset) {
            const data = chunk.subarray(Math.max(0, offset - pos));
            const ok = call.write({ offset: end - data.length, size: blob.size, data });
            if (!ok) await new Promise((resolve) => call.once('drain', resolve));
          }
          pos = end;
        }
        call.end();
      },
    ),
  };
}
