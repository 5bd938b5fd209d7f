/**
 * A small ZEO 5 protocol client (msgpack framing), written from ZEO's protocol description, for
 * tests: sized messages, the greeting exchange, `[msgid, flag, method, args]` calls, replies and
 * exceptions (flag 2), and the server's one-way calls recorded in arrival order.
 */
import * as net from 'node:net';
import { decode, encode } from '@msgpack/msgpack';

/** An exception reply: the Python class name and its args (a list or the exception's dict). */
export class ServerError extends Error {
  constructor(
    readonly pyClass: string,
    readonly pyArgs: any,
  ) {
    super(
      `${pyClass}: ${JSON.stringify(pyArgs, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v))}`,
    );
    this.name = 'ServerError';
  }
}

export class Disconnected extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'Disconnected';
  }
}

/** Everything the server sent after the greeting, in order. */
export type Event =
  | { kind: 'reply'; msgid: unknown; error: boolean; value: any }
  | { kind: 'call'; method: string; args: any[] };

function frame(payload: Uint8Array): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(payload.length);
  return Buffer.concat([h, payload]);
}

export class ZeoClient {
  readonly events: Event[] = [];
  greeting = '';
  private buf = Buffer.alloc(0);
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: any) => void; reject: (e: Error) => void }
  >();
  private readonly waiters = new Set<() => void>();
  closed = false;
  readonly closedPromise: Promise<void>;
  private onGreeting: ((s: string) => void) | undefined;
  private raw: Buffer[] = [];

  private constructor(readonly socket: net.Socket) {
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        for (const p of this.pending.values()) p.reject(new Disconnected());
        this.pending.clear();
        this.notify();
        resolve();
      }),
    );
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => this.onData(d));
  }

  /** Connect and read the server's greeting; with `handshake`, answer it (default: echo it). */
  static async connect(port: number, handshake: string | null = 'echo'): Promise<ZeoClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    const c = new ZeoClient(socket);
    c.greeting = await new Promise<string>((resolve, reject) => {
      c.onGreeting = resolve;
      setTimeout(() => reject(new Error('no greeting')), 5000);
    });
    if (handshake !== null)
      c.sendRaw(frame(Buffer.from(handshake === 'echo' ? c.greeting : handshake, 'latin1')));
    return c;
  }

  /** Every message received so far as raw payloads (for ruok). */
  get rawMessages(): Buffer[] {
    return this.raw;
  }

  sendRaw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  sendMessage(msgid: unknown, flag: number, method: string, args: unknown): void {
    this.sendRaw(frame(encode([msgid, flag, method, args])));
  }

  /** A two-way call; rejects with ServerError for an exception reply, Disconnected on close. */
  call(method: string, ...args: unknown[]): Promise<any> {
    if (this.closed) return Promise.reject(new Disconnected());
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.sendMessage(id, 0, method, args);
    });
  }

  /** A one-way call (no reply). */
  oneWay(method: string, ...args: unknown[]): void {
    this.sendMessage(0, 1, method, args);
  }

  calls(method: string): any[][] {
    return this.events
      .filter((e) => e.kind === 'call' && e.method === method)
      .map((e) => (e as any).args);
  }

  /** Wait until `cond()` holds (checked after every message), or fail after the timeout. */
  async until(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    if (cond()) return;
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (cond()) {
          cleanup();
          resolve();
        } else if (this.closed) {
          cleanup();
          reject(new Disconnected(`closed while waiting for ${what}`));
        }
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(t);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  private onData(d: Buffer): void {
    this.buf = Buffer.concat([this.buf, d]);
    while (this.buf.length >= 4) {
      const n = this.buf.readUInt32BE(0);
      if (this.buf.length < 4 + n) break;
      const payload = this.buf.subarray(4, 4 + n);
      this.buf = this.buf.subarray(4 + n);
      this.raw.push(Buffer.from(payload));
      if (this.onGreeting) {
        const g = this.onGreeting;
        this.onGreeting = undefined;
        g(payload.toString('latin1'));
        continue;
      }
      if (!this.greeting) continue;
      let msg: any;
      try {
        msg = decode(payload);
      } catch {
        continue; // e.g. the JSON answer to ruok
      }
      const [msgid, flag, method, args] = msg as [unknown, unknown, string, any];
      if (method === '.reply') {
        const error = flag === 2;
        this.events.push({ kind: 'reply', msgid, error, value: args });
        const p = this.pending.get(msgid as number);
        if (p) {
          this.pending.delete(msgid as number);
          if (error) p.reject(new ServerError(args[0], args[1]));
          else p.resolve(args);
        }
      } else {
        this.events.push({ kind: 'call', method, args });
      }
    }
    this.notify();
  }
}
