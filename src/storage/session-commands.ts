/**
 * The session commit (exactly-once commits, storage.proto CommitRequest): each client session's
 * last answer is kept in the session table (session-table.ts), so that a retried commit gets it
 * instead of committing twice.
 */
import { assert } from '../util/assert';
import { ID_BYTES, Z64, hex, idCompare, idEquals, idMax } from '../util/ids';
import { type Command, type SessionRecord, sessionCodec } from './codec';
import type { ApplyContext } from './apply-context';
import { applyCommit } from './commit-commands';
import { StorageError } from './errors';
import * as K from './keys';
import { sessionExpired } from './session-table';
import { type BatchOp, buf } from './store-records';
import type { ApplyResult } from './store-types';

/**
 * Client sessions whose last answer is kept (exactly-once commits, storage.proto CommitRequest):
 * beyond it the least recently used is forgotten. About 150 bytes of memory each.
 */
export const SESSIONS_MAX = 10_000;
/** A session id with its key scope (the service allows 64 bytes plus the scope). */
export const SESSION_ID_BYTES_MAX = 512;

/** The answer a session record holds, as the commit first gave it (without conflict data). */
function sessionAnswer(rec: SessionRecord): ApplyResult {
  if (!rec.errorKind) {
    assert(rec.tid && rec.tid.length === ID_BYTES, 'a session record without an answer');
    return { ok: true, tid: buf(rec.tid) };
  }
  const conflict = rec.conflictOid?.length
    ? {
        oid: buf(rec.conflictOid),
        expected: buf(rec.conflictExpected),
        actual: buf(rec.conflictActual),
      }
    : undefined;
  return {
    ok: false,
    error: new StorageError(
      rec.errorKind as StorageError['kind'],
      rec.errorMessage ?? '',
      conflict,
    ),
  };
}

/**
 * A client session's commit (the Raft dissertation's §6.3): the session's last answer is kept,
 * so a repeated sequence number gets it instead of committing again, and an older one is refused
 * (SEQUENCE_OLD). The answer is recorded whether the commit succeeded or failed: the first
 * attempt applied decides, and a duplicate applied later cannot commit what its client was told
 * failed. A session the store does not know is new unless a session used at or after its
 * since-TID was forgotten (then SESSION_EXPIRED: its record may have been that one). Sessions are
 * forgotten least recently used first beyond SESSIONS_MAX, and after SESSION_EXPIRY_MS unused,
 * measured by the command's TID (the proposer's clock, never the local one), so every replica
 * forgets the same sessions at the same index.
 */
export async function applySessionCommit(
  ctx: ApplyContext,
  index: number,
  c: Extract<Command, { commit: unknown }>['commit'],
  ops: BatchOp[],
  after: Array<() => void>,
): Promise<ApplyResult> {
  const id = c.sessionId ?? '';
  const seq = Number(c.seq ?? 0);
  // Refusals before the table is touched: nothing to undo.
  if (Buffer.byteLength(id, 'utf8') > SESSION_ID_BYTES_MAX)
    throw new StorageError('INVALID', `a session id must be at most ${SESSION_ID_BYTES_MAX} bytes`);
  if (!Number.isSafeInteger(seq) || seq < 1)
    throw new StorageError('INVALID', 'a session commit needs a sequence number from 1');
  const proposed = c.tid && c.tid.length === ID_BYTES ? buf(c.tid) : Z64;
  const now = idMax(proposed, ctx.w.lastTidGlobal);
  ctx.sessions.expire(now, ops);
  let entry = ctx.sessions.get(id);
  if (entry && sessionExpired(entry, now)) {
    ctx.sessions.forget(id, entry, ops);
    entry = undefined;
  }
  if (entry && seq < entry.seq)
    return {
      ok: false,
      error: new StorageError(
        'SEQUENCE_OLD',
        `commit ${seq} of session ${id} is older than its last commit ${entry.seq}: this attempt was not applied`,
      ),
    };
  if (entry && seq === entry.seq) {
    const raw = await ctx.w.read(K.sessionKey(id));
    assert(raw, `session ${id} has no record`);
    const rec = sessionCodec.decode(raw);
    ctx.sessions.use(id, { ...rec, usedIndex: index, usedTid: now }, ops);
    return sessionAnswer(rec);
  }
  if (!entry) {
    const since = c.sinceTid && c.sinceTid.length === ID_BYTES ? buf(c.sinceTid) : Z64;
    if (
      !idEquals(ctx.sessions.forgottenUpTo, Z64) &&
      idCompare(since, ctx.sessions.forgottenUpTo) <= 0
    )
      return {
        ok: false,
        error: new StorageError(
          'SESSION_EXPIRED',
          `session ${id} is not known: sessions used after ${hex(since)} were forgotten, so whether an earlier attempt of commit ${seq} was applied is unknown; start a new session`,
        ),
      };
  }
  // A failed commit leaves nothing behind but its answer.
  const opsMark = ops.length;
  const afterMark = after.length;
  const before = { lastTid: ctx.w.lastTidGlobal, metas: new Map(ctx.w.metas) };
  let result: ApplyResult;
  try {
    result = await applyCommit(ctx, c.txn, c.tid, ops, after, undefined);
  } catch (e) {
    if (!(e instanceof StorageError)) throw e;
    ctx.w.lastTidGlobal = before.lastTid;
    ctx.w.metas = before.metas;
    ops.length = opsMark;
    after.length = afterMark;
    result = { ok: false, error: e };
  }
  const rec: SessionRecord = { seq, usedIndex: index, usedTid: now };
  if (result.ok) rec.tid = result.tid;
  else {
    rec.errorKind = result.error.kind;
    rec.errorMessage = result.error.message;
    const cf = result.error.conflict;
    if (cf) {
      rec.conflictOid = cf.oid;
      rec.conflictExpected = cf.expected;
      rec.conflictActual = cf.actual;
    }
  }
  ctx.sessions.use(id, rec, ops);
  if (ctx.sessions.size > SESSIONS_MAX) {
    const [oldId, oldest] = ctx.sessions.oldest();
    ctx.sessions.forget(oldId, oldest, ops);
  }
  assert(ctx.sessions.size <= SESSIONS_MAX, 'session table over its bound');
  return result;
}
