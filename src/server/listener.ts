/**
 * A gRPC listener whose TCP connections the node counts and caps. grpc-js has no connection
 * limit of its own, so the node accepts sockets on its own net.Server and hands each admitted one
 * to the grpc.Server through grpc-js's connection injector (TLS, HTTP/2, interceptors and server
 * options all apply as with bindAsync).
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';

/** Server options bounding what one gRPC connection may hold, for the client and peer listeners. */
export interface ConnectionOptions {
  /** A connection with no call in progress for this long is closed (GOAWAY). */
  idleTimeoutMs: number;
  /** Concurrent calls (HTTP/2 streams) on one connection; more are refused by HTTP/2. */
  streamsPerConnectionMax: number;
  /** The server pings a connection this often when it is quiet... */
  keepaliveTimeMs: number;
  /** ...and closes it when the ping is not answered within this time (a frozen or gone client). */
  keepaliveTimeoutMs: number;
}

/** grpc-js server options for the bounds above. */
export function connectionServerOptions(o: ConnectionOptions): grpc.ServerOptions {
  return {
    'grpc.max_connection_idle_ms': o.idleTimeoutMs,
    'grpc.max_concurrent_streams': o.streamsPerConnectionMax,
    'grpc.keepalive_time_ms': o.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': o.keepaliveTimeoutMs,
  };
}

export interface CappedListenerOptions {
  /** Connections open at once; one past it is closed as it arrives (`onRefused`). */
  maxConnections: number;
  /**
   * A connection that has not started a call within this time is closed: gRPC clients connect
   * to make a call, so this only closes sockets that never speak gRPC (they would otherwise hold
   * a place under the cap for ever, since grpc-js's idle timeout starts with the HTTP/2 session).
   */
  firstCallTimeoutMs: number;
  onRefused: (open: number, socket: net.Socket) => void;
  onNoCall?: (socket: net.Socket) => void;
  onChange?: (open: number) => void;
}

/**
 * Connections of a listener that are not gRPC (the peer listener's Raft streams): recognised by
 * their first bytes, or with TLS by the ALPN protocol they negotiate, and handed to `take`.
 */
export interface Diversion {
  /** A plain connection that opens with these bytes is diverted (they are consumed). */
  magic: Buffer;
  /** A TLS connection that negotiates this ALPN protocol is diverted. */
  alpn: string;
  /**
   * TLS of the listener, terminated here for every connection (gRPC ones too, which then reach
   * the grpc.Server decrypted: `listen` must be given insecure credentials). Must verify clients
   * (`requestCert` and `rejectUnauthorized`) when the listener requires client certificates.
   */
  tls?: tls.TlsOptions;
  /**
   * A diverted connection, with the bytes that followed the magic. `started()` marks it as in
   * use (its first-call timer stops), as a gRPC connection's first call does.
   */
  take(socket: net.Socket, head: Buffer, started: () => void): void;
  /** A TLS handshake failed (a certificate of another CA, none, or not TLS at all). */
  onTlsError?(error: Error, socket: net.Socket): void;
}

/**
 * The TCP side of a gRPC listener: counts connections, caps them, and closes those that never
 * start a call. Pass `interceptor` to the grpc.Server (first, so it sees every call), then
 * `listen`.
 */
export class CappedListener {
  /** Open sockets by "address:port"; the timer is set until the connection's first call. */
  private readonly sockets = new Map<string, { socket: net.Socket; timer?: NodeJS.Timeout }>();
  private listener: net.Server | undefined;

  constructor(private readonly options: CappedListenerOptions) {}

  /** Marks a connection as speaking gRPC at its first call. */
  readonly interceptor: grpc.ServerInterceptor = (_descriptor, call) => {
    const c = call.getConnectionInfo();
    const entry = this.sockets.get(`${c.remoteAddress}:${c.remotePort}`);
    if (entry?.timer) {
      clearTimeout(entry.timer);
      entry.timer = undefined;
    }
    return new grpc.ServerInterceptingCall(call);
  };

  get connections(): number {
    return this.sockets.size;
  }

  /**
   * Listen on `address` (host:port) for `server`, diverting some connections to `divert`;
   * resolves to the bound port.
   */
  async listen(
    server: grpc.Server,
    address: string,
    credentials: grpc.ServerCredentials,
    divert?: Diversion,
  ): Promise<number> {
    const o = this.options;
    const injector = server.createConnectionInjector(credentials);
    const route = divert ? this.router(divert, injector) : undefined;
    const listener = net.createServer((socket) => {
      if (this.sockets.size >= o.maxConnections) {
        o.onRefused(this.sockets.size, socket);
        socket.destroy();
        return;
      }
      const key = `${socket.remoteAddress}:${socket.remotePort}`;
      const timer = setTimeout(() => {
        o.onNoCall?.(socket);
        // Reset, not destroy: the HTTP/2 session holds the socket's handle, and destroy() alone
        // leaves the connection open.
        socket.resetAndDestroy();
      }, o.firstCallTimeoutMs);
      this.sockets.set(key, { socket, timer });
      o.onChange?.(this.sockets.size);
      socket.once('close', () => {
        clearTimeout(this.sockets.get(key)?.timer);
        this.sockets.delete(key);
        o.onChange?.(this.sockets.size);
      });
      if (route) route(socket, key);
      else injector.injectConnection(socket);
    });
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i).replace(/^\[(.*)\]$/, '$1');
    const port = Number(address.slice(i + 1));
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(port, host, () => {
        listener.off('error', reject);
        resolve();
      });
    });
    this.listener = listener;
    return (listener.address() as net.AddressInfo).port;
  }

  /** Sends each new connection to `divert.take` or to gRPC. */
  private router(
    divert: Diversion,
    injector: { injectConnection(socket: net.Socket): void },
  ): (socket: net.Socket, key: string) => void {
    const started = (key: string) => (): void => {
      const entry = this.sockets.get(key);
      if (entry?.timer) {
        clearTimeout(entry.timer);
        entry.timer = undefined;
      }
    };
    if (divert.tls) {
      const secure = tls.createServer({ ...divert.tls, ALPNProtocols: [divert.alpn, 'h2'] });
      secure.on('secureConnection', (t: tls.TLSSocket) => {
        if (t.alpnProtocol === divert.alpn)
          divert.take(t, Buffer.alloc(0), started(`${t.remoteAddress}:${t.remotePort}`));
        else injector.injectConnection(t);
      });
      secure.on('tlsClientError', (e, t) => {
        divert.onTlsError?.(e, t);
        t.destroy();
      });
      return (socket) => void secure.emit('connection', socket);
    }
    const magic = divert.magic;
    return (socket, key) => {
      let head: Buffer = Buffer.alloc(0);
      const onData = (d: Buffer): void => {
        head = head.length ? Buffer.concat([head, d]) : d;
        const n = Math.min(head.length, magic.length);
        const matches = head.subarray(0, n).equals(magic.subarray(0, n));
        if (matches && head.length < magic.length) return;
        socket.off('data', onData);
        socket.pause();
        if (matches) return divert.take(socket, head.subarray(magic.length), started(key));
        // gRPC: the HTTP/2 session reads what was already received first.
        socket.unshift(head);
        injector.injectConnection(socket);
      };
      socket.on('data', onData);
    };
  }

  /** Stop accepting and close what the grpc.Server's shutdown left open. */
  close(): Promise<void> {
    const listener = this.listener;
    if (!listener) return Promise.resolve();
    return new Promise<void>((resolve) => {
      listener.close(() => resolve());
      for (const { socket, timer } of this.sockets.values()) {
        clearTimeout(timer);
        socket.resetAndDestroy();
      }
    });
  }
}
