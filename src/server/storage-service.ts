/**
 * The zeoraft.v1.Storage gRPC service: an adapter over the storage API (storage-api.ts). It
 * decodes and validates requests (field names in its errors), calls the API, and encodes answers
 * and statuses (errors.ts maps domain and storage errors to gRPC statuses).
 */
import * as grpc from '@grpc/grpc-js';
import type { StorageHandlers } from '../generated/zeoraft/v1/Storage';
import type { Transaction__Output } from '../generated/zeoraft/v1/Transaction';
import type { StorageInfo } from '../generated/zeoraft/v1/StorageInfo';
import type { CommitRequest__Output } from '../generated/zeoraft/v1/CommitRequest';
import type { CommitSession, Txn } from '../storage/codec';
import type { NodeMetrics } from '../metrics/metrics';
import { BLOB_ID_BYTES } from '../storage/blob-store';
import type { Logger } from '../util/log';
import { type BlobServiceDeps, blobHandlers } from './blob-service';
import { Z64, idCompare, tidToTime } from '../util/ids';
import { invalid, toServiceError } from './errors';
import type { Limits } from './limits';
import { type Caller, Security, txnIdScope } from './security';
import { HISTORY_SIZE_MAX, NEW_OIDS_MAX, StorageApi, UNDO_LOG_PAGE_MAX } from './storage-api';
import type { SubscriptionHub } from './subscriptions';
import { count, optionalId, requireId, serialOrZ64, text, txnId } from './validate';

export const DEFAULT_STORAGE = '1';
/** A client's session id: 1..64 printable ASCII characters (a UUID fits). */
const SESSION_ID = /^[\x21-\x7e]{1,64}$/;

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>;

/** What the gRPC Storage service uses: the storage API and the gRPC edge's own parts. */
export interface StorageServiceDeps {
  api: StorageApi;
  metrics: Pick<NodeMetrics, 'startRequest'>;
  log: Logger;
  security: Pick<Security, 'principalFor' | 'watchKey'>;
  limits: Pick<Limits, 'checkSubscribers'>;
  subscriptions: Pick<SubscriptionHub, 'count' | 'close' | 'serve'>;
  config: { storages: readonly { name: string }[] };
  /** The blob methods' own needs (blob-service.ts). */
  blobs: BlobServiceDeps;
}

export function storageHandlers(node: StorageServiceDeps): StorageHandlers {
  const api = node.api;
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
    return api.deadline(ms);
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

  const storageName = (name: string | undefined): string => api.storageName(name, DEFAULT_STORAGE);
  const writable = (st: string): void => api.writable(st);

  async function fresh(
    call: { getDeadline(): grpc.Deadline },
    seen: Buffer | undefined,
  ): Promise<void> {
    api.holdsState();
    const tid = optionalId(seen, 'seen_tid');
    if (tid) await api.waitForTid(tid, deadline(call));
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
    api.admitTransaction(txn);
    return txn;
  }

  const info = (st: string): Promise<StorageInfo> => api.info(st);

  /** A write's deadline and the client it is for. */
  const ctxOf = (call: { getDeadline(): grpc.Deadline; metadata: grpc.Metadata }) => ({
    deadlineMs: deadline(call),
    caller: callerOf(call),
  });

  return {
    Open: unary('Open', async (call) => {
      const st = storageName(call.request.storage);
      const seen = optionalId(call.request.lastTid, 'last_tid');
      text(call.request.clientName, 'client_name', 256);
      const r = await api.open(st, seen, deadline(call));
      if (call.request.readOnly) r.info.readOnly = true;
      return r;
    }),

    Load: unary('Load', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      await fresh(call, call.request.seenTid);
      return api.load(st, oid);
    }),

    LoadBefore: unary('LoadBefore', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      const before = requireId(call.request.beforeTid, 'before_tid');
      await fresh(call, call.request.seenTid);
      const r = await api.loadBefore(st, oid, before);
      return r.found
        ? { found: true, data: r.data, start: r.start, end: r.end ?? Buffer.alloc(0) }
        : { found: false };
    }),

    LoadSerial: unary('LoadSerial', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      const serial = requireId(call.request.serial, 'serial');
      await fresh(call, call.request.seenTid);
      return { data: await api.loadSerial(st, oid, serial) };
    }),

    History: unary('History', async (call) => {
      const st = storageName(call.request.storage);
      const oid = requireId(call.request.oid, 'oid');
      const size = count(call.request.size, 'size', 1, HISTORY_SIZE_MAX);
      await fresh(call, call.request.seenTid);
      return { entries: await api.history(st, oid, size) };
    }),

    LastTransaction: unary('LastTransaction', async (call) => {
      const st = storageName(call.request.storage);
      return { tid: api.lastTransaction(st) };
    }),

    NewOids: unary('NewOids', async (call) => {
      const st = storageName(call.request.storage);
      writable(st);
      const n = count(call.request.count, 'count', 100, NEW_OIDS_MAX);
      return { oids: await api.newOids(st, n, ctxOf(call)) };
    }),

    Commit: unary('Commit', async (call) => {
      const txn = txnFrom(call.request.transaction);
      return api.commit(txn, session(call), ctxOf(call));
    }),

    Vote: unary('Vote', async (call) => {
      const id = ownedTxnId(call, call.request.transactionId);
      const txn = txnFrom(call.request.transaction);
      await api.vote(id, txn, ctxOf(call));
      return {};
    }),

    Finish: unary('Finish', async (call) => {
      const st = storageName(call.request.storage);
      const id = ownedTxnId(call, call.request.transactionId);
      return { tid: await api.finish(st, id, ctxOf(call)) };
    }),

    Abort: unary('Abort', async (call) => {
      const st = storageName(call.request.storage);
      const id = ownedTxnId(call, call.request.transactionId);
      await api.abort(st, id, ctxOf(call));
      return {};
    }),

    Undo: unary('Undo', async (call) => {
      const st = storageName(call.request.storage);
      writable(st);
      const undoTid = requireId(call.request.tid, 'tid');
      const meta = {
        user: text(call.request.user, 'user'),
        description: text(call.request.description, 'description'),
      };
      return api.undo(st, undoTid, meta, ctxOf(call));
    }),

    UndoLog: unary('UndoLog', async (call) => {
      const st = storageName(call.request.storage);
      const first = count(call.request.first, 'first', 0, 1_000_000);
      const last = count(call.request.last, 'last', first + 20, first + UNDO_LOG_PAGE_MAX);
      if (last < first) throw invalid('last must not be less than first');
      const entries = await api.undoLog(st, first, last);
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
        packTid = api.packTidAt(t);
      }
      // In bounded steps (storage/pack-gc.ts), each replicated; a failed step is the call's error.
      const ctx = ctxOf(call);
      const r = await api.pack(st, packTid, call.request.gc, (cmd) => api.propose(cmd, ctx));
      return { removed: r.removed };
    }),

    Iterate: serverStream('Iterate', async (call) => {
      const st = storageName(call.request.storage);
      const start = optionalId(call.request.start, 'start') ?? Z64;
      const stop = optionalId(call.request.stop, 'stop');
      if (stop && idCompare(stop, start) < 0) throw invalid('stop must not be before start');
      api.holdsState();
      let cancelled = false;
      call.on('cancelled', () => (cancelled = true));
      for await (const t of api.iterate(st, start, stop)) {
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
      if (from && idCompare(from, api.lastTid) > 0) await api.waitForTid(from, deadline(call));
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
      return { tid: await api.sync(deadline(call)) };
    }),

    Status: unary('Status', async (call) => {
      const v = api.view();
      // A key sees only the storages it may use: not even the names of the others.
      const p = node.security.principalFor(call.metadata);
      return {
        nodeId: v.nodeId,
        role: v.role,
        leaderId: v.leaderId,
        term: v.term,
        commitIndex: v.commitIndex,
        appliedIndex: api.appliedIndex,
        lastTid: api.lastTid,
        storages: await Promise.all(
          node.config.storages.filter((s) => Security.mayUse(p, s.name)).map((s) => info(s.name)),
        ),
      };
    }),

    ...blobHandlers(node.blobs, {
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
