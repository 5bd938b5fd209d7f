/**
 * The reference reader behind pack's garbage collection (src/storage/zodb-refs.ts): on records
 * written by the pinned ZODB, compared with ZODB.serialize.referencesf itself (run in the
 * .venv-zodb virtual environment that `make zodb-venv` builds), and fuzzed with malformed, random
 * and mutated pickles: it answers or refuses with PickleStateError, never anything else.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as fc from 'fast-check';
import { OP, PickleStateError } from '../../src/storage/pickle-reader';
import {
  REFS_MEMO_ENTRIES_MAX,
  REFS_STACK_SLOTS_MAX,
  zodbReferences,
} from '../../src/storage/zodb-refs';

const ROOT_DIR = path.resolve(__dirname, '../../..');
const VENV_PYTHON = path.join(ROOT_DIR, '.venv-zodb/bin/python');
const CORPUS = path.join(ROOT_DIR, 'test/zodb/references_corpus.py');
/** Mutated records the Python side makes (seeded); each is also read by referencesf. */
const MUTANTS = 1000;

const hexRefs = (h: string): string[] =>
  zodbReferences(Buffer.from(h, 'hex')).map((b) => b.toString('hex'));

/** The root: {'x': {'a': A, 'again': A, 'b': B, 'weak': WeakRef(B)}}; A is oid 1, B oid 2. */
const ROOT =
  '80036370657273697374656e742e6d617070696e670a50657273697374656e744d617070696e670a71002e' +
  '80037d710158040000006461746171027d710358010000007871047d71052858010000006171064308000000' +
  '000000000171076800867108515805000000616761696e71096807680086710a51580100000062710b430800' +
  '00000000000002710c680086710d5158040000007765616b710e5d710f285801000000777110680c85711165' +
  '517573732e';
/** A record without references. */
const LEAF =
  '80036370657273697374656e742e6d617070696e670a50657273697374656e744d617070696e670a71004e86' +
  '71012e80037d710258040000006461746171037d710458010000006e71054b0173732e';

describe('ZODB pickle references', function () {
  it('finds the OIDs of persistent ids, through the memo shared by the two pickles', function () {
    // referencesf lists A twice and ignores the weak reference (a list-form id).
    assert.deepEqual(hexRefs(ROOT), ['0000000000000001', '0000000000000002']);
    assert.deepEqual(hexRefs(LEAF), []);
  });

  it('refuses what it cannot read completely: truncation, trailing bytes, non-pickles', function () {
    const root = Buffer.from(ROOT, 'hex');
    for (const bad of [
      root.subarray(0, root.length - 1),
      Buffer.concat([root, Buffer.from([0])]),
      Buffer.from('not a pickle at all'),
      Buffer.alloc(0),
      Buffer.from('8003' + '950000000000001000' + '2e', 'hex'), // a frame longer than the record
    ])
      assert.throws(() => zodbReferences(bad), PickleStateError);
  });

  it('never constructs anything: globals and reductions are opaque values', function () {
    // os.system('x') as a pickle: c os\nsystem\n (X'x' tR. — twice, as a record is two pickles.
    const evil = Buffer.from('cos\nsystem\n(X\x01\x00\x00\x00xtR.', 'latin1');
    assert.deepEqual(zodbReferences(Buffer.concat([evil, evil])), []);
  });

  it('refuses text persistent ids, out-of-band buffers and persistent ids of other forms', function () {
    const cls = Buffer.from('\x80\x03cx\ny\nq\x00.', 'latin1');
    for (const state of [
      'P0000000000000001\nQ.', // PERSID (protocol 0 text id)
      '\x80\x05\x97.', // NEXT_BUFFER
      '\x80\x03X\x01\x00\x00\x00aQ.', // a str id
      '\x80\x03C\x03abcQ.', // 3 bytes
      '\x80\x03K\x01\x85Q.', // a tuple of an int
      '\x80\x03)Q.', // an empty tuple
    ])
      assert.throws(
        () => zodbReferences(Buffer.concat([cls, Buffer.from(state, 'latin1')])),
        PickleStateError,
        JSON.stringify(state),
      );
  });

  it('stops at its bounds: stack slots and memo indexes', function () {
    const cls = Buffer.from('\x80\x03cx\ny\n.', 'latin1');
    // N then DUP, DUP, ...: one byte per stack slot.
    const dups = Buffer.alloc(REFS_STACK_SLOTS_MAX + 2, OP.DUP);
    dups[0] = OP.NONE;
    assert.throws(
      () => zodbReferences(Buffer.concat([cls, dups, Buffer.from('.')])),
      /pickle stack too deep/,
    );
    const memo = Buffer.from([OP.NONE, OP.LONG_BINPUT, 0, 0, 0, 0, OP.STOP]);
    memo.writeUInt32LE(REFS_MEMO_ENTRIES_MAX, 2);
    assert.throws(() => zodbReferences(Buffer.concat([cls, memo])), /memo index .* out of bounds/);
    memo.writeUInt32LE(REFS_MEMO_ENTRIES_MAX - 1, 2);
    assert.deepEqual(zodbReferences(Buffer.concat([cls, memo])), []);
  });

  it('answers or refuses with PickleStateError on random, mutated and spliced pickles', function () {
    const seeds = [ROOT, LEAF].map((h) => Buffer.from(h, 'hex'));
    const opcodes = Object.values(OP);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: seeds.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.nat(),
        fc.uint8Array({ maxLength: 256 }),
        fc.array(fc.constantFrom(...opcodes), { maxLength: 64 }),
        (i, flips, cut, random, ops) => {
          const b = Buffer.from(seeds[i]);
          for (const [at, v] of flips) b[at % b.length] = v;
          const opsOnly = Buffer.from(ops);
          for (const x of [
            b,
            b.subarray(0, cut % (b.length + 1)),
            Buffer.from(random),
            opsOnly,
            Buffer.concat([opsOnly, Buffer.from(random)]),
          ]) {
            try {
              const refs = zodbReferences(x);
              // What it accepts are 8-byte OIDs that occur in the record, each once.
              assert.equal(new Set(refs.map((r) => r.toString('hex'))).size, refs.length);
              for (const r of refs) {
                assert.equal(r.length, 8);
                assert.ok(x.indexOf(r) >= 0);
              }
            } catch (e) {
              if (!(e instanceof PickleStateError)) throw e;
            }
          }
        },
      ),
      { numRuns: 20000 },
    );
  });

  it('finds the same references as ZODB.serialize.referencesf on records of the pinned ZODB', function () {
    this.timeout(300_000);
    assert.ok(
      fs.existsSync(VENV_PYTHON),
      `${VENV_PYTHON} is missing: run \`make zodb-venv\` (make test does)`,
    );
    const p = spawnSync(VENV_PYTHON, [CORPUS, '--mutants', String(MUTANTS)], {
      encoding: 'utf8',
      maxBuffer: 256 << 20,
    });
    assert.equal(p.status, 0, `references_corpus.py failed:\n${p.stderr}`);
    const counts = new Map<string, number>();
    const count = (k: string): void => void counts.set(k, (counts.get(k) ?? 0) + 1);
    let lines = 0;
    for (const line of p.stdout.split('\n')) {
      if (!line) continue;
      lines++;
      const { kind, record, refs, error } = JSON.parse(line) as {
        kind: string;
        record: string;
        refs?: string[];
        error?: string;
      };
      let mine: string[] | undefined;
      try {
        mine = zodbReferences(Buffer.from(record, 'hex')).map((b) => b.toString('hex'));
      } catch (e) {
        if (!(e instanceof PickleStateError)) throw e;
      }
      if (refs) {
        const want = [...new Set(refs)];
        if (mine) {
          assert.deepEqual(mine, want, `${kind} record ${record}`);
          count(`${kind}: same references`);
        } else {
          // Refusing is safe (pack keeps everything then), but a record ZODB wrote must be read.
          assert.equal(kind, 'mutant', `${kind} record refused: ${record}`);
          count(`${kind}: refused, referencesf read it`);
        }
      } else {
        count(
          `${kind}: referencesf raised (${error?.split(':')[0]}), ours ${mine ? 'read it' : 'refused'}`,
        );
      }
    }
    const kinds = [...counts.keys()];
    for (const k of ['zodb', 'python 2 str', 'protocol 1', 'protocol 2'])
      assert.ok(kinds.includes(`${k}: same references`), `no ${k} records compared`);
    assert.ok((counts.get('zodb: same references') ?? 0) >= 100, 'too few ZODB records');
    console.log(
      `      ${lines} records: ` +
        [...counts.entries()]
          .sort()
          .map(([k, v]) => `${k} ${v}`)
          .join('; '),
    );
  });
});
