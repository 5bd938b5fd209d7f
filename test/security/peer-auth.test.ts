/**
 * Peer authentication's decisions on their own (the real-process attacks are in peers.test.ts):
 * a token binds one node id to one key, a certificate speaks for the nodes it names, and a
 * message must come from the authenticated node and be addressed to this one.
 */
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import {
  PEER_AUTH_METADATA,
  authenticatePeer,
  certNodeIds,
  peerCallMetadata,
  peerMessageError,
  peerToken,
  serverIsPeer,
} from '../../src/server/peer-auth';

const KEY = 'a-cluster-key-of-enough-length';
const cert = (san: string): PeerCertificate => ({ subjectaltname: san }) as PeerCertificate;
const NODE_CERT = cert('DNS:localhost, IP Address:127.0.0.1, DNS:n1, URI:zeoraft-node:n1');
const CLIENT_CERT = cert('DNS:localhost, IP Address:127.0.0.1');

function result(r: ReturnType<typeof authenticatePeer>): string {
  return 'id' in r ? `ok ${r.id}` : `${grpc.status[r.error.code]} ${r.reason}`;
}

describe('peer authentication', () => {
  it('binds a token to one node id and one key', () => {
    assert.notEqual(peerToken(KEY, 'n1'), peerToken(KEY, 'n2'));
    assert.notEqual(peerToken(KEY, 'n1'), peerToken(`${KEY}x`, 'n1'));
    assert.equal(peerToken(KEY, 'n1'), peerToken(KEY, 'n1'));
    assert.ok(!peerToken(KEY, 'n1').includes(KEY), 'the key does not travel');
  });

  it('accepts a call only with the token of the node it names', () => {
    const cfg = { clusterKey: KEY, mtls: false };
    assert.equal(result(authenticatePeer(peerCallMetadata('n1', KEY), undefined, cfg)), 'ok n1');
    const swapped = peerCallMetadata('n2', KEY);
    swapped.set(PEER_AUTH_METADATA, peerToken(KEY, 'n1'));
    assert.equal(result(authenticatePeer(swapped, undefined, cfg)), 'UNAUTHENTICATED cluster_key');
    assert.equal(
      result(authenticatePeer(peerCallMetadata('n1', undefined), undefined, cfg)),
      'UNAUTHENTICATED cluster_key',
    );
    const truncated = peerCallMetadata('n1', KEY);
    truncated.set(PEER_AUTH_METADATA, peerToken(KEY, 'n1').slice(0, 10));
    assert.equal(
      result(authenticatePeer(truncated, undefined, cfg)),
      'UNAUTHENTICATED cluster_key',
    );
    assert.equal(
      result(authenticatePeer(new grpc.Metadata(), undefined, cfg)),
      'UNAUTHENTICATED peer_id',
    );
  });

  it('accepts a certificate only for the node it names, and no client certificate', () => {
    const cfg = { mtls: true };
    const md = (id: string): grpc.Metadata => peerCallMetadata(id, undefined);
    assert.equal(result(authenticatePeer(md('n1'), NODE_CERT, cfg)), 'ok n1');
    assert.equal(result(authenticatePeer(md('n2'), NODE_CERT, cfg)), 'UNAUTHENTICATED peer_cert');
    assert.equal(result(authenticatePeer(md('n1'), CLIENT_CERT, cfg)), 'UNAUTHENTICATED peer_cert');
    assert.equal(result(authenticatePeer(md('n1'), undefined, cfg)), 'UNAUTHENTICATED peer_cert');
    // With both, both must hold.
    const both = { clusterKey: KEY, mtls: true };
    assert.equal(result(authenticatePeer(peerCallMetadata('n1', KEY), NODE_CERT, both)), 'ok n1');
    assert.equal(
      result(
        authenticatePeer(peerCallMetadata('n1', 'another-key-of-some-length'), NODE_CERT, both),
      ),
      'UNAUTHENTICATED cluster_key',
    );
    assert.equal(
      result(authenticatePeer(peerCallMetadata('n1', KEY), CLIENT_CERT, both)),
      'UNAUTHENTICATED peer_cert',
    );
  });

  it('reads node names from SAN URIs only', () => {
    assert.deepEqual(certNodeIds(NODE_CERT), ['n1']);
    assert.deepEqual(certNodeIds(CLIENT_CERT), []);
    assert.deepEqual(certNodeIds(cert('DNS:zeoraft-node:n1, URI:https://n1')), []);
    assert.deepEqual(certNodeIds(undefined), []);
    assert.equal(serverIsPeer('n1')('127.0.0.1', NODE_CERT), undefined);
    assert.ok(serverIsPeer('n2')('127.0.0.1', NODE_CERT) instanceof Error);
  });

  it('refuses a message not from the authenticated node or not addressed to this one', () => {
    const m = (from: string, to = 'n2') => ({ from, to });
    const denied = (e: unknown): boolean =>
      (e as { code?: number } | undefined)?.code === grpc.status.PERMISSION_DENIED;
    assert.equal(
      peerMessageError('Stream', { from: 'n1', messages: [m('n1')] }, 'n1', 'n2'),
      undefined,
    );
    assert.ok(
      denied(peerMessageError('Stream', { from: 'n1', messages: [m('n1'), m('n3')] }, 'n1', 'n2')),
    );
    assert.ok(denied(peerMessageError('Stream', { from: 'n3', messages: [] }, 'n1', 'n2')));
    assert.ok(
      denied(peerMessageError('Stream', { from: 'n1', messages: [m('n1', 'n3')] }, 'n1', 'n2')),
    );
    assert.equal(peerMessageError('Snapshot', { message: m('n1') }, 'n1', 'n2'), undefined);
    assert.equal(peerMessageError('Snapshot', { chunk: Buffer.alloc(1) }, 'n1', 'n2'), undefined);
    assert.ok(denied(peerMessageError('Snapshot', { message: m('n3') }, 'n1', 'n2')));
    assert.equal(peerMessageError('Forward', { from: 'n1' }, 'n1', 'n2'), undefined);
    assert.ok(denied(peerMessageError('Forward', { from: 'n3' }, 'n1', 'n2')));
  });
});
