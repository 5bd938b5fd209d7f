import assert from 'node:assert/strict';
import { EntryType, MessageType, ProposalDroppedError } from '../../src/raft';
import { Network, text } from './network';

describe('§5.3 log replication', () => {
  it('replicates and commits proposals on every node, in order', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    for (const s of ['x', 'y', 'z']) net.propose('a', s);
    for (const id of ['a', 'b', 'c']) assert.deepEqual(net.appliedTexts(id), ['x', 'y', 'z']);
  });

  it('batches proposals made between two Readies into one Append per follower', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.delivered = [];
    const a = net.node('a').raw;
    for (let i = 0; i < 10; i++) a.propose(text(`p${i}`));
    net.stabilize();
    const appends = net.delivered.filter(
      (m) => m.type === MessageType.Append && m.to === 'b' && m.entries.length > 0,
    );
    assert.equal(appends.length, 1);
    assert.equal(appends[0].entries.length, 10);
  });

  it('hasReady() changes nothing: batched appends leave only with ready()', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    const a = net.node('a').raw;
    a.propose(text('p'));
    const before = structuredClone(a.status());
    assert.ok(a.hasReady());
    assert.ok(a.hasReady());
    assert.deepEqual(a.status(), before); // no Append sent, no follower's next index moved
    const rd = a.ready();
    assert.equal(rd.messages.filter((m) => m.type === MessageType.Append).length, 2);
    assert.notDeepEqual(a.status().progress, before.progress);
  });

  it('truncates a follower’s conflicting uncommitted suffix (Figure 7)', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.propose('a', 'base');
    // a, cut off, appends entries nobody else gets.
    net.isolate('a');
    net.node('a').raw.propose(text('lost1'));
    net.node('a').raw.propose(text('lost2'));
    net.stabilize();
    assert.ok(net.node('a').storage.lastIndex() > net.node('b').storage.lastIndex());
    // b or c leads a new term (c must also see a's silence to leave its lease) and commits
    // different entries.
    net.tick(40, ['b', 'c']);
    const leader = net.leaders().find((id) => id !== 'a')!;
    assert.ok(leader);
    net.propose(leader, 'kept');
    net.heal();
    net.tick(25);
    for (const id of ['a', 'b', 'c']) assert.deepEqual(net.appliedTexts(id), ['base', 'kept']);
    const lastA = net.node('a').storage.lastIndex();
    const lastB = net.node('b').storage.lastIndex();
    assert.equal(lastA, lastB);
    assert.deepEqual(
      net.node('a').storage.entries(lastA, lastA + 1, 1e9)[0].term,
      net.node('b').storage.entries(lastB, lastB + 1, 1e9)[0].term,
    );
  });

  it('a follower commits no further than the last entry of the Append (min(leaderCommit, last new))', () => {
    const net = new Network(['a', 'b', 'c']);
    // b holds entry 2 (term 2, also on the leader) and a stale suffix 3..4 of term 2 that no
    // leader of term 3 has.
    const b = net.node('b');
    b.storage.append([
      { index: 2, term: 2, type: EntryType.Normal, data: text('kept') },
      { index: 3, term: 2, type: EntryType.Normal, data: text('stale1') },
      { index: 4, term: 2, type: EntryType.Normal, data: text('stale2') },
    ]);
    b.storage.setHardState({ term: 3, vote: '', commit: 1 });
    net.nodes.delete('b');
    net.addNode('b', b.storage);
    // The leader of term 3 has committed 4 (its own entries at 3..4) and sends entry 2 only,
    // e.g. one entry per message: nothing in it tells b that 3..4 are not the leader's.
    net.deliver({
      type: MessageType.Append,
      from: 'a',
      to: 'b',
      term: 3,
      logTerm: 1,
      index: 1,
      entries: [{ index: 2, term: 2, type: EntryType.Normal, data: text('kept') }],
      commit: 4,
      reject: false,
      rejectHint: 0,
    });
    assert.equal(net.node('b').raw.status().commit, 2, 'commit bounded by the last new entry');
    assert.equal(net.node('b').raw.status().lastIndex, 4, 'the matching Append truncates nothing');
  });
});

describe('§5.4.2 committing entries from previous terms', () => {
  it('a leader does not commit a previous-term entry by counting replicas (Figure 8)', () => {
    const net = new Network(['a', 'b', 'c'], { maxSizePerMsg: 1 });
    // a holds an uncommitted entry from term 2 that nobody else has.
    const a = net.node('a');
    a.storage.append([{ index: 2, term: 2, type: EntryType.Normal, data: text('old') }]);
    a.storage.setHardState({ term: 2, vote: '', commit: 1 });
    net.nodes.delete('a');
    net.addNode('a', a.storage);
    net.filter = (m) => m.type !== MessageType.Append; // hold back replication
    net.campaign('a');
    const st = net.node('a').raw.status();
    assert.equal(st.role, 'leader');
    assert.equal(st.lastIndex, 3, 'old entry at 2, the new leader’s empty entry at 3');
    // b acknowledges the old-term entry only: a quorum (a, b) holds index 2, yet it is not committed.
    net.deliver({
      type: MessageType.AppendResp,
      from: 'b',
      to: 'a',
      term: st.term,
      logTerm: 0,
      index: 2,
      entries: [],
      commit: 0,
      reject: false,
      rejectHint: 0,
    });
    assert.equal(net.node('a').raw.status().commit, 1);
    // Once an entry of the leader's own term is on a quorum, both commit.
    net.deliver({
      type: MessageType.AppendResp,
      from: 'b',
      to: 'a',
      term: st.term,
      logTerm: 0,
      index: 3,
      entries: [],
      commit: 0,
      reject: false,
      rejectHint: 0,
    });
    assert.equal(net.node('a').raw.status().commit, 3);
  });
});

describe('flow control', () => {
  it('never has more than maxInflightMsgs unacknowledged Appends to a peer', () => {
    const net = new Network(['a', 'b', 'c'], { maxSizePerMsg: 1, maxInflightMsgs: 3 });
    net.campaign('a');
    net.filter = (m) => !(m.to === 'b' && m.type === MessageType.Append); // b never hears
    net.delivered = [];
    const a = net.node('a').raw;
    for (let i = 0; i < 20; i++) a.propose(text(`e${i}`));
    net.stabilize();
    const pr = a.status().progress.b;
    assert.equal(pr.state, 'replicate');
    assert.equal(pr.inflight, 3);
    // c got everything, so entries still commit.
    assert.equal(a.status().commit, a.status().lastIndex);
  });

  it('refuses proposals beyond maxUncommittedEntriesBytes with a clear error', () => {
    const net = new Network(['a', 'b', 'c'], { maxUncommittedEntriesBytes: 10 });
    net.campaign('a');
    net.isolate('a'); // nothing commits
    const a = net.node('a').raw;
    a.propose(text('12345678'));
    assert.throws(
      () => a.propose(text('12345678')),
      (e: unknown) =>
        e instanceof ProposalDroppedError &&
        e.reason === 'uncommitted-limit' &&
        e.code === 'RAFT_PROPOSAL_DROPPED',
    );
    net.heal();
    net.stabilize();
    net.tick(2);
    a.propose(text('12345678')); // committed bytes are released
  });

  it('refuses proposals on a follower', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    assert.throws(
      () => net.node('b').raw.propose(text('x')),
      (e: unknown) => e instanceof ProposalDroppedError && e.reason === 'not-leader',
    );
  });
});
