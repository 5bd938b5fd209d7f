/**
 * Helpers for the client tests: a real standalone node started through the harness (clusters
 * come from test/harness/cluster.ts).
 */
import { NodeProcess, freePort, rmDir, tmpDir } from '../harness';

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
