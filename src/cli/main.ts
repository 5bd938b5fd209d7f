/**
 * The zeoraft command line: the only place that reads argv and the environment.
 *
 *   zeoraft server [flags]        run one node (standalone, or a cluster member with --peers)
 *   zeoraft cluster [--nodes 3]   run a local three-node cluster on 127.0.0.1 (Ctrl-C stops it)
 *   zeoraft status [--address]    show every member: role, term, indexes, last TID
 */
import { parseArgs } from 'node:util';
import { runCluster } from './cluster';
import { SETTINGS, buildConfig } from './config-source';
import { runServer } from './server';
import { runAdminCommand } from './admin';
import { makeCerts } from './certs';
import { runKeysCommand } from './keys';

/** Flags that take no value. */
const BOOLEAN_FLAGS = new Set(['insecure-peers']);

const USAGE = `usage: zeoraft <command> [flags]

commands:
  server             run a node; settings from flags, ZEORAFT_* variables or --config FILE
  cluster            run a local three-node cluster (ports 7101-7103 client, 7201-7203 peer, 7301-7303 http;
                     peers share a random key kept in DATA_DIR/cluster.key, made on first start)
  status             show the cluster's members (--address HOST:PORT of any node, default 127.0.0.1:7101;
                     --key KEY, --ca CA.pem [--cert C --cert-key K] for a secured cluster)
  member add ID PEER_ADDR CLIENT_ADDR | member promote ID | member remove ID
  transfer-leader ID
  snapshot           ask the node to compact its log now
  certs --out DIR --nodes n1,n2,n3     make a development CA and node certificates (openssl)
  keys add --file F --role read-write|read-only|admin --storages 1,...   print a new key, store its hash
  keys list --file F

server flags (environment variable in brackets):
${Object.entries(SETTINGS)
  .map(([f, e]) => `  --${f.padEnd(26)} [${e}]`)
  .join('\n')}
`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'server': {
      const options = Object.fromEntries(
        Object.keys(SETTINGS).map((k) => [
          k,
          { type: BOOLEAN_FLAGS.has(k) ? ('boolean' as const) : ('string' as const) },
        ]),
      );
      const { values } = parseArgs({ args: rest, options, allowPositionals: false });
      const config = buildConfig(values as Record<string, string>, process.env);
      await runServer(config);
      return -1; // keeps running until a signal
    }
    case 'cluster': {
      const { values } = parseArgs({
        args: rest,
        options: {
          nodes: { type: 'string' },
          'data-dir': { type: 'string' },
          'log-level': { type: 'string' },
          'base-port': { type: 'string' },
          tls: { type: 'boolean' },
        },
      });
      await runCluster({
        nodes: Number(values.nodes ?? 3),
        dataDir: values['data-dir'] ?? './data',
        logLevel: values['log-level'] ?? 'warn',
        basePort: Number(values['base-port'] ?? 7100),
        tls: values.tls === true,
      });
      return -1;
    }
    case 'certs': {
      const { values } = parseArgs({
        args: rest,
        options: { out: { type: 'string' }, nodes: { type: 'string' }, hosts: { type: 'string' } },
      });
      const split = (s?: string): string[] => (s ?? '').split(',').filter(Boolean);
      const files = makeCerts({
        out: values.out ?? './certs',
        nodes: split(values.nodes ?? 'n1,n2,n3'),
        hosts: split(values.hosts),
      });
      process.stdout.write(`${files.join('\n')}\n`);
      return 0;
    }
    case 'keys':
      return runKeysCommand(rest);
    case 'status':
    case 'member':
    case 'transfer-leader':
    case 'snapshot':
      return runAdminCommand(command, rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return command ? 0 : 2;
    default:
      process.stderr.write(`unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (e: unknown) => {
    process.stderr.write(`zeoraft: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
