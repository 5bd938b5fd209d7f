/**
 * Access control of a node: address allow-lists, security keys with roles, peer authentication
 * (peer-auth.ts), the permissions of commands forwarded by followers, per-connection limits, and
 * the logging and metrics of everything refused.
 *
 * It is one gRPC server interceptor per listener (grpc-js ≥ 1.10 supports them), so the service
 * handlers never see a request that was refused, and one socket check for the HTTP and ZEO
 * listeners.
 *
 * Keys and roles: security-keys.ts. Callers and the permissions of forwarded commands: callers.ts.
 */
import { timingSafeEqual } from 'node:crypto';
import type * as net from 'node:net';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { NodeMetrics } from '../metrics/metrics';
import type { Command } from '../storage/codec';
import type { Logger } from '../util/log';
import { AllowList } from './allow-list';
import { Caller, forwardedCommandError } from './callers';
import { RpcError, limit, readOnly, toServiceError } from './errors';
import { authenticateClaim, authenticatePeer, peerMessageError } from './peer-auth';
import { KEY_METADATA, KeyStore, Principal, digest, mayUse } from './security-keys';
import type { ClientTlsConfig, TlsFiles } from './tls';
import { validateTls } from './tls';

// Moved out of this module; still exported from here for the code that imports them from it.
export { AllowList } from './allow-list';
export { ANONYMOUS_CLIENT, type Caller, ZEO_TXN_ID_PREFIX, txnIdScope } from './callers';
export { KEY_METADATA, type Principal, ROLES, type Role, hashKey } from './security-keys';

export type Listener = 'client' | 'peer' | 'http' | 'zeo';
/** What the ZEO listener allows: ZEO clients cannot send a key. */
export type ZeoAccess = 'read-write' | 'read-only' | 'off';

export interface SecurityConfig {
  /** TLS on the client listener. */
  tls?: ClientTlsConfig;
  /** Mutual TLS between peers, with the cluster CA. */
  peerTls?: TlsFiles;
  /** The keys file; when set, every Storage and Admin call needs a key. */
  keysFile?: string;
  /** Shared secret of the cluster's peers: binds each peer call to its node id (peer-auth.ts). */
  clusterKey?: string;
  /** Run a cluster member with neither a cluster key nor peer TLS (refused at start otherwise). */
  insecurePeers?: boolean;
  /** CIDR allow-lists (IPv4 and IPv6); empty or absent allows every address. */
  allowClients?: string[];
  allowPeers?: string[];
  allowHttp?: string[];
  /** ZEO listener access; default read-write without keys, off with keys. */
  zeoAccess?: ZeoAccess;
}

export interface LimitsPerConnection {
  /** Voted (prepared) transactions open at once per client connection. */
  maxTxnsPerConnection: number;
  /** Open Subscribe streams per client connection. */
  maxSubscribersPerConnection: number;
  /** Voted transactions stop counting after this long (the leader aborts them then). */
  txnTimeoutMs: number;
}

const WRITE_METHODS = new Set([
  'NewOids',
  'Commit',
  'Vote',
  'Finish',
  'Abort',
  'Undo',
  'Pack',
  'UploadBlob',
]);
const KEYLESS_SERVICES = /^(grpc\.health\.v1\.|grpc\.reflection\.)/;
/** At most one warning per listener and reason in this window; the rest are counted in it. */
const LOG_WINDOW_MS = 5_000;
/** How often the keys of open streams are checked again (a revoked key's stream then ends). */
const KEY_RECHECK_MS = 1_000;

/** An open stream whose key is checked again and again; `revoked` ends it. */
interface KeyedStream {
  digest: Buffer;
  storage: string;
  revoked: (e: RpcError) => void;
}

/** The storage a Storage request addresses ('' means ZEO's default, '1'); undefined when none. */
function requestStorage(method: string, msg: any): string | undefined {
  if (method === 'Status') return undefined;
  const s = method === 'Commit' || method === 'Vote' ? msg?.transaction?.storage : msg?.storage;
  return typeof s === 'string' && s ? s : '1';
}

function connectionOf(call: grpc.ServerInterceptingCallInterface): string {
  const c = call.getConnectionInfo();
  return c.remoteAddress ? `${c.remoteAddress}:${c.remotePort}` : call.getPeer();
}

export class Security {
  readonly keys: KeyStore | undefined;
  readonly zeoAccess: ZeoAccess;
  private readonly allow: Record<Listener, AllowList>;
  private readonly clusterDigest: Buffer | undefined;
  private readonly logged = new Map<string, { atMs: number; suppressed: number }>();
  /** Open subscribe streams per client connection. */
  private readonly subscribers = new Map<string, number>();
  /** Voted transactions: "storage/txnId" -> connection and expiry. */
  private readonly voted = new Map<string, { conn: string; expiresMs: number }>();
  /** Open Subscribe streams made with a key (bounded by the subscriber limits). */
  private readonly keyedStreams = new Set<KeyedStream>();
  private keyRecheck: NodeJS.Timeout | undefined;

  constructor(
    readonly config: SecurityConfig,
    private readonly metrics: NodeMetrics,
    private readonly log: Logger,
    private readonly perConnection: LimitsPerConnection,
    /** This node's id: peer messages must be addressed to it. */
    private readonly nodeId: string,
    /** Whether a node id was removed from the cluster (its tombstone applied): refused as a peer. */
    private readonly isRemovedMember: (id: string) => boolean = () => false,
  ) {
    validateTls(config.tls, config.peerTls);
    this.keys = config.keysFile ? new KeyStore(config.keysFile, log) : undefined;
    this.zeoAccess = config.zeoAccess ?? (this.keys ? 'off' : 'read-write');
    this.allow = {
      client: new AllowList(config.allowClients ?? []),
      zeo: new AllowList(config.allowClients ?? []),
      peer: new AllowList(config.allowPeers ?? []),
      http: new AllowList(config.allowHttp ?? []),
    };
    this.clusterDigest = config.clusterKey ? digest(config.clusterKey) : undefined;
    if (this.keys && !config.tls)
      log.warn('security keys are enabled without TLS: keys travel in clear text');
  }

  /** Record a refusal: metrics, and a warning (rate-limited per listener and reason). */
  refused(listener: Listener, address: string, reason: string, message: string): void {
    if (reason === 'address') this.metrics.deniedConnections.inc({ listener });
    else this.metrics.authFailures.inc({ reason });
    const k = `${listener}/${reason}`;
    const now = Date.now();
    const prev = this.logged.get(k);
    if (prev && now - prev.atMs < LOG_WINDOW_MS) {
      prev.suppressed++;
      return;
    }
    this.logged.set(k, { atMs: now, suppressed: 0 });
    this.log.warn(
      { listener, peer: address, reason, suppressedBefore: prev?.suppressed ?? 0 },
      `refused: ${message}`,
    );
  }

  /** For raw socket listeners (HTTP, ZEO): false (and the socket destroyed) when the address is not allowed. */
  admitSocket(listener: Listener, socket: net.Socket): boolean {
    if (this.allow[listener].allows(socket.remoteAddress)) return true;
    this.refused(
      listener,
      `${socket.remoteAddress}:${socket.remotePort}`,
      'address',
      `${socket.remoteAddress} is not in the ${listener} allow-list`,
    );
    socket.destroy();
    return false;
  }

  /**
   * The principal of a client call's key (metadata x-zeoraft-key); undefined when keys are off.
   * The interceptor has already refused calls without a valid key when keys are on.
   */
  principalFor(md: grpc.Metadata): Principal | undefined {
    if (!this.keys) return undefined;
    const key = md.get(KEY_METADATA)[0];
    return this.principalOf(typeof key === 'string' ? key : undefined);
  }

  /** Whether `p` may see storage `st` at all (Status lists only those). */
  static mayUse(p: Principal | undefined, st: string): boolean {
    return mayUse(p, st);
  }

  /** See forwardedCommandError in callers.ts. */
  forwardedCommandError(
    cmd: Command,
    caller: Caller,
    storages: readonly { name: string; readOnly: boolean }[],
  ): RpcError | undefined {
    return forwardedCommandError(cmd, caller, storages);
  }

  private principalOf(key: string | undefined): Principal | undefined {
    return key ? this.principalOfDigest(digest(key)) : undefined;
  }

  private principalOfDigest(d: Buffer): Principal | undefined {
    if (this.clusterDigest && timingSafeEqual(d, this.clusterDigest))
      return { id: 'cluster', role: 'admin', storages: ['*'] };
    return this.keys?.lookupDigest(d);
  }

  /**
   * Keep checking the key of an open stream of `storage` (metadata `md`): once the keys file no
   * longer has it, or it no longer grants the storage, `revoked` is called with UNAUTHENTICATED or
   * PERMISSION_DENIED (within KEY_RECHECK_MS of the file changing plus its reload delay). Returns
   * the function that stops watching; without keys there is nothing to watch.
   */
  watchKey(md: grpc.Metadata, storage: string, revoked: (e: RpcError) => void): () => void {
    const key = md.get(KEY_METADATA)[0];
    if (!this.keys || typeof key !== 'string') return () => undefined;
    const w: KeyedStream = { digest: digest(key), storage, revoked };
    this.keyedStreams.add(w);
    if (!this.keyRecheck) {
      this.keyRecheck = setInterval(() => this.recheckKeys(), KEY_RECHECK_MS);
      this.keyRecheck.unref();
    }
    return () => {
      this.keyedStreams.delete(w);
      if (this.keyedStreams.size === 0 && this.keyRecheck) {
        clearInterval(this.keyRecheck);
        this.keyRecheck = undefined;
      }
    };
  }

  private recheckKeys(): void {
    for (const w of [...this.keyedStreams]) {
      const p = this.principalOfDigest(w.digest);
      const err = !p
        ? new RpcError(grpc.status.UNAUTHENTICATED, 'security key revoked: the stream is closed')
        : !Security.mayUse(p, w.storage)
          ? new RpcError(
              grpc.status.PERMISSION_DENIED,
              `key ${p.id} may no longer use storage ${JSON.stringify(w.storage)}: the stream is closed`,
              { kind: 'INVALID' },
            )
          : undefined;
      if (!err) continue;
      this.keyedStreams.delete(w);
      this.refused(
        'client',
        '',
        err.code === grpc.status.UNAUTHENTICATED ? 'revoked_key' : 'permission',
        err.message,
      );
      w.revoked(err);
    }
  }

  /** Why `p` may not call `service/method` with `msg`, as an RpcError; undefined when it may. */
  private authorize(p: Principal, service: string, method: string, msg: any): RpcError | undefined {
    const denied = (m: string): RpcError =>
      new RpcError(grpc.status.PERMISSION_DENIED, m, { kind: 'INVALID' });
    if (service === 'zeoraft.v1.Admin')
      return p.role === 'admin'
        ? undefined
        : denied(
            `key ${p.id} (role ${p.role}) may not call Admin.${method}: it needs the admin role`,
          );
    if (service !== 'zeoraft.v1.Storage') return undefined;
    const st = requestStorage(method, msg);
    if (st !== undefined && !Security.mayUse(p, st))
      return denied(
        `key ${p.id} may not use storage ${JSON.stringify(st)} (it may use ${p.storages.map((s) => JSON.stringify(s)).join(', ')})`,
      );
    if (WRITE_METHODS.has(method) && p.role === 'read-only')
      return readOnly(`key ${p.id} is read-only: ${method} is a write`);
    return undefined;
  }

  private dropExpiredVotes(now: number): void {
    for (const [k, v] of this.voted) if (v.expiresMs < now) this.voted.delete(k);
  }

  private votesOf(conn: string): number {
    let n = 0;
    for (const v of this.voted.values()) if (v.conn === conn) n++;
    return n;
  }

  /**
   * Admit a Raft stream connection on the peer listener (peer-stream.ts), as the interceptor admits
   * a peer call: the address allow-list, then the hello's node id proven by the cluster-key token
   * and/or the TLS certificate, and the hello must be meant for this node. A refusal is recorded
   * (metrics, rate-limited log) and returned.
   */
  admitPeerStream(
    address: string,
    hello: { from: string; to: string; token: string },
    cert: PeerCertificate | undefined,
  ): { id: string } | { error: RpcError } {
    const refuse = (error: RpcError, reason: string): { error: RpcError } => {
      this.refused('peer', address, reason, `Raft stream from ${address}: ${error.message}`);
      return { error };
    };
    if (!this.allow.peer.allows(address))
      return refuse(
        new RpcError(
          grpc.status.PERMISSION_DENIED,
          `address ${address} is not allowed on the peer listener`,
        ),
        'address',
      );
    const a = authenticateClaim(hello.from, hello.token, cert, {
      clusterKey: this.config.clusterKey,
      mtls: !!this.config.peerTls,
    });
    if ('error' in a) return refuse(a.error, a.reason);
    if (this.isRemovedMember(a.id)) return refuse(removedMember(a.id), 'removed_member');
    if (hello.to !== this.nodeId)
      return refuse(
        new RpcError(
          grpc.status.PERMISSION_DENIED,
          `a Raft stream addressed to ${JSON.stringify(hello.to)} sent to node ${this.nodeId}`,
        ),
        'peer_from',
      );
    return a;
  }

  /**
   * Why an envelope on a Raft stream authenticated as `peer` must be refused (recorded), as the
   * interceptor checks each message of a peer call; undefined when it is fine.
   */
  peerEnvelopeError(address: string, env: unknown, peer: string): RpcError | undefined {
    const err = peerMessageError('Stream', env, peer, this.nodeId);
    if (err)
      this.refused('peer', address, 'peer_from', `Raft stream from ${address}: ${err.message}`);
    return err;
  }

  /** The server interceptor of a gRPC listener ('client' or 'peer'). */
  interceptor(listener: 'client' | 'peer'): grpc.ServerInterceptor {
    return (descriptor, call) => {
      const m = /^\/([^/]+)\/([^/]+)$/.exec(descriptor.path);
      const service = m?.[1] ?? '';
      const method = m?.[2] ?? descriptor.path;
      let denied = false;
      let principal: Principal | undefined;
      let firstMessage = true;
      let release: (() => void) | undefined;
      let address = '';
      /** The node a peer call authenticated as. */
      let peer = '';
      let vote: { key: string; conn: string } | undefined;
      const deny = (e: RpcError, reason: string): void => {
        denied = true;
        this.refused(
          listener,
          address,
          reason,
          `${service}/${method} from ${address}: ${e.message}`,
        );
        this.metrics.startRequest(
          service === 'zeoraft.v1.Storage' ? method : `${service}.${method}`,
        )(e.code);
        const se = toServiceError(e);
        call.sendStatus({ code: e.code, details: e.message, metadata: se.metadata });
      };
      const conn = (): string => connectionOf(call);
      return new grpc.ServerInterceptingCall(call, {
        start: (next) => {
          next({
            onReceiveMetadata: (md, nxt) => {
              address = call.getConnectionInfo().remoteAddress ?? call.getPeer();
              if (!this.allow[listener].allows(address))
                return deny(
                  new RpcError(
                    grpc.status.PERMISSION_DENIED,
                    `address ${address} is not allowed on the ${listener} listener`,
                  ),
                  'address',
                );
              if (listener === 'peer') {
                const a = authenticatePeer(md, call.getAuthContext()?.sslPeerCertificate, {
                  clusterKey: this.config.clusterKey,
                  mtls: !!this.config.peerTls,
                });
                if ('error' in a) return deny(a.error, a.reason);
                if (this.isRemovedMember(a.id)) return deny(removedMember(a.id), 'removed_member');
                peer = a.id;
              }
              if (listener === 'client' && this.keys && !KEYLESS_SERVICES.test(service)) {
                const key = md.get(KEY_METADATA)[0];
                principal = this.principalOf(typeof key === 'string' ? key : undefined);
                if (!principal)
                  return deny(
                    new RpcError(
                      grpc.status.UNAUTHENTICATED,
                      key
                        ? 'invalid security key'
                        : `a security key is required (metadata ${KEY_METADATA})`,
                    ),
                    key ? 'invalid_key' : 'missing_key',
                  );
              }
              nxt(md);
            },
            onReceiveMessage: (msg, nxt) => {
              if (denied) return;
              const first = firstMessage;
              firstMessage = false;
              if (listener === 'peer') {
                // Every message, not just the first: a member speaks only for itself.
                const err = peerMessageError(method, msg, peer, this.nodeId);
                if (err) return deny(err, 'peer_from');
                return nxt(msg);
              }
              if (principal) {
                const err = this.authorize(principal, service, method, msg);
                if (err)
                  return deny(
                    err,
                    err.detail?.kind === 'READ_ONLY' ? 'read_only_key' : 'permission',
                  );
              }
              if (service === 'zeoraft.v1.Storage' && first) {
                const err = this.admitPerConnection(method, msg, conn());
                if (err) return deny(err, 'limit');
                if (method === 'Subscribe') {
                  const c = conn();
                  this.subscribers.set(c, (this.subscribers.get(c) ?? 0) + 1);
                  let released = false;
                  release = () => {
                    if (released) return;
                    released = true;
                    const n = (this.subscribers.get(c) ?? 1) - 1;
                    if (n <= 0) this.subscribers.delete(c);
                    else this.subscribers.set(c, n);
                  };
                }
                if (method === 'Finish' || method === 'Abort')
                  this.voted.delete(`${requestStorage(method, msg)}/${msg?.transactionId}`);
                if (method === 'Vote')
                  vote = {
                    key: `${requestStorage(method, msg)}/${msg?.transactionId}`,
                    conn: conn(),
                  };
              }
              nxt(msg);
            },
            onReceiveHalfClose: (nxt) => {
              if (!denied) nxt();
            },
            onCancel: () => release?.(),
          });
        },
        sendMessage: (msg, next) => {
          // A read-only key opens storages read-only, so clients with read-only fallback work read-only.
          if (method === 'Open' && principal?.role === 'read-only' && msg?.info)
            msg.info.readOnly = true;
          next(msg);
        },
        sendStatus: (status, next) => {
          release?.();
          if (vote && status.code === grpc.status.OK)
            this.voted.set(vote.key, {
              conn: vote.conn,
              expiresMs: Date.now() + this.perConnection.txnTimeoutMs,
            });
          vote = undefined;
          next(status);
        },
      });
    };
  }

  private admitPerConnection(method: string, msg: any, conn: string): RpcError | undefined {
    if (method === 'Subscribe') {
      const n = this.subscribers.get(conn) ?? 0;
      if (n >= this.perConnection.maxSubscribersPerConnection)
        return limit(
          'max_subscribers_per_connection',
          `${n} subscribe streams already open on this connection (ZEORAFT_MAX_SUBSCRIBERS_PER_CONNECTION)`,
        );
    }
    if (method === 'Vote') {
      this.dropExpiredVotes(Date.now());
      const n = this.votesOf(conn);
      if (
        n >= this.perConnection.maxTxnsPerConnection &&
        !this.voted.has(`${requestStorage(method, msg)}/${msg?.transactionId}`)
      )
        return limit(
          'max_txns_per_connection',
          `${n} voted transactions already open on this connection (ZEORAFT_MAX_TXNS_PER_CONNECTION)`,
        );
    }
    return undefined;
  }
}

/** The refusal of a removed member on the peer port (etcd answers it "410 Gone"). */
function removedMember(id: string): RpcError {
  return new RpcError(
    grpc.status.PERMISSION_DENIED,
    `node ${id} was removed from the cluster: its messages and calls are refused`,
  );
}
