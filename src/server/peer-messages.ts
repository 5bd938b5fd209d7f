/** Raft messages and callers as protobuf messages of the peer protocol (zeoraft.v1.raft). */
import { loadProto } from '../proto';
import type { ProtoGrpcType as RaftProto } from '../generated/raft';
import type { Message as PMessage, Message__Output } from '../generated/zeoraft/v1/raft/Message';
import type { Caller as PCaller, Caller__Output } from '../generated/zeoraft/v1/raft/Caller';
import { Message, MessageType } from '../raft';
import type { Caller } from './callers';
import { ROLES, type Role } from './security-keys';

let raftProto: RaftProto | undefined;
export function raftPackage(): RaftProto {
  raftProto ??= loadProto('zeoraft/v1/raft.proto') as unknown as RaftProto;
  return raftProto;
}

export function toProto(m: Message): PMessage {
  return {
    type: m.type,
    from: m.from,
    to: m.to,
    term: m.term,
    logTerm: m.logTerm,
    index: m.index,
    entries: m.entries.map((e) => ({
      index: e.index,
      term: e.term,
      type: e.type,
      data: Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength),
    })),
    commit: m.commit,
    reject: m.reject,
    rejectHint: m.rejectHint,
    snapshot: m.snapshot
      ? { index: m.snapshot.index, term: m.snapshot.term, conf: m.snapshot.conf }
      : undefined,
    context: m.context ? Buffer.from(m.context) : Buffer.alloc(0),
  };
}

export function fromProto(p: Message__Output): Message {
  const m: Message = {
    type: p.type as MessageType,
    from: p.from,
    to: p.to,
    term: p.term,
    logTerm: p.logTerm,
    index: p.index,
    entries: p.entries.map((e) => ({ index: e.index, term: e.term, type: e.type, data: e.data })),
    commit: p.commit,
    reject: p.reject,
    rejectHint: p.rejectHint,
  };
  if (p.snapshot)
    m.snapshot = {
      index: p.snapshot.index,
      term: p.snapshot.term,
      conf: { voters: p.snapshot.conf?.voters ?? [], learners: p.snapshot.conf?.learners ?? [] },
    };
  if (p.context && p.context.length) m.context = p.context;
  return m;
}

export function callerToProto(c: Caller): PCaller {
  if (c.kind === 'node') return { node: true };
  return c.principal ? { key: { ...c.principal } } : {};
}

export function callerFromProto(c: Caller__Output | null): Caller {
  if (c?.node) return { kind: 'node' };
  if (!c?.key) return { kind: 'client' };
  // An unknown role counts as the least one.
  const role: Role = ROLES.includes(c.key.role as Role) ? (c.key.role as Role) : 'read-only';
  return { kind: 'client', principal: { id: c.key.id, role, storages: c.key.storages } };
}
