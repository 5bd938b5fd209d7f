/**
 * ZeoRaft under test: a three-node cluster of real `zeoraft server` processes on free loopback
 * ports with data in a temp dir, default settings (fsync on, 50 ms ticks, 10-tick elections, peers
 * authenticated with a cluster key made for the run).
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { StorageRpc } from '../../src/client/rpc';
import { ConflictError, NotFoundError } from '../../src/client/errors';
import { Z64, p64, u64 } from '../../src/util/ids';
import { Child, makeTempDir, pickFreePort, removeDir, waitFor } from './proc';
import type { AckId, Conn, Target } from './target';

const CLI = path.resolve(__dirname, '../../src/cli/main.js');
const NODE_READY_TIMEOUT_MS = 30_000;
/** A standalone node opening a store with a long history (loading its state) may take longer. */
const STANDALONE_READY_TIMEOUT_MS = 300_000;
/** A standalone node counts as settled below this share of one CPU over two such windows. */
const STANDALONE_IDLE_CPU_FRACTION = 0.2;
const STANDALONE_IDLE_WINDOW_MS = 500;
const LEADER_TIMEOUT_MS = 20_000;
const RPC_TIMEOUT_MS = 5000;
/** Attempts of a put whose tracked serial turned out stale (e.g. after an unknown outcome). */
const PUT_ATTEMPTS = 3;
/** Keys map to OIDs from here, clear of the root (OID 0). */
const OID_BASE = 1n << 32n;

export function oidOf(key: number): Buffer {
  return p64(OID_BASE + BigInt(key));
}

interface Member {
  id: string;
  clientPort: number;
  peerPort: number;
  httpPort: number;
  /** The ZEO listener's port (ZeoRaftOptions.zeo), else 0. */
  zeoPort: number;
  child?: Child;
}

export interface ZeoRaftOptions {
  /** Run nodes under `node --cpu-prof` writing profiles here (stop() then uses SIGTERM). */
  cpuProfileDir?: string;
  /** Open each node's ZEO listener on a free port (see zeoAddress). */
  zeo?: boolean;
}

export class ZeoRaftTarget implements Target {
  readonly name = 'zeoraft' as const;
  readonly nodeCount = 3;
  readonly maxBatch = 1000;
  readonly dir = makeTempDir('zeoraft');
  private readonly members: Member[] = [];
  private readonly rpcs = new Map<string, StorageRpc>();
  /** The serial each key was last written with, as far as this process knows. */
  readonly serials = new Map<number, Buffer>();
  /** Puts that found their tracked serial stale and retried with the current one. */
  staleSerialRetries = 0;
  /** Peer authentication, as every deployment has it. */
  private readonly clusterKey = randomBytes(32).toString('hex');

  constructor(private readonly options: ZeoRaftOptions = {}) {}

  async start(): Promise<void> {
    for (let i = 1; i <= this.nodeCount; i++)
      this.members.push({
        id: `n${i}`,
        clientPort: await pickFreePort(),
        peerPort: await pickFreePort(),
        httpPort: await pickFreePort(),
        zeoPort: this.options.zeo ? await pickFreePort() : 0,
      });
    await Promise.all(this.members.map((_, i) => this.restart(i)));
    await this.leader();
  }

  private env(m: Member): Record<string, string> {
    const peers = this.members
      .map((p) => `${p.id}=127.0.0.1:${p.peerPort}=127.0.0.1:${p.clientPort}`)
      .join(',');
    return {
      ZEORAFT_NODE_ID: m.id,
      ZEORAFT_DATA_DIR: path.join(this.dir, m.id),
      ZEORAFT_LISTEN: `127.0.0.1:${m.clientPort}`,
      ZEORAFT_PEER_LISTEN: `127.0.0.1:${m.peerPort}`,
      ZEORAFT_HTTP_LISTEN: `127.0.0.1:${m.httpPort}`,
      ZEORAFT_PEERS: peers,
      ZEORAFT_INITIAL_CLUSTER_STATE: 'new',
      ZEORAFT_CLUSTER_KEY: this.clusterKey,
      ZEORAFT_LOG_LEVEL: process.env.ZEORAFT_LOG_LEVEL ?? 'warn',
      ...(m.zeoPort ? { ZEORAFT_ZEO_LISTEN: `127.0.0.1:${m.zeoPort}` } : {}),
    };
  }

  /** `node` arguments for a server process (the CPU profiler with --profile). */
  private nodeArgs(id: string): string[] {
    return this.options.cpuProfileDir
      ? [
          '--cpu-prof',
          `--cpu-prof-dir=${this.options.cpuProfileDir}`,
          `--cpu-prof-name=${id}-${Date.now()}.cpuprofile`,
        ]
      : [];
  }

  async restart(node: number): Promise<void> {
    const m = this.members[node];
    m.child = Child.spawn(
      `zeoraft ${m.id}`,
      process.execPath,
      [...this.nodeArgs(m.id), CLI, 'server'],
      this.env(m),
    );
    await m.child.waitForOutput('zeoraft node ready', NODE_READY_TIMEOUT_MS);
  }

  /**
   * A standalone node (no peers, default settings, fsync on) on `dataDir`, which may already hold
   * a store (its `state` directory). Resolves once it is ready and then idle (see settleSeconds),
   * with its client address and a stop function (SIGKILL by PID; SIGTERM with --profile so the
   * profile gets written). Not part of the cluster.
   */
  async startStandalone(
    id: string,
    dataDir: string,
  ): Promise<{
    address: string;
    startSeconds: number;
    settleSeconds: number;
    stop: () => Promise<void>;
  }> {
    const clientPort = await pickFreePort();
    const t0 = performance.now();
    const child = Child.spawn(
      `zeoraft ${id}`,
      process.execPath,
      [...this.nodeArgs(id), CLI, 'server'],
      {
        ZEORAFT_NODE_ID: id,
        ZEORAFT_DATA_DIR: dataDir,
        ZEORAFT_LISTEN: `127.0.0.1:${clientPort}`,
        ZEORAFT_HTTP_LISTEN: `127.0.0.1:${await pickFreePort()}`,
        ZEORAFT_LOG_LEVEL: process.env.ZEORAFT_LOG_LEVEL ?? 'warn',
      },
    );
    try {
      await child.waitForOutput('zeoraft node ready', STANDALONE_READY_TIMEOUT_MS);
    } catch (e) {
      await child.kill();
      throw e;
    }
    const startSeconds = (performance.now() - t0) / 1000;
    // Its start-up work after "ready" (the presence filter's scan of every object) is done.
    const settleSeconds = await child.waitIdle(
      STANDALONE_IDLE_CPU_FRACTION,
      STANDALONE_IDLE_WINDOW_MS,
      STANDALONE_READY_TIMEOUT_MS,
    );
    return {
      address: `127.0.0.1:${clientPort}`,
      startSeconds,
      settleSeconds,
      stop: () => (this.options.cpuProfileDir ? child.terminate() : child.kill()),
    };
  }

  async stop(): Promise<void> {
    for (const r of this.rpcs.values()) r.close();
    this.rpcs.clear();
    await Promise.all(
      this.members.map((m) =>
        this.options.cpuProfileDir ? m.child?.terminate() : m.child?.kill(),
      ),
    );
    removeDir(this.dir);
  }

  isAlive(node: number): boolean {
    return this.members[node].child?.alive ?? false;
  }

  pid(node: number): number | undefined {
    return this.members[node].child?.pid;
  }

  cpuSeconds(node: number): number | undefined {
    return this.members[node].child?.cpuSeconds();
  }

  rssBytes(node: number): number | undefined {
    return this.members[node].child?.rssBytes();
  }

  async kill(node: number): Promise<void> {
    await this.members[node].child?.kill();
    for (const [k, r] of this.rpcs)
      if (k.startsWith(`${node}/`)) {
        r.close();
        this.rpcs.delete(k);
      }
  }

  rpc(node: number, channel = 0): StorageRpc {
    const k = `${node}/${channel}`;
    let r = this.rpcs.get(k);
    if (!r) {
      r = new StorageRpc(`127.0.0.1:${this.members[node].clientPort}`, {
        timeoutMs: RPC_TIMEOUT_MS,
        // A channel of its own (grpc-js otherwise shares one connection per address).
        channelOptions: { 'grpc.use_local_subchannel_pool': 1 },
      });
      this.rpcs.set(k, r);
    }
    return r;
  }

  /** host:port of a node's ZEO listener (started with the `zeo` option). */
  zeoAddress(node: number): string {
    const port = this.members[node].zeoPort;
    if (!port) throw new Error('the ZEO listeners were not turned on (ZeoRaftOptions.zeo)');
    return `127.0.0.1:${port}`;
  }

  address(node: number): string {
    return `127.0.0.1:${this.members[node].clientPort}`;
  }

  async leader(timeoutMs = LEADER_TIMEOUT_MS): Promise<number> {
    return waitFor(
      'a ZeoRaft leader agreed by every live node',
      async () => {
        const alive = this.members.map((_, i) => i).filter((i) => this.isAlive(i));
        const views = await Promise.all(alive.map((i) => this.rpc(i).call('Status', {}, 1000)));
        const ids = new Set(views.map((v) => v.leaderId));
        if (ids.size !== 1) return undefined;
        const idx = this.members.findIndex((m) => m.id === views[0].leaderId);
        return idx >= 0 && alive.includes(idx) ? idx : undefined;
      },
      timeoutMs,
      20,
    );
  }

  conn(node: number, channel = 0): Conn {
    return new ZeoRaftConn(this, node, channel);
  }
}

class ZeoRaftConn implements Conn {
  constructor(
    private readonly t: ZeoRaftTarget,
    private readonly node: number,
    private readonly channel: number,
  ) {}

  private get rpc(): StorageRpc {
    return this.t.rpc(this.node, this.channel);
  }

  async put(key: number, value: Buffer): Promise<AckId> {
    const oid = oidOf(key);
    for (let attempt = 1; ; attempt++) {
      const serial = this.t.serials.get(key) ?? Z64;
      try {
        const r = await this.rpc.call('Commit', {
          transaction: { stores: [{ oid, serial, data: value }] },
        });
        this.t.serials.set(key, r.tid);
        return u64(r.tid);
      } catch (e) {
        if (e instanceof ConflictError && e.actualSerial && attempt < PUT_ATTEMPTS) {
          this.t.serials.set(key, e.actualSerial);
          this.t.staleSerialRetries++;
          continue;
        }
        throw e;
      }
    }
  }

  async readModifyWrite(key: number): Promise<'ok' | 'conflict'> {
    const oid = oidOf(key);
    let serial = Z64;
    let data = Buffer.alloc(256);
    try {
      const r = await this.rpc.call('Load', { oid });
      serial = r.serial;
      data = Buffer.from(r.data);
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
    data.writeUInt32BE((data.readUInt32BE(0) + 1) >>> 0, 0);
    try {
      await this.rpc.call('Commit', { transaction: { stores: [{ oid, serial, data }] } });
      return 'ok';
    } catch (e) {
      if (e instanceof ConflictError) return 'conflict';
      throw e;
    }
  }

  async get(key: number, linearizable: boolean): Promise<void> {
    if (linearizable) await this.rpc.call('Sync', {});
    await this.rpc.call('Load', { oid: oidOf(key) });
  }

  async putMany(firstKey: number, count: number, value: Buffer): Promise<void> {
    const stores = Array.from({ length: count }, (_, i) => ({
      oid: oidOf(firstKey + i),
      serial: Z64,
      data: value,
    }));
    await this.rpc.call('Commit', { transaction: { stores } }, 60_000);
  }

  async ping(): Promise<void> {
    // LastTransaction does the least work of the calls (Status also summarizes storages).
    await this.rpc.call('LastTransaction', {});
  }

  async verify(key: number, ack: AckId, value: Buffer): Promise<boolean> {
    const r = await this.rpc.call('LoadSerial', { oid: oidOf(key), serial: p64(ack) });
    return Buffer.compare(r.data, value) === 0;
  }

  subscribe(onCommit: (id: AckId) => void, onError: (e: unknown) => void): Promise<() => void> {
    const stream = this.rpc.subscribe({ progressIntervalMs: 100 });
    let cancelled = false;
    return new Promise((resolve, reject) => {
      let established = false;
      const cancel = (): void => {
        cancelled = true;
        stream.cancel();
      };
      stream.on('data', (ev) => {
        if (ev.commit) onCommit(u64(ev.commit.tid));
        if (!established) {
          established = true;
          resolve(cancel);
        }
      });
      stream.on('error', (e) => {
        if (cancelled) return;
        if (!established) reject(e);
        else onError(e);
      });
    });
  }
}
