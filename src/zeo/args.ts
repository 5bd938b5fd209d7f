/** Checking ZEO call arguments: a wrong type is a Python TypeError reply naming the argument. */
import { ID_BYTES } from '../util/ids';
import { typeError } from './errors';

export function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

export function bytesArg(v: unknown, name: string): Buffer {
  if (v instanceof Uint8Array) return toBuffer(v);
  throw typeError(`${name} must be bytes`);
}

/** An 8-byte OID or TID. */
export function idArg(v: unknown, name: string): Buffer {
  const b = bytesArg(v, name);
  if (b.length !== ID_BYTES) throw typeError(`${name} must be 8 bytes, got ${b.length}`);
  return b;
}

export function optionalIdArg(v: unknown, name: string): Buffer | undefined {
  return v === null || v === undefined ? undefined : idArg(v, name);
}

/**
 * The base serial of a store: 8 bytes, or None (or any other non-serial) for a new object. A
 * FileStorage ignores the serial of a store that creates an object, and ZODB's own tests send
 * None or the str '\0' * 8 there; here such a serial reads as z64, which conflicts with every
 * existing object and matches only a new one.
 */
export function baseSerialArg(v: unknown): Buffer | undefined {
  if (v instanceof Uint8Array && v.length === ID_BYTES) return toBuffer(v);
  if (v instanceof Uint8Array) throw typeError(`serial must be 8 bytes, got ${v.length}`);
  if (v === null || v === undefined || typeof v === 'string') return undefined;
  throw typeError('serial must be bytes or None');
}

export function intArg(v: unknown, name: string, dflt?: number): number {
  if ((v === undefined || v === null) && dflt !== undefined) return dflt;
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'boolean') return v ? 1 : 0;
  throw typeError(`${name} must be an integer`);
}

export function numberArg(v: unknown, name: string): number {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'bigint') return Number(v);
  throw typeError(`${name} must be a number`);
}

/** Text given as str or as UTF-8 bytes (ZODB 5 sends user and description as bytes). */
export function textArg(v: unknown, name: string, maxBytes = 64 * 1024): string {
  let s: string;
  if (v === null || v === undefined) s = '';
  else if (typeof v === 'string') s = v;
  else if (v instanceof Uint8Array) s = toBuffer(v).toString('utf8');
  else throw typeError(`${name} must be str or bytes`);
  if (Buffer.byteLength(s) > maxBytes) throw typeError(`${name} is longer than ${maxBytes} bytes`);
  return s;
}

/** A transaction handle: ZEO clients send Python's id(txn), an integer; any scalar is accepted. */
export function txnHandleArg(v: unknown, name = 'transaction id'): string {
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (typeof v === 'string') return `s:${v}`;
  if (v instanceof Uint8Array) return `b:${toBuffer(v).toString('hex')}`;
  throw typeError(`${name} must be an integer`);
}

export function arity(args: unknown[], method: string, min: number, max = min): void {
  if (args.length < min || args.length > max)
    throw typeError(
      `${method}() takes ${min === max ? min : `${min} to ${max}`} arguments (${args.length} given)`,
    );
}
