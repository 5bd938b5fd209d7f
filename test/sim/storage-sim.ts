/**
 * Deterministic simulation of whole storage nodes: the real Raft core (RawNode) AND the real
 * ObjectStore (on memory-level), driven by one seed, under the faults of sim.ts (drops, delays,
 * reordering, duplication, partitions, crashes with unpersisted log entries, compaction and
 * snapshot transfer, membership changes, clock drift) and a ZODB client workload.
 *
 * The host loop (`handleReady`, `applyEntries`, `compact`, snapshot capture and install) mirrors
 * src/server/raft-replicator.ts step by step; TIDs are stamped with its `stampCommand` from the
 * proposing leader's simulated clock. The store is async, so this loop is async: every store
 * call is awaited where the production host awaits it, and nothing runs concurrently, so a seed
 * replays identically.
 *
 * Checked after every applied batch: every node that applies index i applies the same entry and
 * gets the same ApplyResult (ok / error kind, TID, OIDs, removed count); a reference model of
 * ZODB semantics, run over the committed history in log order, predicts each result (conflict,
 * lock, TID = max(proposed, last + 1), per-object serial chains, newOids ranges never reused, a
 * voted transaction's finish always commits, retried finishes return the original TID, undo and
 * pack effects). Checked at restart: the store never lost writes the log cannot replay. Checked
 * at the end (liveness phase: heal, restart all, a leader commits pending work): every member's
 * database is byte-identical, the store agrees with the model object by object and transaction
 * by transaction, no transaction is left voted, every acknowledged commit is in every store.
 */
import { createHash } from 'node:crypto';
import { MemoryLevel } from 'memory-level';
import {
  ConfChangeType,
  ConfState,
  Entry,
  EntryType,
  MemoryStorage,
  Message,
  MessageType,
  RaftError,
  RawNode,
  Ready,
  decodeConfChange,
} from '../../src/raft';
import { stampCommand } from '../../src/server/replicator';
import { Command, Txn, commandCodec } from '../../src/storage/codec';
import { StorageError } from '../../src/storage/errors';
import { ApplyResult, ObjectStore } from '../../src/storage/object-store';
import { Z64, hex, idCompare, idMax, idNext, p64, u64 } from '../../src/util/ids';
import { Mulberry32 } from '../../src/util/prng';

export interface StorageSimOptions {
  /** Ticks of the fault phase. */
  safetyTicks?: number;
  /** Max ticks of the healed phase before convergence is declared failed. */
  livenessTicks?: number;
  /** Receives a readable line per event (SEED=s replay). */
  trace?: (line: string) => void;
  /**
   * Bug injection for demonstrating the checker (never set by the tests): 'no-skip' applies
   * replayed entries at or below the store's applied index again; 'no-flush' compacts the log
   * without first making the store's writes durable; 'compact-while-replaying' uses the
   * production host's compaction guard (see compact()).
   */
  inject?: 'no-skip' | 'no-flush' | 'compact-while-replaying';
}

export interface StorageSimStats {
  ticks: number;
  delivered: number;
  dropped: number;
  crashes: number;
  storeBatchesLost: number;
  leaders: number;
  maxTerm: number;
  applied: number;
  proposed: number;
  acked: number;
  commits: number;
  conflicts: number;
  locked: number;
  prepares: number;
  finishes: number;
  aborts: number;
  newOids: number;
  undos: number;
  packs: number;
  unknownOutcomes: number;
  snapshotsSent: number;
  snapshotsInstalled: number;
  compactions: number;
  confChangesApplied: number;
}

export interface StorageSimResult {
  seed: number;
  ok: boolean;
  failure?: string;
  stats: StorageSimStats;
}

class SimFailure extends Error {}

function fail(msg: string): never {
  throw new SimFailure(msg);
}

const MAX_NODES = 6;
const ELECTION_TICKS = 10;
/** Simulated milliseconds per tick; the clocks that stamp TIDs advance by this much per tick. */
const TICK_MS = 10;
/** Simulated wall clock at tick 0 (ms since the epoch). */
const CLOCK_BASE_MS = Date.UTC(2026, 0, 1);
/** Largest clock skew a node's clock drifts to, either way (ms). */
const CLOCK_SKEW_MAX_MS = 5_000;
const STORAGES = ['main', 'other'];
/** Objects 1..OID_SPACE per storage (plus OIDs clients allocated with newOids). */
const OID_SPACE = 6;
const CLIENTS = 4;
/** A proposal not resolved within this many ticks is reported to its client as outcome-unknown. */
const OP_TIMEOUT_TICKS = 60;
/** Bound on OIDs one client keeps from newOids for later stores. */
const CLIENT_NEW_OIDS_MAX = 8;

// ------------------------------------------------------------------------------------------
// The store's disk

type DiskOp =
  | { type: 'put'; key: Buffer; value: Buffer }
  | { type: 'del'; key: Buffer }
  | { type: 'clear'; gt?: Buffer; lt?: Buffer };

/**
 * A node's object-store disk. The store runs with `sync: false` (as a Raft replica does), so a
 * crash keeps the synced state plus some prefix of the later batches (LevelDB writes its log in
 * order). Production relies on the Raft log to replay the rest: the store is flushed before the
 * log is compacted. Writes are recorded by wrapping the memory-level instance.
 */
class StoreDisk {
  private durable = new Map<string, Buffer>();
  private journal: DiskOp[][] = [];

  get unsynced(): number {
    return this.journal.length;
  }

  /** A crash: keep the first `keep` unsynced batches, lose the rest. */
  crash(keep: number): void {
    for (const b of this.journal.slice(0, keep)) this.fold(b);
    this.journal = [];
  }

  async open(): Promise<MemoryLevel<Buffer, Buffer>> {
    const db = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    const init = [...this.durable].map(([k, v]) => ({
      type: 'put' as const,
      key: Buffer.from(k, 'latin1'),
      value: v,
    }));
    if (init.length) await db.batch(init);
    const d = db as any;
    const batch = db.batch.bind(db) as (...a: any[]) => Promise<void>;
    const put = db.put.bind(db) as (...a: any[]) => Promise<void>;
    const del = db.del.bind(db) as (...a: any[]) => Promise<void>;
    const clear = db.clear.bind(db) as (...a: any[]) => Promise<void>;
    d.batch = (ops: DiskOp[], o?: { sync?: boolean }) => {
      this.record(
        ops.map((op) =>
          op.type === 'put'
            ? { type: 'put', key: Buffer.from(op.key), value: Buffer.from(op.value) }
            : { type: 'del', key: Buffer.from((op as { key: Buffer }).key) },
        ),
        o?.sync === true,
      );
      return batch(ops, o);
    };
    d.put = (key: Buffer, value: Buffer, o?: { sync?: boolean }) => {
      this.record(
        [{ type: 'put', key: Buffer.from(key), value: Buffer.from(value) }],
        o?.sync === true,
      );
      return put(key, value, o);
    };
    d.del = (key: Buffer, o?: { sync?: boolean }) => {
      this.record([{ type: 'del', key: Buffer.from(key) }], o?.sync === true);
      return del(key, o);
    };
    d.clear = (o?: { gt?: Buffer; lt?: Buffer }) => {
      const keys = Object.keys(o ?? {});
      if (keys.some((k) => k !== 'gt' && k !== 'lt'))
        throw new Error(`simulated disk: clear(${keys.join(', ')}) is not modelled`);
      this.record([{ type: 'clear', gt: o?.gt, lt: o?.lt }], false);
      return clear(o);
    };
    return db;
  }

  private record(ops: DiskOp[], sync: boolean): void {
    this.journal.push(ops);
    if (sync) this.crash(this.journal.length);
  }

  private fold(ops: DiskOp[]): void {
    for (const op of ops) {
      if (op.type === 'clear') {
        for (const k of [...this.durable.keys()]) {
          const key = Buffer.from(k, 'latin1');
          if (op.gt && Buffer.compare(key, op.gt) <= 0) continue;
          if (op.lt && Buffer.compare(key, op.lt) >= 0) continue;
          this.durable.delete(k);
        }
      } else if (op.type === 'put') this.durable.set(op.key.toString('latin1'), op.value);
      else this.durable.delete(op.key.toString('latin1'));
    }
  }
}

// ------------------------------------------------------------------------------------------
// Nodes, clients, messages

interface Proposal {
  term: number;
  op: ClientOp;
}

interface SNode {
  id: string;
  /** The durable Raft log (persisted Readies). */
  log: MemoryStorage;
  disk: StoreDisk;
  /** True from creation of a fresh (joining) node until its first snapshot is persisted. */
  joining: boolean;
  up: boolean;
  retired: boolean;
  incarnation: number;
  downUntil: number;
  /** Clock skew of this node's wall clock (ms); drifts, also backwards. */
  skewMs: number;
  /** Entries beyond the last compaction kept in the log (like config.snapshotEntries). */
  keepEntries: number;
  // Volatile (lost by a crash):
  raw?: RawNode;
  store?: ObjectStore;
  db?: MemoryLevel<Buffer, Buffer>;
  pending?: Ready;
  /** Index of the last committed entry this host processed (applied or skipped). */
  processed: number;
  conf: ConfState;
  props: Map<number, Proposal>;
}

type OpKind = 'commit' | 'prepare' | 'finish' | 'abort' | 'newOids' | 'undo' | 'pack' | 'final';

interface ClientOp {
  id: number;
  client: Client;
  kind: OpKind;
  /** Unstamped command; the leader stamps TIDs. */
  cmd: Command;
  st: string;
  txnId?: string;
  txn?: Txn;
  at: number;
  node?: string;
  index?: number;
}

interface Obligation {
  kind: 'finish' | 'abort' | 'prepare' | 'final';
  st: string;
  txnId: string;
  txn?: Txn;
  notBefore: number;
}

interface Client {
  id: number;
  busy?: ClientOp;
  todo: Obligation[];
  /** objKey -> the serial this client last saw. */
  known: Map<string, Buffer>;
  /** OIDs this client allocated and may store as new objects (storage, oid). */
  fresh: { st: string; oid: Buffer }[];
  /** TIDs of this client's acknowledged transactions (undo candidates). */
  tids: { st: string; tid: Buffer }[];
}

interface InFlight {
  at: number;
  m?: Message;
  chunks?: Buffer[];
  report?: { node: string; incarnation: number; peer: string; ok: boolean };
}

const dec = new TextDecoder();

function objKey(st: string, oid: Uint8Array): string {
  return `${st}/${hex(oid)}`;
}

function serialOf(b: Uint8Array | undefined): Buffer {
  return b && b.length > 0 ? Buffer.from(b) : Z64;
}

function resultKey(r: ApplyResult): string {
  if (!r.ok) return `error ${r.error.kind}`;
  return (
    `ok` +
    (r.tid ? ` tid=${hex(r.tid)}` : '') +
    (r.oids ? ` oids=${r.oids.map(hex).join(',')}` : '') +
    (r.removed !== undefined ? ` removed=${r.removed}` : '')
  );
}

function cmdKind(cmd: Command): string {
  return Object.keys(cmd)[0] ?? 'empty';
}

// ------------------------------------------------------------------------------------------
// The reference model: ZODB semantics over the committed history, in log order

interface ObjModel {
  serial: Buffer;
  deleted: boolean;
  /** Revisions, oldest first: whether each is a deletion, its data, and whose data it is. */
  revs: RevModel[];
}

interface RevModel {
  tid: Buffer;
  deleted: boolean;
  /** The data (hex; '' for a deletion). */
  data: string;
  /** The TID that wrote this data (an undo restores an older revision's data). */
  src: string;
}

interface TxnModel {
  state: 'prepared' | 'finished' | 'aborted';
  txn: Txn;
  tid?: Buffer;
}

class Model {
  lastTid: Buffer = Z64;
  readonly objs = new Map<string, ObjModel>();
  /** objKey -> key of the voted transaction holding it. */
  readonly locks = new Map<string, string>();
  readonly txns = new Map<string, TxnModel>();
  /** TID -> storage and OIDs of every committed transaction. */
  readonly commits = new Map<string, { st: string; oids: Buffer[]; index: number }>();
  readonly nextOid = new Map<string, bigint>();
  readonly packTid = new Map<string, Buffer>();
  /** OIDs ever handed out by newOids, per storage. */
  readonly allocated = new Set<string>();

  private obj(st: string, oid: Uint8Array): ObjModel {
    return this.objs.get(objKey(st, oid)) ?? { serial: Z64, deleted: false, revs: [] };
  }

  /** The result the store must give for `cmd` at `index`; throws SimFailure on a mismatch with `r`. */
  apply(index: number, cmd: Command, r: ApplyResult): void {
    const where = `index ${index} (${cmdKind(cmd)})`;
    const expectErr = (kind: string): void => {
      if (r.ok || r.error.kind !== kind)
        fail(`model: ${where} should fail with ${kind}, store says ${resultKey(r)}`);
    };
    const expectOk = (): void => {
      if (!r.ok)
        fail(`model: ${where} should succeed, store says ${resultKey(r)}: ${r.error.message}`);
    };
    if ('commit' in cmd && cmd.commit) {
      const bad = this.check(cmd.commit.txn, undefined);
      if (bad) return expectErr(bad);
      expectOk();
      this.commit(index, where, cmd.commit.txn, cmd.commit.tid, r);
    } else if ('prepare' in cmd && cmd.prepare) {
      const st = cmd.prepare.txn.storage;
      const k = `${st}\0${cmd.prepare.txnId}`;
      const t = this.txns.get(k);
      if (t?.state === 'prepared') return expectOk(); // a retried vote
      if (t?.state === 'finished') return expectErr('INVALID');
      const bad = this.check(cmd.prepare.txn, undefined);
      if (bad) return expectErr(bad);
      expectOk();
      this.txns.set(k, { state: 'prepared', txn: cmd.prepare.txn });
      for (const o of this.lockedOids(cmd.prepare.txn)) this.locks.set(objKey(st, o), k);
    } else if ('finish' in cmd && cmd.finish) {
      const k = `${cmd.finish.storage}\0${cmd.finish.txnId}`;
      const t = this.txns.get(k);
      if (t?.state === 'finished') {
        // A retried finish answers with the original TID and commits nothing.
        expectOk();
        if (!r.ok || !r.tid || idCompare(r.tid, t.tid!) !== 0)
          fail(`model: ${where} retried finish of ${cmd.finish.txnId} gave ${resultKey(r)}`);
        return;
      }
      if (t?.state !== 'prepared') return expectErr('UNKNOWN_TRANSACTION');
      if (!r.ok)
        fail(`a successful prepare was followed by a failing finish: ${where}: ${resultKey(r)}`);
      for (const o of this.lockedOids(t.txn)) this.locks.delete(objKey(cmd.finish.storage, o));
      const bad = this.check(t.txn, undefined);
      if (bad) fail(`model: voted transaction ${cmd.finish.txnId} fails its check (${bad})`);
      t.tid = this.commit(index, where, t.txn, cmd.finish.tid, r);
      t.state = 'finished';
    } else if ('abort' in cmd && cmd.abort) {
      expectOk();
      const k = `${cmd.abort.storage}\0${cmd.abort.txnId}`;
      const t = this.txns.get(k);
      if (t?.state === 'prepared') {
        for (const o of this.lockedOids(t.txn)) this.locks.delete(objKey(cmd.abort.storage, o));
        t.state = 'aborted';
      }
    } else if ('newOids' in cmd && cmd.newOids) {
      expectOk();
      const st = cmd.newOids.storage;
      const next = this.nextOid.get(st) ?? 1n;
      const want = Array.from({ length: cmd.newOids.count }, (_, i) => hex(p64(next + BigInt(i))));
      const got = (r.ok && r.oids ? r.oids : []).map(hex);
      if (got.join(',') !== want.join(','))
        fail(`model: ${where} newOids gave ${got}, expected ${want}`);
      for (const h of got) {
        if (this.allocated.has(`${st}/${h}`) || this.objs.has(`${st}/${h}`))
          fail(`newOids handed out ${st}/${h} twice (or an OID already in use)`);
        this.allocated.add(`${st}/${h}`);
      }
      this.nextOid.set(st, next + BigInt(cmd.newOids.count));
    } else if ('undo' in cmd && cmd.undo) {
      this.undo(index, where, cmd.undo, r, expectErr, expectOk);
    } else if ('pack' in cmd && cmd.pack) {
      expectOk();
      const st = cmd.pack.storage;
      const req = Buffer.from(cmd.pack.packTid);
      const packTid = idMax(
        this.packTid.get(st) ?? Z64,
        idCompare(req, this.lastTid) > 0 ? this.lastTid : req,
      );
      this.packTid.set(st, packTid);
      // A deletion at or before the pack TID disappears with its object (unless a vote holds it).
      for (const [k, o] of this.objs) {
        if (!k.startsWith(`${st}/`) || !o.deleted || idCompare(o.serial, packTid) > 0) continue;
        if (this.locks.has(k)) continue;
        this.objs.set(k, { serial: Z64, deleted: false, revs: [] });
      }
    } else {
      // noop (empty entries, membership changes)
      expectOk();
      if (r.ok && (r.tid || r.oids)) fail(`model: ${where} noop returned ${resultKey(r)}`);
    }
  }

  private lockedOids(txn: Txn): Uint8Array[] {
    return [...(txn.stores ?? []), ...(txn.checks ?? [])].map((s) => s.oid);
  }

  /** The error kind the conflict check of `txn` must give, or undefined. Mirrors checkTxn order. */
  private check(txn: Txn, own: string | undefined): string | undefined {
    const all = [
      ...(txn.stores ?? []).map((s) => ({ op: s, kind: 'CONFLICT' })),
      ...(txn.checks ?? []).map((c) => ({ op: c, kind: 'READ_CONFLICT' })),
    ];
    for (const { op, kind } of all) {
      const holder = this.locks.get(objKey(txn.storage, op.oid));
      if (holder !== undefined && holder !== own) return 'LOCKED';
      if (idCompare(serialOf(op.serial), this.obj(txn.storage, op.oid).serial) !== 0) return kind;
    }
    return undefined;
  }

  /** Record a successful commit: checks the TID rule and each object's serial chain. */
  private commit(
    index: number,
    where: string,
    txn: Txn,
    proposed: Uint8Array | undefined,
    r: ApplyResult,
    restores?: Map<string, { deleted: boolean; data: string; src?: string }>,
  ): Buffer {
    if (!r.ok || !r.tid) fail(`model: ${where} committed without a TID`);
    const want = idMax(
      proposed && proposed.length === 8 ? Buffer.from(proposed) : Z64,
      idNext(this.lastTid),
    );
    if (idCompare(r.tid, want) !== 0)
      fail(`TID rule: ${where} got ${hex(r.tid)}, expected max(proposed, last + 1) = ${hex(want)}`);
    if (idCompare(r.tid, this.lastTid) <= 0)
      fail(`TIDs not increasing in log order: ${where} ${hex(r.tid)} after ${hex(this.lastTid)}`);
    const stores = txn.stores ?? [];
    const got = (r.oids ?? []).map(hex).join(',');
    if (got !== stores.map((s) => hex(s.oid)).join(','))
      fail(`model: ${where} committed OIDs ${got}, the transaction stores others`);
    const st = txn.storage;
    let next = this.nextOid.get(st) ?? 1n;
    for (const s of stores) {
      const k = objKey(st, s.oid);
      const o = this.obj(st, s.oid);
      // Serial chain: the base serial of the new revision is the TID of the previous one.
      if (idCompare(serialOf(s.serial), o.serial) !== 0)
        fail(
          `serial chain broken: ${where} stores ${k} on ${hex(serialOf(s.serial))}, previous revision is ${hex(o.serial)}`,
        );
      const restored = restores?.get(k);
      const deleted = restored ? restored.deleted : s.delete === true;
      const rev: RevModel = restored
        ? { tid: r.tid, deleted, data: restored.data, src: restored.src ?? hex(r.tid) }
        : {
            tid: r.tid,
            deleted,
            data: deleted ? '' : hex(s.data ?? Z64.subarray(0, 0)),
            src: hex(r.tid),
          };
      this.objs.set(k, { serial: r.tid, deleted, revs: [...o.revs, rev] });
      const n = u64(s.oid);
      if (n >= next) next = n + 1n;
    }
    this.nextOid.set(st, next);
    this.lastTid = r.tid;
    this.commits.set(hex(r.tid), { st, oids: stores.map((s) => Buffer.from(s.oid)), index });
    return r.tid;
  }

  private undo(
    index: number,
    where: string,
    u: { tid: Uint8Array; storage: string; undoTid: Uint8Array },
    r: ApplyResult,
    expectErr: (k: string) => void,
    expectOk: () => void,
  ): void {
    const st = u.storage;
    const undone = this.commits.get(hex(u.undoTid));
    if (!undone || undone.st !== st) return expectErr('NOT_FOUND');
    const packTid = this.packTid.get(st) ?? Z64;
    if (idCompare(packTid, Z64) !== 0 && idCompare(u.undoTid, packTid) <= 0)
      return expectErr('HISTORY_PACKED');
    // FileStorage's rule: an object goes back to its revision before undoTid when its current
    // revision holds what undoTid wrote (that transaction's data, or equal bytes); undoing a
    // creation deletes it; anything else conflicts.
    const stores: NonNullable<Txn['stores']> = [];
    const restores = new Map<string, { deleted: boolean; data: string; src?: string }>();
    let conflict = false;
    for (const oid of undone.oids) {
      const o = this.obj(st, oid);
      const cur = o.revs[o.revs.length - 1];
      const gone = o.revs.find((x) => idCompare(x.tid, u.undoTid) === 0);
      if (!cur || !gone || idCompare(cur.tid, o.serial) !== 0) return expectErr('UNDO_CONFLICT');
      const same = cur.src === gone.src || (cur.deleted === gone.deleted && cur.data === gone.data);
      const before = o.revs.filter((x) => idCompare(x.tid, u.undoTid) < 0);
      const prev = before[before.length - 1];
      if (!same && (!prev || prev.deleted || cur.deleted)) return expectErr('UNDO_CONFLICT');
      if (!same) conflict = true; // would need conflict resolution
      stores.push({ oid, serial: o.serial });
      restores.set(
        objKey(st, oid),
        prev && !prev.deleted
          ? { deleted: false, data: prev.data, src: prev.src }
          : { deleted: true, data: '' },
      );
    }
    if (conflict) return expectErr('UNDO_CONFLICT');
    const txn: Txn = { storage: st, stores };
    const bad = this.check(txn, undefined);
    if (bad) return expectErr(bad);
    expectOk();
    this.commit(index, where, txn, u.tid, r, restores);
  }
}

// ------------------------------------------------------------------------------------------

export async function runStorageSeed(
  seed: number,
  opts: StorageSimOptions = {},
): Promise<StorageSimResult> {
  const sim = new StorageSim(seed, opts);
  try {
    await sim.run();
    return { seed, ok: true, stats: sim.stats };
  } catch (e) {
    const msg =
      e instanceof SimFailure ? e.message : `exception: ${(e as Error).stack ?? String(e)}`;
    return { seed, ok: false, failure: `t=${sim.now}: ${msg}`, stats: sim.stats };
  }
}

class StorageSim {
  readonly rng: Mulberry32;
  now = 0;
  readonly stats: StorageSimStats = {
    ticks: 0,
    delivered: 0,
    dropped: 0,
    crashes: 0,
    storeBatchesLost: 0,
    leaders: 0,
    maxTerm: 0,
    applied: 0,
    proposed: 0,
    acked: 0,
    commits: 0,
    conflicts: 0,
    locked: 0,
    prepares: 0,
    finishes: 0,
    aborts: 0,
    newOids: 0,
    undos: 0,
    packs: 0,
    unknownOutcomes: 0,
    snapshotsSent: 0,
    snapshotsInstalled: 0,
    compactions: 0,
    confChangesApplied: 0,
  };
  private readonly nodes = new Map<string, SNode>();
  private nextNodeNo = 1;
  private net: InFlight[] = [];
  private cut = new Set<string>();
  private faults = true;
  private readonly clients: Client[] = [];
  private nextOpId = 1;

  // Per-seed fault profile.
  private readonly dropRate: number;
  private readonly dupRate: number;
  private readonly maxDelay: number;
  private readonly crashRate: number;
  private readonly leaderCrashRate: number;
  private readonly partitionRate: number;
  private readonly persistRate: number;
  private readonly powerLossRate: number;
  private readonly opRate: number;
  private readonly maxSizePerMsg: number;

  // Checker state.
  private readonly leaderOfTerm = new Map<number, string>();
  /** index -> the entry ("term|kind|data") and the result the first node to apply it got. */
  private readonly appliedAt = new Map<
    number,
    { entry: string; result: string; cmd: Command; r: ApplyResult }
  >();
  /** index -> membership after a conf change applied there. */
  private readonly confAt = new Map<number, ConfState>();
  private readonly model = new Model();
  /** The next index the model has to process (index 1 is the bootstrap snapshot). */
  private modelNext = 2;
  /** Acknowledged commits (TID hex -> index), to find in every store at the end. */
  private readonly acked = new Map<string, number>();
  /** txn keys whose prepare was acknowledged as successful. */
  private readonly ackedPrepares = new Set<string>();
  private readonly retireAt = new Map<string, { at: number; index: number }>();

  constructor(
    readonly seed: number,
    private readonly opts: StorageSimOptions,
  ) {
    this.rng = new Mulberry32(seed);
    const r = this.rng;
    this.dropRate = r.nextFloat() * 0.15;
    this.dupRate = r.nextFloat() * 0.05;
    this.maxDelay = r.nextFloat() < 0.3 ? 4 + r.nextInt(6) : r.nextInt(4);
    this.crashRate = r.nextFloat() * 0.008;
    this.leaderCrashRate = r.nextFloat() < 0.5 ? r.nextFloat() * 0.02 : 0;
    this.partitionRate = 0.003 + r.nextFloat() * 0.03;
    this.persistRate = 0.3 + r.nextFloat() * 0.7;
    this.powerLossRate = r.nextFloat();
    this.opRate = 0.1 + r.nextFloat() * 0.4;
    this.maxSizePerMsg = [1, 64, 1024, 1 << 20][r.nextInt(4)];
    const n = r.nextFloat() < 0.5 ? 3 : 3 + r.nextInt(3);
    const voters: string[] = [];
    for (let i = 0; i < n; i++) voters.push(`n${this.nextNodeNo++}`);
    for (const id of voters)
      this.nodes.set(id, this.newNode(id, MemoryStorage.bootstrap({ voters, learners: [] })));
    this.confAt.set(1, { voters: [...voters], learners: [] });
    for (let i = 0; i < CLIENTS; i++)
      this.clients.push({ id: i, todo: [], known: new Map(), fresh: [], tids: [] });
    this.trace(
      `seed ${seed}: ${n} voters, drop=${this.dropRate.toFixed(3)} dup=${this.dupRate.toFixed(3)} delay<=${this.maxDelay} ` +
        `crash=${this.crashRate.toFixed(4)} leaderCrash=${this.leaderCrashRate.toFixed(3)} partition=${this.partitionRate.toFixed(3)} ` +
        `persist=${this.persistRate.toFixed(2)} powerLoss=${this.powerLossRate.toFixed(2)} ops=${this.opRate.toFixed(2)} maxMsg=${this.maxSizePerMsg}`,
    );
  }

  private trace(line: string): void {
    if (this.opts.trace) this.opts.trace(`[t=${this.now}] ${line}`);
  }

  private newNode(id: string, log: MemoryStorage): SNode {
    return {
      id,
      log,
      disk: new StoreDisk(),
      joining: log.snapshot().index === 0,
      up: false,
      retired: false,
      incarnation: 0,
      downUntil: 0,
      skewMs: this.rng.nextInt(2 * CLOCK_SKEW_MAX_MS) - CLOCK_SKEW_MAX_MS,
      keepEntries: 2 + this.rng.nextInt(20),
      processed: 0,
      conf: { voters: [], learners: [] },
      props: new Map(),
    };
  }

  private clockMs(n: SNode): number {
    return CLOCK_BASE_MS + this.now * TICK_MS + n.skewMs;
  }

  /** Start (or restart) a node from its disks, as StorageNode.open + RaftReplicator do. */
  private async start(n: SNode): Promise<void> {
    n.incarnation++;
    n.db = await n.disk.open();
    n.store = await ObjectStore.openOn(n.db, { sync: false });
    const snap = n.log.snapshot();
    // The log replays everything after its snapshot; the store must hold at least that much.
    if (n.store.appliedIndex < snap.index && snap.index > 1)
      fail(
        `${n.id} restarted with its store at ${n.store.appliedIndex}, behind the log's snapshot ${snap.index}: applied writes were lost that the log cannot replay`,
      );
    n.processed = snap.index;
    n.conf = n.log.initialState().conf;
    n.pending = undefined;
    n.props = new Map();
    n.raw = new RawNode({
      id: n.id,
      electionTicks: ELECTION_TICKS,
      heartbeatTicks: 1,
      storage: n.log,
      applied: snap.index,
      rng: this.rng.fork(n.incarnation * 31 + n.id.length),
      preVote: true,
      checkQuorum: true,
      maxSizePerMsg: this.maxSizePerMsg,
      maxInflightMsgs: 1 + this.rng.nextInt(8),
      maxUncommittedEntriesBytes: 0,
    });
    n.up = true;
  }

  private crash(n: SNode): void {
    const lost = this.rng.nextFloat() < this.powerLossRate;
    const keep = lost ? this.rng.nextInt(n.disk.unsynced + 1) : n.disk.unsynced;
    this.trace(
      `CRASH ${n.id}${n.pending ? ' (unpersisted Ready lost)' : ''}` +
        (keep < n.disk.unsynced ? ` (store loses ${n.disk.unsynced - keep} unsynced batches)` : ''),
    );
    this.stats.storeBatchesLost += n.disk.unsynced - keep;
    n.disk.crash(keep);
    n.up = false;
    n.raw = undefined;
    n.store = undefined;
    n.db = undefined;
    n.pending = undefined;
    for (const p of n.props.values()) this.unknown(p.op, `${n.id} crashed`);
    n.props = new Map();
    this.stats.crashes++;
  }

  async run(): Promise<void> {
    const safetyTicks = this.opts.safetyTicks ?? 300;
    const livenessTicks = this.opts.livenessTicks ?? 600;
    for (const n of this.nodes.values()) await this.start(n);
    for (let i = 0; i < safetyTicks; i++) await this.step();
    this.faults = false;
    this.cut.clear();
    this.trace('=== HEAL: liveness phase ===');
    for (const n of this.nodes.values()) if (!n.up && !n.retired) await this.start(n);
    this.clients[0].todo.push({ kind: 'final', st: STORAGES[0], txnId: '', notBefore: 0 });
    for (let i = 0; i < livenessTicks; i++) {
      await this.step();
      const leader = this.leader();
      if (leader && this.converged(leader)) {
        this.trace(`converged after ${i} liveness ticks`);
        await this.finalChecks(leader);
        return;
      }
    }
    const l = this.leader();
    fail(
      `liveness: no convergence within ${livenessTicks} ticks after healing (leader=${l?.id ?? 'none'}, ` +
        `clients=${this.clients.map((c) => `${c.busy ? `busy:${c.busy.kind}` : 'idle'}/${c.todo.length}`).join(' ')}, ` +
        `nodes=${[...this.nodes.values()]
          .filter((n) => n.up)
          .map((n) => {
            const s = n.raw!.basicStatus();
            return `${n.id}:${s.role}/t${s.term}/c${s.commit}/p${n.processed}/s${n.store!.appliedIndex}`;
          })
          .join(' ')})`,
    );
  }

  private leader(): SNode | undefined {
    let best: SNode | undefined;
    let bestTerm = -1;
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      const s = n.raw!.basicStatus();
      if (s.role === 'leader' && s.term > bestTerm) {
        best = n;
        bestTerm = s.term;
      }
    }
    return best;
  }

  private converged(leader: SNode): boolean {
    if (this.clients.some((c) => c.busy || c.todo.length > 0)) return false;
    const commit = leader.raw!.basicStatus().commit;
    if (this.modelNext <= commit) return false;
    const conf = leader.raw!.status().conf;
    for (const id of [...conf.voters, ...conf.learners]) {
      const n = this.nodes.get(id);
      if (!n || !n.up || n.pending || n.raw!.hasReady()) return false;
      if (n.processed < commit || n.store!.appliedIndex < commit) return false;
    }
    return true;
  }

  private async step(): Promise<void> {
    this.now++;
    this.stats.ticks++;
    if (this.faults) await this.injectFaults();
    this.clientActions();
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      if (this.faults && this.rng.nextFloat() < 0.02) continue; // a skipped tick
      if (this.faults && this.rng.nextFloat() < 0.01) {
        // Clock drift, also backwards: TIDs must still increase.
        n.skewMs = Math.max(
          -CLOCK_SKEW_MAX_MS,
          Math.min(CLOCK_SKEW_MAX_MS, n.skewMs + this.rng.nextInt(4001) - 2000),
        );
      }
      n.raw!.tick();
    }
    await this.deliver();
    for (const n of this.nodes.values()) await this.processReady(n, false);
    this.check();
  }

  private async injectFaults(): Promise<void> {
    const r = this.rng;
    for (const n of this.nodes.values()) {
      if (n.retired) continue;
      if (n.up && r.nextFloat() < this.crashRate) {
        this.crash(n);
        n.downUntil = this.now + 1 + r.nextInt(40);
      } else if (!n.up && this.now >= n.downUntil) {
        this.trace(`RESTART ${n.id}`);
        await this.start(n);
      }
    }
    const leader = this.leader();
    if (leader && r.nextFloat() < this.leaderCrashRate) {
      this.crash(leader);
      leader.downUntil = this.now + 1 + r.nextInt(25);
    }
    for (const [id, { at, index }] of this.retireAt) {
      const n = this.nodes.get(id)!;
      const acknowledged = [...this.nodes.values()].some(
        (m) => m.id !== id && m.up && m.processed >= index && m.conf.voters.includes(m.id),
      );
      if (this.now >= at && !n.retired && acknowledged) {
        this.trace(`RETIRE ${id} (removed from the cluster)`);
        if (n.up) this.crash(n);
        n.retired = true;
      }
    }
    if (r.nextFloat() < this.partitionRate) {
      const ids = [...this.nodes.keys()];
      this.cut.clear();
      if (r.nextFloat() < 0.3 && leader && leader.up) {
        for (const b of ids) {
          if (b === leader.id) continue;
          this.cut.add(`${leader.id}>${b}`);
          this.cut.add(`${b}>${leader.id}`);
        }
        this.trace(`ISOLATE leader ${leader.id}`);
      } else {
        const side = new Map(ids.map((id) => [id, r.nextFloat() < 0.5]));
        for (const a of ids)
          for (const b of ids) if (side.get(a) !== side.get(b)) this.cut.add(`${a}>${b}`);
        this.trace(
          `PARTITION ${ids.filter((id) => side.get(id)).join(',')} | ${ids.filter((id) => !side.get(id)).join(',')}`,
        );
      }
    } else if (this.cut.size > 0 && r.nextFloat() < this.partitionRate * 2) {
      this.cut.clear();
      this.trace('HEAL network');
    }
    if (r.nextFloat() < 0.03) {
      const ups = [...this.nodes.values()].filter((n) => n.up && !n.pending);
      if (ups.length) await this.compact(ups[r.nextInt(ups.length)], true);
    }
    if (leader && leader.up && r.nextFloat() < 0.012) this.confChange(leader);
    if (leader && leader.up && r.nextFloat() < 0.004) {
      const voters = leader.raw!.status().conf.voters.filter((v) => v !== leader.id);
      if (voters.length > 0) {
        const to = voters[r.nextInt(voters.length)];
        this.trace(`TRANSFER leadership ${leader.id} -> ${to}`);
        leader.raw!.transferLeadership(to);
      }
    }
  }

  private confChange(leader: SNode): void {
    const r = this.rng;
    const conf = leader.raw!.status().conf;
    const members = conf.voters.length + conf.learners.length;
    const choice = r.nextInt(3);
    let cc: { type: ConfChangeType; node: string } | undefined;
    let fresh = false;
    if (choice === 0 && this.nextNodeNo <= MAX_NODES && members < 6) {
      cc = { type: ConfChangeType.AddLearner, node: `n${this.nextNodeNo}` };
      fresh = true;
    } else if (choice === 1 && conf.learners.length > 0) {
      cc = {
        type: ConfChangeType.PromoteLearner,
        node: conf.learners[r.nextInt(conf.learners.length)],
      };
    } else if (choice === 2 && members > 2) {
      const all = [...(conf.voters.length >= 3 ? conf.voters : []), ...conf.learners];
      if (all.length > 0)
        cc = { type: ConfChangeType.RemoveNode, node: all[r.nextInt(all.length)] };
    }
    if (!cc) return;
    try {
      leader.raw!.proposeConfChange(cc);
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return;
    }
    this.trace(`PROPOSE conf change ${ConfChangeType[cc.type]} ${cc.node} at ${leader.id}`);
    if (fresh) {
      this.nextNodeNo++;
      // A joining node starts with empty disks and waits for a snapshot from the leader.
      const n = this.newNode(cc.node, new MemoryStorage());
      this.nodes.set(n.id, n);
      n.downUntil = this.now; // started by injectFaults (or at heal)
    }
  }

  // ----------------------------------------------------------------------------------------
  // Network

  private async send(from: SNode, m: Message): Promise<void> {
    const r = this.rng;
    if (m.type === MessageType.Snapshot) {
      // As PeerTransport.sendSnapshot: the data is the store's own consistent snapshot, and the
      // message's metadata is replaced by what describes that data.
      const cap = await this.captureSnapshot(from);
      const lost = !cap || (this.faults && r.nextFloat() < this.dropRate);
      this.net.push({
        at: this.now + 1 + r.nextInt(this.maxDelay + 3),
        report: { node: from.id, incarnation: from.incarnation, peer: m.to, ok: !lost },
      });
      if (lost) {
        this.stats.dropped++;
        return;
      }
      this.stats.snapshotsSent++;
      this.net.push({
        at: this.now + 1 + (this.faults ? r.nextInt(this.maxDelay + 1) : 0),
        m: { ...m, snapshot: cap.meta },
        chunks: cap.chunks,
      });
      return;
    }
    if (this.faults && r.nextFloat() < this.dropRate) {
      this.stats.dropped++;
      return;
    }
    const copies = this.faults && r.nextFloat() < this.dupRate ? 2 : 1;
    for (let i = 0; i < copies; i++)
      this.net.push({ at: this.now + 1 + (this.faults ? r.nextInt(this.maxDelay + 1) : 0), m });
  }

  /** RaftReplicator.captureSnapshot. */
  private async captureSnapshot(
    n: SNode,
  ): Promise<
    { meta: { index: number; term: number; conf: ConfState }; chunks: Buffer[] } | undefined
  > {
    const store = n.store!;
    if (store.appliedIndex !== n.processed) return undefined; // still replaying after a restart
    const snap = store.snapshot();
    const term = n.raw!.termAt(snap.index);
    if (term === undefined) {
      await snap.chunks.return(undefined);
      return undefined;
    }
    const chunks: Buffer[] = [];
    for await (const c of snap.chunks) chunks.push(c);
    return {
      meta: {
        index: snap.index,
        term,
        conf: { voters: [...n.conf.voters], learners: [...n.conf.learners] },
      },
      chunks,
    };
  }

  private async deliver(): Promise<void> {
    const due: InFlight[] = [];
    const later: InFlight[] = [];
    for (const f of this.net) (f.at <= this.now ? due : later).push(f);
    this.net = later;
    for (let i = due.length - 1; i > 0; i--) {
      const j = this.rng.nextInt(i + 1);
      [due[i], due[j]] = [due[j], due[i]];
    }
    for (const f of due) {
      if (f.report) {
        const n = this.nodes.get(f.report.node)!;
        if (n.up && n.incarnation === f.report.incarnation)
          n.raw!.reportSnapshot(f.report.peer, f.report.ok);
        continue;
      }
      let m = f.m!;
      const to = this.nodes.get(m.to);
      if (!to || !to.up || this.cut.has(`${m.from}>${m.to}`)) {
        this.stats.dropped++;
        continue;
      }
      this.stats.delivered++;
      if (m.type === MessageType.Snapshot) {
        await this.installSnapshot(to, m, f.chunks!);
        continue;
      }
      // RaftReplicator.step: a joining node does not vote; commit beyond our log is clamped.
      if (to.joining && (m.type === MessageType.Vote || m.type === MessageType.PreVote)) continue;
      if (
        (m.type === MessageType.Heartbeat || m.type === MessageType.Append) &&
        m.commit > to.log.lastIndex()
      )
        m = { ...m, commit: Math.min(m.commit, to.log.hardState().commit) };
      to.raw!.step({ ...m });
    }
  }

  /** RaftReplicator.installSnapshot: data into the store first, then the message into the core. */
  private async installSnapshot(n: SNode, m: Message, chunks: Buffer[]): Promise<void> {
    // The production host holds its loop lock: the Ready being persisted completes first.
    if (n.pending) await this.processReady(n, true);
    if (!n.up) return;
    const meta = m.snapshot!;
    if (meta.index <= n.store!.appliedIndex || meta.index <= n.processed) return;
    const applied = await n.store!.restore(async function* () {
      yield* chunks;
    });
    if (applied !== meta.index)
      fail(`${n.id}: snapshot data is at index ${applied}, its message says ${meta.index}`);
    this.stats.snapshotsInstalled++;
    this.trace(`${n.id} RESTORE store snapshot ${meta.index} from ${m.from}`);
    n.raw!.step({ ...m });
  }

  // ----------------------------------------------------------------------------------------
  // The host loop

  private async processReady(n: SNode, force: boolean): Promise<void> {
    for (let round = 0; round < 2 && n.up; round++) {
      const raw = n.raw!;
      if (!n.pending) {
        if (!raw.hasReady()) return;
        n.pending = raw.ready();
        this.checkNewEntries(n, n.pending);
      }
      // Persist at a random later point: a crash before it loses the whole Ready.
      if (this.faults && !force && this.rng.nextFloat() >= this.persistRate) return;
      const rd = n.pending;
      n.pending = undefined;
      await this.handleReady(n, rd);
      if (force) return;
    }
  }

  /** One iteration of RaftReplicator.drain. */
  private async handleReady(n: SNode, rd: Ready): Promise<void> {
    const raw = n.raw!;
    if (rd.softState)
      this.trace(`${n.id} is ${rd.softState.role} (leader '${rd.softState.leader}')`);
    if (rd.snapshot) {
      if (n.store!.appliedIndex < rd.snapshot.index)
        fail(
          `${n.id}: snapshot ${rd.snapshot.index} installed before its data (store at ${n.store!.appliedIndex})`,
        );
      n.conf = rd.snapshot.conf;
      n.processed = Math.max(n.processed, rd.snapshot.index);
    }
    const leaderFirst = raw.basicStatus().role === 'leader';
    if (leaderFirst) {
      // A leader sends first and writes its own copy in parallel: a crash in between loses it.
      for (const m of rd.messages) await this.send(n, m);
      if (this.faults && rd.entries.length > 0 && this.rng.nextFloat() < this.leaderCrashRate) {
        this.crash(n);
        n.downUntil = this.now + 1 + this.rng.nextInt(25);
        return;
      }
    }
    if (rd.snapshot) {
      n.log.applySnapshot(rd.snapshot);
      n.joining = false;
    }
    if (rd.hardState) n.log.setHardState(rd.hardState);
    n.log.append(rd.entries);
    if (!leaderFirst) for (const m of rd.messages) await this.send(n, m);
    await this.applyEntries(n, rd.committedEntries);
    if (
      this.faults &&
      rd.committedEntries.length > 0 &&
      this.rng.nextFloat() < this.leaderCrashRate
    ) {
      // Crash after applying, before advance(): the store is ahead of what the core knows.
      this.crash(n);
      n.downUntil = this.now + 1 + this.rng.nextInt(25);
      return;
    }
    raw.advance(rd);
    if (n.store!.appliedIndex - n.log.firstIndex() >= 2 * n.keepEntries)
      await this.compact(n, false);
  }

  /** RaftReplicator.applyEntries, plus the checks. */
  private async applyEntries(n: SNode, entries: Entry[]): Promise<void> {
    const store = n.store!;
    const todo = entries.filter((e) => e.index > n.processed);
    todo.forEach((e, i) => {
      if (e.index !== n.processed + 1 + i)
        fail(`${n.id}: committed entry ${e.index} out of order after ${n.processed}`);
    });
    const skipBelow = this.opts.inject === 'no-skip' ? 0 : store.appliedIndex;
    const items = todo
      .filter((e) => e.index > skipBelow)
      .map((e) => ({
        index: e.index,
        cmd: e.type === EntryType.Normal ? decode(e) : ({ noop: {} } as Command),
      }));
    const results = new Map<number, ApplyResult>();
    if (items.length) {
      const rs = await store.applyBatch(items);
      rs.forEach((r, i) => {
        results.set(items[i].index, r);
        this.checkApplied(
          n,
          todo.find((e) => e.index === items[i].index)!,
          items[i].cmd,
          r,
        );
      });
    }
    for (const e of todo) {
      if (e.type === EntryType.ConfChange) {
        const cc = decodeConfChange(e.data);
        n.conf = n.raw!.applyConfChange(cc);
        const seen = this.confAt.get(e.index);
        if (!seen) {
          this.confAt.set(e.index, n.conf);
          this.stats.confChangesApplied++;
          this.trace(
            `${n.id} APPLY conf change ${ConfChangeType[cc.type]} ${cc.node} -> voters=${n.conf.voters} learners=${n.conf.learners}`,
          );
        } else if (JSON.stringify(seen) !== JSON.stringify(n.conf)) {
          fail(`${n.id}: membership after ${e.index} differs from another node's`);
        }
        if (cc.type === ConfChangeType.RemoveNode && !this.retireAt.has(cc.node))
          this.retireAt.set(cc.node, { at: this.now + 30, index: e.index });
      }
      n.processed = e.index;
      const p = n.props.get(e.index);
      if (p) {
        n.props.delete(e.index);
        if (p.term === e.term) this.resolved(p.op, results.get(e.index) ?? { ok: true }, e.index);
        else this.unknown(p.op, 'leadership changed before it committed');
      }
    }
    if (n.processed > this.stats.applied) this.stats.applied = n.processed;
    this.runModel();
  }

  /** Every node applying index i applies the same entry and gets the same result. */
  private checkApplied(n: SNode, e: Entry, cmd: Command, r: ApplyResult): void {
    const entry = `${e.term}|${e.type}|${Buffer.from(e.data).toString('hex')}`;
    const key = resultKey(r);
    const seen = this.appliedAt.get(e.index);
    if (!seen) {
      if (e.index > 2 && !this.appliedAt.has(e.index - 1))
        fail(`${n.id} applied ${e.index} but no node ever applied ${e.index - 1}`);
      this.appliedAt.set(e.index, { entry, result: key, cmd, r });
      return;
    }
    if (seen.entry !== entry)
      fail(`state machine safety: ${n.id} applies a different entry at ${e.index}`);
    if (seen.result !== key)
      fail(
        `${n.id} got "${key}" applying ${e.index} (${cmdKind(cmd)}), another node got "${seen.result}"`,
      );
  }

  /** Run the reference model over the committed history in log order. */
  private runModel(): void {
    for (;;) {
      const a = this.appliedAt.get(this.modelNext);
      if (!a) return;
      this.model.apply(this.modelNext, a.cmd, a.r);
      this.modelNext++;
    }
  }

  /** RaftReplicator.maybeCompact. */
  private async compact(n: SNode, force: boolean): Promise<void> {
    const store = n.store!;
    const keep = n.keepEntries;
    const first = n.log.firstIndex();
    const applied = store.appliedIndex;
    // Production (RaftReplicator.maybeCompact) returns only when applied < processed. After a
    // restart the store is AHEAD of processed while the log replays (entries <= applied are
    // skipped); compacting then records the membership as of `processed` for the snapshot at
    // `applied` and may discard entries the core has yet to hand out. This simulator found that
    // (inject 'compact-while-replaying' restores the production guard); the host here waits.
    const replaying =
      this.opts.inject === 'compact-while-replaying'
        ? applied < n.processed
        : applied !== n.processed;
    if (replaying) return;
    if (!force && applied - first < 2 * keep) return;
    if (applied <= n.log.snapshot().index) return;
    if (this.opts.inject !== 'no-flush') await store.flush();
    // The snapshot's membership must be the one in force at its index.
    const want = this.confAtIndex(applied);
    if (JSON.stringify(want) !== JSON.stringify(n.conf))
      fail(
        `${n.id} compacts at ${applied} with membership ${JSON.stringify(n.conf)}, in force there: ${JSON.stringify(want)}`,
      );
    n.log.createSnapshot(applied, n.conf);
    n.log.compact(Math.max(first, applied - keep));
    this.stats.compactions++;
    this.trace(`COMPACT ${n.id} snapshot@${applied} first=${n.log.firstIndex()}`);
  }

  private confAtIndex(index: number): ConfState | undefined {
    let best = -1;
    for (const i of this.confAt.keys()) if (i <= index && i > best) best = i;
    return best < 0 ? undefined : this.confAt.get(best);
  }

  /** Raft-level sanity (the Raft simulator checks far more): one leader per term, committed entries kept. */
  private checkNewEntries(n: SNode, rd: Ready): void {
    const commit = n.raw!.basicStatus().commit;
    for (const e of rd.entries) {
      if (e.index > commit) continue;
      const seen = this.appliedAt.get(e.index);
      const entry = `${e.term}|${e.type}|${Buffer.from(e.data).toString('hex')}`;
      if (seen && seen.entry !== entry)
        fail(`committed entry lost: ${n.id} logs a different entry at committed index ${e.index}`);
    }
  }

  private check(): void {
    for (const n of this.nodes.values()) {
      if (!n.up) continue;
      const s = n.raw!.basicStatus();
      if (s.term > this.stats.maxTerm) this.stats.maxTerm = s.term;
      if (s.role !== 'leader') continue;
      const other = this.leaderOfTerm.get(s.term);
      if (other !== undefined && other !== n.id)
        fail(`two leaders in term ${s.term}: ${other} and ${n.id}`);
      if (other === undefined) {
        this.leaderOfTerm.set(s.term, n.id);
        this.stats.leaders++;
      }
    }
  }

  // ----------------------------------------------------------------------------------------
  // Clients

  private clientActions(): void {
    for (const c of this.clients) {
      if (c.busy) {
        if (this.now - c.busy.at > OP_TIMEOUT_TICKS) {
          const op = c.busy;
          const n = op.node ? this.nodes.get(op.node) : undefined;
          if (n && op.index !== undefined && n.props.get(op.index)?.op === op)
            n.props.delete(op.index);
          this.unknown(op, 'deadline exceeded');
        }
        continue;
      }
      const ob = c.todo.find((o) => o.notBefore <= this.now);
      let op: ClientOp | undefined;
      if (ob) op = this.obligationOp(c, ob);
      else if (this.faults && this.rng.nextFloat() < this.opRate) op = this.randomOp(c);
      if (!op) continue;
      if (this.propose(op)) {
        if (ob) c.todo.splice(c.todo.indexOf(ob), 1);
        c.busy = op;
      }
    }
  }

  private op(
    c: Client,
    kind: OpKind,
    st: string,
    cmd: Command,
    extra: Partial<ClientOp> = {},
  ): ClientOp {
    return { id: this.nextOpId++, client: c, kind, cmd, st, at: this.now, ...extra };
  }

  private obligationOp(c: Client, ob: Obligation): ClientOp {
    const { st, txnId } = ob;
    switch (ob.kind) {
      case 'finish':
        return this.op(
          c,
          'finish',
          st,
          { finish: { storage: st, txnId, tid: Z64 } },
          { txnId, txn: ob.txn },
        );
      case 'abort':
        return this.op(
          c,
          'abort',
          st,
          { abort: { storage: st, txnId, reason: 'client' } },
          { txnId },
        );
      case 'prepare':
        return this.op(
          c,
          'prepare',
          st,
          { prepare: { txnId, txn: ob.txn! } },
          { txnId, txn: ob.txn },
        );
      case 'final': {
        const txn: Txn = {
          storage: st,
          user: 'final',
          stores: [{ oid: p64(BigInt(1_000_000 + this.nextOpId)), data: Buffer.from('final') }],
        };
        return this.op(c, 'final', st, { commit: { tid: Z64, txn } }, { txn });
      }
    }
  }

  private randomTxn(c: Client, st: string, id: number): Txn {
    const r = this.rng;
    const pool: Buffer[] = [];
    for (let i = 1; i <= OID_SPACE; i++) pool.push(p64(BigInt(i)));
    for (const f of c.fresh) if (f.st === st) pool.push(f.oid);
    const stores: NonNullable<Txn['stores']> = [];
    const used = new Set<string>();
    const count = 1 + r.nextInt(3);
    for (let i = 0; i < count; i++) {
      const oid = pool[r.nextInt(pool.length)];
      if (used.has(hex(oid))) continue;
      used.add(hex(oid));
      const serial = c.known.get(objKey(st, oid));
      const del = serial !== undefined && r.nextFloat() < 0.05;
      stores.push({
        oid,
        serial: serial ?? Buffer.alloc(0),
        ...(del ? { delete: true } : { data: Buffer.from(`c${c.id}-op${id}`) }),
      });
      c.fresh = c.fresh.filter((f) => !(f.st === st && f.oid.equals(oid)));
    }
    const checks: NonNullable<Txn['checks']> = [];
    if (r.nextFloat() < 0.2) {
      const oid = pool[r.nextInt(pool.length)];
      if (!used.has(hex(oid)))
        checks.push({ oid, serial: c.known.get(objKey(st, oid)) ?? Buffer.alloc(0) });
    }
    return { storage: st, user: `client${c.id}`, description: `op${id}`, stores, checks };
  }

  private randomOp(c: Client): ClientOp | undefined {
    const r = this.rng;
    const st = STORAGES[r.nextInt(STORAGES.length)];
    const x = r.nextFloat();
    const id = this.nextOpId;
    if (x < 0.55) {
      const txn = this.randomTxn(c, st, id);
      return this.op(c, 'commit', st, { commit: { tid: Z64, txn } }, { txn });
    }
    if (x < 0.75) {
      const txn = this.randomTxn(c, st, id);
      const txnId = `c${c.id}-t${id}`;
      return this.op(c, 'prepare', st, { prepare: { txnId, txn } }, { txnId, txn });
    }
    if (x < 0.87) {
      if (c.fresh.length >= CLIENT_NEW_OIDS_MAX) return undefined;
      return this.op(c, 'newOids', st, { newOids: { storage: st, count: 1 + r.nextInt(4) } });
    }
    if (x < 0.97) {
      if (c.tids.length === 0) return undefined;
      const t = c.tids[r.nextInt(c.tids.length)];
      return this.op(c, 'undo', t.st, {
        undo: { tid: Z64, storage: t.st, undoTid: t.tid, user: `client${c.id}` },
      });
    }
    const all = this.clients.flatMap((cl) => cl.tids).filter((t) => t.st === st);
    if (all.length === 0) return undefined;
    const t = all[r.nextInt(all.length)];
    return this.op(c, 'pack', st, { pack: { storage: st, packTid: t.tid, gc: false } });
  }

  /** Propose on the current leader, stamped with its clock (RaftReplicator.proposeLocal). */
  private propose(op: ClientOp): boolean {
    const leader = this.leader();
    if (!leader) return false;
    const raw = leader.raw!;
    const data = commandCodec.encode(stampCommand(op.cmd, this.clockMs(leader)));
    let index: number;
    try {
      index = raw.propose(data);
    } catch (e) {
      if (!(e instanceof RaftError)) throw e;
      return false;
    }
    op.node = leader.id;
    op.index = index;
    op.at = this.now;
    leader.props.set(index, { term: raw.basicStatus().term, op });
    this.stats.proposed++;
    return true;
  }

  /** The leader's apply returned `r` to the client. */
  private resolved(op: ClientOp, r: ApplyResult, index: number): void {
    const c = op.client;
    if (c.busy !== op) return; // already timed out
    c.busy = undefined;
    this.stats.acked++;
    const txnKey = `${op.st}\0${op.txnId}`;
    if (!r.ok) {
      const err = r.error;
      if (err.kind === 'CONFLICT' || err.kind === 'READ_CONFLICT') this.stats.conflicts++;
      if (err.kind === 'LOCKED') this.stats.locked++;
      if (err instanceof StorageError && err.conflict)
        c.known.set(objKey(op.st, err.conflict.oid), Buffer.from(err.conflict.actual));
      if (op.kind === 'finish' && this.ackedPrepares.has(txnKey))
        fail(
          `a successful prepare was followed by a failing finish: ${op.txnId} at ${index}: ${err.kind}`,
        );
      if (op.kind === 'final' && err.kind !== 'CONFLICT') fail(`final commit failed: ${err.kind}`);
      return;
    }
    switch (op.kind) {
      case 'commit':
      case 'final':
      case 'finish':
      case 'undo': {
        if (!r.tid) fail(`${op.kind} at ${index} acknowledged without a TID`);
        const stores =
          op.kind === 'undo' ? (r.oids ?? []) : (op.txn!.stores ?? []).map((s) => s.oid);
        for (const oid of stores) c.known.set(objKey(op.st, oid), Buffer.from(r.tid));
        c.tids.push({ st: op.st, tid: Buffer.from(r.tid) });
        this.acked.set(hex(r.tid), index);
        this.stats[op.kind === 'finish' ? 'finishes' : op.kind === 'undo' ? 'undos' : 'commits']++;
        break;
      }
      case 'prepare':
        this.stats.prepares++;
        this.ackedPrepares.add(txnKey);
        c.todo.push({
          kind: 'finish',
          st: op.st,
          txnId: op.txnId!,
          txn: op.txn,
          notBefore: this.now + 1 + this.rng.nextInt(30),
        });
        break;
      case 'abort':
        this.stats.aborts++;
        break;
      case 'newOids':
        this.stats.newOids++;
        for (const oid of r.oids ?? []) c.fresh.push({ st: op.st, oid: Buffer.from(oid) });
        break;
      case 'pack':
        this.stats.packs++;
        break;
    }
  }

  /** The client learns nothing about the outcome (crash, deadline, leadership change). */
  private unknown(op: ClientOp, why: string): void {
    const c = op.client;
    if (c.busy !== op) return;
    c.busy = undefined;
    this.stats.unknownOutcomes++;
    this.trace(`client${c.id} ${op.kind} outcome unknown: ${why}`);
    const later = this.now + 1 + this.rng.nextInt(10);
    const base = { st: op.st, txnId: op.txnId ?? '', txn: op.txn, notBefore: later };
    switch (op.kind) {
      case 'commit':
        for (const s of op.txn!.stores ?? []) c.known.delete(objKey(op.st, s.oid));
        break;
      case 'prepare':
        // Either vote again (a retried vote of a voted transaction succeeds) or abort it.
        c.todo.push({ ...base, kind: this.rng.nextFloat() < 0.5 ? 'prepare' : 'abort' });
        break;
      case 'finish':
      case 'abort':
        c.todo.push({ ...base, kind: op.kind });
        break;
      case 'final':
        c.todo.push({ ...base, kind: 'final' });
        break;
      default:
        break;
    }
  }

  // ----------------------------------------------------------------------------------------
  // End of seed

  private async finalChecks(leader: SNode): Promise<void> {
    const conf = leader.raw!.status().conf;
    const members = [...conf.voters, ...conf.learners].map((id) => this.nodes.get(id)!);
    const index = leader.store!.appliedIndex;
    if (this.model.txns.size > 0)
      for (const [k, t] of this.model.txns)
        if (t.state === 'prepared')
          fail(`transaction ${k.replace('\0', '/')} was left voted (its locks never released)`);
    let dump: string | undefined;
    for (const n of members) {
      const store = n.store!;
      if (store.appliedIndex !== index)
        fail(`${n.id} converged at ${store.appliedIndex}, the leader at ${index}`);
      // Every replica holds the same bytes.
      const h = createHash('sha256');
      for await (const [k, v] of n.db!.iterator()) h.update(k).update(v);
      const d = h.digest('hex');
      if (dump !== undefined && d !== dump)
        fail(
          `${n.id}'s database differs from ${members[0].id}'s at the same applied index ${index}`,
        );
      dump = d;
      if (store.preparedTransactions().length > 0)
        fail(`${n.id} still holds voted transactions after convergence`);
      // The store agrees with the model object by object...
      for (const [k, o] of this.model.objs) {
        const [st, oidHex] = k.split('/');
        const oid = Buffer.from(oidHex, 'hex');
        let serial: Buffer | undefined;
        try {
          serial = (await store.load(st, oid)).serial;
        } catch (e) {
          if (!(e instanceof StorageError) || e.kind !== 'NOT_FOUND') throw e;
        }
        const want = o.deleted || o.serial.equals(Z64) ? undefined : o.serial;
        if ((serial ? hex(serial) : 'none') !== (want ? hex(want) : 'none'))
          fail(
            `${n.id}: object ${k} has serial ${serial ? hex(serial) : 'none'}, the history says ${want ? hex(want) : 'none'}`,
          );
      }
      // ...and transaction by transaction: each committed exactly once, none invented.
      for (const st of STORAGES) {
        const tids: string[] = [];
        for await (const t of store.iterate(st)) tids.push(hex(t.tid));
        const want = [...this.model.commits]
          .filter(([, c]) => c.st === st)
          .map(([t]) => t)
          .sort();
        if (tids.join(',') !== want.join(','))
          fail(
            `${n.id}: storage ${st} holds transactions [${tids.length}] != committed history [${want.length}]`,
          );
      }
      for (const [tid] of this.acked)
        if (!this.model.commits.has(tid))
          fail(`acknowledged transaction ${tid} is not in the history`);
    }
  }
}

function decode(e: Entry): Command {
  if (e.data.length === 0) return { noop: {} };
  try {
    return commandCodec.decode(e.data);
  } catch {
    fail(`undecodable entry at ${e.index}: ${dec.decode(e.data).slice(0, 40)}`);
  }
}
