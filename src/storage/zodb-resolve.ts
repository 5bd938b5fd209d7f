/**
 * Server-side conflict resolution for the ZODB classes whose resolution rule is fixed, as a ZEO
 * server does in its default mode — without running any application code:
 * - `BTrees.Length.Length`, whose state is one Python int and whose `_p_resolveConflict(old, s1,
 *   s2)` is `s1 + s2 - old`: two concurrent `change(n)` calls both count;
 * - the sets of BTrees with integer keys (`IISet`, `LLSet`, ... and the buckets of `IITreeSet`,
 *   ...), whose `_p_resolveConflict` is BTrees' three-way bucket merge (mergeSets): keys
 *   inserted or deleted by either side are merged, and the same key inserted or deleted by both, a
 *   side emptying the set or deleting its first key, or a changed next bucket is a conflict.
 *
 * A ZODB data record is two pickles written by one pickler (ZODB.serialize): the class, then the
 * state. This module reads exactly the shapes a Length record has — a class pickle naming
 * `BTrees.Length` `Length` (GLOBAL or STACK_GLOBAL, protocols 0 to 5) and a state pickle holding
 * one int — and nothing else: no opcode is executed, only these byte patterns are matched, and
 * anything else is a PickleStateError. It writes the state pickle back as Python's pickler does
 * (`save_long`), keeping the class pickle's bytes as they were.
 *
 * The integer-key sets are in zodb-resolve-sets.ts (re-exported here), the pickle shapes both read
 * in zodb-pickle-ints.ts.
 */
import { PickleReader as Reader, PickleStateError } from './pickle-reader';
import {
  INT_BYTES_MAX,
  PROTO,
  STOP,
  header,
  intOp,
  readClassPickle,
  readIntOp,
  recordMatches,
  skipMemo,
} from './zodb-pickle-ints';

export { PickleStateError };
export {
  type IntSetRecord,
  isIntSetRecord,
  mergeSets,
  readIntSetRecord,
  resolveIntSet,
  writeIntSetRecord,
} from './zodb-resolve-sets';

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
  return recordMatches(record, LENGTH_MARK, readLengthRecord);
}

/** An int pickled as Python's pickler does at `proto` (save_long), without a FRAME. */
function intPickle(proto: number, x: bigint): Buffer {
  const parts: Buffer[] = [];
  if (proto >= 2) parts.push(Buffer.from([PROTO, proto]));
  intOp(parts, proto, x);
  parts.push(Buffer.from([STOP]));
  return Buffer.concat(parts);
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
