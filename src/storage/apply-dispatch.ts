/**
 * Which applier runs a command: the dispatch of apply over the command families (commit-,
 * session-, vote-, undo-, pack- and member-commands.ts), after the checks every command passes.
 */
import type { ApplyContext } from './apply-context';
import type { Command } from './codec';
import { applyBlobChunk, applyCommit, applyNewOids } from './commit-commands';
import { StorageError } from './errors';
import * as K from './keys';
import { applyMember } from './member-commands';
import { applyPack, applyPackStep } from './pack-commands';
import { applySessionCommit } from './session-commands';
import type { BatchOp } from './store-records';
import type { ApplyResult } from './store-types';
import { applyUndo } from './undo-commands';
import {
  applyAbort,
  applyFinish,
  applyPrepare,
  applyRenew,
  checkVotedAtTid,
} from './vote-commands';

function isStorageName(st: unknown): boolean {
  if (typeof st !== 'string') return false;
  const bytes = Buffer.byteLength(st, 'utf8');
  return bytes >= 1 && bytes <= K.MAX_STORAGE_NAME_BYTES;
}

/** The storage a command names, or null for commands that name none (noop, empty). */
function commandStorage(cmd: Command): unknown {
  const c = cmd as Record<string, any>;
  if (c.commit) return c.commit.txn ? c.commit.txn.storage : null; // no txn: validateTxn says INVALID
  if (c.prepare) return c.prepare.txn ? c.prepare.txn.storage : null;
  for (const op of ['finish', 'abort', 'undo', 'pack', 'newOids', 'renew'])
    if (c[op]) return c[op].storage;
  return null;
}

/** Apply one command (ApplyOp in batch-writer.ts). */
export function applyCommand(
  ctx: ApplyContext,
  index: number,
  cmd: Command,
  ops: BatchOp[],
  after: Array<() => void>,
): Promise<ApplyResult> {
  // Key building throws RangeError on a bad storage name; that must be a result, not a crash
  // that every replica would repeat on replay.
  const st = commandStorage(cmd);
  if (st !== null && !isStorageName(st)) {
    throw new StorageError(
      'INVALID',
      `a storage name must be 1..${K.MAX_STORAGE_NAME_BYTES} bytes`,
    );
  }
  checkVotedAtTid(ctx, cmd);
  if ('commit' in cmd && cmd.commit)
    return cmd.commit.sessionId
      ? applySessionCommit(ctx, index, cmd.commit, ops, after)
      : applyCommit(ctx, cmd.commit.txn, cmd.commit.tid, ops, after, undefined);
  if ('prepare' in cmd && cmd.prepare) return applyPrepare(ctx, cmd.prepare, ops, after);
  if ('finish' in cmd && cmd.finish) return applyFinish(ctx, cmd.finish, ops, after);
  if ('abort' in cmd && cmd.abort) return applyAbort(ctx, cmd.abort, ops, after);
  if ('undo' in cmd && cmd.undo) return applyUndo(ctx, cmd.undo, ops, after);
  if ('pack' in cmd && cmd.pack)
    return cmd.pack.step
      ? applyPackStep(ctx, index, cmd.pack, ops)
      : applyPack(ctx, cmd.pack, ops, after);
  if ('newOids' in cmd && cmd.newOids)
    return Promise.resolve(applyNewOids(ctx, cmd.newOids, ops, after));
  if ('renew' in cmd && cmd.renew) return applyRenew(ctx, cmd.renew, ops);
  if ('blobChunk' in cmd && cmd.blobChunk) return applyBlobChunk(ctx, index, cmd.blobChunk, ops);
  if ('noop' in cmd) return Promise.resolve({ ok: true });
  if ('member' in cmd && cmd.member)
    return Promise.resolve(applyMember(ctx, cmd.member, ops, after));
  throw new StorageError('INVALID', 'empty command');
}
