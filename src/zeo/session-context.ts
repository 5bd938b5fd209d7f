/**
 * What the parts of one ZEO session share (session.ts builds one per connection): the connection,
 * the node, the registered storage, the invalidation outbox, and the helpers every part uses —
 * writability, deadlines, proposing, catching up with the client's view, and the mapping of
 * storage errors to ZODB exceptions.
 */
import * as grpc from '@grpc/grpc-js';
import type { Command } from '../storage/codec';
import type { ApplyResult } from '../storage/object-store';
import { StorageError } from '../storage/errors';
import type { StorageNode } from '../server/node';
import { Z64, idCompare, tidFromTime } from '../util/ids';
import {
  ZeoDisconnect,
  conflictError,
  posKeyError,
  readOnlyError,
  storageError,
  storageTransactionError,
  typeError,
  valueError,
} from './errors';
import { decodeValue, encodeValue } from './marshal';
import type { LockQueue } from './lock-queue';
import { InvalidationOutbox } from './outbox';

/**
 * A read at a TID this far beyond the node's clock names no transaction anyone has seen (ZEO's
 * ClientStorage.load sends loadBefore(oid, maxtid)): it is answered from the applied state.
 */
const FUTURE_TID_SLACK_MS = 60_000;
/** Failed proposals whose RpcError codes mean "outcome unknown, try again". */
export const RETRYABLE = new Set<number>([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/** What a session needs from its connection. */
export interface SessionPeer {
  /** A one-way server-to-client call (invalidateTransaction, info). */
  callAsync(method: string, args: unknown[]): void;
  /** Close the connection (the client reconnects and verifies its cache), logging why. */
  close(why: string): void;
  /** A one-way call that resolves once the connection's send buffer has drained (large data). */
  callAsyncDrained(method: string, args: unknown[]): Promise<void>;
  /** Stop (true) or resume (false) reading the client's messages (backpressure). */
  pauseReading(paused: boolean): void;
  readonly label: string;
}

/** A handler's answer: the reply, plus what must be sent right after it (in order). */
export class ReplyThen {
  constructor(
    readonly result: unknown,
    readonly after: () => void,
  ) {}
}

/** Per-storage counters, shared by the connections of one node (ZEO's StorageStats). */
export class ZeoStats {
  connections = 0;
  loads = 0;
  stores = 0;
  commits = 0;
  aborts = 0;
  active_txns = 0;
  conflicts = 0;
  conflicts_resolved = 0;
  readonly start = new Date().toUTCString();
}

export const bytes = (s: string): Buffer => Buffer.from(s, 'utf8');

/** A transaction extension as stored by ZEO clients: the msgpack encoding of the ext dict. */
export function encodeExtension(ext: unknown): Buffer {
  if (ext === null || ext === undefined) return Buffer.alloc(0);
  if (typeof ext !== 'object' || Array.isArray(ext) || ext instanceof Uint8Array)
    throw typeError('the transaction extension must be a dict');
  return Object.keys(ext).length ? encodeValue(ext) : Buffer.alloc(0);
}

/** The ext dict back; extensions written by other clients (opaque bytes) read as {}. */
export function decodeExtension(b: Buffer): Record<string, unknown> {
  if (!b.length) return {};
  try {
    const v = decodeValue(b);
    if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array))
      return v as Record<string, unknown>;
  } catch {
    // not ours: fall through
  }
  return {};
}

export class SessionContext {
  storage: string | undefined;
  readOnly = false;
  /** Orders invalidations after the replies that must precede them (see outbox.ts). */
  readonly outbox = new InvalidationOutbox();
  label = '';
  closed = false;

  constructor(
    readonly node: StorageNode,
    readonly peer: SessionPeer,
    readonly statsFor: (storage: string) => ZeoStats,
    readonly lockQueue: LockQueue,
  ) {}

  get registered(): boolean {
    return this.storage !== undefined;
  }

  get st(): string {
    if (this.storage === undefined) throw valueError('register() must be called first');
    return this.storage;
  }

  get stats(): ZeoStats {
    return this.statsFor(this.st);
  }

  deadline(): number {
    return Date.now() + this.node.config.defaultDeadlineMs;
  }

  storageReadOnly(st: string): string | undefined {
    if (this.node.config.readOnly) return `node ${this.node.config.nodeId} is read-only`;
    if (this.node.security.zeoAccess === 'read-only')
      return 'ZEO clients are read-only on this node (security keys are on; ZEORAFT_ZEO_ACCESS)';
    if (this.node.config.storages.find((s) => s.name === st)?.readOnly)
      return `storage ${JSON.stringify(st)} is read-only`;
    return undefined;
  }

  writable(): void {
    const why = this.storageReadOnly(this.st);
    if (why) throw readOnlyError(why);
    if (this.readOnly) throw readOnlyError('this connection was registered read-only');
  }

  /**
   * Propose a command. A failure to replicate (no leader, deadline) is answered as a
   * StorageError naming the cause; the command may still take effect (new_oids then wastes some
   * OIDs, an abort still releases its locks, a pack still packs).
   */
  async propose(cmd: Command): Promise<ApplyResult> {
    try {
      return await this.node.replicator.propose(cmd, this.deadline());
    } catch (e) {
      throw storageError(`replication failed: ${e instanceof Error ? e.message : e}`);
    }
  }

  /**
   * Make this node's applied state include every transaction up to `tid` that anyone can have
   * seen (MISSION §2.6), without waiting for a TID that does not exist: a TID beyond what this
   * node applied takes a linearizable read (after it, this node has everything committed before
   * the request); a TID from the future names no transaction and needs nothing. A node that cannot
   * reach a leader cannot prove it is current: the connection is dropped and the client moves on.
   */
  async caughtUp(tid: Buffer): Promise<void> {
    if (idCompare(this.node.store.lastTid, tid) >= 0) return;
    if (idCompare(tid, tidFromTime(Date.now() + FUTURE_TID_SLACK_MS)) > 0) return;
    try {
      await this.node.replicator.linearizableRead(this.deadline());
    } catch (e) {
      throw new ZeoDisconnect(
        `node ${this.node.config.nodeId} cannot confirm it is current: ${e instanceof Error ? e.message : e}`,
        { cause: e },
      );
    }
  }

  fromStorage(e: unknown, oid?: Buffer): never {
    if (!(e instanceof StorageError)) throw e;
    switch (e.kind) {
      case 'NOT_FOUND':
      case 'HISTORY_PACKED': // as in FileStorage: a packed-away revision is no longer there
        throw posKeyError(e.conflict?.oid ?? oid ?? Z64);
      case 'CONFLICT':
      case 'LOCKED':
      case 'UNDO_CONFLICT':
        throw conflictError(
          'ConflictError',
          e.message,
          e.conflict?.oid ?? null,
          e.conflict ? [e.conflict.actual, e.conflict.expected] : null,
        );
      case 'READ_CONFLICT':
        throw conflictError(
          'ReadConflictError',
          e.message,
          e.conflict?.oid ?? null,
          e.conflict ? [e.conflict.actual, e.conflict.expected] : null,
        );
      case 'UNKNOWN_TRANSACTION':
        throw storageTransactionError(e.message);
      default:
        throw storageError(e.message);
    }
  }
}
