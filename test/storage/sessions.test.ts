/**
 * Client sessions in the object store (exactly-once commits, the Raft dissertation's §6.3): a
 * repeated sequence number gets the first answer and commits nothing, an older one is refused, the
 * table is bounded (least recently used forgotten first) and expires by the commands' TIDs, and it
 * is part of the replicated state: snapshots, restarts and replicas all give the same answers.
 */
import * as assert from 'node:assert/strict';
import type { Command } from '../../src/storage/codec';
import {
  ApplyResult,
  ObjectStore,
  SESSIONS_MAX,
  SESSION_EXPIRY_MS,
} from '../../src/storage/object-store';
import { Z64, hex, tidFromTime } from '../../src/util/ids';
import { ST, TestStore, data, expectError, mustTid, oid, tempDir } from './helpers';

/** Command times: a fixed start, so expiry is exercised by the TIDs carried in the commands. */
const T0 = Date.UTC(2026, 0, 1);

function sessionCommit(
  session: string,
  seq: number,
  o: Buffer,
  serial: Buffer,
  value: string,
  atMs: number,
  since: Buffer = Z64,
): Command {
  return {
    commit: {
      tid: tidFromTime(atMs),
      txn: { storage: ST, stores: [{ oid: o, serial, data: data(value) }] },
      sessionId: session,
      seq,
      sinceTid: since,
    },
  };
}

function answer(r: ApplyResult): string {
  return r.ok ? `ok ${hex(r.tid!)}` : `${r.error.kind}: ${r.error.message}`;
}

async function txnCount(s: ObjectStore): Promise<number> {
  return (await s.historyWindow(ST, 1)).count;
}

async function snapshotInto(from: ObjectStore, to: ObjectStore): Promise<void> {
  const chunks: Buffer[] = [];
  const snap = from.snapshot();
  for await (const c of snap.chunks) chunks.push(c);
  async function* replay(): AsyncGenerator<Buffer> {
    yield* chunks;
  }
  await to.restore(replay, snap.index);
}

describe('ObjectStore client sessions', () => {
  const stores: TestStore[] = [];
  const fresh = async (): Promise<TestStore> => {
    const s = await TestStore.create(tempDir());
    stores.push(s);
    return s;
  };
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.destroy()));
  });

  it('answers a repeated sequence number with the first answer and commits nothing', async () => {
    const t = await fresh();
    const first = mustTid(await t.apply(sessionCommit('s', 1, oid(1), Z64, 'a', T0)));
    const count = await txnCount(t.store);
    // The retry is based on the serial the first attempt replaced: without the session it would
    // be a conflict with the client's own commit.
    const again = await t.apply(sessionCommit('s', 1, oid(1), Z64, 'a', T0 + 5));
    assert.equal(answer(again), `ok ${hex(first)}`);
    assert.equal(await txnCount(t.store), count, 'the retry committed nothing');
    assert.deepEqual((await t.store.load(ST, oid(1))).serial, first);
    // The same transaction without a session is the self-conflict a retry would otherwise meet.
    expectError(
      await t.apply({
        commit: {
          tid: tidFromTime(T0 + 6),
          txn: { storage: ST, stores: [{ oid: oid(1), serial: Z64, data: data('a') }] },
        },
      }),
      'CONFLICT',
    );
    // The next number commits; the old one is refused, and commits nothing.
    const second = mustTid(await t.apply(sessionCommit('s', 2, oid(1), first, 'b', T0 + 10)));
    const old = expectError(
      await t.apply(sessionCommit('s', 1, oid(1), second, 'c', T0 + 20)),
      'SEQUENCE_OLD',
    );
    assert.match(old.message, /older than its last commit 2/);
    assert.equal((await t.store.load(ST, oid(1))).data.toString(), 'b');
  });

  it('records a failed commit: a duplicate applied later gets the failure, never a commit', async () => {
    const t = await fresh();
    const s1 = await t.put(oid(1), Z64, 'x', { tid: tidFromTime(T0) });
    const s2 = await t.put(oid(1), s1, 'y', { tid: tidFromTime(T0 + 1) });
    const failed = expectError(
      await t.apply(sessionCommit('s', 1, oid(1), s1, 'z', T0 + 2)),
      'CONFLICT',
    );
    assert.deepEqual(failed.conflict?.actual, s2);
    const count = await txnCount(t.store);
    await t.put(oid(2), Z64, 'unrelated', { tid: tidFromTime(T0 + 3) });
    // A duplicate of that attempt would now succeed if it ran (its base is current): it must not.
    const dup = await t.apply(sessionCommit('s', 1, oid(1), s2, 'z', T0 + 4));
    const e = expectError(dup, 'CONFLICT');
    assert.equal(e.message, failed.message);
    assert.deepEqual(e.conflict?.oid, oid(1));
    assert.deepEqual(e.conflict?.expected, s1);
    assert.deepEqual(e.conflict?.actual, s2);
    assert.equal(await txnCount(t.store), count + 1, 'only the unrelated commit');
    assert.equal((await t.store.load(ST, oid(1))).data.toString(), 'y');
  });

  it('refuses a malformed session commit without touching the table', async () => {
    const t = await fresh();
    expectError(await t.apply(sessionCommit('s', 0, oid(1), Z64, 'a', T0)), 'INVALID');
    expectError(await t.apply(sessionCommit('x'.repeat(600), 1, oid(1), Z64, 'a', T0)), 'INVALID');
    assert.deepEqual(t.store.sessionTable(), []);
  });

  it('forgets the least recently used session beyond SESSIONS_MAX, and a retry in it is SESSION_EXPIRED', async function () {
    this.timeout(120_000);
    const t = await fresh();
    const at = (i: number): number => T0 + i; // one millisecond per command: far from expiry
    mustTid(await t.apply(sessionCommit('first', 1, oid(1), Z64, 'a', at(0))));
    const firstUsed = t.store.sessionTable()[0].usedTid;
    // Fill the table; the first session is used again half-way, so it is not the oldest then.
    const batch: { index: number; cmd: Command }[] = [];
    for (let i = 1; i <= SESSIONS_MAX + 1; i++) {
      const cmd =
        i === SESSIONS_MAX / 2
          ? sessionCommit('first', 1, oid(1), Z64, 'a', at(i)) // a retry: refreshes 'first'
          : sessionCommit(`s${i}`, 1, oid(1000 + i), Z64, 'v', at(i));
      batch.push({ index: ++t.index, cmd });
      if (batch.length === 1000 || i === SESSIONS_MAX + 1) {
        for (const r of await t.store.applyBatch(batch.splice(0))) mustTid(r);
      }
    }
    const table = t.store.sessionTable();
    assert.equal(table.length, SESSIONS_MAX);
    await t.reopen();
    assert.deepEqual(t.store.sessionTable(), table, 'a restart keeps the table and its order');
    assert.ok(!table.some((e) => e.id === 's1'), 'the least recently used session was forgotten');
    assert.ok(
      table.some((e) => e.id === 'first'),
      'a session used again stays',
    );
    assert.equal(table[0].id, 's2');
    const forgotten = t.store.forgottenSessionsUpTo;
    assert.ok(Buffer.compare(forgotten, firstUsed) > 0);
    // A retry in the forgotten session cannot know whether its first attempt applied.
    const e = expectError(
      await t.apply(sessionCommit('s1', 1, oid(1001), Z64, 'v', at(SESSIONS_MAX + 2), firstUsed)),
      'SESSION_EXPIRED',
    );
    assert.match(e.message, /start a new session/);
    // An unknown session is new only when it began after the last use of every forgotten one.
    expectError(
      await t.apply(sessionCommit('new', 1, oid(5), Z64, 'n', at(SESSIONS_MAX + 3), forgotten)),
      'SESSION_EXPIRED',
    );
    const later = t.store.lastTid;
    mustTid(await t.apply(sessionCommit('new', 1, oid(6), Z64, 'n', at(SESSIONS_MAX + 4), later)));
    assert.equal(t.store.sessionTable().length, SESSIONS_MAX, 'still bounded');
  });

  it('expires sessions by the time in the commands, not the local clock', async () => {
    const t = await fresh();
    mustTid(await t.apply(sessionCommit('old', 1, oid(1), Z64, 'a', T0)));
    mustTid(
      await t.apply(sessionCommit('recent', 1, oid(2), Z64, 'b', T0 + SESSION_EXPIRY_MS / 2)),
    );
    const since = t.store.lastTid;
    // Just inside the expiry of 'old': both kept.
    mustTid(
      await t.apply(sessionCommit('other', 1, oid(3), Z64, 'c', T0 + SESSION_EXPIRY_MS - 10)),
    );
    assert.deepEqual(
      t.store.sessionTable().map((e) => e.id),
      ['old', 'recent', 'other'],
    );
    // Past it: 'old' is forgotten by the next session command, whoever sends it.
    mustTid(
      await t.apply(sessionCommit('other', 2, oid(4), Z64, 'd', T0 + SESSION_EXPIRY_MS + 10)),
    );
    assert.deepEqual(
      t.store.sessionTable().map((e) => e.id),
      ['recent', 'other'],
    );
    expectError(
      await t.apply(sessionCommit('old', 1, oid(1), Z64, 'a', T0 + SESSION_EXPIRY_MS + 20)),
      'SESSION_EXPIRED',
    );
    // 'recent' answers its retry until its own expiry, then is forgotten when looked up.
    const r = await t.apply(
      sessionCommit('recent', 1, oid(2), Z64, 'b', T0 + SESSION_EXPIRY_MS + 30),
    );
    assert.ok(r.ok);
    expectError(
      await t.apply(
        sessionCommit('recent', 2, oid(9), Z64, 'b', T0 + 3 * SESSION_EXPIRY_MS, since),
      ),
      'SESSION_EXPIRED',
    );
    assert.ok(!t.store.sessionTable().some((e) => e.id === 'recent'));
  });

  it('keeps the table in snapshots and across restarts: every replica gives the same answers', async () => {
    const a = await fresh();
    const b = await fresh(); // restarts between commands
    const c = await fresh(); // gets a snapshot half-way
    // A deterministic run of session commits over a few sessions and objects, with retries,
    // duplicates of old numbers, conflicts and time jumps that expire sessions.
    let x = 12345;
    const rnd = (n: number): number => {
      x = (x * 1103515245 + 12345) % 2147483648;
      return x % n;
    };
    const serials = new Map<number, Buffer>();
    const seqs = new Map<string, number>();
    const since = new Map<string, Buffer>();
    let now = T0;
    const cmds: Command[] = [];
    for (let i = 0; i < 400; i++) {
      now += rnd(10) === 0 ? SESSION_EXPIRY_MS / 3 : 1 + rnd(1000);
      const sess = `s${rnd(12)}`;
      const last = seqs.get(sess) ?? 0;
      const pick = rnd(10);
      const seq = pick < 6 ? last + 1 : pick < 9 ? Math.max(1, last) : Math.max(1, last - 1);
      seqs.set(sess, Math.max(last, seq));
      const o = rnd(6);
      const serial = rnd(5) === 0 ? Z64 : (serials.get(o) ?? Z64);
      // A session's since-TID is fixed when it begins, as a client's is.
      if (!since.has(sess)) since.set(sess, tidFromTime(now - 5000));
      cmds.push(sessionCommit(sess, seq, oid(o), serial, `v${i}`, now, since.get(sess)));
      // Track serials as a client would, from the answers (filled in below).
      (cmds[i] as { o?: number }).o = o;
    }
    const answers: string[][] = [[], [], []];
    for (let i = 0; i < cmds.length; i++) {
      const cmd = cmds[i];
      if (i === 200) {
        await snapshotInto(a.store, c.store);
        c.index = c.store.appliedIndex;
        assert.deepEqual(c.store.sessionTable(), a.store.sessionTable());
        assert.deepEqual(c.store.forgottenSessionsUpTo, a.store.forgottenSessionsUpTo);
      }
      if (i % 37 === 0) await b.reopen();
      const ra = await a.apply(cmd);
      answers[0].push(answer(ra));
      answers[1].push(answer(await b.apply(cmd)));
      if (i >= 200) answers[2].push(answer(await c.apply(cmd)));
      if (ra.ok) serials.set((cmd as { o?: number }).o!, ra.tid!);
      // Later commands base themselves on current serials.
      for (let j = i + 1; j < cmds.length; j++) {
        const later = cmds[j] as {
          o?: number;
          commit: { txn: { stores: { serial?: Uint8Array }[] } };
        };
        if (later.o !== undefined && later.commit.txn.stores[0].serial !== Z64)
          later.commit.txn.stores[0].serial = serials.get(later.o) ?? Z64;
      }
    }
    assert.deepEqual(answers[1], answers[0], 'a replica restarted between commands');
    assert.deepEqual(answers[2], answers[0].slice(200), 'a replica restored from a snapshot');
    assert.deepEqual(b.store.sessionTable(), a.store.sessionTable());
    assert.deepEqual(c.store.sessionTable(), a.store.sessionTable());
    const kinds = new Set(answers[0].map((s) => s.split(/[ :]/)[0]));
    for (const k of ['ok', 'CONFLICT', 'SEQUENCE_OLD', 'SESSION_EXPIRED'])
      assert.ok(kinds.has(k), `the run exercises ${k} (saw ${[...kinds].join(', ')})`);
    // Replays after a restart answer as before.
    await b.reopen();
    const replayed = await b.apply(cmds[cmds.length - 1]);
    const original = answers[0][answers[0].length - 1];
    if (original.startsWith('ok') || original.startsWith('CONFLICT'))
      assert.equal(answer(replayed), original);
  });
});
