/**
 * The pickle encoder of Z5 framing (pickle-marshal.ts): replies as pickle protocol 3 of plain
 * values, the shapes the decoder (pickle-decode.ts) reads.
 */
import { OP } from '../storage/pickle-reader';
import { toBuffer } from './args';
import { PICKLE_DEPTH_MAX } from './pickle-decode';

/**
 * Replies nested deeper than this are a bug in the server: refuse loudly. Above the decoder's
 * bound, so that anything decoded (a message id the reply echoes) can be encoded.
 */
const ENCODE_DEPTH_MAX = PICKLE_DEPTH_MAX + 8;

class Writer {
  private chunks: Buffer[] = [];
  private cur = Buffer.allocUnsafe(4096);
  private n = 0;

  private room(k: number): void {
    if (this.n + k <= this.cur.length) return;
    this.chunks.push(this.cur.subarray(0, this.n));
    this.cur = Buffer.allocUnsafe(Math.max(4096, k));
    this.n = 0;
  }
  byte(b: number): void {
    this.room(1);
    this.cur[this.n++] = b;
  }
  raw(b: Uint8Array): void {
    if (b.length > 1024) {
      this.chunks.push(this.cur.subarray(0, this.n), toBuffer(b));
      this.cur = Buffer.allocUnsafe(4096);
      this.n = 0;
      return;
    }
    this.room(b.length);
    this.cur.set(b, this.n);
    this.n += b.length;
  }
  u32(v: number): void {
    this.room(4);
    this.cur.writeUInt32LE(v, this.n);
    this.n += 4;
  }
  done(): Buffer {
    this.chunks.push(this.cur.subarray(0, this.n));
    return Buffer.concat(this.chunks);
  }
}

function writeInt(w: Writer, v: bigint): void {
  if (v >= 0n && v < 256n) {
    w.byte(OP.BININT1);
    w.byte(Number(v));
  } else if (v >= 0n && v < 65536n) {
    w.byte(OP.BININT2);
    w.byte(Number(v & 0xffn));
    w.byte(Number(v >> 8n));
  } else if (v >= -(1n << 31n) && v < 1n << 31n) {
    w.byte(OP.BININT);
    const b = Buffer.alloc(4);
    b.writeInt32LE(Number(v));
    w.raw(b);
  } else {
    // LONG1: little-endian two's complement, as short as it can be.
    const bytes: number[] = [];
    let x = v;
    for (;;) {
      const byte = Number(x & 0xffn);
      bytes.push(byte);
      x >>= 8n;
      if ((x === 0n && !(byte & 0x80)) || (x === -1n && byte & 0x80)) break;
    }
    w.byte(OP.LONG1);
    w.byte(bytes.length);
    w.raw(Buffer.from(bytes));
  }
}

function writeValue(w: Writer, v: unknown, depth: number): void {
  if (depth > ENCODE_DEPTH_MAX) throw new Error(`reply nested more than ${ENCODE_DEPTH_MAX} deep`);
  if (v === null || v === undefined) return w.byte(OP.NONE);
  if (v === true) return w.byte(OP.NEWTRUE);
  if (v === false) return w.byte(OP.NEWFALSE);
  if (typeof v === 'bigint') return writeInt(w, v);
  if (typeof v === 'number') {
    if (Number.isInteger(v)) return writeInt(w, BigInt(v));
    w.byte(OP.BINFLOAT);
    const b = Buffer.alloc(8);
    b.writeDoubleBE(v);
    return w.raw(b);
  }
  if (typeof v === 'string') {
    const b = Buffer.from(v, 'utf8');
    w.byte(OP.BINUNICODE);
    w.u32(b.length);
    return w.raw(b);
  }
  if (v instanceof Uint8Array) {
    if (v.length < 256) {
      w.byte(OP.SHORT_BINBYTES);
      w.byte(v.length);
    } else {
      w.byte(OP.BINBYTES);
      w.u32(v.length);
    }
    return w.raw(v);
  }
  if (Array.isArray(v)) {
    if (v.length === 0) return w.byte(OP.EMPTY_TUPLE);
    if (v.length <= 3) {
      for (const x of v) writeValue(w, x, depth + 1);
      return w.byte(OP.TUPLE1 - 1 + v.length);
    }
    w.byte(OP.MARK);
    for (const x of v) writeValue(w, x, depth + 1);
    return w.byte(OP.TUPLE);
  }
  if (typeof v === 'object') {
    w.byte(OP.EMPTY_DICT);
    const entries = Object.entries(v as Record<string, unknown>);
    if (entries.length) {
      w.byte(OP.MARK);
      for (const [k, x] of entries) {
        writeValue(w, k, depth + 1);
        writeValue(w, x, depth + 1);
      }
      w.byte(OP.SETITEMS);
    }
    return;
  }
  throw new Error(`cannot pickle a ${typeof v}`);
}

/** Pickle protocol 3 of plain values (arrays as tuples, objects as dicts with str keys). */
export function pickle(v: unknown): Buffer {
  const w = new Writer();
  w.byte(OP.PROTO);
  w.byte(3);
  writeValue(w, v, 0);
  w.byte(OP.STOP);
  return w.done();
}
