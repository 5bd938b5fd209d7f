/**
 * The Raft message stream between members: protobuf Envelopes in length-prefixed frames over
 * plain TCP or TLS (peer-wire.ts), one connection per direction. The sender's side (StreamLink)
 * writes each Ready's messages to a peer as one frame, coalesces the frames of one event-loop turn
 * into one socket write, bounds what it holds for a peer that does not read, and reconnects with
 * backoff. The receiver's side (acceptStream) authenticates the connection's hello exactly as a
 * gRPC peer call is authenticated (Security.admitPeerStream) and checks every envelope's sender
 * and addressee, then steps each message into the Raft host, in order, without a queue.
 *
 * Snapshots and forwarded commands stay gRPC calls on the same peer port (their own connection),
 * so a large snapshot never delays heartbeats and appends.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Envelope } from '../generated/zeoraft/v1/raft/Envelope';
import type { Envelope__Output } from '../generated/zeoraft/v1/raft/Envelope';
import type { Logger } from '../util/log';
import { RpcError } from './errors';
import {
  EnvelopeT,
  FRAME_BYTES_MAX,
  FrameError,
  FrameKind,
  FrameReader,
  HELLO_BYTES_MAX,
  Hello,
  HelloT,
  Refusal,
  RefusalT,
  STREAM_MAGIC,
  decodeMessage,
  encodeMessage,
  frame,
} from './peer-wire';

/**
 * Bytes written to one peer and not yet taken by its socket. A peer that lets more pile up has
 * stopped reading (frozen, or far too slow): its connection is cut and the messages dropped, as
 * Raft allows; it is probed again once it reads. One frame larger than this is still sent when
 * nothing is waiting.
 */
export const SEND_BUFFER_BYTES_MAX = 16 << 20;
/** Reconnection backoff: from the first failure, doubling up to the maximum, reset once accepted. */
export const RECONNECT_BACKOFF_MIN_MS = 50;
export const RECONNECT_BACKOFF_MAX_MS = 1000;
/** TCP keepalive probes on a quiet Raft stream (a vanished peer's connection is dropped). */
export const STREAM_KEEPALIVE_MS = 10_000;
/** A received Raft stream with no frame for this long is closed (the sender reconnects). */
export const STREAM_IDLE_TIMEOUT_MS = 300_000;
/** How long a refused Raft stream waits for its sender to close before it is dropped. */
const REFUSED_LINGER_MS = 1000;
/** The frames a receiver sends (ready, pong, refusal) are small. */
const REPLY_BYTES_MAX = 4096;

function hostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  return {
    host: address.slice(0, i).replace(/^\[(.*)\]$/, '$1'),
    port: Number(address.slice(i + 1)),
  };
}

export interface StreamLinkOptions {
  self: string;
  peer: string;
  /** The peer's current peer-port address (undefined when unknown). */
  address: () => string | undefined;
  /** This node's cluster-key token, '' without a key. */
  token: string;
  /** With peer TLS: the connection options to the peer (verifying that it is `peer`). */
  tls?: () => tls.ConnectionOptions;
  /** A message batch was dropped (not sent): count it and tell Raft the peer is unreachable. */
  onFailure: (why: string) => void;
  log: Logger;
  nowMs: () => number;
}

/** This node's sending side of the Raft stream to one peer. */
export class StreamLink {
  private socket: net.Socket | undefined;
  private address = '';
  private accepted = false;
  private corked = false;
  private backoffMs = RECONNECT_BACKOFF_MIN_MS;
  private retryAtMs = 0;
  private closed = false;

  constructor(private readonly o: StreamLinkOptions) {}

  /** Send one envelope (one frame), after the frames already written. */
  send(env: Envelope): void {
    if (this.closed) return;
    const address = this.o.address();
    if (!address) return this.o.onFailure(`no address for peer ${this.o.peer}`);
    if (this.socket && address !== this.address) this.drop('its address changed');
    if (!this.socket) {
      if (this.o.nowMs() < this.retryAtMs)
        return this.o.onFailure(`reconnecting to ${this.o.peer} after a failure`);
      this.connect(address);
    }
    const s = this.socket!;
    const f = frame(FrameKind.Envelope, EnvelopeT.encode(env as never).finish());
    const waiting = s.writableLength;
    if (waiting > 0 && waiting + f.length > SEND_BUFFER_BYTES_MAX) {
      this.o.log.warn(
        { peer: this.o.peer, bytes: waiting },
        'peer is not reading its Raft stream: connection cut, messages dropped',
      );
      this.drop(`${waiting} bytes unread`);
      return this.o.onFailure(`peer ${this.o.peer} is not reading (${waiting} bytes waiting)`);
    }
    // Frames of one event-loop turn leave in one write.
    if (!this.corked) {
      this.corked = true;
      s.cork();
      process.nextTick(() => {
        this.corked = false;
        s.uncork();
      });
    }
    s.write(f);
  }

  /** Bytes waiting to be taken by the peer's socket (0 when not connected). */
  get waitingBytes(): number {
    return this.socket?.writableLength ?? 0;
  }

  private connect(address: string): void {
    const { host, port } = hostPort(address);
    const opts = this.o.tls?.();
    const s = opts ? tls.connect({ ...opts, host, port }) : net.connect(port, host);
    this.socket = s;
    this.address = address;
    this.accepted = false;
    s.setNoDelay(true);
    s.setKeepAlive(true, STREAM_KEEPALIVE_MS);
    if (!opts) s.write(STREAM_MAGIC);
    s.write(
      frame(
        FrameKind.Hello,
        encodeMessage(HelloT, { from: this.o.self, to: this.o.peer, token: this.o.token }),
      ),
    );
    const reader = new FrameReader(() => REPLY_BYTES_MAX);
    s.on('data', (d: Buffer) => {
      let frames;
      try {
        frames = reader.push(d);
      } catch (e) {
        return this.drop(String(e));
      }
      for (const f of frames) {
        if (f.kind === FrameKind.Ready) {
          this.accepted = true;
          this.backoffMs = RECONNECT_BACKOFF_MIN_MS;
        } else if (f.kind === FrameKind.Refusal) {
          const r = decodeMessage<Refusal>(RefusalT, f.body);
          this.o.log.warn(
            { peer: this.o.peer, code: grpc.status[r.code] ?? r.code, why: r.message },
            'peer refused the Raft stream',
          );
          return this.drop(`refused: ${r.message}`);
        }
      }
    });
    s.on('error', (e) =>
      this.o.log.debug({ peer: this.o.peer, error: String(e) }, 'Raft stream error'),
    );
    s.on('close', (hadError) => {
      if (this.socket !== s) return;
      this.socket = undefined;
      // An orderly close of an accepted stream with nothing left unsent (the receiver's idle
      // timeout) loses nothing: the next send reconnects at once.
      if (this.accepted && !hadError && s.writableLength === 0) return;
      this.failedConnection(this.accepted ? 'connection closed' : 'connection failed');
    });
  }

  /** Close the current connection (if any) and wait the backoff before the next. */
  private drop(why: string): void {
    const s = this.socket;
    if (!s) return;
    this.socket = undefined;
    s.destroy();
    this.failedConnection(why);
  }

  private failedConnection(why: string): void {
    this.retryAtMs = this.o.nowMs() + this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_BACKOFF_MAX_MS);
    if (!this.closed) this.o.onFailure(`Raft stream to ${this.o.peer}: ${why}`);
  }

  close(): void {
    this.closed = true;
    this.socket?.end();
    this.socket = undefined;
  }
}

export interface StreamAcceptor {
  /** Admit a hello (allow-list, authentication): the node it speaks for, or the refusal. */
  admit(
    address: string,
    hello: Hello,
    cert: tls.PeerCertificate | undefined,
  ): { id: string } | { error: RpcError };
  /** Why an envelope of an authenticated stream is refused; undefined when it is fine. */
  check(address: string, env: Envelope__Output, peer: string): RpcError | undefined;
  /** An accepted envelope: its messages, in order. */
  deliver(env: Envelope__Output): void;
  /** Open Raft streams received (for shutdown). */
  readonly open: Set<net.Socket>;
}

/** The receiving side of a Raft stream connection (after its magic, or its ALPN). */
export function acceptStream(
  socket: net.Socket,
  head: Buffer,
  started: () => void,
  acceptor: StreamAcceptor,
): void {
  const address = socket.remoteAddress ?? '';
  const cert =
    socket instanceof tls.TLSSocket && socket.authorized ? socket.getPeerCertificate() : undefined;
  let peer = '';
  let done = false;
  const reader = new FrameReader(() => (peer ? FRAME_BYTES_MAX : HELLO_BYTES_MAX));
  acceptor.open.add(socket);
  socket.setNoDelay(true);
  socket.setKeepAlive(true, STREAM_KEEPALIVE_MS);
  socket.setTimeout(STREAM_IDLE_TIMEOUT_MS, () => socket.destroy());
  socket.on('error', () => undefined);
  socket.on('close', () => acceptor.open.delete(socket));
  const refuse = (e: RpcError): void => {
    done = true;
    // The refusal is sent and the connection half-closed; a sender that does not close its side
    // is dropped shortly after.
    socket.setTimeout(REFUSED_LINGER_MS, () => socket.destroy());
    socket.end(
      frame(FrameKind.Refusal, encodeMessage(RefusalT, { code: e.code, message: e.message })),
    );
    socket.pause();
  };
  const onFrame = (kind: number, body: Buffer): void => {
    if (!peer) {
      if (kind !== FrameKind.Hello)
        return refuse(
          new RpcError(grpc.status.UNAUTHENTICATED, 'a Raft stream must open with a hello'),
        );
      const a = acceptor.admit(address, decodeMessage<Hello>(HelloT, body), cert);
      if ('error' in a) return refuse(a.error);
      peer = a.id;
      started();
      socket.write(frame(FrameKind.Ready));
      return;
    }
    switch (kind) {
      case FrameKind.Envelope: {
        const env = decodeMessage<Envelope__Output>(EnvelopeT, body);
        const err = acceptor.check(address, env, peer);
        if (err) return refuse(err);
        acceptor.deliver(env);
        return;
      }
      case FrameKind.Ping:
        socket.write(frame(FrameKind.Pong, body));
        return;
      default:
        return refuse(
          new RpcError(grpc.status.INVALID_ARGUMENT, `a frame of unknown kind ${kind}`),
        );
    }
  };
  const onData = (d: Buffer): void => {
    if (done) return;
    let frames;
    try {
      frames = reader.push(d);
    } catch (e) {
      return refuse(
        new RpcError(
          e instanceof FrameError ? grpc.status.RESOURCE_EXHAUSTED : grpc.status.INVALID_ARGUMENT,
          String((e as Error).message),
        ),
      );
    }
    for (const f of frames) {
      try {
        onFrame(f.kind, f.body);
      } catch (e) {
        // An undecodable body.
        refuse(new RpcError(grpc.status.INVALID_ARGUMENT, `a malformed frame: ${String(e)}`));
      }
      if (done) return;
    }
  };
  socket.on('data', onData);
  if (head.length) onData(head);
  socket.resume();
}
