/**
 * Who is at the other end of a peer call. Every call on the Raft peer listener names its sending
 * node (metadata `x-zeoraft-peer`) and proves it:
 *
 * - cluster key: `x-zeoraft-peer-auth` carries HMAC-SHA256(cluster key, "zeoraft-peer-v1:" + id),
 *   compared in constant time. The key itself never crosses the wire, and the token binds the id:
 *   a token made for n1 does not authenticate n2.
 * - peer mutual TLS: the certificate (already verified against the cluster CA in the handshake)
 *   must name the node in a SAN URI `zeoraft-node:<id>`. `zeoraft certs` puts that name only in
 *   node certificates, so a client certificate of the same CA cannot stand in for a peer.
 *
 * With both configured, both must hold. Every Raft message, snapshot and forwarded command on an
 * authenticated call must then come `from` that node and be addressed to this one: a member can
 * speak only for itself. Without either (`--insecure-peers`) the named id is taken on trust, and
 * anyone who reaches the peer port can replace the cluster's data.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { RpcError } from './errors';

export const PEER_ID_METADATA = 'x-zeoraft-peer';
export const PEER_AUTH_METADATA = 'x-zeoraft-peer-auth';
/** A peer certificate names its node in a SAN URI of this scheme: `zeoraft-node:n1`. */
export const PEER_CERT_URI_SCHEME = 'zeoraft-node';
/** Shorter cluster keys are refused at start: the key is the whole of the peers' security. */
export const CLUSTER_KEY_CHARS_MIN = 16;

/** The token that binds `nodeId` to the cluster key. */
export function peerToken(clusterKey: string, nodeId: string): string {
  return createHmac('sha256', clusterKey).update(`zeoraft-peer-v1:${nodeId}`).digest('base64url');
}

/** The metadata a node attaches to each of its calls to a peer. */
export function peerCallMetadata(nodeId: string, clusterKey: string | undefined): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set(PEER_ID_METADATA, nodeId);
  if (clusterKey) md.set(PEER_AUTH_METADATA, peerToken(clusterKey, nodeId));
  return md;
}

/** The node ids a certificate names (SAN URIs `zeoraft-node:<id>`). */
export function certNodeIds(cert: Pick<PeerCertificate, 'subjectaltname'> | undefined): string[] {
  const prefix = `URI:${PEER_CERT_URI_SCHEME}:`;
  return (cert?.subjectaltname ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.startsWith(prefix))
    .map((s) => s.slice(prefix.length));
}

export interface PeerAuthConfig {
  clusterKey?: string;
  /** Peer mutual TLS is on: the handshake verified the certificate against the cluster CA. */
  mtls: boolean;
}

export type PeerAuthResult = { id: string } | { error: RpcError; reason: string };

/** Authenticate a peer call from its metadata and its TLS client certificate. */
export function authenticatePeer(
  md: grpc.Metadata,
  cert: PeerCertificate | undefined,
  cfg: PeerAuthConfig,
): PeerAuthResult {
  const claimed = md.get(PEER_ID_METADATA)[0];
  const token = md.get(PEER_AUTH_METADATA)[0];
  return authenticateClaim(
    typeof claimed === 'string' ? claimed : '',
    typeof token === 'string' ? token : '',
    cert,
    cfg,
  );
}

/**
 * Authenticate a peer that claims to be node `claimed` with `token` (its cluster-key token, '' if
 * none) and its TLS client certificate: the decision for gRPC calls and Raft stream connections.
 */
export function authenticateClaim(
  claimed: string,
  token: string,
  cert: PeerCertificate | undefined,
  cfg: PeerAuthConfig,
): PeerAuthResult {
  const unauthenticated = (m: string, reason: string): PeerAuthResult => ({
    error: new RpcError(grpc.status.UNAUTHENTICATED, m),
    reason,
  });
  if (!claimed)
    return unauthenticated(
      `a peer call must name its node (metadata ${PEER_ID_METADATA})`,
      'peer_id',
    );
  if (cfg.mtls) {
    const names = certNodeIds(cert);
    if (names.length === 0)
      return unauthenticated(
        `the certificate names no ZeoRaft node (SAN URI ${PEER_CERT_URI_SCHEME}:<id>): only node certificates are accepted between peers`,
        'peer_cert',
      );
    if (!names.includes(claimed))
      return unauthenticated(
        `the certificate names node ${names.join(', ')}, the call claims to be ${claimed}`,
        'peer_cert',
      );
  }
  if (cfg.clusterKey) {
    const want = Buffer.from(peerToken(cfg.clusterKey, claimed));
    const presented = Buffer.from(token);
    // Equal lengths before timingSafeEqual; the length of a valid token is no secret.
    const ok = presented.length === want.length && timingSafeEqual(presented, want);
    if (!ok) return unauthenticated('wrong or missing cluster key', 'cluster_key');
  }
  return { id: claimed };
}

interface WireMessage {
  from?: string;
  to?: string;
}

/**
 * Why a message received on a peer call authenticated as `peer` must be refused: its sender is not
 * that peer, or it is not addressed to this node. Undefined when it is fine.
 */
export function peerMessageError(
  method: string,
  msg: any,
  peer: string,
  self: string,
): RpcError | undefined {
  const check = (m: WireMessage | null | undefined, what: string): RpcError | undefined => {
    if (!m) return undefined;
    if (m.from !== peer)
      return new RpcError(
        grpc.status.PERMISSION_DENIED,
        `${what} from ${JSON.stringify(m.from)} on a call authenticated as node ${peer}: a peer speaks only for itself`,
      );
    if (m.to !== undefined && m.to !== self)
      return new RpcError(
        grpc.status.PERMISSION_DENIED,
        `${what} addressed to ${JSON.stringify(m.to)} sent to node ${self}`,
      );
    return undefined;
  };
  switch (method) {
    case 'Stream': {
      const env = msg as { from?: string; messages?: WireMessage[] };
      const e = check({ from: env?.from }, 'an envelope');
      if (e) return e;
      for (const m of env?.messages ?? []) {
        const err = check(m, 'a Raft message');
        if (err) return err;
      }
      return undefined;
    }
    case 'Snapshot':
      return check((msg as { message?: WireMessage })?.message, 'a snapshot');
    case 'Forward':
      return check({ from: (msg as WireMessage)?.from }, 'a forwarded command');
    default:
      return undefined;
  }
}

/** For this node's connections to a peer: the server's certificate must name `peerId`. */
export function serverIsPeer(
  peerId: string,
): (hostname: string, cert: PeerCertificate) => Error | undefined {
  return (_hostname, cert) =>
    certNodeIds(cert).includes(peerId)
      ? undefined
      : new Error(
          `peer ${peerId}'s certificate does not name it (SAN URI ${PEER_CERT_URI_SCHEME}:${peerId})`,
        );
}
