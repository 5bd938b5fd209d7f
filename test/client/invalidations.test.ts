/**
 * ClientStorage.invalidations() against a real three-node cluster: a reader on a follower iterates
 * the commits a writer on the leader makes. The iterator yields them in TID order as the listeners
 * see them, keeps at most bufferEventsMax items for a consumer that lags (the rest collapse into
 * an overflow item that accounts for every event it replaces), and ends when the client closes or
 * the loop exits.
 */
import * as assert from 'node:assert/strict';
import {
  ClientStorage,
  InvalidArgumentError,
  InvalidationEvent,
  InvalidationItem,
  InvalidationIterator,
} from '../../src/client';
import { hex, idCompare } from '../../src/util/ids';
import { sleep } from '../harness';
import { TestCluster } from '../harness/cluster';

describe('ClientStorage invalidations iterator on a three-node cluster', function () {
  this.timeout(120_000);
  let cluster: TestCluster;
  let leaderFirst: string[];
  let followerFirst: string[];
  const clients: ClientStorage[] = [];

  async function open(addresses: string[]): Promise<ClientStorage> {
    const c = await ClientStorage.open({ addresses, timeoutMs: 3000 });
    clients.push(c);
    return c;
  }

  /** `n` commits by `writer`, one after the other, each creating one object; their TIDs. */
  async function commitSeveral(writer: ClientStorage, n: number): Promise<Buffer[]> {
    const tids: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const oid = await writer.newOid();
      tids.push(await writer.commit({ stores: [{ oid, data: Buffer.from(`v${i}`) }] }));
    }
    return tids;
  }

  /** The next item, which must exist (not the end of iteration). */
  async function take(it: InvalidationIterator): Promise<InvalidationItem> {
    const r = await it.next();
    assert.equal(r.done, false, 'an item, not the end');
    return r.value as InvalidationItem;
  }

  /**
   * Check `items` against the committed `tids` (ascending): each item is the next commit, or an
   * overflow standing for the next `overflowed` commits and naming the last of them.
   */
  function assertAccountsFor(items: InvalidationItem[], tids: Buffer[]): void {
    let next = 0;
    for (const item of items) {
      if (item.overflowed > 0) {
        assert.equal(item.reset, true, 'an overflow is a reset for the consumer');
        assert.deepEqual(item.oids, []);
        next += item.overflowed;
      } else {
        assert.equal(item.reset, false);
        next += 1;
      }
      assert.ok(next <= tids.length, `items stand for more than the ${tids.length} commits`);
      assert.equal(hex(item.tid), hex(tids[next - 1]), `item ${items.indexOf(item)}'s TID`);
    }
    assert.equal(next, tids.length, 'every commit is accounted for');
  }

  before(async () => {
    cluster = await TestCluster.start(3);
    const leader = await cluster.leader();
    const addr = (id: string): string => `127.0.0.1:${cluster.member(id).client}`;
    const others = cluster.members.map((m) => m.id).filter((id) => id !== leader);
    leaderFirst = [leader, ...others].map(addr);
    followerFirst = [...others, leader].map(addr);
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
  });
  after(async () => {
    await cluster?.stop();
  });

  it('yields every commit in TID order, the same events the listeners get', async () => {
    const writer = await open(leaderFirst);
    const reader = await open(followerFirst);
    const heard: InvalidationEvent[] = [];
    reader.onInvalidate((ev) => heard.push(ev));
    const it = reader.invalidations({ bufferEventsMax: 100 });

    const tids = await commitSeveral(writer, 20);
    assert.ok(await reader.waitForTid(tids[tids.length - 1], 10_000), 'the reader caught up');

    const items: InvalidationItem[] = [];
    for (let i = 0; i < tids.length; i++) items.push(await take(it));
    assert.equal(it.buffered, 0, 'nothing beyond the 20 commits');
    assertAccountsFor(items, tids);
    assert.ok(items.every((x) => x.overflowed === 0 && x.oids.length === 1));
    for (let i = 1; i < items.length; i++)
      assert.ok(idCompare(items[i - 1].tid, items[i].tid) < 0, 'strictly increasing TIDs');
    assert.deepEqual(
      items.map((x) => ({ tid: x.tid, oids: x.oids, reset: x.reset })),
      heard,
      'the iterator and the listener see the same events',
    );
  });

  it('keeps at most bufferEventsMax items for a consumer that takes none, collapsing the rest into an overflow', async () => {
    const writer = await open(leaderFirst);
    const reader = await open(followerFirst);
    const it = reader.invalidations({ bufferEventsMax: 4 });
    const tids: Buffer[] = [];
    for (let i = 0; i < 10; i++) {
      tids.push(...(await commitSeveral(writer, 1)));
      assert.ok(await reader.waitForTid(tids[i], 10_000), 'the reader caught up');
      assert.ok(it.buffered <= 4, `${it.buffered} items buffered after commit ${i + 1}`);
    }
    // Commits 1-4 filled the buffer; the 5th collapsed them and itself into one overflow, 6-8
    // followed it, the 9th collapsed again (5 + 3 + 1 events), the 10th follows.
    assert.equal(it.buffered, 2);
    const overflow = await take(it);
    assert.deepEqual(
      {
        tid: hex(overflow.tid),
        oids: overflow.oids,
        reset: overflow.reset,
        n: overflow.overflowed,
      },
      { tid: hex(tids[8]), oids: [], reset: true, n: 9 },
    );
    const last = await take(it);
    assert.equal(hex(last.tid), hex(tids[9]));
    assert.equal(last.overflowed, 0);
    assertAccountsFor([overflow, last], tids);
  });

  it('gives a consumer slower than the stream every commit or an overflow covering it, in order, and ends on close', async () => {
    const writer = await open(leaderFirst);
    const reader = await open(followerFirst);
    const bound = 3;
    const it = reader.invalidations({ bufferEventsMax: bound });
    const items: InvalidationItem[] = [];
    let mostBuffered = 0;
    const consumer = (async () => {
      for await (const item of it) {
        items.push(item);
        mostBuffered = Math.max(mostBuffered, it.buffered);
        await sleep(30); // slower than the writer
      }
    })();
    const batches = await Promise.all(Array.from({ length: 5 }, () => commitSeveral(writer, 8)));
    const tids = batches.flat().sort(idCompare);
    assert.ok(await reader.waitForTid(tids[tids.length - 1], 10_000), 'the reader caught up');
    await reader.close(); // the loop ends after the items still buffered
    await consumer;
    assert.ok(mostBuffered <= bound, `at most ${bound} items buffered, saw ${mostBuffered}`);
    assertAccountsFor(items, tids);
    assert.equal((await it.next()).done, true, 'ended for good');
  });

  it('ends a pending next() when the client closes, and at once on a closed client', async () => {
    const reader = await open(followerFirst);
    const it = reader.invalidations();
    const pending = it.next();
    await reader.close();
    assert.deepEqual(await pending, { value: undefined, done: true });
    const after: InvalidationItem[] = [];
    for await (const item of reader.invalidations()) after.push(item);
    assert.deepEqual(after, []);
  });

  it('stops buffering once the loop exits', async () => {
    const writer = await open(leaderFirst);
    const reader = await open(followerFirst);
    const it = reader.invalidations({ bufferEventsMax: 10 });
    const first = await commitSeveral(writer, 1);
    for await (const item of it) {
      assert.equal(hex(item.tid), hex(first[0]));
      break;
    }
    const more = await commitSeveral(writer, 3);
    assert.ok(await reader.waitForTid(more[2], 10_000), 'the reader caught up');
    assert.equal(it.buffered, 0, 'nothing buffered after the loop exited');
    assert.equal((await it.next()).done, true);
  });

  it('refuses a bufferEventsMax that is not a positive integer', async () => {
    const reader = await open(followerFirst);
    for (const bufferEventsMax of [0, -1, 1.5, NaN, Infinity])
      assert.throws(() => reader.invalidations({ bufferEventsMax }), InvalidArgumentError);
  });
});
