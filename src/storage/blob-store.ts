/**
 * Blobs in the replicated state: ZODB blob data kept beside the object revisions, written through
 * the Raft log in bounded chunks, so a committed blob is on every replica (and in every snapshot)
 * like any other record.
 *
 * Life of a blob:
 *   upload     BlobChunkCmd commands append chunks of at most BLOB_CHUNK_BYTES_MAX bytes, in
 *              order, to an upload named by a random 16-byte id (U record, A records). Nothing
 *              refers to it yet; an upload no transaction commits is dropped after
 *              BLOB_UPLOAD_EXPIRY_MS without a new chunk (by the replicated clock: command TIDs),
 *              and at most BLOB_UPLOADS_MAX are open at once.
 *   vote       a store naming the upload (StoreOp.blob_id) holds it: it is not expired while the
 *              vote lives, and another transaction cannot name it; an abort drops it.
 *   commit     the revision records the blob id and size; the upload becomes a committed blob
 *              (B record) named by one revision. Undo makes a new revision name the blob of the
 *              revision it restores (the blob's count of revisions goes up).
 *   pack       `dropRevisionBlob` is called for every revision pack removes: the blob goes with the
 *              last revision that names it.
 *
 * Memory: a chunk is the unit everywhere (one log entry, one LevelDB value, one read), so no path
 * holds more than a few chunks of one blob, however large it is.
 *
 * Everything here runs inside the object store's deterministic apply (reads through its overlay,
 * writes into its batch), except the reads at the end (`readBlobChunks`).
 */
import { assert } from '../util/assert';
import { hex, tidToTime } from '../util/ids';
import {
  BlobChunk,
  BlobRecord,
  BlobUpload,
  Revision,
  StoreOp,
  blobRecordCodec,
  blobUploadCodec,
} from './codec';
import { StorageError } from './errors';
import * as K from './keys';

/** Bytes of a blob id (random, chosen by the node that starts the upload). */
export const BLOB_ID_BYTES = 16;
/** Largest chunk of one BlobChunkCmd (one Raft entry, one LevelDB value). */
export const BLOB_CHUNK_BYTES_MAX = 1 << 20;
/** Uploads open (not committed, not expired) at once across all storages; more are refused. */
export const BLOB_UPLOADS_MAX = 1000;
/** An upload without a new chunk for this long (by command TIDs) is dropped, unless a vote holds it. */
export const BLOB_UPLOAD_EXPIRY_MS = 30 * 60_000;
/** Expired uploads dropped by one chunk command at most (each deletes its chunks). */
const BLOB_EXPIRIES_PER_COMMAND_MAX = 4;
/** Chunks of one blob at most (u32 chunk numbers in the keys). */
const BLOB_CHUNKS_MAX = 0xffff_ffff;

type Op = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** What the blob state needs from the apply running it: reads that see this command's writes. */
export interface BlobApplyContext {
  read(key: Buffer): Promise<Buffer | undefined>;
  put(key: Buffer, value: Buffer): void;
  del(key: Buffer): void;
}

/** An open upload in memory: least recently used first (the order of expiry). */
interface UploadEntry {
  storage: string;
  blobId: Buffer;
  usedIndex: number;
  /** Latin1 string of the TID (a small Buffer would keep a larger one alive). */
  usedTid: string;
}

function buf(b: Uint8Array | undefined): Buffer {
  if (!b) return Buffer.alloc(0);
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

function uploadName(st: string, blobId: Uint8Array): string {
  return `${st}\0${hex(blobId)}`;
}

function invalid(message: string): StorageError {
  return new StorageError('INVALID', message);
}

export function isBlobId(b: Uint8Array | undefined): b is Uint8Array {
  return b !== undefined && b.length === BLOB_ID_BYTES;
}

/** A store's blob id, or undefined when the store has none. */
export function storeBlobId(s: StoreOp): Buffer | undefined {
  return s.blobId && s.blobId.length ? buf(s.blobId) : undefined;
}

/**
 * The open uploads and the votes holding them. Invariant: the same entries in the same order on
 * every replica at the same index (rebuilt from the U records' used indexes when loaded).
 */
export class BlobUploads {
  private readonly uploads = new Map<string, UploadEntry>();
  /** uploadName -> the voted transaction (storage \0 txn id) whose store names it. */
  private readonly held = new Map<string, string>();

  clear(): void {
    this.uploads.clear();
    this.held.clear();
  }

  get open(): number {
    return this.uploads.size;
  }

  /** Rebuild from the U records (any order). */
  load(records: Array<{ key: Buffer; value: Buffer }>): void {
    this.uploads.clear();
    const entries: UploadEntry[] = records.map(({ key, value }) => {
      const rec = blobUploadCodec.decode(value);
      return {
        storage: K.keyStorage(key),
        blobId: Buffer.from(key.subarray(key.length - BLOB_ID_BYTES)),
        usedIndex: Number(rec.usedIndex),
        usedTid: buf(rec.usedTid).toString('latin1'),
      };
    });
    entries.sort((a, b) => a.usedIndex - b.usedIndex);
    for (const e of entries) this.uploads.set(uploadName(e.storage, e.blobId), e);
  }

  /** A vote's stores hold the uploads they name (called when its locks are taken). */
  hold(st: string, txnId: string, stores: StoreOp[]): void {
    for (const s of stores) {
      const id = storeBlobId(s);
      if (!id || !this.uploads.has(uploadName(st, id))) continue;
      const name = uploadName(st, id);
      const holder = this.held.get(name);
      assert(holder === undefined, `upload ${hex(id)} held by two votes`);
      this.held.set(name, `${st}\0${txnId}`);
    }
  }

  /** The vote's uploads are no longer held (finish, abort, or a new vote replacing it). */
  release(st: string, txnId: string): void {
    const holder = `${st}\0${txnId}`;
    for (const [name, h] of this.held) if (h === holder) this.held.delete(name);
  }

  /**
   * Apply one chunk. `now` is the command's time (max of its TID and the last TID), `index` its
   * log index. Every refusal comes before anything changes.
   */
  async applyChunk(
    c: BlobChunk,
    index: number,
    now: Buffer,
    ctx: BlobApplyContext,
  ): Promise<{ size: number }> {
    const st = c.storage;
    if (!isBlobId(c.blobId)) throw invalid(`a blob id must be ${BLOB_ID_BYTES} bytes`);
    const id = buf(c.blobId);
    const data = buf(c.data);
    const offset = Number(c.offset ?? 0);
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw invalid('a blob chunk offset must be >= 0');
    if (data.length > BLOB_CHUNK_BYTES_MAX)
      throw invalid(
        `a blob chunk must be at most ${BLOB_CHUNK_BYTES_MAX} bytes, got ${data.length}`,
      );
    const name = uploadName(st, id);
    const raw = await ctx.read(K.blobUploadKey(st, id));
    if (!raw) {
      if (await ctx.read(K.blobKey(st, id)))
        throw invalid(`blob ${hex(id)} is committed: it cannot be appended to`);
      if (offset !== 0)
        throw invalid(
          `no upload of blob ${hex(id)} (it expired, or never started): start again at offset 0`,
        );
      const oldest = this.uploads.values().next();
      if (
        this.uploads.size >= BLOB_UPLOADS_MAX &&
        (oldest.done ||
          !this.expired(oldest.value, now) ||
          this.held.has(this.nameOf(oldest.value)))
      )
        throw new StorageError(
          'LIMIT',
          `${this.uploads.size} blob uploads are open (at most ${BLOB_UPLOADS_MAX}); retry later`,
        );
      await this.expire(now, ctx);
      const rec: BlobUpload = { size: data.length, chunks: 1, usedIndex: index, usedTid: now };
      ctx.put(K.blobChunkKey(st, id, 0), data);
      ctx.put(K.blobUploadKey(st, id), blobUploadCodec.encode(rec));
      this.use(name, {
        storage: st,
        blobId: id,
        usedIndex: index,
        usedTid: now.toString('latin1'),
      });
      return { size: rec.size };
    }
    const rec = blobUploadCodec.decode(raw);
    const size = Number(rec.size);
    const chunks = Number(rec.chunks);
    if (offset < size) {
      // A retried chunk (its first attempt was applied, its answer lost): the one ending at size.
      const last = await ctx.read(K.blobChunkKey(st, id, chunks - 1));
      if (offset + data.length === size && last && last.length === data.length) return { size };
      throw invalid(
        `blob ${hex(id)} already has ${size} bytes: a chunk at offset ${offset} is neither the next one nor a retry of the last`,
      );
    }
    if (offset > size)
      throw invalid(
        `blob ${hex(id)} has ${size} bytes: the next chunk starts there, not at ${offset}`,
      );
    if (data.length === 0) {
      if (offset === 0 && chunks === 1) return { size }; // a retried start of an empty blob
      throw invalid('an empty blob chunk is only the first one');
    }
    if (chunks >= BLOB_CHUNKS_MAX) throw invalid(`blob ${hex(id)} has too many chunks`);
    if (this.held.has(name)) throw invalid(`blob ${hex(id)} is named by a voted transaction`);
    await this.expire(now, ctx, name);
    const next: BlobUpload = {
      size: size + data.length,
      chunks: chunks + 1,
      usedIndex: index,
      usedTid: now,
    };
    ctx.put(K.blobChunkKey(st, id, chunks), data);
    ctx.put(K.blobUploadKey(st, id), blobUploadCodec.encode(next));
    this.use(name, { storage: st, blobId: id, usedIndex: index, usedTid: now.toString('latin1') });
    return { size: next.size };
  }

  /**
   * Check the blob stores of a transaction before it is voted or committed (throws INVALID, and
   * changes nothing): each names an open upload no other vote holds (or, restoring an earlier
   * revision, a committed blob), and no upload is named twice.
   */
  async checkStores(
    st: string,
    stores: StoreOp[],
    txnKey: string | undefined,
    ctx: BlobApplyContext,
  ): Promise<void> {
    const seen = new Set<string>();
    for (const s of stores) {
      const id = storeBlobId(s);
      if (!id) continue;
      if (!isBlobId(id)) throw invalid(`a blob id must be ${BLOB_ID_BYTES} bytes`);
      if (s.delete) throw invalid(`a deletion of ${hex(s.oid)} cannot have a blob`);
      const name = uploadName(st, id);
      if (seen.has(name)) throw invalid(`blob ${hex(id)} is named twice in one transaction`);
      seen.add(name);
      if (await ctx.read(K.blobUploadKey(st, id))) {
        const holder = this.held.get(name);
        if (holder !== undefined && holder !== txnKey)
          throw invalid(`blob ${hex(id)} is named by another voted transaction`);
        continue;
      }
      // Only a store restoring an earlier revision (undo) names a committed blob: the server builds
      // those; a client's store names its own upload.
      if (s.dataTid?.length && (await ctx.read(K.blobKey(st, id)))) continue;
      throw invalid(
        `blob ${hex(id)} of object ${hex(s.oid)} is not an open upload (it expired after ${BLOB_UPLOAD_EXPIRY_MS} ms unused, or was never uploaded)`,
      );
    }
  }

  /**
   * A committed store's blob: the upload becomes a committed blob named by this revision, or a
   * committed blob gains a revision (unless `votedRef`: the vote being finished took that reference
   * already, see `holdCommitted`). Call after `checkStores` passed (cannot fail then).
   */
  async commitStore(
    st: string,
    id: Buffer,
    votedRef: boolean,
    ctx: BlobApplyContext,
  ): Promise<{ size: number }> {
    const up = await ctx.read(K.blobUploadKey(st, id));
    if (up) {
      const u = blobUploadCodec.decode(up);
      const rec: BlobRecord = { size: Number(u.size), chunks: Number(u.chunks), refs: 1 };
      ctx.del(K.blobUploadKey(st, id));
      ctx.put(K.blobKey(st, id), blobRecordCodec.encode(rec));
      const name = uploadName(st, id);
      this.uploads.delete(name);
      this.held.delete(name);
      return { size: rec.size };
    }
    const raw = await ctx.read(K.blobKey(st, id));
    assert(raw, `blob ${hex(id)} committed without an upload or a record`);
    const rec = blobRecordCodec.decode(raw);
    if (!votedRef)
      ctx.put(K.blobKey(st, id), blobRecordCodec.encode({ ...rec, refs: Number(rec.refs) + 1 }));
    return { size: Number(rec.size) };
  }

  /**
   * A vote's stores that name a committed blob (undo restoring a revision with a blob) take
   * (`delta` 1) or give back (-1) a reference to it, so that a pack between vote and finish cannot
   * drop the blob the finish will name.
   */
  async holdCommitted(
    st: string,
    stores: StoreOp[],
    delta: 1 | -1,
    ctx: BlobApplyContext,
  ): Promise<void> {
    for (const s of stores) {
      const id = storeBlobId(s);
      if (!id || !isBlobId(id) || !s.dataTid?.length) continue;
      if (await ctx.read(K.blobUploadKey(st, id))) continue;
      const raw = await ctx.read(K.blobKey(st, id));
      if (!raw) continue;
      if (delta > 0) {
        const rec = blobRecordCodec.decode(raw);
        ctx.put(K.blobKey(st, id), blobRecordCodec.encode({ ...rec, refs: Number(rec.refs) + 1 }));
      } else await releaseBlob(st, id, ctx);
    }
  }

  /** An aborted vote's uploads are dropped (its transaction is over). */
  async dropUploads(st: string, stores: StoreOp[], ctx: BlobApplyContext): Promise<void> {
    for (const s of stores) {
      const id = storeBlobId(s);
      if (!id || !isBlobId(id)) continue;
      const raw = await ctx.read(K.blobUploadKey(st, id));
      if (!raw) continue;
      this.dropUpload(st, id, Number(blobUploadCodec.decode(raw).chunks), ctx);
    }
  }

  private dropUpload(st: string, id: Buffer, chunks: number, ctx: BlobApplyContext): void {
    for (let i = 0; i < chunks; i++) ctx.del(K.blobChunkKey(st, id, i));
    ctx.del(K.blobUploadKey(st, id));
    const name = uploadName(st, id);
    this.uploads.delete(name);
    this.held.delete(name);
  }

  private nameOf(e: UploadEntry): string {
    return uploadName(e.storage, e.blobId);
  }

  private expired(e: UploadEntry, now: Buffer): boolean {
    return tidToTime(now) - tidToTime(Buffer.from(e.usedTid, 'latin1')) > BLOB_UPLOAD_EXPIRY_MS;
  }

  /** Drop up to BLOB_EXPIRIES_PER_COMMAND_MAX expired uploads, oldest first (never `keep`). */
  private async expire(now: Buffer, ctx: BlobApplyContext, keep?: string): Promise<void> {
    let dropped = 0;
    let looked = 0;
    for (const e of [...this.uploads.values()]) {
      if (dropped >= BLOB_EXPIRIES_PER_COMMAND_MAX || looked++ >= 4 * BLOB_EXPIRIES_PER_COMMAND_MAX)
        return;
      if (!this.expired(e, now)) return; // least recently used first: the rest are newer
      const name = this.nameOf(e);
      if (name === keep || this.held.has(name)) continue;
      const raw = await ctx.read(K.blobUploadKey(e.storage, e.blobId));
      assert(raw, `open upload ${hex(e.blobId)} has no record`);
      this.dropUpload(e.storage, e.blobId, Number(blobUploadCodec.decode(raw).chunks), ctx);
      dropped++;
    }
  }

  private use(name: string, e: UploadEntry): void {
    this.uploads.delete(name);
    this.uploads.set(name, e);
  }
}

/**
 * Pack removes a revision: its blob loses one naming revision, and goes (chunks and record) with
 * the last. The one routine every pack path calls for each revision it drops.
 */
export async function dropRevisionBlob(
  st: string,
  rev: Revision,
  ctx: BlobApplyContext,
): Promise<void> {
  const id = rev.blobId && rev.blobId.length ? buf(rev.blobId) : undefined;
  if (id) await releaseBlob(st, id, ctx);
}

/** One reference to a committed blob is gone; the last one drops its chunks and record. */
async function releaseBlob(st: string, id: Buffer, ctx: BlobApplyContext): Promise<void> {
  const raw = await ctx.read(K.blobKey(st, id));
  assert(raw, `a reference to blob ${hex(id)}, which has no record`);
  const rec = blobRecordCodec.decode(raw);
  const refs = Number(rec.refs) - 1;
  if (refs > 0) {
    ctx.put(K.blobKey(st, id), blobRecordCodec.encode({ ...rec, refs }));
    return;
  }
  for (let i = 0; i < Number(rec.chunks); i++) ctx.del(K.blobChunkKey(st, id, i));
  ctx.del(K.blobKey(st, id));
}

/** A context over a batch: reads see this command's own writes first (`local`), then `read`. */
export function blobContext(
  read: (key: Buffer) => Promise<Buffer | undefined>,
  ops: Op[],
): BlobApplyContext {
  const local = new Map<string, Buffer | null>();
  return {
    async read(key) {
      const k = key.toString('latin1');
      if (local.has(k)) return local.get(k) ?? undefined;
      return read(key);
    },
    put(key, value) {
      local.set(key.toString('latin1'), value);
      ops.push({ type: 'put', key, value });
    },
    del(key) {
      local.set(key.toString('latin1'), null);
      ops.push({ type: 'del', key });
    },
  };
}

/** Check a blob record of a snapshot (throws when malformed). */
export function checkBlobRecord(key: Buffer, value: Buffer): void {
  switch (key[0]) {
    case K.TAG.blobUpload:
      blobUploadCodec.decode(value);
      return;
    case K.TAG.blob:
      blobRecordCodec.decode(value);
      return;
    case K.TAG.blobChunk:
      assert(value.length <= BLOB_CHUNK_BYTES_MAX, 'blob chunk larger than a chunk');
      return;
  }
}
