/**
 * One ZEO client connection's view of a storage: ZEO's ZEOStorage rebuilt on a ZeoRaft node.
 * Reads come from the node's applied state (after waiting for it to reach the client's view);
 * writes are replicated commands: tpc_begin/storea/... collect a transaction locally, `vote` is the
 * replicated prepare (the objects are then locked on every node), `tpc_finish` the replicated
 * finish. Conflicts on ZODB classes whose resolution rule is fixed (BTrees.Length, integer-key
 * BTrees sets) are resolved on
 * the server as ZEO does in its default mode, by code of our own (storage/zodb-resolve.ts); other
 * conflicts found at vote are returned for client-side resolution, as ZEO 5 does with
 * `client-conflict-resolution` on: the server never runs application code.
 *
 * This file is the session's lifecycle (register, invalidations, close); its methods are in
 * dispatch.ts, served by storage-calls.ts (reads, new OIDs, pack), txn-staging.ts (collecting a
 * transaction), txn-finish.ts (vote, finish, abort) and session-iterators.ts, which share
 * session-context.ts.
 */
import type { CommitEvent } from '../storage/object-store';
import { arity, intArg, textArg } from './args';
import { ZeoDisconnect, readOnlyError, valueError } from './errors';
import { METHODS, ONE_WAY, type SessionParts } from './dispatch';
import { SessionContext, type SessionPeer, type ZeoNode, type ZeoStats } from './session-context';
import { SessionIterators } from './session-iterators';
import { StorageCalls } from './storage-calls';
import { TxnFinish } from './txn-finish';
import { TxnStaging } from './txn-staging';

export { ReplyThen, ZeoStats, type SessionPeer } from './session-context';

/** Invalidations one connection may have waiting behind its in-flight loads before it is cut off. */
const OUTBOX_EVENTS_MAX = 100_000;

export class ZeoSession {
  private readonly ctx: SessionContext;
  private readonly parts: SessionParts;
  private unsubscribe: (() => void) | undefined;

  constructor(node: ZeoNode, peer: SessionPeer, statsFor: (storage: string) => ZeoStats) {
    const ctx = new SessionContext(node, peer, statsFor);
    const staging = new TxnStaging(ctx);
    this.ctx = ctx;
    this.parts = {
      ctx,
      calls: new StorageCalls(ctx),
      staging,
      iterators: new SessionIterators(ctx),
      finish: new TxnFinish(ctx, staging),
    };
  }

  get storage(): string | undefined {
    return this.ctx.storage;
  }

  get registered(): boolean {
    return this.ctx.registered;
  }

  /** The replicated id of this open session's transaction (begun, maybe voted), if any. */
  get txnId(): string | undefined {
    return this.ctx.closed ? undefined : this.parts.staging.txn?.txnId;
  }

  // ------------------------------------------------------------------------------------------
  // Invalidations

  /** A committed transaction of this storage, in TID order (the storage API's commit feed). */
  private onCommit(ev: CommitEvent): void {
    if (this.ctx.closed || ev.storage !== this.ctx.storage) return;
    if (this.ctx.outbox.queued >= OUTBOX_EVENTS_MAX) {
      this.ctx.peer.close(`over ${OUTBOX_EVENTS_MAX} invalidations waiting behind its loads`);
      return;
    }
    this.ctx.outbox.push(ev.tid, () => this.sendInvalidation(ev));
  }

  private sendInvalidation(ev: CommitEvent): void {
    this.ctx.peer.callAsync('invalidateTransaction', [ev.tid, ev.records.map((r) => r.oid)]);
    this.ctx.api.invalidationsSent(1);
  }

  // ------------------------------------------------------------------------------------------
  // Dispatch

  /** One-way calls a client makes (errors close the connection, as in ZEO). */
  static readonly ONE_WAY = ONE_WAY;

  /** Call a method by name; undefined when there is no such method (the caller closes). */
  handler(method: string): ((args: unknown[]) => unknown) | undefined {
    if (!this.registered) return method === 'register' ? (a) => this.register(a) : undefined;
    const h = METHODS[method];
    return h ? (args) => h.call(this.parts, args) : undefined;
  }

  // ------------------------------------------------------------------------------------------
  // Connection set-up

  private async register(a: unknown[]): Promise<Buffer> {
    arity(a, 'register', 2);
    const st = textArg(a[0], 'storage_id', 64);
    const readOnly = intArg(a[1], 'read_only') !== 0;
    const ctx = this.ctx;
    if (ctx.storage !== undefined) throw valueError('duplicate register() call');
    if (!ctx.api.knows(st)) throw valueError(`unknown storage: ${st}`);
    if (!readOnly) {
      const why = ctx.storageReadOnly(st);
      if (why) throw readOnlyError(why);
    }
    // The client compares its cache's TID with ours and refuses a server behind it; a
    // linearizable point makes this node at least as new as anything the client can have seen.
    try {
      await ctx.api.linearizableRead(Date.now() + 5_000);
    } catch {
      // No leader right now: serve what this node has; the client refuses us if we are behind.
    }
    if (ctx.closed) throw new ZeoDisconnect('closed during register');
    ctx.storage = st;
    ctx.readOnly = readOnly;
    const stats = ctx.statsFor(st);
    stats.connections++;
    // Subscribe and read the last TID in the same tick: every later commit is an invalidation.
    this.unsubscribe = ctx.api.subscribe(st, (ev) => this.onCommit(ev));
    return ctx.api.lastTransaction(st);
  }

  serverStatus(st: string): Record<string, unknown> {
    return this.parts.calls.serverStatus(st);
  }

  /** The connection is gone: abort a voted transaction (ZEO's notify_disconnected) and clean up. */
  close(): void {
    const ctx = this.ctx;
    const { staging, iterators, finish } = this.parts;
    if (ctx.closed) return;
    ctx.closed = true;
    staging.blobUpload?.stop();
    this.unsubscribe?.();
    ctx.outbox.clear();
    iterators.closeAll();
    const t = staging.txn;
    if (ctx.storage) {
      ctx.statsFor(ctx.storage).connections--;
      staging.clearTxn();
    }
    // A finishing transaction is left to its finish (its lease ends it if that never lands).
    if (t && (t.voted || t.reserved) && !t.finishing) finish.abortVote(t, 'client disconnected');
    ctx.node.log.debug({ client: ctx.peer.label, label: ctx.label }, 'zeo: session closed');
  }
}
