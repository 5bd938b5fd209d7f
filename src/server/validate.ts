/** Request validation: every malformed field is an INVALID_ARGUMENT domain error naming the field. */
import { ID_BYTES, Z64 } from '../util/ids';
import { invalidArgument as invalid } from './domain-errors';

export function requireId(b: Buffer | undefined, field: string): Buffer {
  if (!b || b.length === 0) throw invalid(`${field} is required (8 bytes)`);
  if (b.length !== ID_BYTES) throw invalid(`${field} must be exactly 8 bytes, got ${b.length}`);
  return b;
}

/** An optional id: empty means z64 / "none". */
export function optionalId(b: Buffer | undefined, field: string): Buffer | undefined {
  if (!b || b.length === 0) return undefined;
  if (b.length !== ID_BYTES)
    throw invalid(`${field} must be exactly 8 bytes or empty, got ${b.length}`);
  return b;
}

export function serialOrZ64(b: Buffer | undefined, field: string): Buffer {
  return optionalId(b, field) ?? Z64;
}

export const MAX_TEXT_BYTES = 64 * 1024;

export function text(s: string | undefined, field: string, maxBytes = MAX_TEXT_BYTES): string {
  const v = s ?? '';
  if (v.includes('\uFFFD')) throw invalid(`${field} is not valid UTF-8`);
  if (Buffer.byteLength(v) > maxBytes) throw invalid(`${field} is longer than ${maxBytes} bytes`);
  return v;
}

const TXN_ID = /^[\x21-\x7e]{1,64}$/;
export function txnId(s: string | undefined): string {
  if (!s || !TXN_ID.test(s))
    throw invalid('transaction_id must be 1..64 printable ASCII characters');
  return s;
}

export function count(n: number | undefined, field: string, dflt: number, max: number): number {
  const v = n ?? 0;
  if (!Number.isInteger(v) || v < 0) throw invalid(`${field} must be a non-negative integer`);
  if (v === 0) return dflt;
  if (v > max) throw invalid(`${field} must be at most ${max}, got ${v}`);
  return v;
}
