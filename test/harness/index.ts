/**
 * Test harness: real node processes on free loopback ports, stopped by PID; temp data dirs.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const CLI = path.resolve(__dirname, '../../src/cli/main.js');

export function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `zeoraft-${prefix}-`));
}

export function rmDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

const handedOut = new Set<number>();

/**
 * A port that was free a moment ago. Chosen below the kernel's ephemeral range (32768+), so an
 * outgoing connection cannot take it between this check and the node binding it.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    // Nothing holds a port between this check and its use: never hand the same one out twice.
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value or throws past the timeout. */
export async function eventually<T>(
  fn: () => Promise<T> | T,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`,
      );
    await sleep(50);
  }
}

/**
 * The cluster key of every node this test process starts, made fresh per run: a cluster member
 * refuses to start without peer authentication.
 */
export const TEST_CLUSTER_KEY = randomBytes(32).toString('hex');

/**
 * A member's settings with peer authentication: the run's cluster key unless the test chose one
 * (ZEORAFT_CLUSTER_KEY, even '' for none), a key file, peer TLS or --insecure-peers itself.
 */
export function withPeerAuth(env: Record<string, string>): Record<string, string> {
  const member = !!env.ZEORAFT_PEERS || /^(1|true|yes|on)$/i.test(env.ZEORAFT_JOIN ?? '');
  const chosen = [
    'ZEORAFT_CLUSTER_KEY',
    'ZEORAFT_CLUSTER_KEY_FILE',
    'ZEORAFT_PEER_TLS_CERT',
    'ZEORAFT_INSECURE_PEERS',
  ].some((k) => k in env);
  return member && !chosen ? { ...env, ZEORAFT_CLUSTER_KEY: TEST_CLUSTER_KEY } : env;
}

/**
 * A member of a multi-voter cluster starts with `--initial-cluster-state new` (the tests start
 * fresh clusters) unless the test chose (ZEORAFT_INITIAL_CLUSTER_STATE, even '' for unset).
 */
export function withInitialState(env: Record<string, string>): Record<string, string> {
  const voters = (env.ZEORAFT_PEERS ?? '').split(',').filter((p) => p.trim()).length;
  return voters > 1 && !('ZEORAFT_INITIAL_CLUSTER_STATE' in env)
    ? { ...env, ZEORAFT_INITIAL_CLUSTER_STATE: 'new' }
    : env;
}

/** Every node process the tests started; any still running when the test process exits is killed. */
const started = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

export class NodeProcess {
  private exited: Promise<void>;
  output = '';

  private constructor(
    readonly child: ChildProcess,
    readonly env: Record<string, string>,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.stdout?.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
  }

  get pid(): number {
    return this.child.pid as number;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Start `zeoraft server` without waiting for it to be ready (for a node expected to die). A
   * cluster member gets the run's cluster key unless the test chose its peer authentication, and
   * `--initial-cluster-state new` unless the test chose one.
   */
  static spawn(settings: Record<string, string>): NodeProcess {
    const env = withInitialState(withPeerAuth(settings));
    const child = spawn(process.execPath, [CLI, 'server'], {
      env: { ...process.env, ZEORAFT_LOG_LEVEL: process.env.ZEORAFT_LOG_LEVEL ?? 'warn', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started.add(child);
    child.once('exit', () => started.delete(child));
    return new NodeProcess(child, env);
  }

  /** Resolves once the process has exited, with its exit code or the signal that ended it. */
  async exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    await this.exited;
    return { code: this.child.exitCode, signal: this.child.signalCode };
  }

  /** Start `zeoraft server` with ZEORAFT_* settings; resolves once it printed its ready line. */
  static async start(env: Record<string, string>, timeoutMs = 20_000): Promise<NodeProcess> {
    const p = NodeProcess.spawn(env);
    await eventually(
      () => {
        if (!p.alive) throw new Error(`node exited early: ${p.output}`);
        return p.output.includes('zeoraft node ready');
      },
      timeoutMs,
      `node ${env.ZEORAFT_NODE_ID} to start`,
    );
    return p;
  }

  /** Send a signal by PID and wait for the process to exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 15_000): Promise<void> {
    if (!this.alive) return;
    process.kill(this.pid, signal);
    const t = setTimeout(() => this.alive && process.kill(this.pid, 'SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }

  pause(): void {
    process.kill(this.pid, 'SIGSTOP');
  }

  resume(): void {
    process.kill(this.pid, 'SIGCONT');
  }
}
