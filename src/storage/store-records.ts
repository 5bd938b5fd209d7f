/**
 * What the object store's parts share about its records: the database and batch types, the
 * current-serial (C) record's value, and the small conversions and point reads every part uses.
 */
import type { Level } from 'level';
import { ID_BYTES, Z64, p64, u64 } from '../util/ids';
import { type StorageMeta, revisionCodec } from './codec';
import * as K from './keys';

export type Db = Level<Buffer, Buffer>;
export type BatchOp = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };
/** A point read of one key (the database's, or one that sees the batch being applied). */
export type Get = (key: Buffer) => Promise<Buffer | undefined>;

/** The C-record value: the current serial and whether the current revision is a deletion. */
export function currentValue(serial: Buffer, deleted: boolean): Buffer {
  return Buffer.concat([serial, Buffer.from([deleted ? 1 : 0])]);
}

export function parseCurrent(v: Buffer): { serial: Buffer; deleted: boolean } {
  return { serial: v.subarray(0, ID_BYTES), deleted: v[ID_BYTES] === 1 };
}

export function buf(b: Uint8Array | undefined): Buffer {
  if (!b) return Buffer.alloc(0);
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** A serial as sent by a client: empty means "new object" (z64). */
export function serialOf(b: Uint8Array | undefined): Buffer {
  return b && b.length > 0 ? buf(b) : Z64;
}

export const LAST_OID = (1n << 64n) - 1n;

export function isLastOid(oid: Uint8Array): boolean {
  return u64(oid) === LAST_OID;
}

export function emptyMeta(): StorageMeta {
  return { lastTid: Z64, nextOid: p64(1n), packTid: Z64, objectCount: 0 };
}

/** The data of revision `serial` of an object, read with `get`; undefined when there is none. */
export async function revisionData(
  get: Get,
  st: string,
  oid: Buffer,
  serial: Buffer,
): Promise<Buffer | undefined> {
  const r = await get(K.revisionKey(st, oid, serial));
  return r ? buf(revisionCodec.decode(r).data) : undefined;
}

/** The newest revision of an object written before `tid` (one seek), if any. */
export async function revisionBefore(
  db: Db,
  st: string,
  oid: Buffer,
  tid: Buffer,
): Promise<{ tid: Buffer; value: Buffer } | undefined> {
  for await (const [key, value] of db.iterator({
    gte: K.revisionPrefix(st, oid),
    lt: K.revisionKey(st, oid, tid),
    reverse: true,
    limit: 1,
  })) {
    return { tid: Buffer.from(K.revisionKeyTid(key)), value };
  }
  return undefined;
}
