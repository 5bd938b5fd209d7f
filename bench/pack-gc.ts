/**
 * What a pack with garbage collection costs on a large storage, and how long it holds the apply
 * loop: fills a real LevelDB store with N objects (a root referencing containers, each container
 * referencing up to 1000 leaves; a tenth of the containers unlinked from the root, so they and
 * their leaves are garbage; every container written twice), then packs at the newest TID
 * - in steps (what the gRPC and ZEO doors run: storage/pack-gc.ts), and
 * - with --whole, also as one command on a second identical store (PackCmd without a step).
 * Prints the pack's time, the walk's, the longest single apply (the apply loop's pause), the
 * longest event-loop delay meanwhile, and the heap and RSS growth.
 *
 *   node dist/bench/pack-gc.js [--objects N] [--whole]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Command } from '../src/storage/codec';
import { ObjectStore } from '../src/storage/object-store';
import { runPack } from '../src/storage/pack-gc';
import { Z64, p64 } from '../src/util/ids';

const LEAVES_PER_CONTAINER = 1000;
const OBJECTS_PER_COMMIT = 2000;
const GARBAGE_EVERY_CONTAINERS = 10;

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

async function fill(store: ObjectStore, objects: number): Promise<{ index: number; live: number }> {
  const containers = Math.ceil((objects - 1) / (LEAVES_PER_CONTAINER + 1));
  let index = 0;
  let next = 1n;
  const payload = Buffer.alloc(200, 7);
  const rootRefs: Buffer[] = [];
  const commit = async (stores: { oid: Buffer; refs: Buffer[]; serial?: Buffer }[]) => {
    const r = await store.apply(++index, {
      commit: {
        tid: Z64,
        txn: {
          storage: '1',
          stores: stores.map((s) => ({
            oid: s.oid,
            serial: s.serial,
            data: payload,
            refs: s.refs,
          })),
        },
      },
    });
    if (!r.ok) throw r.error;
    return r.tid!;
  };
  let live = 1;
  const containerSerials: { oid: Buffer; serial: Buffer; refs: Buffer[] }[] = [];
  for (let c = 0; c < containers && next < BigInt(objects); c++) {
    const cOid = p64(next++);
    const leaves: Buffer[] = [];
    for (let l = 0; l < LEAVES_PER_CONTAINER && next < BigInt(objects); l++)
      leaves.push(p64(next++));
    const garbage = c % GARBAGE_EVERY_CONTAINERS === GARBAGE_EVERY_CONTAINERS - 1;
    if (!garbage) {
      rootRefs.push(cOid);
      live += 1 + leaves.length;
    }
    for (let i = 0; i < leaves.length; i += OBJECTS_PER_COMMIT)
      await commit(leaves.slice(i, i + OBJECTS_PER_COMMIT).map((oid) => ({ oid, refs: [] })));
    const serial = await commit([{ oid: cOid, refs: leaves }]);
    containerSerials.push({ oid: cOid, serial, refs: leaves });
  }
  // A second revision of every container (the first goes at the pack).
  for (let i = 0; i < containerSerials.length; i += OBJECTS_PER_COMMIT / 10)
    await commit(containerSerials.slice(i, i + OBJECTS_PER_COMMIT / 10));
  await commit([{ oid: Z64, refs: rootRefs }]);
  return { index, live };
}

async function measure(objects: number, whole: boolean): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zeoraft-pack-bench-'));
  try {
    const store = await ObjectStore.open(dir, { sync: false });
    const f0 = performance.now();
    const filled = await fill(store, objects);
    const live = filled.live;
    let index = filled.index;
    const fillMs = performance.now() - f0;
    const before = store.storageSummary('1').objectCount;
    global.gc?.();
    const heap0 = process.memoryUsage();
    let applyMaxMs = 0;
    let applies = 0;
    const stepMaxMs = new Map<number, number>();
    const propose = async (cmd: Command) => {
      const t = performance.now();
      const r = await store.apply(++index, cmd);
      const ms = performance.now() - t;
      applyMaxMs = Math.max(applyMaxMs, ms);
      const step = ('pack' in cmd && cmd.pack?.step) || 0;
      stepMaxMs.set(step, Math.max(stepMaxMs.get(step) ?? 0, ms));
      applies++;
      return r;
    };
    const loop = monitorEventLoopDelay({ resolution: 5 });
    loop.enable();
    let peakRss = 0;
    let peakHeap = 0;
    const sampler = setInterval(() => {
      const m = process.memoryUsage();
      peakRss = Math.max(peakRss, m.rss);
      peakHeap = Math.max(peakHeap, m.heapUsed);
    }, 20);
    const t0 = performance.now();
    let line: string;
    if (whole) {
      const r = await propose({ pack: { storage: '1', packTid: store.lastTid, gc: true } });
      if (!r.ok) throw r.error;
      line = `whole: one command, ${r.removed} revisions removed`;
    } else {
      const r = await runPack({
        store,
        propose,
        storage: '1',
        packTid: store.lastTid,
        gc: true,
        now: () => performance.now(),
      });
      line =
        `steps: ${applies} commands (${r.sweepSteps} sweeps), walk ${r.walkMs.toFixed(0)} ms ` +
        `(${r.walk?.objects} objects, ${r.walk?.revisions} revisions), ${r.removed} revisions removed, ` +
        `${r.collected} objects collected`;
    }
    const packMs = performance.now() - t0;
    clearInterval(sampler);
    loop.disable();
    const after = store.storageSummary('1').objectCount;
    if (after !== live) throw new Error(`expected ${live} objects to remain, found ${after}`);
    console.log(
      `${objects} objects (fill ${(fillMs / 1000).toFixed(1)} s): pack ${(packMs / 1000).toFixed(2)} s; ${line}; ` +
        `longest apply ${applyMaxMs.toFixed(0)} ms (by step: ${[...stepMaxMs.entries()]
          .map(([k, v]) => `${['whole', 'start', 'doom', 'sweep'][k]} ${v.toFixed(0)}`)
          .join(', ')}); event-loop delay max ${(loop.max / 1e6).toFixed(0)} ms; ` +
        `heap +${((peakHeap - heap0.heapUsed) / 2 ** 20).toFixed(0)} MiB, RSS ${(heap0.rss / 2 ** 20).toFixed(0)} MiB before, peak ${(peakRss / 2 ** 20).toFixed(0)} MiB; ` +
        `objects ${before} -> ${after}`,
    );
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const objects = Number(arg('--objects', '100000'));
  await measure(objects, false);
  if (process.argv.includes('--whole')) await measure(objects, true);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
