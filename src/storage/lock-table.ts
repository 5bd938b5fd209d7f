/**
 * The lock table: the objects each voted transaction holds until its finish or abort, exclusively
 * or shared with other votes whose stores of the object are resolved on the server
 * (zodb-resolve.ts), the blob uploads its vote names, and the one vote at a given TID (a restore),
 * if any. Rebuilt from the P records on load; every replica holds the same locks at an index.
 *
 * Invariants (asserted): an object is locked by at most one voted transaction, or shared by voted
 * transactions, never both; only voted transactions hold locks.
 */
import { assert } from '../util/assert';
import { hex } from '../util/ids';
import type { PreparedRecord, ResolvedStore, Txn } from './codec';
import type { BlobUploads } from './blob-store';
import { buf } from './store-records';
import type { PreparedSummary } from './store-types';

/** The hex OIDs of a vote's stores that share their lock (resolved Length stores, with a delta). */
export function sharedOf(rec: { txn: Txn; resolved?: ResolvedStore[] }): Set<string> {
  return new Set((rec.resolved ?? []).filter((r) => r.delta).map((r) => hex(r.oid)));
}

function lockKey(storage: string, oid: Uint8Array): string {
  return `${storage}\0${hex(oid)}`;
}

export class LockTable {
  /** lockKey(storage, oid) -> voted transaction id holding it. */
  private readonly locks = new Map<string, string>();
  /** lockKey(storage, oid) -> voted transactions sharing it (resolved stores); never empty. */
  private readonly sharedLocks = new Map<string, Set<string>>();
  private readonly prepared = new Map<string, PreparedSummary>();
  /**
   * The vote at a given TID (PrepareCmd.tid), as `storage\0txnId`, if any. Invariant: while it is
   * set, it is the only voted transaction and nothing else commits, so its TID stays above the last.
   */
  private atTid: string | undefined;

  /** `blobs`: the open uploads, which a vote holds beside its objects. */
  constructor(private readonly blobs: BlobUploads) {}

  /** Take the locks of a vote (and hold the uploads it names). */
  hold(st: string, txnId: string, rec: PreparedRecord): void {
    const shared = sharedOf(rec);
    const all = [...(rec.txn.stores ?? []), ...(rec.txn.checks ?? [])].map((s) => buf(s.oid));
    const oids = all.filter((oid) => !shared.has(hex(oid)));
    const sharedOids = all.filter((oid) => shared.has(hex(oid)));
    assert(sharedOids.length === shared.size, `resolved stores of ${txnId} not in its stores`);
    for (const oid of oids) {
      const k = lockKey(st, oid);
      assert(!this.locks.has(k), `object ${hex(oid)} locked twice`);
      assert(!this.sharedLocks.has(k), `object ${hex(oid)} locked while shared`);
      this.locks.set(k, txnId);
    }
    for (const oid of sharedOids) {
      const k = lockKey(st, oid);
      assert(!this.locks.has(k), `object ${hex(oid)} shared while locked`);
      const holders = this.sharedLocks.get(k) ?? new Set<string>();
      holders.add(txnId);
      this.sharedLocks.set(k, holders);
    }
    this.blobs.hold(st, txnId, rec.txn.stores ?? []);
    if (rec.tid?.length) {
      assert(this.atTid === undefined, `${txnId} voted at a TID beside ${this.atTid}`);
      this.atTid = `${st}\0${txnId}`;
    }
    this.prepared.set(`${st}\0${txnId}`, {
      storage: st,
      txnId,
      deadlineMs: rec.deadlineMs ?? 0,
      oids,
      ...(sharedOids.length ? { sharedOids } : {}),
      ...(rec.owner
        ? { owner: rec.owner, votedDeadlineMs: rec.votedDeadlineMs || rec.deadlineMs || 0 }
        : {}),
    });
  }

  /** Release the locks and uploads of a vote (finished or aborted). */
  release(st: string, txnId: string): void {
    const p = this.prepared.get(`${st}\0${txnId}`);
    assert(p, `releasing locks of unknown transaction ${txnId}`);
    for (const oid of p.oids) {
      const k = lockKey(st, oid);
      assert(this.locks.get(k) === txnId, `lock of ${hex(oid)} not held by ${txnId}`);
      this.locks.delete(k);
    }
    for (const oid of p.sharedOids ?? []) {
      const k = lockKey(st, oid);
      const holders = this.sharedLocks.get(k);
      assert(holders && holders.delete(txnId), `shared lock of ${hex(oid)} not held by ${txnId}`);
      if (holders.size === 0) this.sharedLocks.delete(k);
    }
    this.blobs.release(st, txnId);
    if (this.atTid === `${st}\0${txnId}`) this.atTid = undefined;
    this.prepared.delete(`${st}\0${txnId}`);
  }

  /** The voted transaction holding a lock on the object, if any. */
  holder(st: string, oid: Uint8Array): string | undefined {
    return this.locks.get(lockKey(st, oid));
  }

  /** The voted transactions sharing the object's lock (resolved stores), if any. */
  sharers(st: string, oid: Uint8Array): ReadonlySet<string> | undefined {
    return this.sharedLocks.get(lockKey(st, oid));
  }

  /** Whether a voted transaction holds the object, exclusively or shared. */
  held(st: string, oid: Uint8Array): boolean {
    const k = lockKey(st, oid);
    return this.locks.has(k) || (this.sharedLocks.get(k)?.size ?? 0) > 0;
  }

  /**
   * Whether a voted transaction other than `txnId` holds the object: exclusively, or (unless
   * `shared`, a store resolved on the server asking) by sharing it.
   */
  lockedForOthers(st: string, oid: Uint8Array, txnId: string, shared: boolean): boolean {
    if (this.atTid !== undefined && this.atTid !== `${st}\0${txnId}`) return true;
    const k = lockKey(st, oid);
    const holder = this.locks.get(k);
    if (holder !== undefined && holder !== txnId) return true;
    if (shared) return false;
    const sharers = this.sharedLocks.get(k);
    return sharers !== undefined && [...sharers].some((t) => t !== txnId);
  }

  /** The vote of a transaction, if it is voted (its deadline may be renewed in place). */
  vote(st: string, txnId: string): PreparedSummary | undefined {
    return this.prepared.get(`${st}\0${txnId}`);
  }

  /** The voted transactions. */
  votes(): PreparedSummary[] {
    return [...this.prepared.values()];
  }

  /** How many transactions are voted. */
  get voteCount(): number {
    return this.prepared.size;
  }

  /** The vote at a given TID, as `storage\0txnId`, if any. */
  get votedAtTid(): string | undefined {
    return this.atTid;
  }

  /** Forget every lock (the state is being loaded again). */
  clear(): void {
    this.locks.clear();
    this.sharedLocks.clear();
    this.prepared.clear();
    this.atTid = undefined;
  }
}
