/**
 * Callers: on whose behalf a command is proposed, which transaction ids a caller owns, and what a
 * command forwarded by a follower may do.
 *
 * A follower forwards writes to the leader with the caller they are made for (the client's key
 * principal, or the node itself); the leader checks the command against it and against its own
 * storage read-only flags before proposing it, as it would the client's own request.
 */
import * as grpc from '@grpc/grpc-js';
import type { Command } from '../storage/codec';
import { RpcError, readOnly } from './errors';
import { Principal, mayUse } from './security-keys';

/**
 * On whose behalf a command is proposed: a client request (with the principal of its security key
 * when keys are on), or the node itself (a timeout abort, or the Admin service, which has checked
 * that its caller is an admin).
 */
export type Caller = { kind: 'client'; principal?: Principal } | { kind: 'node' };
export const ANONYMOUS_CLIENT: Caller = { kind: 'client' };

/**
 * The owner scope a client's transaction id carries in the replicated prepare, renew, finish and
 * abort commands: the JSON-quoted id of the caller's security key, or "-" without a key, then "/".
 * The gRPC door prefixes every id with it (storage-service.ts), and a leader refuses a forwarded
 * command whose id is not in its caller's scope.
 */
export const txnIdScope = (p: Principal | undefined): string =>
  `${p ? JSON.stringify(p.id) : '-'}/`;
/** How the ZEO door's transaction ids begin (zeo/txn-staging.ts); its clients carry no key. */
export const ZEO_TXN_ID_PREFIX = 'z:';

/** Whether the transaction id `id` is in the scope of a client with principal `p`. */
export function ownsTxnId(p: Principal | undefined, id: string): boolean {
  return id.startsWith(txnIdScope(p)) || (!p && id.startsWith(ZEO_TXN_ID_PREFIX));
}

/** The storage a command writes to; undefined for commands outside any storage (member, noop). */
export function commandStorage(cmd: Command): string | undefined {
  const body = Object.values(cmd)[0] as { storage?: unknown; txn?: { storage?: unknown } };
  const st = body?.storage ?? body?.txn?.storage;
  return typeof st === 'string' ? st || '1' : undefined;
}

/** The name of a command's variant ("commit", "member", ...). */
const commandKind = (cmd: Command): string => Object.keys(cmd)[0] ?? 'empty';

/**
 * Why the leader must refuse a command forwarded by a follower for `caller`: the same storage
 * permissions as the client's own request (read-only storages, the key's role and storages), and
 * records outside any storage (membership addresses) only from the node itself. Undefined when
 * it may be proposed.
 */
export function forwardedCommandError(
  cmd: Command,
  caller: Caller,
  storages: readonly { name: string; readOnly: boolean }[],
): RpcError | undefined {
  const kind = commandKind(cmd);
  const st = commandStorage(cmd);
  if ('member' in cmd && cmd.member?.remove)
    return new RpcError(
      grpc.status.PERMISSION_DENIED,
      'a member tombstone is written only by the removal of that member (a membership change)',
      { kind: 'INVALID' },
    );
  if (st === undefined) {
    if (kind === 'noop' || caller.kind === 'node') return undefined;
    return new RpcError(
      grpc.status.PERMISSION_DENIED,
      `a ${kind} command is proposed only by a node itself, not on behalf of a client`,
      { kind: 'INVALID' },
    );
  }
  // Finish and abort settle a vote that was checked when it was made.
  const settles = kind === 'finish' || kind === 'abort';
  if (!settles && storages.find((s) => s.name === st)?.readOnly)
    return readOnly(`storage ${JSON.stringify(st)} is read-only`);
  if (caller.kind === 'client' && caller.principal) {
    const p = caller.principal;
    if (!mayUse(p, st))
      return new RpcError(
        grpc.status.PERMISSION_DENIED,
        `key ${p.id} may not use storage ${JSON.stringify(st)}`,
        { kind: 'INVALID' },
      );
    if (p.role === 'read-only') return readOnly(`key ${p.id} is read-only: ${kind} is a write`);
  }
  // A client session's commit is made only by the session's owner.
  const session = 'commit' in cmd ? cmd.commit?.sessionId : undefined;
  if (caller.kind === 'client' && session && !session.startsWith(txnIdScope(caller.principal)))
    return new RpcError(
      grpc.status.PERMISSION_DENIED,
      `session ${JSON.stringify(session)} does not belong to ${caller.principal ? `key ${caller.principal.id}` : 'a client without a key'}`,
      { kind: 'INVALID' },
    );
  // A vote is made, renewed, finished and aborted only by its owner.
  const id = (Object.values(cmd)[0] as { txnId?: unknown } | undefined)?.txnId;
  if (caller.kind === 'client' && typeof id === 'string' && !ownsTxnId(caller.principal, id))
    return new RpcError(
      grpc.status.PERMISSION_DENIED,
      `transaction ${JSON.stringify(id)} does not belong to ${caller.principal ? `key ${caller.principal.id}` : 'a client without a key'}: a ${kind} is made only by the transaction's owner`,
      { kind: 'INVALID' },
    );
  return undefined;
}
