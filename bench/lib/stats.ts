/** Timing and summary statistics. Latencies are kept in milliseconds (floating point). */

/** Monotonic time in milliseconds (process.hrtime). */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** The q-quantile (0..1) of ascending `sorted`, nearest-rank. NaN when empty. */
export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

export function median(values: number[]): number {
  return quantile(
    [...values].sort((a, b) => a - b),
    0.5,
  );
}

export function summarize(latenciesMs: number[]): LatencySummary {
  const s = Float64Array.from(latenciesMs).sort();
  const arr = Array.from(s);
  return {
    count: arr.length,
    p50Ms: quantile(arr, 0.5),
    p99Ms: quantile(arr, 0.99),
    maxMs: arr.length ? arr[arr.length - 1] : NaN,
  };
}

export interface LoopResult {
  ok: number;
  failed: number;
  seconds: number;
  latenciesMs: number[];
}

/**
 * Run `clients` concurrent workers, each calling `op` back to back until `durationMs` has passed.
 * Operations started during the first `warmupMs` are not counted. `op` resolves to false for an
 * expected failure (counted in `failed`, no latency); a rejection also counts as a failure.
 */
export async function closedLoop(
  clients: number,
  durationMs: number,
  warmupMs: number,
  op: (client: number) => Promise<boolean>,
  onError?: (e: unknown) => void,
  /** Called when the warm-up ends and again when the last operation has settled. */
  onWindow?: (edge: 'start' | 'end') => void,
): Promise<LoopResult> {
  const start = nowMs();
  const measureFrom = start + warmupMs;
  const startTimer = onWindow ? setTimeout(() => onWindow('start'), warmupMs) : undefined;
  const end = measureFrom + durationMs;
  const res: LoopResult = { ok: 0, failed: 0, seconds: durationMs / 1000, latenciesMs: [] };
  const worker = async (c: number): Promise<void> => {
    for (;;) {
      const t0 = nowMs();
      if (t0 >= end) return;
      let good = false;
      try {
        good = await op(c);
      } catch (e) {
        onError?.(e);
      }
      if (t0 < measureFrom) continue;
      if (good) {
        res.ok++;
        res.latenciesMs.push(nowMs() - t0);
      } else res.failed++;
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => worker(c)));
  clearTimeout(startTimer);
  onWindow?.('end');
  res.seconds = (nowMs() - measureFrom) / 1000;
  return res;
}

/**
 * Start `op` at a fixed rate (open loop) for `durationMs` or until `stop()` returns true, with at
 * most `maxInflight` outstanding; resolves when all started operations have settled.
 */
export async function openLoop(
  perSecond: number,
  durationMs: number,
  maxInflight: number,
  op: (seq: number) => Promise<void>,
  stop: () => boolean = () => false,
): Promise<{ started: number; skipped: number }> {
  const intervalMs = 1000 / perSecond;
  const start = nowMs();
  const pending = new Set<Promise<void>>();
  let seq = 0;
  let skipped = 0;
  for (;;) {
    const due = start + seq * intervalMs;
    if (due - start >= durationMs || stop()) break;
    const wait = due - nowMs();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const s = seq++;
    if (pending.size >= maxInflight) {
      skipped++;
      continue;
    }
    const p: Promise<void> = op(s)
      .catch(() => undefined)
      .finally(() => pending.delete(p));
    pending.add(p);
  }
  await Promise.all(pending);
  return { started: seq - skipped, skipped };
}
