/**
 * The ZeoRaft TypeScript client: the public surface. ClientStorage is the ZEO-style storage
 * client; StorageRpc is the thin per-node gRPC connection underneath, for tools and tests.
 */
export {
  ClientStorage,
  OID_BATCH,
  DEFAULT_MEMORY_CACHE_BYTES,
  DEFAULT_DISK_CACHE_BYTES,
} from './client-storage';
export type {
  ClientStorageOptions,
  CacheOptions,
  ClientTestHooks,
  CommitSpec,
  InvalidationEvent,
  InvalidationListener,
  TransactOptions,
  TransactResult,
  CacheStats,
} from './client-storage';
export {
  InvalidationIterator,
  DEFAULT_INVALIDATION_BUFFER_EVENTS_MAX,
} from './invalidation-iterator';
export type { InvalidationItem, InvalidationsOptions } from './invalidation-iterator';
export { SnapshotView, Transaction } from './transaction';
export type {
  LoadResult,
  LoadBeforeResult,
  TransactionMeta,
  TransactionState,
} from './transaction';
export { MemoryCache } from './cache-memory';
export { DiskCache } from './cache-disk';
export { BlobCache, DEFAULT_BLOB_CACHE_BYTES } from './blob-cache';
export { StorageRpc } from './rpc';
export type { RpcOptions } from './rpc';
export * from './errors';
export { Z64, p64, u64, hex, fromHex, tidToIso, tidFromTime } from '../util/ids';
