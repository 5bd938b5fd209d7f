/**
 * ClientStorage against a real standalone node: views see other clients' commits, the
 * load/invalidation race, the persistent cache across restarts (caught up or reset), cache
 * bounds, in-flight de-duplication, and read-only modes.
 */
import * as assert from 'node:assert/strict';
import { ClientStorage, ClientStorageOptions } from '../../src/client';
import {
  ConflictError,
  ReadOnlyError,
  NotFoundError,
  SessionExpiredError,
} from '../../src/client/errors';
import { StorageRpc } from '../../src/client/rpc';
import { SESSIONS_MAX } from '../../src/storage/object-store';
import { Z64, hex, idCompare, tidFromTime } from '../../src/util/ids';
import { rmDir, sleep, tmpDir } from '../harness';
import { Standalone, text } from './helpers';

describe('ClientStorage on a standalone node', function () {
  this.timeout(30_000);
  let server: Standalone;
  const clients: ClientStorage[] = [];
  const dirs: string[] = [];

  async function open(opts: Partial<ClientStorageOptions> = {}): Promise<ClientStorage> {
    const c = await ClientStorage.open({
      addresses: [server.address],
      timeoutMs: 3000,
      ...opts,
    });
    clients.push(c);
    return c;
  }

  function cacheDir(): string {
    const d = tmpDir('client-cache');
    dirs.push(d);
    return d;
  }

  /** Count unary RPCs by method, through the test hook. */
  function counter(): { hooks: { onRpc: (m: string) => void }; n: (m: string) => number } {
    const counts = new Map<string, number>();
    return {
      hooks: { onRpc: (m: string) => counts.set(m, (counts.get(m) ?? 0) + 1) },
      n: (m: string) => counts.get(m) ?? 0,
    };
  }

  before(async () => {
    server = await Standalone.start({ ZEORAFT_STORAGES: '1,archive:ro' });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
  });
  after(async () => {
    await server.stop();
    dirs.forEach(rmDir);
  });

  it("shows a client's commit to another client's next transaction view, never its cached copy", async () => {
    const a = await open();
    const b = await open();
    const oid = await a.newOid();
    const t1 = await a.commit({ stores: [{ oid, data: Buffer.from('one') }] });
    await b.sync();
    assert.equal(text((await b.load(oid)).data), 'one'); // now cached in b
    const before = b.snapshotView();

    const seen = new Promise<Buffer>((resolve) =>
      b.onInvalidate((ev) => ev.oids.some((o) => o.equals(oid)) && resolve(ev.tid)),
    );
    const t2 = await a.commit({ stores: [{ oid, serial: t1, data: Buffer.from('two') }] });
    assert.deepEqual(await seen, t2);
    assert.ok(idCompare(b.lastTransaction(), t2) >= 0, 'lastTransaction covers the invalidation');

    const txn = b.tpcBegin();
    const r = await txn.load(oid);
    assert.equal(text(r.data), 'two');
    assert.deepEqual(r.serial, t2);
    assert.equal(text((await b.load(oid)).data), 'two');
    // A view pinned earlier keeps seeing the old revision (MVCC), from the cache.
    assert.equal(text((await before.load(oid)).data), 'one');
    await b.tpcAbort(txn);
  });

  it('does not cache a load reply as current when a newer invalidation raced it', async () => {
    const a = await open();
    const oid = await a.newOid();
    const t1 = await a.commit({ stores: [{ oid, data: Buffer.from('v1') }] });
    let race = true;
    let t2: Buffer = Z64;
    const rpcs = counter();
    const b = await open({
      testHooks: {
        ...rpcs.hooks,
        // The reply (v1, current) has arrived; before b files it, another client commits v2 and
        // b processes the invalidation.
        beforeLoadReply: async (o) => {
          if (!race || !o.equals(oid)) return;
          race = false;
          t2 = await a.commit({ stores: [{ oid, serial: t1, data: Buffer.from('v2') }] });
          assert.ok(await b.waitForTid(t2, 5000), 'b saw the invalidation');
        },
      },
    });
    const first = await b.load(oid);
    assert.equal(text(first.data), 'v1', 'the raced reply itself is returned');
    assert.equal(rpcs.n('Load'), 1);
    const second = await b.load(oid);
    assert.equal(text(second.data), 'v2', 'the raced reply was not cached as current');
    assert.deepEqual(second.serial, t2);
    assert.equal(rpcs.n('Load'), 2, 'the second load went to the server');
    // The raced reply was still filed as a non-current revision [t1, t2), for views.
    const old = await b.loadBefore(oid, t2);
    assert.equal(text(old!.data), 'v1');
    assert.deepEqual(old!.end, t2);
    assert.equal(rpcs.n('LoadBefore'), 0, 'served from the cache');
    // Without a race, the next load is a cache hit.
    await b.load(oid);
    assert.equal(rpcs.n('Load'), 2);
  });

  it('keeps its disk cache across a restart and corrects it for commits made meanwhile', async () => {
    const a = await open();
    const dir = cacheDir();
    const oids = await Promise.all([1, 2, 3, 4].map(() => a.newOid()));
    const serials = new Map<string, Buffer>();
    for (const oid of oids)
      serials.set(hex(oid), await a.commit({ stores: [{ oid, data: Buffer.from('old') }] }));

    let c = await open({ cache: { memoryBytes: 1 << 20, diskDir: dir, diskBytes: 1 << 20 } });
    for (const oid of oids) await c.load(oid);
    assert.equal(c.cacheStats().disk?.count, 4);
    await c.close();

    // While c is down, two of the objects change.
    for (const oid of oids.slice(0, 2))
      await a.commit({
        stores: [{ oid, serial: serials.get(hex(oid)), data: Buffer.from('new') }],
      });

    const rpcs = counter();
    c = await open({
      cache: { memoryBytes: 1 << 20, diskDir: dir, diskBytes: 1 << 20 },
      testHooks: rpcs.hooks,
    });
    assert.ok(c.cacheStats().disk!.count >= 4, 'the disk cache survived');
    assert.equal(text((await c.load(oids[2])).data), 'old');
    assert.equal(text((await c.load(oids[3])).data), 'old');
    assert.equal(rpcs.n('Load'), 0, 'unchanged objects come from the disk cache');
    assert.equal(text((await c.load(oids[0])).data), 'new');
    assert.equal(text((await c.load(oids[1])).data), 'new');
    assert.equal(rpcs.n('Load'), 2, 'changed objects were invalidated on reconnect');
  });

  it('drops its disk cache when it was away longer than the retained history (Reset)', async () => {
    const small = await Standalone.start({ ZEORAFT_HISTORY_MAX_TRANSACTIONS: '5' });
    const local: ClientStorage[] = [];
    try {
      const opts = {
        addresses: [small.address],
        timeoutMs: 3000,
        cache: { memoryBytes: 1 << 20, diskDir: cacheDir(), diskBytes: 1 << 20 },
      };
      const a = await ClientStorage.open({ addresses: [small.address] });
      local.push(a);
      const oid = await a.newOid();
      const other = await a.newOid();
      let serial = await a.commit({ stores: [{ oid, data: Buffer.from('0') }] });
      await a.commit({ stores: [{ oid: other, data: Buffer.from('untouched') }] });

      let c = await ClientStorage.open(opts);
      local.push(c);
      assert.equal(text((await c.load(oid)).data), '0');
      await c.load(other);
      const lastBefore = c.lastTransaction();
      await c.close();

      for (let i = 1; i <= 8; i++)
        serial = await a.commit({ stores: [{ oid, serial, data: Buffer.from(String(i)) }] });

      const rpcs = counter();
      c = await ClientStorage.open({ ...opts, testHooks: rpcs.hooks });
      local.push(c);
      assert.equal(c.cacheStats().disk?.count, 0, 'the disk cache was dropped');
      assert.equal(c.cacheStats().memory.count, 0);
      assert.ok(idCompare(c.lastTransaction(), serial) >= 0, 'resumed from the reset TID');
      assert.ok(idCompare(c.lastTransaction(), lastBefore) > 0);
      assert.equal(text((await c.load(oid)).data), '8');
      assert.equal(text((await c.load(other)).data), 'untouched');
      assert.equal(rpcs.n('Load'), 2, 'both loads went to the server');
    } finally {
      await Promise.all(local.map((c) => c.close()));
      await small.stop();
    }
  });

  it('never lets either cache exceed its configured bytes', async () => {
    const a = await open();
    const oids: Buffer[] = [];
    const txn = a.tpcBegin();
    for (let i = 0; i < 120; i++) {
      const oid = await a.newOid();
      oids.push(oid);
      txn.store(oid, Z64, Buffer.alloc(1000, i));
    }
    await a.tpcFinish(txn);

    const memoryBytes = 20_000;
    const diskBytes = 50_000;
    const c = await open({ cache: { memoryBytes, diskDir: cacheDir(), diskBytes } });
    let maxMem = 0;
    let maxDisk = 0;
    for (const oid of oids) {
      const r = await c.load(oid);
      assert.equal(r.data.length, 1000);
      const s = c.cacheStats();
      maxMem = Math.max(maxMem, s.memory.bytes);
      maxDisk = Math.max(maxDisk, s.disk!.bytes);
    }
    assert.ok(maxMem <= memoryBytes, `memory cache peaked at ${maxMem} bytes`);
    assert.ok(maxDisk <= diskBytes, `disk cache peaked at ${maxDisk} bytes`);
    assert.ok(maxMem > memoryBytes / 2 && maxDisk > diskBytes / 2, 'the caches were used');
    // The newest objects are still cached; the oldest were evicted.
    const s = c.cacheStats();
    assert.ok(s.memory.count < oids.length && s.disk!.count < oids.length);
  });

  it('keeps the disk cache bounded across a restart with a smaller bound', async () => {
    const a = await open();
    const dir = cacheDir();
    const oids = await Promise.all(Array.from({ length: 30 }, () => a.newOid()));
    await a.commit({ stores: oids.map((oid) => ({ oid, data: Buffer.alloc(500) })) });
    let c = await open({ cache: { memoryBytes: 1 << 20, diskDir: dir, diskBytes: 1 << 20 } });
    await c.prefetch(oids);
    assert.equal(c.cacheStats().disk?.count, 30);
    await c.close();
    c = await open({ cache: { memoryBytes: 1 << 20, diskDir: dir, diskBytes: 5000 } });
    assert.ok(c.cacheStats().disk!.bytes <= 5000);
    assert.ok(c.cacheStats().disk!.count > 0);
  });

  it('shares one request among concurrent loads of the same object', async () => {
    const a = await open();
    const oid = await a.newOid();
    await a.commit({ stores: [{ oid, data: Buffer.from('shared') }] });
    const rpcs = counter();
    const c = await open({ testHooks: rpcs.hooks });
    const results = await Promise.all(Array.from({ length: 20 }, () => c.load(oid)));
    assert.ok(results.every((r) => text(r.data) === 'shared'));
    assert.equal(rpcs.n('Load'), 1);
    await c.load(oid);
    assert.equal(rpcs.n('Load'), 1, 'then served from the cache');
  });

  it('commits with one Commit in a session, sees its own commit at once, and keeps sessions apart', async () => {
    const rpcs = counter();
    const c = await open({ testHooks: rpcs.hooks });
    const oids = await Promise.all(Array.from({ length: 8 }, () => c.newOid()));
    const tid = await c.commit({ stores: [{ oid: oids[0], data: Buffer.from('mine') }] });
    assert.deepEqual([rpcs.n('Commit'), rpcs.n('Vote'), rpcs.n('Finish')], [1, 0, 0]);
    // Its view includes its commit when commit() returns, served from its cache.
    assert.ok(idCompare(c.lastTransaction(), tid) >= 0);
    const mine = await c.load(oids[0]);
    assert.equal(text(mine.data), 'mine');
    assert.deepEqual(mine.serial, tid);
    assert.equal(rpcs.n('Load'), 0, 'served from the cache');
    // Concurrent commits run in sessions of their own: none is taken for another's retry.
    const tids = await Promise.all(
      oids.slice(1).map((oid, i) => c.commit({ stores: [{ oid, data: Buffer.from(`v${i}`) }] })),
    );
    assert.equal(new Set(tids.map(hex)).size, tids.length);
    for (let i = 1; i < oids.length; i++)
      assert.equal(text((await c.load(oids[i])).data), `v${i - 1}`);
    // A refused commit leaves its session usable for the next.
    await assert.rejects(
      c.commit({ stores: [{ oid: oids[0], serial: Z64, data: Buffer.from('stale') }] }),
      ConflictError,
    );
    const next = await c.commit({
      stores: [{ oid: oids[0], serial: tid, data: Buffer.from('2') }],
    });
    assert.deepEqual((await c.load(oids[0])).serial, next);
  });

  it('starts a new session when the cluster forgot its own, and a retry in a forgotten session is refused', async function () {
    this.timeout(300_000);
    const rpcs = counter();
    const c = await open({ testHooks: rpcs.hooks });
    const oid = await c.newOid();
    const t1 = await c.commit({ stores: [{ oid, data: Buffer.from('1') }] });
    const raw = new StorageRpc(server.address, { timeoutMs: 30_000 });
    try {
      const early = { transaction: {}, sessionId: 'early', sequence: 1 };
      await raw.call('Commit', early);
      // More sessions than the cluster keeps: the client's and 'early' are forgotten (each new
      // one begins after the newest TID its sender saw, so it is taken for new).
      let next = 0;
      let seen = t1;
      await Promise.all(
        Array.from({ length: 64 }, async () => {
          while (next <= SESSIONS_MAX) {
            const i = next++;
            const r = await raw.call('Commit', {
              transaction: {},
              sessionId: `fill-${i}`,
              sequence: 1,
              sessionSinceTid: seen,
            });
            if (idCompare(r.tid, seen) > 0) seen = r.tid;
          }
        }),
      );
      await assert.rejects(raw.call('Commit', early), SessionExpiredError);
      // The client's next commit is refused in its forgotten session before anything could have
      // been applied, so it is sent again in a new one: applied once.
      const before = rpcs.n('Commit');
      const t2 = await c.commit({ stores: [{ oid, serial: t1, data: Buffer.from('2') }] });
      assert.equal(rpcs.n('Commit') - before, 2, 'refused once, then committed');
      assert.deepEqual(
        (await c.history(oid, 10)).map((e) => hex(e.tid)),
        [hex(t2), hex(t1)],
      );
      assert.equal(text((await c.load(oid)).data), '2');
    } finally {
      raw.close();
    }
  });

  it('sees its own commit without its stream only when nothing else committed before it', async () => {
    let held = false;
    let release: () => void = () => undefined;
    let gate = Promise.resolve();
    const a = await open({
      testHooks: { beforeStreamEvent: () => (held ? gate : Promise.resolve()) },
    });
    const b = await open();
    const [x, y] = [await a.newOid(), await a.newOid()];
    const tx = await a.commit({ stores: [{ oid: x, data: Buffer.from('x1') }] });
    const ty = await a.commit({ stores: [{ oid: y, data: Buffer.from('y1') }] });
    assert.equal(text((await a.load(x)).data), 'x1');
    const hold = (): void => {
      held = true;
      gate = new Promise<void>((r) => (release = r));
    };
    // Its stream held back, a client whose caches are current still sees its own next commit: the
    // answer names the transaction before it, which the client has.
    hold();
    const ty2 = await a.commit({ stores: [{ oid: y, serial: ty, data: Buffer.from('y2') }] });
    assert.deepEqual(a.lastTransaction(), ty2);
    assert.equal(text((await a.load(y)).data), 'y2');
    held = false;
    release();
    await b.sync();
    // Another client's commit comes first: the answer's previous transaction is one the client has
    // not seen, so commit() returns only once the stream brought it (and its invalidation).
    hold();
    const tb = await b.commit({ stores: [{ oid: x, serial: tx, data: Buffer.from('x2') }] });
    let done = false;
    const mine = a
      .commit({ stores: [{ oid: y, serial: ty2, data: Buffer.from('y3') }] })
      .then((t) => ((done = true), t));
    await sleep(300);
    assert.equal(done, false, 'commit() waits for the stream');
    assert.ok(idCompare(a.lastTransaction(), tb) < 0);
    held = false;
    release();
    const ty3 = await mine;
    assert.ok(idCompare(a.lastTransaction(), ty3) >= 0);
    assert.equal(text((await a.load(x)).data), 'x2', 'the other commit was invalidated first');
    assert.equal(text((await a.load(y)).data), 'y3');
  });

  it('waits for a TID until the stream brings it, and gives up at its deadline or when closed', async () => {
    const a = await open();
    const b = await open();
    const oid = await a.newOid();
    const far = tidFromTime(Date.now() + 24 * 3600_000); // a day ahead: never reached here
    const reached = b.waitForTid(b.lastTransaction(), 5000);
    assert.equal(await reached, true, 'a TID already reached resolves at once');
    const pending = b.waitForTid(far, 60_000);
    const t = await a.commit({ stores: [{ oid, data: Buffer.from('x') }] });
    assert.equal(await b.waitForTid(t, 5000), true, 'the commit reached b through its stream');
    assert.ok(idCompare(b.lastTransaction(), t) >= 0);
    assert.equal(await b.waitForTid(far, 50), false, 'false at the deadline');
    await b.close();
    assert.equal(await pending, false, 'a pending wait ends false when the client closes');
    assert.equal(await b.waitForTid(far, 60_000), false, 'and a new one on a closed client');
  });

  it('hands out new OIDs from batches of 100', async () => {
    const rpcs = counter();
    const c = await open({ testHooks: rpcs.hooks });
    const oids = await Promise.all(Array.from({ length: 150 }, () => c.newOid()));
    assert.equal(new Set(oids.map(hex)).size, 150);
    assert.equal(rpcs.n('NewOids'), 2);
  });

  it('retries transient conflicts in transact() and reports not-found as permanent', async () => {
    const a = await open();
    const b = await open();
    const oid = await a.newOid();
    await a.commit({ stores: [{ oid, data: Buffer.from('0') }] });
    await b.sync();
    const inc = (c: ClientStorage) =>
      c.transact(async (txn) => {
        const r = await txn.load(oid);
        txn.store(oid, r.serial, Buffer.from(String(Number(text(r.data)) + 1)));
      });
    await Promise.all([inc(a), inc(b), inc(a), inc(b), inc(a), inc(b)]);
    await a.sync();
    assert.equal(text((await a.load(oid)).data), '6');
    const missing = await a.newOid();
    await assert.rejects(a.load(missing), NotFoundError);
    await assert.rejects(
      a.transact(async (txn) => void (await txn.load(missing))),
      NotFoundError,
    );
  });

  it('refuses writes locally when read-only, and falls back to read-only when allowed', async () => {
    const ro = await open({ readOnly: true });
    assert.throws(() => ro.tpcBegin(), ReadOnlyError);
    await assert.rejects(ro.newOid(), ReadOnlyError);

    await assert.rejects(open({ storage: 'archive' }), ReadOnlyError);
    const fallback = await open({ storage: 'archive', readOnlyFallback: true });
    assert.equal(fallback.isReadOnly, true);
    assert.throws(() => fallback.tpcBegin(), ReadOnlyError);
    await assert.rejects(fallback.load(Z64), NotFoundError);
  });
});
