/**
 * What the command appliers (commit-, session-, vote-, undo-, pack- and member-commands.ts) share
 * while a batch is applied: the database, the batch writer's working state, and the in-memory
 * tables the commands change. The object store builds one and passes it to every applier.
 */
import type { BatchWriter } from './batch-writer';
import type { BlobUploads } from './blob-store';
import type { MemberRecord } from './codec';
import type { LockTable } from './lock-table';
import type { PackApplyContext } from './pack-steps';
import type { SessionTable } from './session-table';
import type { Db } from './store-records';
import type { CommitEvent } from './store-types';
import type { PreviousTids } from './previous-tids';

export interface ApplyContext {
  readonly db: Db;
  /** The working state (applied index, last TID, storage metadata) and the batch's reads. */
  readonly w: BatchWriter;
  readonly locks: LockTable;
  /** Open blob uploads and the votes holding them (blob-store.ts). */
  readonly blobs: BlobUploads;
  readonly sessions: SessionTable;
  /** Member addresses recorded through the log, by member id. */
  readonly members: Map<string, MemberRecord>;
  /** Told of each committed transaction once its batch has landed, in TID order. */
  readonly commitListeners: ReadonlySet<(ev: CommitEvent) => void>;
  /** The TID before each recent commit, for the commit's answer. */
  readonly previousTids: PreviousTids;
  /** What the steps of a pack in steps (pack-steps.ts) use of the store. */
  readonly packCtx: PackApplyContext;
}
