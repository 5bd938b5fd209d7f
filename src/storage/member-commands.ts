/**
 * Member records (MemberCmd): cluster members' addresses recorded through the log, so every node
 * learns where its peers and their client ports are.
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
  if (m.remove) {
    ops.push({ type: 'del', key: K.memberKey(m.id) });
    after.push(() => ctx.members.delete(m.id));
  } else {
    const rec: MemberRecord = {
      id: m.id,
      peerAddress: m.peerAddress ?? '',
      clientAddress: m.clientAddress ?? '',
    };
    ops.push({ type: 'put', key: K.memberKey(m.id), value: memberCodec.encode(rec) });
    after.push(() => ctx.members.set(m.id, rec));
  }
  return { ok: true };
}
