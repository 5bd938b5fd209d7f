/**
 * Pickle framing (Z5): test/zodb/z5_client.py, a ZEO client that cannot import msgpack, against a
 * three-node cluster greeting Z5 (ZEORAFT_ZEO_ENCODING=pickle): it connects, commits and loads,
 * sees another client's commit, gets ConflictError and POSKeyError, undoes, iterates and packs.
 *
 * Needs the pinned Python environment (`make zodb-venv`); `make zodb-suites` builds it and runs this
 * file, so CI always runs it. Without the environment (a plain `make test`) it is skipped, saying so.
 */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ZeoCluster } from '../harness/zeo-cluster';

const ROOT = path.resolve(__dirname, '../../..');
const PYTHON = path.join(ROOT, '.venv-zodb/bin/python');
const SCRIPT = path.join(ROOT, 'test/zodb/z5_client.py');

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out })));
}

describe('ZEO door: a client without msgpack over pickle framing (Z5)', function () {
  this.timeout(120_000);
  const cluster = new ZeoCluster('zodb-z5', {
    ZEORAFT_ZEO_ENCODING: 'pickle',
  });

  before(async function () {
    if (!fs.existsSync(PYTHON)) {
      console.log(`    skipped: no ${PYTHON} (make zodb-venv; make zodb-suites runs this file)`);
      this.skip();
    }
    await cluster.start();
  });

  after(async () => {
    await cluster.stop();
  });

  it('connects, commits, loads through another node, gets ZODB exceptions, undoes, iterates and packs', async () => {
    const zeo = cluster.zeoAddresses();
    const r = await run(PYTHON, [SCRIPT, '--zeo', zeo]);
    assert.equal(r.code, 0, `z5_client.py failed:\n${r.out}`);
    const line = r.out.split('\n').find((l) => l.startsWith('{'));
    assert.ok(line, `no result line:\n${r.out}`);
    const result = JSON.parse(line);
    assert.equal(result.protocol, 'Z5');
    assert.deepEqual(result.done, [
      'commit',
      'load elsewhere',
      'ConflictError',
      'POSKeyError',
      'undo',
      'iterate, history, pack',
    ]);
  });
});
