/**
 * etcd under test: a three-member cluster of the `etcd` binary (Debian package etcd-server) on
 * free loopback ports with its own temp data dirs and default settings (it fsyncs its WAL),
 * spoken to over gRPC with the trimmed proto in etcd.proto.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { Child, makeTempDir, pickFreePort, removeDir, waitFor } from '../lib/proc';
import type { AckId, Conn, Target } from '../lib/target';

/** The .proto is read from the source tree (tsc does not copy it to dist/). */
const PROTO = path.resolve(__dirname, '../../../bench/etcd/etcd.proto');
const LEADER_TIMEOUT_MS = 20_000;
const RPC_TIMEOUT_MS = 5000;
const KEY_PREFIX = 'bench/';
/** The end of the prefix range: '/' + 1. */
const KEY_PREFIX_END = 'bench0';
/** etcd's default --max-txn-ops. */
const ETCD_MAX_TXN_OPS = 128;

export function etcdKey(key: number): Buffer {
  return Buffer.from(`${KEY_PREFIX}${key.toString().padStart(10, '0')}`);
}

/** The installed etcd's version line, or undefined when there is no `etcd` binary. */
export function etcdVersion(): string | undefined {
  try {
    return execFileSync('etcd', ['--version'], { encoding: 'utf8' }).split('\n')[0].trim();
  } catch {
    return undefined;
  }
}

type Callback = (err: grpc.ServiceError | null, res: any) => void;
type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => void;
interface EtcdClients {
  kv: grpc.Client & Record<string, UnaryFn>;
  watch: grpc.Client & { Watch(): grpc.ClientDuplexStream<unknown, any> };
  maintenance: grpc.Client & Record<string, UnaryFn>;
}

let pkg: any;
function etcdPackage(): any {
  pkg ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(PROTO, {
      keepCase: false,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    }),
  ).etcdserverpb;
  return pkg;
}

function unary(
  client: grpc.Client & Record<string, UnaryFn>,
  method: string,
  req: unknown,
  timeoutMs = RPC_TIMEOUT_MS,
): Promise<any> {
  return new Promise((resolve, reject) =>
    client[method](req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
}

interface Member {
  name: string;
  clientPort: number;
  peerPort: number;
  child?: Child;
}

export class EtcdTarget implements Target {
  readonly name = 'etcd' as const;
  readonly nodeCount = 3;
  readonly maxBatch = ETCD_MAX_TXN_OPS;
  readonly dir = makeTempDir('etcd');
  private readonly members: Member[] = [];
  private readonly clients = new Map<string, EtcdClients>();

  async start(): Promise<void> {
    for (let i = 1; i <= this.nodeCount; i++)
      this.members.push({
        name: `e${i}`,
        clientPort: await pickFreePort(),
        peerPort: await pickFreePort(),
      });
    for (let i = 0; i < this.nodeCount; i++) this.spawn(i);
    await this.leader();
  }

  private spawn(node: number): void {
    const m = this.members[node];
    const cluster = this.members.map((p) => `${p.name}=http://127.0.0.1:${p.peerPort}`).join(',');
    const client = `http://127.0.0.1:${m.clientPort}`;
    const peer = `http://127.0.0.1:${m.peerPort}`;
    m.child = Child.spawn(
      `etcd ${m.name}`,
      'etcd',
      [
        `--name=${m.name}`,
        `--data-dir=${path.join(this.dir, m.name)}`,
        `--listen-client-urls=${client}`,
        `--advertise-client-urls=${client}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=${cluster}`,
        '--initial-cluster-state=new',
        '--initial-cluster-token=zeoraft-bench',
        '--logger=zap',
        '--log-level=warn',
      ],
      {},
    );
  }

  async restart(node: number): Promise<void> {
    this.spawn(node);
    const c = this.clientsFor(node, 0);
    await waitFor(
      `etcd ${this.members[node].name} to answer`,
      () => unary(c.maintenance, 'Status', {}, 1000),
      30_000,
    );
  }

  async stop(): Promise<void> {
    for (const c of this.clients.values()) for (const x of Object.values(c)) x.close();
    this.clients.clear();
    await Promise.all(this.members.map((m) => m.child?.kill()));
    removeDir(this.dir);
  }

  isAlive(node: number): boolean {
    return this.members[node].child?.alive ?? false;
  }

  cpuSeconds(node: number): number | undefined {
    return this.members[node].child?.cpuSeconds();
  }

  rssBytes(node: number): number | undefined {
    return this.members[node].child?.rssBytes();
  }

  async kill(node: number): Promise<void> {
    await this.members[node].child?.kill();
    for (const [k, c] of this.clients)
      if (k.startsWith(`${node}/`)) {
        for (const x of Object.values(c)) x.close();
        this.clients.delete(k);
      }
  }

  clientsFor(node: number, channel: number): EtcdClients {
    const k = `${node}/${channel}`;
    let c = this.clients.get(k);
    if (!c) {
      const p = etcdPackage();
      const addr = `127.0.0.1:${this.members[node].clientPort}`;
      const creds = grpc.credentials.createInsecure();
      const opts = {
        'grpc.use_local_subchannel_pool': 1,
        'grpc.max_receive_message_length': 64 << 20,
      };
      c = {
        kv: new p.KV(addr, creds, opts),
        watch: new p.Watch(addr, creds, opts),
        maintenance: new p.Maintenance(addr, creds, opts),
      };
      this.clients.set(k, c);
    }
    return c;
  }

  async leader(timeoutMs = LEADER_TIMEOUT_MS): Promise<number> {
    return waitFor(
      'an etcd leader agreed by every live member',
      async () => {
        const alive = this.members.map((_, i) => i).filter((i) => this.isAlive(i));
        const views = await Promise.all(
          alive.map((i) => unary(this.clientsFor(i, 0).maintenance, 'Status', {}, 1000)),
        );
        const leaders = new Set(views.map((v) => String(v.leader)));
        if (leaders.size !== 1 || views[0].leader === '0') return undefined;
        const at = views.findIndex((v) => String(v.header.memberId) === String(views[0].leader));
        return at >= 0 ? alive[at] : undefined;
      },
      timeoutMs,
      20,
    );
  }

  conn(node: number, channel = 0): Conn {
    return new EtcdConn(this, node, channel);
  }

  /** Maintenance.Status on `node`: its revision (the count of write transactions so far). */
  async status(node: number, channel = 0): Promise<{ revision: bigint }> {
    const r = await unary(this.clientsFor(node, channel).maintenance, 'Status', {});
    return { revision: BigInt(r.header.revision) };
  }

  /**
   * Open a Watch stream on the bench's key prefix (from `startRevision`, else from now) and wait
   * for `until`: its `created` response, or the first response carrying events. Then cancel it.
   */
  openWatch(
    node: number,
    channel: number,
    until: 'created' | 'event',
    startRevision?: bigint,
  ): Promise<void> {
    const stream = this.clientsFor(node, channel).watch.Watch();
    return new Promise<void>((resolve, reject) => {
      let done = false;
      const finish = (e?: unknown): void => {
        if (done) return;
        done = true;
        stream.cancel();
        if (e) reject(e);
        else resolve();
      };
      stream.on('data', (res: any) => {
        if (res.canceled) finish(new Error(`watch canceled: ${res.cancelReason}`));
        else if (until === 'created' ? res.created : res.events.length > 0) finish();
      });
      stream.on('error', (e) => finish(e));
      stream.write({
        createRequest: {
          key: Buffer.from(KEY_PREFIX),
          rangeEnd: Buffer.from(KEY_PREFIX_END),
          startRevision: startRevision?.toString() ?? '0',
        },
      });
    });
  }
}

class EtcdConn implements Conn {
  constructor(
    private readonly t: EtcdTarget,
    private readonly node: number,
    private readonly channel: number,
  ) {}

  private get c(): EtcdClients {
    return this.t.clientsFor(this.node, this.channel);
  }

  async put(key: number, value: Buffer): Promise<AckId> {
    const r = await unary(this.c.kv, 'Put', { key: etcdKey(key), value });
    return BigInt(r.header.revision);
  }

  async readModifyWrite(key: number): Promise<'ok' | 'conflict'> {
    const k = etcdKey(key);
    const r = await unary(this.c.kv, 'Range', { key: k, serializable: true });
    const kv = r.kvs[0];
    const data = kv ? Buffer.from(kv.value) : Buffer.alloc(256);
    data.writeUInt32BE((data.readUInt32BE(0) + 1) >>> 0, 0);
    const t = await unary(this.c.kv, 'Txn', {
      compare: [{ result: 'EQUAL', target: 'MOD', key: k, modRevision: kv ? kv.modRevision : '0' }],
      success: [{ requestPut: { key: k, value: data } }],
    });
    return t.succeeded ? 'ok' : 'conflict';
  }

  async get(key: number, linearizable: boolean): Promise<void> {
    await unary(this.c.kv, 'Range', { key: etcdKey(key), serializable: !linearizable });
  }

  async putMany(firstKey: number, count: number, value: Buffer): Promise<void> {
    const success = Array.from({ length: count }, (_, i) => ({
      requestPut: { key: etcdKey(firstKey + i), value },
    }));
    await unary(this.c.kv, 'Txn', { success }, 60_000);
  }

  async ping(): Promise<void> {
    await unary(this.c.maintenance, 'Status', {});
  }

  async verify(key: number, ack: AckId, value: Buffer): Promise<boolean> {
    const r = await unary(this.c.kv, 'Range', { key: etcdKey(key) });
    const kv = r.kvs[0];
    return !!kv && BigInt(kv.modRevision) === ack && Buffer.compare(kv.value, value) === 0;
  }

  subscribe(onCommit: (id: AckId) => void, onError: (e: unknown) => void): Promise<() => void> {
    const stream = this.c.watch.Watch();
    let cancelled = false;
    return new Promise((resolve, reject) => {
      let established = false;
      const cancel = (): void => {
        cancelled = true;
        stream.cancel();
      };
      stream.on('data', (res: any) => {
        for (const ev of res.events) onCommit(BigInt(ev.kv.modRevision));
        if (res.created && !established) {
          established = true;
          resolve(cancel);
        }
      });
      stream.on('error', (e) => {
        if (cancelled) return;
        if (!established) reject(e);
        else onError(e);
      });
      stream.write({
        createRequest: { key: Buffer.from(KEY_PREFIX), rangeEnd: Buffer.from(KEY_PREFIX_END) },
      });
    });
  }
}
