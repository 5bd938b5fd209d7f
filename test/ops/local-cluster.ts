/**
 * Three real node processes on free loopback ports, configured with the same ZEORAFT_* variables
 * as `zeoraft cluster` and docker-compose.yml; stopped by PID.
 */
import * as http from 'node:http';
import { spawnSync } from 'node:child_process';
import { StorageRpc } from '../../src/client/rpc';
import { NodeProcess, eventually, freePort, rmDir, tmpDir } from '../harness';

export interface OpsNode {
  id: string;
  clientAddress: string;
  httpAddress: string;
  env: Record<string, string>;
  proc: NodeProcess;
}

export class LocalCluster {
  private constructor(
    readonly dir: string,
    readonly nodes: OpsNode[],
  ) {}

  /** Start `size` nodes as one Raft cluster and wait until each knows the same leader. */
  static async start(prefix: string, size = 3): Promise<LocalCluster> {
    const dir = tmpDir(prefix);
    const specs: { id: string; client: string; peer: string; http: string }[] = [];
    for (let i = 1; i <= size; i++)
      specs.push({
        id: `n${i}`,
        client: `127.0.0.1:${await freePort()}`,
        peer: `127.0.0.1:${await freePort()}`,
        http: `127.0.0.1:${await freePort()}`,
      });
    const peers = specs.map((s) => `${s.id}=${s.peer}=${s.client}`).join(',');
    const envs = specs.map((s) => ({
      ZEORAFT_NODE_ID: s.id,
      ZEORAFT_DATA_DIR: `${dir}/${s.id}`,
      ZEORAFT_LISTEN: s.client,
      ZEORAFT_PEER_LISTEN: s.peer,
      ZEORAFT_HTTP_LISTEN: s.http,
      ZEORAFT_PEERS: peers,
    }));
    const procs = await Promise.all(envs.map((env) => NodeProcess.start(env, 30_000)));
    const cluster = new LocalCluster(
      dir,
      specs.map((s, i) => ({
        id: s.id,
        clientAddress: s.client,
        httpAddress: s.http,
        env: envs[i],
        proc: procs[i],
      })),
    );
    await cluster.leader();
    return cluster;
  }

  get alive(): OpsNode[] {
    return this.nodes.filter((n) => n.proc.alive);
  }

  /** The leader every live node agrees on (waits for one), found with the Storage Status RPC. */
  async leader(timeoutMs = 30_000): Promise<OpsNode> {
    return eventually(
      async () => {
        const views = await Promise.all(this.alive.map((n) => status(n)));
        const leaders = new Set(views.map((v) => v.leaderId));
        if (leaders.size !== 1 || leaders.has('')) return undefined;
        return this.nodes.find((n) => n.id === views[0].leaderId && n.proc.alive);
      },
      timeoutMs,
      'all live nodes to agree on a leader',
    );
  }

  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.proc.kill('SIGTERM')));
    rmDir(this.dir);
  }
}

export async function status(n: OpsNode): Promise<{ role: string; leaderId: string }> {
  const rpc = new StorageRpc(n.clientAddress, { timeoutMs: 2000 });
  try {
    const r = await rpc.call('Status', {});
    return { role: r.role, leaderId: r.leaderId };
  } finally {
    rpc.close();
  }
}

export function httpGet(address: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(`http://${address}${path}`, { timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${address}${path} timed out`)));
    req.on('error', reject);
  });
}

/** One sample of a Prometheus text exposition (the first series with that name and labels). */
export function sample(body: string, name: string): number | undefined {
  for (const line of body.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) return Number(m[3]);
  }
  return undefined;
}

export async function scrape(n: OpsNode, name: string): Promise<number | undefined> {
  const r = await httpGet(n.httpAddress, '/metrics');
  return sample(r.body, name);
}

/** Whether an executable can run here (tools CI installs with apt: promtool, docker-compose). */
export function hasCommand(cmd: string, args: string[] = ['--version']): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}
