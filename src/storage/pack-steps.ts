/**
 * The replicated side of a pack in steps (PackCmd.step in log.proto): what PACK_START, PACK_DOOM
 * and PACK_SWEEP do when applied, and the barrier every commit, vote and undo passes while a pack
 * runs. Each step's work is bounded (PACK_STEP_OBJECTS_MAX objects, PACK_STEP_REVISIONS_MAX
 * revisions), so a pack of a large storage never holds the apply loop for long; the walk that
 * decides what is unreachable runs outside the apply (pack-gc.ts) and only its answer — a list
 * of OIDs — goes through the log, so every replica removes the same objects.
 *
 * Safety against what commits while the walk runs: from PACK_START on, every object a commit,
 * vote or undo writes or references is recorded (a "touched" mark); PACK_DOOM marks an object for
 * collection only when it was not touched, still exists and has no revision after the pack time,
 * and otherwise cancels the collection (nothing has been removed yet). Once PACK_SWEEP has begun,
 * a commit, vote or undo that would write or reference a marked object is refused with a conflict
 * (the object was unreachable at the pack time and is being removed; a retry from fresh state does
 * not reference it), and one whose references are unknown (an opaque record) cancels the rest of
 * the collection. Finish never fails: its vote passed the barrier.
 */
import { Z64, hex, idCompare, tidToTime } from '../util/ids';
import type { StorageMeta, Txn } from './codec';
import { StorageError } from './errors';
import * as K from './keys';

/** Objects one PACK_DOOM names at most, and objects one PACK_SWEEP visits at most. */
export const PACK_STEP_OBJECTS_MAX = 2000;
/** Revisions one PACK_SWEEP removes at most (an object with more is swept over several steps). */
export const PACK_STEP_REVISIONS_MAX = 20_000;

export const PackStep = { WHOLE: 0, START: 1, DOOM: 2, SWEEP: 3 } as const;

/**
 * A pack not finished this long after it started (measured by the TIDs the log assigns, so every
 * replica decides at the same command) was abandoned by its driver (its node died, or its walk
 * failed): it collects nothing more, and commits stop paying for its barrier. Its marks stay until
 * the next pack sweeps them.
 */
export const PACK_ABANDONED_AFTER_MS = 60 * 60 * 1000;

/** A mark's kinds (the first byte of a Q record; the pack id follows, 8 bytes big-endian). */
const TOUCHED = 1;
const DOOMED = 2;

type BatchOp = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** What the steps need from the object store while it applies a command. */
export interface PackApplyContext {
  /** A read that sees the writes of the batch being applied. */
  read(key: Buffer): Promise<Buffer | undefined>;
  /** Keys (and values) of a range, from the landed state (pack steps run in a batch of their own). */
  range(opts: {
    gte: Buffer;
    lt: Buffer;
    limit: number;
    values: boolean;
  }): Promise<Array<[Buffer, Buffer | undefined]>>;
  meta(st: string): StorageMeta;
  /** The newest TID applied (of any storage). */
  lastTid(): Buffer;
  setMeta(st: string, meta: StorageMeta, ops: BatchOp[]): void;
  /** Whether a voted transaction holds the object (exclusively or shared). */
  held(st: string, oid: Buffer): boolean;
  /** Point reads of the landed state, in one call. */
  getMany(keys: Buffer[]): Promise<Array<Buffer | undefined>>;
  /**
   * Remove revisions and what only they hold, such as their blobs (through the store's one
   * revision-removal routine).
   */
  dropRevisions(
    st: string,
    revisions: Array<{ oid: Buffer; tid: Buffer }>,
    ops: BatchOp[],
  ): Promise<void>;
  /** Remove an object's current record. */
  dropCurrent(st: string, oid: Buffer, ops: BatchOp[]): void;
  /** The current record: serial and whether it is a deletion; undefined when none. */
  current(value: Buffer): { serial: Buffer; deleted: boolean };
  /** Whether the revision stored under this value is a deletion. */
  isDeletion(value: Buffer): boolean;
}

function markValue(kind: number, id: number): Buffer {
  const v = Buffer.alloc(9);
  v[0] = kind;
  v.writeBigUInt64BE(BigInt(id), 1);
  return v;
}

function markOf(v: Buffer | undefined, id: number): number {
  if (!v || v.length !== 9 || v.readBigUInt64BE(1) !== BigInt(id)) return 0;
  return v[0];
}

function packing(
  meta: StorageMeta,
  packId: number | undefined,
): NonNullable<StorageMeta['packing']> {
  const p = meta.packing;
  if (!p || (packId !== undefined && Number(p.id) !== packId))
    throw new StorageError(
      'INVALID',
      `pack ${packId} is not running (another pack replaced it, or it finished)`,
    );
  return p;
}

function cancel(ctx: PackApplyContext, st: string, reason: string, ops: BatchOp[]): void {
  const meta = ctx.meta(st);
  if (!meta.packing || meta.packing.cancelled) return;
  ctx.setMeta(st, { ...meta, packing: { ...meta.packing, cancelled: reason } }, ops);
}

/**
 * PACK_START: the pack time is set now (reads before it are HISTORY_PACKED from here on, as after a
 * whole pack) and the pack gets its id, the command's log index. A pack that was running (its
 * driver died) is replaced: its marks carry its id and no longer count.
 */
export function applyPackStart(
  ctx: PackApplyContext,
  index: number,
  st: string,
  packTid: Buffer,
  gc: boolean,
  ops: BatchOp[],
): void {
  const meta = ctx.meta(st);
  ctx.setMeta(
    st,
    {
      ...meta,
      packTid,
      packing: {
        id: index,
        packTid,
        gc,
        sweeping: false,
        cancelled: '',
        doomed: 0,
        collected: 0,
        startedTid: ctx.lastTid(),
      },
    },
    ops,
  );
}

/** PACK_DOOM: mark the objects the walk found unreachable, each re-checked (see the top). */
export async function applyPackDoom(
  ctx: PackApplyContext,
  st: string,
  packId: number,
  oids: Uint8Array[],
  ops: BatchOp[],
): Promise<number> {
  const p = packing(ctx.meta(st), packId);
  if (p.sweeping) throw new StorageError('INVALID', 'pack marks objects only before its sweep');
  if (oids.length > PACK_STEP_OBJECTS_MAX)
    throw new StorageError('INVALID', `a pack step names at most ${PACK_STEP_OBJECTS_MAX} objects`);
  if (p.cancelled || !p.gc) return 0;
  const packTid = Buffer.from(p.packTid ?? Z64);
  let doomed = 0;
  for (const o of oids)
    if (o.length !== 8) throw new StorageError('INVALID', 'an OID must be exactly 8 bytes');
  // Two reads for the whole step: the marks and the current records (this step writes neither
  // before it has read them all: it runs in a batch of its own).
  const markKeys = oids.map((o) => K.packMarkKey(st, o));
  const marks = await ctx.getMany(markKeys);
  const currents = await ctx.getMany(oids.map((o) => K.currentKey(st, o)));
  for (let i = 0; i < oids.length; i++) {
    const oid = Buffer.from(oids[i]);
    if (markOf(marks[i], Number(p.id)) === TOUCHED) {
      cancel(ctx, st, `object ${hex(oid)} was written or referenced after the pack began`, ops);
      return doomed;
    }
    const cur = currents[i];
    if (!cur) continue; // gone already
    const c = ctx.current(cur);
    if (c.deleted) continue; // the sweep removes it as a deletion
    if (idCompare(c.serial, packTid) > 0 || ctx.held(st, oid)) {
      cancel(ctx, st, `object ${hex(oid)} was written after the pack time`, ops);
      return doomed;
    }
    ops.push({ type: 'put', key: markKeys[i], value: markValue(DOOMED, Number(p.id)) });
    doomed++;
  }
  const meta = ctx.meta(st);
  ctx.setMeta(st, { ...meta, packing: { ...p, doomed: Number(p.doomed ?? 0) + doomed } }, ops);
  return doomed;
}

/**
 * PACK_SWEEP from `from` on: for each object, the revisions at or before the pack time except
 * the one current then (all of them for a marked object, or one deleted then), its current record
 * when nothing is left, and its mark. Returns the revisions removed and where the next step starts
 * (undefined: the pack is done and its state is cleared).
 */
export async function applyPackSweep(
  ctx: PackApplyContext,
  st: string,
  packId: number,
  from: Buffer,
  ops: BatchOp[],
): Promise<{ removed: number; next?: Buffer }> {
  const p = packing(ctx.meta(st), packId);
  if (from.length !== 8) throw new StorageError('INVALID', 'a sweep starts at an 8-byte OID');
  const id = Number(p.id);
  const packTid = Buffer.from(p.packTid ?? Z64);
  const collecting = p.gc === true && !p.cancelled;
  // Three range reads for the whole step (no read per object): the objects, their revisions, and
  // the marks. `end` (exclusive) is where this step stops.
  const cPrefix = K.currentPrefix(st);
  const currents = await ctx.range({
    gte: K.currentKey(st, from),
    lt: K.prefixEnd(cPrefix),
    limit: PACK_STEP_OBJECTS_MAX + 1,
    values: true,
  });
  let end: Buffer | undefined =
    currents.length > PACK_STEP_OBJECTS_MAX
      ? Buffer.from(currents[PACK_STEP_OBJECTS_MAX][0].subarray(cPrefix.length))
      : undefined;
  const rPrefix = Buffer.concat([Buffer.from([K.TAG.revision]), K.storagePart(st)]);
  const revs = await ctx.range({
    gte: K.revisionPrefix(st, from),
    lt: end ? K.revisionPrefix(st, end) : K.prefixEnd(rPrefix),
    limit: PACK_STEP_REVISIONS_MAX + 1,
    values: false,
  });
  // `stop` bounds the objects this step sweeps (exclusive); `next` is where the next step starts.
  let stop = end;
  let partial = false; // the first object alone has more revisions than a step reads
  if (revs.length > PACK_STEP_REVISIONS_MAX) {
    const lastKey = revs[revs.length - 1][0];
    const cut = Buffer.from(lastKey.subarray(rPrefix.length, rPrefix.length + 8));
    const first = currents.length ? currents[0][0].subarray(cPrefix.length) : undefined;
    if (first && cut.equals(first)) {
      // All of its revisions up to the pack time were read unless the last one read is one.
      partial = K.revisionKeyTid(lastKey).compare(packTid) <= 0;
      stop = successor(cut);
      end = partial ? cut : stop;
    } else stop = end = cut; // stop before the object whose revisions were not all read
  }
  const qPrefix = K.packMarkPrefix(st);
  const marks = await ctx.range({
    gte: K.packMarkKey(st, from),
    lt: end ? K.packMarkKey(st, end) : K.prefixEnd(qPrefix),
    limit: PACK_STEP_OBJECTS_MAX * 2 + 1,
    values: true,
  });
  if (marks.length > PACK_STEP_OBJECTS_MAX * 2) {
    // Marks of OIDs never stored (references only) crowd the range: sweep up to the last read.
    const cut = Buffer.from(marks[marks.length - 1][0].subarray(qPrefix.length));
    if (!end || cut.compare(end) < 0) end = cut;
    if (!stop || cut.compare(stop) < 0) stop = cut;
    partial = false;
    marks.length = PACK_STEP_OBJECTS_MAX * 2;
  }
  const markOfOid = new Map<string, Buffer>();
  for (const [qkey, qval] of marks) {
    const oid = qkey.subarray(qPrefix.length);
    if (end && oid.compare(end) >= 0) break;
    markOfOid.set(oid.toString('latin1'), qval!);
    ops.push({ type: 'del', key: qkey });
  }

  let meta = ctx.meta(st);
  let count = Number(meta.objectCount ?? 0);
  let removed = 0;
  let collected = 0;
  let r = 0; // revs[r] is the next revision key to look at
  const dropping: Array<{ oid: Buffer; tid: Buffer }> = [];
  for (const [ckey, cval] of currents) {
    const oid = Buffer.from(ckey.subarray(cPrefix.length));
    if (stop && oid.compare(stop) >= 0) break;
    const c = ctx.current(cval!);
    const later = idCompare(c.serial, packTid) > 0;
    const held = ctx.held(st, oid);
    const mark = markOf(markOfOid.get(oid.toString('latin1')), id);
    const garbage = collecting && mark === DOOMED && !later && !held;
    // This object's revisions at or before the pack time (keys ascend by OID, then TID).
    const old: Buffer[] = [];
    for (; r < revs.length; r++) {
      const key = revs[r][0];
      const o = key.subarray(rPrefix.length, rPrefix.length + 8);
      const cmp = o.compare(oid);
      if (cmp < 0) continue; // a revision without a current record (none exist; skipped)
      if (cmp > 0) break;
      if (K.revisionKeyTid(key).compare(packTid) <= 0) old.push(key);
    }
    if (old.length === 0) continue;
    let drop: Buffer[];
    let keepLast = false;
    if (partial) {
      // Remove the oldest ones, not the newest read (the one current at the pack time is at or
      // beyond it), and come back to this object in the next step.
      drop = old.slice(0, -1);
    } else {
      const lastKey = old[old.length - 1];
      const lastDeleted = later ? ctx.isDeletion((await ctx.read(lastKey))!) : c.deleted;
      keepLast = !garbage && (held || !lastDeleted);
      drop = keepLast ? old.slice(0, -1) : old;
    }
    for (const key of drop) dropping.push({ oid, tid: Buffer.from(K.revisionKeyTid(key)) });
    removed += drop.length;
    if (partial) break; // `end` is this object: the next step continues it
    if (!later && !keepLast) {
      ctx.dropCurrent(st, oid, ops);
      if (!c.deleted) count--;
      if (garbage) collected++;
    }
  }
  await ctx.dropRevisions(st, dropping, ops);
  meta = ctx.meta(st);
  const state = meta.packing!;
  const done = end === undefined;
  ctx.setMeta(
    st,
    {
      ...meta,
      objectCount: count,
      packing: done
        ? undefined
        : { ...state, sweeping: true, collected: Number(state.collected ?? 0) + collected },
    },
    ops,
  );
  return { removed, next: end };
}

/**
 * The barrier (see the top): called by every commit, vote and undo of `st` before it writes.
 * `finishing`: a finish, which never fails (its vote passed here).
 */
export async function packBarrier(
  ctx: PackApplyContext,
  txn: Txn,
  ops: BatchOp[],
  finishing: boolean,
): Promise<void> {
  const st = txn.storage;
  const p = ctx.meta(st).packing;
  if (!p || p.cancelled || !p.gc) return;
  const started = tidToTime(p.startedTid && p.startedTid.length === 8 ? p.startedTid : Z64);
  if (tidToTime(ctx.lastTid()) - started > PACK_ABANDONED_AFTER_MS) {
    cancel(
      ctx,
      st,
      `abandoned: not finished ${PACK_ABANDONED_AFTER_MS / 60000} minutes after it began`,
      ops,
    );
    return;
  }
  const id = Number(p.id);
  const seen = new Set<string>();
  const objects: Buffer[] = [];
  const add = (o: Uint8Array): void => {
    const b = Buffer.from(o);
    const h = hex(b);
    if (!seen.has(h)) {
      seen.add(h);
      objects.push(b);
    }
  };
  for (const s of txn.stores ?? []) {
    add(s.oid);
    for (const r of s.refs ?? []) if (r.length === 8) add(r);
    if (s.opaque && !s.delete) {
      cancel(
        ctx,
        st,
        `object ${hex(s.oid)} was stored with unknown references during the pack`,
        ops,
      );
      return;
    }
  }
  for (const c of txn.checks ?? []) add(c.oid);
  for (const oid of objects) {
    const key = K.packMarkKey(st, oid);
    const mark = markOf(await ctx.read(key), id);
    if (mark === DOOMED) {
      if (p.sweeping && !finishing)
        throw new StorageError(
          'CONFLICT',
          `object ${hex(oid)} was unreachable at the pack time and pack is removing it: retry the transaction from fresh state`,
        );
      cancel(ctx, st, `object ${hex(oid)} was referenced again during the pack`, ops);
      return;
    }
    if (!p.sweeping && mark !== TOUCHED)
      ops.push({ type: 'put', key, value: markValue(TOUCHED, id) });
  }
}

/** The 8-byte id after `o` (the largest has none: itself, as a range end it reaches the end). */
function successor(o: Buffer): Buffer {
  const b = Buffer.from(o);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i] < 0xff) {
      b[i]++;
      return b;
    }
    b[i] = 0;
  }
  // The largest id has no successor: a range up to it is a range to the end.
  return Buffer.alloc(8, 0xff);
}
