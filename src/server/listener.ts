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

export interface CappedListener {
  readonly port: number;
  /** Connections open now. */
  readonly connections: number;
  /** Stop accepting; open connections are closed by the grpc.Server's shutdown. */
  close(): Promise<void>;
}

/**
 * Listen on `address` (host:port) for `server`, admitting at most `maxConnections` connections
 * at once; a connection past the cap is closed as it arrives and `onRefused` is told.
 */
export async function listenCapped(
  server: grpc.Server,
  address: string,
  credentials: grpc.ServerCredentials,
  maxConnections: number,
  hooks: {
    onRefused: (open: number, socket: net.Socket) => void;
    onChange?: (open: number) => void;
  },
): Promise<CappedListener> {
  const injector = server.createConnectionInjector(credentials);
  const sockets = new Set<net.Socket>();
  const listener = net.createServer((socket) => {
    if (sockets.size >= maxConnections) {
      hooks.onRefused(sockets.size, socket);
      socket.destroy();
      return;
    }
    sockets.add(socket);
    hooks.onChange?.(sockets.size);
    socket.once('close', () => {
      sockets.delete(socket);
      hooks.onChange?.(sockets.size);
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
  return {
    port: (listener.address() as net.AddressInfo).port,
    get connections() {
      return sockets.size;
    },
    close: () =>
      new Promise<void>((resolve) => {
        listener.close(() => resolve());
        // Sockets the grpc.Server did not close (its shutdown timed out) go now.
        for (const s of sockets) s.destroy();
      }),
  };
}
