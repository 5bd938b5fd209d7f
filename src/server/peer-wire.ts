/**
 * The byte format of the Raft message stream between members (see raft.proto, "The Raft message
 * stream"): a connection opens with STREAM_MAGIC, then carries frames of a 4-byte big-endian body
 * length, one kind byte and a protobuf body. Pure: no sockets here, so the parser is tested on
 * bytes alone.
 */
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import { PROTO_DIR } from '../util/proto-path';

/** The first bytes of a Raft stream connection (a gRPC connection opens with "PRI * HTTP/2.0"). */
export const STREAM_MAGIC = Buffer.from('ZRAFTS01');
/** The ALPN protocol of a Raft stream connection with peer TLS (gRPC negotiates "h2"). */
export const STREAM_ALPN = 'zeoraft-raft/1';
/** Header of a frame: body length (4 bytes, big-endian) and kind (1 byte). */
export const FRAME_HEADER_BYTES = 5;
/** The largest hello: refused from its length header before the body is buffered. */
export const HELLO_BYTES_MAX = 1024;
/**
 * The largest frame body once the sender is authenticated: one Envelope, whose Append holds at most
 * MAX_SIZE_PER_MSG of entry data, or a single entry as large as a transaction may be.
 */
export const FRAME_BYTES_MAX = 256 << 20;

export enum FrameKind {
  /** sender → receiver: PeerHello, the first frame. */
  Hello = 1,
  /** receiver → sender: PeerReady, the hello was accepted. */
  Ready = 2,
  /** receiver → sender: PeerRefusal, then the receiver closes. */
  Refusal = 3,
  /** sender → receiver: an Envelope of Raft messages. */
  Envelope = 4,
  /** sender → receiver: an 8-byte token the receiver sends back in a Pong (after what came before). */
  Ping = 5,
  /** receiver → sender: the Ping's token. */
  Pong = 6,
}

const root = protobuf.loadSync(path.join(PROTO_DIR, 'zeoraft/v1/raft.proto'));
export const EnvelopeT = root.lookupType('zeoraft.v1.raft.Envelope');
export const HelloT = root.lookupType('zeoraft.v1.raft.PeerHello');
export const RefusalT = root.lookupType('zeoraft.v1.raft.PeerRefusal');
const CONV: protobuf.IConversionOptions = { longs: Number, defaults: true, arrays: true };

export interface Hello {
  from: string;
  to: string;
  token: string;
}

export interface Refusal {
  code: number;
  message: string;
}

/** One frame: header and body in one buffer. */
export function frame(kind: FrameKind, body: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(FRAME_HEADER_BYTES + body.length);
  b.writeUInt32BE(body.length, 0);
  b[4] = kind;
  b.set(body, FRAME_HEADER_BYTES);
  return b;
}

export function encodeMessage(t: protobuf.Type, v: object): Uint8Array {
  return t.encode(v as protobuf.Message).finish();
}

export function decodeMessage<T>(t: protobuf.Type, body: Uint8Array): T {
  return t.toObject(t.decode(body), CONV) as T;
}

export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

/**
 * Splits a byte stream into frames. `limit()` is the largest body accepted now (it grows once the
 * sender is authenticated); a larger length header is an error before its body is buffered, so
 * what a reader holds is bounded by the limit plus one chunk.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private held = 0;

  constructor(private readonly limit: () => number) {}

  /** Bytes held for an incomplete frame. */
  get buffered(): number {
    return this.held;
  }

  /** Add bytes; returns the complete frames (throws FrameError on a frame over the limit). */
  push(data: Buffer): Array<{ kind: number; body: Buffer }> {
    this.chunks.push(data);
    this.held += data.length;
    const out: Array<{ kind: number; body: Buffer }> = [];
    for (;;) {
      if (this.held < FRAME_HEADER_BYTES) break;
      const head = this.peek(FRAME_HEADER_BYTES);
      const len = head.readUInt32BE(0);
      if (len > this.limit())
        throw new FrameError(`a frame of ${len} bytes is over the limit of ${this.limit()}`);
      if (this.held < FRAME_HEADER_BYTES + len) break;
      const all = this.take(FRAME_HEADER_BYTES + len);
      out.push({ kind: all[4], body: all.subarray(FRAME_HEADER_BYTES) });
    }
    return out;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0];
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined;
  }

  private take(n: number): Buffer {
    const first = this.peek(n);
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.held -= n;
    return out;
  }
}
