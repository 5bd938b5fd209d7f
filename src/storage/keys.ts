/**
 * LevelDB key layout of the object store. Every key starts with a one-byte tag; per-storage
 * keys follow with the storage name as [length byte][utf-8 name] so one storage's keys form a
 * contiguous range and names cannot collide.
 *
 *   G                          global meta: applied index (8) | last TID (8)
 *   S <st>                     StorageMeta
 *   C <st> <oid>               current serial (8 bytes) of an existing object
 *   R <st> <oid> <tid>         Revision written by <tid>
 *   T <st> <tid>               TxnRecord
 *   N <st> <n>                 TID (8) of the storage's n-th transaction (n: u64, from 1): with the
 *                              count in StorageMeta, the k-th newest transaction is one seek away
 *   P <st> <txn id>            PreparedRecord (voted, not yet finished)
 *   F <st> <txn id>            TID of a finished two-phase transaction (idempotent Finish)
 *   X <st> <txn id>            deadline (8, ms) of a voted transaction aborted when it expired: its
 *                              id cannot be voted again, so one transaction holds locks at most
 *                              one transaction timeout
 *   M <member id>              MemberRecord: a cluster member's addresses
 *   E                          TID (8): the newest used-TID of any client session forgotten (the
 *                              session watermark; absent while none was)
 *   E <session id>             SessionRecord: a client session's last answer (exactly-once commits)
 *   U <st> <blob id>           BlobUpload: a blob being uploaded, not committed yet
 *   B <st> <blob id>           BlobRecord: a committed blob (its size, chunks, revisions naming it)
 *   A <st> <blob id> <n>       the n-th chunk (u32, from 0) of a blob, uploaded or committed
 *   Q <st> <oid>               a pack's mark on an object (pack-steps.ts): touched since the pack
 *                              began, or doomed (found unreachable), with the pack's id
 *   I                          a snapshot install in progress: applied index (8) of the snapshot
 *                              and phase (1): staging, switching or copied (see restore)
 *   X <key>                    a record of a snapshot being installed, staged beside the state
 */
import { ID_BYTES } from '../util/ids';

export const TAG = {
  global: 0x47, // G
  storage: 0x53, // S
  current: 0x43, // C
  revision: 0x52, // R
  txn: 0x54, // T
  txnNumber: 0x4e, // N
  prepared: 0x50, // P
  finished: 0x46, // F
  expired: 0x58, // X
  member: 0x4d, // M
  session: 0x45, // E
  blobUpload: 0x55, // U
  blob: 0x42, // B
  blobChunk: 0x41, // A
  install: 0x49, // I
  packMark: 0x51, // Q
  staged: 0x5a, // Z (sorts after every other tag; distinct from each, asserted below)
} as const;

// Every tag names one kind of record, and the staged copy of a snapshot sorts after all of them
// (an install clears the state below it and copies the range above it).
assertTags();
function assertTags(): void {
  const tags = Object.values(TAG);
  if (new Set(tags).size !== tags.length) throw new Error('two key tags share a value');
  if (tags.some((t) => t > TAG.staged)) throw new Error('the staged tag must sort after every tag');
}

export function memberKey(id: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.member]), Buffer.from(id, 'utf8')]);
}

export const MAX_STORAGE_NAME_BYTES = 64;

export function storagePart(storage: string): Buffer {
  const name = Buffer.from(storage, 'utf8');
  if (name.length === 0 || name.length > MAX_STORAGE_NAME_BYTES) {
    throw new RangeError(`storage name must be 1..${MAX_STORAGE_NAME_BYTES} bytes`);
  }
  return Buffer.concat([Buffer.from([name.length]), name]);
}

export const sessionWatermarkKey = Buffer.from([TAG.session]);

export function sessionKey(id: string): Buffer {
  return Buffer.concat([sessionWatermarkKey, Buffer.from(id, 'utf8')]);
}

export const globalKey = Buffer.from([TAG.global]);
export const installKey = Buffer.from([TAG.install]);

export function storageKey(st: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.storage]), storagePart(st)]);
}

export function currentPrefix(st: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.current]), storagePart(st)]);
}

export function currentKey(st: string, oid: Uint8Array): Buffer {
  return Buffer.concat([currentPrefix(st), oid]);
}

export function revisionPrefix(st: string, oid: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([TAG.revision]), storagePart(st), oid]);
}

export function revisionKey(st: string, oid: Uint8Array, tid: Uint8Array): Buffer {
  return Buffer.concat([revisionPrefix(st, oid), tid]);
}

/** The TID at the end of a revision key. */
export function revisionKeyTid(key: Buffer): Buffer {
  return key.subarray(key.length - ID_BYTES);
}

export function packMarkPrefix(st: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.packMark]), storagePart(st)]);
}

export function packMarkKey(st: string, oid: Uint8Array): Buffer {
  return Buffer.concat([packMarkPrefix(st), oid]);
}

export function txnPrefix(st: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.txn]), storagePart(st)]);
}

export function txnKey(st: string, tid: Uint8Array): Buffer {
  return Buffer.concat([txnPrefix(st), tid]);
}

export function txnNumberKey(st: string, n: number): Buffer {
  const num = Buffer.alloc(8);
  num.writeBigUInt64BE(BigInt(n));
  return Buffer.concat([Buffer.from([TAG.txnNumber]), storagePart(st), num]);
}

export function preparedPrefix(st: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.prepared]), storagePart(st)]);
}

export function preparedKey(st: string, txnId: string): Buffer {
  return Buffer.concat([preparedPrefix(st), Buffer.from(txnId, 'utf8')]);
}

export function finishedKey(st: string, txnId: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.finished]), storagePart(st), Buffer.from(txnId, 'utf8')]);
}

export function expiredKey(st: string, txnId: string): Buffer {
  return Buffer.concat([Buffer.from([TAG.expired]), storagePart(st), Buffer.from(txnId, 'utf8')]);
}

/** The storage name encoded in a per-storage key. */
export function keyStorage(key: Buffer): string {
  const len = key[1];
  return key.subarray(2, 2 + len).toString('utf8');
}

/** The exclusive upper bound of all keys starting with `prefix`. */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
}

export function blobUploadKey(st: string, blobId: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([TAG.blobUpload]), storagePart(st), blobId]);
}

export function blobKey(st: string, blobId: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([TAG.blob]), storagePart(st), blobId]);
}

export function blobChunkPrefix(st: string, blobId: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([TAG.blobChunk]), storagePart(st), blobId]);
}

export function blobChunkKey(st: string, blobId: Uint8Array, n: number): Buffer {
  const num = Buffer.alloc(4);
  num.writeUInt32BE(n);
  return Buffer.concat([blobChunkPrefix(st, blobId), num]);
}
