/**
 * Binary codecs for the Raft log commands and the object store's LevelDB records, generated at
 * start-up by protobufjs from proto/zeoraft/v1/log.proto. Compact, schema-checked, no JSON.
 */
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import { PROTO_DIR } from '../util/proto-path';

const root = protobuf.loadSync(path.join(PROTO_DIR, 'zeoraft/v1/log.proto'));

export interface StoreOp {
  oid: Uint8Array;
  serial?: Uint8Array;
  data?: Uint8Array;
  refs?: Uint8Array[];
  delete?: boolean;
  /** For stores written by undo: the transaction whose data they restore. */
  dataTid?: Uint8Array;
  /** The references of `data` are unknown: pack collects no garbage while the revision exists. */
  opaque?: boolean;
  /** Resolve a conflict on the server when `data` is a class with a fixed rule (zodb-resolve.ts). */
  resolve?: boolean;
  /** The blob of this revision (16 bytes, blob-store.ts): a completed upload, or a restored revision's. */
  blobId?: Uint8Array;
  /** A record restored as given (ZODB's restore): no serial check; with `delete`, no data. */
  restore?: boolean;
}
export interface CheckOp {
  oid: Uint8Array;
  serial?: Uint8Array;
}
export interface Txn {
  storage: string;
  user?: string;
  description?: string;
  extension?: Uint8Array;
  stores?: StoreOp[];
  checks?: CheckOp[];
  /** The status ZODB's iterator reports ('' = ' '), kept by a restore. */
  status?: string;
}
/** A client session's commit: its id (scoped to the caller's key), number and since-TID (log.proto). */
export interface CommitSession {
  sessionId?: string;
  seq?: number;
  sinceTid?: Uint8Array;
}
export type Command =
  | { commit: { tid: Uint8Array; txn: Txn } & CommitSession }
  | {
      prepare: {
        txnId: string;
        txn: Txn;
        deadlineMs?: number;
        leaseMs?: number;
        reserve?: boolean;
        retryOnly?: boolean;
        /** Commit at this TID (ZODB's tpc_begin with a TID): see PrepareCmd.tid in log.proto. */
        tid?: Uint8Array;
        /** The node whose ZEO session votes (PrepareCmd.owner in log.proto). */
        owner?: string;
      };
    }
  | { finish: { storage: string; txnId: string; tid: Uint8Array } }
  | {
      abort: { storage: string; txnId: string; reason?: string; expiredDeadlineMs?: number };
    }
  | {
      undo: {
        tid: Uint8Array;
        storage: string;
        undoTid: Uint8Array;
        user?: string;
        description?: string;
      };
    }
  | {
      pack: {
        storage: string;
        packTid: Uint8Array;
        gc?: boolean;
        /** A step of a pack in steps (pack-steps.ts PackStep); absent: the whole pack at once. */
        step?: number;
        packId?: number;
        oids?: Uint8Array[];
        fromOid?: Uint8Array;
      };
    }
  | { newOids: { storage: string; count: number } }
  | { noop: Record<string, never> }
  | { renew: { storage: string; txnId: string; deadlineMs?: number; leaseMs?: number } }
  | { member: MemberRecord }
  | { blobChunk: BlobChunk };

/** One chunk of a blob upload (log.proto BlobChunkCmd). */
export interface BlobChunk {
  storage: string;
  blobId: Uint8Array;
  offset: number;
  data?: Uint8Array;
  tid?: Uint8Array;
}

export interface MemberRecord {
  id: string;
  peerAddress?: string;
  clientAddress?: string;
  remove?: boolean;
}

export interface Revision {
  data?: Uint8Array;
  deleted?: boolean;
  refs?: Uint8Array[];
  dataTid?: Uint8Array;
  opaque?: boolean;
  blobId?: Uint8Array;
  blobSize?: number;
}
/** A blob upload not committed yet (log.proto BlobUpload). */
export interface BlobUpload {
  size: number;
  chunks: number;
  usedIndex: number;
  usedTid: Uint8Array;
}
/** A committed blob (log.proto BlobRecord). */
export interface BlobRecord {
  size: number;
  chunks: number;
  refs: number;
}
export interface TxnRecord {
  user?: string;
  description?: string;
  extension?: Uint8Array;
  oids?: Uint8Array[];
  status?: string;
}
export interface PreparedRecord {
  txn: Txn;
  deadlineMs?: number;
  index?: number;
  reserve?: boolean;
  votedDeadlineMs?: number;
  /** Stores resolved on the server, written at finish as resolved (see ResolvedStore). */
  resolved?: ResolvedStore[];
  /** The TID its finish commits at (PrepareCmd.tid). */
  tid?: Uint8Array;
  /** The node whose ZEO session made the vote (PrepareCmd.owner); '' or absent for others. */
  owner?: string;
}
export interface ResolvedStore {
  oid: Uint8Array;
  /** A Length store's change (decimal): shared lock, `committed + delta` written at finish. */
  delta?: string;
  /** A set store's merged record: exclusive lock, written at finish. */
  data?: Uint8Array;
}
export interface StorageMeta {
  lastTid?: Uint8Array;
  nextOid?: Uint8Array;
  packTid?: Uint8Array;
  objectCount?: number;
  /** Transactions on record (T records); the n-th oldest is at key N <st> <n>. */
  txnCount?: number;
  /** A pack in steps that has started and not finished (log.proto PackState). */
  packing?: PackState;
}
export interface PackState {
  id: number;
  packTid?: Uint8Array;
  gc?: boolean;
  sweeping?: boolean;
  cancelled?: string;
  doomed?: number;
  collected?: number;
  startedTid?: Uint8Array;
}
/** The last answer of a client session (log.proto SessionRecord). */
export interface SessionRecord {
  seq: number;
  usedIndex: number;
  usedTid: Uint8Array;
  tid?: Uint8Array;
  errorKind?: string;
  errorMessage?: string;
  conflictOid?: Uint8Array;
  conflictExpected?: Uint8Array;
  conflictActual?: Uint8Array;
}
export interface SnapshotChunk {
  keys: Uint8Array[];
  values: Uint8Array[];
  last?: boolean;
}

/** A typed encode/decode pair over one protobuf message type. */
export interface Codec<T> {
  encode(value: T): Buffer;
  decode(bytes: Uint8Array): T;
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, defaults: false, oneofs: false };

function codec<T>(name: string): Codec<T> {
  const type = root.lookupType(name);
  return {
    encode(value: T): Buffer {
      const w = type.encode(type.fromObject(value as Record<string, unknown>)).finish();
      return Buffer.from(w.buffer, w.byteOffset, w.byteLength);
    },
    decode(bytes: Uint8Array): T {
      return type.toObject(type.decode(bytes), TO_OBJECT) as T;
    },
  };
}

export const commandCodec = codec<Command>('zeoraft.v1.log.Command');
export const revisionCodec = codec<Revision>('zeoraft.v1.log.Revision');
export const txnRecordCodec = codec<TxnRecord>('zeoraft.v1.log.TxnRecord');
export const preparedCodec = codec<PreparedRecord>('zeoraft.v1.log.PreparedRecord');
export const storageMetaCodec = codec<StorageMeta>('zeoraft.v1.log.StorageMeta');
export const memberCodec = codec<MemberRecord>('zeoraft.v1.log.MemberCmd');
export const sessionCodec = codec<SessionRecord>('zeoraft.v1.log.SessionRecord');
export const blobUploadCodec = codec<BlobUpload>('zeoraft.v1.log.BlobUpload');
export const blobRecordCodec = codec<BlobRecord>('zeoraft.v1.log.BlobRecord');
export const snapshotChunkCodec = codec<SnapshotChunk>('zeoraft.v1.log.SnapshotChunk');
