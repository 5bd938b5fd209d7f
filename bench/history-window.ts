/**
 * What a `Status` and the start of a `Subscribe` with a resume point cost in a store with a long
 * history: both ask the commit feed (commit-feed.ts) for the oldest resumable TID (the rest of
 * either is constant work). Fills a real LevelDB store with N one-object transactions, then times
 * `oldestResumable` with the default window (100,000 transactions, 24 h). `npm run bench -- --only
 * history` measures the same through a node's gRPC door.
 *
 *   node dist/bench/history-window.js [--transactions N] [--root DIST ...]
 *
 * Each `--root` is the `dist` directory of a build (default: this one), so two builds (before and
 * after a change) are measured in one run, each on its own fresh store.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const BATCH_COMMANDS = 1000;
const TIMED_CALLS = 50;

function arg(name: string, all: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < all.length; i++)
    if (all[i] === name && i + 1 < all.length) out.push(all[++i]);
  return out;
}

async function measure(root: string, transactions: number): Promise<void> {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const { ObjectStore } = require(path.resolve(root, 'src/storage/object-store'));
  const { CommitFeed } = require(path.resolve(root, 'src/server/commit-feed'));
  const { p64 } = require(path.resolve(root, 'src/util/ids'));
  /* eslint-enable @typescript-eslint/no-require-imports */
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zeoraft-history-bench-'));
  try {
    const store = await ObjectStore.open(dir, { sync: false });
    const fillStart = performance.now();
    let index = 0;
    while (index < transactions) {
      const items = [];
      for (let i = 0; i < BATCH_COMMANDS && index < transactions; i++) {
        index++;
        const oid = p64(BigInt(index)); // a new object each: no conflicts
        items.push({
          index,
          cmd: { commit: { txn: { storage: '1', stores: [{ oid, data: Buffer.alloc(64) }] } } },
        });
      }
      const results = await store.applyBatch(items);
      const failed = results.find((r: { ok: boolean }) => !r.ok);
      if (failed) throw new Error(`a fill commit failed: ${String(failed.error)}`);
    }
    const fillS = (performance.now() - fillStart) / 1000;
    const hub = new CommitFeed(store, {
      historyMaxTransactions: 100_000, // the node's defaults (src/server/config.ts)
      historyMaxAgeMs: 24 * 3600_000,
      nowMs: Date.now,
    });
    await hub.oldestResumable('1'); // warm-up
    const ms: number[] = [];
    for (let i = 0; i < TIMED_CALLS; i++) {
      const t0 = performance.now();
      await hub.oldestResumable('1');
      ms.push(performance.now() - t0);
    }
    ms.sort((a, b) => a - b);
    const q = (p: number): string =>
      ms[Math.min(ms.length - 1, Math.floor(p * ms.length))].toFixed(3);
    console.log(
      `${root}: ${transactions} transactions (filled in ${fillS.toFixed(1)} s): ` +
        `oldestResumable p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${q(1)} ms`,
    );
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const transactions = Number(arg('--transactions', argv)[0] ?? 100_000);
  const roots = arg('--root', argv);
  for (const root of roots.length ? roots : [path.resolve(__dirname, '..')])
    await measure(root, transactions);
}

void main();
