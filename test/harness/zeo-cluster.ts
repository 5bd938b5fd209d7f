/**
 * A three-node cluster of real node processes, each with a ZEO port, for the tests of the ZEO door
 * (test/zeo, and test/zodb's Python clients). Peers talk directly (no proxies); every member
 * gets the same extra settings. Stopped by PID (SIGKILL), its data directories removed.
 */
import { NodeProcess, freePort, rmDir, tmpDir } from './index';

export interface ZeoMember {
  id: string;
  client: number;
  peer: number;
  zeo: number;
  dir: string;
  proc?: NodeProcess;
}

export class ZeoCluster {
  /** Filled by start(), n1..n3 in order. */
  readonly members: ZeoMember[] = [];

  /**
   * @param name prefix of the members' data directories (`<name>-n1`, ...)
   * @param env settings every member gets besides its own id, ports, data directory and peers
   */
  constructor(
    private readonly name: string,
    private readonly env: Record<string, string> = {},
  ) {}

  /** Free ports and data directories for three members, then every member started. */
  async start(): Promise<void> {
    for (let i = 1; i <= 3; i++)
      this.members.push({
        id: `n${i}`,
        client: await freePort(),
        peer: await freePort(),
        zeo: await freePort(),
        dir: tmpDir(`${this.name}-n${i}`),
      });
    await Promise.all(this.members.map((m) => this.startMember(m)));
  }

  /** Start one member; resolves once it is ready. */
  private async startMember(m: ZeoMember): Promise<void> {
    m.proc = await NodeProcess.start({
      ZEORAFT_NODE_ID: m.id,
      ZEORAFT_DATA_DIR: m.dir,
      ZEORAFT_LISTEN: `127.0.0.1:${m.client}`,
      ZEORAFT_PEER_LISTEN: `127.0.0.1:${m.peer}`,
      ZEORAFT_ZEO_LISTEN: `127.0.0.1:${m.zeo}`,
      ZEORAFT_PEERS: this.members
        .map((x) => `${x.id}=127.0.0.1:${x.peer}=127.0.0.1:${x.client}`)
        .join(','),
      ...this.env,
    });
  }

  /** The members' ZEO addresses, comma-separated (a ZEO client's list of servers). */
  zeoAddresses(): string {
    return this.members.map((m) => `127.0.0.1:${m.zeo}`).join(',');
  }

  /** Kill every member (SIGKILL, by PID) and remove the data directories. */
  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => m.proc?.kill('SIGKILL')));
    for (const m of this.members) rmDir(m.dir);
  }
}
