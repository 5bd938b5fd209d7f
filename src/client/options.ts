/**
 * ClientStorage's options and the shapes of its public calls' arguments and results (re-exported
 * by client-storage.ts and index.ts).
 */
import type * as grpc from '@grpc/grpc-js';
import type { DiskCacheStats } from './cache-disk';
import type { TransactionMeta } from './transaction';
import type { SubscribeEvent__Output } from '../generated/zeoraft/v1/SubscribeEvent';

export interface CacheOptions {
  /** Bound of the in-memory cache, in bytes (data plus per-entry overhead). */
  memoryBytes?: number;
  /** Directory of the persistent cache (LevelDB); no persistent cache when absent. */
  diskDir?: string;
  /** Bound of the persistent cache, in bytes (data plus per-entry overhead). */
  diskBytes?: number;
}

/** Hooks for tests only: they let a test stage races deterministically. Never use in production. */
export interface ClientTestHooks {
  /** Awaited after a Load reply arrives and before the client decides how to cache it. */
  beforeLoadReply?: (oid: Buffer) => Promise<void>;
  /** Called before every unary RPC attempt. */
  onRpc?: (method: string, address: string) => void;
  /** Awaited before each stream event is handled (events stay in order): holds the stream back. */
  beforeStreamEvent?: (ev: SubscribeEvent__Output) => Promise<void>;
}

export interface ClientStorageOptions {
  /** host:port of the cluster's nodes, tried in order (any node serves any request). */
  addresses: string[];
  /** The storage name; ZEO's default is '1'. */
  storage?: string;
  cache?: CacheOptions;
  /** Refuse writes locally and open read-only sessions. */
  readOnly?: boolean;
  /** Accept a read-only storage or node, working read-only, when no writable one answers. */
  readOnlyFallback?: boolean;
  credentials?: {
    /** Security key, sent as metadata `x-zeoraft-key`. */
    key?: string;
    /** TLS credentials (default: insecure). */
    channel?: grpc.ChannelCredentials;
  };
  /** Per-RPC-attempt deadline in milliseconds (default 10 s). */
  timeoutMs?: number;
  /** How long one operation keeps retrying across failover (default 3 × timeoutMs). */
  retryWindowMs?: number;
  /** How long open() looks for a usable node (default retryWindowMs). */
  openTimeoutMs?: number;
  /** How often an idle node sends a progress event (default 200 ms). */
  progressIntervalMs?: number;
  clientName?: string;
  /**
   * The blob cache (blob-cache.ts): a directory of downloaded blobs, bounded in bytes (default
   * 1 GiB). loadBlob needs it.
   */
  blobCache?: { dir: string; bytes?: number };
  /** Deadline of one blob upload or download stream attempt, in milliseconds (default 10 min). */
  blobTimeoutMs?: number;
  /** Background failures (disk cache, listener exceptions). */
  onError?: (e: unknown) => void;
  testHooks?: ClientTestHooks;
}

export interface InvalidationEvent {
  /** The transaction (or, for a reset, the TID the client resumed from). */
  tid: Buffer;
  /** The objects it changed; empty for a reset. */
  oids: Buffer[];
  /** True when the client dropped its caches: treat every object as changed. */
  reset: boolean;
}
export type InvalidationListener = (ev: InvalidationEvent) => void;

export interface CommitSpec extends TransactionMeta {
  stores?: { oid: Buffer; serial?: Buffer; data: Buffer; refs?: Buffer[] }[];
  checks?: { oid: Buffer; serial: Buffer }[];
  deletes?: { oid: Buffer; serial: Buffer }[];
}

export interface TransactOptions {
  /** Attempts in all, the first included (default 10). */
  attempts?: number;
  meta?: TransactionMeta;
}

export interface TransactResult<T> {
  value: T;
  /** The commit's TID; undefined when the transaction wrote nothing. */
  tid: Buffer | undefined;
  attempts: number;
}

export interface CacheStats {
  memory: { bytes: number; count: number; maxBytes: number };
  disk?: DiskCacheStats;
}
