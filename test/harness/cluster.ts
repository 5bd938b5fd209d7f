/**
 * A local cluster of real node processes for tests. Every directed peer link A -> B goes through
 * a TCP proxy owned by the test, so a test can partition any set of links (connections are cut
 * and new ones refused) and heal them again. Clients talk to the nodes' client ports directly.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { StorageRpc } from '../../src/client/rpc';
import { NodeProcess, TEST_CLUSTER_KEY, eventually, freePort, rmDir, tmpDir } from './index';

export class LinkProxy {
  private server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  up = true;

  private constructor(
    readonly port: number,
    private readonly target: number,
  ) {
    this.server = net.createServer((client) => {
      if (!this.up) {
        client.destroy();
        return;
      }
      const upstream = net.connect(this.target, '127.0.0.1');
      this.sockets.add(client);
      this.sockets.add(upstream);
      const drop = (): void => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  static async start(target: number): Promise<LinkProxy> {
    const port = await freePort();
    const p = new LinkProxy(port, target);
    await new Promise<void>((resolve) => p.server.listen(port, '127.0.0.1', () => resolve()));
    return p;
  }

  cut(): void {
    this.up = false;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  heal(): void {
    this.up = true;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export interface MemberPorts {
  id: string;
  client: number;
  peer: number;
  http: number;
}

export class TestCluster {
  readonly dir = tmpDir('cluster');
  readonly members: MemberPorts[] = [];
  readonly procs = new Map<string, NodeProcess>();
  /** proxies.get(`${from}>${to}`) carries from's traffic to to's peer port. */
  readonly proxies = new Map<string, LinkProxy>();
  private readonly rpcs = new Map<string, StorageRpc>();
  private readonly pastOutput = new Map<string, string>();
  /** Members whose data directory was wiped: they come back as `existing` (join, no vote). */
  private readonly wiped = new Set<string>();

  constructor(readonly extraEnv: Record<string, string> = {}) {}

  static async start(n = 3, extraEnv: Record<string, string> = {}): Promise<TestCluster> {
    const c = new TestCluster(extraEnv);
    for (let i = 1; i <= n; i++)
      c.members.push({
        id: `n${i}`,
        client: await freePort(),
        peer: await freePort(),
        http: await freePort(),
      });
    for (const a of c.members)
      for (const b of c.members)
        if (a !== b) c.proxies.set(`${a.id}>${b.id}`, await LinkProxy.start(b.peer));
    try {
      await Promise.all(c.members.map((m) => c.startNode(m.id)));
      await c.leader();
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  member(id: string): MemberPorts {
    const m = this.members.find((x) => x.id === id);
    if (!m) throw new Error(`no member ${id}`);
    return m;
  }

  dataDir(id: string): string {
    return path.join(this.dir, id);
  }

  /** ZEORAFT_PEERS as seen from `id`: other members through the proxies. */
  peersFor(id: string, members = this.members): string {
    return members
      .map((m) => {
        const via = m.id === id ? m.peer : (this.proxies.get(`${id}>${m.id}`)?.port ?? m.peer);
        return `${m.id}=127.0.0.1:${via}=127.0.0.1:${m.client}`;
      })
      .join(',');
  }

  env(id: string, extra: Record<string, string> = {}): Record<string, string> {
    const m = this.member(id);
    return {
      ZEORAFT_NODE_ID: id,
      ZEORAFT_DATA_DIR: this.dataDir(id),
      ZEORAFT_LISTEN: `127.0.0.1:${m.client}`,
      ZEORAFT_PEER_LISTEN: `127.0.0.1:${m.peer}`,
      ZEORAFT_HTTP_LISTEN: `127.0.0.1:${m.http}`,
      ZEORAFT_PEERS: this.peersFor(
        id,
        this.members.filter((x) => !x.id.startsWith('x')),
      ),
      ZEORAFT_TICK_MS: '50',
      ZEORAFT_ELECTION_TICKS: '10',
      ZEORAFT_INITIAL_CLUSTER_STATE: this.wiped.has(id) ? 'existing' : 'new',
      ...this.extraEnv,
      ...extra,
    };
  }

  async startNode(id: string, extra: Record<string, string> = {}): Promise<NodeProcess> {
    const prev = this.procs.get(id);
    if (prev)
      this.pastOutput.set(
        id,
        `${this.pastOutput.get(id) ?? ''}${prev.output}\n--- restarted ---\n`,
      );
    const p = await NodeProcess.start(this.env(id, extra));
    this.procs.set(id, p);
    return p;
  }

  /** Start a node without waiting for it to be ready (it is expected to die; see NodeProcess.exit). */
  spawnNode(id: string, extra: Record<string, string> = {}): NodeProcess {
    const prev = this.procs.get(id);
    if (prev)
      this.pastOutput.set(
        id,
        `${this.pastOutput.get(id) ?? ''}${prev.output}\n--- restarted ---\n`,
      );
    const p = NodeProcess.spawn(this.env(id, extra));
    this.procs.set(id, p);
    return p;
  }

  rpc(id: string): StorageRpc {
    let r = this.rpcs.get(id);
    if (!r) {
      // With security keys on, the harness's own calls present the cluster key (an admin key).
      const key = this.extraEnv.ZEORAFT_KEYS_FILE
        ? (this.extraEnv.ZEORAFT_CLUSTER_KEY ?? TEST_CLUSTER_KEY)
        : undefined;
      r = new StorageRpc(`127.0.0.1:${this.member(id).client}`, {
        timeoutMs: 5000,
        metadata: key ? { 'x-zeoraft-key': key } : {},
      });
      this.rpcs.set(id, r);
    }
    return r;
  }

  alive(): string[] {
    return [...this.procs.entries()].filter(([, p]) => p.alive).map(([id]) => id);
  }

  /** The id of the leader that every live node in `among` agrees on. */
  async leader(among = this.alive(), timeoutMs = 15_000): Promise<string> {
    return eventually(
      async () => {
        const views = await Promise.all(among.map((id) => this.rpc(id).call('Status', {}, 1000)));
        const leaders = new Set(views.map((v) => v.leaderId));
        if (leaders.size !== 1) return undefined;
        const l = views[0].leaderId;
        return l && among.includes(l) ? l : undefined;
      },
      timeoutMs,
      `a leader among ${among.join(',')}`,
    );
  }

  async kill(id: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.procs.get(id)?.kill(signal);
    this.rpcs.get(id)?.close();
    this.rpcs.delete(id);
  }

  wipe(id: string): void {
    fs.rmSync(this.dataDir(id), { recursive: true, force: true });
    this.wiped.add(id);
  }

  /** Cut every link between `id` and the others (both directions). */
  isolate(id: string): void {
    for (const [k, p] of this.proxies) if (k.startsWith(`${id}>`) || k.endsWith(`>${id}`)) p.cut();
  }

  healAll(): void {
    for (const p of this.proxies.values()) p.heal();
  }

  /** Node logs of the last stopped cluster are kept in $TMPDIR/zeoraft-last-cluster for diagnosis. */
  async stop(): Promise<void> {
    const logs = path.join(os.tmpdir(), 'zeoraft-last-cluster');
    fs.rmSync(logs, { recursive: true, force: true });
    fs.mkdirSync(logs, { recursive: true });
    for (const [id, p] of this.procs)
      fs.appendFileSync(path.join(logs, `${id}.log`), (this.pastOutput.get(id) ?? '') + p.output);
    for (const r of this.rpcs.values()) r.close();
    this.rpcs.clear();
    await Promise.all([...this.procs.values()].map((p) => p.kill('SIGKILL')));
    await Promise.all([...this.proxies.values()].map((p) => p.close()));
    rmDir(this.dir);
  }
}
