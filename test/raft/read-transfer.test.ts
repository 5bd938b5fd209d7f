import assert from 'node:assert/strict';
import { MessageType, ProposalDroppedError } from '../../src/raft';
import { Network, text } from './network';

describe('§6.4 ReadIndex', () => {
  it('on the leader: answers with the commit index after a heartbeat round', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    const i = net.propose('a', 'x');
    net.delivered = [];
    net.node('a').raw.readIndex(text('r1'));
    net.stabilize();
    const rs = net.node('a').readStates;
    assert.equal(rs.length, 1);
    assert.equal(rs[0].index, i);
    assert.equal(new TextDecoder().decode(rs[0].context), 'r1');
    assert.ok(
      net.countDelivered(MessageType.Heartbeat, 'a') >= 1,
      'leadership confirmed by heartbeats',
    );
  });

  it('on a follower: forwards to the leader and gets the answer back', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    const i = net.propose('a', 'x');
    net.node('b').raw.readIndex(text('r2'));
    net.stabilize();
    const rs = net.node('b').readStates;
    assert.equal(rs.length, 1);
    assert.equal(rs[0].index, i);
  });

  it('is not answered by a leader cut off from the quorum', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.isolate('a');
    net.node('a').raw.readIndex(text('r3'));
    net.stabilize();
    assert.equal(net.node('a').readStates.length, 0);
  });

  it('waits until the new leader has committed an entry of its term', () => {
    const net = new Network(['a', 'b', 'c']);
    net.filter = (m) => m.type !== MessageType.Append && m.type !== MessageType.AppendResp;
    net.campaign('a');
    const a = net.node('a');
    assert.equal(a.raw.status().role, 'leader');
    a.raw.readIndex(text('r4'));
    net.stabilize();
    assert.equal(a.readStates.length, 0);
    net.heal();
    net.tick(2);
    assert.equal(a.readStates.length, 1);
    assert.equal(a.readStates[0].index, a.raw.status().commit);
  });

  it('throws on a node that knows no leader', () => {
    const net = new Network(['a', 'b', 'c']);
    assert.throws(() => net.node('a').raw.readIndex(text('r5')), ProposalDroppedError);
  });
});

describe('§3.10 leadership transfer', () => {
  it('catches the target up, sends TimeoutNow, and the target wins', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.isolate('c');
    net.propose('a', 'x');
    net.heal();
    net.node('a').raw.transferLeadership('c');
    net.stabilize();
    assert.equal(net.countDelivered(MessageType.TimeoutNow, 'a', 'c'), 1);
    assert.deepEqual(net.leaders(), ['c']);
    assert.deepEqual(net.appliedTexts('c'), ['x']);
  });

  it('refuses proposals while transferring and aborts after an election timeout', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.isolate('c');
    const a = net.node('a').raw;
    a.transferLeadership('c');
    assert.throws(
      () => a.propose(text('x')),
      (e: unknown) => e instanceof ProposalDroppedError && e.reason === 'transferring',
    );
    net.tick(11, ['a', 'b']);
    assert.equal(a.status().leadTransferee, '');
    assert.equal(a.status().role, 'leader');
    a.propose(text('x'));
  });

  it('a follower forwards the request to the leader', () => {
    const net = new Network(['a', 'b', 'c']);
    net.campaign('a');
    net.node('b').raw.transferLeadership('b');
    net.stabilize();
    assert.deepEqual(net.leaders(), ['b']);
  });
});
