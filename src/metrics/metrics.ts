/**
 * Prometheus metrics of one node (prefix zeoraft_), each node with its own prom-client Registry so
 * several nodes can live in one process (tests, the simulator) without sharing counters.
 * Names follow etcd's where the concept is the same.
 */
import * as client from 'prom-client';

/** Disk syncs: sub-millisecond on NVMe through seconds on a struggling disk. */
const FSYNC_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
  1.024, 2.048, 4.096,
];
/** Commits and requests: a millisecond to ten seconds. */
const LATENCY_BUCKETS = [
  0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
  8.192,
];
/** Loopback to WAN round trips. */
const RTT_BUCKETS = [
  0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
  0.4096, 0.8192,
];

export class NodeMetrics {
  readonly registry = new client.Registry();
  readonly hasLeader: client.Gauge;
  readonly isLeader: client.Gauge;
  readonly term: client.Gauge;
  readonly leaderChanges: client.Counter;
  readonly commitIndex: client.Gauge;
  readonly appliedIndex: client.Gauge;
  readonly proposalsCommitted: client.Counter;
  readonly proposalsFailed: client.Counter;
  readonly proposalsPending: client.Gauge;
  readonly fsyncDuration: client.Histogram;
  readonly peerRtt: client.Histogram;
  readonly peerSentFailures: client.Counter;
  readonly snapshotsSent: client.Counter;
  readonly snapshotsReceived: client.Counter;
  readonly snapshotSendDuration: client.Histogram;
  readonly snapshotBytesSent: client.Counter;
  readonly committed: client.Counter;
  readonly conflicts: client.Counter;
  readonly commitDuration: client.Histogram;
  readonly subscribers: client.Gauge;
  readonly invalidationsSent: client.Counter;
  readonly grpcRequests: client.Counter;
  readonly grpcDuration: client.Histogram;
  readonly authFailures: client.Counter;
  readonly deniedConnections: client.Counter;
  readonly limitsExceeded: client.Counter;
  readonly connections: client.Gauge;

  constructor(labels: Record<string, string> = {}) {
    const r = [this.registry];
    this.registry.setDefaultLabels(labels);
    client.collectDefaultMetrics({ register: this.registry, prefix: 'zeoraft_' });
    const g = (name: string, help: string, labelNames: string[] = []) =>
      new client.Gauge({ name: `zeoraft_${name}`, help, labelNames, registers: r });
    const c = (name: string, help: string, labelNames: string[] = []) =>
      new client.Counter({ name: `zeoraft_${name}`, help, labelNames, registers: r });
    const h = (name: string, help: string, buckets: number[], labelNames: string[] = []) =>
      new client.Histogram({ name: `zeoraft_${name}`, help, buckets, labelNames, registers: r });
    this.hasLeader = g('raft_has_leader', '1 if this node knows a leader, 0 otherwise.');
    this.isLeader = g('raft_is_leader', '1 if this node is the leader.');
    this.term = g('raft_term', 'The current Raft term.');
    this.leaderChanges = c('raft_leader_changes_seen_total', 'Leader changes this node has seen.');
    this.commitIndex = g('raft_commit_index', 'The Raft commit index.');
    this.appliedIndex = g(
      'raft_applied_index',
      'The index of the last entry applied to the object store.',
    );
    this.proposalsCommitted = c(
      'raft_proposals_committed_total',
      'Proposals committed and applied on this node.',
    );
    this.proposalsFailed = c(
      'raft_proposals_failed_total',
      'Proposals that failed (no leader, dropped, timed out).',
    );
    this.proposalsPending = g('raft_proposals_pending', 'Proposals waiting to be committed.');
    this.fsyncDuration = h(
      'disk_log_fsync_duration_seconds',
      'Latency of synced Raft log writes.',
      FSYNC_BUCKETS,
    );
    this.peerRtt = h(
      'peer_round_trip_time_seconds',
      'Round trip time of heartbeats to peers.',
      RTT_BUCKETS,
      ['peer'],
    );
    this.peerSentFailures = c(
      'peer_sent_failures_total',
      'Messages that could not be sent to a peer.',
      ['peer'],
    );
    this.snapshotsSent = c('snapshot_sent_total', 'Snapshots streamed to followers.');
    this.snapshotsReceived = c('snapshot_received_total', 'Snapshots installed from the leader.');
    this.snapshotSendDuration = h(
      'snapshot_send_duration_seconds',
      'Time to stream a snapshot to a follower.',
      [0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120],
    );
    this.snapshotBytesSent = c(
      'snapshot_sent_bytes_total',
      'Snapshot bytes streamed to followers.',
    );
    this.committed = c('transactions_committed_total', 'Transactions committed through this node.');
    this.conflicts = c(
      'transaction_conflicts_total',
      'Transactions refused with a conflict on this node.',
    );
    this.commitDuration = h(
      'transaction_commit_duration_seconds',
      'Commit latency seen by clients of this node.',
      LATENCY_BUCKETS,
    );
    this.subscribers = new client.Gauge({
      name: 'zeoraft_subscribers',
      help: 'Open Subscribe streams.',
      registers: r,
      collect: () => this.subscribers.set(this.subscriberCount()),
    });
    this.invalidationsSent = c('invalidations_sent_total', 'Commit events sent to subscribers.');
    this.grpcRequests = c('grpc_requests_total', 'gRPC requests by method and status code.', [
      'method',
      'code',
    ]);
    this.grpcDuration = h(
      'grpc_request_duration_seconds',
      'gRPC request latency by method.',
      LATENCY_BUCKETS,
      ['method'],
    );
    this.authFailures = c(
      'auth_failures_total',
      'Requests refused for a missing or invalid key, or a role without permission.',
      ['reason'],
    );
    this.deniedConnections = c(
      'denied_connections_total',
      'Connections or requests refused by an address allow-list.',
      ['listener'],
    );
    this.limitsExceeded = c(
      'limit_exceeded_total',
      'Requests, streams or connections refused or cut off by a configured limit.',
      ['limit'],
    );
    this.connections = g('connections', 'Open connections by listener.', ['listener']);
    const txnMemory: client.Gauge = new client.Gauge({
      name: 'zeoraft_txn_memory_bytes',
      help: 'Bytes of transactions being staged or applied, charged against max_txn_memory_bytes.',
      registers: r,
      collect: () => txnMemory.set(this.txnMemoryBytes()),
    });
  }

  /** Where the transaction memory gauge reads its value at scrape time. */
  private txnMemoryBytes: () => number = () => 0;
  countTxnMemory(bytes: () => number): void {
    this.txnMemoryBytes = bytes;
  }

  /** Where the subscribers gauge reads its value at scrape time. */
  private subscriberCount: () => number = () => 0;
  countSubscribers(count: () => number): void {
    this.subscriberCount = count;
  }

  /** Start timing a request; call the result with the final status code. */
  startRequest(method: string): (code: number) => void {
    const end = this.grpcDuration.startTimer({ method });
    return (code: number) => {
      end();
      this.grpcRequests.inc({ method, code: codeName(code) });
    };
  }

  observeCommit(ms: number): void {
    this.committed.inc();
    this.commitDuration.observe(ms / 1000);
  }
}

const CODE_NAMES = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];
function codeName(code: number): string {
  return CODE_NAMES[code] ?? String(code);
}
