/**
 * A gRPC listener whose TCP connections the node counts and caps. grpc-js has no connection
 * limit of its own, so the node accepts sockets on its own net.Server and hands each admitted one
 * to the grpc.Server through grpc-js's connection injector (TLS, HTTP/2, interceptors and server
 * options all apply as with bindAsync).
 */
import * as net from 'node:net';
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

  /** Listen on `address` (host:port) for `server`; resolves to the bound port. */
  async listen(
    server: grpc.Server,
    address: string,
    credentials: grpc.ServerCredentials,
  ): Promise<number> {
    const o = this.options;
    const injector = server.createConnectionInjector(credentials);
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
      injector.injectConnection(socket);
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
