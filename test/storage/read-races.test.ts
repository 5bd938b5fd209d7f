/**
 * Reads racing the apply of a batch that removes what they read: a pack's sweep of unreachable
 * objects drops an object's revisions and current record. A load sees only landed batches (never
 * the one being applied), and a batch landing between its two reads (current record, then
 * revision) makes it read again, not report corruption. The disk's timing is steered the way the
 * storage simulator steers it: the store runs on memory-level with its batch write (or one read)
 * held until the test lets it go.
 */
import * as assert from 'node:assert/strict';
import { MemoryLevel } from 'memory-level';
import type { Command, StoreOp } from '../../src/storage/codec';
import { TAG } from '../../src/storage/keys';
import { ObjectStore } from '../../src/storage/object-store';
import { runPack } from '../../src/storage/pack-gc';
import { Z64 } from '../../src/util/ids';
import { ST, mustTid, oid, rejectsWith } from './helpers';

/** A store of object `o` referencing `refs` (declared references, as pack's walk follows them). */
function obj(o: number, refs: number[]): StoreOp {
  return { oid: oid(o), serial: Z64, data: Buffer.from(`object ${o}`), refs: refs.map(oid) };
}

/** A promise and the function that settles it. */
function latch(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

const isRevisionOf = (key: Buffer, o: Buffer): boolean =>
  key[0] === TAG.revision && key.includes(o);

interface Held {
  db: MemoryLevel<Buffer, Buffer>;
  store: ObjectStore;
  index: number;
  apply(cmd: Command): ReturnType<ObjectStore['apply']>;
}

async function open(): Promise<Held> {
  const db = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
  const store = await ObjectStore.openOn(db, { sync: false });
  const h: Held = {
    db,
    store,
    index: 0,
    apply: (cmd) => store.apply(++h.index, cmd),
  };
  return h;
}

/** root 0 -> 1; 3 unreachable. */
async function populate(h: Held): Promise<Buffer> {
  return mustTid(
    await h.apply({
      commit: { tid: Z64, txn: { storage: ST, stores: [obj(0, [1]), obj(1, []), obj(3, [])] } },
    }),
  );
}

function pack(h: Held): Promise<unknown> {
  return runPack({
    store: h.store,
    propose: (cmd) => h.apply(cmd),
    storage: ST,
    packTid: h.store.lastTid,
    gc: true,
    now: () => performance.now(),
  });
}

describe('reads racing a pack that removes their object', function () {
  this.timeout(60_000);

  it('a load while the sweep batch is being written sees the landed state, not the batch', async function () {
    const h = await open();
    await populate(h);
    const o3 = oid(3);
    // Hold the batch that deletes object 3's revision: the sweep.
    const gate = latch();
    const reached = latch();
    const batch = h.db.batch.bind(h.db) as (ops: any[], o?: any) => Promise<void>;
    const hold = async (ops: any[]): Promise<void> => {
      if (ops.some((op) => op.type === 'del' && isRevisionOf(op.key, o3))) {
        reached.open();
        await gate.wait;
      }
    };
    // The store writes through chained batches (src/util/level-batch.ts); the array form too.
    (h.db as any).batch = (ops?: any[], o?: any) => {
      if (ops) return hold(ops).then(() => batch(ops, o));
      const queued: any[] = [];
      const chained = {
        put: (key: Buffer, value: Buffer) => (queued.push({ type: 'put', key, value }), chained),
        del: (key: Buffer) => (queued.push({ type: 'del', key }), chained),
        write: (wo?: any) => hold(queued).then(() => batch(queued, wo)),
      };
      return chained;
    };
    const packing = pack(h);
    await reached.wait;
    // The sweep is computed and being written: the store is applying it.
    const l = await h.store.load(ST, o3);
    assert.equal(l.data.toString(), 'object 3', 'the landed state still has it');
    gate.open();
    await packing;
    await rejectsWith(h.store.load(ST, o3), 'NOT_FOUND');
    assert.equal((await h.store.load(ST, oid(1))).data.toString(), 'object 1');
    await h.store.close();
  });

  it('a load whose object is swept between its two reads answers NOT_FOUND, not corruption', async function () {
    const h = await open();
    await populate(h);
    const o3 = oid(3);
    // Hold the load's read of object 3's revision until the sweep has landed.
    const landed = latch();
    const reading = latch();
    let holdReads = true;
    const get = h.db.get.bind(h.db) as (k: Buffer, o?: any) => Promise<Buffer | undefined>;
    (h.db as any).get = async (key: Buffer, o?: any) => {
      if (holdReads && isRevisionOf(key, o3)) {
        holdReads = false;
        reading.open();
        await landed.wait;
      }
      return get(key, o);
    };
    const loading = h.store.load(ST, o3);
    await reading.wait;
    await pack(h);
    landed.open();
    await rejectsWith(loading, 'NOT_FOUND');
    // Not marked corrupt: the store keeps serving.
    assert.equal((await h.store.load(ST, oid(1))).data.toString(), 'object 1');
    await h.store.close();
  });
});
