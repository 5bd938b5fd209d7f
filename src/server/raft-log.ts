/**
 * The durable Raft log on LevelDB: hard state, snapshot metadata and entries, with an in-memory
 * copy (the core's RaftStorage) of everything after the last compaction. Each Ready is persisted
 * with one LevelDB batch, synced when the Ready says so: many proposals share one fsync.
 *
 * Keys: h -> HardState, s -> SnapshotMeta, j -> "joining" marker, e<index:8> -> Entry.
 */
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import type { AbstractLevel } from 'abstract-level';
import { Level } from 'level';
import { MemoryStorage } from '../raft/storage';
import type { ConfState, Entry, HardState, Ready, SnapshotMeta } from '../raft/types';
import { assert } from '../util/assert';
import { writeBatch } from '../util/level-batch';
import { PROTO_DIR } from '../util/proto-path';

const root = protobuf.loadSync(path.join(PROTO_DIR, 'zeoraft/v1/raft.proto'));
const EntryT = root.lookupType('zeoraft.v1.raft.Entry');
const HardStateT = root.lookupType('zeoraft.v1.raft.HardState');
const SnapshotMetaT = root.lookupType('zeoraft.v1.raft.SnapshotMeta');
const CONV = { longs: Number, defaults: true, arrays: true } as protobuf.IConversionOptions;

const enc = (t: protobuf.Type, v: object): Buffer =>
  Buffer.from(t.encode(t.fromObject(v)).finish());
const dec = <T>(t: protobuf.Type, b: Uint8Array): T => t.toObject(t.decode(b), CONV) as T;

const K_HARD = Buffer.from('h');
const K_SNAP = Buffer.from('s');
const K_JOIN = Buffer.from('j');
function entryKey(i: number): Buffer {
  const b = Buffer.alloc(9);
  b[0] = 0x65; // e
  b.writeBigUInt64BE(BigInt(i), 1);
  return b;
}

function sumBytes(entries: Entry[]): number {
  let n = 0;
  for (const e of entries) n += e.data.length;
  return n;
}

type Op = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** Drop the snapshot and entries, keep term and vote (commit 0: nothing is held), mark joining. */
async function resetToJoining(db: Level<Buffer, Buffer>): Promise<void> {
  const hardRaw = await db.get(K_HARD);
  const hs = hardRaw ? dec<HardState>(HardStateT, hardRaw) : undefined;
  await db.clear({ gte: entryKey(0), lt: Buffer.from('f') });
  const ops: Op[] = [
    { type: 'del', key: K_SNAP },
    { type: 'put', key: K_JOIN, value: Buffer.from([1]) },
  ];
  if (hs) ops.push({ type: 'put', key: K_HARD, value: enc(HardStateT, { ...hs, commit: 0 }) });
  await db.batch(ops, { sync: true });
}

export class DurableLog {
  /** The RaftStorage the core reads. */
  readonly mem: MemoryStorage;
  private joiningFlag: boolean;
  /** Data bytes of the entries held after the snapshot (in memory and on disk). */
  private bytes = 0;
  /**
   * A hard state that changed only its commit index, not yet written: it goes out with the next
   * write (entries, a vote, a compaction, close). The commit index need not be durable (Raft
   * relearns it from the leader; the core takes the larger of it and the snapshot's index), and
   * writing it alone cost a LevelDB write per committed batch on every node.
   */
  private pendingHard: HardState | undefined;

  private constructor(
    private readonly db: Level<Buffer, Buffer>,
    mem: MemoryStorage,
    joining: boolean,
    readonly isNew: boolean,
    private readonly fsync: boolean,
    private readonly onFsync: (seconds: number) => void,
  ) {
    this.mem = mem;
    this.joiningFlag = joining;
    this.bytes = sumBytes(this.heldEntries());
  }

  private heldEntries(): Entry[] {
    const first = this.mem.firstIndex();
    const last = this.mem.lastIndex();
    return last >= first ? this.mem.entries(first, last + 1, Infinity) : [];
  }

  /** Data bytes of the entries after the snapshot. */
  get entryBytes(): number {
    return this.bytes;
  }

  /** The smallest index such that the entries from it to the end hold at most maxBytes. */
  firstIndexWithin(maxBytes: number): number {
    const held = this.heldEntries();
    let total = 0;
    for (let i = held.length - 1; i >= 0; i--) {
      total += held[i].data.length;
      if (total > maxBytes) return held[i].index + 1;
    }
    return this.mem.firstIndex();
  }

  /**
   * Open the log. A brand-new log is bootstrapped with `initial` membership (a snapshot at index
   * 1, term 1), or left empty and marked "joining" when `join` is set: a joining node waits for a
   * snapshot from the leader and does not vote until it has one.
   *
   * `rejoin` turns an existing log into a joining one: the state machine lost its state (an
   * interrupted snapshot install was discarded), so the log's snapshot and entries describe data
   * this node no longer holds. They are dropped and the term and vote kept (never vote twice in a
   * term); the node then gets a snapshot like a new member and does not vote until it has one.
   */
  static async open(
    dir: string,
    opts: {
      initial: ConfState;
      join: boolean;
      fsync: boolean;
      onFsync?: (seconds: number) => void;
      rejoin?: boolean;
    },
  ): Promise<DurableLog> {
    const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await db.open();
    return DurableLog.openOn(
      db as unknown as AbstractLevel<Buffer | Uint8Array | string, Buffer, Buffer>,
      opts,
    );
  }

  /**
   * Open the log on a database the caller constructed (any abstract-level implementation with
   * Buffer keys and values): the deterministic simulator (test/sim) runs it on memory-level
   * over a simulated disk; production opens a directory with `open`.
   */
  static async openOn(
    anyDb: AbstractLevel<Buffer | Uint8Array | string, Buffer, Buffer>,
    opts: {
      initial: ConfState;
      join: boolean;
      fsync: boolean;
      onFsync?: (seconds: number) => void;
      rejoin?: boolean;
    },
  ): Promise<DurableLog> {
    if (anyDb.status !== 'open') await anyDb.open();
    const db = anyDb as unknown as Level<Buffer, Buffer>;
    if (opts.rejoin) await resetToJoining(db);
    const hardRaw = await db.get(K_HARD);
    const snapRaw = await db.get(K_SNAP);
    const onFsync = opts.onFsync ?? (() => undefined);
    if (!hardRaw && !snapRaw) {
      const log = new DurableLog(db, new MemoryStorage(), opts.join, true, opts.fsync, onFsync);
      if (opts.join) {
        await db.put(K_JOIN, Buffer.from([1]), { sync: true });
      } else {
        const boot = MemoryStorage.bootstrap(opts.initial);
        await db.batch(
          [
            { type: 'put', key: K_SNAP, value: enc(SnapshotMetaT, boot.snapshot()) },
            { type: 'put', key: K_HARD, value: enc(HardStateT, boot.hardState()) },
          ],
          { sync: true },
        );
        return new DurableLog(db, boot, false, true, opts.fsync, onFsync);
      }
      return log;
    }
    const mem = new MemoryStorage();
    if (snapRaw) {
      const meta = dec<SnapshotMeta>(SnapshotMetaT, snapRaw);
      meta.conf = { voters: meta.conf?.voters ?? [], learners: meta.conf?.learners ?? [] };
      if (meta.index > 0) mem.applySnapshot(meta);
    }
    const entries: Entry[] = [];
    for await (const [, v] of db.iterator({
      gt: entryKey(mem.firstIndex() - 1),
      lt: Buffer.from('f'),
    })) {
      const e = dec<Entry>(EntryT, v);
      e.data = e.data ?? new Uint8Array(0);
      if (entries.length)
        assert(
          e.index === entries[entries.length - 1].index + 1,
          `log gap before entry ${e.index}`,
        );
      entries.push(e);
    }
    if (entries.length) {
      assert(
        entries[0].index === mem.firstIndex(),
        `log starts at ${entries[0].index}, expected ${mem.firstIndex()}`,
      );
      mem.append(entries);
    }
    if (hardRaw) mem.setHardState(dec<HardState>(HardStateT, hardRaw));
    const joining = (await db.get(K_JOIN)) !== undefined;
    return new DurableLog(db, mem, joining, false, opts.fsync, onFsync);
  }

  /**
   * Whether, once rd is written, this log holds a committed entry of its current term. A joining
   * node (a new member, or one back after losing its disk or state) votes only from then on: its
   * acknowledgements from before the loss may have been part of the majority that committed
   * entries it no longer holds, and a snapshot alone does not bring those back (the leader that
   * sends it may not even know they were committed). A committed entry of the leader's own term
   * does: that leader was elected by a majority of voters that held their state, its log holds
   * every committed entry, and ours now matches it up to there.
   */
  private holdsCommittedEntryOfItsTerm(rd: Ready): boolean {
    const hs = rd.hardState ?? this.mem.hardState();
    const n = rd.entries.length;
    const last = n ? rd.entries[n - 1].index : (rd.snapshot?.index ?? this.mem.lastIndex());
    const c = Math.min(hs.commit, last);
    if (c < 1) return false;
    let term: number | undefined;
    if (n && c >= rd.entries[0].index) term = rd.entries[c - rd.entries[0].index].term;
    else if (rd.snapshot) term = c === rd.snapshot.index ? rd.snapshot.term : undefined;
    else if (c >= this.mem.firstIndex() - 1) term = this.mem.term(c);
    return term === hs.term;
  }

  /**
   * True while a joining node does not yet hold every entry that may have been committed (see
   * holdsCommittedEntryOfItsTerm): it must not vote or campaign.
   */
  get joining(): boolean {
    return this.joiningFlag;
  }

  /** Persist a Ready's snapshot, entries and hard state in one batch (synced when required). */
  async persist(rd: Ready): Promise<void> {
    const ops: Op[] = [];
    if (rd.snapshot) {
      // The whole log is replaced by the snapshot.
      for (let i = this.mem.firstIndex(); i <= this.mem.lastIndex(); i++)
        ops.push({ type: 'del', key: entryKey(i) });
      ops.push({ type: 'put', key: K_SNAP, value: enc(SnapshotMetaT, rd.snapshot) });
    }
    if (rd.entries.length) {
      const first = rd.entries[0].index;
      const oldLast = rd.snapshot ? rd.snapshot.index : this.mem.lastIndex();
      const newLast = rd.entries[rd.entries.length - 1].index;
      for (let i = newLast + 1; i <= oldLast; i++) ops.push({ type: 'del', key: entryKey(i) });
      for (const e of rd.entries)
        ops.push({ type: 'put', key: entryKey(e.index), value: enc(EntryT, e) });
      assert(
        first > (rd.snapshot?.index ?? this.mem.firstIndex() - 1),
        `entry ${first} at or before the snapshot`,
      );
    }
    const caughtUp = this.joiningFlag && this.holdsCommittedEntryOfItsTerm(rd);
    if (rd.hardState) this.pendingHard = rd.hardState;
    const commitOnly = ops.length === 0 && !rd.mustSync && !caughtUp;
    if (this.pendingHard && !commitOnly) {
      ops.push({ type: 'put', key: K_HARD, value: enc(HardStateT, this.pendingHard) });
      this.pendingHard = undefined;
    }
    if (caughtUp) ops.push({ type: 'del', key: K_JOIN });
    if (ops.length) {
      // The end of joining is synced even when the Ready needs no sync: once counted as a voter,
      // a node must not come back joining (with another voter down, no majority could vote).
      const sync = (rd.mustSync || caughtUp) && this.fsync;
      const started = process.hrtime.bigint();
      await writeBatch(this.db, ops, { sync });
      if (sync) this.onFsync(Number(process.hrtime.bigint() - started) / 1e9);
    }
    if (rd.snapshot) {
      this.mem.applySnapshot(rd.snapshot);
      this.bytes = 0;
    }
    if (caughtUp) this.joiningFlag = false;
    if (rd.entries.length) {
      const first = rd.entries[0].index;
      if (first <= this.mem.lastIndex())
        this.bytes -= sumBytes(this.mem.entries(first, this.mem.lastIndex() + 1, Infinity));
      this.mem.append(rd.entries);
      this.bytes += sumBytes(rd.entries);
    }
    if (rd.hardState) this.mem.setHardState(rd.hardState);
  }

  /**
   * Record that the state machine holds everything up to `snapIndex` durably, and discard entries
   * before `compactIndex` (<= snapIndex), keeping the rest so followers can catch up from the log.
   */
  async compact(snapIndex: number, conf: ConfState, compactIndex: number): Promise<void> {
    assert(compactIndex <= snapIndex, 'compact beyond the snapshot');
    if (snapIndex <= this.mem.snapshot().index) return;
    const first = this.mem.firstIndex();
    const meta = this.mem.createSnapshot(snapIndex, conf);
    const ops: Op[] = [{ type: 'put', key: K_SNAP, value: enc(SnapshotMetaT, meta) }];
    for (let i = first; i < compactIndex; i++) ops.push({ type: 'del', key: entryKey(i) });
    const hard = this.pendingHard;
    if (hard) ops.push({ type: 'put', key: K_HARD, value: enc(HardStateT, hard) });
    await writeBatch(this.db, ops, { sync: this.fsync });
    if (this.pendingHard === hard) this.pendingHard = undefined;
    this.mem.compact(compactIndex);
    this.bytes = sumBytes(this.heldEntries());
  }

  async close(): Promise<void> {
    if (this.pendingHard && this.db.status === 'open')
      await this.db.put(K_HARD, enc(HardStateT, this.pendingHard));
    this.pendingHard = undefined;
    await this.db.close();
  }
}
