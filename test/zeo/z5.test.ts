/**
 * The ZEO door's encodings on real node processes: by default it greets M5 and refuses a client
 * answering Z5; with ZEORAFT_ZEO_ENCODING=pickle it greets Z5, serves pickled calls, still serves a
 * client answering M5, and closes the connection of a client sending a pickle that is not plain
 * values (a global, a call) without running anything, while the node goes on serving. In either
 * encoding a message whose id is not one a ZEO client sends (a deep structure the reply would echo)
 * closes that connection only.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { decode, encode } from '@msgpack/msgpack';
import { buildConfig } from '../../src/cli/config-source';
import { FrameDecoder, frame } from '../../src/zeo/framing';
import { encodePickledMessage, unpickle } from '../../src/zeo/pickle-marshal';
import { NodeProcess, freePort, rmDir, tmpDir } from '../harness';

/** A raw ZEO connection: the greeting, a handshake, then framed messages either way. */
class Raw {
  private readonly decoder = new FrameDecoder(1 << 26);
  private readonly frames: Buffer[] = [];
  private wake: (() => void) | undefined;
  closed = false;
  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.frames.push(...this.decoder.push(d));
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }
  static async open(port: number): Promise<Raw> {
    const s = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    return new Raw(s);
  }
  /** The next frame, or null once the server closed the connection. */
  async next(timeoutMs = 10_000): Promise<Buffer | null> {
    const end = Date.now() + timeoutMs;
    while (!this.frames.length) {
      if (this.closed) return null;
      if (Date.now() > end) throw new Error('no frame from the server');
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    return this.frames.shift()!;
  }
  send(payload: Uint8Array): void {
    this.socket.write(frame(payload));
  }
  close(): void {
    this.socket.destroy();
  }
}

describe('ZEO door: encodings (M5, and Z5 when configured)', function () {
  this.timeout(60_000);
  const nodes: { proc: NodeProcess; dir: string; zeo: number }[] = [];
  const raws: Raw[] = [];

  async function start(extra: Record<string, string>): Promise<number> {
    const dir = tmpDir('zeo-z5');
    const zeo = await freePort();
    const proc = await NodeProcess.start({
      ZEORAFT_NODE_ID: 'n1',
      ZEORAFT_DATA_DIR: dir,
      ZEORAFT_LISTEN: `127.0.0.1:${await freePort()}`,
      ZEORAFT_ZEO_LISTEN: `127.0.0.1:${zeo}`,
      ...extra,
    });
    nodes.push({ proc, dir, zeo });
    return zeo;
  }

  async function open(port: number, answer: string): Promise<{ raw: Raw; greeting: string }> {
    const raw = await Raw.open(port);
    raws.push(raw);
    const greeting = (await raw.next())!.toString('latin1');
    raw.send(Buffer.from(answer, 'latin1'));
    return { raw, greeting };
  }

  let msgpackPort = 0;
  let picklePort = 0;
  before(async () => {
    msgpackPort = await start({});
    picklePort = await start({ ZEORAFT_ZEO_ENCODING: 'pickle' });
  });

  after(async () => {
    for (const r of raws) r.close();
    for (const n of nodes) {
      await n.proc.kill('SIGKILL');
      rmDir(n.dir);
    }
  });

  it('takes msgpack (the default) or pickle, and refuses anything else with a clear error', () => {
    assert.equal(buildConfig({}, {}).zeoEncoding, 'msgpack');
    assert.equal(buildConfig({ 'zeo-encoding': 'pickle' }, {}).zeoEncoding, 'pickle');
    assert.equal(buildConfig({}, { ZEORAFT_ZEO_ENCODING: 'pickle' }).zeoEncoding, 'pickle');
    assert.throws(
      () => buildConfig({}, { ZEORAFT_ZEO_ENCODING: 'json' }),
      /zeo-encoding must be msgpack or pickle, got "json"/,
    );
  });

  it('greets M5 by default and refuses a client answering Z5', async () => {
    const { raw, greeting } = await open(msgpackPort, 'Z5');
    assert.equal(greeting, 'M5');
    assert.equal(await raw.next(), null, 'the connection is closed');
  });

  it('with ZEORAFT_ZEO_ENCODING=pickle greets Z5 and serves pickled calls', async () => {
    const { raw, greeting } = await open(picklePort, 'Z5');
    assert.equal(greeting, 'Z5');
    raw.send(encodePickledMessage(1, 0, 'register', ['1', false]));
    const reg = unpickle((await raw.next())!) as unknown[];
    assert.deepEqual(reg.slice(0, 3), [1, 0, '.reply']);
    assert.equal((reg[3] as Buffer).length, 8, 'the last TID');
    raw.send(encodePickledMessage(2, 0, 'new_oids', [3]));
    const oids = unpickle((await raw.next())!) as [number, number, string, Buffer[]];
    assert.equal(oids[3].length, 3);
    // An error travels as (class name, args) with flag 2, as ZEO 5 sends it in either encoding.
    raw.send(encodePickledMessage(3, 0, 'loadBefore', [oids[3][0], Buffer.alloc(8, 0x7f)]));
    const err = unpickle((await raw.next())!) as unknown[];
    assert.deepEqual(err.slice(0, 3), [3, 2, '.reply']);
    assert.equal((err[3] as unknown[])[0], 'ZODB.POSException.POSKeyError');
  });

  it('still serves a client answering M5 (the fallback)', async () => {
    const { raw, greeting } = await open(picklePort, 'M5');
    assert.equal(greeting, 'Z5');
    raw.send(Buffer.from(encode([1, 0, 'register', ['1', false]])));
    const reg = decode((await raw.next())!) as unknown[];
    assert.deepEqual(reg.slice(0, 3), [1, 0, '.reply']);
  });

  it('closes the connection of a pickle that is not plain values, runs nothing, and goes on serving', async () => {
    const marker = path.join(os.tmpdir(), `zeoraft-z5-${process.pid}-${Date.now()}`);
    const evil = [
      // os.system(f"touch {marker}") as the classic pickle payload: GLOBAL, args, REDUCE
      Buffer.concat([
        Buffer.from('8003', 'hex'),
        Buffer.from(`cos\nsystem\n`, 'latin1'),
        Buffer.from([0x58]),
        (() => {
          const cmd = Buffer.from(`touch ${marker}`);
          const len = Buffer.alloc(4);
          len.writeUInt32LE(cmd.length);
          return Buffer.concat([len, cmd]);
        })(),
        Buffer.from('85522e', 'hex'),
      ]),
      Buffer.from('80037d7d622e', 'hex'), // BUILD
      Buffer.from('8003', 'hex'), // truncated
    ];
    for (const bytes of evil) {
      const { raw } = await open(picklePort, 'Z5');
      raw.send(bytes);
      assert.equal(await raw.next(), null, 'the connection is closed');
    }
    assert.equal(fs.existsSync(marker), false, 'nothing ran');
    const { raw } = await open(picklePort, 'Z5');
    raw.send(encodePickledMessage(1, 0, 'register', ['1', false]));
    assert.ok(await raw.next(), 'the node still serves');
  });

  it('closes a connection whose message id is a deep structure, in either encoding', async () => {
    let deep: unknown = 1;
    for (let i = 0; i < 150; i++) deep = [deep];
    const m = await open(msgpackPort, 'M5');
    m.raw.send(Buffer.from(encode([deep, 0, 'register', ['1', false]], { maxDepth: 1000 })));
    assert.equal(await m.raw.next(), null);
    let deep2: unknown = 1;
    for (let i = 0; i < 90; i++) deep2 = [deep2];
    const p = await open(picklePort, 'Z5');
    p.raw.send(encodePickledMessage(deep2, 0, 'register', ['1', false]));
    assert.equal(await p.raw.next(), null);
    for (const port of [msgpackPort, picklePort]) {
      const { raw } = await open(port, port === msgpackPort ? 'M5' : 'Z5');
      raw.send(
        port === msgpackPort
          ? Buffer.from(encode([1, 0, 'register', ['1', false]]))
          : encodePickledMessage(1, 0, 'register', ['1', false]),
      );
      assert.ok(await raw.next(), 'the node still serves');
    }
    for (const n of nodes) assert.ok(n.proc.alive, 'no node died');
  });
});
