/**
 * The object references inside a ZODB data record, found the way ZODB's `referencesf` finds them
 * (ZODB/serialize.py): a record is two pickles written by one pickler (the class, then the state,
 * sharing its memo), and every persistent id in them is a reference when it is an OID (8 bytes)
 * or a tuple whose first item is one (`(oid, class)`). List-form ids — weak references
 * `['w', (oid,)]` / `['w', (oid, database)]`, cross-database references `['m', (database, oid,
 * class)]` / `['n', (database, oid)]` — are not references: pack keeps them as they are and never
 * follows them into this database.
 *
 * A symbolic reading of the opcodes (protocols 0 to 5, on the shared PickleReader) that never
 * constructs, imports or calls anything: globals, reductions and object builds are opaque values.
 * It tracks only what a persistent id can be made of. Values are small numbers on a number stack,
 * so a record costs no allocation per opcode: work is linear in the record's bytes and memory is
 * bounded by the record's bytes and by the constants below. Anything it does not understand —
 * truncation, trailing bytes, an unknown opcode, a persistent id of another form, a stack or memo
 * beyond its bound — is a PickleStateError: the caller then treats the record's references as
 * unknown (pack never deletes what such a record might reference).
 */
import { ID_BYTES } from '../util/ids';
import { OP, PICKLE_PROTOCOL_MAX, PickleReader, PickleStateError, bufferOf } from './pickle-reader';

/** Stack slots (values and marks) a record may use at once. Python's pickler batches appends and
 * set items by 1000, so real records stay far below; a record of nothing but DUPs stops here. */
export const REFS_STACK_SLOTS_MAX = 1 << 20;
/** Memo indexes a record may use (PUT/BINPUT/LONG_BINPUT/MEMOIZE): one per memoized value. */
export const REFS_MEMO_ENTRIES_MAX = 1 << 20;
/** Bytes of a text argument (INT, FLOAT, LONG, GLOBAL names, GET/PUT indexes, STRING...). */
const LINE_BYTES_MAX = 1 << 16;

// Stack values. An 8-byte bytes value at offset p is OID_BASE + 2p; a tuple whose first item is
// such a value is OID_BASE + 2p + 1. Everything else is one of the small tags.
const MARK = -1;
const OTHER = 0; // ints, floats, None, bools, dicts, sets, objects, globals, other bytes...
const STR = 1; // text
const LIST = 2; // a list (list-form persistent ids: weak and cross-database references)
const TUPLE_OTHER = 3; // a tuple whose first item is not an 8-byte bytes value (or empty)
const OID_BASE = 4;

function bytesValue(at: number, n: number): number {
  return n === ID_BYTES ? OID_BASE + 2 * at : OTHER;
}

function tupleOf(first: number): number {
  return first >= OID_BASE && (first - OID_BASE) % 2 === 0 ? first + 1 : TUPLE_OTHER;
}

/** The reader's state across the record's two pickles (they share the pickler's memo). */
class RefScan {
  readonly stack: number[] = [];
  readonly memo: number[] = [];
  /** Memo entries set (MEMOIZE stores at this index, as Python's len(memo)). */
  private memoCount = 0;
  /** Offsets (in the record) of the OIDs referenced, in order of first appearance. */
  readonly refs: number[] = [];
  private readonly seen = new Set<string>();
  readonly r: PickleReader;

  constructor(readonly data: Buffer) {
    this.r = new PickleReader(data, 0);
  }

  private push(v: number): void {
    if (this.stack.length >= REFS_STACK_SLOTS_MAX)
      throw new PickleStateError('pickle stack too deep');
    this.stack.push(v);
  }
  private pop(): number {
    const v = this.stack.pop();
    if (v === undefined || v === MARK) throw new PickleStateError('stack underflow');
    return v;
  }
  private top(): number {
    const v = this.stack[this.stack.length - 1];
    if (v === undefined || v === MARK) throw new PickleStateError('empty stack');
    return v;
  }
  /** Pop down to the topmost mark; returns the first value above it (OTHER when none). */
  private popMark(): { first: number; count: number } {
    const s = this.stack;
    let i = s.length - 1;
    while (i >= 0 && s[i] !== MARK) i--;
    if (i < 0) throw new PickleStateError('no mark');
    const count = s.length - i - 1;
    const first = count > 0 ? s[i + 1] : OTHER;
    s.length = i;
    return { first, count };
  }
  private memoIndex(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= REFS_MEMO_ENTRIES_MAX)
      throw new PickleStateError(`memo index ${i} out of bounds`);
    return i;
  }
  private get(i: number): void {
    const v = this.memo[this.memoIndex(i)];
    if (v === undefined) throw new PickleStateError(`memo ${i} not set`);
    this.push(v);
  }
  private put(i: number): void {
    const v = this.top();
    if (this.memo[this.memoIndex(i)] === undefined) this.memoCount++;
    this.memo[i] = v;
  }
  private textIndex(): number {
    const s = this.r.line(LINE_BYTES_MAX);
    if (!/^\d{1,9}$/.test(s)) throw new PickleStateError('bad memo index');
    return Number(s);
  }

  /** referencesf: a tuple's first item, or the id itself; lists are not references. */
  private persistentId(pid: number): void {
    if (pid === LIST) return;
    if (pid < OID_BASE) throw new PickleStateError('a persistent id that is not an 8-byte OID');
    const at = (pid - OID_BASE) >> 1;
    const key = this.data.toString('latin1', at, at + ID_BYTES);
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.refs.push(at);
  }

  /** Read one pickle from the cursor to its STOP. */
  pickle(): void {
    const r = this.r;
    for (;;) {
      const op = r.u8();
      switch (op) {
        case OP.STOP:
          if (this.stack.length !== 1 || this.stack[0] === MARK)
            throw new PickleStateError('STOP with a bad stack');
          this.stack.length = 0;
          return;
        case OP.MARK:
          this.push(MARK);
          break;
        case OP.POP: // pops a mark too, as Python's does
          if (this.stack.pop() === undefined) throw new PickleStateError('stack underflow');
          break;
        case OP.POP_MARK:
          this.popMark();
          break;
        case OP.DUP:
          this.push(this.top());
          break;
        case OP.FLOAT:
        case OP.INT:
        case OP.LONG:
          r.skipLine(LINE_BYTES_MAX);
          this.push(OTHER);
          break;
        case OP.BININT:
          r.skip(4);
          this.push(OTHER);
          break;
        case OP.BININT1:
          r.skip(1);
          this.push(OTHER);
          break;
        case OP.BININT2:
          r.skip(2);
          this.push(OTHER);
          break;
        case OP.BINFLOAT:
          r.skip(8);
          this.push(OTHER);
          break;
        case OP.LONG1:
          r.skip(r.u8());
          this.push(OTHER);
          break;
        case OP.LONG4:
          r.skip(r.u32());
          this.push(OTHER);
          break;
        case OP.NONE:
        case OP.NEWTRUE:
        case OP.NEWFALSE:
        case OP.EMPTY_DICT:
        case OP.EMPTY_SET:
          this.push(OTHER);
          break;
        case OP.EMPTY_LIST:
          this.push(LIST);
          break;
        case OP.EMPTY_TUPLE:
          this.push(TUPLE_OTHER);
          break;
        case OP.PERSID: // a protocol-0 text id: ZODB never writes one for an OID
          throw new PickleStateError('a text persistent id');
        case OP.BINPERSID:
          this.persistentId(this.pop());
          this.push(OTHER);
          break;
        case OP.REDUCE:
          this.pop();
          this.pop();
          this.push(OTHER);
          break;
        case OP.STRING: // Python 2 str, quoted
          r.skipLine(LINE_BYTES_MAX);
          this.push(STR);
          break;
        case OP.BINSTRING: {
          // Python 2 str: the OIDs of records written by Python 2 (read as bytes by referencesf)
          const n = r.u32();
          this.push(bytesValue(r.skip(n), n));
          break;
        }
        case OP.SHORT_BINSTRING:
        case OP.SHORT_BINBYTES: {
          const n = r.u8();
          this.push(bytesValue(r.skip(n), n));
          break;
        }
        case OP.BINBYTES: {
          const n = r.u32();
          this.push(bytesValue(r.skip(n), n));
          break;
        }
        case OP.BINBYTES8: {
          const n = r.u64();
          this.push(bytesValue(r.skip(n), n));
          break;
        }
        case OP.BYTEARRAY8:
          r.skip(r.u64());
          this.push(OTHER);
          break;
        case OP.UNICODE:
          r.skipLine(LINE_BYTES_MAX);
          this.push(STR);
          break;
        case OP.BINUNICODE:
          r.skip(r.u32());
          this.push(STR);
          break;
        case OP.SHORT_BINUNICODE:
          r.skip(r.u8());
          this.push(STR);
          break;
        case OP.BINUNICODE8:
          r.skip(r.u64());
          this.push(STR);
          break;
        case OP.APPEND:
        case OP.BUILD:
          this.pop();
          this.top();
          break;
        case OP.APPENDS:
        case OP.SETITEMS:
        case OP.ADDITEMS:
          this.popMark();
          this.top();
          break;
        case OP.SETITEM:
          this.pop();
          this.pop();
          this.top();
          break;
        case OP.GLOBAL:
          r.skipLine(LINE_BYTES_MAX);
          r.skipLine(LINE_BYTES_MAX);
          this.push(OTHER);
          break;
        case OP.STACK_GLOBAL:
          this.pop();
          this.pop();
          this.push(OTHER);
          break;
        case OP.INST:
          r.skipLine(LINE_BYTES_MAX);
          r.skipLine(LINE_BYTES_MAX);
          this.popMark();
          this.push(OTHER);
          break;
        case OP.OBJ:
        case OP.DICT:
        case OP.FROZENSET:
          this.popMark();
          this.push(OTHER);
          break;
        case OP.LIST:
          this.popMark();
          this.push(LIST);
          break;
        case OP.TUPLE: {
          const { first, count } = this.popMark();
          this.push(count === 0 ? TUPLE_OTHER : tupleOf(first));
          break;
        }
        case OP.TUPLE1:
          this.push(tupleOf(this.pop()));
          break;
        case OP.TUPLE2:
          this.pop();
          this.push(tupleOf(this.pop()));
          break;
        case OP.TUPLE3:
          this.pop();
          this.pop();
          this.push(tupleOf(this.pop()));
          break;
        case OP.NEWOBJ:
          this.pop();
          this.pop();
          this.push(OTHER);
          break;
        case OP.NEWOBJ_EX:
          this.pop();
          this.pop();
          this.pop();
          this.push(OTHER);
          break;
        case OP.EXT1:
          r.skip(1);
          this.push(OTHER);
          break;
        case OP.EXT2:
          r.skip(2);
          this.push(OTHER);
          break;
        case OP.EXT4:
          r.skip(4);
          this.push(OTHER);
          break;
        case OP.GET:
          this.get(this.textIndex());
          break;
        case OP.BINGET:
          this.get(r.u8());
          break;
        case OP.LONG_BINGET:
          this.get(r.u32());
          break;
        case OP.PUT:
          this.put(this.textIndex());
          break;
        case OP.BINPUT:
          this.put(r.u8());
          break;
        case OP.LONG_BINPUT:
          this.put(r.u32());
          break;
        case OP.MEMOIZE:
          this.put(this.memoCount);
          break;
        case OP.PROTO:
          if (r.u8() > PICKLE_PROTOCOL_MAX) throw new PickleStateError('unknown pickle protocol');
          break;
        case OP.FRAME: // a length hint; the opcodes inside are read as usual
          r.u64();
          break;
        case OP.READONLY_BUFFER:
          this.top();
          break;
        default:
          // NEXT_BUFFER (out-of-band data) and anything unknown.
          throw new PickleStateError(`unsupported opcode 0x${op.toString(16)}`);
      }
    }
  }
}

/**
 * The OIDs a ZODB record refers to, in order of first appearance, without duplicates (referencesf
 * lists a repeated reference each time). PickleStateError when the record cannot be read whole.
 */
export function zodbReferences(record: Uint8Array): Buffer[] {
  const data = bufferOf(record);
  const scan = new RefScan(data);
  scan.pickle(); // the class
  scan.pickle(); // the state
  if (!scan.r.done) throw new PickleStateError('data after the second pickle');
  return scan.refs.map((at) => Buffer.from(data.subarray(at, at + ID_BYTES)));
}
