/**
 * The session table: client sessions (E records) kept in memory in least recently used order,
 * with the watermark of the newest forgotten one (session-commands.ts applies the session commit).
 */
import { assert } from '../util/assert';
import { Z64, idCompare, tidToTime } from '../util/ids';
import { type SessionRecord, sessionCodec } from './codec';
import * as K from './keys';
import { type BatchOp, type Db, buf } from './store-records';

/** A session unused this long, by the replicated clock (command TIDs), is forgotten. */
export const SESSION_EXPIRY_MS = 60 * 60_000;
/** Expired sessions forgotten by one command at most (lookups check expiry themselves). */
const SESSION_EXPIRIES_PER_COMMAND_MAX = 64;

/** A client session in memory: its last sequence number and when it was last used. */
export interface SessionEntry {
  seq: number;
  usedIndex: number;
  /**
   * The TID as a latin1 string: a small Buffer would be a view into a larger one (the command's
   * entry, or a pool slab) and keep it alive; equal-length latin1 strings order as their bytes.
   */
  usedTid: string;
}

/** Whether a session last used at `e.usedTid` has expired at the command time `now`. */
export function sessionExpired(e: SessionEntry, now: Buffer): boolean {
  return tidToTime(now) - tidToTime(Buffer.from(e.usedTid, 'latin1')) > SESSION_EXPIRY_MS;
}

export class SessionTable {
  /**
   * Client sessions (E records) by id, in the order of their used index: least recently used
   * first. Invariant: the same entries in the same order on every replica at the same index (the
   * order is rebuilt from the records' used indexes on load).
   */
  private readonly sessions = new Map<string, SessionEntry>();
  /** The newest used TID of any session forgotten (z64: none was). */
  private watermark: Buffer = Z64;

  /** The session table from its records, least recently used first. */
  async load(db: Db): Promise<void> {
    this.sessions.clear();
    this.watermark = Z64;
    const loaded: Array<[string, SessionEntry]> = [];
    for await (const [key, value] of db.iterator({
      gte: K.sessionWatermarkKey,
      lt: Buffer.from([K.TAG.session + 1]),
    })) {
      if (key.length === 1) {
        this.watermark = Buffer.from(value);
        continue;
      }
      const rec = sessionCodec.decode(value);
      loaded.push([
        key.subarray(1).toString('utf8'),
        {
          seq: Number(rec.seq),
          usedIndex: Number(rec.usedIndex),
          usedTid: buf(rec.usedTid).toString('latin1'),
        },
      ]);
    }
    loaded.sort((a, b) => a[1].usedIndex - b[1].usedIndex);
    for (const [id, e] of loaded) this.sessions.set(id, e);
  }

  /** The session's entry, if it is kept. */
  get(id: string): SessionEntry | undefined {
    return this.sessions.get(id);
  }

  /** How many sessions are kept. */
  get size(): number {
    return this.sessions.size;
  }

  /** The least recently used session (the table is not empty). */
  oldest(): [string, SessionEntry] {
    return this.sessions.entries().next().value as [string, SessionEntry];
  }

  /** Record a session's use (its record as of now) and move it to the most recently used end. */
  use(id: string, rec: SessionRecord, ops: BatchOp[]): void {
    const prev = this.sessions.get(id);
    assert(!prev || prev.usedIndex <= rec.usedIndex, `session ${id} used back in time`);
    ops.push({ type: 'put', key: K.sessionKey(id), value: sessionCodec.encode(rec) });
    this.sessions.delete(id);
    this.sessions.set(id, {
      seq: rec.seq,
      usedIndex: rec.usedIndex,
      usedTid: buf(rec.usedTid).toString('latin1'),
    });
  }

  /** Forget a session; the watermark then covers its used TID. */
  forget(id: string, e: SessionEntry, ops: BatchOp[]): void {
    this.sessions.delete(id);
    ops.push({ type: 'del', key: K.sessionKey(id) });
    const used = Buffer.from(e.usedTid, 'latin1');
    if (idCompare(used, this.watermark) > 0) {
      this.watermark = used;
      ops.push({ type: 'put', key: K.sessionWatermarkKey, value: used });
    }
  }

  /** Forget the least recently used sessions that expired by `now` (a bounded number per call). */
  expire(now: Buffer, ops: BatchOp[]): void {
    for (let i = 0; i < SESSION_EXPIRIES_PER_COMMAND_MAX; i++) {
      const first = this.sessions.entries().next();
      if (first.done || !sessionExpired(first.value[1], now)) return;
      this.forget(first.value[0], first.value[1], ops);
    }
  }

  /** The sessions kept, least recently used first (for tests and status). */
  table(): Array<{ id: string; seq: number; usedIndex: number; usedTid: Buffer }> {
    return [...this.sessions].map(([id, e]) => ({
      id,
      seq: e.seq,
      usedIndex: e.usedIndex,
      usedTid: Buffer.from(e.usedTid, 'latin1'),
    }));
  }

  /** The newest used TID of any forgotten session (z64 when none was). */
  get forgottenUpTo(): Buffer {
    return this.watermark;
  }
}
