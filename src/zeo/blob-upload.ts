/**
 * A blob arriving on a ZEO connection (storeBlobStart, storeBlobChunk..., storeBlobEnd: ZEO's
 * non-shared blob mode) turned into replicated chunks: the client's small messages (59000 bytes in
 * ZEO 5/6) are gathered into chunks of BLOB_CHUNK_BYTES_MAX and proposed one at a time, in order
 * (storage/blob-store.ts). Memory stays bounded by a few chunks per connection: while more than
 * BLOB_QUEUED_BYTES_MAX wait to be replicated, the connection stops reading (`pressure`), so a
 * client sending faster than the cluster replicates is slowed down by TCP, not buffered.
 *
 * One-way calls cannot answer: a failure (the blob over ZEORAFT_MAX_BLOB_BYTES, a refused chunk)
 * is kept and reported when the transaction naming the blob votes.
 */
import { randomBytes } from 'node:crypto';
import type { Command } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { BLOB_CHUNK_BYTES_MAX, BLOB_ID_BYTES } from '../storage/blob-store';
import type { Reservation } from '../server/limits';
import { storageError } from './errors';

/** Bytes received and not yet replicated past which the connection stops reading. */
export const BLOB_QUEUED_BYTES_MAX = 2 * BLOB_CHUNK_BYTES_MAX;
/** Attempts of one chunk whose outcome was unknown (a chunk retried at its offset is idempotent). */
const CHUNK_ATTEMPTS_MAX = 5;
const CHUNK_RETRY_PAUSE_MS = 200;

export interface BlobUploadDeps {
  storage: string;
  /** ZEORAFT_MAX_BLOB_BYTES. */
  maxBlobBytes: number;
  propose(cmd: Command): Promise<ApplyResult>;
  /** A share of the node's transaction memory budget for a chunk while it is replicated. */
  reserve(bytes: number): Reservation;
  /** Stop (true) or resume (false) reading the client's messages. */
  pressure(paused: boolean): void;
  /** Whether an attempt that failed this way may be retried (outcome unknown). */
  retryable(e: unknown): boolean;
}

export class ZeoBlobUpload {
  readonly blobId = randomBytes(BLOB_ID_BYTES);
  /** Bytes received from the client so far. */
  private received = 0;
  /** Bytes handed to the chunk chain so far (the next chunk's offset). */
  private offset = 0;
  private parts: Buffer[] = [];
  private partsBytes = 0;
  /** Bytes handed to the chain and not yet replicated. */
  private queued = 0;
  private paused = false;
  private chain: Promise<void> = Promise.resolve();
  private failure: Error | undefined;
  private stopped = false;

  constructor(private readonly deps: BlobUploadDeps) {}

  /** A storeBlobChunk. */
  push(chunk: Buffer): void {
    if (this.failure || this.stopped) return;
    this.received += chunk.length;
    if (this.received > this.deps.maxBlobBytes) {
      this.fail(
        storageError(
          `a blob of more than ${this.deps.maxBlobBytes} bytes (ZEORAFT_MAX_BLOB_BYTES) was refused`,
        ),
      );
      return;
    }
    this.parts.push(chunk);
    this.partsBytes += chunk.length;
    while (this.partsBytes >= BLOB_CHUNK_BYTES_MAX) this.flush(BLOB_CHUNK_BYTES_MAX);
  }

  /** storeBlobEnd: the rest is sent; resolves with the blob's size once every chunk is replicated. */
  finish(): Promise<number> {
    if (!this.failure && !this.stopped && (this.partsBytes > 0 || this.offset === 0))
      this.flush(this.partsBytes);
    return this.chain.then(() => {
      if (this.failure) throw this.failure;
      return this.received;
    });
  }

  /** The connection closed: nothing more is proposed (what was replicated expires). */
  stop(): void {
    this.stopped = true;
    this.parts = [];
    this.partsBytes = 0;
  }

  private fail(e: Error): void {
    this.failure ??= e;
    this.parts = [];
    this.partsBytes = 0;
    this.setPressure(false);
  }

  private setPressure(paused: boolean): void {
    if (paused === this.paused) return;
    this.paused = paused;
    this.deps.pressure(paused);
  }

  /** Hand the first `n` buffered bytes to the chain as one chunk. */
  private flush(n: number): void {
    let data: Buffer;
    if (this.parts.length === 1 && this.parts[0].length === n) {
      data = this.parts[0];
      this.parts = [];
    } else {
      data = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const p = this.parts[0];
        const take = Math.min(p.length, n - filled);
        p.copy(data, filled, 0, take);
        filled += take;
        if (take === p.length) this.parts.shift();
        else this.parts[0] = p.subarray(take);
      }
    }
    this.partsBytes -= n;
    const offset = this.offset;
    this.offset += n;
    this.queued += n;
    if (this.queued > BLOB_QUEUED_BYTES_MAX) this.setPressure(true);
    this.chain = this.chain.then(async () => {
      try {
        if (!this.failure && !this.stopped) await this.replicate(offset, data);
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
      } finally {
        this.queued -= n;
        if (this.queued <= BLOB_CHUNK_BYTES_MAX) this.setPressure(false);
      }
    });
  }

  private async replicate(offset: number, data: Buffer): Promise<void> {
    const memory = this.deps.reserve(data.length);
    try {
      for (let attempt = 1; ; attempt++) {
        let r: ApplyResult;
        try {
          r = await this.deps.propose({
            blobChunk: { storage: this.deps.storage, blobId: this.blobId, offset, data },
          });
        } catch (e) {
          if (attempt >= CHUNK_ATTEMPTS_MAX || !this.deps.retryable(e) || this.stopped) throw e;
          await new Promise((res) => setTimeout(res, CHUNK_RETRY_PAUSE_MS));
          continue;
        }
        if (!r.ok) throw storageError(`blob upload refused: ${r.error.message}`);
        return;
      }
    } finally {
      memory.release();
    }
  }
}
