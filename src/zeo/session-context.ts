/**
 * What the parts of one ZEO session share (session.ts builds one per connection): the connection,
 * the storage API (server/storage-api.ts), the registered storage, the invalidation outbox, and
 * the helpers every part uses — writability, deadlines, proposing, catching up with the client's
 * view, and storage API errors as ZODB exceptions (zeo/errors.ts).
 */
import type { NodeMetrics } from '../metrics/metrics';
import type { NodeConfig } from '../server/config';
import type { Limits } from '../server/limits';
import type { Security } from '../server/security';
import type { StorageApi } from '../server/storage-api';
import type { Command } from '../storage/codec';
import type { ApplyResult, ObjectStore } from '../storage/object-store';
import type { Logger } from '../util/log';
import { idCompare, tidFromTime } from '../util/ids';
import {
  ZeoDisconnect,
  readOnlyError,
  storageError,
  typeError,
  valueError,
  zodbException,
} from './errors';
import { decodeValue, encodeValue } from './marshal';
import { InvalidationOutbox } from './outbox';

/**
 * A read at a TID this far beyond the node's clock names no transaction anyone has seen (ZEO's
 * ClientStorage.load sends loadBefore(oid, maxtid)): it is answered from the applied state.
 */
const FUTURE_TID_SLACK_MS = 60_000;

/**
 * What the ZEO door uses of its node, handed over by the composition root (server/node.ts): the
 * storage API for everything it does, and the few store reads, settings, checks and counters the
 * protocol needs besides.
 */
export interface ZeoNode {
  readonly api: StorageApi;
  readonly config: Pick<
    NodeConfig,
    'limits' | 'zeoEncoding' | 'nodeId' | 'txnTimeoutMs' | 'voteRenewMs' | 'storages'
  >;
  readonly store: Pick<
    ObjectStore,
    | 'storageSummary'
    | 'transactionOids'
    | 'planUndo'
    | 'onReplaced'
    | 'currentSerial'
    | 'currentObjects'
    | 'blobOf'
    | 'blobChunks'
  >;
  readonly security: Pick<Security, 'zeoAccess' | 'admitSocket'>;
  readonly limits: Pick<Limits, 'exceeded' | 'reserveTxnMemory'>;
  readonly metrics: Pick<NodeMetrics, 'connections' | 'registry'>;
  readonly log: Logger;
}

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
  /** The storage API this door is an adapter of. */
  readonly api: StorageApi;

  constructor(
    readonly node: ZeoNode,
    readonly peer: SessionPeer,
    readonly statsFor: (storage: string) => ZeoStats,
  ) {
    this.api = node.api;
  }

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
    return this.api.deadline();
  }

  storageReadOnly(st: string): string | undefined {
    return this.api.readOnlyReason(
      st,
      this.node.security.zeoAccess === 'read-only'
        ? 'ZEO clients are read-only on this node (security keys are on; ZEORAFT_ZEO_ACCESS)'
        : undefined,
    );
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
      return await this.api.propose(cmd, { deadlineMs: this.deadline() });
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
    if (idCompare(this.api.lastTid, tid) >= 0) return;
    if (idCompare(tid, tidFromTime(Date.now() + FUTURE_TID_SLACK_MS)) > 0) return;
    try {
      await this.api.linearizableRead(this.deadline());
    } catch (e) {
      throw new ZeoDisconnect(
        `node ${this.node.config.nodeId} cannot confirm it is current: ${e instanceof Error ? e.message : e}`,
        { cause: e },
      );
    }
  }

  /** Throw a storage API failure as its ZODB exception (zeo/errors.ts); anything else as is. */
  fromStorage(e: unknown, oid?: Buffer): never {
    throw zodbException(e, oid);
  }
}
