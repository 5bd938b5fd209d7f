/**
 * `zeoraft keys add --file KEYS.json --role read-write --storages 1,other [--comment TEXT]`
 * prints a new random key once and appends only its SHA-256 hash to the keys file (created if
 * missing, mode 0600). `zeoraft keys list --file KEYS.json` shows ids, roles and storages.
 * Nodes re-read the file when it changes, so a new key works without a restart.
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import {
  KeyEntry,
  KeysFile,
  ROLES,
  Role,
  generateKey,
  hashKey,
  validateKeyEntry,
} from '../server/security-keys';

function readKeys(file: string): KeysFile {
  if (!fs.existsSync(file)) return { keys: [] };
  const k = JSON.parse(fs.readFileSync(file, 'utf8')) as KeysFile;
  if (!Array.isArray(k.keys)) throw new Error(`${file}: expected {"keys": [...]}`);
  return k;
}

/** Add a key; returns the key itself (shown once, never stored). */
export function addKey(file: string, role: Role, storages: string[], comment = ''): string {
  const keys = readKeys(file);
  const key = generateKey();
  const hash = hashKey(key);
  const entry: KeyEntry = {
    id: hash.slice('sha256:'.length, 'sha256:'.length + 12),
    role,
    storages,
    hash,
    comment,
    created: new Date().toISOString(),
  };
  validateKeyEntry(entry, file);
  keys.keys.push(entry);
  // Write beside and rename, so a node never reads a half-written file.
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(keys, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return key;
}

export function runKeysCommand(args: string[]): number {
  const [sub, ...rest] = args;
  const { values } = parseArgs({
    args: rest,
    options: {
      file: { type: 'string' },
      role: { type: 'string' },
      storages: { type: 'string' },
      comment: { type: 'string' },
    },
  });
  const file = values.file ?? process.env.ZEORAFT_KEYS_FILE;
  if (!file) throw new Error('keys: --file KEYS.json (or ZEORAFT_KEYS_FILE) is required');
  if (sub === 'add') {
    const role = (values.role ?? 'read-write') as Role;
    if (!ROLES.includes(role))
      throw new Error(`keys add: --role must be one of ${ROLES.join(', ')}`);
    const storages = (values.storages ?? '1')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const key = addKey(file, role, storages, values.comment ?? '');
    process.stderr.write(
      `added a ${role} key for storages ${storages.join(',')} to ${file}; it is shown only now:\n`,
    );
    process.stdout.write(`${key}\n`);
    return 0;
  }
  if (sub === 'list') {
    for (const k of readKeys(file).keys)
      process.stdout.write(
        `${k.id}  ${k.role.padEnd(10)}  ${k.storages.join(',').padEnd(20)}  ${k.comment ?? ''}\n`,
      );
    return 0;
  }
  throw new Error('usage: zeoraft keys add|list --file KEYS.json [--role R --storages a,b]');
}
