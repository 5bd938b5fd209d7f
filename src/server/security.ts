/**
 * Access control of a node: address allow-lists, security keys with roles, peer authentication
 * (peer-auth.ts), the permissions of commands forwarded by followers, per-connection limits, and
 * the logging and metrics of everything refused.
 *
 * It is one gRPC server interceptor per listener (grpc-js ≥ 1.10 supports them), so the service
 * handlers never see a request that was refused, and one socket check for the HTTP and ZEO
 * listeners.
 *
 * Keys. A keys file (JSON) holds only the SHA-256 of each key, with a role and the storages it may
 * use. SHA-256 and not scrypt: keys are 256 random bits made by `zeoraft keys add`, so the hash
 * does not need to be slow to resist guessing (there is nothing to guess from: 2^256 keys), and a
 * slow KDF on every request would hand an attacker a cheap way to burn the node's CPU. A presented
 * key is hashed and compared against every stored hash with crypto.timingSafeEqual (no early exit).
 *
 * Roles: `read-only` (reads of its storages), `read-write` (reads and writes of its storages),
 * `admin` (read-write plus the Admin service). `storages: ["*"]` means every storage. The cluster
 * key (ZEORAFT_CLUSTER_KEY), presented as a client key, counts as admin (nodes use it to probe each
 * other's client listeners). Health and reflection need no key (they reveal nothing stored).
 *
 * A follower forwards writes to the leader with the caller they are made for (the client's key
 * principal, or the node itself); the leader checks the command against it and against its own
 * storage read-only flags before proposing it, as it would the client's own request.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { NodeMetrics } from '../metrics/metrics';
import type { Command } from '../storage/codec';
import type { Logger } from '../util/log';
import { RpcError, limit, readOnly, toServiceError } from './errors';
import { authenticateClaim, authenticatePeer, peerMessageError } from './peer-auth';
import type { ClientTlsConfig, TlsFiles } from './tls';
import { validateTls } from './tls';

export const KEY_METADATA = 'x-zeoraft-key';
export type Role = 'read-only' | 'read-write' | 'admin';
export const ROLES: readonly Role[] = ['read-only', 'read-write', 'admin'];
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

export interface KeyEntry {
  id: string;
  role: Role;
  storages: string[];
  /** "sha256:" + hex of the key. */
  hash: string;
  comment?: string;
  created?: string;
}

export interface KeysFile {
  keys: KeyEntry[];
}

/** A new random key: 256 bits, base64url, with a recognisable prefix. */
export function generateKey(): string {
  return `zrk_${randomBytes(32).toString('base64url')}`;
}

export function hashKey(key: string): string {
  return `sha256:${createHash('sha256').update(key, 'utf8').digest('hex')}`;
}

const digest = (key: string): Buffer => createHash('sha256').update(key, 'utf8').digest();

export function validateKeyEntry(k: KeyEntry, where: string): void {
  const fail = (m: string): never => {
    throw new Error(`invalid keys file ${where}: ${m}`);
  };
  if (!k || typeof k !== 'object') fail('an entry is not an object');
  if (!/^sha256:[0-9a-f]{64}$/.test(k.hash)) fail(`key ${k.id}: hash must be sha256:<64 hex>`);
  if (!ROLES.includes(k.role)) fail(`key ${k.id}: role must be one of ${ROLES.join(', ')}`);
  if (!Array.isArray(k.storages) || k.storages.length === 0)
    fail(`key ${k.id}: storages must list at least one storage (or "*")`);
}

export interface Principal {
  id: string;
  role: Role;
  storages: string[];
}

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
/** How the ZEO door's transaction ids begin (zeo/session.ts); its clients carry no key. */
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

/** The keys file, re-read when it changes (checked at most once per second), so added keys work without a restart. */
export class KeyStore {
  private entries: Array<{ principal: Principal; digest: Buffer }> = [];
  private mtimeMs = -1;
  private checkedAtMs = 0;

  constructor(
    readonly file: string,
    private readonly log?: Logger,
  ) {
    this.load();
  }

  private load(): void {
    const st = fs.statSync(this.file);
    if (st.mtimeMs === this.mtimeMs) return;
    const parsed = JSON.parse(fs.readFileSync(this.file, 'utf8')) as KeysFile;
    if (!parsed || !Array.isArray(parsed.keys))
      throw new Error(`invalid keys file ${this.file}: expected {"keys": [...]}`);
    for (const k of parsed.keys) validateKeyEntry(k, this.file);
    this.entries = parsed.keys.map((k) => ({
      principal: { id: k.id, role: k.role, storages: k.storages },
      digest: Buffer.from(k.hash.slice('sha256:'.length), 'hex'),
    }));
    this.mtimeMs = st.mtimeMs;
  }

  private refresh(): void {
    const now = Date.now();
    if (now - this.checkedAtMs < 1000) return;
    this.checkedAtMs = now;
    try {
      this.load();
    } catch (e) {
      // Keep the keys we have: a half-written file must not lock everybody out.
      this.log?.warn({ file: this.file, error: String(e) }, 'keys file not reloaded');
    }
  }

  /** The key's principal, or undefined. Compares against every entry in constant time per entry. */
  lookup(key: string): Principal | undefined {
    return this.lookupDigest(digest(key));
  }

  /** Like lookup, by the key's SHA-256. */
  lookupDigest(d: Buffer): Principal | undefined {
    this.refresh();
    let found: Principal | undefined;
    for (const e of this.entries) if (timingSafeEqual(d, e.digest) && !found) found = e.principal;
    return found;
  }
}

/** A CIDR allow-list (IPv4 and IPv6; IPv4-mapped IPv6 addresses match IPv4 entries). */
export class AllowList {
  private readonly list = new net.BlockList();
  readonly empty: boolean;

  constructor(readonly entries: string[]) {
    this.empty = entries.length === 0;
    for (const raw of entries) {
      const e = raw.trim();
      const [addr, bits] = e.split('/');
      const type = net.isIPv4(addr) ? 'ipv4' : net.isIPv6(addr) ? 'ipv6' : undefined;
      if (!type)
        throw new Error(`invalid configuration: ${JSON.stringify(e)} is not an IP address or CIDR`);
      const max = type === 'ipv4' ? 32 : 128;
      const prefix = bits === undefined ? max : Number(bits);
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > max)
        throw new Error(`invalid configuration: ${JSON.stringify(e)} has a bad prefix length`);
      this.list.addSubnet(addr, prefix, type);
    }
  }

  allows(address: string | undefined): boolean {
    if (this.empty) return true;
    if (!address) return false;
    let a = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
    if (mapped) a = mapped[1];
    if (net.isIPv4(a)) return this.list.check(a, 'ipv4');
    if (net.isIPv6(a)) return this.list.check(a, 'ipv6');
    return false;
  }
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
    return !p || p.storages.includes('*') || p.storages.includes(st);
  }

  /**
   * Why the leader must refuse a command forwarded by a follower for `caller`: the same storage
   * permissions as the client's own request (read-only storages, the key's role and storages), and
   * records outside any storage (membership addresses) only from the node itself. Undefined when
   * it may be proposed.
   */
  forwardedCommandError(
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
      if (!Security.mayUse(p, st))
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
