/** The zeoraft.v1.Admin service: membership, leadership transfer, log compaction. */
import * as grpc from '@grpc/grpc-js';
import { loadProto } from '../proto';
import type { ProtoGrpcType as AdminProto } from '../generated/admin';
import type { AdminHandlers } from '../generated/zeoraft/v1/Admin';
import { ConfChangeType } from '../raft';
import type { NodeMetrics } from '../metrics/metrics';
import type { AddressBook } from './address-book';
import type { NodeConfig } from './config';
import { RpcError, invalid, toServiceError, unavailable } from './errors';
import type { RaftReplicator } from './raft-replicator';
import type { ObjectStore } from '../storage/object-store';

let adminProto: AdminProto | undefined;
export function adminPackage(): AdminProto {
  adminProto ??= loadProto('zeoraft/v1/admin.proto') as unknown as AdminProto;
  return adminProto;
}

const ID = /^[A-Za-z0-9_.-]{1,64}$/;
const HOST_PORT = /^[^\s]+:\d{1,5}$/;

/** What the Admin service uses of the node. */
export interface AdminDeps {
  config: Pick<NodeConfig, 'tickMs' | 'electionTicks'>;
  metrics: Pick<NodeMetrics, 'startRequest'>;
  addressBook: Pick<AddressBook, 'peerAddress' | 'clientAddress'>;
  store: Pick<ObjectStore, 'isRemovedMember'>;
}

/** What the Admin service asks of the Raft replicator. */
export type AdminReplicator = Pick<
  RaftReplicator,
  | 'view'
  | 'leaderId'
  | 'leaderAddress'
  | 'members'
  | 'propose'
  | 'proposeConfChange'
  | 'transferLeadership'
  | 'waitLeader'
  | 'compactNow'
>;

export function adminHandlers(node: AdminDeps, r: AdminReplicator): AdminHandlers {
  function unary<Req, Res>(
    method: string,
    fn: (req: Req) => Promise<Res>,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const done = node.metrics.startRequest(`Admin.${method}`);
      fn(call.request).then(
        (res) => {
          done(0);
          callback(null, res);
        },
        (e: unknown) => {
          const err = toServiceError(e);
          done(err.code ?? 2);
          callback(err as grpc.ServiceError);
        },
      );
    };
  }
  const deadline = (): number => Date.now() + 30_000;
  const leaderOnly = (what: string): void => {
    if (r.view().role !== 'leader')
      throw unavailable(
        `${what} must be sent to the leader (${r.leaderId || 'unknown'})`,
        r.leaderAddress(),
      );
  };
  const id = (s: string): string => {
    if (!ID.test(s)) throw invalid('member id must be 1..64 of [A-Za-z0-9_.-]');
    return s;
  };
  const known = (m: string): void => {
    if (!r.members().some((x) => x.id === m))
      throw new RpcError(grpc.status.NOT_FOUND, `no member ${m}`);
  };

  return {
    Members: unary('Members', async () => {
      const v = r.view();
      return {
        nodeId: v.nodeId,
        leaderId: v.leaderId,
        term: v.term,
        members: r.members().map((m) => ({
          id: m.id,
          role: m.role,
          peerAddress: node.addressBook.peerAddress(m.id),
          clientAddress: node.addressBook.clientAddress(m.id),
          matchIndex: m.match,
          recentActive: m.recentActive,
        })),
      };
    }),
    AddMember: unary('AddMember', async (req) => {
      leaderOnly('AddMember');
      const m = id(req.id);
      if (!HOST_PORT.test(req.peerAddress)) throw invalid('peer_address must be host:port');
      if (!HOST_PORT.test(req.clientAddress)) throw invalid('client_address must be host:port');
      if (r.members().some((x) => x.id === m))
        throw new RpcError(grpc.status.ALREADY_EXISTS, `member ${m} already exists`);
      if (node.store.isRemovedMember(m))
        throw new RpcError(
          grpc.status.FAILED_PRECONDITION,
          `member ${m} was removed from the cluster; a removed member's id is never used again: choose another`,
        );
      // Addresses first, through the log, so every node can reach the new member once it is added.
      // Proposed as the node itself: the interceptor let only an admin (when keys are on) call Admin.
      const rec = await r.propose(
        { member: { id: m, peerAddress: req.peerAddress, clientAddress: req.clientAddress } },
        deadline(),
        { kind: 'node' },
      );
      if (!rec.ok) throw new RpcError(grpc.status.INTERNAL, rec.error.message);
      return {
        index: await r.proposeConfChange({ type: ConfChangeType.AddLearner, node: m }, deadline()),
      };
    }),
    PromoteMember: unary('PromoteMember', async (req) => {
      leaderOnly('PromoteMember');
      known(id(req.id));
      return {
        index: await r.proposeConfChange(
          { type: ConfChangeType.PromoteLearner, node: req.id },
          deadline(),
        ),
      };
    }),
    RemoveMember: unary('RemoveMember', async (req) => {
      leaderOnly('RemoveMember');
      known(id(req.id));
      const index = await r.proposeConfChange(
        { type: ConfChangeType.RemoveNode, node: req.id },
        deadline(),
      );
      return { index };
    }),
    TransferLeader: unary('TransferLeader', async (req) => {
      leaderOnly('TransferLeader');
      known(id(req.id));
      r.transferLeadership(req.id);
      const ok = await r.waitLeader(
        (l) => l === req.id,
        Date.now() + node.config.tickMs * node.config.electionTicks * 4,
      );
      if (!ok)
        throw new RpcError(
          grpc.status.DEADLINE_EXCEEDED,
          `leadership did not move to ${req.id} in time`,
        );
      return { leaderId: req.id };
    }),
    Snapshot: unary('Snapshot', async () => r.compactNow()),
  };
}
