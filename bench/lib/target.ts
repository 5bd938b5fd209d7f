/**
 * What a workload needs from a system under test. ZeoRaft and etcd each implement it, so every
 * workload runs the same code against both. Keys are small integers; each system maps them to
 * its own names (an OID, an etcd key).
 */

/** A commit's acknowledgement: the TID (ZeoRaft) or the revision (etcd) as an integer. */
export type AckId = bigint;

export interface Conn {
  /** Write `value` under `key`, unconditionally as far as the caller is concerned. */
  put(key: number, value: Buffer): Promise<AckId>;
  /**
   * One read-modify-write attempt: read the key's current version, then write conditionally on
   * it. Resolves 'conflict' when another writer got in between.
   */
  readModifyWrite(key: number): Promise<'ok' | 'conflict'>;
  /** A read served by the connected node; `linearizable` makes it reflect every earlier commit. */
  get(key: number, linearizable: boolean): Promise<void>;
  /** Write `count` keys from `firstKey` in one transaction. */
  putMany(firstKey: number, count: number, value: Buffer): Promise<void>;
  /** A cheap status call: one round trip to the node. */
  ping(): Promise<void>;
  /** Whether `key` holds `value` as written by the commit acknowledged as `ack`. */
  verify(key: number, ack: AckId, value: Buffer): Promise<boolean>;
  /**
   * Open a change stream on the connected node; `onCommit` gets each commit's id. Resolves once
   * the stream is established. Returns a function that cancels it.
   */
  subscribe(onCommit: (id: AckId) => void, onError: (e: unknown) => void): Promise<() => void>;
}

export interface Target {
  readonly name: 'zeoraft' | 'etcd';
  readonly nodeCount: number;
  /** Largest number of writes `putMany` accepts. */
  readonly maxBatch: number;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Index of the node every live node agrees is the leader. */
  leader(timeoutMs?: number): Promise<number>;
  /** A connection to `node`; connections with the same (node, channel) share one gRPC channel. */
  conn(node: number, channel?: number): Conn;
  /** SIGKILL the node by PID and drop connections to it. */
  kill(node: number): Promise<void>;
  restart(node: number): Promise<void>;
  isAlive(node: number): boolean;
  rssBytes(node: number): number | undefined;
  /** CPU seconds used so far by the node's process (user + system), if it is running. */
  cpuSeconds(node: number): number | undefined;
}
