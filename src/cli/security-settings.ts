/**
 * The security and limit settings of a node (flag name -> ZEORAFT_* variable), merged into
 * config-source's SETTINGS so each has a flag, an environment variable and a config-file field.
 */
import * as fs from 'node:fs';
import { DEFAULT_LIMITS, type LimitsConfig, type NodeConfig } from '../server/config';
import type { SecurityConfig, ZeoAccess } from '../server/security';

export const SECURITY_SETTINGS = {
  /** PEM certificate and key of the client listener: turns TLS on for clients. */
  'tls-cert': 'ZEORAFT_TLS_CERT',
  'tls-key': 'ZEORAFT_TLS_KEY',
  /** CA that signs client certificates (needed with tls-client-auth). */
  'tls-ca': 'ZEORAFT_TLS_CA',
  /** Require client certificates signed by tls-ca. */
  'tls-client-auth': 'ZEORAFT_TLS_CLIENT_AUTH',
  /** Mutual TLS between peers: this node's certificate and key, and the cluster CA. */
  'peer-tls-cert': 'ZEORAFT_PEER_TLS_CERT',
  'peer-tls-key': 'ZEORAFT_PEER_TLS_KEY',
  'peer-tls-ca': 'ZEORAFT_PEER_TLS_CA',
  /** JSON keys file (hashes, roles, storages); turns key checking on. */
  'keys-file': 'ZEORAFT_KEYS_FILE',
  /** Shared secret of the cluster's peers (at least 16 characters), or a file holding it. */
  'cluster-key': 'ZEORAFT_CLUSTER_KEY',
  'cluster-key-file': 'ZEORAFT_CLUSTER_KEY_FILE',
  /** Run a cluster member without peer authentication (logs a warning at every start). */
  'insecure-peers': 'ZEORAFT_INSECURE_PEERS',
  /** Comma-separated CIDRs (IPv4/IPv6) allowed on the client+ZEO, peer and HTTP listeners. */
  'allow-clients': 'ZEORAFT_ALLOW_CLIENTS',
  'allow-peers': 'ZEORAFT_ALLOW_PEERS',
  'allow-http': 'ZEORAFT_ALLOW_HTTP',
  /** ZEO listener access: read-write, read-only or off (default: off when keys are on). */
  'zeo-access': 'ZEORAFT_ZEO_ACCESS',
  'max-message-bytes': 'ZEORAFT_MAX_MESSAGE_BYTES',
  'max-txn-objects': 'ZEORAFT_MAX_TXN_OBJECTS',
  'max-txn-bytes': 'ZEORAFT_MAX_TXN_BYTES',
  'max-blob-bytes': 'ZEORAFT_MAX_BLOB_BYTES',
  'max-subscribers': 'ZEORAFT_MAX_SUBSCRIBERS',
  'max-pending-proposals': 'ZEORAFT_MAX_PENDING_PROPOSALS',
  'max-txns-per-connection': 'ZEORAFT_MAX_TXNS_PER_CONNECTION',
  'max-subscribers-per-connection': 'ZEORAFT_MAX_SUBSCRIBERS_PER_CONNECTION',
  'subscriber-buffer-bytes': 'ZEORAFT_SUBSCRIBER_BUFFER_BYTES',
  'max-txn-memory-bytes': 'ZEORAFT_MAX_TXN_MEMORY_BYTES',
  'max-prepared-txns': 'ZEORAFT_MAX_PREPARED_TXNS',
  'max-client-connections': 'ZEORAFT_MAX_CLIENT_CONNECTIONS',
  'max-zeo-connections': 'ZEORAFT_MAX_ZEO_CONNECTIONS',
  'idle-timeout-ms': 'ZEORAFT_IDLE_TIMEOUT_MS',
} as const;
export type SecuritySettingName = keyof typeof SECURITY_SETTINGS;

const LIMIT_SETTINGS: Partial<Record<SecuritySettingName, keyof LimitsConfig>> = {
  'max-message-bytes': 'maxMessageBytes',
  'max-txn-objects': 'maxTxnObjects',
  'max-txn-bytes': 'maxTxnBytes',
  'max-blob-bytes': 'maxBlobBytes',
  'max-subscribers': 'maxSubscribers',
  'max-pending-proposals': 'maxPendingProposals',
  'max-txns-per-connection': 'maxTxnsPerConnection',
  'max-subscribers-per-connection': 'maxSubscribersPerConnection',
  'subscriber-buffer-bytes': 'subscriberBufferBytes',
  'max-txn-memory-bytes': 'maxTxnMemoryBytes',
  'max-prepared-txns': 'maxPreparedTxns',
  'max-client-connections': 'maxClientConnections',
  'max-zeo-connections': 'maxZeoConnections',
  'idle-timeout-ms': 'idleTimeoutMs',
};

const list = (s: string): string[] =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);

function positive(s: string, name: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`${name} must be a positive integer, got ${JSON.stringify(s)}`);
  return n;
}

/** The cluster key in a file (a Docker secret, or the one `zeoraft cluster` made): its first line. */
function readClusterKey(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(
      `cannot read the cluster key file ${JSON.stringify(file)}: ${(e as Error).message} (make one with: openssl rand -hex 32 > ${file})`,
    );
  }
  const key = text.split('\n')[0].trim();
  if (!key) throw new Error(`the cluster key file ${JSON.stringify(file)} is empty`);
  return key;
}

/** Apply the security and limit settings found by `get` onto the partial config `o`. */
export function applySecuritySettings(
  o: Partial<NodeConfig>,
  get: (name: SecuritySettingName) => string | undefined,
): void {
  const sec: SecurityConfig = { ...(o.security ?? {}) };
  const cert = get('tls-cert');
  const key = get('tls-key');
  if (cert || key) {
    sec.tls = { cert: cert ?? '', key: key ?? '' };
    const ca = get('tls-ca');
    if (ca) sec.tls.ca = ca;
    sec.tls.clientAuth = /^(1|true|yes|on)$/i.test(get('tls-client-auth') ?? '');
  }
  const pc = get('peer-tls-cert');
  const pk = get('peer-tls-key');
  const pca = get('peer-tls-ca');
  if (pc || pk || pca) sec.peerTls = { cert: pc ?? '', key: pk ?? '', ca: pca ?? '' };
  const keys = get('keys-file');
  if (keys) sec.keysFile = keys;
  const ck = get('cluster-key');
  const ckFile = get('cluster-key-file');
  if (ck && ckFile)
    throw new Error(
      'set the cluster key or a cluster key file (ZEORAFT_CLUSTER_KEY_FILE), not both',
    );
  if (ck) sec.clusterKey = ck;
  if (ckFile) sec.clusterKey = readClusterKey(ckFile);
  const insecure = get('insecure-peers');
  if (insecure !== undefined && insecure !== '') {
    if (!/^(1|true|yes|on|0|false|no|off)$/i.test(insecure))
      throw new Error(`insecure-peers must be true or false, got ${JSON.stringify(insecure)}`);
    if (/^(1|true|yes|on)$/i.test(insecure)) sec.insecurePeers = true;
  }
  const ac = get('allow-clients');
  if (ac !== undefined) sec.allowClients = list(ac);
  const ap = get('allow-peers');
  if (ap !== undefined) sec.allowPeers = list(ap);
  const ah = get('allow-http');
  if (ah !== undefined) sec.allowHttp = list(ah);
  const zeo = get('zeo-access');
  if (zeo) {
    if (!['read-write', 'read-only', 'off'].includes(zeo))
      throw new Error(
        `zeo-access must be read-write, read-only or off, got ${JSON.stringify(zeo)}`,
      );
    sec.zeoAccess = zeo as ZeoAccess;
  }
  if (Object.keys(sec).length > 0) o.security = sec;
  for (const [name, field] of Object.entries(LIMIT_SETTINGS) as [
    SecuritySettingName,
    keyof LimitsConfig,
  ][]) {
    const v = get(name);
    if (v !== undefined)
      o.limits = { ...DEFAULT_LIMITS, ...(o.limits ?? {}), [field]: positive(v, name) };
  }
}
