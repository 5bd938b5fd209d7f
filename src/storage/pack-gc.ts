/**
 * Pack with garbage collection as FileStorage's: keep every revision current at the pack time and
 * everything after, and remove the objects unreachable from the root (OID 0) at the pack time —
 * reachable meaning through the references of the revisions current then, starting from the root,
 * from every object written after the pack time and what those later revisions reference, and
 * from what voted transactions write, check or reference.
 *
 * runPack drives a pack in steps (log.proto PackCmd.step, pack-steps.ts) from the node that was
 * asked: PACK_START through the log; the walk here, on this node's applied state, outside the
 * apply loop; its answer (the unreachable OIDs) through the log in PACK_DOOM steps, re-checked
 * when applied; then PACK_SWEEP steps until the storage is swept. Each step is a bounded command,
 * so the apply loop of every replica is held one step at a time, never for the whole pack.
 *
 * The walk's memory is compact: the storage's OIDs in one sorted buffer (8 bytes each), each
 * object's references in another (8 bytes each, found by binary search), a byte of flags per
 * object. Record data is read and dropped.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { ID_BYTES, Z64, hex } from '../util/ids';
import * as protobuf from 'protobufjs';
import type { Command } from './codec';
import type { ApplyResult, ObjectStore } from './object-store';
import { PACK_STEP_OBJECTS_MAX, PackStep } from './pack-steps';

/** Revisions read per LevelDB batch by the walk. */
const WALK_READ_BATCH_RECORDS = 1000;
/** Objects marked between two yields of the walk to the event loop. */
const WALK_YIELD_EVERY_OBJECTS = 50_000;
/** Sweep steps one pack runs at most (each visits PACK_STEP_OBJECTS_MAX objects or more). */
const PACK_SWEEP_STEPS_MAX = 10_000_000;

/** A growable byte buffer of fixed-size items. */
class Grow {
  buf: Buffer;
  length = 0;
  constructor(bytes: number) {
    this.buf = Buffer.alloc(bytes);
  }
  reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const b = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(b, 0, 0, this.length);
    this.buf = b;
  }
  push(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.length);
    this.length += bytes.length;
  }
}

class GrowU32 {
  arr = new Uint32Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.arr.length) {
      const a = new Uint32Array(this.arr.length * 2);
      a.set(this.arr);
      this.arr = a;
    }
    this.arr[this.length++] = v;
  }
}

// Per-object flags of the walk.
const LATER = 1; // a revision after the pack time: a root
const OPAQUE = 2; // the revision current at the pack time has unknown references
const GONE = 4; // no revision current at the pack time, or it is a deletion
const MARKED = 8;

/**
 * The walk's reading of a Revision record (log.proto): whether it is a deletion, whether its
 * references are unknown, and its references; the data is skipped, not copied (a full decode of
 * every revision was most of the walk's time).
 */
function revisionRefs(value: Uint8Array): {
  deleted: boolean;
  opaque: boolean;
  refs: Uint8Array[];
} {
  const r = protobuf.Reader.create(value);
  const out = { deleted: false, opaque: false, refs: [] as Uint8Array[] };
  while (r.pos < r.len) {
    const tag = r.uint32();
    switch (tag >>> 3) {
      case REVISION_DELETED:
        out.deleted = r.bool();
        break;
      case REVISION_REFS:
        out.refs.push(r.bytes());
        break;
      case REVISION_OPAQUE:
        out.opaque = r.bool();
        break;
      default:
        r.skipType(tag & 7);
    }
  }
  return out;
}
/** Field numbers of log.proto's Revision that the walk reads. */
const REVISION_DELETED = 2;
const REVISION_REFS = 3;
const REVISION_OPAQUE = 5;

export interface PackWalkResult {
  /** Unreachable at the pack time: to be collected, in OID order. */
  garbage: Buffer[];
  objects: number;
  revisions: number;
  /** Why nothing is collected, when nothing can be proven unreachable. */
  abandoned?: string;
  /** Unreachable objects kept because their own record could not be read. */
  unreadableKept: number;
}

/**
 * The walk: which objects of `st` are unreachable at `packTid`. Reads one LevelDB snapshot of the
 * revisions; what commits meanwhile is covered by the pack's barrier (pack-steps.ts).
 */
export async function packWalk(
  store: Pick<ObjectStore, 'packScanRevisions' | 'packPreparedTxns'>,
  st: string,
  packTid: Buffer,
): Promise<PackWalkResult> {
  const oids = new Grow(1 << 16); // sorted, 8 bytes each
  const flags: number[] = [];
  const edgeStart = new GrowU32(); // object i's references are edges[edgeStart[i] .. edgeStart[i+1])
  const edges = new Grow(1 << 16); // 8-byte OIDs
  const roots = new Grow(1 << 10); // 8-byte OIDs
  let revisions = 0;
  let abandoned: string | undefined;

  // Pass 1: one scan of the revisions, grouped by object (keys sort by OID, then TID).
  let cur = -1;
  let curOid: Buffer | undefined;
  let keepRefs: Uint8Array[] | undefined;
  let keepFlags = 0;
  const closeObject = (): void => {
    if (cur < 0) return;
    flags[cur] |= keepFlags;
    edgeStart.push(edges.length / ID_BYTES);
    for (const r of keepRefs ?? []) if (r.length === ID_BYTES) edges.push(r);
  };
  for await (const batch of store.packScanRevisions(st, WALK_READ_BATCH_RECORDS)) {
    for (const { oid, tid, value } of batch) {
      revisions++;
      if (!curOid || !oid.equals(curOid)) {
        closeObject();
        cur = flags.length;
        curOid = Buffer.from(oid);
        oids.push(oid);
        flags.push(0);
        keepRefs = undefined;
        keepFlags = GONE;
      }
      const rev = revisionRefs(value);
      if (tid.compare(packTid) <= 0) {
        // The newest revision at or before the pack time wins (keys ascend by TID).
        keepRefs = rev.deleted ? undefined : rev.refs;
        keepFlags = rev.deleted ? GONE : rev.opaque ? OPAQUE : 0;
      } else {
        flags[cur] |= LATER;
        if (rev.opaque && !rev.deleted)
          abandoned ??= `object ${hex(oid)} has a revision after the pack time whose references are unknown`;
        for (const r of rev.refs ?? []) if (r.length === ID_BYTES) roots.push(r);
      }
    }
  }
  closeObject();
  edgeStart.push(edges.length / ID_BYTES);
  const n = flags.length;

  /** The index of the OID at list[at..at+8] among the storage's objects, or -1. */
  const find = (list: Buffer, at: number): number => {
    let lo = 0;
    let hi = n - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      // oids[mid] against the OID sought
      const c = oids.buf.compare(list, at, at + ID_BYTES, mid * ID_BYTES, (mid + 1) * ID_BYTES);
      if (c === 0) return mid;
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  };

  // Pass 2: mark from the roots.
  const stack = new GrowU32();
  const markAt = (list: Buffer, at: number): void => {
    const i = find(list, at);
    if (i >= 0 && !(flags[i] & MARKED)) {
      flags[i] |= MARKED;
      stack.push(i);
    }
  };
  markAt(Z64, 0);
  for (let at = 0; at < roots.length; at += ID_BYTES) markAt(roots.buf, at);
  for (let i = 0; i < n; i++)
    if (flags[i] & LATER && !(flags[i] & MARKED)) {
      flags[i] |= MARKED;
      stack.push(i);
    }
  const voted = new Grow(1 << 10);
  for (const txn of await store.packPreparedTxns(st)) {
    for (const c of txn.checks ?? []) if (c.oid.length === ID_BYTES) voted.push(c.oid);
    for (const s of txn.stores ?? []) {
      if (s.oid.length === ID_BYTES) voted.push(s.oid);
      for (const r of s.refs ?? []) if (r.length === ID_BYTES) voted.push(r);
      if (s.opaque && !s.delete)
        abandoned ??= `a voted transaction stores ${hex(s.oid)} with unknown references`;
    }
  }
  for (let at = 0; at < voted.length; at += ID_BYTES) markAt(voted.buf, at);
  let sinceYield = 0;
  while (stack.length > 0 && !abandoned) {
    const i = stack.arr[--stack.length];
    if (flags[i] & OPAQUE) {
      abandoned = `object ${hex(oids.buf.subarray(i * ID_BYTES, (i + 1) * ID_BYTES))} is reachable and its references are unknown`;
      break;
    }
    for (let e = edgeStart.arr[i]; e < edgeStart.arr[i + 1]; e++) markAt(edges.buf, e * ID_BYTES);
    if (++sinceYield >= WALK_YIELD_EVERY_OBJECTS) {
      sinceYield = 0;
      await yieldToLoop();
    }
  }

  const garbage: Buffer[] = [];
  let unreadableKept = 0;
  if (!abandoned)
    for (let i = 0; i < n; i++) {
      const f = flags[i];
      if (f & (MARKED | LATER | GONE)) continue;
      if (f & OPAQUE) {
        unreadableKept++; // never delete what cannot be read
        continue;
      }
      garbage.push(Buffer.from(oids.buf.subarray(i * ID_BYTES, (i + 1) * ID_BYTES)));
    }
  return { garbage, objects: n, revisions, abandoned, unreadableKept };
}

export interface PackRunResult {
  /** Revisions removed. */
  removed: number;
  /** Objects collected as unreachable. */
  collected: number;
  walk?: PackWalkResult;
  /** Why the collection stopped part way (see pack-steps.ts), if it did. */
  cancelled?: string;
  sweepSteps: number;
  /** Milliseconds: the walk, and the whole pack. */
  walkMs: number;
  totalMs: number;
}

export interface PackRunOptions {
  store: ObjectStore;
  /** Replicate a command and wait until this node has applied it. */
  propose: (cmd: Command) => Promise<ApplyResult>;
  storage: string;
  packTid: Buffer;
  gc: boolean;
  /** Monotonic milliseconds (measurement only). */
  now: () => number;
}

function ok(r: ApplyResult): Extract<ApplyResult, { ok: true }> {
  if (!r.ok) throw r.error;
  return r;
}

/** The pack running on each store and storage: a second one waits for it (one at a time). */
const running = new WeakMap<object, Map<string, Promise<unknown>>>();

/**
 * Drive a pack in steps to its end (see the top). Throws the StorageError of a failed step. Packs
 * of one storage asked of one node run one after the other; a pack started on another node
 * replaces this one's (its next step then fails: pack not running).
 */
export async function runPack(o: PackRunOptions): Promise<PackRunResult> {
  let byStorage = running.get(o.store);
  if (!byStorage) running.set(o.store, (byStorage = new Map()));
  const prev = byStorage.get(o.storage) ?? Promise.resolve();
  const mine = prev.catch(() => undefined).then(() => runPackNow(o));
  byStorage.set(o.storage, mine);
  try {
    return await mine;
  } finally {
    if (byStorage.get(o.storage) === mine) byStorage.delete(o.storage);
  }
}

async function runPackNow(o: PackRunOptions): Promise<PackRunResult> {
  const t0 = o.now();
  const st = o.storage;
  const started = ok(
    await o.propose({ pack: { storage: st, packTid: o.packTid, gc: o.gc, step: PackStep.START } }),
  );
  const state = o.store.packState(st);
  if (!state) throw new Error('pack: the started pack is not in the applied state');
  const packId = Number(state.id);
  const packTid = Buffer.from(started.tid ?? state.packTid ?? Z64);
  const base = { storage: st, packTid, packId };
  let walk: PackWalkResult | undefined;
  let walkMs = 0;
  if (o.gc) {
    const w0 = o.now();
    try {
      walk = await packWalk(o.store, st, packTid);
    } catch (e) {
      // (A snapshot installed meanwhile, say.) Sweep without collecting: the pack still ends.
      const why = `the walk failed: ${e instanceof Error ? e.message : String(e)}`;
      walk = { garbage: [], objects: 0, revisions: 0, abandoned: why, unreadableKept: 0 };
    }
    walkMs = o.now() - w0;
    for (let i = 0; i < walk.garbage.length; i += PACK_STEP_OBJECTS_MAX) {
      ok(
        await o.propose({
          pack: {
            ...base,
            step: PackStep.DOOM,
            oids: walk.garbage.slice(i, i + PACK_STEP_OBJECTS_MAX),
          },
        }),
      );
      if (o.store.packState(st)?.cancelled) break;
    }
  }
  const doomed = Number(o.store.packState(st)?.doomed ?? 0);
  let cancelled = o.store.packState(st)?.cancelled || undefined;
  let from: Buffer = Z64;
  let removed = 0;
  let steps = 0;
  let collected = 0;
  for (;;) {
    if (++steps > PACK_SWEEP_STEPS_MAX) throw new Error('pack: too many sweep steps');
    const before = o.store.packState(st);
    const r = ok(await o.propose({ pack: { ...base, step: PackStep.SWEEP, fromOid: from } }));
    removed += r.removed ?? 0;
    const after = o.store.packState(st);
    cancelled ||= after?.cancelled || before?.cancelled || undefined;
    collected = Number(after?.collected ?? before?.collected ?? 0);
    const next = r.oids?.[0];
    if (!next) break;
    from = Buffer.from(next);
  }
  // The last step cleared the state; what it collected is the marked objects less those kept.
  if (!cancelled) collected = doomed;
  return { removed, collected, walk, cancelled, sweepSteps: steps, walkMs, totalMs: o.now() - t0 };
}
