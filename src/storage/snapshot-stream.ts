/**
 * The object store's snapshots for Raft state transfer: the whole state as a stream of encoded
 * chunks, the validation of a received stream, and the durable install protocol that puts one in
 * place all or nothing (staged beside the current state, then switched to; see
 * ObjectStore.restore for the steps and the install record that makes them crash-safe).
 */
import { assert } from '../util/assert';
import { ID_BYTES } from '../util/ids';
import {
  type SnapshotChunk,
  memberCodec,
  preparedCodec,
  revisionCodec,
  sessionCodec,
  snapshotChunkCodec,
  storageMetaCodec,
  txnRecordCodec,
} from './codec';
import { checkBlobRecord } from './blob-store';
import { StorageError } from './errors';
import * as K from './keys';
import { type BatchOp, type Db, buf } from './store-records';

/** Bytes of raw key/value data per snapshot chunk. */
export const SNAPSHOT_CHUNK_BYTES = 1 << 20;

/** The durable steps of a snapshot install, in order (see `restore`). */
export const INSTALL_STEPS = [
  'marked',
  'chunk',
  'staged',
  'switching',
  'cleared',
  'copied',
  'installed',
] as const;
export type InstallStep = (typeof INSTALL_STEPS)[number];

/** The install record: the snapshot's applied index (8 bytes) and the phase (1 byte). */
const INSTALL_RECORD_BYTES = 9;
const PHASE_STAGING = 0;
const PHASE_SWITCHING = 1;
const PHASE_COPIED = 2;
const STAGED_PREFIX = Buffer.from([K.TAG.staged]);
/** Every staged key: the staging prefix followed by a (non-empty) key of the state. */
const STAGED_RANGE = { gt: STAGED_PREFIX, lt: Buffer.from([K.TAG.staged + 1]) };

function installRecord(index: number | bigint, phase: number): Buffer {
  const r = Buffer.alloc(INSTALL_RECORD_BYTES);
  r.writeBigUInt64BE(BigInt(index));
  r[8] = phase;
  return r;
}

/**
 * The whole state as encoded chunks, read from one consistent LevelDB snapshot taken when this is
 * called (the iterator is created synchronously, before any later apply lands).
 */
export function snapshotChunks(db: Db): AsyncGenerator<Buffer> {
  const it = db.iterator();
  async function* gen(): AsyncGenerator<Buffer> {
    try {
      let keys: Buffer[] = [];
      let values: Buffer[] = [];
      let bytes = 0;
      for await (const [k, v] of it) {
        if (k[0] === K.TAG.install || k[0] === K.TAG.staged) continue; // never while serving
        keys.push(k);
        values.push(v);
        bytes += k.length + v.length;
        if (bytes >= SNAPSHOT_CHUNK_BYTES) {
          yield snapshotChunkCodec.encode({ keys, values });
          keys = [];
          values = [];
          bytes = 0;
        }
      }
      yield snapshotChunkCodec.encode({ keys, values, last: true });
    } finally {
      await it.close();
    }
  }
  return gen();
}

/**
 * Stage a validated snapshot beside the current state (steps marked, chunk, staged). On failure
 * the current state was not touched: what was staged is dropped and the error thrown.
 */
export async function stageSnapshot(
  db: Db,
  open: () => AsyncIterable<Uint8Array>,
  index: number,
  step: (st: InstallStep) => void,
): Promise<void> {
  try {
    await db.put(K.installKey, installRecord(index, PHASE_STAGING), { sync: true });
    step('marked');
    for await (const raw of open()) {
      const c = snapshotChunkCodec.decode(raw);
      const ops: BatchOp[] = (c.keys ?? []).map((k, i) => ({
        type: 'put',
        key: Buffer.concat([STAGED_PREFIX, buf(k)]),
        value: buf(c.values[i]),
      }));
      if (ops.length) {
        await db.batch(ops);
        step('chunk');
      }
    }
    step('staged');
  } catch (e) {
    // The current state was not touched: drop what was staged and go on serving it. If even
    // that fails, the record stays and the next open rolls the install back.
    await db
      .clear(STAGED_RANGE)
      .then(() => db.del(K.installKey, { sync: true }))
      .catch(() => undefined);
    throw e;
  }
}

/**
 * On open: finish what an interrupted install left. A staging install is rolled back (the
 * current state was not touched), a switching one rolled forward (the staged state is complete
 * and durable). A record without a phase comes from an install that cleared the state first (an
 * earlier version): the partial state is deleted (the record stays, so a crash before the owner
 * has dealt with it repeats this), and the answer is true: the owner must obtain a new snapshot
 * (ObjectStore.interruptedInstall).
 */
export async function discardPartialInstall(db: Db): Promise<boolean> {
  const record = await db.get(K.installKey);
  if (record === undefined) return false;
  if (record.length === INSTALL_RECORD_BYTES) {
    const phase = record[8];
    if (phase === PHASE_STAGING) {
      await db.clear(STAGED_RANGE);
      await db.del(K.installKey, { sync: true });
    } else if (phase === PHASE_SWITCHING) {
      await switchToStaged(db, record.readBigUInt64BE(0), () => undefined);
    } else {
      assert(phase === PHASE_COPIED, `unknown snapshot install phase ${phase}`);
      await db.clear(STAGED_RANGE);
      await db.del(K.installKey, { sync: true });
    }
    return false;
  }
  await db.clear({ lt: K.installKey });
  await db.clear({ gt: K.installKey });
  await db.put(K.installKey, Buffer.alloc(8), { sync: true });
  return true;
}

/**
 * Replace the current state with the staged one. Idempotent from any point, so open() can redo
 * it after a crash: the staged copy is deleted only once every record is in place.
 */
export async function switchToStaged(
  db: Db,
  index: bigint,
  step: (st: InstallStep) => void,
): Promise<void> {
  await db.put(K.installKey, installRecord(index, PHASE_SWITCHING), { sync: true });
  step('switching');
  await db.clear({ lt: K.installKey });
  await db.clear({ gt: K.installKey, lt: STAGED_PREFIX });
  step('cleared');
  let ops: BatchOp[] = [];
  let bytes = 0;
  for await (const [k, v] of db.iterator(STAGED_RANGE)) {
    ops.push({ type: 'put', key: k.subarray(STAGED_PREFIX.length), value: v });
    bytes += k.length + v.length;
    if (bytes >= SNAPSHOT_CHUNK_BYTES) {
      await db.batch(ops);
      ops = [];
      bytes = 0;
    }
  }
  if (ops.length) await db.batch(ops);
  await db.put(K.installKey, installRecord(index, PHASE_COPIED), { sync: true });
  step('copied');
  await db.clear(STAGED_RANGE);
  await db.del(K.installKey, { sync: true });
  step('installed');
}

const KNOWN_TAGS: ReadonlySet<number> = new Set(
  Object.values(K.TAG).filter((t) => t !== K.TAG.install && t !== K.TAG.staged),
);

/**
 * Check a whole snapshot without writing anything: every chunk decodes, keys and values pair up,
 * keys are in strictly increasing order with known tags, every record decodes, the last chunk
 * ends it, and the global record names its applied index (returned).
 */
export async function validateSnapshot(
  chunks: AsyncIterable<Uint8Array>,
  expectedIndex?: number,
): Promise<number> {
  const bad = (why: string): never => {
    throw new StorageError('INVALID', `malformed snapshot: ${why}`);
  };
  let sawLast = false;
  let prev: Buffer | undefined;
  let index: number | undefined;
  let n = 0;
  for await (const raw of chunks) {
    if (sawLast) bad('a chunk after the last one');
    let c: SnapshotChunk;
    try {
      c = snapshotChunkCodec.decode(raw);
    } catch (e) {
      return bad(`chunk ${n} does not decode (${String(e)})`);
    }
    const keys = c.keys ?? [];
    const values = c.values ?? [];
    if (keys.length !== values.length)
      bad(`chunk ${n} has ${keys.length} keys and ${values.length} values`);
    for (let i = 0; i < keys.length; i++) {
      const key = buf(keys[i]);
      const value = buf(values[i]);
      if (key.length === 0 || !KNOWN_TAGS.has(key[0])) bad(`unknown key ${key.toString('hex')}`);
      if (prev && Buffer.compare(prev, key) >= 0) bad(`keys out of order at chunk ${n}`);
      prev = key;
      try {
        checkRecord(key, value);
      } catch (e) {
        bad(`record ${key.toString('hex')}: ${String(e)}`);
      }
      if (key[0] === K.TAG.global) index = Number(value.readBigUInt64BE(0));
    }
    sawLast = c.last === true;
    n++;
  }
  if (!sawLast) bad('it ended before its last chunk');
  if (index === undefined || index < 1) bad('no applied index');
  if (expectedIndex !== undefined && index !== expectedIndex)
    bad(`its data is at index ${index}, its message says ${expectedIndex}`);
  return index as number;
}

/** Throws unless `value` is a well-formed record for `key`. */
function checkRecord(key: Buffer, value: Buffer): void {
  switch (key[0]) {
    case K.TAG.global:
      assert(key.length === 1 && value.length === 16, 'global record of the wrong size');
      return;
    case K.TAG.current:
      assert(value.length === ID_BYTES + 1, 'current record of the wrong size');
      return;
    case K.TAG.finished:
      assert(value.length === ID_BYTES, 'finished record of the wrong size');
      return;
    case K.TAG.expired:
      assert(value.length === 8, 'expired record of the wrong size');
      return;
    case K.TAG.revision:
      revisionCodec.decode(value);
      return;
    case K.TAG.txn:
      txnRecordCodec.decode(value);
      return;
    case K.TAG.txnNumber:
      assert(value.length === ID_BYTES, 'transaction number record of the wrong size');
      return;
    case K.TAG.storage:
      storageMetaCodec.decode(value);
      return;
    case K.TAG.prepared:
      preparedCodec.decode(value);
      return;
    case K.TAG.member:
      memberCodec.decode(value);
      return;
    case K.TAG.blobUpload:
    case K.TAG.blob:
    case K.TAG.blobChunk:
      checkBlobRecord(key, value);
      return;
    case K.TAG.packMark:
      assert(value.length === 9, 'pack mark of the wrong size');
      return;
    case K.TAG.session:
      if (key.length === 1)
        assert(value.length === ID_BYTES, 'session watermark of the wrong size');
      else sessionCodec.decode(value);
      return;
  }
}
