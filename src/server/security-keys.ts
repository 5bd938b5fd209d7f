/**
 * Security keys: the keys file, its entries and roles, and the principal a presented key maps to.
 *
 * Keys. A keys file (JSON) holds only the SHA-256 of each key, with a role and the storages it may
 * use. SHA-256 and not scrypt: keys are 256 random bits made by `zeoraft keys add`, so the hash
 * does not need to be slow to resist guessing (there is nothing to guess from: 2^256 keys), and a
 * slow KDF on every request would hand an attacker a cheap way to burn the node's CPU. A presented
 * key is hashed and compared against every stored hash with crypto.timingSafeEqual (no early exit).
 *
 * Roles: `read-only` (reads of its storages), `read-write` (reads and writes of its storages),
 * `admin` (read-write plus the Admin service). `storages: ["*"]` means every storage. The cluster
 * key (ZEORAFT_CLUSTER_KEY), presented as a client key, counts as admin (nodes use it to probe each
 * other's client listeners). Health and reflection need no key (they reveal nothing stored).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import type { Logger } from '../util/log';

export const KEY_METADATA = 'x-zeoraft-key';
export type Role = 'read-only' | 'read-write' | 'admin';
export const ROLES: readonly Role[] = ['read-only', 'read-write', 'admin'];

export interface KeyEntry {
  id: string;
  role: Role;
  storages: string[];
  /** "sha256:" + hex of the key. */
  hash: string;
  comment?: string;
  created?: string;
}

export interface KeysFile {
  keys: KeyEntry[];
}

/** A new random key: 256 bits, base64url, with a recognisable prefix. */
export function generateKey(): string {
  return `zrk_${randomBytes(32).toString('base64url')}`;
}

export function hashKey(key: string): string {
  return `sha256:${createHash('sha256').update(key, 'utf8').digest('hex')}`;
}

/** The SHA-256 of a key, as stored (without the "sha256:" prefix) and compared. */
export const digest = (key: string): Buffer => createHash('sha256').update(key, 'utf8').digest();

export function validateKeyEntry(k: KeyEntry, where: string): void {
  const fail = (m: string): never => {
    throw new Error(`invalid keys file ${where}: ${m}`);
  };
  if (!k || typeof k !== 'object') fail('an entry is not an object');
  if (!/^sha256:[0-9a-f]{64}$/.test(k.hash)) fail(`key ${k.id}: hash must be sha256:<64 hex>`);
  if (!ROLES.includes(k.role)) fail(`key ${k.id}: role must be one of ${ROLES.join(', ')}`);
  if (!Array.isArray(k.storages) || k.storages.length === 0)
    fail(`key ${k.id}: storages must list at least one storage (or "*")`);
}

export interface Principal {
  id: string;
  role: Role;
  storages: string[];
}

/** Whether `p` may see storage `st` at all (Status lists only those). */
export function mayUse(p: Principal | undefined, st: string): boolean {
  return !p || p.storages.includes('*') || p.storages.includes(st);
}

/** The keys file, re-read when it changes (checked at most once per second), so added keys work without a restart. */
export class KeyStore {
  private entries: Array<{ principal: Principal; digest: Buffer }> = [];
  private mtimeMs = -1;
  private checkedAtMs = 0;

  constructor(
    readonly file: string,
    private readonly log?: Logger,
  ) {
    this.load();
  }

  private load(): void {
    const st = fs.statSync(this.file);
    if (st.mtimeMs === this.mtimeMs) return;
    const parsed = JSON.parse(fs.readFileSync(this.file, 'utf8')) as KeysFile;
    if (!parsed || !Array.isArray(parsed.keys))
      throw new Error(`invalid keys file ${this.file}: expected {"keys": [...]}`);
    for (const k of parsed.keys) validateKeyEntry(k, this.file);
    this.entries = parsed.keys.map((k) => ({
      principal: { id: k.id, role: k.role, storages: k.storages },
      digest: Buffer.from(k.hash.slice('sha256:'.length), 'hex'),
    }));
    this.mtimeMs = st.mtimeMs;
  }

  private refresh(): void {
    const now = Date.now();
    if (now - this.checkedAtMs < 1000) return;
    this.checkedAtMs = now;
    try {
      this.load();
    } catch (e) {
      // Keep the keys we have: a half-written file must not lock everybody out.
      this.log?.warn({ file: this.file, error: String(e) }, 'keys file not reloaded');
    }
  }

  /** The key's principal, or undefined. Compares against every entry in constant time per entry. */
  lookup(key: string): Principal | undefined {
    return this.lookupDigest(digest(key));
  }

  /** Like lookup, by the key's SHA-256. */
  lookupDigest(d: Buffer): Principal | undefined {
    this.refresh();
    let found: Principal | undefined;
    for (const e of this.entries) if (timingSafeEqual(d, e.digest) && !found) found = e.principal;
    return found;
  }
}
