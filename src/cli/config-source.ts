/**
 * Node settings from (lowest to highest precedence) defaults, a JSON config file, ZEORAFT_*
 * environment variables and command-line flags. The compose file and the local launcher use the
 * same variables.
 */
import * as fs from 'node:fs';
import { NodeConfig, PeerConfig, StorageConfig, defaultConfig } from '../server/config';
import type { LogLevel } from '../util/log';
import { SECURITY_SETTINGS, applySecuritySettings } from './security-settings';

/** Flag name -> environment variable; every setting has both. */
export const SETTINGS = {
  'node-id': 'ZEORAFT_NODE_ID',
  'data-dir': 'ZEORAFT_DATA_DIR',
  listen: 'ZEORAFT_LISTEN',
  'peer-listen': 'ZEORAFT_PEER_LISTEN',
  'http-listen': 'ZEORAFT_HTTP_LISTEN',
  'zeo-listen': 'ZEORAFT_ZEO_LISTEN',
  'zeo-encoding': 'ZEORAFT_ZEO_ENCODING',
  peers: 'ZEORAFT_PEERS',
  join: 'ZEORAFT_JOIN',
  'initial-cluster-state': 'ZEORAFT_INITIAL_CLUSTER_STATE',
  storages: 'ZEORAFT_STORAGES',
  'read-only': 'ZEORAFT_READ_ONLY',
  'log-level': 'ZEORAFT_LOG_LEVEL',
  'tick-ms': 'ZEORAFT_TICK_MS',
  'election-ticks': 'ZEORAFT_ELECTION_TICKS',
  'snapshot-entries': 'ZEORAFT_SNAPSHOT_ENTRIES',
  'txn-timeout-ms': 'ZEORAFT_TXN_TIMEOUT_MS',
  'vote-renew-ms': 'ZEORAFT_VOTE_RENEW_MS',
  'lock-wait-ms': 'ZEORAFT_LOCK_WAIT_MS',
  'history-max-transactions': 'ZEORAFT_HISTORY_MAX_TRANSACTIONS',
  'history-max-age-ms': 'ZEORAFT_HISTORY_MAX_AGE_MS',
  'subscriber-buffer-events': 'ZEORAFT_SUBSCRIBER_BUFFER_EVENTS',
  fsync: 'ZEORAFT_FSYNC',
  config: 'ZEORAFT_CONFIG',
  ...SECURITY_SETTINGS,
} as const;
export type SettingName = keyof typeof SETTINGS;

/** "n1=127.0.0.1:7201=127.0.0.1:7101,n2=..." -> peers (id=peerAddress=clientAddress). */
export function parsePeers(s: string): PeerConfig[] {
  if (!s.trim()) return [];
  return s.split(',').map((part) => {
    const [id, peerAddress, clientAddress] = part.trim().split('=');
    if (!id || !peerAddress)
      throw new Error(`peer ${JSON.stringify(part)} must be id=peerHost:port[=clientHost:port]`);
    return { id, peerAddress, clientAddress: clientAddress ?? '' };
  });
}

/** "1,archive:ro" -> storages; ":ro" marks a read-only storage. */
export function parseStorages(s: string): StorageConfig[] {
  return s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)
    .map((x) => ({ name: x.replace(/:ro$/, ''), readOnly: x.endsWith(':ro') }));
}

function bool(s: string): boolean {
  if (/^(1|true|yes|on)$/i.test(s)) return true;
  if (/^(0|false|no|off|)$/i.test(s)) return false;
  throw new Error(`not a boolean: ${JSON.stringify(s)}`);
}

function int(s: string, name: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0)
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(s)}`);
  return n;
}

export function buildConfig(
  flags: Partial<Record<SettingName, string | boolean>>,
  env: NodeJS.ProcessEnv,
): NodeConfig {
  const get = (name: SettingName): string | undefined => {
    const f = flags[name];
    if (f !== undefined) return typeof f === 'boolean' ? String(f) : f;
    return env[SETTINGS[name]];
  };
  let base: Partial<NodeConfig> = {};
  const file = get('config');
  if (file) base = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<NodeConfig>;
  const o: Partial<NodeConfig> = { ...base };
  const set = <K extends keyof NodeConfig>(
    name: SettingName,
    key: K,
    conv: (s: string) => NodeConfig[K],
  ): void => {
    const v = get(name);
    if (v !== undefined) o[key] = conv(v);
  };
  set('node-id', 'nodeId', (s) => s);
  set('data-dir', 'dataDir', (s) => s);
  set('listen', 'listen', (s) => s);
  set('peer-listen', 'peerListen', (s) => s);
  set('http-listen', 'httpListen', (s) => s);
  set('zeo-listen', 'zeoListen', (s) => s);
  set('zeo-encoding', 'zeoEncoding', (s) => {
    if (s !== 'msgpack' && s !== 'pickle')
      throw new Error(`zeo-encoding must be msgpack or pickle, got ${JSON.stringify(s)}`);
    return s;
  });
  set('peers', 'peers', parsePeers);
  set('join', 'join', bool);
  set('initial-cluster-state', 'initialClusterState', (s) => {
    if (s !== '' && s !== 'new' && s !== 'existing')
      throw new Error(`initial-cluster-state must be new or existing, got ${JSON.stringify(s)}`);
    return s;
  });
  set('storages', 'storages', parseStorages);
  set('read-only', 'readOnly', bool);
  set('log-level', 'logLevel', (s) => s as LogLevel);
  set('tick-ms', 'tickMs', (s) => int(s, 'tick-ms'));
  set('election-ticks', 'electionTicks', (s) => int(s, 'election-ticks'));
  set('snapshot-entries', 'snapshotEntries', (s) => int(s, 'snapshot-entries'));
  set('txn-timeout-ms', 'txnTimeoutMs', (s) => int(s, 'txn-timeout-ms'));
  set('vote-renew-ms', 'voteRenewMs', (s) => int(s, 'vote-renew-ms'));
  set('lock-wait-ms', 'lockWaitMs', (s) => int(s, 'lock-wait-ms'));
  set('history-max-transactions', 'historyMaxTransactions', (s) =>
    int(s, 'history-max-transactions'),
  );
  set('history-max-age-ms', 'historyMaxAgeMs', (s) => int(s, 'history-max-age-ms'));
  const buffered = get('subscriber-buffer-events');
  if (buffered !== undefined)
    o.limits = {
      ...(o.limits ?? defaultConfig().limits),
      subscriberBufferEvents: int(buffered, 'subscriber-buffer-events'),
    };
  set('fsync', 'fsync', bool);
  applySecuritySettings(o, get);
  // Not a documented setting: tests use it to kill a node at a chosen step of a snapshot install.
  if (env.ZEORAFT_TEST_CRASH_AT) o.testCrashAt = env.ZEORAFT_TEST_CRASH_AT;
  if (o.nodeId && !o.dataDir) o.dataDir = `./data/${o.nodeId}`;
  return defaultConfig(o);
}
