/**
 * TLS for the node's listeners and its outbound connections.
 *
 * - Client listener: a server certificate and key; with `clientAuth`, clients must present a
 *   certificate signed by `ca` (optional client-certificate authentication).
 * - Peer listener and peer connections: mutual TLS with one cluster CA. The peer server requires a
 *   client certificate signed by the CA and every peer client presents its own, so a node whose
 *   certificate comes from another CA is refused in the handshake, in both directions. Beyond the
 *   CA, each side checks that the certificate names the node it speaks for (SAN URI
 *   `zeoraft-node:<id>`, see peer-auth.ts): a client certificate of the same CA is not a peer's.
 *
 * Files are read once at start; a node restart picks up rotated certificates.
 */
import * as fs from 'node:fs';
import type * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { serverIsPeer } from './peer-auth';

export interface TlsFiles {
  /** PEM certificate chain of this node. */
  cert: string;
  /** PEM private key of this node. */
  key: string;
  /** PEM CA bundle: verifies clients (client listener) or peers (peer listener and links). */
  ca?: string;
}

export interface ClientTlsConfig extends TlsFiles {
  /** Require client certificates signed by `ca`. */
  clientAuth?: boolean;
}

function read(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new Error(
      `invalid configuration: cannot read ${what} ${JSON.stringify(file)}: ${String(e)}`,
    );
  }
}

export function validateTls(client: ClientTlsConfig | undefined, peer: TlsFiles | undefined): void {
  if (client) {
    if (!client.cert || !client.key)
      throw new Error('invalid configuration: TLS needs both a certificate and a key');
    if (client.clientAuth && !client.ca)
      throw new Error(
        'invalid configuration: TLS client authentication needs a CA (ZEORAFT_TLS_CA)',
      );
  }
  if (peer && (!peer.cert || !peer.key || !peer.ca))
    throw new Error(
      'invalid configuration: peer TLS needs a certificate, a key and the cluster CA (ZEORAFT_PEER_TLS_CERT, _KEY, _CA)',
    );
}

/** Credentials of the client (Storage/Admin) listener. */
export function clientServerCredentials(t: ClientTlsConfig | undefined): grpc.ServerCredentials {
  if (!t) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(
    t.ca ? read(t.ca, 'TLS CA') : null,
    [{ cert_chain: read(t.cert, 'TLS certificate'), private_key: read(t.key, 'TLS key') }],
    t.clientAuth === true,
  );
}

/**
 * Credentials of this node's connections to peer `peerId`: trusts only the cluster CA, presents its
 * own certificate, and accepts only a server certificate naming `peerId` (the node id, not the
 * host name, is the peer's identity: addresses change, proxies sit in between).
 */
export function peerChannelCredentials(
  t: TlsFiles | undefined,
  peerId: string,
): grpc.ChannelCredentials {
  if (!t) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(
    read(t.ca ?? '', 'peer TLS CA'),
    read(t.key, 'peer TLS key'),
    read(t.cert, 'peer TLS certificate'),
    { checkServerIdentity: serverIsPeer(peerId) },
  );
}

/**
 * Credentials for this node's own calls to other nodes' client listeners (the join probe): trusts
 * the client CA (or the cluster CA), and presents the peer certificate in case clients must.
 */
export function internalClientCredentials(
  client: ClientTlsConfig | undefined,
  peer: TlsFiles | undefined,
): grpc.ChannelCredentials {
  if (!client) return grpc.credentials.createInsecure();
  const ca = client.ca ?? peer?.ca;
  const own = peer ?? client;
  return grpc.credentials.createSsl(
    ca ? read(ca, 'TLS CA') : null,
    read(own.key, 'TLS key'),
    read(own.cert, 'TLS certificate'),
  );
}

/**
 * TLS of the peer listener, which terminates TLS itself (its Raft streams and its gRPC calls
 * alike): mutual, with the cluster CA; a client without a certificate of that CA fails the handshake.
 */
export function peerListenerTls(t: TlsFiles): tls.TlsOptions {
  return {
    ca: read(t.ca ?? '', 'peer TLS CA'),
    cert: read(t.cert, 'peer TLS certificate'),
    key: read(t.key, 'peer TLS key'),
    requestCert: true,
    rejectUnauthorized: true,
  };
}

/**
 * TLS of this node's Raft stream to peer `peerId`, with the checks of peerChannelCredentials: only
 * the cluster CA, its own certificate presented, and the server's certificate must name `peerId`.
 */
export function peerStreamTls(t: TlsFiles, peerId: string, alpn: string): tls.ConnectionOptions {
  return {
    ca: read(t.ca ?? '', 'peer TLS CA'),
    cert: read(t.cert, 'peer TLS certificate'),
    key: read(t.key, 'peer TLS key'),
    ALPNProtocols: [alpn],
    checkServerIdentity: serverIsPeer(peerId),
  };
}
