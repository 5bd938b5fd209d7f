/**
 * `zeoraft cluster`: a local cluster of N nodes on 127.0.0.1, one child process each, configured
 * through the same ZEORAFT_* variables the compose file sets. Ctrl-C stops them all.
 * Node i (1-based) listens on base+i (client), base+100+i (peer), base+200+i (http).
 * Peers authenticate with a random cluster key made on first start in DATA_DIR/cluster.key (mode
 * 0600) and reused on every restart.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hasPeerCert, makeCerts, tlsEnv } from './certs';

export interface ClusterOptions {
  nodes: number;
  dataDir: string;
  logLevel: string;
  basePort: number;
  /** TLS for clients and mutual TLS between the nodes, with certificates under dataDir/certs. */
  tls?: boolean;
  /** The peers' shared secret (clusterKey() makes one). */
  clusterKey?: string;
  /**
   * new (default): a node with an empty data directory bootstraps the cluster; existing: it joins
   * (runCluster says existing once any node has a log: a lost directory is then a lost disk).
   */
  initialClusterState?: 'new' | 'existing';
}

/** The cluster key in dataDir/cluster.key, made (256 random bits, hex, mode 0600) when absent. */
export function clusterKey(dataDir: string): { key: string; file: string; created: boolean } {
  const file = path.join(dataDir, 'cluster.key');
  if (fs.existsSync(file)) {
    const key = fs.readFileSync(file, 'utf8').split('\n')[0].trim();
    if (key.length < 16)
      throw new Error(`${file} does not hold a cluster key (delete it to make a new one)`);
    return { key, file, created: false };
  }
  fs.mkdirSync(dataDir, { recursive: true });
  const key = randomBytes(32).toString('hex');
  // 'wx': never overwrite a key another launcher just wrote.
  fs.writeFileSync(file, `${key}\n`, { mode: 0o600, flag: 'wx' });
  return { key, file, created: true };
}

export function clusterEnv(opts: ClusterOptions, i: number): Record<string, string> {
  const ids = Array.from({ length: opts.nodes }, (_, k) => k + 1);
  const peers = ids
    .map((k) => `n${k}=127.0.0.1:${opts.basePort + 100 + k}=127.0.0.1:${opts.basePort + k}`)
    .join(',');
  return {
    ZEORAFT_NODE_ID: `n${i}`,
    ZEORAFT_DATA_DIR: path.join(opts.dataDir, `node-${i}`),
    ZEORAFT_LISTEN: `127.0.0.1:${opts.basePort + i}`,
    ZEORAFT_PEER_LISTEN: `127.0.0.1:${opts.basePort + 100 + i}`,
    ZEORAFT_HTTP_LISTEN: `127.0.0.1:${opts.basePort + 200 + i}`,
    ZEORAFT_ZEO_LISTEN: `127.0.0.1:${opts.basePort + 1000 + i}`,
    ZEORAFT_PEERS: opts.nodes > 1 ? peers : '',
    ZEORAFT_INITIAL_CLUSTER_STATE: opts.initialClusterState ?? 'new',
    ZEORAFT_CLUSTER_KEY: opts.clusterKey ?? '',
    ZEORAFT_LOG_LEVEL: opts.logLevel,
    ...(opts.tls ? tlsEnv(path.join(opts.dataDir, 'certs'), `n${i}`) : {}),
  };
}

export async function runCluster(opts: ClusterOptions): Promise<void> {
  const main = path.join(__dirname, 'main.js');
  const children: ChildProcess[] = [];
  const ck = clusterKey(opts.dataDir);
  // A brand-new cluster bootstraps; once any node has a Raft log, a node without one lost its
  // data directory and must join (receive a snapshot) rather than vote with an empty log.
  const ids = Array.from({ length: opts.nodes }, (_, k) => k + 1);
  const started = ids.some((i) => fs.existsSync(path.join(opts.dataDir, `node-${i}`, 'raft')));
  opts = { ...opts, clusterKey: ck.key, initialClusterState: started ? 'existing' : 'new' };
  process.stdout.write(
    `peers authenticate with the cluster key in ${ck.file}${ck.created ? ' (new)' : ''}\n`,
  );
  if (opts.tls) {
    const certs = path.join(opts.dataDir, 'certs');
    const ids = Array.from({ length: opts.nodes }, (_, k) => `n${k + 1}`);
    // Certificates from before peer certificates named their node are made again.
    if (!ids.every((id) => hasPeerCert(certs, id))) makeCerts({ out: certs, nodes: ids });
    process.stdout.write(`TLS on: clients trust ${path.join(certs, 'ca.crt')}\n`);
  }
  for (let i = 1; i <= opts.nodes; i++) {
    const env = clusterEnv(opts, i);
    const child = spawn(process.execPath, [main, 'server'], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    children.push(child);
    process.stdout.write(
      `node n${i}: client ${env.ZEORAFT_LISTEN}  peer ${env.ZEORAFT_PEER_LISTEN}  zeo ${env.ZEORAFT_ZEO_LISTEN}  http http://${env.ZEORAFT_HTTP_LISTEN}/metrics  data ${env.ZEORAFT_DATA_DIR}  pid ${child.pid}\n`,
    );
    child.on('exit', (code, signal) =>
      process.stdout.write(`node n${i} exited (${signal ?? code})\n`),
    );
  }
  process.stdout.write('cluster running; Ctrl-C stops all nodes\n');
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    for (const c of children) if (running(c)) c.kill('SIGTERM');
    const force = setTimeout(
      () => children.forEach((c) => running(c) && c.kill('SIGKILL')),
      10_000,
    );
    Promise.all(
      children.map((c) =>
        !running(c) ? Promise.resolve() : new Promise((r) => c.once('exit', r)),
      ),
    ).then(() => {
      clearTimeout(force);
      process.exit(0);
    });
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

/** A child that exited by a signal (kill -9) has a signalCode and no exitCode. */
function running(c: ChildProcess): boolean {
  return c.exitCode === null && c.signalCode === null;
}
