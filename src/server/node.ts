/**
 * A ZeoRaft storage node: the object store, the replicator that feeds it, the Storage gRPC
 * service, subscriptions, metrics and health. Standalone (one node, LocalReplicator) or a Raft
 * cluster member (RaftReplicator); the services do not know which.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type * as http from 'node:http';
import { NodeMetrics } from '../metrics/metrics';
import { storagePackage, withPreEncodedResponses } from '../proto';
import { ObjectStore, type PreparedSummary } from '../storage/object-store';
import { hex } from '../util/ids';
import { Logger, createLogger } from '../util/log';
import { NodeConfig, VOTE_LEASE_MS } from './config';
import { unavailable } from './errors';
import { AddressBook } from './address-book';
import { AppliedIndexWatch } from './applied-watch';
import { startRaftMember, joinsAtStart } from './cluster-node';
import { HealthHandle, addHealthAndReflection } from './health';
import { startHttp } from './http';
import { Limits } from './limits';
import { CappedListener, connectionServerOptions } from './listener';
import { Security } from './security';
import { clientServerCredentials } from './tls';
import { LocalReplicator } from './local-replicator';
import type { Replicator } from './replicator';
import { StorageApi } from './storage-api';
import { storageHandlers } from './storage-service';
import { packStorage } from './pack';
import { SubscriptionHub } from './subscriptions';
import { CommitFeed } from './commit-feed';
import { ZeoServer, startZeoServer } from '../zeo/server';
import { Waiters, systemWaitClock } from '../util/waiters';

/** How often the leader looks for voted transactions past their timeout. */
const TXN_SWEEP_MS = 250;
/**
 * Concurrent calls on one client connection: room for the per-connection subscriber and vote
 * limits (1000 each by default) at once.
 */
const CLIENT_STREAMS_PER_CONNECTION_MAX = 2_000;
/** A quiet client connection is pinged this often, and closed when a ping goes unanswered. */
const CLIENT_KEEPALIVE_TIME_MS = 60_000;
const CLIENT_KEEPALIVE_TIMEOUT_MS = 20_000;
/** A client connection that has not started a call within this time is closed. */
const CLIENT_FIRST_CALL_TIMEOUT_MS = 10_000;

export interface Clock {
  nowMs(): number;
}
export const systemClock: Clock = { nowMs: () => Date.now() };

/** Extra gRPC services on the client port (the Admin service of a cluster member). */
export type ServiceRegistration = (server: grpc.Server) => void;

/** The parts of a node, built in order by StorageNode.start (the composition root). */
interface NodeParts {
  config: NodeConfig;
  store: ObjectStore;
  clock: Clock;
  metrics: NodeMetrics;
  log: Logger;
  limits: Limits;
  security: Security;
  watch: AppliedIndexWatch;
  subscriptions: SubscriptionHub;
  addressBook: AddressBook;
  replicator: Replicator;
  api: StorageApi;
}

/**
 * A running node. StorageNode.start is the composition root: it builds the store, metrics, limits
 * and security, the applied-index watch, the commit feed (and the gRPC subscriptions over it), the
 * replicator, then the adapters (gRPC services, HTTP, the ZEO door) and the timeout sweeper, in
 * that order, handing each the parts it uses.
 */
export class StorageNode {
  readonly config: NodeConfig;
  readonly store: ObjectStore;
  readonly clock: Clock;
  readonly metrics: NodeMetrics;
  readonly limits: Limits;
  readonly log: Logger;
  readonly subscriptions: SubscriptionHub;
  readonly addressBook: AddressBook;
  readonly security: Security;
  readonly replicator: Replicator;
  /** The storage API both doors use. */
  readonly api: StorageApi;
  /** Waits for "applied up to ...": one watch, shared with the Raft host (see start()). */
  private readonly watch: AppliedIndexWatch;
  private grpcServer: grpc.Server | undefined;
  private grpcListener: CappedListener | undefined;
  private health: HealthHandle | undefined;
  private httpServer: http.Server | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private zeoServer: ZeoServer | undefined;
  private stopping = false;
  /** When this node last became leader (its clock), while it is leader. */
  private leaderSinceMs: number | undefined;
  /** The bound client port (useful when listening on port 0). */
  port = 0;

  private constructor(parts: NodeParts) {
    this.config = parts.config;
    this.store = parts.store;
    this.clock = parts.clock;
    this.metrics = parts.metrics;
    this.log = parts.log;
    this.limits = parts.limits;
    this.security = parts.security;
    this.watch = parts.watch;
    this.subscriptions = parts.subscriptions;
    this.addressBook = parts.addressBook;
    this.replicator = parts.replicator;
    this.api = parts.api;
  }

  /**
   * Start a node: a Raft cluster member when it has peers (or joins), else a standalone node
   * (LocalReplicator). The services do not know which.
   */
  static async start(config: NodeConfig, clock: Clock = systemClock): Promise<StorageNode> {
    fs.mkdirSync(config.dataDir, { recursive: true });
    const member = config.peers.length > 0 || config.join;
    // A member decides whether it joins or bootstraps before it opens anything (it may ask its peers).
    const memberStart = member ? await joinsAtStart(config) : undefined;
    const crashAt = config.testCrashAt;
    const store = await ObjectStore.open(path.join(config.dataDir, 'state'), {
      sync: !member && config.fsync,
      // Test-only (ZEORAFT_TEST_CRASH_AT=snapshot-install:<step>): die like kill -9 at that step.
      onInstallStep: crashAt
        ? (step) => {
            if (crashAt === `snapshot-install:${step}`) process.kill(process.pid, 'SIGKILL');
          }
        : undefined,
    });
    if (!member && store.interruptedInstall)
      throw new Error(
        `${config.dataDir} holds an interrupted snapshot install and a standalone node has no leader to get a snapshot from`,
      );
    const metrics = new NodeMetrics({ node: config.nodeId });
    const log = createLogger(config.logLevel, { node: config.nodeId });
    const limits = new Limits(config.limits, metrics, log);
    const security = new Security(
      config.security ?? {},
      metrics,
      log,
      {
        ...config.limits,
        txnTimeoutMs: config.txnTimeoutMs,
      },
      config.nodeId,
      (id) => store.isRemovedMember(id),
    );
    // The applied-index watch: notified on every apply; the Raft host keeps its waits here too
    // (deadlines are gRPC deadlines: this clock, the system clock in production).
    const waiters = new Waiters({ nowMs: () => clock.nowMs(), after: systemWaitClock.after });
    const watch = new AppliedIndexWatch(waiters, store, config.nodeId);
    store.onApplied((index) => {
      metrics.appliedIndex.set(index);
      waiters.notify();
    });
    const feed = new CommitFeed(
      store,
      {
        historyMaxTransactions: config.historyMaxTransactions,
        historyMaxAgeMs: config.historyMaxAgeMs,
        nowMs: () => clock.nowMs(),
      },
      (n) => metrics.invalidationsSent.inc(n),
    );
    const subscriptions = new SubscriptionHub(store, feed, {
      bufferMaxEvents: config.limits.subscriberBufferEvents,
      bufferMaxBytes: config.limits.subscriberBufferBytes,
      nowMs: () => clock.nowMs(),
      onLimit: (name, lastSent) =>
        limits.exceeded(name, 'a subscriber fell too far behind and was cut off', {
          resumeFrom: hex(lastSent),
        }),
    });
    metrics.countSubscribers(() => subscriptions.count);
    const addressBook = new AddressBook(config.peers, store);
    const services: ServiceRegistration[] = [];
    let replicator: Replicator;
    if (memberStart) {
      const m = await startRaftMember(
        {
          config,
          store,
          clock,
          metrics,
          log,
          limits,
          security,
          addressBook,
          watch: waiters,
          onLeaderLost: () => subscriptions.leaderLost(config.nodeId),
        },
        memberStart,
      );
      replicator = m.replicator;
      services.push(...m.services);
    } else replicator = new LocalReplicator(store, config.nodeId, () => clock.nowMs());
    const api = new StorageApi({
      config,
      store,
      replicator,
      applied: watch,
      metrics,
      limits,
      feed,
      pack: (st, packTid, gc, propose) =>
        packStorage({ metrics, store, log }, st, packTid, gc, propose),
    });
    const node = new StorageNode({
      config,
      store,
      clock,
      metrics,
      log,
      limits,
      security,
      watch,
      subscriptions,
      addressBook,
      replicator,
      api,
    });
    await node.startGrpc(services);
    if (config.httpListen)
      node.httpServer = await startHttp(config.httpListen, metrics, { ready: () => node.ready() });
    node.httpServer?.prependListener('connection', (s) => security.admitSocket('http', s));
    if (config.zeoListen && security.zeoAccess === 'off')
      log.warn('zeo: listener off: security keys are on and ZEORAFT_ZEO_ACCESS is not set');
    else if (config.zeoListen)
      node.zeoServer = await startZeoServer(
        { config, api, store, security, log, metrics, limits },
        config.zeoListen,
      );
    node.sweeper = setInterval(() => node.abortExpired(), TXN_SWEEP_MS);
    log.info(
      {
        listen: config.listen,
        port: node.port,
        http: config.httpListen,
        peers: config.peers.length,
        lastTid: hex(store.lastTid),
        applied: store.appliedIndex,
      },
      'node started',
    );
    return node;
  }

  private async startGrpc(services: ServiceRegistration[]): Promise<void> {
    const limits = this.config.limits;
    const listener = new CappedListener({
      maxConnections: limits.maxClientConnections,
      firstCallTimeoutMs: CLIENT_FIRST_CALL_TIMEOUT_MS,
      onRefused: (open, socket) =>
        this.limits.exceeded(
          'max_client_connections',
          `${open} client connections open (ZEORAFT_MAX_CLIENT_CONNECTIONS)`,
          { client: `${socket.remoteAddress}:${socket.remotePort}` },
        ),
      onNoCall: (socket) =>
        this.limits.exceeded(
          'first_call_timeout_ms',
          `a client connection made no call within ${CLIENT_FIRST_CALL_TIMEOUT_MS} ms`,
          { client: `${socket.remoteAddress}:${socket.remotePort}` },
        ),
      onChange: (open) => this.metrics.connections.set({ listener: 'client' }, open),
    });
    const server = new grpc.Server({
      'grpc.max_receive_message_length': limits.maxMessageBytes,
      'grpc.max_send_message_length': limits.maxMessageBytes,
      ...connectionServerOptions({
        idleTimeoutMs: limits.idleTimeoutMs,
        streamsPerConnectionMax: CLIENT_STREAMS_PER_CONNECTION_MAX,
        keepaliveTimeMs: CLIENT_KEEPALIVE_TIME_MS,
        keepaliveTimeoutMs: CLIENT_KEEPALIVE_TIMEOUT_MS,
      }),
      interceptors: [listener.interceptor, this.security.interceptor('client')],
    });
    server.addService(
      withPreEncodedResponses(storagePackage().zeoraft.v1.Storage.service, ['Subscribe']),
      storageHandlers({
        api: this.api,
        metrics: this.metrics,
        log: this.log,
        security: this.security,
        limits: this.limits,
        subscriptions: this.subscriptions,
        config: this.config,
        blobs: {
          store: this.store,
          replicator: this.replicator,
          limits: this.limits,
          metrics: this.metrics,
          config: this.config,
        },
      }),
    );
    this.health = addHealthAndReflection(server, { ready: () => this.ready() });
    for (const add of services) add(server);
    this.port = await listener.listen(
      server,
      this.config.listen,
      clientServerCredentials(this.config.security?.tls),
    );
    this.grpcListener = listener;
    this.grpcServer = server;
  }

  ready(): { ok: boolean; reason: string } {
    const v = this.replicator.view();
    if (this.stopping) return { ok: false, reason: 'stopping' };
    const unhealthy = this.store.unhealthy;
    if (unhealthy) return { ok: false, reason: unhealthy };
    if (this.store.installing) return { ok: false, reason: 'installing a snapshot' };
    if (v.awaitingSnapshot) return { ok: false, reason: 'waiting for a snapshot from the leader' };
    if (!v.leaderId) return { ok: false, reason: 'no leader' };
    if (v.commitIndex - this.store.appliedIndex > 1000)
      return {
        ok: false,
        reason: `applied index ${this.store.appliedIndex} far behind commit ${v.commitIndex}`,
      };
    return { ok: true, reason: `leader ${v.leaderId}, applied ${this.store.appliedIndex}` };
  }

  /** See AppliedIndexWatch (applied-watch.ts). */
  waitForTid(tid: Buffer, deadlineMs: number): Promise<void> {
    return this.watch.waitForTid(tid, deadlineMs);
  }

  waitForUnlock(deadlineMs: number): Promise<void> {
    return this.watch.waitForUnlock(deadlineMs);
  }

  /**
   * Abort voted transactions whose client is gone. A vote is aborted past its deadline (its
   * lease, or a gRPC vote's transaction timeout), judged by the leader, except a ZEO session's
   * vote whose owner node (PreparedSummary.owner) lives: the leader itself while the session is
   * open, or another node the leader heard from within a lease. Renewals go through Raft (several
   * event-loop turns and fsyncs on two or three nodes) and fall behind under load; the owner's
   * answers to heartbeats take one turn. A live owner's vote goes at the transaction timeout
   * after its first deadline, as when its renewals stop. Every node also aborts the votes it owns
   * past their deadline whose session is gone (its abort at close failed, or the node restarted).
   */
  private abortExpired(): void {
    if (this.stopping) return;
    const v = this.replicator.view();
    const now = this.clock.nowMs();
    const leads = v.role === 'leader' || v.role === 'standalone';
    if (!leads) this.leaderSinceMs = undefined;
    else this.leaderSinceMs ??= now;
    // A new leader first waits one lease, so owners that could not renew during the election can.
    const judges = leads && !(v.role === 'leader' && now - this.leaderSinceMs! < VOTE_LEASE_MS);
    let live: Set<string> | undefined;
    for (const p of this.store.preparedTransactions()) {
      if (!(p.deadlineMs > 0 && p.deadlineMs < now)) continue;
      const why = p.owner
        ? this.ownedVoteGone(p, now, judges, (live ??= this.liveTxnIds()))
        : judges
          ? 'past its deadline'
          : undefined;
      if (!why) continue;
      this.log.warn(
        { storage: p.storage, txn: p.txnId, owner: p.owner, why },
        'aborting voted transaction',
      );
      this.replicator
        .propose(
          {
            abort: {
              storage: p.storage,
              txnId: p.txnId,
              reason: 'timeout',
              expiredDeadlineMs: p.deadlineMs,
            },
          },
          Date.now() + 5000,
          { kind: 'node' },
        )
        .catch((e: unknown) =>
          this.log.warn({ txn: p.txnId, error: String(e) }, 'timeout abort failed; will retry'),
        );
    }
  }

  /** Why an owned vote past its lease is to be aborted (see abortExpired), or undefined. */
  private ownedVoteGone(
    p: PreparedSummary,
    now: number,
    judges: boolean,
    live: Set<string>,
  ): string | undefined {
    const mine = p.owner === this.config.nodeId;
    if (mine && !live.has(p.txnId)) return 'its session is gone';
    if (!judges) return undefined;
    if (now > (p.votedDeadlineMs ?? 0) + this.config.txnTimeoutMs)
      return 'past the transaction timeout';
    if (mine) return undefined;
    const heard = this.replicator.heardFromMs(p.owner!);
    if (heard === undefined || now - heard > VOTE_LEASE_MS)
      return `its node ${p.owner} was not heard from within a lease`;
    return undefined;
  }

  /** The transactions of this node's open ZEO sessions. */
  private liveTxnIds(): Set<string> {
    return this.zeoServer?.liveTxnIds() ?? new Set();
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.health?.stop();
    if (this.sweeper) clearInterval(this.sweeper);
    this.subscriptions.closeAll(unavailable(`node ${this.config.nodeId} is shutting down`));
    if (this.zeoServer) await this.zeoServer.close();
    this.api.close();
    await this.replicator.close();
    if (this.grpcServer) {
      const s = this.grpcServer;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          s.forceShutdown();
          resolve();
        }, 2000);
        s.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    await this.grpcListener?.close();
    if (this.httpServer)
      await new Promise<void>((resolve) => this.httpServer!.close(() => resolve()));
    await this.store.close();
    this.log.info('node stopped');
  }
}
