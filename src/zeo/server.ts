/**
 * The ZEO 5 listener of a node: lets ZODB's ClientStorage (Python) use a ZeoRaft cluster.
 *
 * Wire protocol (ZEO docs/protocol.rst, ZEO.asyncio.server): 4-byte big-endian sized messages.
 * The server speaks first with its protocol greeting, "M5" (msgpack encoding, version 5) or, with
 * ZEORAFT_ZEO_ENCODING=pickle, "Z5" (pickle, ZEO's default); the client answers with the protocol it
 * will use (a ZEO client echoes the server's encoding letter) or with "ruok", a status probe
 * answered with one JSON message before the connection closes. A server greeting Z5 also serves a
 * client answering M5; one greeting M5 serves only M5. Then messages are
 * `[msgid, flag, method, args]`; see marshal.ts, pickle-marshal.ts and session.ts.
 *
 * Failure handling follows ZEO: an undecodable message, an unknown method, a bad handshake, or an
 * error in a one-way call closes the connection (the client reconnects and verifies its cache);
 * an error in a two-way call is answered as an exception.
 */
import * as net from 'node:net';
import type { Reservation } from '../server/limits';
import { ZeoDisconnect, replyException, storageError } from './errors';
import { FrameDecoder, frame } from './framing';
import {
  FLAG_ERROR,
  FLAG_ONEWAY,
  HEARTBEAT_MSGID,
  MarshalError,
  PROTOCOL_M5,
  REPLY,
  RUOK,
  decodeMessage,
  encodeMessage,
} from './marshal';
import { PROTOCOL_Z5, decodePickledMessage, encodePickledMessage } from './pickle-marshal';
import { ReplyThen, ZeoSession, ZeoStats } from './session';
import type { ZeoNode } from './session-context';

/** One encoding of ZEO messages: msgpack (M5) or restricted pickle (Z5). */
interface Codec {
  decode(bytes: Uint8Array): ReturnType<typeof decodeMessage>;
  encode: typeof encodeMessage;
}
const MSGPACK: Codec = { decode: decodeMessage, encode: encodeMessage };
const PICKLE: Codec = { decode: decodePickledMessage, encode: encodePickledMessage };

/** Requests of one connection being served at once; a client exceeding it is cut off. */
const INFLIGHT_MAX = 1_000;
/** Bytes queued for a slow client before it is cut off (it reconnects and verifies its cache). */
const SEND_BUFFER_MAX_BYTES = 64 << 20;
/** Large one-way data (a blob sent to the client) waits for the send buffer to drain past this. */
const SEND_DRAIN_BYTES = 2 << 20;
/** A client must answer the greeting within this time. */
const HANDSHAKE_TIMEOUT_MS = 30_000;
/**
 * The greeting and "ruok" are short: a longer first message is not a ZEO client. It is refused
 * from its length header, so a connection that has not said who it is buffers at most this much.
 */
const HANDSHAKE_MAX_BYTES = 64;
/**
 * A message longer than this is charged against the node's transaction memory budget while it
 * arrives (from its length header on), so many connections sending large messages at once are
 * refused instead of growing the node's memory.
 */
const FRAME_CHARGED_MIN_BYTES = 1 << 20;

export interface ZeoServer {
  readonly port: number;
  /** The replicated ids of the transactions of this node's open sessions. */
  liveTxnIds(): Set<string>;
  close(): Promise<void>;
}

class ZeoConnection {
  private readonly decoder: FrameDecoder;
  private state: 'handshake' | 'open' | 'closed' = 'handshake';
  readonly session: ZeoSession;
  private inflight = 0;
  private readonly handshakeTimer: NodeJS.Timeout;
  /** The budget share of the large message being received, if any. */
  private frameMemory: Reservation | undefined;
  /** The encoding the client chose in its handshake. */
  private codec: Codec = MSGPACK;
  readonly label: string;

  constructor(
    private readonly node: ZeoNode,
    private readonly socket: net.Socket,
    statsFor: (st: string) => ZeoStats,
    private readonly onClosed: (c: ZeoConnection) => void,
  ) {
    this.label = `${socket.remoteAddress}:${socket.remotePort}`;
    this.decoder = new FrameDecoder(node.config.limits.maxMessageBytes, HANDSHAKE_MAX_BYTES);
    this.session = new ZeoSession(node, this, statsFor);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.close('socket error'));
    socket.on('close', () => this.close('closed by peer'));
    // No traffic either way (ZEO clients send a heartbeat every 60 s) for this long: close.
    socket.setTimeout(node.config.limits.idleTimeoutMs, () => {
      node.limits.exceeded(
        'idle_timeout_ms',
        `ZEO connection idle for ${node.config.limits.idleTimeoutMs} ms`,
        {
          client: this.label,
        },
      );
      this.close('idle');
    });
    this.handshakeTimer = setTimeout(() => this.close('no handshake'), HANDSHAKE_TIMEOUT_MS);
    this.write(Buffer.from(greeting(node), 'latin1'));
  }

  callAsync(method: string, args: unknown[]): void {
    this.write(this.codec.encode(0, true, method, args));
  }

  async callAsyncDrained(method: string, args: unknown[]): Promise<void> {
    this.write(this.codec.encode(0, true, method, args));
    if (this.state === 'closed' || this.socket.writableLength <= SEND_DRAIN_BYTES) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  pauseReading(paused: boolean): void {
    if (this.state === 'closed') return;
    if (paused) this.socket.pause();
    else this.socket.resume();
  }

  private write(payload: Buffer): void {
    if (this.state === 'closed') return;
    this.socket.write(frame(payload));
    if (this.socket.writableLength > SEND_BUFFER_MAX_BYTES)
      this.close(`client too slow: over ${SEND_BUFFER_MAX_BYTES} bytes queued`);
  }

  close(why: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.handshakeTimer);
    this.frameMemory?.release();
    this.node.log.debug({ client: this.label, why }, 'zeo: connection closed');
    this.session.close();
    this.socket.end();
    this.socket.destroySoon();
    this.onClosed(this);
  }

  private onData(chunk: Buffer): void {
    let messages: Buffer[];
    try {
      messages = this.decoder.push(chunk);
    } catch (e) {
      this.node.log.warn({ client: this.label, error: String(e) }, 'zeo: bad frame');
      return this.close('bad frame');
    }
    // Charge a large message being received (its length is known from its header) to the budget.
    const pending = this.decoder.pendingFrameBytes;
    if (pending !== (this.frameMemory?.bytes ?? 0)) {
      this.frameMemory?.release();
      this.frameMemory = undefined;
      if (pending >= FRAME_CHARGED_MIN_BYTES) {
        try {
          this.frameMemory = this.node.limits.reserveTxnMemory(pending, 'a large ZEO message');
        } catch (e) {
          return this.close(e instanceof Error ? e.message : String(e));
        }
      }
    }
    for (const m of messages) {
      if (this.state === 'closed') return;
      if (this.state === 'handshake') this.onHandshake(m);
      else this.onMessage(m);
    }
  }

  private onHandshake(m: Buffer): void {
    clearTimeout(this.handshakeTimer);
    const proto = m.length <= HANDSHAKE_MAX_BYTES ? m.toString('latin1') : '';
    if (proto === RUOK) {
      const status: Record<string, unknown> = {};
      for (const s of this.node.config.storages) status[s.name] = this.session.serverStatus(s.name);
      this.write(Buffer.from(JSON.stringify(status), 'utf8'));
      return this.close('ruok answered');
    }
    const pickle = this.node.config.zeoEncoding === 'pickle';
    if (proto !== PROTOCOL_M5 && !(pickle && proto === PROTOCOL_Z5)) {
      this.node.log.warn(
        { client: this.label, handshake: m.subarray(0, HANDSHAKE_MAX_BYTES).toString('hex') },
        pickle
          ? 'zeo: bad handshake (this server speaks Z5 and M5: pickle or msgpack, ZEO 5)'
          : 'zeo: bad handshake (this server speaks M5: msgpack, ZEO 5; ZEORAFT_ZEO_ENCODING=pickle adds Z5)',
      );
      return this.close('bad handshake');
    }
    this.codec = proto === PROTOCOL_Z5 ? PICKLE : MSGPACK;
    this.state = 'open';
  }

  private onMessage(bytes: Buffer): void {
    let msg;
    try {
      msg = this.codec.decode(bytes);
    } catch (e) {
      if (!(e instanceof MarshalError)) throw e;
      this.node.log.warn({ client: this.label, error: e.message }, 'zeo: bad message');
      return this.close('bad message');
    }
    if (msg.msgid === HEARTBEAT_MSGID || msg.method === REPLY) return; // keep-alive
    const oneWay = msg.flag === FLAG_ONEWAY;
    const handler = this.session.handler(msg.method);
    if (!handler) {
      this.node.log.warn(
        { client: this.label, method: msg.method.slice(0, 100) },
        this.session.registered ? 'zeo: unknown method' : 'zeo: call before register',
      );
      return this.close('invalid method');
    }
    if (this.inflight >= INFLIGHT_MAX) return this.close('too many requests in flight');
    let result: unknown;
    try {
      result = handler(msg.args);
    } catch (e) {
      return this.fail(msg.msgid, oneWay, msg.method, e);
    }
    if (result instanceof Promise) {
      this.inflight++;
      result.then(
        (r: unknown) => {
          this.inflight--;
          if (!oneWay) this.reply(msg.msgid, r);
        },
        (e: unknown) => {
          this.inflight--;
          this.fail(msg.msgid, oneWay, msg.method, e);
        },
      );
    } else if (!oneWay) this.reply(msg.msgid, result);
  }

  private reply(msgid: unknown, result: unknown): void {
    if (result instanceof ReplyThen) {
      this.write(this.codec.encode(msgid, 0, REPLY, result.result));
      result.after();
    } else this.write(this.codec.encode(msgid, 0, REPLY, result ?? null));
  }

  private fail(msgid: unknown, oneWay: boolean, method: string, e: unknown): void {
    if (this.state === 'closed') return;
    if (e instanceof ZeoDisconnect) {
      this.node.log.warn({ client: this.label, method, error: e.message }, 'zeo: disconnecting');
      return this.close(e.message);
    }
    let exc = replyException(e);
    if (!exc) {
      this.node.log.error(
        { client: this.label, method, error: String(e), stack: (e as Error)?.stack },
        'zeo: internal error',
      );
      exc = storageError(`internal error: ${e instanceof Error ? e.message : String(e)}`);
    }
    // One-way calls cannot answer: ZEO closes the connection ("no way to cry for help").
    if (oneWay) return this.close(`${method} failed: ${exc.message}`);
    this.write(this.codec.encode(msgid, FLAG_ERROR, REPLY, exc.reduce()));
  }
}

/** The greeting: the configured encoding's protocol. */
function greeting(node: ZeoNode): string {
  return node.config.zeoEncoding === 'pickle' ? PROTOCOL_Z5 : PROTOCOL_M5;
}

export async function startZeoServer(node: ZeoNode, listen: string): Promise<ZeoServer> {
  const stats = new Map<string, ZeoStats>();
  const statsFor = (st: string): ZeoStats => {
    let s = stats.get(st);
    if (!s) stats.set(st, (s = new ZeoStats()));
    return s;
  };
  const connections = new Set<ZeoConnection>();
  const maxConnections = node.config.limits.maxZeoConnections;
  const server = net.createServer((socket) => {
    if (!node.security.admitSocket('zeo', socket)) return;
    if (connections.size >= maxConnections) {
      node.limits.exceeded(
        'max_zeo_connections',
        `${connections.size} ZEO connections open (ZEORAFT_MAX_ZEO_CONNECTIONS)`,
        { client: `${socket.remoteAddress}:${socket.remotePort}` },
      );
      socket.destroy();
      return;
    }
    const gauge = (): void => node.metrics.connections.set({ listener: 'zeo' }, connections.size);
    connections.add(
      new ZeoConnection(node, socket, statsFor, (c) => {
        connections.delete(c);
        gauge();
      }),
    );
    gauge();
  });
  const i = listen.lastIndexOf(':');
  const host = listen.slice(0, i);
  const port = Number(listen.slice(i + 1));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as net.AddressInfo).port;
  node.log.info({ zeo: `${host}:${bound}` }, `zeo: listening (protocol ${greeting(node)})`);
  // A snapshot replaced the state: its transactions were never sent as invalidations, so every
  // client reconnects and verifies its cache (ZEO's cache verification) instead of missing them.
  const unlistenReplaced = node.store.onReplaced(() => {
    for (const c of [...connections]) c.close('state replaced by a snapshot; reconnect');
  });
  return {
    port: bound,
    liveTxnIds(): Set<string> {
      const ids = new Set<string>();
      for (const c of connections) {
        const id = c.session.txnId;
        if (id !== undefined) ids.add(id);
      }
      return ids;
    },
    async close(): Promise<void> {
      unlistenReplaced();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const c of [...connections]) c.close('node stopping');
      await closed;
    },
  };
}
