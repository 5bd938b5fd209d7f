/**
 * The object references inside a ZODB data record, found the way ZODB's `referencesf` finds them
 * (ZODB.serialize): a record is two pickles (the class, then the state), and every persistent id
 * in them that is an OID (`oid` bytes or an `(oid, class)` tuple) is a reference; list-form ids
 * (weak references `['w', ...]`, cross-database `['m', ...]`/`['n', ...]`) are not.
 *
 * A symbolic reading of the pickle opcodes (protocols 0 to 5) that never constructs or calls
 * anything: globals, reductions and object builds become opaque values, so untrusted data cannot
 * run code. It only tracks what a persistent id can be made of (bytes, str, tuples), through the
 * stack and the memo. Work and memory are linear in the record's size. Anything it does not
 * understand is a PickleRefsError: the caller then treats the record's references as unknown.
 */
import { ID_BYTES } from '../util/ids';

export class PickleRefsError extends Error {
  readonly code = 'ZEO_PICKLE_REFS';
  constructor(message: string) {
    super(message);
    this.name = 'PickleRefsError';
  }
}

type Value =
  | { k: 'bytes'; v: Buffer }
  | { k: 'str' }
  | { k: 'tuple'; items: Value[] }
  | { k: 'list' }
  | { k: 'other' };

const MARK = Symbol('mark');
type Slot = Value | typeof MARK;

const OTHER: Value = { k: 'other' };
const LIST: Value = { k: 'list' };
const STR: Value = { k: 'str' };

/** The OIDs a ZODB record refers to, in order of appearance (duplicates kept out). */
export function pickleReferences(record: Uint8Array): Buffer[] {
  const data = Buffer.isBuffer(record)
    ? record
    : Buffer.from(record.buffer, record.byteOffset, record.byteLength);
  const refs = new Map<string, Buffer>();
  // The class pickle, then the state pickle, written by one pickler: they share its memo.
  const memo = new Map<number, Value>();
  let pos = 0;
  for (let n = 0; n < 2; n++) pos = readPickle(data, pos, refs, memo);
  if (pos !== data.length) throw new PickleRefsError('data after the second pickle');
  return [...refs.values()];
}

function readPickle(
  data: Buffer,
  start: number,
  refs: Map<string, Buffer>,
  memo: Map<number, Value>,
): number {
  const stack: Slot[] = [];
  let pos = start;

  const need = (n: number): void => {
    if (pos + n > data.length) throw new PickleRefsError('truncated pickle');
  };
  const u8 = (): number => {
    need(1);
    return data[pos++];
  };
  const u32 = (): number => {
    need(4);
    const v = data.readUInt32LE(pos);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = data.readBigUInt64LE(pos);
    pos += 8;
    if (v > BigInt(data.length)) throw new PickleRefsError('length beyond the record');
    return Number(v);
  };
  const take = (n: number): Buffer => {
    need(n);
    const b = data.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const line = (): Buffer => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) throw new PickleRefsError('unterminated line');
    const b = data.subarray(pos, end);
    pos = end + 1;
    return b;
  };
  const pop = (): Value => {
    const v = stack.pop();
    if (v === undefined || v === MARK) throw new PickleRefsError('stack underflow');
    return v;
  };
  const top = (): Value => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) throw new PickleRefsError('empty stack');
    return v;
  };
  const popMark = (): Value[] => {
    const items: Value[] = [];
    for (;;) {
      const v = stack.pop();
      if (v === undefined) throw new PickleRefsError('no mark');
      if (v === MARK) return items.reverse();
      items.push(v);
    }
  };
  const get = (i: number): void => {
    const v = memo.get(i);
    if (!v) throw new PickleRefsError(`memo ${i} not set`);
    stack.push(v);
  };
  const persistentId = (pid: Value): void => {
    // referencesf: a tuple's first item, or the id itself; lists are not references.
    const oid = pid.k === 'tuple' ? pid.items[0] : pid;
    if (pid.k === 'list') return;
    if (!oid || oid.k !== 'bytes' || oid.v.length !== ID_BYTES)
      throw new PickleRefsError('a persistent id that is not an 8-byte OID');
    refs.set(oid.v.toString('hex'), Buffer.from(oid.v));
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x2e: // STOP
        if (stack.length !== 1) throw new PickleRefsError('STOP with a bad stack');
        return pos;
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x30: // POP
        if (stack.pop() === undefined) throw new PickleRefsError('stack underflow');
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x46: // FLOAT
      case 0x49: // INT
      case 0x4c: // LONG
        line();
        stack.push(OTHER);
        break;
      case 0x4a: // BININT
        take(4);
        stack.push(OTHER);
        break;
      case 0x4b: // BININT1
        take(1);
        stack.push(OTHER);
        break;
      case 0x4d: // BININT2
        take(2);
        stack.push(OTHER);
        break;
      case 0x47: // BINFLOAT
        take(8);
        stack.push(OTHER);
        break;
      case 0x8a: // LONG1
        take(u8());
        stack.push(OTHER);
        break;
      case 0x8b: // LONG4
        take(u32());
        stack.push(OTHER);
        break;
      case 0x4e: // NONE
      case 0x88: // NEWTRUE
      case 0x89: // NEWFALSE
      case 0x7d: // EMPTY_DICT
      case 0x8f: // EMPTY_SET
        stack.push(OTHER);
        break;
      case 0x5d: // EMPTY_LIST
        stack.push(LIST);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push({ k: 'tuple', items: [] });
        break;
      case 0x50: // PERSID: a protocol-0 string id, never an OID
        line();
        throw new PickleRefsError('a text persistent id');
      case 0x51: // BINPERSID
        persistentId(pop());
        stack.push(OTHER);
        break;
      case 0x52: // REDUCE
        pop();
        pop();
        stack.push(OTHER);
        break;
      case 0x53: // STRING (Python 2 str, quoted)
        line();
        stack.push(STR);
        break;
      case 0x54: // BINSTRING (Python 2 str: OIDs in records written by Python 2)
        stack.push({ k: 'bytes', v: take(u32()) });
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push({ k: 'bytes', v: take(u8()) });
        break;
      case 0x42: // BINBYTES
        stack.push({ k: 'bytes', v: take(u32()) });
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push({ k: 'bytes', v: take(u8()) });
        break;
      case 0x8e: // BINBYTES8
        stack.push({ k: 'bytes', v: take(u64()) });
        break;
      case 0x96: // BYTEARRAY8
        take(u64());
        stack.push(OTHER);
        break;
      case 0x56: // UNICODE
        line();
        stack.push(STR);
        break;
      case 0x58: // BINUNICODE
        take(u32());
        stack.push(STR);
        break;
      case 0x8c: // SHORT_BINUNICODE
        take(u8());
        stack.push(STR);
        break;
      case 0x8d: // BINUNICODE8
        take(u64());
        stack.push(STR);
        break;
      case 0x61: // APPEND
      case 0x62: // BUILD
        pop();
        top();
        break;
      case 0x65: // APPENDS
      case 0x75: // SETITEMS
      case 0x90: // ADDITEMS
        popMark();
        top();
        break;
      case 0x73: // SETITEM
        pop();
        pop();
        top();
        break;
      case 0x63: // GLOBAL
        line();
        line();
        stack.push(OTHER);
        break;
      case 0x93: // STACK_GLOBAL
        pop();
        pop();
        stack.push(OTHER);
        break;
      case 0x69: // INST
        line();
        line();
        popMark();
        stack.push(OTHER);
        break;
      case 0x6f: // OBJ
      case 0x64: // DICT
      case 0x91: // FROZENSET
        popMark();
        stack.push(OTHER);
        break;
      case 0x6c: // LIST
        popMark();
        stack.push(LIST);
        break;
      case 0x74: // TUPLE
        stack.push({ k: 'tuple', items: popMark() });
        break;
      case 0x85: // TUPLE1
        stack.push({ k: 'tuple', items: [pop()] });
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push({ k: 'tuple', items: [pop(), b] });
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push({ k: 'tuple', items: [pop(), b, c] });
        break;
      }
      case 0x81: // NEWOBJ
        pop();
        pop();
        stack.push(OTHER);
        break;
      case 0x92: // NEWOBJ_EX
        pop();
        pop();
        pop();
        stack.push(OTHER);
        break;
      case 0x82: // EXT1
        take(1);
        stack.push(OTHER);
        break;
      case 0x83: // EXT2
        take(2);
        stack.push(OTHER);
        break;
      case 0x84: // EXT4
        take(4);
        stack.push(OTHER);
        break;
      case 0x67: // GET
        get(Number(line().toString('latin1')));
        break;
      case 0x68: // BINGET
        get(u8());
        break;
      case 0x6a: // LONG_BINGET
        get(u32());
        break;
      case 0x70: // PUT
        memo.set(Number(line().toString('latin1')), top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x80: // PROTO
        if (u8() > 5) throw new PickleRefsError('unknown pickle protocol');
        break;
      case 0x95: // FRAME (a length hint)
        u64();
        break;
      case 0x98: // READONLY_BUFFER
        top();
        break;
      default:
        // NEXT_BUFFER (out-of-band data) and anything unknown.
        throw new PickleRefsError(`unsupported opcode 0x${op.toString(16)}`);
    }
  }
}
