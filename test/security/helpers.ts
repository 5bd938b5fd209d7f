/** Shared helpers of the security tests: keyed clients, status assertions, HTTP fetches. */
import * as assert from 'node:assert/strict';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import * as protobuf from 'protobufjs';
import { PROTO_DIR } from '../../src/util/proto-path';
import * as grpc from '@grpc/grpc-js';
import { StorageRpc } from '../../src/client/rpc';
import { adminPackage } from '../../src/server/admin-service';
import type { Envelope } from '../../src/generated/zeoraft/v1/raft/Envelope';
import { PEER_AUTH_METADATA, PEER_ID_METADATA } from '../../src/server/peer-auth';
import {
  EnvelopeT,
  FrameKind,
  FrameReader,
  HelloT,
  RefusalT,
  STREAM_MAGIC,
  decodeMessage,
  encodeMessage,
  frame,
} from '../../src/server/peer-wire';

export function rpcWithKey(
  address: string,
  key?: string,
  credentials?: grpc.ChannelCredentials,
): StorageRpc {
  return new StorageRpc(address, {
    timeoutMs: 5000,
    metadata: key ? { 'x-zeoraft-key': key } : {},
    credentials,
  });
}

/** Call an Admin method with an optional key; resolves to the response or the ServiceError. */
export function adminCall(
  address: string,
  method: string,
  req: object,
  key?: string,
): Promise<{ err?: grpc.ServiceError; res?: any }> {
  const c = new (adminPackage().zeoraft.v1.Admin)(address, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  if (key) md.set('x-zeoraft-key', key);
  return new Promise((resolve) =>
    (c as any)[method](req, md, { deadline: Date.now() + 5000 }, (err: any, res: any) => {
      c.close();
      resolve({ err: err ?? undefined, res });
    }),
  );
}

/** Assert a promise rejects with a gRPC status code (ZeoRaftError carries it as grpcCode). */
export async function rejectsWith(
  p: Promise<unknown>,
  code: grpc.status,
  message?: RegExp,
): Promise<Error> {
  const e = (await p.then(
    () => assert.fail(`expected ${grpc.status[code]}, got success`),
    (x: unknown) => x,
  )) as Error & { grpcCode?: number; code?: number };
  const got = e.grpcCode ?? e.code;
  assert.equal(got, code, `expected ${grpc.status[code]}, got ${String(got)}: ${e.message}`);
  if (message) assert.match(e.message, message);
  return e;
}

export function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: 3000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

/** The contract's message types, for building (and breaking) request bytes. */
export function protoRoot(): protobuf.Root {
  const root = new protobuf.Root();
  root.loadSync(
    ['zeoraft/v1/storage.proto', 'zeoraft/v1/admin.proto'].map((f) => path.join(PROTO_DIR, f)),
    { keepCase: false },
  );
  root.resolveAll();
  return root;
}

export interface RawAnswer {
  code: number;
  details: string;
  /** Response bytes (unary OK) or number of stream messages. */
  bytes?: Buffer;
  messages?: number;
}

const identity = (b: Buffer): Buffer => b;

/** Send raw request bytes to a unary method: even invalid encodings reach the server. */
export function rawUnary(
  client: grpc.Client,
  methodPath: string,
  body: Buffer,
  md = new grpc.Metadata(),
  timeoutMs = 5000,
): Promise<RawAnswer> {
  return new Promise((resolve) =>
    client.makeUnaryRequest(
      methodPath,
      identity,
      identity,
      body,
      md,
      { deadline: Date.now() + timeoutMs },
      (err, res) =>
        resolve(
          err
            ? { code: err.code, details: err.details }
            : { code: grpc.status.OK, details: '', bytes: res },
        ),
    ),
  );
}

/** Send raw request bytes to a server-streaming method; cancel it after `cancelAfterMs`. */
export function rawStream(
  client: grpc.Client,
  methodPath: string,
  body: Buffer,
  cancelAfterMs = 300,
  md = new grpc.Metadata(),
): Promise<RawAnswer> {
  return new Promise((resolve) => {
    let messages = 0;
    const call = client.makeServerStreamRequest(methodPath, identity, identity, body, md, {
      deadline: Date.now() + 10_000,
    });
    const t = setTimeout(() => call.cancel(), cancelAfterMs);
    call.on('data', () => messages++);
    call.on('error', () => undefined);
    call.on('status', (s: grpc.StatusObject) => {
      clearTimeout(t);
      resolve({ code: s.code, details: s.details, messages });
    });
  });
}

/** Where a test speaks the Raft stream protocol: a peer port, its node, and TLS options if any. */
export interface StreamTarget {
  port: number;
  /** The node listening there (the hello's addressee). */
  id: string;
  tls?: tls.ConnectionOptions;
}

/**
 * Open a Raft stream as a member (or a forger) would: a hello naming the node and carrying the
 * token of metadata `md` (as peerCallMetadata makes it for gRPC calls), the envelopes, then a
 * ping. The answer is the receiver's refusal (its status code and message), OK once the pong came
 * back (the hello and every envelope were accepted), or UNAVAILABLE when the connection closed
 * without either (a TLS handshake refused, for one).
 */
export function raftStream(
  target: StreamTarget,
  md: grpc.Metadata,
  envs: Envelope[],
  timeoutMs = 5000,
): Promise<{ code: grpc.status; details: string }> {
  const from = String(md.get(PEER_ID_METADATA)[0] ?? '');
  const token = String(md.get(PEER_AUTH_METADATA)[0] ?? '');
  return new Promise((resolve) => {
    const s = target.tls
      ? tls.connect({ ...target.tls, host: '127.0.0.1', port: target.port })
      : net.connect(target.port, '127.0.0.1');
    let settled = false;
    const done = (code: grpc.status, details: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ code, details });
    };
    const timer = setTimeout(() => done(grpc.status.DEADLINE_EXCEEDED, 'no answer'), timeoutMs);
    const reader = new FrameReader(() => 1 << 20);
    s.on('data', (d: Buffer) => {
      for (const f of reader.push(d)) {
        if (f.kind === FrameKind.Refusal) {
          const r = decodeMessage<{ code: number; message: string }>(RefusalT, f.body);
          return done(r.code, r.message);
        }
        if (f.kind === FrameKind.Pong) return done(grpc.status.OK, '');
      }
    });
    s.on('error', (e) => done(grpc.status.UNAVAILABLE, String(e)));
    s.on('close', () => done(grpc.status.UNAVAILABLE, 'closed without an answer'));
    if (!target.tls) s.write(STREAM_MAGIC);
    s.write(frame(FrameKind.Hello, encodeMessage(HelloT, { from, to: target.id, token })));
    for (const e of envs) s.write(frame(FrameKind.Envelope, encodeMessage(EnvelopeT, e)));
    s.write(frame(FrameKind.Ping, Buffer.from('answer?!')));
  });
}
