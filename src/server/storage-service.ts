/**
 * The zeoraft.v1.Storage gRPC service: validates requests, turns them into reads of the local
 * store or commands for the replicator, and maps results to responses and statuses.
 */
import * as grpc from '@grpc/grpc-js';
import type { StorageHandlers } from '../generated/zeoraft/v1/Storage';
import type { Transaction__Output } from '../generated/zeoraft/v1/Transaction';
import type { StorageInfo } from '../generated/zeoraft/v1/StorageInfo';
import type { CommitRequest__Output } from '../generated/zeoraft/v1/CommitRequest';
import type { Command, CommitSession, Txn } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { StorageError } from '../storage/errors';
import { MAX_NEW_OIDS } from '../storage/object-store';
import { BLOB_ID_BYTES } from '../storage/blob-store';
import { blobHandlers } from './blob-service';
import { Z64, idCompare, tidFromTime, tidToTime } from '../util/ids';
import {
  RpcError,
  fromStorageError,
  invalid,
  readOnly,
  toServiceError,
  unavailable,
} from './errors';
import { txnBytes } from './limits';
import { packStorage } from './pack';
import type { StorageNode } from './node';
import { type Caller, Security, txnIdScope } from './security';
import { count, optionalId, requireId, serialOrZ64, text, txnId } from './validate';

export const DEFAULT_STORAGE = '1';
const MAX_HISTORY = 1000;
/** A client's session id: 1..64 printable ASCII characters (a UUID fits). */
const SESSION_ID = /^[\x21-\x7e]{1,64}$/;

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>;

export function storageHandlers(node: StorageNode): StorageHandlers {
  /** Wrap a promise-returning handler: errors become statuses, never crashes; metrics observe it. */
  function unary<Req, Res>(method: string, fn: Unary<Req, Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const done = node.metrics.startRequest(method);
      fn(call).then(
        (res) => {
          done(grpc.status.OK);
          callback(null, res);
        },
        (e: unknown) => {
          const err = toServiceError(e);
          done(err.code ?? grpc.status.UNKNOWN);
          if (err.code === grpc.status.INTERNAL)
            node.log.error(
              { method, error: String(e), stack: (e as Error)?.stack },
              'internal error',
            );
          callback(err as grpc.ServiceError);
        },
      );
    };
  }

  /** Wrap a server-streaming handler: a failure ends the stream with its status, never a crash. */
  function serverStream<Req, Res>(
    method: string,
    fn: (call: grpc.ServerWritableStream<Req, Res>) => Promise<void>,
  ): grpc.handleServerStreamingCall<Req, Res> {
    return (call) => {
      const done = node.metrics.startRequest(method);
      fn(call).then(
        () => done(grpc.status.OK),
        (e: unknown) => {
          const err = toServiceError(e);
          done(err.code ?? grpc.status.UNKNOWN);
          call.emit('error', err);
        },
      );
    };
  }

  const deadline = (call: { getDeadline(): grpc.Deadline }): number => {
    const d = call.getDeadline();
    const ms = d instanceof Date ? d.getTime() : Number(d);
    return Number.isFinite(ms) && ms > 0 ? ms : Date.now() + node.config.defaultDeadlineMs;
  };

  /** The client a write is for: a leader re-checks forwarded writes against its key. */
  const callerOf = (call: { metadata: grpc.Metadata }): Caller => ({
    kind: 'client',
    principal: node.security.principalFor(call.metadata),
  });

  /**
   * A client's transaction id, scoped to its owner (storage.proto: ids are unique per client):
   * the caller's security key, or the anonymous scope when keys are off. Two keys may use the same
   * id; a vote is finished or aborted only under the key that made it. The scope is part of the
   * id in the replicated commands, so it holds on every node and across leader changes.
   * A JSON-quoted key id cannot be confused with another key's id, "-" or the ZEO door's ids.
   */
  function ownedTxnId(call: { metadata: grpc.Metadata }, raw: string | undefined): string {
    const id = txnId(raw);
    return `${txnIdScope(node.security.principalFor(call.metadata))}${id}`;
  }

  /**
   * A Commit's client session (storage.proto CommitRequest), its id scoped to the caller's key
   * like transaction ids, so one key can neither read nor spoil another's session; none without
   * session_id.
   */
  function session(call: grpc.ServerUnaryCall<CommitRequest__Output, unknown>): CommitSession {
    const r = call.request;
    if (!r.sessionId) {
      if (r.sequence || r.sessionSinceTid?.length)
        throw invalid('sequence and session_since_tid need a session_id');
      return {};
    }
    if (!SESSION_ID.test(r.sessionId))
      throw invalid('session_id must be 1..64 printable ASCII characters');
    if (!Number.isSafeInteger(r.sequence) || r.sequence < 1)
      throw invalid('a commit in a session needs a sequence number from 1');
    return {
      sessionId: `${txnIdScope(node.security.principalFor(call.metadata))}${r.sessionId}`,
      seq: r.sequence,
      sinceTid: optionalId(r.sessionSinceTid, 'session_since_tid') ?? Z64,
    };
  }

  function storageName(name: string | undefined): string {
    const st = name || DEFAULT_STORAGE;
    if (!node.config.storages.some((s) => s.name === st)) {
      throw new RpcError(
        grpc.status.NOT_FOUND,
        `unknown storage ${JSON.stringify(st)}; this cluster serves ${node.config.storages.map((s) => JSON.stringify(s.name)).join(', ')}`,
        { kind: 'INVALID' },
      );
    }
    return st;
  }

  function writable(st: string): void {
    if (node.config.readOnly) throw readOnly(`node ${node.config.nodeId} is read-only`);
    if (node.config.storages.find((s) => s.name === st)?.readOnly)
      throw readOnly(`storage ${JSON.stringify(st)} is read-only`);
  }

  /** Reads need state: a node waiting for its first snapshot holds none (it would say NOT_FOUND). */
  function holdsState(): void {
    if (node.replicator.view().awaitingSnapshot)
      throw unavailable(
        `node ${node.config.nodeId} holds no state yet: it waits for a snapshot from the leader; retry or try another node`,
        node.replicator.view().leaderAddress,
      );
  }

  async function fresh(
    call: { getDeadline(): grpc.Deadline },
    seen: Buffer | undefined,
  ): Promise<void> {
    holdsState();
    const tid = optionalId(seen, 'seen_tid');
    if (tid) await node.waitForTid(tid, deadline(call));
  }

  function unwrap(r: ApplyResult): Extract<ApplyResult, { ok: true }> {
    if (!r.ok) throw fromStorageError(r.error);
    return r;
  }

  function blobIdOf(b: Buffer, i: number): Buffer {
    if (b.length !== BLOB_ID_BYTES)
      throw invalid(`transaction.stores[${i}].blob_id must be ${BLOB_ID_BYTES} bytes`);
    return b;
  }

  function txnFrom(t: Transaction__Output | null): Txn {
    if (!t) throw invalid('transaction is required');
    const st = storageName(t.storage);
    writable(st);
    const stores: NonNullable<Txn['stores']> = [];
    t.stores.forEach((s, i) => {
      stores.push({
        oid: requireId(s.oid, `transaction.stores[${i}].oid`),
        serial: serialOrZ64(s.serial, `transaction.stores[${i}].serial`),
        data: s.data,
        refs: s.refs.map((r, j) => requireId(r, `transaction.stores[${i}].refs[${j}]`)),
        ...(s.blobId?.length ? { blobId: blobIdOf(s.blobId, i) } : {}),
      });
    });
    t.deletes.forEach((d, i) => {
      stores.push({
        oid: requireId(d.oid, `transaction.deletes[${i}].oid`),
        serial: requireId(d.serial, `transaction.deletes[${i}].serial`),
        delete: true,
      });
    });
    const checks = t.checks.map((c, i) => ({
      oid: requireId(c.oid, `transaction.checks[${i}].oid`),
      serial: serialOrZ64(c.serial, `transaction.checks[${i}].serial`),
    }));
    const txn: Txn = {
      storage: st,
      user: text(t.user, 'transaction.user'),
      description: text(t.description, 'transaction.description'),
      extension: t.extension,
      stores,
      checks,
    };
    node.limits.checkTransaction(stores.length + checks.length, txnBytes(txn));
    return txn;
  }

  /** Admit a transaction-carrying command against the node's memory budget while it is applied. */
  async function withTxnMemory<T>(cmd: Command, what: string, fn: () => Promise<T>): Promise<T> {
    const r = node.limits.reserveCommand(cmd, what);
    try {
      return await fn();
    } finally {
      r?.release();
    }
  }

  async function info(st: string): Promise<StorageInfo> {
    const s = node.store.storageSummary(st);
    const cfg = node.config.storages.find((x) => x.name === st);
    return {
      name: st,
      readOnly: node.config.readOnly || cfg?.readOnly === true,
      supportsUndo: true,
      objectCount: s.objectCount,
      lastTid: s.lastTid,
      oldestResumableTid: await node.subscriptions.oldestResumable(st),
    };
  }

  /** Propose a transaction-committing command, waiting (bounded) for locks held by voted transactions. */
  async function commitWithLockWait(
    call: { getDeadline(): grpc.Deadline; metadata: grpc.Metadata },
    cmd: Command,
  ): Promise<ApplyResult> {
    const end = Math.min(deadline(call), Date.now() + node.config.lockWaitMs);
    const caller = callerOf(call);
    for (;;) {
      const r = await node.replicator.propose(cmd, deadline(call), caller);
      if (r.ok || r.error.kind !== 'LOCKED' || Date.now() >= end) {
        if (!r.ok && r.error.kind === 'CONFLICT') node.metrics.conflicts.inc();
        return r;
      }
      await node.waitForUnlock(end);
    }
  }

  return {
    Open: unary('Open', async (call) => {
      const st = storageName(call.request.storage);
      const seen = optionalId(call.request.lastTid, 'last_tid');
      text(call.request.clientName, 'client_name', 256);
      if (seen) await node.waitForTid(seen, deadline(call));
      const v = node.replicator.view();
      const i = await info(st);
      if (call.request.readOnly) i.readOnly = true;
      return { lastTid: node.store.lastTid, info: i, nodeId: v.nodeId, leaderId: v.leaderId };
    }),

    Load: unary('Load', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      await fresh(call, call.request.seenTid);
      // Read the applied TID first: the revision is current as of at least this TID.
      const asOf = node.store.lastTid;
      const r = await node.store.load(st, oid);
      return { data: r.data, serial: r.serial, asOfTid: asOf };
    }),

    LoadBefore: unary('LoadBefore', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      const before = requireId(call.request.beforeTid, 'before_tid');
      await fresh(call, call.request.seenTid);
      const r = await node.store.loadBefore(st, oid, before);
      return r.found
        ? { found: true, data: r.data, start: r.start, end: r.end ?? Buffer.alloc(0) }
        : { found: false };
    }),

    LoadSerial: unary('LoadSerial', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      const serial = requireId(call.request.serial, 'serial');
      await fresh(call, call.request.seenTid);
      return { data: await node.store.loadSerial(st, oid, serial) };
    }),

    History: unary('History', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      const size = count(call.request.size, 'size', 1, MAX_HISTORY);
      await fresh(call, call.request.seenTid);
      return { entries: await node.store.history(st, oid, size) };
    }),

    LastTransaction: unary('LastTransaction', async (call) => {
      const st = storageName(call.request.storage);
      return { tid: node.store.storageSummary(st).lastTid };
    }),

    NewOids: unary('NewOids', async (call) => {
      const st = storageName(call.request.storage);
      writable(st);
      const n = count(call.request.count, 'count', 100, MAX_NEW_OIDS);
      const r = unwrap(
        await node.replicator.propose(
          { newOids: { storage: st, count: n } },
          deadline(call),
          callerOf(call),
        ),
      );
      return { oids: r.oids ?? [] };
    }),

    Commit: unary('Commit', async (call) => {
      const txn = txnFrom(call.request.transaction);
      const started = Date.now();
      const cmd: Command = { commit: { tid: Z64, txn, ...session(call) } };
      const r = unwrap(await withTxnMemory(cmd, 'Commit', () => commitWithLockWait(call, cmd)));
      node.metrics.observeCommit(Date.now() - started);
      // Answered once this node applied the commit: its history holds the transaction before it.
      return { tid: r.tid, previousTid: await node.store.previousTid(txn.storage, r.tid!) };
    }),

    Vote: unary('Vote', async (call) => {
      const id = ownedTxnId(call, call.request.transactionId);
      const txn = txnFrom(call.request.transaction);
      const prepared = node.store.preparedTransactions();
      // A retried Vote of a transaction already voted is not one more.
      if (!prepared.some((p) => p.txnId === id && p.storage === txn.storage))
        node.limits.checkPrepared(prepared.length);
      const deadlineMs = Date.now() + node.config.txnTimeoutMs;
      const cmd: Command = { prepare: { txnId: id, txn, deadlineMs, retryOnly: true } };
      unwrap(await withTxnMemory(cmd, 'Vote', () => commitWithLockWait(call, cmd)));
      return {};
    }),

    Finish: unary('Finish', async (call) => {
      const st = storageName(call.request.storage);
      const id = ownedTxnId(call, call.request.transactionId);
      const started = Date.now();
      const r = unwrap(
        await node.replicator.propose(
          { finish: { storage: st, txnId: id, tid: Z64 } },
          deadline(call),
          callerOf(call),
        ),
      );
      node.metrics.observeCommit(Date.now() - started);
      return { tid: r.tid };
    }),

    Abort: unary('Abort', async (call) => {
      const st = storageName(call.request.storage);
      const id = ownedTxnId(call, call.request.transactionId);
      unwrap(
        await node.replicator.propose(
          { abort: { storage: st, txnId: id, reason: 'client' } },
          deadline(call),
          callerOf(call),
        ),
      );
      return {};
    }),

    Undo: unary('Undo', async (call) => {
      const st = storageName(call.request.storage);
      writable(st);
      const undoTid = requireId(call.request.tid, 'tid');
      const cmd: Command = {
        undo: {
          tid: Z64,
          storage: st,
          undoTid,
          user: text(call.request.user, 'user'),
          description: text(call.request.description, 'description'),
        },
      };
      const r = unwrap(await commitWithLockWait(call, cmd));
      return { tid: r.tid, oids: r.oids ?? [] };
    }),

    UndoLog: unary('UndoLog', async (call) => {
      const st = storageName(call.request.storage);
      const first = count(call.request.first, 'first', 0, 1_000_000);
      const last = count(call.request.last, 'last', first + 20, first + MAX_HISTORY);
      if (last < first) throw invalid('last must not be less than first');
      const entries = await node.store.undoLog(st, first, last);
      return {
        transactions: entries.map((e) => ({
          tid: e.tid,
          user: e.user,
          description: e.description,
          extension: e.extension,
          time: tidToTime(e.tid) / 1000,
        })),
      };
    }),

    Pack: unary('Pack', async (call) => {
      const st = storageName(call.request.storage);
      writable(st);
      let packTid = optionalId(call.request.packTid, 'pack_tid');
      if (!packTid) {
        const t = call.request.packTime;
        if (!Number.isFinite(t) || t <= 0)
          throw invalid('pack_tid or a positive pack_time is required');
        // A time after now packs as of now (nothing newer exists), as ZODB's pack does.
        packTid = tidFromTime(Math.min(t * 1000, Date.now()));
      }
      // In bounded steps (storage/pack-gc.ts), each replicated; a failed step is the call's error.
      const dl = deadline(call);
      const caller = callerOf(call);
      const r = await packStorage(node, st, packTid, call.request.gc, (cmd) =>
        node.replicator.propose(cmd, dl, caller),
      ).catch((e: unknown) => {
        throw e instanceof StorageError ? fromStorageError(e) : e;
      });
      return { removed: r.removed };
    }),

    Iterate: serverStream('Iterate', async (call) => {
      const st = storageName(call.request.storage);
      const start = optionalId(call.request.start, 'start') ?? Z64;
      const stop = optionalId(call.request.stop, 'stop');
      if (stop && idCompare(stop, start) < 0) throw invalid('stop must not be before start');
      holdsState();
      let cancelled = false;
      call.on('cancelled', () => (cancelled = true));
      for await (const t of node.store.iterate(st, start, stop)) {
        if (cancelled) return;
        const ok = call.write({
          tid: t.tid,
          user: t.user,
          description: t.description,
          extension: t.extension,
          records: t.records.map((r) => ({
            oid: r.oid,
            data: r.data,
            deleted: r.deleted,
            dataTid: r.dataTid,
          })),
        });
        if (!ok) await new Promise((resolve) => call.once('drain', resolve));
      }
      call.end();
    }),

    Subscribe: serverStream('Subscribe', async (call) => {
      const st = storageName(call.request.storage);
      const from = optionalId(call.request.fromTid, 'from_tid');
      // Never reveal less than the client has seen: wait for this node to catch up first.
      if (from && idCompare(from, node.store.lastTid) > 0)
        await node.waitForTid(from, deadline(call));
      node.limits.checkSubscribers(node.subscriptions.count);
      // A key revoked (or no longer granting the storage) while the stream is open ends it.
      const unwatch = node.security.watchKey(call.metadata, st, (e) =>
        node.subscriptions.close(call, e),
      );
      try {
        await node.subscriptions.serve(st, call.request, call);
      } finally {
        unwatch();
      }
    }),

    Sync: unary('Sync', async (call) => {
      storageName(call.request.storage);
      await node.replicator.linearizableRead(deadline(call));
      return { tid: node.store.lastTid };
    }),

    Status: unary('Status', async (call) => {
      const v = node.replicator.view();
      // A key sees only the storages it may use: not even the names of the others.
      const p = node.security.principalFor(call.metadata);
      return {
        nodeId: v.nodeId,
        role: v.role,
        leaderId: v.leaderId,
        term: v.term,
        commitIndex: v.commitIndex,
        appliedIndex: node.store.appliedIndex,
        lastTid: node.store.lastTid,
        storages: await Promise.all(
          node.config.storages.filter((s) => Security.mayUse(p, s.name)).map((s) => info(s.name)),
        ),
      };
    }),

    ...blobHandlers(node, {
      storageName,
      writable,
      deadline,
      callerOf,
      fresh,
      unary,
      serverStream,
    }),
  };
}
