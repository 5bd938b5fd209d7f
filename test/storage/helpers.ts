/**
 * Shared fixtures for the object store tests: a real ObjectStore on LevelDB in a fresh temp
 * directory, an apply helper that hands out increasing log indexes, and small constructors.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CheckOp, Command, StoreOp } from '../../src/storage/codec';
import { StorageError, StorageErrorKind } from '../../src/storage/errors';
import { ApplyResult, ObjectStore, ObjectStoreOptions } from '../../src/storage/object-store';
import { Z64, p64 } from '../../src/util/ids';

/** ZEO's default storage name. */
export const ST = '1';

export function oid(n: number | bigint): Buffer {
  return p64(BigInt(n));
}

export function tidOf(n: number | bigint): Buffer {
  return p64(BigInt(n));
}

export function data(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

export function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'zeoraft-store-'));
}

export interface CommitOptions {
  storage?: string;
  tid?: Buffer;
  user?: string;
  description?: string;
  extension?: Buffer;
  checks?: CheckOp[];
}

/** One store in its own temp directory; `apply` numbers commands 1, 2, 3, ... */
export class TestStore {
  index = 0;

  private constructor(
    readonly dir: string,
    public store: ObjectStore,
    private readonly options: Partial<ObjectStoreOptions> = {},
  ) {}

  static async create(
    dir: string = tempDir(),
    options: Partial<ObjectStoreOptions> = {},
  ): Promise<TestStore> {
    return new TestStore(dir, await ObjectStore.open(dir, { sync: false, ...options }), options);
  }

  apply(cmd: Command): Promise<ApplyResult> {
    this.index += 1;
    return this.store.apply(this.index, cmd);
  }

  commit(stores: StoreOp[], opts: CommitOptions = {}): Promise<ApplyResult> {
    return this.apply({
      commit: {
        tid: opts.tid ?? Z64,
        txn: {
          storage: opts.storage ?? ST,
          user: opts.user,
          description: opts.description,
          extension: opts.extension,
          stores,
          checks: opts.checks,
        },
      },
    });
  }

  /** Commit and return the TID, failing the test when the commit fails. */
  async mustCommit(stores: StoreOp[], opts: CommitOptions = {}): Promise<Buffer> {
    return mustTid(await this.commit(stores, opts));
  }

  /** Store one object with the given base serial (z64 for a new object); returns the new serial. */
  put(o: Buffer, serial: Buffer, d: string | Buffer, opts: CommitOptions = {}): Promise<Buffer> {
    return this.mustCommit([{ oid: o, serial, data: typeof d === 'string' ? data(d) : d }], opts);
  }

  async reopen(): Promise<void> {
    await this.store.close();
    this.store = await ObjectStore.open(this.dir, { sync: false, ...this.options });
    this.index = this.store.appliedIndex;
  }

  async destroy(): Promise<void> {
    await this.store.close().catch(() => undefined);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function mustTid(r: ApplyResult): Buffer {
  if (!r.ok) assert.fail(`expected success, got ${r.error.kind}: ${r.error.message}`);
  assert.ok(r.tid, 'a successful commit returns its TID');
  return r.tid;
}

/** Assert a failed result of the given kind and return its error. */
export function expectError(r: ApplyResult, kind: StorageErrorKind): StorageError {
  if (r.ok) assert.fail(`expected ${kind}, got success ${JSON.stringify(r)}`);
  assert.ok(r.error instanceof StorageError);
  assert.equal(r.error.kind, kind, r.error.message);
  return r.error;
}

/** Assert that a read rejects with a StorageError of the given kind. */
export async function rejectsWith(p: Promise<unknown>, kind: StorageErrorKind): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof StorageError, `expected a StorageError, got ${String(e)}`);
    assert.equal(e.kind, kind, e.message);
    return true;
  });
}

export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}
