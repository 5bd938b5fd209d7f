/**
 * Moving a site in: test/zodb/migrate.py builds a FileStorage with history, undo records and a pack
 * with the real ZODB, runs zodbconvert from it into storage 1 of a three-node cluster through a ZEO
 * port, and compares the copy with the source transaction by transaction through another node;
 * then packs the copy with garbage collection (what is reachable stays, an orphan goes).
 *
 * Needs the pinned Python environment (`make zodb-venv`); `make zodb-suites` builds it and runs this
 * file, so CI always runs it. Without the environment (a plain `make test`) it is skipped, saying so.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rmDir, tmpDir } from '../harness';
import { ZeoCluster } from '../harness/zeo-cluster';

const ROOT = path.resolve(__dirname, '../../..');
const PYTHON = path.join(ROOT, '.venv-zodb/bin/python');
const SCRIPT = path.join(ROOT, 'test/zodb/migrate.py');
/** Transactions in the source FileStorage. */
const SOURCE_TRANSACTIONS = 300;
/** Transactions in the source FileStorage with blobs (cycles of eight). */
const BLOB_SOURCE_TRANSACTIONS = 40;

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out })));
}

describe('moving a site in: zodbconvert from a FileStorage through the ZEO door', function () {
  this.timeout(300_000);
  const cluster = new ZeoCluster('zodb-migrate', {
    ZEORAFT_STORAGES: '1,blobs',
  });
  const work = tmpDir('zodb-migrate');

  before(async function () {
    if (!fs.existsSync(PYTHON)) {
      console.log(`    skipped: no ${PYTHON} (make zodb-venv; make zodb-suites runs this file)`);
      this.skip();
    }
    await cluster.start();
  });

  after(async () => {
    await cluster.stop();
    rmDir(work);
  });

  it('copies every transaction with its TID, status, metadata and records, byte for byte', async () => {
    const zeo = cluster.zeoAddresses();
    const r = await run(PYTHON, [
      SCRIPT,
      '--zeo',
      zeo,
      '--workdir',
      work,
      '--transactions',
      String(SOURCE_TRANSACTIONS),
      '--blob-transactions',
      String(BLOB_SOURCE_TRANSACTIONS),
    ]);
    assert.equal(r.code, 0, `migrate.py failed:\n${r.out}`);
    const line = r.out.split('\n').find((l) => l.startsWith('{'));
    assert.ok(line, `no result line:\n${r.out}`);
    const counts = JSON.parse(line);
    console.log(`    ${line}`);
    // One per step and the set-up, less those the source's pack removed (all records gone).
    assert.ok(counts.transactions > SOURCE_TRANSACTIONS / 2, `${counts.transactions} copied`);
    assert.ok(counts.without_data > 0, 'undone creations (records without data) were copied');
    assert.ok(counts.backpointers > 0, 'undo records (backpointers) were copied');
    assert.ok(counts.statuses.p > 0 && counts.statuses[' '] > 0, 'packed and ordinary statuses');
    // Pack with garbage collection on the copy kept what is reachable and collected the orphan.
    assert.ok(counts.after_pack.reachable > 0 && counts.after_pack.collected >= 1);
    // The site with blobs: every blob revision compared, undone blob creations copied.
    const blobs = counts.blob_site;
    // ZODB.DB's root creation, the set-up, then one per step (this source is not packed).
    assert.equal(blobs.transactions, BLOB_SOURCE_TRANSACTIONS + 2);
    assert.ok(blobs.blobs >= BLOB_SOURCE_TRANSACTIONS / 2, `${blobs.blobs} blob files compared`);
    assert.ok(blobs.without_data > 0, 'undone blob creations were copied');
  });
});
