/**
 * Member records (MemberCmd): cluster members' addresses recorded through the log, so every node
 * learns where its peers and their client ports are, and tombstones of removed members.
 */
import type { MemberRecord } from './codec';
import { memberCodec } from './codec';
import type { ApplyContext } from './apply-context';
import { StorageError } from './errors';
import * as K from './keys';
import type { BatchOp } from './store-records';
import type { ApplyResult } from './store-types';

export function applyMember(
  ctx: ApplyContext,
  m: MemberRecord,
  ops: BatchOp[],
  after: Array<() => void>,
): ApplyResult {
  if (!m.id) throw new StorageError('INVALID', 'member without an id');
  if (ctx.members.get(m.id)?.remove)
    throw new StorageError(
      'INVALID',
      `member ${m.id} was removed from the cluster; a removed member's id is never used again`,
    );
  // A removal (the host applies every RemoveNode membership change as one) leaves a tombstone:
  // the peers refuse whatever that id sends from then on, as etcd does, and the id cannot come
  // back. Nothing else writes one: forwarded member records with `remove` are refused.
  const rec: MemberRecord = m.remove
    ? { id: m.id, peerAddress: '', clientAddress: '', remove: true }
    : { id: m.id, peerAddress: m.peerAddress ?? '', clientAddress: m.clientAddress ?? '' };
  ops.push({ type: 'put', key: K.memberKey(m.id), value: memberCodec.encode(rec) });
  after.push(() => ctx.members.set(m.id, rec));
  return { ok: true };
}
