/** A node's configuration, validated up front. The CLI builds it from flags, a file and ZEORAFT_* variables. */
import type { LogLevel } from '../util/log';
import { CLUSTER_KEY_CHARS_MIN } from './peer-auth';
import type { SecurityConfig } from './security';
import { VOTE_RENEW_MAX_MS } from '../storage/object-store';

/**
 * A leased vote (a ZEO session's) lives this long after its last renewal, measured on the leader's
 * clock; its owner renews it several times per lease while it lives. Past it, the leader keeps the
 * vote while it hears from the owner node (within this long too) and aborts it otherwise, so a
 * vote whose node died is aborted about a lease later, on every node (node.ts abortExpired).
 */
export const VOTE_LEASE_MS = 1_000;

export interface StorageConfig {
  name: string;
  readOnly: boolean;
}

export interface PeerConfig {
  id: string;
  /** host:port of the peer's Raft listener. */
  peerAddress: string;
  /** host:port of the peer's client listener (for leader hints). */
  clientAddress: string;
}

export interface NodeConfig {
  nodeId: string;
  dataDir: string;
  /** host:port for the client Storage API (and Admin). */
  listen: string;
  /** host:port for the Raft peer transport; '' for a standalone node. */
  peerListen: string;
  /** host:port for /metrics, /livez, /readyz; '' to disable. */
  httpListen: string;
  /** host:port for the ZEO 5 protocol listener (ZODB ClientStorage); '' to disable. */
  zeoListen: string;
  /**
   * The ZEO encoding the listener greets with: 'msgpack' (M5; a client answering anything else is
   * refused) or 'pickle' (Z5, ZEO's default, for clients without the msgpack package; a client
   * answering M5 is served in msgpack). Pickles are read by a decoder of plain values only
   * (zeo/pickle-marshal.ts).
   */
  zeoEncoding: 'msgpack' | 'pickle';
  /** The initial voters (including this node) when bootstrapping a new cluster; empty when standalone. */
  peers: PeerConfig[];
  /** Join an existing cluster as a learner instead of bootstrapping (the leader adds us). */
  join: boolean;
  /**
   * What a member of a multi-voter cluster does when its data directory holds no Raft log (like
   * etcd's --initial-cluster-state): 'new' bootstraps the cluster from `peers` (a first start);
   * 'existing' joins the running cluster, receiving a snapshot and never voting before it has
   * one (a restart after losing the disk). Unset, such a node refuses to start: a member that
   * lost its disk and bootstrapped again would vote with an empty log and could elect a leader
   * missing committed entries.
   */
  initialClusterState: '' | 'new' | 'existing';
  storages: StorageConfig[];
  readOnly: boolean;
  logLevel: LogLevel;
  /** Milliseconds per Raft tick. */
  tickMs: number;
  electionTicks: number;
  heartbeatTicks: number;
  /** Applied entries kept in the log beyond the last snapshot, so followers catch up without one. */
  snapshotEntries: number;
  /** A voted transaction not finished within this time is aborted by the leader. */
  txnTimeoutMs: number;
  /**
   * How often a ZEO session renews its vote's lease (VOTE_LEASE_MS). Each renewal is a Raft
   * entry; the leader also keeps a vote whose owner node it hears from (node.ts abortExpired), so
   * a cluster with many open votes may renew less often than several times per lease.
   */
  voteRenewMs: number;
  /** How long a commit waits for objects locked by a voted transaction. */
  lockWaitMs: number;
  /** Deadline for calls that set none. */
  defaultDeadlineMs: number;
  /** fsync the Raft log (never turn off outside benchmarks of the un-synced path). */
  fsync: boolean;
  limits: LimitsConfig;
  historyMaxTransactions: number;
  historyMaxAgeMs: number;
  /** TLS, keys, cluster key, allow-lists (see security.ts); absent: all open. */
  security?: SecurityConfig;
  /**
   * Tests only (ZEORAFT_TEST_CRASH_AT): `snapshot-install:<step>` kills the process with SIGKILL
   * when a snapshot install reaches that step (see INSTALL_STEPS in the object store).
   */
  testCrashAt?: string;
}

export interface LimitsConfig {
  /** Largest gRPC message accepted, in bytes. */
  maxMessageBytes: number;
  /** Objects (stores, deletes and checks) in one transaction. */
  maxTxnObjects: number;
  /** Data bytes in one transaction. */
  maxTxnBytes: number;
  /** Bytes of one blob (blobs are uploaded in chunks beside the transaction, not in its bytes). */
  maxBlobBytes: number;
  /** Open Subscribe streams on this node. */
  maxSubscribers: number;
  /** Events queued for one slow subscriber before it is cut off. */
  subscriberBufferEvents: number;
  /** Proposals waiting for the log (forwarded ones included). */
  maxPendingProposals: number;
  /** Voted transactions open at once per client connection (remote address:port). */
  maxTxnsPerConnection: number;
  /** Subscribe streams open at once per client connection. */
  maxSubscribersPerConnection: number;
  /** Encoded bytes queued for one slow subscriber before it is cut off (it resumes from its last TID). */
  subscriberBufferBytes: number;
  /** Node-wide bytes of transactions being staged (ZEO) or applied (Commit, Vote) at once. */
  maxTxnMemoryBytes: number;
  /** Voted transactions waiting for finish or abort, across all clients (every node holds them). */
  maxPreparedTxns: number;
  /** Open connections on the client gRPC listener; more are closed as they arrive. */
  maxClientConnections: number;
  /** Open connections on the ZEO listener; more are closed as they arrive. */
  maxZeoConnections: number;
  /** A client gRPC connection with no call in progress, or a ZEO connection with no traffic either way, is closed after this. */
  idleTimeoutMs: number;
}

export const DEFAULT_LIMITS: LimitsConfig = {
  maxMessageBytes: 64 << 20,
  maxTxnObjects: 100_000,
  maxTxnBytes: 32 << 20,
  maxBlobBytes: 1 << 30,
  maxSubscribers: 10_000,
  subscriberBufferEvents: 10_000,
  maxPendingProposals: 10_000,
  maxTxnsPerConnection: 1_000,
  maxSubscribersPerConnection: 1_000,
  subscriberBufferBytes: 16 << 20,
  maxTxnMemoryBytes: 128 << 20,
  maxPreparedTxns: 1_000,
  maxClientConnections: 1_000,
  maxZeoConnections: 1_000,
  idleTimeoutMs: 300_000,
};

export function defaultConfig(overrides: Partial<NodeConfig> = {}): NodeConfig {
  const c: NodeConfig = {
    nodeId: 'n1',
    dataDir: './data/n1',
    listen: '127.0.0.1:7101',
    peerListen: '',
    httpListen: '',
    zeoListen: '',
    zeoEncoding: 'msgpack',
    peers: [],
    join: false,
    initialClusterState: '',
    storages: [{ name: '1', readOnly: false }],
    readOnly: false,
    logLevel: 'info',
    tickMs: 50,
    electionTicks: 10,
    heartbeatTicks: 2,
    snapshotEntries: 10_000,
    txnTimeoutMs: 30_000,
    voteRenewMs: 250,
    lockWaitMs: 5_000,
    defaultDeadlineMs: 30_000,
    fsync: true,
    historyMaxTransactions: 100_000,
    historyMaxAgeMs: 24 * 3600_000,
    ...overrides,
    // A config file may set some limits: the others keep their defaults.
    limits: { ...DEFAULT_LIMITS, ...(overrides.limits ?? {}) },
  };
  validateConfig(c);
  return c;
}

const HOST_PORT = /^[^\s]+:\d{1,5}$/;

export function validateConfig(c: NodeConfig): void {
  const fail = (m: string): never => {
    throw new Error(`invalid configuration: ${m}`);
  };
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(c.nodeId))
    fail(`node id ${JSON.stringify(c.nodeId)} must be 1..64 of [A-Za-z0-9_.-]`);
  if (!c.dataDir) fail('data dir is required');
  if (!HOST_PORT.test(c.listen))
    fail(`listen address ${JSON.stringify(c.listen)} is not host:port`);
  if (c.peerListen && !HOST_PORT.test(c.peerListen))
    fail(`peer listen address ${JSON.stringify(c.peerListen)} is not host:port`);
  if (c.httpListen && !HOST_PORT.test(c.httpListen))
    fail(`http listen address ${JSON.stringify(c.httpListen)} is not host:port`);
  if (c.zeoListen && !HOST_PORT.test(c.zeoListen))
    fail(`zeo listen address ${JSON.stringify(c.zeoListen)} is not host:port`);
  if (c.zeoEncoding !== 'msgpack' && c.zeoEncoding !== 'pickle')
    fail(`zeo encoding ${JSON.stringify(c.zeoEncoding)} is not msgpack or pickle`);
  if (c.storages.length === 0) fail('at least one storage is required');
  for (const s of c.storages)
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(s.name))
      fail(`storage name ${JSON.stringify(s.name)} must be 1..64 of [A-Za-z0-9_.-]`);
  if (new Set(c.storages.map((s) => s.name)).size !== c.storages.length)
    fail('storage names must be unique');
  if (c.peers.length > 0) {
    if (!c.peerListen) fail('a cluster member needs a peer listen address');
    if (!c.join && !c.peers.some((p) => p.id === c.nodeId))
      fail(`the peer list must include this node (${c.nodeId})`);
    if (new Set(c.peers.map((p) => p.id)).size !== c.peers.length) fail('peer ids must be unique');
  }
  if (!['', 'new', 'existing'].includes(c.initialClusterState))
    fail(
      `initial cluster state must be new or existing, got ${JSON.stringify(c.initialClusterState)}`,
    );
  const sec = c.security ?? {};
  if (sec.clusterKey !== undefined && sec.clusterKey.length < CLUSTER_KEY_CHARS_MIN)
    fail(
      `the cluster key must have at least ${CLUSTER_KEY_CHARS_MIN} characters (make one with: openssl rand -hex 32)`,
    );
  // Secure by default: whoever reaches an unauthenticated peer port can replace the cluster's data.
  if ((c.peers.length > 0 || c.join) && !sec.clusterKey && !sec.peerTls && !sec.insecurePeers)
    fail(
      'a cluster member needs peer authentication: set a cluster key (ZEORAFT_CLUSTER_KEY or ZEORAFT_CLUSTER_KEY_FILE, the same on every node; `zeoraft cluster` makes one) and/or peer mutual TLS (ZEORAFT_PEER_TLS_CERT, _KEY, _CA). --insecure-peers (ZEORAFT_INSECURE_PEERS=true) runs without, letting anyone who reaches the peer port replace the data',
    );
  if (c.heartbeatTicks < 1 || c.electionTicks <= c.heartbeatTicks)
    fail('election ticks must exceed heartbeat ticks (>= 1)');
  if (c.tickMs < 1) fail('tick must be at least 1 ms');
  // The store renews a vote at most VOTE_RENEW_MAX_MS past its first deadline.
  if (!(c.txnTimeoutMs >= 1 && c.txnTimeoutMs <= VOTE_RENEW_MAX_MS))
    fail(`transaction timeout must be 1..${VOTE_RENEW_MAX_MS} ms, got ${c.txnTimeoutMs}`);
  if (!(
    Number.isSafeInteger(c.voteRenewMs) &&
    c.voteRenewMs >= 1 &&
    c.voteRenewMs <= c.txnTimeoutMs
  ))
    fail(
      `vote renewal interval must be 1..${c.txnTimeoutMs} ms (the transaction timeout), got ${c.voteRenewMs}`,
    );
  for (const [name, v] of Object.entries(c.limits))
    if (!Number.isSafeInteger(v) || v < 1)
      fail(`limit ${name} must be a positive integer, got ${v}`);
}
