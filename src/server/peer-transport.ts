/**
 * The peer port and this node's links to its peers. Raft messages travel on the Raft stream
 * (peer-stream.ts: protobuf frames over TCP or TLS, one connection per direction); snapshots (in
 * chunks) and commands forwarded from followers to the leader are gRPC calls on the same port,
 * on a connection of their own, so a large snapshot never delays heartbeats. The listener tells
 * the two apart by a connection's first bytes (with TLS, by its ALPN protocol).
 *
 * Both authenticate alike (peer-auth.ts): a gRPC call names this node and proves it in its
 * metadata, checked by the Security interceptor before any handler here runs; a Raft stream in
 * its hello, checked by Security.admitPeerStream. Every message's sender is then checked against
 * the node authenticated.
 */
import type * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { decodeStatusDetails } from '../proto';
import type { RaftClient, RaftHandlers } from '../generated/zeoraft/v1/raft/Raft';
import type { Message as PMessage } from '../generated/zeoraft/v1/raft/Message';
import { Message, MessageType } from '../raft';
import { commandCodec } from '../storage/codec';
import type { ApplyResult, ObjectStore } from '../storage/object-store';
import type { NodeMetrics } from '../metrics/metrics';
import type { LateBound } from '../util/late-bound';
import type { Logger } from '../util/log';
import type { AddressBook } from './address-book';
import { decodeApplyResult, encodeApplyResult } from './apply-result-codec';
import type { Caller } from './callers';
import type { NodeConfig } from './config';
import { notLeader, outcomeUnknown } from './domain-errors';
import { RpcError, domainErrorFromStatus, toServiceError } from './errors';
import type { Limits } from './limits';
import { CappedListener, connectionServerOptions } from './listener';
import { peerCallMetadata, peerToken } from './peer-auth';
import { callerFromProto, callerToProto, fromProto, raftPackage, toProto } from './peer-messages';
import { receiveSnapshot, sendSnapshot } from './peer-snapshot';
import { StreamLink, acceptStream } from './peer-stream';
import { STREAM_ALPN, STREAM_MAGIC } from './peer-wire';
import type { PeerSender, RaftReplicator } from './raft-replicator';
import type { Security } from './security';
import { peerChannelCredentials, peerListenerTls, peerStreamTls } from './tls';

// Moved to peer-messages.ts; still exported from here for the code that imports them from it.
export { fromProto, raftPackage, toProto } from './peer-messages';

/** What the peer transport uses of the node. */
export interface PeerTransportDeps {
  config: Pick<
    NodeConfig,
    'nodeId' | 'security' | 'peerListen' | 'limits' | 'dataDir' | 'storages'
  >;
  addressBook: Pick<AddressBook, 'peerAddress' | 'clientAddress'>;
  log: Logger;
  metrics: Pick<
    NodeMetrics,
    | 'peerSentFailures'
    | 'connections'
    | 'snapshotsSent'
    | 'snapshotBytesSent'
    | 'snapshotSendDuration'
  >;
  limits: Pick<Limits, 'exceeded'>;
  security: Pick<
    Security,
    'interceptor' | 'admitPeerStream' | 'peerEnvelopeError' | 'refused' | 'forwardedCommandError'
  >;
  store: Pick<ObjectStore, 'restore' | 'appliedIndex'>;
}

/** Where the transport delivers what peers send: the Raft replicator. */
export type PeerReceiver = Pick<
  RaftReplicator,
  | 'step'
  | 'reportUnreachable'
  | 'reportSnapshot'
  | 'captureSnapshot'
  | 'installSnapshot'
  | 'proposeLocal'
  | 'fatal'
>;

/** Connections on the peer listener: a cluster's members need a few each. */
const PEER_CONNECTIONS_MAX = 128;
/** A peer connection without a call (snapshot or forward) for this long is closed. */
const PEER_IDLE_TIMEOUT_MS = 300_000;
/** A quiet peer connection is pinged this often, and closed when a ping goes unanswered. */
const PEER_KEEPALIVE_TIME_MS = 10_000;
const PEER_KEEPALIVE_TIMEOUT_MS = 10_000;
/** A peer connection that has not started a call (or sent a Raft stream's hello) within this time is closed. */
const PEER_FIRST_CALL_TIMEOUT_MS = 10_000;

class PeerLink {
  private client: RaftClient | undefined;
  private address = '';
  /** Raft messages: the Raft stream. */
  readonly stream: StreamLink;
  snapshotInFlight = false;

  constructor(
    readonly id: string,
    private readonly transport: PeerTransport,
  ) {
    const node = transport.node;
    const { clusterKey, peerTls } = node.config.security ?? {};
    this.stream = new StreamLink({
      self: node.config.nodeId,
      peer: id,
      address: () => node.addressBook.peerAddress(id),
      token: clusterKey ? peerToken(clusterKey, node.config.nodeId) : '',
      tls: peerTls ? () => peerStreamTls(peerTls, id, STREAM_ALPN) : undefined,
      onFailure: (why) => this.failed(why),
      log: node.log,
      nowMs: () => Date.now(),
    });
  }

  /** The gRPC client for snapshots and forwarded commands. */
  connection(): RaftClient | undefined {
    const address = this.transport.node.addressBook.peerAddress(this.id);
    if (!address) return undefined;
    if (!this.client || address !== this.address) {
      this.client?.close();
      const Raft = raftPackage().zeoraft.v1.raft.Raft;
      const tls = this.transport.node.config.security?.peerTls;
      this.client = new Raft(address, peerChannelCredentials(tls, this.id), {
        'grpc.max_receive_message_length': 256 << 20,
        'grpc.max_send_message_length': 256 << 20,
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        'grpc.keepalive_time_ms': 10_000,
      });
      this.address = address;
    }
    return this.client;
  }

  send(messages: PMessage[]): void {
    this.stream.send({ from: this.transport.node.config.nodeId, messages, sentAtMs: Date.now() });
  }

  private failed(why: string): void {
    this.transport.node.metrics.peerSentFailures.inc({ peer: this.id });
    this.transport.node.log.debug({ peer: this.id, why }, 'peer send failed');
    this.transport.replicator.reportUnreachable(this.id);
  }

  close(): void {
    this.stream.close();
    this.client?.close();
    this.client = undefined;
  }
}

export class PeerTransport implements PeerSender {
  private readonly links = new Map<string, PeerLink>();
  private server: grpc.Server | undefined;
  private listener: CappedListener | undefined;
  /** Raft streams received from peers. */
  private readonly streams = new Set<net.Socket>();
  closing = false;

  /**
   * `receiver` is bound once the replicator exists: the replicator sends through this transport
   * and this transport delivers to the replicator (a cycle at run time, so one of the two is
   * late-bound, explicitly). Nothing is delivered before listen().
   */
  constructor(
    readonly node: PeerTransportDeps,
    private readonly receiver: LateBound<PeerReceiver>,
  ) {}

  get replicator(): PeerReceiver {
    return this.receiver.get();
  }

  /** Names and authenticates this node on a call to a peer (a fresh copy per call). */
  callMetadata(): grpc.Metadata {
    return peerCallMetadata(this.node.config.nodeId, this.node.config.security?.clusterKey);
  }

  async listen(): Promise<number> {
    const listener = new CappedListener({
      maxConnections: PEER_CONNECTIONS_MAX,
      firstCallTimeoutMs: PEER_FIRST_CALL_TIMEOUT_MS,
      onRefused: (open, socket) =>
        this.node.limits.exceeded('peer_connections_max', `${open} peer connections open`, {
          peer: `${socket.remoteAddress}:${socket.remotePort}`,
        }),
      onNoCall: (socket) =>
        this.node.limits.exceeded(
          'first_call_timeout_ms',
          `a peer connection made no call within ${PEER_FIRST_CALL_TIMEOUT_MS} ms`,
          { peer: `${socket.remoteAddress}:${socket.remotePort}` },
        ),
      onChange: (open) => this.node.metrics.connections.set({ listener: 'peer' }, open),
    });
    const server = new grpc.Server({
      'grpc.max_receive_message_length': 256 << 20,
      'grpc.max_send_message_length': 256 << 20,
      ...connectionServerOptions({
        idleTimeoutMs: PEER_IDLE_TIMEOUT_MS,
        // Forwarded commands are concurrent calls: as many as may be pending, and the streams.
        streamsPerConnectionMax: this.node.config.limits.maxPendingProposals + 16,
        keepaliveTimeMs: PEER_KEEPALIVE_TIME_MS,
        keepaliveTimeoutMs: PEER_KEEPALIVE_TIMEOUT_MS,
      }),
      interceptors: [listener.interceptor, this.node.security.interceptor('peer')],
    });
    server.addService(raftPackage().zeoraft.v1.raft.Raft.service, this.handlers());
    const peerTls = this.node.config.security?.peerTls;
    const security = this.node.security;
    const port = await listener.listen(
      server,
      this.node.config.peerListen,
      // With peer TLS the listener terminates TLS for both kinds of connection.
      grpc.ServerCredentials.createInsecure(),
      {
        magic: STREAM_MAGIC,
        alpn: STREAM_ALPN,
        tls: peerTls ? peerListenerTls(peerTls) : undefined,
        take: (socket, head, started) =>
          acceptStream(socket, head, started, {
            admit: (address, hello, cert) => security.admitPeerStream(address, hello, cert),
            check: (address, env, peer) => security.peerEnvelopeError(address, env, peer),
            deliver: (env) => {
              for (const m of env.messages) this.replicator.step(fromProto(m));
            },
            open: this.streams,
          }),
        onTlsError: (e, socket) =>
          security.refused(
            'peer',
            `${socket.remoteAddress}:${socket.remotePort}`,
            'peer_tls',
            `TLS handshake failed: ${e.message}`,
          ),
      },
    );
    this.listener = listener;
    this.server = server;
    return port;
  }

  private link(id: string): PeerLink {
    let l = this.links.get(id);
    if (!l) {
      l = new PeerLink(id, this);
      this.links.set(id, l);
    }
    return l;
  }

  send(messages: Message[]): void {
    const byPeer = new Map<string, PMessage[]>();
    for (const m of messages) {
      if (m.to === this.node.config.nodeId) continue;
      if (m.type === MessageType.Snapshot) {
        void sendSnapshot(this, this.link(m.to), m);
        continue;
      }
      let list = byPeer.get(m.to);
      if (!list) byPeer.set(m.to, (list = []));
      list.push(toProto(m));
    }
    for (const [peer, list] of byPeer) this.link(peer).send(list);
  }

  async forward(
    leaderId: string,
    command: Buffer,
    deadlineMs: number,
    caller: Caller,
  ): Promise<{ index: number; result: ApplyResult }> {
    const client = this.link(leaderId).connection();
    if (!client) throw notLeader(`no address for leader ${leaderId}`);
    const res = await new Promise<any>((resolve, reject) =>
      client.Forward(
        { command, from: this.node.config.nodeId, caller: callerToProto(caller) },
        this.callMetadata(),
        { deadline: deadlineMs },
        (err, r) => {
          if (!err) return resolve(r);
          // The leader's own refusal carries its details through; a call that never left this
          // node is safe to retry (with the next leader); anything else (a broken connection, a
          // deadline) leaves the command's fate unknown.
          const detail = decodeStatusDetails(err.metadata);
          const leaderHint = this.node.addressBook.clientAddress(leaderId);
          const msg = `forwarding to leader ${leaderId} failed: ${err.details || err.message}`;
          if (detail) reject(domainErrorFromStatus(err.code, msg, detail, leaderHint));
          else if (neverSent(err)) reject(notLeader(msg, leaderHint));
          else if (REFUSALS.has(err.code))
            reject(domainErrorFromStatus(err.code, msg, undefined, leaderHint));
          else reject(outcomeUnknown(msg, err.code === grpc.status.DEADLINE_EXCEEDED));
        },
      ),
    );
    return decodeApplyResult(res);
  }

  private handlers(): RaftHandlers {
    return {
      Snapshot: receiveSnapshot(this),
      Forward: (call, callback) => {
        let cmd;
        try {
          cmd = commandCodec.decode(call.request.command);
        } catch (e) {
          return callback(
            toServiceError(
              new RpcError(grpc.status.INVALID_ARGUMENT, `undecodable command: ${String(e)}`),
            ) as grpc.ServiceError,
          );
        }
        // Checked as the client's own request would be, on this node's storage settings.
        const refused = this.node.security.forwardedCommandError(
          cmd,
          callerFromProto(call.request.caller),
          this.node.config.storages,
        );
        if (refused) {
          this.node.security.refused(
            'peer',
            call.getPeer(),
            refused.detail?.kind === 'READ_ONLY' ? 'forward_read_only' : 'forward_permission',
            `a command forwarded by ${call.request.from}: ${refused.message}`,
          );
          return callback(toServiceError(refused) as grpc.ServiceError);
        }
        const d = call.getDeadline();
        const deadline =
          d instanceof Date
            ? d.getTime()
            : Number.isFinite(Number(d)) && Number(d) > 0
              ? Number(d)
              : Date.now() + 30_000;
        this.replicator.proposeLocal(cmd, deadline).then(
          ({ index, result }) => callback(null, encodeApplyResult(index, result)),
          (e: unknown) => callback(toServiceError(e) as grpc.ServiceError),
        );
      },
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const l of this.links.values()) l.close();
    for (const s of this.streams) s.destroy();
    if (this.server) {
      const s = this.server;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          s.forceShutdown();
          resolve();
        }, 1000);
        s.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    await this.listener?.close();
  }
}

/**
 * Statuses by which the leader's server refused a forwarded call before running it (too large,
 * malformed, not allowed): the command was not appended, and the caller gets the same status.
 */
const REFUSALS: ReadonlySet<grpc.status> = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.UNIMPLEMENTED,
]);

/**
 * Whether a failed call provably never left this node: grpc-js fails a call that found no
 * connection (or no address) to the leader without sending anything.
 */
function neverSent(err: grpc.ServiceError): boolean {
  return (
    err.code === grpc.status.UNAVAILABLE &&
    /(^|: )(No connection established|Name resolution failed|Channel closed before call started)/.test(
      err.details ?? '',
    )
  );
}
