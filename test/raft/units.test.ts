import assert from 'node:assert/strict';
import { Mulberry32 } from '../../src/util/prng';
import {
  CompactedError,
  ConfChangeType,
  ConfigError,
  EntryType,
  MemoryStorage,
  RawNode,
  UnavailableError,
  decodeConfChange,
  encodeConfChange,
} from '../../src/raft';
import { Inflights } from '../../src/raft/inflights';
import { ReadOnly } from '../../src/raft/read-only';
import { committedIndex, voteResult } from '../../src/raft/quorum';

const ent = (index: number, term: number, bytes = 1) => ({
  index,
  term,
  type: EntryType.Normal,
  data: new Uint8Array(bytes),
});

describe('quorum math', () => {
  it('commits the index a majority of voters matched', () => {
    const match: Record<string, number> = { a: 5, b: 4, c: 1 };
    assert.equal(
      committedIndex(['a', 'b', 'c'], (id) => match[id]),
      4,
    );
    assert.equal(
      committedIndex(['a', 'b', 'c', 'd'], (id) => match[id] ?? 0),
      1,
    );
    assert.equal(
      committedIndex([], () => 9),
      0,
    );
  });

  it('tallies votes of voters only', () => {
    const v = new Map([
      ['a', true],
      ['x', true],
    ]);
    assert.equal(voteResult(['a', 'b', 'c'], v), 'pending');
    v.set('b', true);
    assert.equal(voteResult(['a', 'b', 'c'], v), 'won');
    assert.equal(
      voteResult(
        ['a', 'b', 'c'],
        new Map([
          ['b', false],
          ['c', false],
        ]),
      ),
      'lost',
    );
  });
});

describe('inflights', () => {
  it('is bounded and frees acknowledged messages in order', () => {
    const f = new Inflights(3, 0);
    f.add(1, 10);
    f.add(2, 10);
    f.add(5, 10);
    assert.ok(f.full());
    f.freeLE(2);
    assert.equal(f.count, 1);
    f.add(6, 1);
    f.add(9, 1);
    assert.ok(f.full());
    f.freeFirstOne();
    assert.equal(f.count, 2);
    assert.throws(() => f.add(9, 1)); // indices must increase
  });
});

describe('ReadIndex requests (ReadOnly)', () => {
  const ctx = (s: string) => new TextEncoder().encode(s);
  const voters = ['a', 'b', 'c'];

  it('confirms a request with acknowledgements of its own heartbeats only, even when it arrives twice', () => {
    const ro = new ReadOnly();
    assert.ok(ro.add(10, 'b', ctx('r1'), 'a'));
    assert.ok(ro.add(20, 'c', ctx('r2'), 'a'));
    assert.ok(ro.add(10, 'b', ctx('r1'), 'a')); // the network delivered r1 again
    assert.deepEqual(
      ro.ack('b', ctx('r1'), voters).map((r) => r.index),
      [10],
    );
    // A late acknowledgement of r1's heartbeats (sent before r2 existed) confirms nothing more.
    assert.deepEqual(ro.ack('c', ctx('r1'), voters), []);
    assert.deepEqual(
      ro.ack('c', ctx('r2'), voters).map((r) => r.index),
      [20],
    );
  });
});

describe('MemoryStorage contract', () => {
  it('serves entries, terms and bounds as documented', () => {
    const s = new MemoryStorage();
    s.append([ent(1, 1), ent(2, 1), ent(3, 2)]);
    assert.equal(s.firstIndex(), 1);
    assert.equal(s.lastIndex(), 3);
    assert.equal(s.term(0), 0);
    assert.equal(s.term(3), 2);
    assert.deepEqual(
      s.entries(1, 4, 2).map((e) => e.index),
      [1, 2],
    );
    assert.deepEqual(
      s.entries(1, 4, 0).map((e) => e.index),
      [1],
      'at least one entry',
    );
    assert.throws(() => s.entries(1, 5, 10), UnavailableError);
    s.append([ent(3, 3), ent(4, 3)]); // truncates the conflicting suffix
    assert.equal(s.term(3), 3);
    s.createSnapshot(2, { voters: ['a'], learners: [] });
    s.compact(2);
    assert.equal(s.firstIndex(), 3);
    assert.equal(s.term(2), 1);
    assert.throws(() => s.entries(2, 3, 10), CompactedError);
    assert.throws(() => s.term(1), CompactedError);
  });
});

describe('conf change encoding', () => {
  it('round-trips', () => {
    const cc = { type: ConfChangeType.PromoteLearner, node: 'node-ü' };
    assert.deepEqual(decodeConfChange(encodeConfChange(cc)), cc);
    assert.throws(() => decodeConfChange(new Uint8Array([9, 65])), RangeError);
  });
});

describe('config validation', () => {
  const base = () => ({
    id: 'a',
    electionTicks: 10,
    heartbeatTicks: 1,
    storage: MemoryStorage.bootstrap({ voters: ['a'], learners: [] }),
    applied: 1,
    rng: new Mulberry32(1),
    preVote: true,
    checkQuorum: true,
    maxSizePerMsg: 1024,
    maxInflightMsgs: 8,
    maxUncommittedEntriesBytes: 0,
  });

  it('accepts a sane config', () => {
    new RawNode(base());
  });

  for (const [name, patch, re] of [
    ['empty id', { id: '' }, /id/],
    ['election <= heartbeat', { electionTicks: 1 }, /electionTicks/],
    ['zero inflight', { maxInflightMsgs: 0 }, /maxInflightMsgs/],
    ['applied beyond commit', { applied: 7 }, /applied/],
    [
      'negative uncommitted limit',
      { maxUncommittedEntriesBytes: -1 },
      /maxUncommittedEntriesBytes/,
    ],
  ] as const) {
    it(`rejects ${name} with a clear message`, () => {
      assert.throws(
        () => new RawNode({ ...base(), ...patch }),
        (e: unknown) =>
          e instanceof ConfigError && e.code === 'RAFT_INVALID_CONFIG' && re.test(e.message),
      );
    });
  }
});

describe('prng', () => {
  it('is deterministic and in range', () => {
    const a = new Mulberry32(42);
    const b = new Mulberry32(42);
    for (let i = 0; i < 1000; i++) {
      const x = a.nextInt(7);
      assert.equal(x, b.nextInt(7));
      assert.ok(x >= 0 && x < 7);
    }
  });
});
