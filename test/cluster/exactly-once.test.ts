/**
 * Exactly-once commits with real processes: a commit whose leader is killed (SIGKILL) after the
 * followers appended it and before it answered has an unknown outcome for its client; retried
 * through another node with the same session and sequence number, it gets the first attempt's
 * answer (its TID, stamped before the kill) and is applied once. Without the session the same
 * retry meets a conflict with its own commit, which a read-modify-write loop would take for
 * somebody else's and apply again.
 *
 * How the outcome is made unknown: the links from both followers to the leader are cut, so the
 * leader's appends reach the followers (and are written there) but no acknowledgement comes back;
 * the leader cannot commit nor answer. Once both followers hold the entry, the leader is killed;
 * the survivors elect one of them, which commits the entry with its own first entry.
 */
import * as assert from 'node:assert/strict';
import { ClientStorage } from '../../src/client';
import { ConflictError, DisconnectedError, SequenceOldError } from '../../src/client/errors';
import { Z64, hex, p64, tidToTime } from '../../src/util/ids';
import { TestCluster } from '../harness/cluster';
import { eventually } from '../harness/index';

const FSYNC_COUNT = /^zeoraft_disk_log_fsync_duration_seconds_count(?:\{[^}]*\})? (\d+)/m;

describe('cluster: exactly-once commits across a leader killed between append and answer', function () {
  this.timeout(120_000);
  let cluster: TestCluster;

  before(async () => {
    cluster = await TestCluster.start(3);
  });
  after(async () => {
    await cluster?.stop();
  });

  async function fsyncs(id: string): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${cluster.member(id).http}/metrics`)).text();
    const m = FSYNC_COUNT.exec(text);
    assert.ok(m, 'the node exports its log fsync count');
    return Number(m[1]);
  }

  /**
   * Start `send` against the leader while no follower's acknowledgement reaches it, wait until
   * both followers have written the entry, then SIGKILL the leader and heal the links. Returns
   * the leader, the survivors, when the leader was killed and the (unsettled) result of `send`.
   */
  async function killLeaderBetweenAppendAndAnswer<T>(
    send: (leader: string) => Promise<T>,
  ): Promise<{
    leader: string;
    survivors: string[];
    killedAtMs: number;
    result: Promise<{ ok: T } | { error: unknown }>;
  }> {
    const leader = await cluster.leader();
    const survivors = cluster.alive().filter((id) => id !== leader);
    const before = await Promise.all(survivors.map(fsyncs));
    for (const f of survivors) cluster.proxies.get(`${f}>${leader}`)!.cut();
    const result = send(leader).then(
      (ok) => ({ ok }),
      (error: unknown) => ({ error }),
    );
    await eventually(
      async () => (await Promise.all(survivors.map(fsyncs))).every((n, i) => n > before[i]),
      10_000,
      'both followers to write the commit',
    );
    const killedAtMs = Date.now();
    await cluster.kill(leader);
    cluster.healAll();
    return { leader, survivors, killedAtMs, result };
  }

  it('answers a retried Commit with the first attempt, on every node, and refuses an older sequence', async () => {
    const leader0 = await cluster.leader();
    const x = p64(0x5e55n);
    const s0 = (
      await cluster.rpc(leader0).call('Commit', {
        transaction: { stores: [{ oid: x, serial: Z64, data: Buffer.from('0') }] },
      })
    ).tid;
    const request = {
      transaction: { stores: [{ oid: x, serial: s0, data: Buffer.from('1') }] },
      sessionId: 'session-a',
      sequence: 1,
      sessionSinceTid: s0,
    };
    const { leader, survivors, killedAtMs, result } = await killLeaderBetweenAppendAndAnswer((l) =>
      cluster.rpc(l).call('Commit', request, 10_000),
    );
    const first = await result;
    assert.ok('error' in first, 'the killed leader never answered');
    assert.ok(first.error instanceof DisconnectedError, `outcome unknown: ${String(first.error)}`);

    // The retry through a survivor gets the first attempt's commit: its TID is from before the kill.
    const retry = await cluster.rpc(survivors[0]).call('Commit', request, 20_000);
    assert.ok(
      tidToTime(retry.tid) < killedAtMs,
      `TID ${hex(retry.tid)} was stamped by the killed leader, before the kill`,
    );
    const history = await cluster
      .rpc(survivors[0])
      .call('History', { oid: x, size: 10, seenTid: retry.tid });
    assert.deepEqual(
      history.entries.map((e) => hex(e.tid)),
      [hex(retry.tid), hex(s0)],
      'applied once',
    );
    // The same retry without the session conflicts with its own commit.
    const naive = await cluster
      .rpc(survivors[1])
      .call('Commit', { transaction: request.transaction }, 20_000)
      .catch((e: unknown) => e);
    assert.ok(naive instanceof ConflictError, `got ${String(naive)}`);
    assert.deepEqual(naive.actualSerial, retry.tid);

    // Every node answers the retry alike, the restarted one too (from its log replay).
    await cluster.startNode(leader);
    for (const id of [leader, ...survivors]) {
      await cluster.rpc(id).call('Load', { oid: x, seenTid: retry.tid }, 20_000);
      const again = await cluster.rpc(id).call('Commit', request, 20_000);
      assert.equal(hex(again.tid), hex(retry.tid), `node ${id}`);
    }
    // The next number commits; the old one is then refused and commits nothing.
    const second = await cluster.rpc(survivors[1]).call(
      'Commit',
      {
        transaction: { stores: [{ oid: x, serial: retry.tid, data: Buffer.from('2') }] },
        sessionId: 'session-a',
        sequence: 2,
        sessionSinceTid: s0,
      },
      20_000,
    );
    const old = await cluster
      .rpc(leader)
      .call('Commit', request, 20_000)
      .catch((e: unknown) => e);
    assert.ok(old instanceof SequenceOldError, `got ${String(old)}`);
    const now = await cluster.rpc(leader).call('Load', { oid: x, seenTid: second.tid });
    assert.equal(now.data.toString(), '2');
    assert.deepEqual(now.serial, second.tid);
  });

  it('ClientStorage.commit() survives the same failure: one commit, its own answer, its own view', async () => {
    const leader0 = await cluster.leader();
    const others = cluster.members.map((m) => m.id).filter((id) => id !== leader0);
    const addresses = [leader0, ...others].map((id) => `127.0.0.1:${cluster.member(id).client}`);
    const commitsTo: string[] = [];
    const client = await ClientStorage.open({
      addresses,
      timeoutMs: 2000,
      retryWindowMs: 30_000,
      testHooks: { onRpc: (m, a) => m === 'Commit' && commitsTo.push(a) },
    });
    try {
      const oid = await client.newOid();
      const s0 = await client.commit({ stores: [{ oid, data: Buffer.from('0') }] });
      commitsTo.length = 0;
      const { killedAtMs, result } = await killLeaderBetweenAppendAndAnswer(() =>
        client.commit({ stores: [{ oid, serial: s0, data: Buffer.from('1') }] }),
      );
      const r = await result;
      assert.ok('ok' in r, `commit() failed: ${'error' in r ? String(r.error) : ''}`);
      const tid = r.ok;
      assert.ok(tidToTime(tid) < killedAtMs, 'the answer is the first attempt, committed once');
      assert.ok(new Set(commitsTo).size >= 2, `retried on another node: ${commitsTo.join(', ')}`);
      // Read-your-writes: once commit() returned, the client's view includes it.
      assert.ok(Buffer.compare(client.lastTransaction(), tid) >= 0);
      const mine = await client.load(oid);
      assert.equal(mine.data.toString(), '1');
      assert.deepEqual(mine.serial, tid);
      const history = await client.history(oid, 10);
      assert.deepEqual(
        history.map((e) => hex(e.tid)),
        [hex(tid), hex(s0)],
        'applied once',
      );
      // The session goes on: the next commit is applied, also through transact().
      const { tid: next } = await client.transact(async (txn) => {
        const cur = await txn.load(oid);
        txn.store(oid, cur.serial, Buffer.from(String(Number(cur.data.toString()) + 1)));
      });
      assert.equal((await client.load(oid)).data.toString(), '2');
      assert.deepEqual((await client.load(oid)).serial, next);
    } finally {
      await client.close();
    }
  });
});
