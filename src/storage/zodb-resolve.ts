/**
 * Server-side conflict resolution for the ZODB classes whose resolution rule is fixed, as a ZEO
 * server does in its default mode — without running any application code:
 * - `BTrees.Length.Length`, whose state is one Python int and whose `_p_resolveConflict(old, s1,
 *   s2)` is `s1 + s2 - old`: two concurrent `change(n)` calls both count;
 * - the sets of BTrees with integer keys (`IISet`, `LLSet`, ... and the buckets of `IITreeSet`,
 *   ...), whose `_p_resolveConflict` is BTrees' three-way bucket merge (mergeSets below): keys
 *   inserted or deleted by either side are merged, and the same key inserted or deleted by both, a
 *   side emptying the set or deleting its first key, or a changed next bucket is a conflict.
 *
 * A ZODB data record is two pickles written by one pickler (ZODB.serialize): the class, then the
 * state. This module reads exactly the shapes a Length record has — a class pickle naming
 * `BTrees.Length` `Length` (GLOBAL or STACK_GLOBAL, protocols 0 to 5) and a state pickle holding
 * one int — and nothing else: no opcode is executed, only these byte patterns are matched, and
 * anything else is a PickleStateError. It writes the state pickle back as Python's pickler does
 * (`save_long`), keeping the class pickle's bytes as they were.
 */
import { PickleReader as Reader, PickleStateError } from './pickle-reader';

export { PickleStateError };

/** Digits (text ints) or bytes (binary longs) of a Length value read at most. */
const INT_BYTES_MAX = 512;

const LENGTH_MODULE = 'BTrees.Length';
const LENGTH_NAME = 'Length';

/** A BTrees.Length record, split into its class pickle (kept as is) and its value. */
export interface LengthRecord {
  /** The class pickle's bytes, STOP included. */
  classPickle: Buffer;
  /** The state pickle's protocol (its PROTO opcode; 0 or 1 without one, by its int opcode). */
  proto: number;
  value: bigint;
}

const PROTO = 0x80;
const FRAME = 0x95;
const STOP = 0x2e;
const GLOBAL = 0x63;
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
function header(r: Reader): number | undefined {
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
function skipMemo(r: Reader): void {
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
function readClassPickle(data: Buffer): { module: string; name: string; pos: number } {
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
function readIntOp(
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

/** Read a state pickle holding one int, ending at the end of `data`. */
function readIntPickle(data: Buffer, start: number): { proto: number; value: bigint } {
  const r = new Reader(data, start);
  const p = header(r);
  const op = r.u8();
  const v = readIntOp(r, op, p);
  if (!v) throw new PickleStateError(`the state is not an int (opcode 0x${op.toString(16)})`);
  const { value, binary } = v;
  skipMemo(r);
  if (r.u8() !== STOP) throw new PickleStateError('the state pickle does not end after the int');
  if (!r.done) throw new PickleStateError('data after the state pickle');
  return { proto: p ?? (binary ? 1 : 0), value };
}

/** The class pickle and value of a BTrees.Length record; PickleStateError for anything else. */
export function readLengthRecord(record: Uint8Array): LengthRecord {
  const data = Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
  const cls = readClassPickle(data);
  if (cls.module !== LENGTH_MODULE || cls.name !== LENGTH_NAME)
    throw new PickleStateError(`not a ${LENGTH_MODULE}.${LENGTH_NAME} record`);
  const statePos = cls.pos;
  const { proto, value } = readIntPickle(data, statePos);
  return { classPickle: Buffer.from(data.subarray(0, statePos)), proto, value };
}

/** The most a Length record can take: its class pickle and the longest int read. */
const LENGTH_RECORD_BYTES_MAX = 64 + INT_BYTES_MAX + 16;
const LENGTH_MARK = Buffer.from(LENGTH_MODULE, 'latin1');

/** Whether a record is a BTrees.Length record this module can resolve. */
export function isLengthRecord(record: Uint8Array): boolean {
  // Most records are not: they are told apart without parsing (this runs for every ZEO store).
  if (record.length > LENGTH_RECORD_BYTES_MAX) return false;
  const view = Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
  if (view.indexOf(LENGTH_MARK) < 0) return false;
  try {
    readLengthRecord(record);
    return true;
  } catch (e) {
    if (e instanceof PickleStateError) return false;
    throw e;
  }
}

/** An int pickled as Python's pickler does at `proto` (save_long), without a FRAME. */
function intPickle(proto: number, x: bigint): Buffer {
  const parts: Buffer[] = [];
  if (proto >= 2) parts.push(Buffer.from([PROTO, proto]));
  intOp(parts, proto, x);
  parts.push(Buffer.from([STOP]));
  return Buffer.concat(parts);
}

/** The opcode pushing `x`, as Python's save_long writes it at `proto`. */
function intOp(parts: Buffer[], proto: number, x: bigint): void {
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

/** A Length record with `value`, in the form (class pickle, protocol) of `like`. */
export function writeLengthRecord(like: LengthRecord, value: bigint): Buffer {
  if ((value < 0n ? -value : value).toString(16).length > INT_BYTES_MAX * 2)
    throw new PickleStateError('integer too long');
  return Buffer.concat([like.classPickle, intPickle(like.proto, value)]);
}

/**
 * The change a transaction makes to a Length: its stored value minus the value of the revision it
 * was based on. Resolution then writes `committed + delta` (BTrees.Length's _p_resolveConflict).
 */
export function lengthDelta(base: Uint8Array, mine: Uint8Array): bigint {
  return readLengthRecord(mine).value - readLengthRecord(base).value;
}

/** `committed` moved on by `delta`, written in the form of `mine` (ZODB writes the new state). */
export function applyLengthDelta(committed: Uint8Array, mine: Uint8Array, delta: bigint): Buffer {
  return writeLengthRecord(readLengthRecord(mine), readLengthRecord(committed).value + delta);
}

// ---------------------------------------------------------------------------------------------
// Sets with integer keys

/** Keys of one set record read at most (a BTrees bucket holds a few hundred). */
const SET_KEYS_MAX = 100_000;
/** `BTrees.IIBTree` `IISet` and the like: the families whose keys are integers. */
const INT_SET_MODULE = /^BTrees\.([ILUQ][IOFLUQ])BTree$/;
const MARK = 0x28;
const TUPLE = 0x74;
const TUPLE1 = 0x85;
const TUPLE2 = 0x86;
const EMPTY_TUPLE = 0x29;
const BINPERSID = 0x51;
const BINGET = 0x68;
const LONG_BINGET = 0x6a;
const SHORT_BINBYTES = 0x43;
const BINBYTES = 0x42;
const SHORT_BINSTRING = 0x55;

/** A set (or TreeSet bucket) record of a BTrees family with integer keys. */
export interface IntSetRecord {
  classPickle: Buffer;
  /** The class, `module.name`. */
  className: string;
  /** The state pickle's protocol; undefined without a PROTO opcode. */
  proto: number | undefined;
  keys: bigint[];
  /** The state pickle after the keys tuple (its memo, the next bucket, STOP), kept as is. */
  suffix: Buffer;
  /** The OID (hex) of the next bucket of a TreeSet, if any. */
  next?: string;
}

/** The class, keys and next bucket of an integer-key set record; PickleStateError otherwise. */
export function readIntSetRecord(record: Uint8Array): IntSetRecord {
  const data = Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
  const cls = readClassPickle(data);
  const family = INT_SET_MODULE.exec(cls.module);
  if (!family || cls.name !== `${family[1]}Set`)
    throw new PickleStateError('not a set of a BTrees family with integer keys');
  const r = new Reader(data, cls.pos);
  const p = header(r);
  const keys: bigint[] = [];
  const int = (op: number): bigint => {
    const v = readIntOp(r, op, p);
    if (!v) throw new PickleStateError(`a key that is not an int (opcode 0x${op.toString(16)})`);
    return v.value;
  };
  const first = r.u8();
  if (first === MARK) {
    for (let op = r.u8(); op !== TUPLE; op = r.u8()) {
      if (keys.length >= SET_KEYS_MAX) throw new PickleStateError('too many keys');
      keys.push(int(op));
    }
  } else if (first !== EMPTY_TUPLE) {
    keys.push(int(first));
    for (let op = r.u8(); ; op = r.u8()) {
      if (op === TUPLE1 + keys.length - 1 && keys.length <= 3) break;
      if (keys.length >= 3) throw new PickleStateError('not a tuple of keys');
      keys.push(int(op));
    }
  }
  for (let i = 1; i < keys.length; i++)
    if (keys[i - 1] >= keys[i]) throw new PickleStateError('keys out of order');
  const tupleEnd = r.pos;
  skipMemo(r);
  let next: string | undefined;
  const op = r.u8();
  if (op !== TUPLE1) {
    // ((keys), next): next is a persistent reference, (oid, class) or oid, to the next bucket.
    let oid: Buffer;
    if (op === SHORT_BINBYTES || op === SHORT_BINSTRING) oid = r.take(r.u8());
    else if (op === BINBYTES) oid = r.take(r.u32());
    else throw new PickleStateError('not a set state');
    if (oid.length !== 8) throw new PickleStateError('a next bucket that is not an OID');
    next = oid.toString('hex');
    skipMemo(r);
    let ref = r.u8();
    if (ref !== BINPERSID) {
      if (ref === BINGET) r.u8();
      else if (ref === LONG_BINGET) r.u32();
      else if (ref === GLOBAL) {
        r.line(64);
        r.line(64);
      } else throw new PickleStateError('not a persistent reference');
      skipMemo(r);
      if (r.u8() !== TUPLE2) throw new PickleStateError('not a persistent reference');
      skipMemo(r);
      ref = r.u8();
    }
    if (ref !== BINPERSID) throw new PickleStateError('not a persistent reference');
    skipMemo(r);
    if (r.u8() !== TUPLE2) throw new PickleStateError('not a set state');
  }
  skipMemo(r);
  if (r.u8() !== STOP) throw new PickleStateError('the state pickle does not end after the set');
  if (!r.done) throw new PickleStateError('data after the state pickle');
  return {
    classPickle: Buffer.from(data.subarray(0, cls.pos)),
    className: `${cls.module}.${cls.name}`,
    proto: p,
    keys,
    suffix: Buffer.from(data.subarray(tupleEnd)),
    next,
  };
}

/** A set record with `keys`, in the form of `like` (class pickle, protocol, memo, next bucket). */
export function writeIntSetRecord(like: IntSetRecord, keys: bigint[]): Buffer {
  const proto = like.proto ?? 1;
  const parts: Buffer[] = [like.classPickle];
  if (like.proto !== undefined) parts.push(Buffer.from([PROTO, like.proto]));
  if (keys.length === 0) parts.push(Buffer.from([EMPTY_TUPLE]));
  else if (proto >= 2 && keys.length <= 3) {
    for (const k of keys) intOp(parts, proto, k);
    parts.push(Buffer.from([TUPLE1 + keys.length - 1]));
  } else {
    parts.push(Buffer.from([MARK]));
    for (const k of keys) intOp(parts, proto, k);
    parts.push(Buffer.from([TUPLE]));
  }
  parts.push(like.suffix);
  return Buffer.concat(parts);
}

/** Whether a record is an integer-key set record (told apart cheaply first: every store asks). */
export function isIntSetRecord(record: Uint8Array): boolean {
  const view = Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
  if (view.indexOf(SET_MARK) < 0) return false;
  try {
    readIntSetRecord(view);
    return true;
  } catch (e) {
    if (e instanceof PickleStateError) return false;
    throw e;
  }
}
const SET_MARK = Buffer.from('Set\n', 'latin1');

/**
 * BTrees' three-way merge of a set bucket (MergeTemplate.c bucket_merge for sets, with the rules of
 * BTrees 6): the keys of `base`, changed into `committed` and into `mine`, merged; undefined when
 * they conflict. Keys are ascending. Checked against BTrees' own answers in the tests.
 */
export function mergeSets(
  base: bigint[],
  committed: bigint[],
  mine: bigint[],
): bigint[] | undefined {
  const [o, a, b] = [base, committed, mine];
  // An emptied set, or a first key gone up (a parent BTree may use it to find the bucket).
  if (a.length === 0 || b.length === 0) return undefined;
  if (o.length && (a[0] > o[0] || b[0] > o[0])) return undefined;
  const out: bigint[] = [];
  let i = 0;
  let j = 0;
  let k = 0;
  const cmp = (x: bigint, y: bigint): number => (x < y ? -1 : x > y ? 1 : 0);
  while (i < o.length && j < a.length && k < b.length) {
    const c12 = cmp(o[i], a[j]);
    const c13 = cmp(o[i], b[k]);
    if (c12 === 0 && c13 === 0) {
      out.push(o[i++]);
      j++;
      k++;
    } else if (c12 === 0) {
      if (c13 > 0) {
        out.push(b[k++]); // inserted by mine
      } else {
        i++; // deleted by mine
        j++;
      }
    } else if (c13 === 0) {
      if (c12 > 0) {
        out.push(a[j++]); // inserted by committed
      } else {
        i++; // deleted by committed
        k++;
      }
    } else {
      const c23 = cmp(a[j], b[k]);
      if (c23 === 0) return undefined; // both inserted, or both deleted, the same key
      if (c12 > 0) out.push(c23 > 0 ? b[k++] : a[j++]);
      else if (c13 > 0) out.push(b[k++]);
      else return undefined; // both deleted o[i]
    }
  }
  while (j < a.length && k < b.length) {
    const c23 = cmp(a[j], b[k]);
    if (c23 === 0) return undefined;
    out.push(c23 > 0 ? b[k++] : a[j++]);
  }
  while (i < o.length && j < a.length) {
    const c12 = cmp(o[i], a[j]);
    if (c12 > 0) out.push(a[j++]);
    else if (c12 === 0) {
      i++;
      j++;
    } else return undefined;
  }
  while (i < o.length && k < b.length) {
    const c13 = cmp(o[i], b[k]);
    if (c13 > 0) out.push(b[k++]);
    else if (c13 === 0) {
      i++;
      k++;
    } else return undefined;
  }
  if (i < o.length) return undefined;
  while (j < a.length) out.push(a[j++]);
  while (k < b.length) out.push(b[k++]);
  return out.length ? out : undefined;
}

/**
 * Resolve a conflict on an integer-key set: the merged record (in the form of `mine`), or
 * undefined when BTrees would raise a conflict (including a changed class or next bucket).
 * PickleStateError when a record is not such a set.
 */
export function resolveIntSet(
  base: Uint8Array,
  committed: Uint8Array,
  mine: Uint8Array,
): Buffer | undefined {
  const [o, a, b] = [readIntSetRecord(base), readIntSetRecord(committed), readIntSetRecord(mine)];
  if (o.className !== b.className || a.className !== b.className) return undefined;
  if (o.next !== b.next || a.next !== b.next) return undefined;
  const keys = mergeSets(o.keys, a.keys, b.keys);
  return keys && writeIntSetRecord(b, keys);
}
