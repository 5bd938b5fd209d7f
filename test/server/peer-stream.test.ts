/**
 * The Raft stream on its own, over real loopback sockets: the frame parser on bytes alone; a
 * sender (StreamLink) against a receiver (acceptStream) that authenticates with the cluster key
 * as a node does; a receiver that stops reading, which the sender cuts off without holding more
 * than its bound; and reconnection after the receiver goes away and comes back. The refusals of
 * real nodes (another CA, another key, forged senders) are in test/security.
 */
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import * as grpc from '@grpc/grpc-js';
import type { Envelope } from '../../src/generated/zeoraft/v1/raft/Envelope';
import type { Envelope__Output } from '../../src/generated/zeoraft/v1/raft/Envelope';
import { MessageType } from '../../src/raft';
import { RpcError } from '../../src/server/errors';
import { authenticateClaim, peerMessageError, peerToken } from '../../src/server/peer-auth';
import {
  RECONNECT_BACKOFF_MAX_MS,
  SEND_BUFFER_BYTES_MAX,
  StreamLink,
  acceptStream,
} from '../../src/server/peer-stream';
import {
  FRAME_HEADER_BYTES,
  FrameError,
  FrameKind,
  FrameReader,
  STREAM_MAGIC,
  frame,
} from '../../src/server/peer-wire';
import { createLogger } from '../../src/util/log';
import { eventually, freePort, sleep } from '../harness';

const KEY = 'the-cluster-key-of-this-test-0123';

v8.setFlagsFromString('--expose_gc');
/** Collect garbage now, so memory measured afterwards is what is still held. */
const gc = vm.runInNewContext('gc') as () => void;

/** A receiving node's peer port, reduced to the Raft stream: the production acceptor code. */
class Receiver {
  readonly envelopes: Envelope__Output[] = [];
  readonly refusals: RpcError[] = [];
  connections = 0;
  private readonly open = new Set<net.Socket>();
  private readonly sockets = new Set<net.Socket>();
  private server: net.Server | undefined;
  /** When set, accepted connections are never read (a frozen peer). */
  frozen = false;

  constructor(
    readonly port: number,
    readonly id = 'n2',
  ) {}

  async start(): Promise<void> {
    this.server = net.createServer((socket) => {
      this.connections++;
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      if (this.frozen) {
        socket.pause();
        return;
      }
      let head = Buffer.alloc(0);
      const onData = (d: Buffer): void => {
        head = Buffer.concat([head, d]);
        if (head.length < STREAM_MAGIC.length) return;
        socket.off('data', onData);
        socket.pause();
        assert.deepEqual(head.subarray(0, STREAM_MAGIC.length), STREAM_MAGIC);
        acceptStream(socket, head.subarray(STREAM_MAGIC.length), () => undefined, {
          admit: (_address, hello) => {
            const a = authenticateClaim(hello.from, hello.token, undefined, {
              clusterKey: KEY,
              mtls: false,
            });
            if ('error' in a) {
              this.refusals.push(a.error);
              return a;
            }
            return hello.to === this.id
              ? a
              : { error: new RpcError(grpc.status.PERMISSION_DENIED, 'not for me') };
          },
          check: (_address, env, peer) => peerMessageError('Stream', env, peer, this.id),
          deliver: (env) => this.envelopes.push(env),
          open: this.open,
        });
      };
      socket.on('data', onData);
    });
    await new Promise<void>((resolve) => this.server!.listen(this.port, '127.0.0.1', resolve));
  }

  /** Close every connection in order, as a receiver's idle timeout does. */
  endAll(): void {
    for (const s of this.sockets) s.end();
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) =>
      this.server ? this.server.close(() => resolve()) : resolve(),
    );
    this.server = undefined;
  }
}

function link(
  port: number,
  opts: { key?: string; failures?: string[]; from?: string; to?: string } = {},
): StreamLink {
  const from = opts.from ?? 'n1';
  return new StreamLink({
    self: from,
    peer: opts.to ?? 'n2',
    address: () => `127.0.0.1:${port}`,
    token: peerToken(opts.key ?? KEY, from),
    onFailure: (why) => opts.failures?.push(why),
    log: createLogger('silent'),
    nowMs: () => Date.now(),
  });
}

function heartbeat(term: number, data = Buffer.alloc(0), from = 'n1', to = 'n2'): Envelope {
  return {
    from,
    messages: [
      {
        type: MessageType.Append,
        from,
        to,
        term,
        logTerm: term,
        index: term,
        entries: data.length ? [{ index: term + 1, term, type: 0, data }] : [],
        commit: 0,
      },
    ],
  };
}

describe('the Raft stream', function () {
  this.timeout(60_000);

  describe('frames', () => {
    it('splits a byte stream into frames, wherever the chunks end', () => {
      const bytes = Buffer.concat([
        frame(FrameKind.Hello, Buffer.from('hello')),
        frame(FrameKind.Ping),
        frame(FrameKind.Envelope, Buffer.alloc(1000, 7)),
      ]);
      for (const step of [1, 3, 5, 7, 64, bytes.length]) {
        const r = new FrameReader(() => 4096);
        const got: Array<{ kind: number; body: Buffer }> = [];
        for (let i = 0; i < bytes.length; i += step)
          got.push(...r.push(bytes.subarray(i, i + step)));
        assert.deepEqual(
          got.map((f) => [f.kind, f.body.length]),
          [
            [FrameKind.Hello, 5],
            [FrameKind.Ping, 0],
            [FrameKind.Envelope, 1000],
          ],
          `chunks of ${step}`,
        );
        assert.equal(got[0].body.toString(), 'hello');
        assert.equal(r.buffered, 0);
      }
    });

    it('refuses a frame over the limit from its header, before its body arrives', () => {
      const r = new FrameReader(() => 100);
      const header = frame(FrameKind.Envelope, Buffer.alloc(101)).subarray(0, FRAME_HEADER_BYTES);
      assert.throws(() => r.push(header), FrameError);
      assert.equal(r.buffered, FRAME_HEADER_BYTES, 'only the header was held');
    });
  });

  describe('between a sender and a receiver', () => {
    let receiver: Receiver;
    const links: StreamLink[] = [];
    beforeEach(async () => {
      receiver = new Receiver(await freePort());
      await receiver.start();
    });
    afterEach(async () => {
      for (const l of links.splice(0)) l.close();
      await receiver.stop();
    });

    it('delivers envelopes in order on one connection', async () => {
      const l = link(receiver.port);
      links.push(l);
      for (let t = 1; t <= 100; t++) l.send(heartbeat(t));
      await eventually(() => receiver.envelopes.length === 100, 10_000, 'every envelope');
      assert.deepEqual(
        receiver.envelopes.map((e) => e.messages[0].term),
        Array.from({ length: 100 }, (_, i) => i + 1),
      );
      assert.equal(receiver.connections, 1);
    });

    it('is refused without the cluster key, and for a message not from the authenticated node', async () => {
      const failures: string[] = [];
      const wrong = link(receiver.port, { key: 'another-key-of-enough-length', failures });
      links.push(wrong);
      wrong.send(heartbeat(1));
      await eventually(() => failures.some((f) => /refused/.test(f)), 10_000, 'a refusal');
      assert.match(
        failures.find((f) => /refused/.test(f))!,
        /wrong or missing cluster key/,
      );
      assert.equal(receiver.envelopes.length, 0);
      assert.equal(receiver.refusals[0].code, grpc.status.UNAUTHENTICATED);

      const forger: string[] = [];
      const member = link(receiver.port, { failures: forger });
      links.push(member);
      member.send(heartbeat(1, Buffer.alloc(0), 'n3'));
      await eventually(() => forger.some((f) => /refused/.test(f)), 10_000, 'a refusal');
      assert.match(
        forger.find((f) => /refused/.test(f))!,
        /a peer speaks only for itself/,
      );
      assert.equal(receiver.envelopes.length, 0);
    });

    it('cuts off a receiver that stops reading, holding no more than its bound', async () => {
      receiver.frozen = true;
      const failures: string[] = [];
      const l = link(receiver.port, { failures });
      links.push(l);
      const entry = Buffer.alloc(1 << 20, 1);
      gc();
      const memoryBefore = process.memoryUsage().arrayBuffers;
      let maxWaiting = 0;
      // 256 MiB offered: Raft's own bound (256 in-flight appends of up to 1 MiB each).
      for (let t = 1; t <= 256; t++) {
        l.send(heartbeat(t, entry));
        maxWaiting = Math.max(maxWaiting, l.waitingBytes);
        if (t % 16 === 0) await sleep(10); // let the socket take what the kernel accepts
      }
      assert.ok(
        maxWaiting <= SEND_BUFFER_BYTES_MAX + entry.length + 1024,
        `at most the bound was waiting (${maxWaiting} bytes)`,
      );
      assert.ok(
        failures.some((f) => /not reading/.test(f)),
        `the connection was cut: ${failures.slice(0, 3).join('; ')}`,
      );
      gc();
      const grown = process.memoryUsage().arrayBuffers - memoryBefore;
      assert.ok(grown < 64 << 20, `buffers grew by ${grown >> 20} MiB for 256 MiB sent`);
      // Once the peer reads again, the link reconnects and delivers.
      receiver.frozen = false;
      await eventually(
        async () => {
          l.send(heartbeat(1000));
          await sleep(50);
          return receiver.envelopes.length > 0;
        },
        20_000,
        'an envelope after the cut-off',
      );
    });

    it('reconnects without a failure after an orderly close (a receiver idle timeout)', async () => {
      const failures: string[] = [];
      const l = link(receiver.port, { failures });
      links.push(l);
      l.send(heartbeat(1));
      await eventually(() => receiver.envelopes.length === 1, 10_000, 'the first envelope');
      receiver.endAll();
      await eventually(() => receiver.connections === 1 && l.waitingBytes === 0, 10_000, 'closed');
      await sleep(200);
      l.send(heartbeat(2));
      await eventually(
        () => receiver.envelopes.length === 2,
        10_000,
        'an envelope after the close',
      );
      assert.equal(receiver.connections, 2, 'a new connection');
      assert.deepEqual(failures, [], 'nothing was lost, nothing counted');
    });

    it('reconnects after the receiver restarts', async () => {
      const failures: string[] = [];
      const l = link(receiver.port, { failures });
      links.push(l);
      l.send(heartbeat(1));
      await eventually(() => receiver.envelopes.length === 1, 10_000, 'the first envelope');
      await receiver.stop();
      const again = new Receiver(receiver.port);
      receiver = again;
      // Messages while it is down are dropped and reported (Raft sends again).
      const started = Date.now();
      let t = 2;
      while (again.envelopes.length === 0 && Date.now() - started < 20_000) {
        l.send(heartbeat(t++));
        if (t === 5) await again.start();
        await sleep(RECONNECT_BACKOFF_MAX_MS / 10);
      }
      assert.ok(again.envelopes.length > 0, 'the restarted receiver gets envelopes');
      assert.ok(failures.length > 0, 'the drops were reported');
      assert.equal(again.connections, 1, 'one connection once it was back');
    });
  });
});
