/**
 * The pickle shapes both server-side resolvers (zodb-resolve.ts, zodb-resolve-sets.ts) read and
 * write: the class pickle that starts a ZODB record, and ints, read as any protocol writes them and
 * written as Python's pickler does (`save_long`). Byte patterns are matched; no opcode is executed.
 */
import { PickleReader as Reader, PickleStateError } from './pickle-reader';

/** Digits (text ints) or bytes (binary longs) of a Length value read at most. */
export const INT_BYTES_MAX = 512;

export const PROTO = 0x80;
const FRAME = 0x95;
export const STOP = 0x2e;
export const GLOBAL = 0x63;
const STACK_GLOBAL = 0x93;
const SHORT_BINUNICODE = 0x8c;
const BINUNICODE = 0x58;
const MEMOIZE = 0x94;
const BINPUT = 0x71;
const LONG_BINPUT = 0x72;
const PUT = 0x70;
const INT = 0x49;
const LONG = 0x4c;
const BININT = 0x4a;
const BININT1 = 0x4b;
const BININT2 = 0x4d;
const LONG1 = 0x8a;
const LONG4 = 0x8b;

/** PROTO and FRAME at the start of a pickle; returns the protocol (undefined without PROTO). */
export function header(r: Reader): number | undefined {
  let proto: number | undefined;
  if (r.peek() === PROTO) {
    r.u8();
    proto = r.u8();
    if (proto < 2 || proto > 5) throw new PickleStateError(`unknown pickle protocol ${proto}`);
  }
  if (r.peek() === FRAME) {
    if (proto === undefined || proto < 4) throw new PickleStateError('FRAME before protocol 4');
    r.take(8); // a length hint only; the opcodes that follow are read as usual
  }
  return proto;
}

/** An optional memo store of the value on top of the stack (harmless: nothing reads it back). */
export function skipMemo(r: Reader): void {
  const op = r.peek();
  if (op === MEMOIZE) r.u8();
  else if (op === BINPUT) r.take(2);
  else if (op === LONG_BINPUT) r.take(5);
  else if (op === PUT) {
    r.u8();
    if (!/^\d{1,9}$/.test(r.line(10))) throw new PickleStateError('bad PUT index');
  }
}

function unicode(r: Reader): string {
  const op = r.u8();
  if (op === SHORT_BINUNICODE) return r.take(r.u8()).toString('utf8');
  if (op === BINUNICODE) {
    const n = r.u32();
    if (n > 64) throw new PickleStateError('class name too long');
    return r.take(n).toString('utf8');
  }
  throw new PickleStateError(`not a class name: opcode 0x${op.toString(16)}`);
}

/** Read the class pickle at the start of `data`: the class, and where the state pickle starts. */
export function readClassPickle(data: Buffer): { module: string; name: string; pos: number } {
  const r = new Reader(data, 0);
  header(r);
  const op = r.peek();
  let module: string;
  let name: string;
  if (op === GLOBAL) {
    r.u8();
    module = r.line(64);
    name = r.line(64);
  } else {
    module = unicode(r);
    skipMemo(r);
    name = unicode(r);
    skipMemo(r);
    if (r.u8() !== STACK_GLOBAL) throw new PickleStateError('not a class reference');
  }
  skipMemo(r);
  if (r.u8() !== STOP) throw new PickleStateError('the class pickle does not end after the class');
  return { module, name, pos: r.pos };
}

function decimal(s: string): bigint {
  if (!/^[-+]?\d{1,512}$/.test(s)) throw new PickleStateError('not a decimal integer');
  return BigInt(s);
}

/** A two's-complement little-endian integer (pickle's LONG1/LONG4 payload). */
function fromLongBytes(b: Buffer): bigint {
  if (b.length === 0) return 0n;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return v;
}

/** Python's pickle.encode_long: the shortest two's-complement little-endian bytes. */
function toLongBytes(x: bigint): Buffer {
  if (x === 0n) return Buffer.alloc(0);
  const bits = (x < 0n ? -x : x).toString(2).length;
  const n = (bits >> 3) + 1;
  const out = Buffer.alloc(n);
  let v = x < 0n ? (1n << BigInt(8 * n)) + x : x;
  for (let i = 0; i < n; i++) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  if (x < 0n && n > 1 && out[n - 1] === 0xff && out[n - 2] & 0x80) return out.subarray(0, n - 1);
  return out;
}

/** The int an int opcode (already read) pushes; undefined for another opcode. */
export function readIntOp(
  r: Reader,
  op: number,
  p: number | undefined,
): { value: bigint; binary: boolean } | undefined {
  let value: bigint;
  let binary = true;
  switch (op) {
    case BININT1:
      value = BigInt(r.u8());
      break;
    case BININT2:
      value = BigInt(r.take(2).readUInt16LE(0));
      break;
    case BININT:
      value = BigInt(r.take(4).readInt32LE(0));
      break;
    case LONG1:
      value = fromLongBytes(r.take(r.u8()));
      break;
    case LONG4: {
      const n = r.u32();
      if (n > INT_BYTES_MAX) throw new PickleStateError('integer too long');
      value = fromLongBytes(r.take(n));
      break;
    }
    case INT: {
      const s = r.line(INT_BYTES_MAX + 2);
      // "I00\n" and "I01\n" are False and True, not ints.
      if (s === '00' || s === '01') throw new PickleStateError('a bool, not an int');
      value = decimal(s);
      binary = false;
      break;
    }
    case LONG: {
      const s = r.line(INT_BYTES_MAX + 2);
      value = decimal(s.endsWith('L') ? s.slice(0, -1) : s);
      binary = false;
      break;
    }
    default:
      return undefined;
  }
  if (p === undefined && (op === LONG1 || op === LONG4))
    throw new PickleStateError('LONG1/LONG4 before protocol 2');
  return { value, binary };
}

/** The opcode pushing `x`, as Python's save_long writes it at `proto`. */
export function intOp(parts: Buffer[], proto: number, x: bigint): void {
  const bin = proto >= 1;
  if (bin && x >= 0n && x <= 0xffn) parts.push(Buffer.from([BININT1, Number(x)]));
  else if (bin && x >= 0n && x <= 0xffffn) {
    const b = Buffer.alloc(3);
    b[0] = BININT2;
    b.writeUInt16LE(Number(x), 1);
    parts.push(b);
  } else if (bin && x >= -0x80000000n && x <= 0x7fffffffn) {
    const b = Buffer.alloc(5);
    b[0] = BININT;
    b.writeInt32LE(Number(x), 1);
    parts.push(b);
  } else if (proto >= 2) {
    const enc = toLongBytes(x);
    if (enc.length < 256) parts.push(Buffer.from([LONG1, enc.length]), enc);
    else {
      const n = Buffer.alloc(5);
      n[0] = LONG4;
      n.writeUInt32LE(enc.length, 1);
      parts.push(n, enc);
    }
  } else if (x >= -0x80000000n && x <= 0x7fffffffn) parts.push(Buffer.from(`I${x}\n`, 'latin1'));
  else parts.push(Buffer.from(`L${x}L\n`, 'latin1'));
}

/**
 * Whether `record` holds `mark` and `read` parses it: the cheap test first (every ZEO store asks),
 * then the parse; a PickleStateError means "not such a record", anything else is thrown.
 */
export function recordMatches(
  record: Uint8Array,
  mark: Buffer,
  read: (view: Buffer) => unknown,
): boolean {
  const view = Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
  if (view.indexOf(mark) < 0) return false;
  try {
    read(view);
    return true;
  } catch (e) {
    if (e instanceof PickleStateError) return false;
    throw e;
  }
}
