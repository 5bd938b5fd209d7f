/**
 * ClientStorage's connections: the list of node addresses, the one node in use, failover to the
 * next (on a disconnection, a stalled stream, or a node that keeps reporting no leader), read-only
 * fallback, and the Subscribe stream of the node in use, whose events go to the cache coherence
 * (cache-coherence.ts) through the narrow StreamSink interface.
 */
import {
  ClientClosedError,
  DisconnectedError,
  ReadOnlyError,
  ZeoRaftError,
  isTransient,
} from './errors';
import type { ClientStorageOptions, ClientTestHooks } from './options';
import { StorageRpc, type ReqOf, type ResOf, type UnaryMethod } from './rpc';
import { Subscription } from './subscription';
import { hex, idCompare } from '../util/ids';
import type { SubscribeEvent__Output } from '../generated/zeoraft/v1/SubscribeEvent';
import type { StorageInfo__Output } from '../generated/zeoraft/v1/StorageInfo';

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_PROGRESS_INTERVAL_MS = 200;
const BACKOFF_BASE_MS = 25;
const BACKOFF_MAX_MS = 1000;
/** How long a node may report no leader before the client moves to another node. */
const LEADER_LOST_GRACE_MS = 2000;
/** Consecutive "no leader" replies from one node before trying another. */
const NOT_LEADER_ROTATE_AFTER = 3;

/** What the connections need of the cache coherence: its last TID, and the stream's events. */
export interface StreamSink {
  /** Every invalidation up to this TID is applied (undefined until the first open). */
  readonly last: Buffer | undefined;
  /** Whether every invalidation up to `tid` is applied. */
  reached(tid: Buffer): boolean;
  /** A node opened at `tid`: a client with nothing cached starts there. */
  startIfEmpty(tid: Buffer): void;
  /** A stream event (commit, progress, reset), handled synchronously and in order. */
  onEvent(ev: SubscribeEvent__Output): void;
}

export interface Connection {
  rpc: StorageRpc;
  address: string;
  index: number;
  readOnly: boolean;
  stream?: Subscription;
  dead: boolean;
  leaderCheck?: NodeJS.Timeout;
  notLeaderStreak: number;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function backoffMs(attempt: number): number {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 10));
  return cap / 2 + Math.random() * (cap / 2);
}

export class ConnectionManager {
  readonly storage: string;
  /** Per-RPC-attempt deadline in milliseconds. */
  readonly timeoutMs: number;
  /** How long one operation keeps retrying across failover, in milliseconds. */
  readonly retryWindowMs: number;
  private readonly addresses: string[];
  private readonly progressIntervalMs: number;
  private readonly hooks: ClientTestHooks;
  private readonly metadata: Record<string, string> = {};
  private conn: Connection | undefined;
  private connecting: Promise<Connection> | undefined;
  private nextIndex = 0;
  private closedNow = false;
  private readOnlyNow: boolean;
  /** Stream events held back by the beforeStreamEvent test hook, in order. */
  private heldEvents: Promise<void> = Promise.resolve();

  constructor(
    private readonly options: ClientStorageOptions,
    private readonly sink: StreamSink,
  ) {
    this.addresses = [...options.addresses];
    this.storage = options.storage || '1';
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retryWindowMs = options.retryWindowMs ?? 3 * this.timeoutMs;
    this.progressIntervalMs = options.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS;
    this.hooks = options.testHooks ?? {};
    this.readOnlyNow = options.readOnly === true;
    if (options.credentials?.key) this.metadata['x-zeoraft-key'] = options.credentials.key;
  }

  /** Whether the client works read-only now (asked to, or fell back to it). */
  get readOnly(): boolean {
    return this.readOnlyNow;
  }

  get closed(): boolean {
    return this.closedNow;
  }

  /** The node currently used, if connected. */
  get address(): string | undefined {
    return this.conn?.address;
  }

  get isConnected(): boolean {
    return !!this.conn;
  }

  /**
   * Call `method` on the current node, retrying disconnections (on another node when this one is
   * lost) within the retry window; `onDisconnected` sees each attempt's disconnection.
   */
  async invoke<K extends UnaryMethod>(
    method: K,
    build: () => ReqOf<K>,
    onDisconnected?: (e: DisconnectedError) => void,
  ): Promise<ResOf<K>> {
    const end = Date.now() + this.retryWindowMs;
    for (let attempt = 0; ; attempt++) {
      const conn = await this.connection(end);
      try {
        this.hooks.onRpc?.(String(method), conn.address);
        const res = await conn.rpc.call(method, build(), this.timeoutMs);
        conn.notLeaderStreak = 0;
        return res;
      } catch (e) {
        if (e instanceof ReadOnlyError && this.options.readOnlyFallback) this.readOnlyNow = true;
        if (!(e instanceof DisconnectedError) || this.closedNow) throw e;
        onDisconnected?.(e);
        const wait = backoffMs(attempt);
        if (Date.now() + wait >= end) throw e;
        // A node without a leader is fine for a moment (an election); a dead or stuck one is not.
        if (e.detail?.kind !== 'NOT_LEADER' || ++conn.notLeaderStreak >= NOT_LEADER_ROTATE_AFTER)
          this.connectionLost(conn, e);
        await sleep(wait);
      }
    }
  }

  /**
   * Run `fn` on the current node until `endMs`, moving to another node after a disconnection
   * (the streaming calls: blob upload and download, which resume where the last attempt ended).
   */
  async withFailover<T>(
    endMs: number,
    fn: (conn: Connection, attempt: number) => Promise<T>,
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const conn = await this.connection(endMs);
      try {
        return await fn(conn, attempt);
      } catch (e) {
        if (!(e instanceof DisconnectedError) || this.closedNow) throw e;
        const wait = backoffMs(attempt);
        if (Date.now() + wait >= endMs) throw e;
        this.connectionLost(conn, e);
        await sleep(wait);
      }
    }
  }

  /** The current connection, (re)connecting if needed, or DisconnectedError at `deadlineMs`. */
  private async connection(deadlineMs: number): Promise<Connection> {
    if (this.closedNow) throw new ClientClosedError('the client is closed');
    if (this.conn) return this.conn;
    const pending = this.reconnect();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new DisconnectedError('no usable node within the retry window')),
        Math.max(0, deadlineMs - Date.now()),
      );
    });
    try {
      return await Promise.race([pending, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private reconnect(): Promise<Connection> {
    if (!this.connecting) {
      const p = this.connectLoop(Infinity).finally(() => {
        if (this.connecting === p) this.connecting = undefined;
      });
      p.catch(() => undefined); // waiters have their own deadlines
      this.connecting = p;
    }
    return this.connecting;
  }

  async connectInitial(timeoutMs: number): Promise<void> {
    const p = this.connectLoop(Date.now() + timeoutMs);
    this.connecting = p;
    try {
      await p;
    } finally {
      this.connecting = undefined;
    }
  }

  /**
   * Try every address in turn (starting after the last one that failed), with backoff between
   * rounds. A node that says the storage is read-only is passed over unless the client is
   * read-only or may fall back to read-only and no writable node answered.
   */
  private async connectLoop(deadlineMs: number): Promise<Connection> {
    let lastError: unknown;
    for (let round = 0; ; round++) {
      let sawReadOnly = false;
      let onlyPermanent = true;
      for (let pass = 0; pass < 2; pass++) {
        const acceptReadOnly = this.options.readOnly === true || pass === 1;
        if (pass === 1 && !(sawReadOnly && this.options.readOnlyFallback)) break;
        for (let i = 0; i < this.addresses.length; i++) {
          if (this.closedNow) throw new ClientClosedError('the client is closed');
          const index = (this.nextIndex + i) % this.addresses.length;
          try {
            const conn = await this.connectTo(index, acceptReadOnly);
            if (this.closedNow) {
              this.connectionLost(conn, new ClientClosedError('the client is closed'));
              throw new ClientClosedError('the client is closed');
            }
            if (conn.dead) throw new DisconnectedError(`lost ${conn.address} while connecting`);
            this.conn = conn;
            this.nextIndex = index;
            this.readOnlyNow = this.options.readOnly === true || conn.readOnly;
            return conn;
          } catch (e) {
            lastError = e;
            if (e instanceof ReadOnlyError) sawReadOnly = true;
            else if (isTransient(e) || !(e instanceof ZeoRaftError)) onlyPermanent = false;
          }
        }
      }
      // Every node refused for a reason retrying will not fix (a read-only storage, a bad key,
      // an unknown storage): say so now rather than at the deadline.
      if (onlyPermanent && deadlineMs !== Infinity) throw lastError;
      if (Date.now() >= deadlineMs) throw lastError;
      await sleep(Math.min(backoffMs(round), Math.max(0, deadlineMs - Date.now())));
    }
  }

  private async connectTo(index: number, acceptReadOnly: boolean): Promise<Connection> {
    const address = this.addresses[index];
    const rpc = new StorageRpc(address, {
      timeoutMs: this.timeoutMs,
      metadata: this.metadata,
      credentials: this.options.credentials?.channel,
    });
    const conn: Connection = {
      rpc,
      address,
      index,
      readOnly: false,
      dead: false,
      notLeaderStreak: 0,
    };
    try {
      this.hooks.onRpc?.('Open', address);
      const r = await rpc.call('Open', {
        storage: this.storage,
        readOnly: this.options.readOnly === true,
        lastTid: this.sink.last ?? Buffer.alloc(0),
        clientName: this.options.clientName ?? `zeoraft-ts pid ${process.pid}`,
      });
      // Never accept a node behind what we have seen (the node should have waited).
      if (this.sink.last && idCompare(r.lastTid, this.sink.last) < 0)
        throw new DisconnectedError(
          `node ${r.nodeId} at ${address} is at TID ${hex(r.lastTid)}, behind the client's ${hex(this.sink.last)}`,
        );
      const info = r.info as StorageInfo__Output;
      conn.readOnly = info.readOnly;
      if (conn.readOnly && !acceptReadOnly)
        throw new ReadOnlyError(
          `storage ${JSON.stringify(this.storage)} on node ${r.nodeId} (${address}) is read-only`,
        );
      this.sink.startIfEmpty(r.lastTid);
      await this.subscribe(conn, info.lastTid);
      return conn;
    } catch (e) {
      conn.dead = true;
      conn.stream?.cancel();
      rpc.close();
      throw e;
    }
  }

  /**
   * Start the stream after the last TID and resolve once the caches have caught up with the
   * storage's last TID as of Open (or were reset), so a client that opened serves no stale data.
   */
  private subscribe(conn: Connection, caughtUpAt: Buffer): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(
        () => finish(new DisconnectedError(`${conn.address} did not catch up in time`)),
        this.timeoutMs,
      );
      const finish = (e?: ZeoRaftError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve();
      };
      const check = (): void => {
        if (this.sink.reached(caughtUpAt)) finish();
      };
      this.hooks.onRpc?.('Subscribe', conn.address);
      conn.stream = new Subscription(
        conn.rpc,
        {
          storage: this.storage,
          fromTid: this.sink.last ?? Buffer.alloc(0),
          progressIntervalMs: this.progressIntervalMs,
        },
        Math.max(3000, 10 * this.progressIntervalMs),
        {
          onEvent: (ev) => {
            const handle = (): void => {
              if (conn.dead) return;
              if (ev.leaderLost) this.onLeaderLost(conn);
              this.sink.onEvent(ev);
              if (ev.reset) finish();
              else check();
            };
            const hold = this.hooks.beforeStreamEvent;
            if (hold) this.heldEvents = this.heldEvents.then(() => hold(ev)).then(handle);
            else handle();
          },
          onEnd: (e) => {
            if (!settled) finish(e);
            else this.connectionLost(conn, e);
          },
        },
      );
      check();
    });
  }

  /** Drop a connection (if still current) and start looking for another node. */
  private connectionLost(conn: Connection, e: unknown): void {
    if (!conn.dead) {
      conn.dead = true;
      clearTimeout(conn.leaderCheck);
      conn.stream?.cancel();
      conn.rpc.close();
    }
    if (this.conn !== conn) return;
    this.conn = undefined;
    this.nextIndex = (conn.index + 1) % this.addresses.length;
    if (!this.closedNow) {
      this.options.onError?.(
        new DisconnectedError(`lost ${conn.address}: ${String((e as Error)?.message ?? e)}`),
      );
      void this.reconnect();
    }
  }

  private onLeaderLost(conn: Connection): void {
    clearTimeout(conn.leaderCheck);
    conn.leaderCheck = setTimeout(() => {
      if (conn.dead) return;
      conn.rpc.call('Status', {}, this.timeoutMs).then(
        (s) => {
          if (!s.leaderId) this.connectionLost(conn, new DisconnectedError('node has no leader'));
        },
        (e: unknown) => this.connectionLost(conn, e),
      );
    }, LEADER_LOST_GRACE_MS);
  }

  /** Stop: no more attempts, the node in use is let go. */
  close(): void {
    this.closedNow = true;
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      conn.dead = true;
      clearTimeout(conn.leaderCheck);
      conn.stream?.cancel();
      conn.rpc.close();
    }
  }
}
