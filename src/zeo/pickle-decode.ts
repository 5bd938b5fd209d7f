/**
 * The restricted pickle decoder of Z5 framing (pickle-marshal.ts). A ZEO client pickles each
 * message `(msgid, flags, method, args)` with pickle protocol 3 in fast mode
 * (ZEO.asyncio.marshal.encoder: no memo), and its arguments are plain values. So this reads only the opcodes that build plain values (None, booleans, ints, floats, str,
 * bytes, tuples, lists, dicts with str keys) and no other: it never looks up a class or calls
 * anything. Of the globals ZEO's own server lets a client name (server_find_global: anything in
 * `builtins`, `copy_reg`, `__builtin__`, `zodbpickle`, `ZopeUndo.Prefix`), only the constructors
 * of plain values are read: `zodbpickle.binary` (bytes written by old clients) and `builtins.dict`,
 * `list` and `tuple` (a dict subclass pickles as dict(pairs)), each applied to plain values only;
 * every other global is refused by name, as is every opcode that could run code (REDUCE of
 * anything else, BUILD, INST, OBJ, NEWOBJ, EXT*, PERSID). ZEO's server would import and call them;
 * this server has no Python to call.
 *
 * Bounds: the message itself (ZEORAFT_MAX_MESSAGE_BYTES, checked by the framing); every opcode
 * consumes input, so the work is linear in it; at most PICKLE_ITEMS_MAX values,
 * PICKLE_MEMO_ENTRIES_MAX memo entries, containers nested at most PICKLE_DEPTH_MAX deep (the
 * session's consumers recurse), integers of at most PICKLE_LONG_BYTES_MAX bytes. Shared containers
 * (a memo reference to a list, tuple or dict) are refused: they could make a value contain itself.
 */
import { OP, PICKLE_PROTOCOL_MAX, PickleReader, PickleStateError } from '../storage/pickle-reader';
import { toBuffer } from './args';
import { MarshalError } from './marshal';

/** Values one message may build (each opcode pushing a value counts once). */
export const PICKLE_ITEMS_MAX = 1_000_000;
/** Memo entries one message may define (ZEO clients define none). */
export const PICKLE_MEMO_ENTRIES_MAX = 100_000;
/** Containers nested deeper than this are refused. */
export const PICKLE_DEPTH_MAX = 100;
/** The longest integer (LONG1/LONG4 payload) accepted. */
export const PICKLE_LONG_BYTES_MAX = 64;
/** A global's module or name longer than this is not one a ZEO client sends. */
const GLOBAL_NAME_BYTES_MAX = 256;

export class PickleError extends MarshalError {
  constructor(message: string) {
    super(`pickle: ${message}`);
  }
}

/** `zodbpickle.binary` between GLOBAL and REDUCE. */
const BINARY = Symbol('zodbpickle.binary');
/** The MARK opcode's place on the stack. */
const MARK = Symbol('mark');

/** A value on the decoder's stack with the depth of containers it holds (0 for a scalar). */
interface Slot {
  v: unknown;
  depth: number;
}

/** builtins.dict, list and tuple between GLOBAL and REDUCE. */
const DICT_OF = Symbol('builtins.dict');
const LIST_OF = Symbol('builtins.list');
const TUPLE_OF = Symbol('builtins.tuple');

const SAFE_GLOBALS = new Map<string, symbol>([
  ['zodbpickle binary', BINARY],
  ['builtins dict', DICT_OF],
  ['builtins list', LIST_OF],
  ['builtins tuple', TUPLE_OF],
]);

function utf8(b: Buffer): string {
  const s = b.toString('utf8');
  // Python refuses invalid UTF-8 in a str; so do we, rather than change the text.
  if (!Buffer.from(s, 'utf8').equals(b)) throw new PickleError('a str is not valid UTF-8');
  return s;
}

/** A little-endian two's complement integer (LONG1/LONG4) as a number when exact, else a bigint. */
function long(b: Buffer): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v;
}

function isContainer(v: unknown): boolean {
  return Array.isArray(v) || (typeof v === 'object' && v !== null && !(v instanceof Uint8Array));
}

/** Decode one pickle of plain values; PickleError for anything else. */
export function unpickle(bytes: Uint8Array): unknown {
  try {
    return decode(bytes);
  } catch (e) {
    if (e instanceof PickleStateError) throw new PickleError(e.message);
    throw e;
  }
}

function decode(bytes: Uint8Array): unknown {
  const r = new PickleReader(toBuffer(bytes), 0);
  const stack: (Slot | typeof MARK)[] = [];
  const memo = new Map<number, Slot>();
  let items = 0;

  const count = (): void => {
    if (++items > PICKLE_ITEMS_MAX)
      throw new PickleError(`more than ${PICKLE_ITEMS_MAX} values in one message`);
  };
  const push = (v: unknown, depth = 0): void => {
    count();
    if (depth > PICKLE_DEPTH_MAX)
      throw new PickleError(`containers nested more than ${PICKLE_DEPTH_MAX} deep`);
    stack.push({ v, depth });
  };
  const pop = (): Slot => {
    const s = stack.pop();
    if (s === undefined) throw new PickleError('stack underflow');
    if (s === MARK) throw new PickleError('a mark where a value was expected');
    return s;
  };
  const top = (): Slot => {
    const s = stack[stack.length - 1];
    if (s === undefined || s === MARK) throw new PickleError('no value on the stack');
    return s;
  };
  /** The values down to the topmost mark, which is removed. */
  const popMark = (): Slot[] => {
    let i = stack.length - 1;
    while (i >= 0 && stack[i] !== MARK) i--;
    if (i < 0) throw new PickleError('no mark on the stack');
    const out = stack.splice(i + 1) as Slot[];
    stack.pop();
    return out;
  };
  const depthOf = (slots: Slot[]): number => 1 + slots.reduce((m, s) => Math.max(m, s.depth), 0);
  const tuple = (slots: Slot[]): void => push(slots.map(plain), depthOf(slots));
  const setItems = (target: Slot, slots: Slot[]): void => {
    const d = target.v;
    if (typeof d !== 'object' || d === null || Array.isArray(d) || d instanceof Uint8Array)
      throw new PickleError('SETITEM(S) on something that is not a dict');
    if (slots.length % 2) throw new PickleError('SETITEMS with an odd number of values');
    for (let i = 0; i < slots.length; i += 2) {
      const k = plain(slots[i]);
      if (typeof k !== 'string') throw new PickleError('a dict key that is not a str');
      (d as Record<string, unknown>)[k] = plain(slots[i + 1]);
    }
    target.depth = Math.max(target.depth, depthOf(slots.filter((_, i) => i % 2 === 1)));
    if (target.depth > PICKLE_DEPTH_MAX)
      throw new PickleError(`containers nested more than ${PICKLE_DEPTH_MAX} deep`);
  };
  const append = (target: Slot, slots: Slot[]): void => {
    if (!Array.isArray(target.v) || !listSlots.has(target.v as unknown[]))
      throw new PickleError('APPEND(S) on something that is not a list');
    for (const s of slots) (target.v as unknown[]).push(plain(s));
    target.depth = Math.max(target.depth, depthOf(slots));
    if (target.depth > PICKLE_DEPTH_MAX)
      throw new PickleError(`containers nested more than ${PICKLE_DEPTH_MAX} deep`);
  };
  const remember = (i: number): void => {
    if (memo.size >= PICKLE_MEMO_ENTRIES_MAX && !memo.has(i))
      throw new PickleError(`more than ${PICKLE_MEMO_ENTRIES_MAX} memo entries`);
    memo.set(i, top());
  };
  const recall = (i: number): void => {
    const s = memo.get(i);
    if (!s) throw new PickleError(`memo entry ${i} is not defined`);
    // A shared container could be made to contain itself; ZEO clients never share one.
    if (isContainer(s.v)) throw new PickleError('a shared (memo) reference to a container');
    push(s.v, s.depth);
  };
  // Lists (as opposed to tuples) may be appended to; both are arrays once built.
  const listSlots = new WeakSet<unknown[]>();

  for (;;) {
    const op = r.u8();
    switch (op) {
      case OP.PROTO: {
        const p = r.u8();
        if (p > PICKLE_PROTOCOL_MAX) throw new PickleError(`unsupported pickle protocol ${p}`);
        break;
      }
      case OP.FRAME:
        r.u64();
        break;
      case OP.STOP: {
        const v = plain(pop());
        if (stack.length) throw new PickleError('values left on the stack at STOP');
        if (!r.done) throw new PickleError('bytes after STOP');
        return v;
      }
      case OP.MARK:
        count();
        stack.push(MARK);
        break;
      case OP.POP:
        if (stack.pop() === undefined) throw new PickleError('stack underflow');
        break;
      case OP.POP_MARK:
        popMark();
        break;
      case OP.NONE:
        push(null);
        break;
      case OP.NEWTRUE:
        push(true);
        break;
      case OP.NEWFALSE:
        push(false);
        break;
      case OP.BININT1:
        push(r.u8());
        break;
      case OP.BININT2:
        push(r.take(2).readUInt16LE(0));
        break;
      case OP.BININT:
        push(r.take(4).readInt32LE(0));
        break;
      case OP.LONG1:
      case OP.LONG4: {
        const n = op === OP.LONG1 ? r.u8() : r.u32();
        if (n > PICKLE_LONG_BYTES_MAX)
          throw new PickleError(`an integer of ${n} bytes (at most ${PICKLE_LONG_BYTES_MAX})`);
        push(long(r.take(n)));
        break;
      }
      case OP.BINFLOAT: {
        push(r.take(8).readDoubleBE(0));
        break;
      }
      case OP.SHORT_BINUNICODE:
        push(utf8(r.take(r.u8())));
        break;
      case OP.BINUNICODE:
        push(utf8(r.take(r.u32())));
        break;
      case OP.BINUNICODE8:
        push(utf8(r.take(r.u64())));
        break;
      case OP.SHORT_BINBYTES:
        push(Buffer.from(r.take(r.u8())));
        break;
      case OP.BINBYTES:
        push(Buffer.from(r.take(r.u32())));
        break;
      case OP.BINBYTES8:
        push(Buffer.from(r.take(r.u64())));
        break;
      case OP.EMPTY_TUPLE:
        push([], 1);
        break;
      case OP.TUPLE1:
      case OP.TUPLE2:
      case OP.TUPLE3: {
        const n = op - OP.TUPLE1 + 1;
        const slots: Slot[] = [];
        for (let i = 0; i < n; i++) slots.unshift(pop());
        tuple(slots);
        break;
      }
      case OP.TUPLE:
        tuple(popMark());
        break;
      case OP.EMPTY_LIST: {
        const l: unknown[] = [];
        listSlots.add(l);
        push(l, 1);
        break;
      }
      case OP.LIST: {
        const slots = popMark();
        const l = slots.map(plain);
        listSlots.add(l);
        push(l, depthOf(slots));
        break;
      }
      case OP.APPEND: {
        const v = pop();
        append(top(), [v]);
        break;
      }
      case OP.APPENDS: {
        const slots = popMark();
        append(top(), slots);
        break;
      }
      case OP.EMPTY_DICT:
        push(Object.create(null), 1);
        break;
      case OP.DICT: {
        const slots = popMark();
        const d: Slot = { v: Object.create(null), depth: 1 };
        setItems(d, slots);
        push(d.v, d.depth);
        break;
      }
      case OP.SETITEM: {
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case OP.SETITEMS: {
        const slots = popMark();
        setItems(top(), slots);
        break;
      }
      case OP.BINPUT:
        remember(r.u8());
        break;
      case OP.LONG_BINPUT:
        remember(r.u32());
        break;
      case OP.MEMOIZE:
        remember(memo.size);
        break;
      case OP.BINGET:
        recall(r.u8());
        break;
      case OP.LONG_BINGET:
        recall(r.u32());
        break;
      case OP.GLOBAL: {
        const module = r.line(GLOBAL_NAME_BYTES_MAX);
        const name = r.line(GLOBAL_NAME_BYTES_MAX);
        pushGlobal(module, name);
        break;
      }
      case OP.STACK_GLOBAL: {
        const name = pop().v;
        const module = pop().v;
        if (typeof module !== 'string' || typeof name !== 'string')
          throw new PickleError('STACK_GLOBAL without two str');
        pushGlobal(module, name);
        break;
      }
      case OP.REDUCE: {
        const args = pop();
        const f = pop().v;
        if (!Array.isArray(args.v) || listSlots.has(args.v))
          throw new PickleError('REDUCE without an argument tuple');
        reduce(f, args.v, args.depth);
        break;
      }
      default:
        throw new PickleError(
          `opcode 0x${op.toString(16).padStart(2, '0')} at byte ${r.pos - 1} is not accepted (only plain values are)`,
        );
    }
  }

  /**
   * The calls a pickle may make, all of plain-value constructors: zodbpickle.binary(bytes) (bytes
   * of old clients), and dict(pairs), list(items), tuple(items) (a dict subclass's __reduce__, as
   * in ZODB's testTransactionExtensionFromIterator). Anything else is refused.
   */
  function reduce(f: unknown, args: unknown[], depth: number): void {
    const one = args.length === 1 ? args[0] : undefined;
    if (f === BINARY && one instanceof Uint8Array) return push(one);
    const items = args.length === 0 ? [] : Array.isArray(one) ? one : undefined;
    if (items && args.length <= 1) {
      if (f === LIST_OF) {
        const l = [...items];
        listSlots.add(l);
        return push(l, depth);
      }
      if (f === TUPLE_OF) return push([...items], depth);
      if (f === DICT_OF) {
        const d: Slot = { v: Object.create(null), depth: 1 };
        for (const pair of items) {
          if (!Array.isArray(pair) || pair.length !== 2)
            throw new PickleError('dict() of something that is not pairs');
          setItems(d, [
            { v: pair[0], depth: 0 },
            { v: pair[1], depth },
          ]);
        }
        return push(d.v, depth);
      }
    }
    throw new PickleError(
      'REDUCE is accepted only as zodbpickle.binary(bytes), dict(pairs), list(items) or tuple(items)',
    );
  }

  function pushGlobal(module: string, name: string): void {
    const g = SAFE_GLOBALS.get(`${module} ${name}`);
    if (!g)
      throw new PickleError(
        `global ${JSON.stringify(`${module}.${name}`.slice(0, 200))} is not accepted`,
      );
    count();
    stack.push({ v: g, depth: 0 });
  }

  function plain(s: Slot): unknown {
    if (typeof s.v === 'symbol') throw new PickleError('a global used as a value');
    return s.v;
  }
}
