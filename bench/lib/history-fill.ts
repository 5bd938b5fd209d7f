/**
 * A store with a long history, made fast: N one-object transactions applied to a LevelDB
 * ObjectStore in-process, through the same `applyBatch` a node's apply loop calls, each command
 * stamped like a standalone node stamps it (its TID from the clock). The result is the `state`
 * directory of a standalone node's data dir: `zeoraft server` started on it (no peers) serves
 * exactly what N commits through its own door would have left, without the door and the fsync per
 * commit (the store is written with sync off and closed, which flushes it).
 *
 * `fillHistoryInChild` runs it in a child process (this file is its main), so the process that
 * measures afterwards does not carry the fill's heap.
 */
import { spawn } from 'node:child_process';
import { ObjectStore } from '../../src/storage/object-store';
import { stampCommand } from '../../src/server/replicator';
import { Z64, p64 } from '../../src/util/ids';

/** Commands per applyBatch (one LevelDB write each). */
const FILL_BATCH = 1000;
/** OIDs of the filled objects start here (clear of the root and of the bench's other keys). */
const FILL_OID_BASE = 1n << 40n;

export interface FilledHistory {
  transactions: number;
  seconds: number;
  /** TIDs of the first and the last two transactions (the last two for resuming "one back"). */
  firstTid: Buffer;
  previousTid: Buffer;
  lastTid: Buffer;
}

/**
 * Apply `transactions` commits of one new `valueBytes`-byte object each to a store at `stateDir`
 * (created), in storage `1`, then close it. `onProgress` hears the count every tenth.
 */
export async function fillHistory(
  stateDir: string,
  transactions: number,
  valueBytes: number,
  onProgress?: (done: number, seconds: number) => void,
): Promise<FilledHistory> {
  if (!(Number.isInteger(transactions) && transactions >= 2))
    throw new Error(`a history of ${transactions} transactions: at least 2 are needed`);
  const store = await ObjectStore.open(stateDir, { sync: false });
  const t0 = performance.now();
  const tids: Buffer[] = [];
  let firstTid: Buffer | undefined;
  let reported = 0;
  try {
    const data = Buffer.alloc(valueBytes, 7);
    for (let index = 1; index <= transactions;) {
      const items = [];
      for (; items.length < FILL_BATCH && index <= transactions; index++) {
        const oid = p64(FILL_OID_BASE + BigInt(index)); // a new object each: no conflicts
        const cmd = stampCommand(
          { commit: { tid: Z64, txn: { storage: '1', stores: [{ oid, data }] } } },
          Date.now(),
        );
        items.push({ index, cmd });
      }
      const results = await store.applyBatch(items);
      for (const r of results) {
        if (!r.ok) throw new Error(`a fill commit failed: ${String(r.error)}`);
        firstTid ??= r.tid;
      }
      tids.push(...results.slice(-2).map((r) => (r as { tid: Buffer }).tid));
      tids.splice(0, tids.length - 2);
      if (index - 1 - reported >= transactions / 10) {
        reported = index - 1;
        onProgress?.(reported, (performance.now() - t0) / 1000);
      }
    }
  } finally {
    await store.close();
  }
  return {
    transactions,
    seconds: (performance.now() - t0) / 1000,
    firstTid: firstTid!,
    previousTid: tids[0],
    lastTid: tids[1],
  };
}

/**
 * `fillHistory` in a child process (`node history-fill.js DIR N BYTES`): its progress lines go to
 * `onLine`, its result comes back as JSON on stdout. The child is killed by PID if this process
 * exits first.
 */
export function fillHistoryInChild(
  stateDir: string,
  transactions: number,
  valueBytes: number,
  onLine: (line: string) => void,
): Promise<FilledHistory> {
  const child = spawn(
    process.execPath,
    [__filename, stateDir, String(transactions), String(valueBytes)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const killOnExit = (): void => void child.kill('SIGKILL');
  process.on('exit', killOnExit);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    const lines = err.split('\n');
    err = lines.pop()!;
    for (const l of lines) onLine(l);
  });
  return new Promise((resolve, reject) =>
    child.once('exit', (code, signal) => {
      process.off('exit', killOnExit);
      if (code !== 0) return reject(new Error(`the history fill exited ${code ?? signal}: ${err}`));
      const r = JSON.parse(out) as Record<string, string | number>;
      const id = (k: string): Buffer => Buffer.from(r[k] as string, 'hex');
      resolve({
        transactions: r.transactions as number,
        seconds: r.seconds as number,
        firstTid: id('firstTid'),
        previousTid: id('previousTid'),
        lastTid: id('lastTid'),
      });
    }),
  );
}

if (require.main === module) {
  const [dir, n, bytes] = process.argv.slice(2);
  fillHistory(dir, Number(n), Number(bytes), (done, s) =>
    process.stderr.write(`${done} transactions (${s.toFixed(0)} s)\n`),
  ).then(
    (r) =>
      process.stdout.write(
        JSON.stringify({
          transactions: r.transactions,
          seconds: r.seconds,
          firstTid: r.firstTid.toString('hex'),
          previousTid: r.previousTid.toString('hex'),
          lastTid: r.lastTid.toString('hex'),
        }),
      ),
    (e: unknown) => {
      process.stderr.write(`${String((e as Error)?.stack ?? e)}\n`);
      process.exit(1);
    },
  );
}
