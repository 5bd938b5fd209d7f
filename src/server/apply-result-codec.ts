/** ApplyResult <-> the ForwardResponse wire form, for commands forwarded to the leader. */
import type {
  ForwardResponse,
  ForwardResponse__Output,
} from '../generated/zeoraft/v1/raft/ForwardResponse';
import { StorageError, StorageErrorKind } from '../storage/errors';
import type { ApplyResult } from '../storage/object-store';

export function encodeApplyResult(index: number, r: ApplyResult): ForwardResponse {
  if (r.ok)
    return {
      index,
      ok: true,
      tid: r.tid ?? Buffer.alloc(0),
      oids: r.oids ?? [],
      removed: r.removed ?? 0,
    };
  const c = r.error.conflict;
  return {
    index,
    ok: false,
    errorKind: r.error.kind,
    errorMessage: r.error.message,
    conflict: c
      ? {
          oid: c.oid,
          expected: c.expected,
          actual: c.actual,
          currentData: c.currentData ?? Buffer.alloc(0),
          hasCurrentData: c.currentData !== undefined,
        }
      : undefined,
  };
}

export function decodeApplyResult(m: ForwardResponse__Output): {
  index: number;
  result: ApplyResult;
} {
  if (m.ok) {
    return {
      index: m.index,
      result: { ok: true, tid: m.tid.length ? m.tid : undefined, oids: m.oids, removed: m.removed },
    };
  }
  const c = m.conflict;
  const conflict = c
    ? {
        oid: c.oid,
        expected: c.expected,
        actual: c.actual,
        currentData: c.hasCurrentData ? c.currentData : undefined,
      }
    : undefined;
  return {
    index: m.index,
    result: {
      ok: false,
      error: new StorageError(m.errorKind as StorageErrorKind, m.errorMessage, conflict),
    },
  };
}
