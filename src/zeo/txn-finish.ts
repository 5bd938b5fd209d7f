/**
 * The end of a ZEO session's transaction: `vote` is the replicated prepare (the objects are then
 * locked on every node; conflicts found at vote go back to the client to resolve), `tpc_finish`
 * the replicated finish, `tpc_abort` the release. A vote's lease is renewed while its session
 * lives. A finish fixes the order in which the client sees invalidations, `info` and its reply
 * (ZEO's order, kept by the outbox: outbox.ts).
 */
import type { Command, StoreOp, Txn } from '../storage/codec';
import type { ApplyResult, UndoPlan } from '../storage/object-store';
import { StorageError } from '../storage/errors';
import { VOTE_LEASE_MS } from '../server/config';
import { proposalMayBeRetried } from '../server/domain-errors';
import { needsOf } from '../server/storage-api';
import { Z64, hex, idCompare } from '../util/ids';
import { ZeoDisconnect, storageError, storageTransactionError, undoError } from './errors';
import { ReplyThen, type SessionContext } from './session-context';
import { type PendingTxn, type TxnStaging, stopRenewing } from './txn-staging';

/** Votes of one transaction that look again after finding this node behind the leader. */
const VOTE_ATTEMPTS_MAX = 3;
/** A vote at a given TID that met other votes looks again after the next apply, or this long. */
const AT_TID_RETRY_MS = 50;
/** How long tpc_finish retries a finish whose outcome is unknown (leader change) before giving up. */
const FINISH_RETRY_MS = 20_000;
const FINISH_RETRY_PAUSE_MS = 100;

export class TxnFinish {
  constructor(
    private readonly ctx: SessionContext,
    private readonly staging: TxnStaging,
  ) {}

  /** The owner named by this session's votes (PrepareCmd.owner): this node. */
  private get owner(): string {
    return this.ctx.node.config.nodeId;
  }

  /**
   * Keep a vote alive while this session lives, up to the transaction timeout: one renewal in
   * flight at a time, every NodeConfig.voteRenewMs. A failed renewal is retried at the next tick.
   * The vote names this node as its owner, so the leader also keeps it while it hears from this
   * node: renewals that fall behind under load do not lose it.
   */
  private renewLease(t: PendingTxn): void {
    stopRenewing(t);
    const st = this.ctx.st;
    const until = Date.now() + this.ctx.node.config.txnTimeoutMs;
    let inFlight = false;
    t.renewer = setInterval(() => {
      if (Date.now() > until) return stopRenewing(t);
      if (inFlight) return;
      inFlight = true;
      this.ctx.api
        .propose(
          { renew: { storage: st, txnId: t.txnId, leaseMs: VOTE_LEASE_MS } },
          { deadlineMs: Date.now() + VOTE_LEASE_MS },
        )
        .catch((e: unknown) =>
          this.ctx.node.log.debug({ txn: t.txnId, error: String(e) }, 'zeo: vote renewal failed'),
        )
        .finally(() => (inFlight = false));
    }, this.ctx.node.config.voteRenewMs);
  }

  /** The undo of this transaction's undoa calls; failures are UndoError, as in ZODB. */
  private async undoPlan(tids: Buffer[]): Promise<UndoPlan> {
    try {
      return await this.ctx.node.store.planUndo(this.ctx.st, tids);
    } catch (e) {
      if (!(e instanceof StorageError)) throw e;
      if (e.kind === 'NOT_FOUND' || e.kind === 'HISTORY_PACKED' || e.kind === 'UNDO_CONFLICT')
        throw undoError(e.message, e.conflict?.oid);
      return this.ctx.fromStorage(e);
    }
  }

  private conflictDict(op: StoreOp, actual: Buffer): Record<string, unknown> {
    return { oid: op.oid, serials: [actual, op.serial ?? Z64], data: op.data ?? Buffer.alloc(0) };
  }

  /**
   * The replicated prepare. Returns ZEO's vote answer: a list whose dict entries are conflicts for
   * the client to resolve (it stores the resolved data and votes again) and whose bytes entries
   * are OIDs the server changed for it (undo). Once it returns without conflicts, finish cannot
   * fail: the objects are locked on every node.
   */
  async vote(handle: string): Promise<unknown[]> {
    const t = this.staging.txn;
    if (!t || t.handle !== handle)
      throw storageTransactionError(`no current transaction ${handle}`);
    if (t.voted) return [];
    try {
      this.ctx.writable();
      if (t.error) throw t.error;
      // Every blob the transaction names is replicated before its vote names it.
      if (t.blobs?.length) await Promise.all(t.blobs);
      if (this.staging.txn !== t)
        throw storageTransactionError(`transaction ${handle} ended during its vote`);
      const stores = new Map(t.stores);
      let undone: Buffer[] = [];
      if (t.undos.length) {
        const plan = await this.undoPlan(t.undos);
        undone = plan.oids;
        // A store of the same object in this transaction wins over the undo (ZODB applies the
        // transaction's records in order, and a store comes after the undo it follows).
        for (const op of plan.stores) if (!stores.has(hex(op.oid))) stores.set(hex(op.oid), op);
        // An undo that needs conflict resolution fails, as in a ZEO server with
        // client-conflict-resolution on (the server runs no application code).
        const c = plan.conflicts.find((x) => !t.stores.has(hex(x.oid)));
        if (c)
          throw undoError(
            `Some data were modified by a later transaction (object ${hex(c.oid)})`,
            c.oid,
          );
      }
      const checks = [...t.checks.entries()].filter(([k]) => !stores.has(k)).map(([, c]) => c);
      this.ctx.api.checkTransactionSize(stores.size + checks.length, t.dataBytes);
      this.ctx.api.admitVote();
      const txn: Txn = {
        storage: this.ctx.st,
        user: t.user,
        description: t.description,
        extension: t.extension,
        stores: [...stores.values()],
        checks,
      };
      if (t.status !== ' ') txn.status = t.status;
      if (t.tid) {
        // One vote at the given TID: it waits until nothing else is voted, then holds the cluster's
        // commits until its finish. A conflict (a store at a given TID) is the client's error.
        const r = await this.prepareWithLockWait(
          {
            prepare: { txnId: t.txnId, txn, leaseMs: VOTE_LEASE_MS, tid: t.tid, owner: this.owner },
          },
          true,
        );
        if (!r.ok) return this.ctx.fromStorage(r.error);
        t.voted = true;
        this.renewLease(t);
        return undone;
      }
      const oids = [...txn.stores!, ...checks].map((x) => x.oid as Buffer);
      for (let attempt = 1; ; attempt++) {
        // Conflicts visible in the applied state are all answered at once (with their objects
        // reserved, below); the prepare remains the authority, as this node may be behind.
        let conflicts = await this.conflicts(t);
        if (!conflicts.length) {
          // A leased vote: it outlives its session (client gone, node dead) by about a lease.
          const r = await this.prepareWithLockWait({
            prepare: { txnId: t.txnId, txn, leaseMs: VOTE_LEASE_MS, owner: this.owner },
          });
          if (r.ok) {
            t.voted = true;
            t.reserved = false;
            this.renewLease(t);
            // Stores the server may resolve at finish: the client must not cache its own data for
            // them (ZEO's vote answer: OIDs the server changed).
            return [...undone, ...this.serverResolved(t)];
          }
          const e = r.error;
          const c = e.conflict;
          const op = c ? t.stores.get(hex(c.oid)) : undefined;
          // A store the server was to resolve conflicts only when its apply could not resolve
          // it: that is final, the client resolves it.
          if (
            e.kind !== 'CONFLICT' ||
            !c ||
            !op ||
            op.delete ||
            op.resolve ||
            attempt >= VOTE_ATTEMPTS_MAX
          ) {
            this.countConflicts(1);
            if (e.kind === 'CONFLICT' && c && op && !op.delete)
              return [this.conflictDict(op, c.actual)];
            return this.ctx.fromStorage(e);
          }
          await this.catchUp(); // this node was behind the leader: look again
          continue;
        }
        // Reserve every object of the transaction so that the client's resolution is not
        // overtaken by another commit before it votes again (ZEO resolves conflicts under its
        // commit lock for the same reason): other votes on these objects wait behind it.
        const r = await this.prepareWithLockWait({
          prepare: {
            txnId: t.txnId,
            txn: { storage: this.ctx.st, checks: oids.map((oid) => ({ oid })) },
            leaseMs: VOTE_LEASE_MS,
            reserve: true,
            owner: this.owner,
          },
        });
        if (r.ok) {
          t.reserved = true;
          this.renewLease(t);
          // Applied here, and locked: the serials read now are the ones the next vote meets.
          conflicts = await this.conflicts(t);
          if (!conflicts.length) continue;
        }
        this.countConflicts(conflicts.length);
        return conflicts; // if not reserved, the client resolves and votes again all the same
      }
    } catch (e) {
      if (t.reserved) this.abortVote(t, 'vote failed');
      if (!(e instanceof ZeoDisconnect)) this.staging.clearTxn();
      throw e;
    }
  }

  /** Stores of existing objects that the server resolves if they conflict (StoreOp.resolve). */
  private serverResolved(t: PendingTxn): Buffer[] {
    return [...t.stores.values()]
      .filter((op) => op.resolve && idCompare(op.serial ?? Z64, Z64) !== 0)
      .map((op) => op.oid as Buffer);
  }

  /**
   * ZEO's conflict answers for the stores whose base serial is older than the current one, except
   * those the server resolves (if it cannot after all, the vote's prepare answers the conflict).
   */
  private async conflicts(t: PendingTxn): Promise<Record<string, unknown>[]> {
    const out: Record<string, unknown>[] = [];
    for (const op of t.stores.values()) {
      if (op.delete || op.resolve || op.restore) continue;
      const cur = await this.ctx.node.store.currentSerial(this.ctx.st, op.oid as Buffer);
      if (idCompare(cur, op.serial ?? Z64) > 0) out.push(this.conflictDict(op, cur));
    }
    return out;
  }

  private countConflicts(n: number): void {
    this.ctx.stats.conflicts += n;
    this.ctx.api.countConflicts(n);
  }

  /** Apply everything committed so far (a linearizable read); false when that is not possible. */
  private async catchUp(): Promise<boolean> {
    try {
      await this.ctx.api.linearizableRead(this.ctx.deadline());
      return true;
    } catch {
      return false;
    }
  }

  /** Release a vote or reservation (best effort: its lease is the backstop). */
  abortVote(t: PendingTxn, why: string): void {
    const st = this.ctx.storage;
    if (!st) return;
    this.ctx.api
      .propose(
        { abort: { storage: st, txnId: t.txnId, reason: 'client' } },
        { deadlineMs: this.ctx.deadline() },
      )
      .catch((e: unknown) =>
        this.ctx.node.log.warn(
          { txn: t.txnId, why, error: String(e) },
          'zeo: abort failed; the vote lease will release it',
        ),
      );
  }

  /**
   * Propose a prepare, waiting (bounded) while a voted transaction holds one of its objects, in
   * the node's one line of lock waiters (StorageApi.proposeWithLockWait). A vote at a given TID
   * waits until it is the one voted transaction: it looks again after each applied command.
   */
  private async prepareWithLockWait(
    cmd: Extract<Command, { prepare: unknown }>,
    atTid = false,
  ): Promise<ApplyResult> {
    const txnId = cmd.prepare.txnId;
    try {
      return await this.ctx.api.proposeWithLockWait(cmd, {
        deadlineMs: this.ctx.deadline(),
        txnId,
        ...(atTid
          ? { pollMs: AT_TID_RETRY_MS }
          : { needs: needsOf(cmd.prepare.txn, cmd.prepare.reserve === true) }),
        stopped: () => this.ctx.closed,
      });
    } catch (e) {
      // Outcome unknown: the prepare may still commit and hold locks. Abort it (best effort;
      // the leader's transaction timeout is the backstop) and fail the vote.
      this.ctx.api
        .propose(
          { abort: { storage: this.ctx.st, txnId, reason: 'client' } },
          { deadlineMs: this.ctx.deadline() },
        )
        .catch(() => undefined);
      throw storageError(`vote failed: ${e instanceof Error ? e.message : e}`);
    }
  }

  async tpcFinish(handle: string): Promise<unknown> {
    const t = this.staging.txn;
    if (!t || t.handle !== handle) return null; // ZEO answers None for a stale id
    if (!t.voted) throw storageTransactionError('tpc_finish before a successful vote');
    const st = this.ctx.st;
    // Invalidations applied from now on wait until the TID of this one is known.
    const hold = this.ctx.outbox.hold();
    t.finishing = true;
    const started = Date.now();
    let r: ApplyResult | undefined;
    const end = Date.now() + FINISH_RETRY_MS;
    for (;;) {
      try {
        r = await this.ctx.api.propose(
          { finish: { storage: st, txnId: t.txnId, tid: Z64 } },
          { deadlineMs: this.ctx.deadline() },
        );
        break;
      } catch (e) {
        // A finish is idempotent (the store remembers finished transaction ids): retry it
        // through a leader change. Past the retry window the outcome is unknown: disconnect.
        if (this.ctx.closed || Date.now() >= end || !proposalMayBeRetried(e)) {
          this.ctx.outbox.release(hold);
          throw new ZeoDisconnect(`tpc_finish failed: ${e instanceof Error ? e.message : e}`, {
            cause: e,
          });
        }
        await new Promise((res) => setTimeout(res, FINISH_RETRY_PAUSE_MS));
      }
    }
    this.staging.clearTxn();
    if (!r.ok) {
      this.ctx.outbox.release(hold);
      return this.ctx.fromStorage(r.error);
    }
    const tid = r.tid as Buffer;
    this.ctx.stats.commits++;
    this.ctx.api.observeCommit(started);
    // ZEO's order: invalidations of earlier transactions, `info`, the reply, then later ones.
    // The client does not get an invalidation for its own transaction.
    await this.ctx.outbox.narrow(hold, tid);
    const s = this.ctx.node.store.storageSummary(st);
    this.ctx.peer.callAsync('info', [{ length: s.objectCount, size: 0 }]);
    return new ReplyThen(tid, () => this.ctx.outbox.release(hold));
  }

  async tpcAbort(handle: string): Promise<null> {
    const t = this.staging.txn;
    if (!t || t.handle !== handle) return null;
    this.staging.clearTxn();
    this.ctx.stats.aborts++;
    if (t.voted || t.reserved) {
      const r = await this.ctx.propose({
        abort: { storage: this.ctx.st, txnId: t.txnId, reason: 'client' },
      });
      if (!r.ok) this.ctx.fromStorage(r.error);
    }
    return null;
  }
}
