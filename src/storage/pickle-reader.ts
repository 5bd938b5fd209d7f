/**
 * The one reader of Python pickle bytes in the object store: a bounds-checked cursor over a record
 * and the opcode table. It never constructs, imports or calls anything; the modules built on it
 * (zodb-resolve.ts: BTrees.Length and integer-set records; zodb-refs.ts: the persistent
 * references of any ZODB record) match opcodes and read their arguments, nothing more. Every read
 * past the end, every malformed argument is a PickleStateError.
 */

export class PickleStateError extends Error {
  readonly code = 'ZODB_PICKLE_STATE';
  constructor(message: string) {
    super(message);
    this.name = 'PickleStateError';
  }
}

/** Pickle opcodes, protocols 0 to 5 (Python's pickletools names). */
export const OP = {
  MARK: 0x28, // (
  STOP: 0x2e, // .
  POP: 0x30, // 0
  POP_MARK: 0x31, // 1
  DUP: 0x32, // 2
  FLOAT: 0x46, // F
  INT: 0x49, // I
  BININT: 0x4a, // J
  BININT1: 0x4b, // K
  LONG: 0x4c, // L
  BININT2: 0x4d, // M
  NONE: 0x4e, // N
  PERSID: 0x50, // P
  BINPERSID: 0x51, // Q
  REDUCE: 0x52, // R
  STRING: 0x53, // S
  BINSTRING: 0x54, // T
  SHORT_BINSTRING: 0x55, // U
  UNICODE: 0x56, // V
  BINUNICODE: 0x58, // X
  APPEND: 0x61, // a
  BUILD: 0x62, // b
  GLOBAL: 0x63, // c
  DICT: 0x64, // d
  EMPTY_DICT: 0x7d, // }
  APPENDS: 0x65, // e
  GET: 0x67, // g
  BINGET: 0x68, // h
  INST: 0x69, // i
  LONG_BINGET: 0x6a, // j
  LIST: 0x6c, // l
  EMPTY_LIST: 0x5d, // ]
  OBJ: 0x6f, // o
  PUT: 0x70, // p
  BINPUT: 0x71, // q
  LONG_BINPUT: 0x72, // r
  SETITEM: 0x73, // s
  TUPLE: 0x74, // t
  EMPTY_TUPLE: 0x29, // )
  SETITEMS: 0x75, // u
  BINFLOAT: 0x47, // G
  PROTO: 0x80,
  NEWOBJ: 0x81,
  EXT1: 0x82,
  EXT2: 0x83,
  EXT4: 0x84,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  LONG1: 0x8a,
  LONG4: 0x8b,
  BINBYTES: 0x42, // B
  SHORT_BINBYTES: 0x43, // C
  SHORT_BINUNICODE: 0x8c,
  BINUNICODE8: 0x8d,
  BINBYTES8: 0x8e,
  EMPTY_SET: 0x8f,
  ADDITEMS: 0x90,
  FROZENSET: 0x91,
  NEWOBJ_EX: 0x92,
  STACK_GLOBAL: 0x93,
  MEMOIZE: 0x94,
  FRAME: 0x95,
  BYTEARRAY8: 0x96,
  NEXT_BUFFER: 0x97,
  READONLY_BUFFER: 0x98,
} as const;

/** The newest pickle protocol there is (Python 3.8+). */
export const PICKLE_PROTOCOL_MAX = 5;

/** A cursor over pickle bytes: every read is checked against the end of the data. */
export class PickleReader {
  pos: number;
  constructor(
    readonly data: Buffer,
    start: number,
  ) {
    this.pos = start;
  }
  get done(): boolean {
    return this.pos >= this.data.length;
  }
  peek(): number {
    if (this.pos >= this.data.length) throw new PickleStateError('truncated pickle');
    return this.data[this.pos];
  }
  u8(): number {
    const v = this.peek();
    this.pos++;
    return v;
  }
  take(n: number): Buffer {
    if (n < 0 || this.pos + n > this.data.length) throw new PickleStateError('truncated pickle');
    const b = this.data.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  /** Move past `n` bytes; returns where they started. */
  skip(n: number): number {
    if (n < 0 || this.pos + n > this.data.length) throw new PickleStateError('truncated pickle');
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u32(): number {
    const at = this.skip(4);
    return this.data.readUInt32LE(at);
  }
  /** An 8-byte length, refused when it could not fit in the data (so it is a safe integer). */
  u64(): number {
    const at = this.skip(8);
    const v = this.data.readBigUInt64LE(at);
    if (v > BigInt(this.data.length)) throw new PickleStateError('length beyond the record');
    return Number(v);
  }
  /** A newline-terminated argument of at most `maxBytes` bytes (the newline excluded). */
  line(maxBytes: number): string {
    const end = this.lineEnd(maxBytes);
    const s = this.data.toString('latin1', this.pos, end);
    this.pos = end + 1;
    return s;
  }
  /** Move past a newline-terminated argument of at most `maxBytes` bytes. */
  skipLine(maxBytes: number): void {
    this.pos = this.lineEnd(maxBytes) + 1;
  }
  private lineEnd(maxBytes: number): number {
    const end = this.data.indexOf(0x0a, this.pos);
    if (end < 0 || end - this.pos > maxBytes) throw new PickleStateError('unterminated line');
    return end;
  }
}

/** A Buffer view of any Uint8Array, without copying. */
export function bufferOf(record: Uint8Array): Buffer {
  return Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
}
