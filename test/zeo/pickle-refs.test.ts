/**
 * The reference reader behind pack's garbage collection at the ZEO door, on records written by
 * ZODB 6 (hex fixtures recorded from ZODB.serialize with ZODB.serialize.referencesf's answers).
 */
import * as assert from 'node:assert/strict';
import { PickleRefsError, pickleReferences } from '../../src/zeo/pickle-refs';

const hexRefs = (h: string): string[] =>
  pickleReferences(Buffer.from(h, 'hex')).map((b) => b.toString('hex'));

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
      assert.throws(() => pickleReferences(bad), PickleRefsError);
  });

  it('never constructs anything: globals and reductions are opaque values', function () {
    // os.system('x') as a pickle: c os\nsystem\n (X'x' tR. — twice, as a record is two pickles.
    const evil = Buffer.from('cos\nsystem\n(X\x01\x00\x00\x00xtR.', 'latin1');
    assert.deepEqual(pickleReferences(Buffer.concat([evil, evil])), []);
  });
});
