/** The node's HTTP listener: /metrics (Prometheus), /livez (the process serves), /readyz (it can serve reads). */
import * as http from 'node:http';
import type { NodeMetrics } from '../metrics/metrics';

export interface Readiness {
  ready(): { ok: boolean; reason: string };
}

/** Open connections the HTTP listener takes; more are closed as they arrive. */
export const HTTP_MAX_CONNECTIONS = 256;
/** A request's headers must arrive within this, the whole request within HTTP_REQUEST_TIMEOUT_MS. */
export const HTTP_HEADERS_TIMEOUT_MS = 10_000;
export const HTTP_REQUEST_TIMEOUT_MS = 30_000;
/** How often the listener looks for connections past those deadlines. */
const HTTP_CHECK_INTERVAL_MS = 1_000;

export async function startHttp(
  hostPort: string,
  metrics: NodeMetrics,
  readiness: Readiness,
): Promise<http.Server> {
  const server = http.createServer(
    {
      headersTimeout: HTTP_HEADERS_TIMEOUT_MS,
      requestTimeout: HTTP_REQUEST_TIMEOUT_MS,
      connectionsCheckingInterval: HTTP_CHECK_INTERVAL_MS,
    },
    (req, res) => {
      const url = (req.url ?? '/').split('?')[0];
      if (url === '/metrics') {
        metrics.registry.metrics().then(
          (body) => {
            res.writeHead(200, { 'content-type': metrics.registry.contentType });
            res.end(body);
          },
          (e: unknown) => {
            res.writeHead(500);
            res.end(String(e));
          },
        );
      } else if (url === '/livez') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok\n');
      } else if (url === '/readyz') {
        const r = readiness.ready();
        res.writeHead(r.ok ? 200 : 503, { 'content-type': 'text/plain' });
        res.end(`${r.ok ? 'ok' : 'not ready'}: ${r.reason}\n`);
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found: try /metrics, /livez or /readyz\n');
      }
    },
  );
  // A socket that never sends a request holds no place for long (headersTimeout, checked every
  // second), and no more than HTTP_MAX_CONNECTIONS are open at once.
  server.maxConnections = HTTP_MAX_CONNECTIONS;
  server.on('drop', () => metrics.limitsExceeded.inc({ limit: 'http_connections_max' }));
  const { host, port } = splitHostPort(hostPort);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

export function splitHostPort(hp: string): { host: string; port: number } {
  const i = hp.lastIndexOf(':');
  return { host: hp.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(hp.slice(i + 1)) };
}
