/**
 * Server-side conflict resolution of the sets of BTrees with integer keys (`IISet`, `LLSet`, ...
 * and the buckets of `IITreeSet`, ...): reading and writing their records, and BTrees' three-way
 * bucket merge (see zodb-resolve.ts for what the server resolves and why).
 */
import { PickleReader as Reader, PickleStateError } from './pickle-reader';
import {
  GLOBAL,
  PROTO,
  STOP,
  header,
  intOp,
  readClassPickle,
  readIntOp,
  recordMatches,
  skipMemo,
} from './zodb-pickle-ints';

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
  return recordMatches(record, SET_MARK, readIntSetRecord);
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
