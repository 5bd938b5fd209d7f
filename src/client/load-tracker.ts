/**
 * ZEO's load/invalidation race (MISSION §2.5). A load reply travels on a different channel from
 * the invalidation stream, so while a load of `oid` is in flight the client may process an
 * invalidation of `oid`. The reply then describes a revision that the client already knows is
 * no longer current; caching it as current would serve stale data until the next change.
 *
 * Each in-flight load registers a Tracker before its request is sent (with seen_tid = the
 * client's last TID L, so the node answers from a state at or after L). Every invalidation
 * processed afterwards is noted on the trackers of its oid. When the reply (revision `start`)
 * arrives, the invalidations with TID > start are exactly the ones that ended it (any earlier one
 * would contradict the node's "current as of >= L"); the smallest is its end. None: the revision
 * is still current as of the client's last TID. A Reset while in flight makes the reply
 * unplaceable (the client no longer knows what changed), so it is not cached at all.
 */
import { idCompare } from '../util/ids';
import { idKey } from './cache-index';

export class Tracker {
  /** TIDs of invalidations of this oid processed while the load was in flight. */
  readonly invalidations: Buffer[] = [];
  reset = false;

  constructor(readonly oidKey: string) {}

  /**
   * How to cache a revision starting at `start` that the server called current:
   * 'current', { end } (non-current, ended by the first later invalidation), or 'skip'.
   */
  verdict(start: Uint8Array): 'current' | 'skip' | { end: Buffer } {
    if (this.reset) return 'skip';
    let end: Buffer | undefined;
    for (const t of this.invalidations)
      if (idCompare(t, start) > 0 && (!end || idCompare(t, end) < 0)) end = t;
    return end ? { end } : 'current';
  }
}

export class LoadTracker {
  private readonly byOid = new Map<string, Set<Tracker>>();

  start(oid: Uint8Array): Tracker {
    const t = new Tracker(idKey(oid));
    let set = this.byOid.get(t.oidKey);
    if (!set) this.byOid.set(t.oidKey, (set = new Set()));
    set.add(t);
    return t;
  }

  end(t: Tracker): void {
    const set = this.byOid.get(t.oidKey);
    if (!set) return;
    set.delete(t);
    if (set.size === 0) this.byOid.delete(t.oidKey);
  }

  invalidated(oid: Uint8Array, tid: Buffer): void {
    const set = this.byOid.get(idKey(oid));
    if (set) for (const t of set) t.invalidations.push(tid);
  }

  resetAll(): void {
    for (const set of this.byOid.values()) for (const t of set) t.reset = true;
  }

  get inFlight(): number {
    return this.byOid.size;
  }
}
