/**
 * The batch writer: apply's working state (applied index, last TID, storage metadata), the copies
 * of it that readers see, and the loop that applies consecutive commands in as few LevelDB batches
 * as possible, publishing each batch only once it has landed.
 */
import { assert } from '../util/assert';
import { Z64 } from '../util/ids';
import { writeBatch } from '../util/level-batch';
import type { Command, StorageMeta } from './codec';
import type { CurrentSerialCache } from './current-cache';
import { StorageError } from './errors';
import * as K from './keys';
import { type BatchOp, type Db, type Get, emptyMeta } from './store-records';
import type { ApplyResult } from './store-types';

/**
 * Apply one command: its writes go into `ops`, what must wait until they have landed (events,
 * in-memory tables) into `after`. A StorageError thrown is the command's result, and its changes
 * to the working state are undone.
 */
export type ApplyOp = (
  index: number,
  cmd: Command,
  ops: BatchOp[],
  after: Array<() => void>,
) => Promise<ApplyResult>;

export class BatchWriter {
  /** Index of the last command whose batch has landed (0 when none). */
  appliedIdx = 0;
  /** The newest TID of any storage, as apply sees it (the batch's commands included). */
  lastTidGlobal: Buffer = Z64;
  /** Working state of apply; readers see the published copies below, updated after each write. */
  metas = new Map<string, StorageMeta>();
  private pubLastTid: Buffer = Z64;
  private pubMetas = new Map<string, StorageMeta>();
  /** Writes of the batch being applied, by key (latin1), for reads by later commands in it. */
  private readonly overlay = new Map<string, Buffer | null>();
  /** True while a batch is applied or a snapshot installed (apply is never re-entered). */
  applying = false;

  constructor(
    private readonly db: Db,
    private readonly cache: CurrentSerialCache,
    /** fsync every batch (ObjectStoreOptions.sync). */
    private readonly sync: boolean,
    private readonly applyListeners: ReadonlySet<(index: number) => void>,
  ) {}

  /** The newest TID of any storage whose batch has landed. */
  get publishedLastTid(): Buffer {
    return this.pubLastTid;
  }

  /** The storages' metadata as of the last landed batch. */
  get published(): ReadonlyMap<string, StorageMeta> {
    return this.pubMetas;
  }

  /**
   * Apply consecutive commands with as few LevelDB writes as possible (one for the whole run,
   * except around undo and pack, which scan the database). Each command sees the effects of the
   * ones before it; readers see none of them until they are written, and then all at once.
   */
  async applyBatch(
    items: { index: number; cmd: Command }[],
    applyOp: ApplyOp,
  ): Promise<ApplyResult[]> {
    assert(!this.applying, 'apply re-entered');
    this.applying = true;
    try {
      const results: ApplyResult[] = [];
      let ops: BatchOp[] = [];
      let after: Array<() => void> = [];
      let last = this.appliedIdx;
      for (const { index, cmd } of items) {
        assert(index > last, `apply index ${index} not after applied ${last}`);
        const scans = ('undo' in cmd && !!cmd.undo) || ('pack' in cmd && !!cmd.pack);
        if (scans && last > this.appliedIdx) {
          await this.write(ops, after, last);
          ops = [];
          after = [];
        }
        const cmdOps: BatchOp[] = [];
        const cmdAfter: Array<() => void> = [];
        const before = { lastTid: this.lastTidGlobal, metas: new Map(this.metas) };
        let result: ApplyResult;
        try {
          result = await applyOp(index, cmd, cmdOps, cmdAfter);
        } catch (e) {
          if (!(e instanceof StorageError)) throw e;
          this.lastTidGlobal = before.lastTid;
          this.metas = before.metas;
          cmdOps.length = 0;
          cmdAfter.length = 0;
          result = { ok: false, error: e };
        }
        for (const op of cmdOps) {
          ops.push(op);
          this.overlay.set(op.key.toString('latin1'), op.type === 'put' ? op.value : null);
        }
        after.push(...cmdAfter);
        results.push(result);
        last = index;
        if (scans) {
          await this.write(ops, after, last);
          ops = [];
          after = [];
        }
      }
      if (last > this.appliedIdx) await this.write(ops, after, last);
      return results;
    } finally {
      this.overlay.clear();
      this.applying = false;
    }
  }

  /** Write a batch and only then publish it: readers never see an index or TID before it landed. */
  private async write(ops: BatchOp[], after: Array<() => void>, index: number): Promise<void> {
    ops.push({ type: 'put', key: K.globalKey, value: this.globalValue(index) });
    await writeBatch(this.db, ops, { sync: this.sync });
    this.cache.landed(ops);
    this.overlay.clear();
    this.appliedIdx = index;
    this.publish();
    for (const fn of after) fn();
    for (const fn of this.applyListeners) fn(index);
  }

  /** A read by apply: the batch's own writes first, then the database. */
  read(key: Buffer): Promise<Buffer | undefined> {
    const k = key.toString('latin1');
    if (this.overlay.has(k)) return Promise.resolve(this.overlay.get(k) ?? undefined);
    return key[0] === K.TAG.current ? this.cache.read(key) : this.db.get(key);
  }

  /** Reads by apply of many C records (current serials): the batch's own writes first. */
  async readCurrentMany(keys: Buffer[]): Promise<(Buffer | undefined)[]> {
    const out: (Buffer | undefined)[] = new Array(keys.length);
    const rest: number[] = [];
    keys.forEach((key, i) => {
      assert(key[0] === K.TAG.current, 'readCurrentMany reads C records only');
      const k = key.toString('latin1');
      if (this.overlay.has(k)) out[i] = this.overlay.get(k) ?? undefined;
      else rest.push(i);
    });
    if (rest.length === 0) return out;
    const got = await this.cache.readMany(rest.map((i) => keys[i]));
    rest.forEach((i, j) => (out[i] = got[j]));
    return out;
  }

  /** A read of the applied state; during an apply, of the batch's state (as apply reads). */
  readonly readState: Get = (key) => (this.applying ? this.read(key) : this.db.get(key));

  globalValue(index = this.appliedIdx): Buffer {
    const g = Buffer.alloc(16);
    g.writeBigUInt64BE(BigInt(index), 0);
    this.lastTidGlobal.copy(g, 8);
    return g;
  }

  meta(st: string): StorageMeta {
    return this.metas.get(st) ?? emptyMeta();
  }

  publish(): void {
    this.pubLastTid = this.lastTidGlobal;
    this.pubMetas = new Map(this.metas);
  }
}
