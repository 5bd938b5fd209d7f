/**
 * A node's packs: both doors (gRPC Pack, ZEO pack) run a pack in steps here (storage/pack-gc.ts),
 * log what it did and count it in the node's metrics.
 */
import * as client from 'prom-client';
import type { Command } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { PackRunResult, runPack } from '../storage/pack-gc';
import { hex } from '../util/ids';
import type { NodeMetrics } from '../metrics/metrics';
import type { ObjectStore } from '../storage/object-store';
import type { Logger } from '../util/log';

export interface PackMetrics {
  runs: client.Counter;
  revisionsRemoved: client.Counter;
  objectsCollected: client.Counter;
  /** Packs that collected nothing (or stopped collecting), by reason. */
  collectionsSkipped: client.Counter;
  /** Unreachable objects kept because their record could not be read. */
  unreadableKept: client.Counter;
  /** ZODB records stored through the ZEO door whose references could not be read. */
  unreadableStored: client.Counter;
  duration: client.Histogram;
}

const byRegistry = new WeakMap<client.Registry, PackMetrics>();

/** The pack metrics of a node (registered in its registry on first use). */
export function packMetrics(node: { metrics: Pick<NodeMetrics, 'registry'> }): PackMetrics {
  const registry = node.metrics.registry;
  let m = byRegistry.get(registry);
  if (m) return m;
  const registers = [registry];
  const c = (name: string, help: string, labelNames: string[] = []): client.Counter =>
    new client.Counter({ name: `zeoraft_${name}`, help, labelNames, registers });
  m = {
    runs: c('pack_runs_total', 'Packs run by this node, by outcome.', ['outcome']),
    revisionsRemoved: c(
      'pack_revisions_removed_total',
      'Revisions removed by packs this node ran.',
    ),
    objectsCollected: c(
      'pack_objects_collected_total',
      'Objects unreachable at the pack time removed by packs this node ran.',
    ),
    collectionsSkipped: c(
      'pack_gc_skipped_total',
      'Packs that collected no garbage or stopped collecting part way, by reason.',
      ['reason'],
    ),
    unreadableKept: c(
      'pack_unreadable_kept_total',
      'Unreachable objects a pack kept because their record could not be read.',
    ),
    unreadableStored: c(
      'zodb_unreadable_records_total',
      'Records stored through the ZEO door whose ZODB references could not be read (pack keeps what they might reference).',
    ),
    duration: new client.Histogram({
      name: 'zeoraft_pack_duration_seconds',
      help: 'Time of a whole pack (all its steps) run by this node.',
      buckets: [0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600],
      registers,
    }),
  };
  byRegistry.set(registry, m);
  return m;
}

/** Run a pack of `storage` at `packTid` through `propose`; logs and counts it. */
export async function packStorage(
  node: { metrics: Pick<NodeMetrics, 'registry'>; store: ObjectStore; log: Logger },
  storage: string,
  packTid: Buffer,
  gc: boolean,
  propose: (cmd: Command) => Promise<ApplyResult>,
): Promise<PackRunResult> {
  const m = packMetrics(node);
  let r: PackRunResult;
  try {
    r = await runPack({ store: node.store, propose, storage, packTid, gc, now: () => Date.now() });
  } catch (e) {
    m.runs.inc({ outcome: 'failed' });
    node.log.warn({ storage, packTid: hex(packTid), error: String(e) }, 'pack failed');
    throw e;
  }
  m.runs.inc({ outcome: 'ok' });
  m.revisionsRemoved.inc(r.removed);
  m.objectsCollected.inc(r.collected);
  m.duration.observe(r.totalMs / 1000);
  const w = r.walk;
  if (w?.abandoned) m.collectionsSkipped.inc({ reason: 'unknown references' });
  if (r.cancelled) m.collectionsSkipped.inc({ reason: 'written during the pack' });
  if (w?.unreadableKept) m.unreadableKept.inc(w.unreadableKept);
  const info = {
    storage,
    packTid: hex(packTid),
    gc,
    removedRevisions: r.removed,
    collectedObjects: r.collected,
    objects: w?.objects,
    revisions: w?.revisions,
    unreadableKept: w?.unreadableKept,
    sweepSteps: r.sweepSteps,
    walkMs: r.walkMs,
    totalMs: r.totalMs,
  };
  if (w?.abandoned || r.cancelled)
    node.log.warn(
      { ...info, why: w?.abandoned ?? r.cancelled },
      'pack collected no garbage (or stopped collecting part way)',
    );
  else node.log.info(info, 'pack done');
  return r;
}
