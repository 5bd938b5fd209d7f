/**
 * The client's blob cache: one read-only file per blob revision (`<oid>-<serial>.blob`) in a
 * directory, bounded in bytes. The least recently used files are removed when a new one makes the
 * total exceed the bound; a blob larger than the whole bound is kept alone until the next one
 * arrives (the caller was given its path). Downloads land in a `.part` file first and are renamed
 * into place only when complete, so a cached file is always a whole blob; `.part` files left by
 * a crash are removed when the cache opens.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hex } from '../util/ids';

export const DEFAULT_BLOB_CACHE_BYTES = 1 << 30;
const BLOB_SUFFIX = '.blob';
const PART_SUFFIX = '.part';

export class BlobCache {
  /** File name -> size, least recently used first. */
  private readonly files = new Map<string, number>();
  private total = 0;
  private partCounter = 0;

  private constructor(
    readonly dir: string,
    readonly bytesMax: number,
  ) {}

  static async open(dir: string, bytesMax = DEFAULT_BLOB_CACHE_BYTES): Promise<BlobCache> {
    if (!Number.isSafeInteger(bytesMax) || bytesMax < 1)
      throw new RangeError('the blob cache bound must be a positive number of bytes');
    await fs.promises.mkdir(dir, { recursive: true });
    const cache = new BlobCache(dir, bytesMax);
    const found: { name: string; size: number; mtimeMs: number }[] = [];
    for (const name of await fs.promises.readdir(dir)) {
      const file = path.join(dir, name);
      if (name.endsWith(PART_SUFFIX)) {
        await fs.promises.rm(file, { force: true });
        continue;
      }
      if (!name.endsWith(BLOB_SUFFIX)) continue;
      const st = await fs.promises.stat(file);
      found.push({ name, size: st.size, mtimeMs: st.mtimeMs });
    }
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    for (const f of found) {
      cache.files.set(f.name, f.size);
      cache.total += f.size;
    }
    await cache.evict(undefined);
    return cache;
  }

  /** Bytes of the cached files. */
  get bytes(): number {
    return this.total;
  }

  private name(oid: Buffer, serial: Buffer): string {
    return `${hex(oid)}-${hex(serial)}${BLOB_SUFFIX}`;
  }

  /** The cached file of a blob revision (now the most recently used), or undefined. */
  lookup(oid: Buffer, serial: Buffer): string | undefined {
    const name = this.name(oid, serial);
    const size = this.files.get(name);
    if (size === undefined) return undefined;
    this.files.delete(name);
    this.files.set(name, size);
    return path.join(this.dir, name);
  }

  /** A fresh temporary file name in the cache directory for a download in progress. */
  partPath(oid: Buffer, serial: Buffer): string {
    return path.join(
      this.dir,
      `${this.name(oid, serial)}.${process.pid}.${++this.partCounter}${PART_SUFFIX}`,
    );
  }

  /** Move a complete download into the cache; returns its path. */
  async add(oid: Buffer, serial: Buffer, part: string): Promise<string> {
    const name = this.name(oid, serial);
    const file = path.join(this.dir, name);
    const { size } = await fs.promises.stat(part);
    await fs.promises.chmod(part, 0o444);
    await fs.promises.rename(part, file);
    const prev = this.files.get(name);
    if (prev !== undefined) this.total -= prev;
    this.files.delete(name);
    this.files.set(name, size);
    this.total += size;
    await this.evict(name);
    return file;
  }

  /** Remove least recently used files (never `keep`) until the total is within the bound. */
  private async evict(keep: string | undefined): Promise<void> {
    for (const [name, size] of [...this.files]) {
      if (this.total <= this.bytesMax) return;
      if (name === keep) continue;
      this.files.delete(name);
      this.total -= size;
      await fs.promises.rm(path.join(this.dir, name), { force: true });
    }
  }
}
