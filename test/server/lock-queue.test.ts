/**
 * The line of votes waiting for locks on one node (src/server/lock-queue.ts), over a real object
 * store whose prepares, finishes and aborts take and release the locks, as the ZEO server wires it.
 */
import * as assert from 'node:assert/strict';
import type { Command } from '../../src/storage/codec';
import { LockQueue, type LockNeed, type LockTicket, lockNeed } from '../../src/server/lock-queue';
import { Z64 } from '../../src/util/ids';
import { ST, TestStore, oid } from '../storage/helpers';

function mustOk(r: { ok: boolean; error?: { message: string } }): void {
  assert.ok(r.ok, r.error?.message);
}

const flush = (): Promise<void> => new Promise((r) => setImmediate(r));
const FAR = (): number => Date.now() + 60_000;

describe('ZEO lock queue', function () {
  let s: TestStore;
  let q: LockQueue;
  const X = oid(1);
  const Y = oid(2);

  beforeEach(async () => {
    s = await TestStore.create();
    q = new LockQueue({
      isFree: (n, txnId) => !s.store.lockedForOthers(n.storage, n.oid, txnId, n.shared),
      holds: (n, txnId) => s.store.lockHolder(n.storage, n.oid) === txnId,
      onApplied: (fn) => s.store.onApplied(fn),
    });
    await s.put(X, Z64, 'x');
    await s.put(Y, Z64, 'y');
  });
  afterEach(async () => {
    q.close();
    await s.destroy();
  });

  const hold = async (txnId: string, o: Buffer): Promise<void> =>
    mustOk(
      await s.apply({
        prepare: { txnId, txn: { storage: ST, checks: [{ oid: o }] }, reserve: true },
      } as Command),
    );
  const release = (txnId: string): Promise<unknown> => s.apply({ abort: { storage: ST, txnId } });

  /** Enter the line and wait; `woken` lists the waiters in the order their turn came. */
  function waiter(
    name: string,
    needs: LockNeed[],
    woken: string[],
  ): { ticket: LockTicket; turn: Promise<void> } {
    const ticket = q.enter(needs, name);
    const turn = ticket.wait(FAR()).then(() => void woken.push(name));
    return { ticket, turn };
  }

  it('gives the turn to waiters on one object in the order they came, one at a time', async () => {
    await hold('h', X);
    const woken: string[] = [];
    const ws = ['a', 'b', 'c'].map((n) => waiter(n, [lockNeed(ST, X, false)], woken));
    await flush();
    assert.deepEqual([...woken], [], 'nobody while the holder holds the object');
    assert.equal(
      q.behindOthers([lockNeed(ST, X, false)], 'd'),
      true,
      'a newcomer queues behind them',
    );
    assert.equal(q.behindOthers([lockNeed(ST, Y, false)], 'd'), false);
    assert.equal(q.behindOthers([lockNeed(ST, X, false)], 'h'), false, 'not the holder itself');
    await release('h');
    await flush();
    assert.deepEqual([...woken], ['a'], 'only the first, though the object is free for all');
    // a's vote takes the lock, then it leaves the line; b waits until a's transaction ends.
    await hold('a', X);
    ws[0].ticket.leave();
    await flush();
    assert.deepEqual([...woken], ['a']);
    await release('a');
    await flush();
    assert.deepEqual([...woken], ['a', 'b']);
    // b lost to a vote from another node: it goes back to its place, still before c.
    await hold('elsewhere', X);
    const again = ws[1].ticket.wait(FAR()).then(() => void woken.push('b again'));
    await flush();
    await release('elsewhere');
    await again;
    await flush();
    assert.deepEqual([...woken], ['a', 'b', 'b again']);
    ws[1].ticket.leave();
    await ws[2].turn;
    assert.deepEqual([...woken], ['a', 'b', 'b again', 'c']);
    ws[2].ticket.leave();
    assert.equal(q.waiting, 0);
  });

  it('does not hold back waiters on other objects, nor votes that share an object', async () => {
    await hold('h', X);
    const woken: string[] = [];
    const a = waiter('a', [lockNeed(ST, X, false)], woken);
    const b = waiter('b', [lockNeed(ST, Y, false)], woken);
    await b.turn;
    assert.deepEqual([...woken], ['b'], 'b needs only a free object');
    b.ticket.leave();
    // Resolved stores of X share it: two of them go together, an exclusive waiter stays behind.
    const r1 = waiter('r1', [lockNeed(ST, X, true)], woken);
    const r2 = waiter('r2', [lockNeed(ST, X, true)], woken);
    const e = waiter('e', [lockNeed(ST, X, false)], woken);
    a.ticket.leave(); // gives up (its wait ends), before its turn came
    await release('h');
    await Promise.all([r1.turn, r2.turn]);
    await flush();
    assert.deepEqual([...woken], ['b', 'a', 'r1', 'r2']);
    r1.ticket.leave();
    await flush();
    assert.deepEqual([...woken], ['b', 'a', 'r1', 'r2'], 'e waits for r2 too');
    r2.ticket.leave();
    await e.turn;
    e.ticket.leave();
  });

  it('puts the holder of a reservation voting again before those waiting for it', async () => {
    await hold('r', X);
    const woken: string[] = [];
    const w = waiter('w', [lockNeed(ST, X, false)], woken);
    // r (its client resolved the conflicts) votes again on X and on Y, which another vote holds.
    await hold('other', Y);
    assert.equal(q.behindOthers([lockNeed(ST, X, false), lockNeed(ST, Y, false)], 'r'), false);
    const r = waiter('r', [lockNeed(ST, X, false), lockNeed(ST, Y, false)], woken);
    await release('other');
    await r.turn;
    await flush();
    assert.deepEqual([...woken], ['r'], 'w still waits for X, which r holds');
    r.ticket.leave();
    await release('r');
    await w.turn;
    w.ticket.leave();
  });

  it('never lets two waiters wait for each other (objects needed in opposite orders)', async () => {
    await hold('h', X);
    const woken: string[] = [];
    const a = waiter('a', [lockNeed(ST, X, false), lockNeed(ST, Y, false)], woken);
    const b = waiter('b', [lockNeed(ST, Y, false), lockNeed(ST, X, false)], woken);
    await release('h');
    await a.turn;
    await flush();
    assert.deepEqual([...woken], ['a']);
    a.ticket.leave();
    await b.turn;
    b.ticket.leave();
  });

  it('ends a wait at its deadline when the turn never comes', async () => {
    await hold('h', X);
    const t = q.enter([lockNeed(ST, X, false)], 'a');
    await t.wait(Date.now() + 50);
    assert.ok(s.store.lockedForOthers(ST, X, 'a', false), 'returned with the object still held');
    t.leave();
    assert.equal(q.waiting, 0);
  });
});
