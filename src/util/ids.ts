/**
 * OIDs and TIDs: 8-byte big-endian unsigned integers. TIDs use ZODB's TimeStamp layout:
 * the high 4 bytes count minutes since 1900-01-01 00:00 UTC as
 *   ((((year - 1900) * 12 + month - 1) * 31 + day - 1) * 24 + hour) * 60 + minute
 * and the low 4 bytes are the seconds within that minute scaled by 2^32 / 60.
 */
import { assert } from './assert';

export const ID_BYTES = 8;
/** The all-zero id: "no TID" / the root OID. */
export const Z64: Buffer = Buffer.alloc(ID_BYTES);
const U64_MAX = (1n << 64n) - 1n;

export function p64(n: bigint): Buffer {
  assert(n >= 0n && n <= U64_MAX, `p64 out of range: ${n}`);
  const b = Buffer.alloc(ID_BYTES);
  b.writeBigUInt64BE(n);
  return b;
}

export function u64(b: Uint8Array): bigint {
  assert(b.length === ID_BYTES, `u64 needs 8 bytes, got ${b.length}`);
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).readBigUInt64BE(0);
}

export function isId(b: unknown): b is Uint8Array {
  return b instanceof Uint8Array && b.length === ID_BYTES;
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

export function fromHex(s: string): Buffer {
  assert(/^[0-9a-fA-F]{16}$/.test(s), `an id is 16 hex digits, got ${JSON.stringify(s)}`);
  return Buffer.from(s, 'hex');
}

export function idEquals(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

export function idCompare(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

export function idMax(a: Buffer, b: Buffer): Buffer {
  return Buffer.compare(a, b) >= 0 ? a : b;
}

/** The next id: n + 1. */
export function idNext(b: Uint8Array): Buffer {
  return p64(u64(b) + 1n);
}

const SECOND_SCALE = 2 ** 32 / 60;

/** The TID for a wall-clock time in milliseconds since the Unix epoch. */
export function tidFromTime(ms: number): Buffer {
  const d = new Date(ms);
  const minutes =
    ((((d.getUTCFullYear() - 1900) * 12 + d.getUTCMonth()) * 31 + d.getUTCDate() - 1) * 24 +
      d.getUTCHours()) *
      60 +
    d.getUTCMinutes();
  const secs = d.getUTCSeconds() + d.getUTCMilliseconds() / 1000;
  const b = Buffer.alloc(ID_BYTES);
  b.writeUInt32BE(minutes, 0);
  b.writeUInt32BE(Math.min(Math.floor(secs * SECOND_SCALE), 0xffffffff), 4);
  return b;
}

/** The wall-clock time of a TID, in milliseconds since the Unix epoch. */
export function tidToTime(tid: Uint8Array): number {
  const b = Buffer.from(tid.buffer, tid.byteOffset, tid.byteLength);
  let minutes = b.readUInt32BE(0);
  const secs = b.readUInt32BE(4) / SECOND_SCALE;
  const minute = minutes % 60;
  minutes = Math.floor(minutes / 60);
  const hour = minutes % 24;
  minutes = Math.floor(minutes / 24);
  const day = (minutes % 31) + 1;
  minutes = Math.floor(minutes / 31);
  const month = minutes % 12;
  const year = Math.floor(minutes / 12) + 1900;
  return Date.UTC(year, month, day, hour, minute) + secs * 1000;
}

/** A readable UTC rendering of a TID, e.g. 2026-11-25T12:00:00.123Z. */
export function tidToIso(tid: Uint8Array): string {
  return new Date(tidToTime(tid)).toISOString();
}
