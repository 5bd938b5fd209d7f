import assert from 'node:assert/strict';
import { MessageType } from '../../src/raft';
import { Network } from './network';

describe('§5.2 leader election', () => {
  it('elects exactly one leader when every node runs its randomized timer', () => {
    const net = new Network(['a', 'b', 'c', 'd', 'e']);
    net.tick(40);
    const leaders = net.leaders();
    assert.equal(leaders.length, 1);
    const term = net.node(leaders[0]).raw.status().term;
    for (const n of net.nodes.values()) {
      assert.equal(n.raw.status().leader, leaders[0]);
      assert.equal(n.raw.status().term, term);
    }
  });

  it('draws election timeouts from [electionTicks, 2*electionTicks): no campaign before electionTicks', () => {
    const net = new Network(['a', 'b', 'c']);
    net.tick(9, ['a']);
    assert.equal(net.node('a').raw.status().role, 'follower');
    net.tick(11, ['a']);
    assert.notEqual(net.node('a').raw.status().role, 'follower');
  });

  it('a restarted node remembers its vote: no second vote in the same term', () => {
    const opts = { preVote: false, checkQuorum: false };
    const net = new Network(['a', 'b', 'c'], opts);
    const vote = (from: string) => ({
      type: MessageType.Vote,
      from,
      to: 'b',
      term: 2,
      logTerm: 1,
      index: 1,
      entries: [],
      commit: 0,
      reject: false,
      rejectHint: 0,
    });
    const b = net.node('b');
    b.raw.step(vote('a'));
    net.processReady(b); // persists {term 2, vote a}, then sends the grant
    assert.equal(net.queue.find((m) => m.type === MessageType.VoteResp)?.reject, false);
    net.nodes.delete('b'); // crash; restart from disk
    const b2 = net.addNode('b', b.storage, opts);
    b2.raw.step(vote('c'));
    const resp = b2.raw.ready().messagesAfterAppend.find((m) => m.type === MessageType.VoteResp);
    assert.equal(resp?.reject, true);
  });

  it('a candidate wins only once its own term and vote are durable, whatever others grant', () => {
    const opts = { preVote: false, checkQuorum: false };
    const net = new Network(['a', 'b', 'c'], opts);
    const a = net.node('a');
    while (a.raw.status().role !== 'candidate') a.raw.tick();
    const rd = a.raw.ready(); // the write of {term 2, vote a} is in flight from here on
    assert.equal(rd.hardState?.term, 2);
    assert.equal(rd.hardState?.vote, 'a');
    assert.ok(rd.mustSync);
    assert.deepEqual(rd.messagesAfterAppend, [], 'its own vote is not sent to the network');
    for (const m of rd.messages) net.deliver(m);
    for (const id of ['b', 'c']) net.processReady(net.node(id));
    const grants = net.queue.filter((m) => m.type === MessageType.VoteResp && !m.reject);
    assert.equal(grants.length, 2);
    for (const m of grants) net.deliver(m);
    // Both others granted: a majority without a. Not durable yet, so not a leader yet: a crash
    // now restarts a in term 1, free to campaign for term 2 again with another log.
    assert.equal(a.raw.status().role, 'candidate');
    a.storage.setHardState(rd.hardState!);
    a.raw.advance(rd);
    assert.equal(a.raw.status().role, 'leader');
    assert.equal(a.raw.status().term, 2);
  });

  it('a single voter elects itself and commits its own entries', () => {
    const net = new Network(['solo']);
    net.campaign('solo');
    assert.equal(net.node('solo').raw.status().role, 'leader');
    const i = net.propose('solo', 'x');
    assert.equal(net.node('solo').raw.status().commit, i);
    assert.deepEqual(net.appliedTexts('solo'), ['x']);
  });
});

describe('§9.6 pre-vote', () => {
  it('a rejoining partitioned node does not bump the term or disrupt the leader', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    const term = net.node('a').raw.status().term;
    net.isolate('c');
    net.tick(50, ['c']); // c times out repeatedly, but only pre-votes
    assert.equal(net.node('c').raw.status().term, term, 'pre-vote must not increase the term');
    net.heal();
    net.tick(5);
    assert.equal(net.node('a').raw.status().role, 'leader');
    assert.equal(net.node('a').raw.status().term, term);
    assert.equal(net.node('c').raw.status().leader, 'a');
  });

  it('without pre-vote the same scenario inflates the term (the disruption pre-vote prevents)', () => {
    const net = new Network(['a', 'b', 'c'], { preVote: false, checkQuorum: false });
    net.campaign('a');
    const term = net.node('a').raw.status().term;
    net.isolate('c');
    net.tick(50, ['c']);
    assert.ok(net.node('c').raw.status().term > term);
  });

  it('a leader hearing a higher term in the answer to its append steps down (§5.1), votes or not', () => {
    // c's term grows while it is cut off; c's vote requests never reach the leader (as for a
    // voter whose log predates the leader's membership and who does not know the leader).
    const net = new Network(['a', 'b', 'c'], { preVote: false, checkQuorum: false });
    net.campaign('a');
    net.isolate('c');
    net.tick(50, ['c']);
    const cTerm = net.node('c').raw.status().term;
    net.heal();
    net.filter = (m) => !(m.from === 'c' && m.type === MessageType.Vote);
    net.tick(1, ['a']); // a heartbeat to c, answered with c's term
    net.stabilize();
    assert.ok(net.node('a').raw.status().term >= cTerm, 'the stale leader adopted the higher term');
    assert.notEqual(net.node('a').raw.status().role, 'leader');
    net.filter = () => true;
    net.tick(40);
    assert.equal(net.leaders().length, 1);
    assert.equal(net.node('c').raw.status().leader, net.leaders()[0]);
  });
});

describe('§9 check-quorum and leader lease', () => {
  it('an isolated leader steps down after an election timeout without a quorum', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.isolate('a');
    net.tick(10, ['a']);
    assert.equal(net.node('a').raw.status().role, 'leader');
    net.tick(11, ['a']);
    assert.equal(net.node('a').raw.status().role, 'follower');
  });

  it('followers that heard from the leader recently ignore vote requests (lease)', () => {
    const net = new Network(['a', 'b', 'c'], { preVote: false });
    net.campaign('a');
    const term = net.node('a').raw.status().term;
    const b = net.node('b').raw;
    b.step({
      type: MessageType.Vote,
      from: 'c',
      to: 'b',
      term: term + 5,
      logTerm: 99,
      index: 99,
      entries: [],
      commit: 0,
      reject: false,
      rejectHint: 0,
    });
    assert.equal(b.status().term, term, 'vote request inside the lease is ignored');
    assert.equal(b.status().leader, 'a');
  });
});
