/**
 * The parts a Raft cluster member adds to a node (the composition root, node.ts, calls these):
 * whether it joins or bootstraps, then the durable log, the Raft replicator, the peer transport
 * and the Admin service.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import type { NodeMetrics } from '../metrics/metrics';
import { storagePackage } from '../proto';
import type { ObjectStore } from '../storage/object-store';
import { assert } from '../util/assert';
import { LateBound } from '../util/late-bound';
import type { Logger } from '../util/log';
import type { Waiters } from '../util/waiters';
import type { AddressBook } from './address-book';
import { adminHandlers, adminPackage } from './admin-service';
import type { NodeConfig } from './config';
import type { Limits } from './limits';
import { PeerReceiver, PeerTransport } from './peer-transport';
import { DurableLog } from './raft-log';
import { alignStateMachine } from './raft-host';
import { RaftReplicator } from './raft-replicator';
import type { Security } from './security';
import { KEY_METADATA } from './security-keys';
import { internalClientCredentials } from './tls';

/** How long each start-up probe of a peer's client port may take. */
const PROBE_MS = 700;

/**
 * Whether anything accepts a TCP connection at `address` (host:port) within PROBE_MS. Checked
 * before a gRPC probe: a gRPC channel closed while its connection attempt to a port that is not
 * listening yet is in backoff may still connect later and leave an idle connection on the peer.
 */
function listening(address: string): Promise<boolean> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  const port = Number(address.slice(i + 1));
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(PROBE_MS, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Whether a peer already runs the cluster this node was told to bootstrap (a second line of
 * defence behind the explicit initial cluster state). A peer answering Status says so; one that
 * refuses Status for want of a key (security keys on, peers authenticated by mTLS alone, so this
 * node has no key to present) is asked the keyless health service instead: SERVING means it
 * knows a leader.
 */
async function clusterAlreadyRunning(config: NodeConfig): Promise<boolean> {
  const Storage = storagePackage().zeoraft.v1.Storage;
  const sec = config.security;
  const credentials = (): grpc.ChannelCredentials =>
    internalClientCredentials(sec?.tls, sec?.peerTls);
  const deadline = (): number => Date.now() + PROBE_MS;
  const healthy = (address: string): Promise<boolean> =>
    new Promise((resolve) => {
      const h = new grpc.Client(address, credentials());
      h.makeUnaryRequest<{ service: string }, { status: string }>(
        healthService.Check.path,
        healthService.Check.requestSerialize,
        (buf) => healthService.Check.responseDeserialize(buf) as { status: string },
        { service: '' },
        new grpc.Metadata(),
        { deadline: deadline() },
        (err, res) => {
          h.close();
          resolve(!err && res?.status === 'SERVING');
        },
      );
    });
  const probes = config.peers
    .filter((p) => p.id !== config.nodeId && p.clientAddress)
    .map(async (p) =>
      !(await listening(p.clientAddress))
        ? false
        : new Promise<boolean>((resolve) => {
            const c = new Storage(p.clientAddress, credentials());
            const md = new grpc.Metadata();
            if (sec?.clusterKey) md.set(KEY_METADATA, sec.clusterKey);
            c.Status({}, md, { deadline: deadline() }, (err, res) => {
              c.close();
              if (err?.code === grpc.status.UNAUTHENTICATED) resolve(healthy(p.clientAddress));
              else resolve(!err && !!res && (res.appliedIndex > 1 || res.leaderId !== ''));
            });
          }),
    );
  return (await Promise.all(probes)).some(Boolean);
}

/** Where a member keeps its Raft log. */
function raftLogDir(config: NodeConfig): string {
  return path.join(config.dataDir, 'raft');
}

/** Whether a member joins a running cluster (and why) or bootstraps one. */
export interface MemberStart {
  join: boolean;
  why?: string;
}

/**
 * Whether a node whose data directory holds no Raft log joins (waits for a snapshot, never votes
 * before it has one) or bootstraps the cluster from its peer list. Bootstrapping is explicit
 * (`--initial-cluster-state new`): a voter that lost its disk and bootstrapped again would vote
 * with an empty log, and with one lagging peer elect a leader missing committed entries. Even
 * when told "new", a node whose peers already run a cluster joins. A single-voter cluster
 * bootstraps: nobody else holds its data.
 */
export async function joinsAtStart(config: NodeConfig): Promise<MemberStart> {
  const logDir = raftLogDir(config);
  if (config.join) return { join: true, why: '--join' };
  if (fs.existsSync(logDir) || config.peers.length <= 1) return { join: false };
  switch (config.initialClusterState) {
    case 'existing':
      return { join: true, why: 'initial cluster state existing' };
    case 'new':
      return (await clusterAlreadyRunning(config))
        ? { join: true, why: 'told to bootstrap a new cluster, but a peer already runs one' }
        : { join: false };
    default:
      throw new Error(
        `${logDir} holds no Raft log: start this member with --initial-cluster-state new ` +
          '(ZEORAFT_INITIAL_CLUSTER_STATE=new) to bootstrap a new cluster together with its peers, ' +
          'or existing to join the running cluster (it receives a snapshot and does not vote ' +
          'before it has one; the way back for a member that lost its disk)',
      );
  }
}

/** What a member's parts use of the node. */
export interface RaftMemberDeps {
  config: NodeConfig;
  store: ObjectStore;
  clock: { nowMs(): number };
  metrics: NodeMetrics;
  log: Logger;
  limits: Limits;
  security: Security;
  addressBook: AddressBook;
  /** The node's applied-index watch, shared with the Raft host. */
  watch: Waiters;
  /** No leader for an election timeout (subscribers are told). */
  onLeaderLost: () => void;
}

/**
 * Open the durable log, bring the store to its starting point, and start the Raft replicator and
 * the peer transport (listening). Returns the replicator and the services it adds to the client
 * port (Admin).
 */
export async function startRaftMember(
  n: RaftMemberDeps,
  { join, why }: MemberStart,
): Promise<{ replicator: RaftReplicator; services: Array<(server: grpc.Server) => void> }> {
  const config = n.config;
  // A snapshot install interrupted by a crash is rolled back or forward when the store opens;
  // only an install by an earlier version (which cleared the state first) leaves nothing: then
  // the log must stop describing the lost state and ask for a snapshot again.
  const rejoin = n.store.interruptedInstall;
  if (rejoin)
    n.log.warn(
      'an interrupted snapshot install was discarded: rejoining (waiting for a snapshot from the leader)',
    );
  const log = await DurableLog.open(raftLogDir(config), {
    initial: { voters: config.peers.map((p) => p.id), learners: [] },
    join: join || rejoin,
    fsync: config.fsync,
    onFsync: (s) => n.metrics.fsyncDuration.observe(s),
    rejoin,
  });
  if (rejoin) await n.store.installRecovered();
  const problem = await alignStateMachine(log, n.store);
  assert(
    problem === undefined,
    `${problem}: the state directory was lost; wipe ${config.dataDir} and restart with --join`,
  );
  if (join && log.isNew)
    n.log.info({ why }, 'joining an existing cluster: waiting for a snapshot from the leader');
  const sec = config.security;
  // Said at every start, not once: an open peer port must not be forgotten.
  if (!sec?.clusterKey && !sec?.peerTls)
    n.log.warn(
      { peerListen: config.peerListen },
      "peers are NOT authenticated (--insecure-peers): anyone who can reach the peer port can replace this cluster's data; set a cluster key or peer mutual TLS",
    );
  // The transport delivers to the replicator, which sends through the transport: the receiver is
  // bound right after both exist, before the transport listens.
  const receiver = new LateBound<PeerReceiver>("the peer transport's receiver");
  const transport = new PeerTransport(n, receiver);
  const r = new RaftReplicator(n, log, randomInt(1, 2 ** 31), transport);
  receiver.bind(r);
  await transport.listen();
  return {
    replicator: r,
    services: [
      (server) => server.addService(adminPackage().zeoraft.v1.Admin.service, adminHandlers(n, r)),
    ],
  };
}
