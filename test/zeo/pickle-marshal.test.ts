/**
 * The restricted pickle codec of Z5 framing (src/zeo/pickle-marshal.ts): what Python's pickle
 * writes for ZEO's message shapes decodes to the same values, what it encodes Python reads back,
 * everything that is not a plain value is refused by name, the bounds hold, and random and mutated
 * pickles are refused cleanly (PickleError) or decoded, never anything else, never a hang.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import fc from 'fast-check';
import { MarshalError } from '../../src/zeo/marshal';
import {
  PICKLE_DEPTH_MAX,
  PICKLE_ITEMS_MAX,
  PickleError,
  decodePickledMessage,
  encodePickledMessage,
  pickle,
  unpickle,
} from '../../src/zeo/pickle-marshal';

/** Debian's interpreter (CI installs python3); the Python parts are skipped without it. */
const PYTHON = '/usr/bin/python3';
const hasPython = fs.existsSync(PYTHON);

/** A JSON form of a value that both sides can produce: bytes, big ints and floats tagged. */
function form(v: unknown): unknown {
  if (v instanceof Uint8Array) return { b: Buffer.from(v).toString('hex') };
  if (typeof v === 'bigint') return { i: v.toString() };
  if (typeof v === 'number') return Number.isInteger(v) ? { i: BigInt(v).toString() } : { f: v };
  if (Array.isArray(v)) return v.map(form);
  if (v && typeof v === 'object')
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, form((v as Record<string, unknown>)[k])]),
    );
  return v;
}

/** The same form in Python, for values pickled there and for ours unpickled there. */
const PY_FORM = `
import json, pickle, sys
def form(v):
    if isinstance(v, bool) or v is None or isinstance(v, str): return v
    if isinstance(v, (bytes, bytearray)): return {'b': bytes(v).hex()}
    if isinstance(v, int): return {'i': str(v)}
    if isinstance(v, float): return {'f': v}
    if isinstance(v, (list, tuple)): return [form(x) for x in v]
    if isinstance(v, dict): return {k: form(v[k]) for k in sorted(v)}
    raise TypeError(type(v))
`;

function python(code: string, input = ''): string {
  const r = spawnSync(PYTHON, ['-c', PY_FORM + code], {
    input,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

/** Messages as a ZEO client sends them (ZEO.asyncio.marshal: protocol 3, fast mode). */
const MESSAGES = `(lambda OID, MAXTID: [
  (1, False, 'register', ('1', False)),
  (-1, 0, '.reply', None),
  # loadBefore's id and arguments: two tuples of the same two bytes (memo references to bytes
  # when not in fast mode); tuple() keeps Python from folding them into one constant.
  (tuple([OID, MAXTID]), 0, 'loadBefore', tuple([OID, MAXTID])),
  (7, 1, 'tpc_begin', (140234567, b'/site alice', 'caf\\u00e9 \\u2013 \\U0001f600'.encode(), {'request': {'path': '/edit', 'n': [1, 2.5, None, True, False]}, 'big': 2 ** 70, 'neg': -2 ** 40}, None, ' ')),
  (8, 1, 'storea', (b'\\x00' * 8, None, b'x' * 70000, 140234567)),
  (9, 0, 'undoInfo', (0, -20, {'description': b'to undo'})),
  (10, 0, 'iterator_gc', ([1, 2, 3, 300, 70000, 2 ** 31, -2 ** 31 - 1],)),
  (11, 0, 'pack', (1796217679.796, 1)),
  (12, 0, 'new_oids', ()),
])(b'\\x00' * 7 + b'\\x01', b'\\x7f' + b'\\xff' * 7)`;

describe('ZEO pickle framing (Z5): the restricted codec', function () {
  this.timeout(60_000);

  // Protocol 2 writes bytes as _codecs.encode(str, 'latin1'), a global ZEO's server refuses too.
  it("decodes what Python's pickle writes for ZEO's messages, in protocols 3 to 5, fast or not", function () {
    if (!hasPython) this.skip();
    const out = python(`
msgs = ${MESSAGES}
res = []
for m in msgs:
    for proto in (3, 4, 5):
        for fast in (True, False):
            import io
            f = io.BytesIO(); p = pickle.Pickler(f, proto); p.fast = fast; p.dump(m)
            res.append([f.getvalue().hex(), form(m[0]), int(m[1]), m[2], form(m[3])])
print(json.dumps(res))
`);
    const cases = JSON.parse(out) as [string, unknown, number, string, unknown][];
    assert.equal(cases.length, 9 * 3 * 2);
    for (const [hexed, msgid, flag, method, args] of cases) {
      const m = decodePickledMessage(Buffer.from(hexed, 'hex'));
      // A heartbeat's None arguments read as no arguments (shapeMessage).
      const expected = args === null && method === '.reply' ? [] : args;
      assert.deepEqual(
        [form(m.msgid), m.flag, m.method, form(m.args)],
        [msgid, flag, method, expected],
      );
    }
  });

  it('reads a dict subclass that pickles as dict(pairs), and list(...) and tuple(...)', function () {
    if (!hasPython) this.skip();
    const out = python(`
class ext(dict):
    def __reduce__(self):
        return dict, (tuple(self.items()),)
class l(list):
    def __reduce__(self):
        return list, (tuple(self),)
class t(tuple):
    def __reduce__(self):
        return tuple, (list(self),)
m = (5, 1, 'tpc_begin', (1, b'', b'', ext(foo=1, bar=[1, 2]), None, ' ', l([3]), t((4, 5)), ext()))
print(pickle.dumps(m, 3).hex())
`);
    const m = decodePickledMessage(Buffer.from(out.trim(), 'hex'));
    assert.deepEqual(
      form(m.args),
      form([
        1,
        Buffer.alloc(0),
        Buffer.alloc(0),
        { foo: 1, bar: [1, 2] },
        null,
        ' ',
        [3],
        [4, 5],
        {},
      ]),
    );
  });

  it('encodes replies that Python reads back as the same values, arrays as tuples', function () {
    if (!hasPython) this.skip();
    const values: unknown[] = [
      [3, 0, '.reply', [Buffer.from('data'), Buffer.alloc(8, 1), null]],
      [4, 2, '.reply', ['ZODB.POSException.ConflictError', { message: 'c', oid: Buffer.alloc(8) }]],
      [0, true, 'invalidateTransaction', [Buffer.alloc(8, 2), [Buffer.alloc(8, 3)]]],
      [
        5,
        0,
        '.reply',
        [0, 255, 256, 65535, 65536, -1, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, 2 ** 53 - 1, -(2 ** 60)],
      ],
      [6, 0, '.reply', [2n ** 64n, -(2n ** 64n), 1.5, -0.25, 'é\u2013😀', Buffer.alloc(300, 7)]],
      [7, 0, '.reply', { time: 1796217679.796, user_name: Buffer.from('u'), nested: { a: [] } }],
    ];
    const input = values.map((v) => pickle(v).toString('hex')).join('\n');
    const out = python(
      `print(json.dumps([form(pickle.loads(bytes.fromhex(l))) for l in sys.stdin.read().split()]))`,
      input,
    );
    assert.deepEqual(JSON.parse(out), values.map(form));
    // Python gets tuples, not lists (a msgpack ZEO client gets tuples too).
    const kinds = python(
      `print(type(pickle.loads(bytes.fromhex(sys.stdin.read().strip()))[3]).__name__)`,
      pickle(values[0]).toString('hex'),
    );
    assert.equal(kinds.trim(), 'tuple');
  });

  it('round-trips plain values', function () {
    const leaf = fc.oneof(
      fc.constant(null),
      fc.boolean(),
      fc.integer(),
      fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }),
      fc.double({ noNaN: true }).filter((x) => !Number.isInteger(x)),
      fc.string(),
      fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)),
    );
    const value = fc.letrec((tie) => ({
      v: fc.oneof(
        { depthSize: 'small' },
        leaf,
        fc.array(tie('v'), { maxLength: 6 }),
        fc.dictionary(
          fc.string().filter((k) => k !== '__proto__'),
          tie('v'),
          { maxKeys: 4 },
        ),
      ),
    })).v;
    fc.assert(
      fc.property(value, (v) => {
        const back = unpickle(pickle(v));
        // A bigint that fits a safe integer comes back as a number (Python has one int type).
        const norm = (x: unknown): unknown =>
          typeof x === 'bigint' &&
          x >= BigInt(Number.MIN_SAFE_INTEGER) &&
          x <= BigInt(Number.MAX_SAFE_INTEGER)
            ? Number(x)
            : Array.isArray(x)
              ? x.map(norm)
              : x && typeof x === 'object' && !(x instanceof Uint8Array)
                ? Object.fromEntries(Object.entries(x).map(([k, y]) => [k, norm(y)]))
                : x;
        assert.deepEqual(form(back), form(norm(v)));
      }),
      { numRuns: 500 },
    );
  });

  it('refuses every global but zodbpickle.binary, and every opcode that builds objects or calls', function () {
    const p = (hex: string): Buffer => Buffer.from(`8003${hex}2e`, 'hex');
    const g = (module: string, name: string): string =>
      Buffer.from(`c${module}\n${name}\n`, 'latin1').toString('hex');
    const refused: [string, Buffer, RegExp][] = [
      ['os.system', p(`${g('os', 'system')}`), /global "os\.system" is not accepted/],
      ['builtins.eval', p(`${g('builtins', 'eval')}`), /global "builtins\.eval"/],
      [
        'posix.system via STACK_GLOBAL',
        p('8c05706f7369788c0673797374656d93'),
        /global "posix\.system"/,
      ],
      ['ZopeUndo.Prefix', p(g('ZopeUndo.Prefix', 'Prefix')), /global/],
      ['_codecs.encode (protocol 2 bytes)', p(g('_codecs', 'encode')), /global "_codecs\.encode"/],
      // zodbpickle.binary applied to something other than one bytes
      ['binary(str)', p(`${g('zodbpickle', 'binary')}8c01788552`), /REDUCE is accepted only/],
      ['binary as a value', p(`${g('zodbpickle', 'binary')}`), /a global used as a value/],
      ['REDUCE without a global', p('4e2952'), /REDUCE is accepted only/],
      ['dict() of a non-pair', p(`${g('builtins', 'dict')}4b01858552`), /not pairs/],
      ['dict() with a non-str key', p(`${g('builtins', 'dict')}4b014b0286858552`), /not a str/],
      [
        'list() of two arguments',
        p(`${g('builtins', 'list')}292986 52`.replace(' ', '')),
        /REDUCE is accepted only/,
      ],
      [
        'REDUCE with a list of arguments',
        p(`${g('builtins', 'list')}5d52`),
        /without an argument tuple/,
      ],
      ['BUILD', p('7d7d62'), /opcode 0x62/],
      ['INST', Buffer.from('(ios\nsystem\n.', 'latin1'), /opcode 0x69/],
      ['OBJ', p('284e6f'), /opcode 0x6f/],
      ['NEWOBJ', p('4e2981'), /opcode 0x81/],
      ['NEWOBJ_EX', p('4e297d92'), /opcode 0x92/],
      ['EXT1', p('8201'), /opcode 0x82/],
      ['PERSID', Buffer.from('P1\n.', 'latin1'), /opcode 0x50/],
      ['BINPERSID', p('4e51'), /opcode 0x51/],
      ['protocol 0 string', Buffer.from("S'echo'\n.", 'latin1'), /opcode 0x53/],
      ['EMPTY_SET', p('8f'), /opcode 0x8f/],
      ['BYTEARRAY8', p('960000000000000000'), /opcode 0x96/],
      ['protocol 6', Buffer.from('80064e2e', 'hex'), /unsupported pickle protocol 6/],
      ['a dict key that is not str', p('7d4b014b0273'), /dict key that is not a str/],
      ['APPEND to a tuple', p('294e61'), /not a list/],
      ['SETITEM on a list', p('5d8c01614e73'), /not a dict/],
      ['invalid UTF-8', p('8c02c328'), /not valid UTF-8/],
      ['shared list', p('5d71002868006885'), /shared \(memo\) reference to a container/],
      ['list containing itself', p('5d7100680061'), /shared \(memo\) reference/],
      ['undefined memo', p('6805'), /memo entry 5 is not defined/],
      ['truncated', Buffer.from('80035802000000', 'hex'), /truncated/],
      ['bytes after STOP', Buffer.from('80034e2e4e', 'hex'), /bytes after STOP/],
      ['two values at STOP', Buffer.from('80034e4e2e', 'hex'), /left on the stack/],
      ['no STOP', Buffer.from('80034e', 'hex'), /truncated/],
      ['a huge length', p('58ffffffff'), /truncated/],
      ['a huge 8-byte length', p('8effffffffffffffff'), /beyond/],
      ['a long integer', p(`8b41000000${'01'.repeat(65)}`), /an integer of 65 bytes/],
      ['empty', Buffer.alloc(0), /truncated/],
    ];
    for (const [what, bytes, why] of refused) {
      assert.throws(
        () => unpickle(bytes),
        (e: unknown) => e instanceof PickleError && why.test((e as Error).message),
        what,
      );
    }
    // zodbpickle.binary(bytes), as old clients write bytes, reads as bytes.
    assert.deepEqual(unpickle(p(`${g('zodbpickle', 'binary')}430268698552`)), Buffer.from('hi'));
  });

  it('bounds nesting, values and memo entries', function () {
    const nested = (n: number): Buffer =>
      Buffer.concat([
        Buffer.from('8003', 'hex'),
        Buffer.alloc(n, 0x5d), // n empty lists...
        Buffer.alloc(n - 1, 0x61), // ...each appended to the one below
        Buffer.from('2e', 'hex'),
      ]);
    assert.equal(JSON.stringify(unpickle(nested(PICKLE_DEPTH_MAX))).length, 2 * PICKLE_DEPTH_MAX);
    assert.throws(() => unpickle(nested(PICKLE_DEPTH_MAX + 1)), /nested more than 100 deep/);
    const tuples = (n: number): Buffer =>
      Buffer.concat([
        Buffer.from('80034e', 'hex'),
        Buffer.alloc(n, 0x85), // TUPLE1 n times
        Buffer.from('2e', 'hex'),
      ]);
    assert.throws(() => unpickle(tuples(PICKLE_DEPTH_MAX + 1)), /nested more than/);
    const many = Buffer.concat([
      Buffer.from('80035d28', 'hex'),
      Buffer.alloc(PICKLE_ITEMS_MAX, 0x4e),
      Buffer.from('652e', 'hex'),
    ]);
    assert.throws(() => unpickle(many), /more than 1000000 values/);
    const marks = Buffer.concat([
      Buffer.from('8003', 'hex'),
      Buffer.alloc(PICKLE_ITEMS_MAX + 1, 0x28),
    ]);
    assert.throws(() => unpickle(marks), /more than 1000000 values/);
    const memo = Buffer.concat([
      Buffer.from('80034e', 'hex'),
      ...Array.from({ length: 100_001 }, (_, i) => {
        const b = Buffer.alloc(5);
        b[0] = 0x72; // LONG_BINPUT i
        b.writeUInt32LE(i, 1);
        return b;
      }),
      Buffer.from('2e', 'hex'),
    ]);
    assert.throws(() => unpickle(memo), /more than 100000 memo entries/);
  });

  it('checks the message shape and the message id, in either encoding', function () {
    assert.throws(() => decodePickledMessage(pickle([1, 0, 'x'])), MarshalError);
    assert.throws(() => decodePickledMessage(pickle([1, 0, 7, []])), /method name/);
    assert.throws(() => decodePickledMessage(pickle([[[1]], 0, 'x', []])), /message id/);
    assert.throws(
      () => decodePickledMessage(pickle([Buffer.alloc(100), 0, 'x', []])),
      /message id/,
    );
    const ok = decodePickledMessage(
      encodePickledMessage([Buffer.alloc(8), Buffer.alloc(8)], 0, 'loadBefore', []),
    );
    assert.equal(ok.method, 'loadBefore');
  });

  it('refuses random and mutated pickles cleanly: a PickleError or a value, never anything else', function () {
    const seeds = [
      pickle([
        7,
        1,
        'tpc_begin',
        [140234567, Buffer.from('u'), Buffer.from('d'), { a: [1, 2.5, null] }, null, ' '],
      ]),
      pickle([8, 1, 'storea', [Buffer.alloc(8), null, Buffer.alloc(300, 9), 1]]),
      pickle([9, 0, 'undoInfo', [0, -20, { description: Buffer.from('x') }]]),
      Buffer.from('80035d7100284b014b026571012e', 'hex'),
      Buffer.from('80037d71002858010000006171014b0173752e', 'hex'),
    ];
    const check = (b: Uint8Array): void => {
      try {
        const v = unpickle(b);
        pickle(v); // anything decoded can be encoded again (no cycle, bounded depth)
      } catch (e) {
        if (!(e instanceof PickleError)) throw e;
      }
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), check), { numRuns: 5000 });
    fc.assert(
      fc.property(
        fc.constantFrom(...seeds),
        fc.array(
          fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 3 })),
          {
            minLength: 1,
            maxLength: 8,
          },
        ),
        (seed, edits) => {
          let b = Buffer.from(seed);
          for (const [at, byte, kind] of edits) {
            const i = at % (b.length + 1);
            if (kind === 0 && i < b.length)
              b[i] = byte; // replace
            else if (kind === 1)
              b = Buffer.concat([b.subarray(0, i), Buffer.from([byte]), b.subarray(i)]);
            else if (kind === 2) b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]);
            else b = b.subarray(0, i); // truncate
          }
          check(b);
        },
      ),
      { numRuns: 20_000 },
    );
    // Opcode soup: every byte an opcode, so every code path is reached, with prefixes of a
    // valid header.
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom(...Array.from({ length: 256 }, (_, i) => i)), { maxLength: 64 }),
        (ops) => check(Buffer.concat([Buffer.from('8003', 'hex'), Buffer.from(ops)])),
      ),
      { numRuns: 20_000 },
    );
  });
});
