/**
 * Helpers for the client tests: real nodes (standalone or a three-node cluster) started through
 * the harness, and a way to find the leader.
 */
import { StorageRpc } from '../../src/client/rpc';
import { NodeProcess, eventually, freePort, rmDir, tmpDir } from '../harness';

export const text = (b: Buffer): string => b.toString();

export class Standalone {
  private constructor(
    readonly node: NodeProcess,
    readonly address: string,
    readonly dir: string,
  ) {}

  static async start(env: Record<string, string> = {}): Promise<Standalone> {
    const dir = tmpDir('client');
    const address = `127.0.0.1:${await freePort()}`;
    const node = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'solo',
      ZEORAFT_DATA_DIR: dir,
      ZEORAFT_LISTEN: address,
      ...env,
    });
    return new Standalone(node, address, dir);
  }

  async stop(): Promise<void> {
    await this.node.kill('SIGTERM');
    rmDir(this.dir);
  }
}

export interface ClusterMember {
  id: string;
  env: Record<string, string>;
  address: string;
  node: NodeProcess | undefined;
}

export class Cluster {
  private constructor(
    readonly members: ClusterMember[],
    readonly dir: string,
  ) {}

  get addresses(): string[] {
    return this.members.map((m) => m.address);
  }

  static async start(extraEnv: Record<string, string> = {}): Promise<Cluster> {
    const dir = tmpDir('client-cluster');
    const ports: { client: number; peer: number }[] = [];
    for (let i = 0; i < 3; i++) ports.push({ client: await freePort(), peer: await freePort() });
    const peers = ports
      .map((p, i) => `n${i + 1}=127.0.0.1:${p.peer}=127.0.0.1:${p.client}`)
      .join(',');
    const members: ClusterMember[] = ports.map((p, i) => ({
      id: `n${i + 1}`,
      address: `127.0.0.1:${p.client}`,
      node: undefined,
      env: {
        ZEORAFT_NODE_ID: `n${i + 1}`,
        ZEORAFT_DATA_DIR: `${dir}/n${i + 1}`,
        ZEORAFT_LISTEN: `127.0.0.1:${p.client}`,
        ZEORAFT_PEER_LISTEN: `127.0.0.1:${p.peer}`,
        ZEORAFT_PEERS: peers,
        ...extraEnv,
      },
    }));
    const c = new Cluster(members, dir);
    try {
      await Promise.all(members.map((m) => c.startMember(m)));
      await c.leader();
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  async startMember(m: ClusterMember): Promise<void> {
    m.node = await NodeProcess.start(m.env);
  }

  /** The member every live node agrees is the leader (waits for one). */
  async leader(timeoutMs = 15_000): Promise<ClusterMember> {
    return eventually(
      async () => {
        for (const m of this.members) {
          if (!m.node?.alive) continue;
          const rpc = new StorageRpc(m.address, { timeoutMs: 1000 });
          try {
            const s = await rpc.call('Status', {});
            if (s.role === 'leader') return m;
          } catch {
            // not answering yet
          } finally {
            rpc.close();
          }
        }
        return undefined;
      },
      timeoutMs,
      'a leader',
    );
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.node?.kill('SIGKILL')));
    rmDir(this.dir);
  }
}
