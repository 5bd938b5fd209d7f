/**
 * `zeoraft certs --out DIR --nodes n1,n2,n3`: a development CA and one certificate per node, made
 * with the openssl binary. Each node certificate serves both TLS roles (serverAuth and clientAuth),
 * so one file pair is the node's client-listener certificate, its peer-listener certificate and
 * the certificate it presents to its peers. SANs: 127.0.0.1, ::1, localhost, the compose service
 * names zeoraft1..3, the node's id, and the URI `zeoraft-node:<id>` that makes it a peer
 * certificate (peer-auth.ts: the peer listener accepts only certificates naming the node that
 * calls). A `client` certificate is made too, for client-certificate authentication
 * (ZEORAFT_TLS_CLIENT_AUTH): clientAuth only and no node URI, so it cannot stand in for a peer.
 *
 * Files: ca.crt, ca.key, <node>.crt, <node>.key, client.crt, client.key. Keys are P-256 (quick to
 * make) and written mode 0600. An existing CA in DIR is reused, so nodes can be added later.
 * Development only: a production CA key does not belong next to the certificates.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { PEER_CERT_URI_SCHEME, certNodeIds } from '../server/peer-auth';

export interface CertsOptions {
  out: string;
  nodes: string[];
  /** Extra DNS names or IP addresses for every node certificate. */
  hosts?: string[];
  days?: number;
}

const COMPOSE_NAMES = ['zeoraft1', 'zeoraft2', 'zeoraft3'];
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    throw new Error(`openssl ${args[0]} failed: ${err.stderr?.toString().trim() || err.message}`);
  }
}

function ecKey(file: string, cwd: string): void {
  openssl(
    ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file],
    cwd,
  );
  fs.chmodSync(path.join(cwd, file), 0o600);
}

function san(names: string[]): string {
  return [...new Set(names)]
    .map((n) => (/^[\d.]+$/.test(n) || n.includes(':') ? `IP:${n}` : `DNS:${n}`))
    .join(',');
}

/** Whether DIR holds a certificate for `node` that names it as a peer (older ones did not). */
export function hasPeerCert(dir: string, node: string): boolean {
  try {
    const cert = new X509Certificate(fs.readFileSync(path.join(dir, `${node}.crt`)));
    return certNodeIds({ subjectaltname: cert.subjectAltName }).includes(node);
  } catch {
    return false;
  }
}

/** Make the CA (unless DIR has one) and the node and client certificates; returns the files written. */
export function makeCerts(opts: CertsOptions): string[] {
  const dir = path.resolve(opts.out);
  const days = String(opts.days ?? 825);
  for (const n of opts.nodes)
    if (!NAME.test(n) || n === 'ca')
      throw new Error(`node name ${JSON.stringify(n)} is not allowed`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const written: string[] = [];
  if (!fs.existsSync(path.join(dir, 'ca.crt')) || !fs.existsSync(path.join(dir, 'ca.key'))) {
    ecKey('ca.key', dir);
    openssl(
      [
        'req',
        '-x509',
        '-new',
        '-key',
        'ca.key',
        '-out',
        'ca.crt',
        '-days',
        '3650',
        '-subj',
        '/CN=ZeoRaft development CA',
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'keyUsage=critical,keyCertSign,cRLSign',
      ],
      dir,
    );
    written.push('ca.crt', 'ca.key');
  }
  const hosts = ['127.0.0.1', '::1', 'localhost', ...COMPOSE_NAMES, ...(opts.hosts ?? [])];
  for (const name of [...opts.nodes, 'client']) {
    const ext = `${name}.ext`;
    const client = name === 'client';
    fs.writeFileSync(
      path.join(dir, ext),
      [
        'basicConstraints=CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        client ? 'extendedKeyUsage=clientAuth' : 'extendedKeyUsage=serverAuth,clientAuth',
        client
          ? `subjectAltName=${san(hosts)}`
          : `subjectAltName=${san([...hosts, name])},URI:${PEER_CERT_URI_SCHEME}:${name}`,
        '',
      ].join('\n'),
    );
    ecKey(`${name}.key`, dir);
    openssl(
      ['req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`],
      dir,
    );
    openssl(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-out',
        `${name}.crt`,
        '-days',
        days,
        '-extfile',
        ext,
      ],
      dir,
    );
    fs.rmSync(path.join(dir, `${name}.csr`));
    fs.rmSync(path.join(dir, ext));
    written.push(`${name}.crt`, `${name}.key`);
  }
  return written.map((f) => path.join(dir, f));
}

/** The ZEORAFT_* variables that turn on TLS (clients) and mutual TLS (peers) with certificates from makeCerts. */
export function tlsEnv(dir: string, node: string): Record<string, string> {
  const f = (n: string): string => path.join(path.resolve(dir), n);
  return {
    ZEORAFT_TLS_CERT: f(`${node}.crt`),
    ZEORAFT_TLS_KEY: f(`${node}.key`),
    ZEORAFT_TLS_CA: f('ca.crt'),
    ZEORAFT_PEER_TLS_CERT: f(`${node}.crt`),
    ZEORAFT_PEER_TLS_KEY: f(`${node}.key`),
    ZEORAFT_PEER_TLS_CA: f('ca.crt'),
  };
}
