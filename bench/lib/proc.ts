/**
 * Process management for the benchmark: free loopback ports, temp dirs, child processes that
 * are stopped by PID (never by name), and their resident memory read from /proc.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

/** How much of a child's output is kept for error messages. */
const OUTPUT_KEEP_BYTES = 64 << 10;
/** The unit of /proc/<pid>/stat's CPU times (USER_HZ, 100 on Linux). */
const CLOCK_TICKS_PER_SECOND = 100;
/** How long a stop waits after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 10_000;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function makeTempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `zeoraft-bench-${prefix}-`));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Ask the OS for a port on 127.0.0.1 and release it again; it was free a moment ago. */
export function pickFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Retry `probe` every `stepMs` until it yields a value (not undefined) or the time is up. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
  stepMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}` +
          (lastError ? ` (last error: ${String(lastError)})` : ''),
      );
    await sleep(stepMs);
  }
}

/** Every child started by the benchmark, so an aborted run still kills them (by PID). */
const live = new Set<Child>();
process.on('exit', () => {
  for (const c of live) c.killNow();
});

export class Child {
  private output = '';
  private readonly exited: Promise<void>;

  private constructor(
    readonly label: string,
    private readonly proc: ChildProcess,
  ) {
    this.exited = new Promise((resolve) =>
      proc.once('exit', () => {
        live.delete(this);
        resolve();
      }),
    );
    const keep = (d: Buffer): void => {
      this.output += d.toString();
      if (this.output.length > OUTPUT_KEEP_BYTES)
        this.output = this.output.slice(-OUTPUT_KEEP_BYTES);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    live.add(this);
  }

  static spawn(label: string, cmd: string, args: string[], env: Record<string, string>): Child {
    const proc = spawn(cmd, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new Child(label, proc);
  }

  get pid(): number {
    return this.proc.pid as number;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  get recentOutput(): string {
    return this.output;
  }

  /** Resolve once the child printed `text`; reject if it exits first. */
  async waitForOutput(text: string, timeoutMs: number): Promise<void> {
    await waitFor(
      `${this.label} to print ${JSON.stringify(text)}`,
      () => {
        if (this.output.includes(text)) return true;
        if (!this.alive) throw new Error(`${this.label} exited: ${this.output.slice(-2000)}`);
        return undefined;
      },
      timeoutMs,
      20,
    );
  }

  /** SIGKILL by PID and wait for the exit. */
  async kill(): Promise<void> {
    this.killNow();
    await this.exited;
  }

  /** SIGTERM by PID (a clean stop, e.g. so --cpu-prof writes its profile), SIGKILL after a grace period. */
  async terminate(): Promise<void> {
    if (!this.alive) return;
    process.kill(this.pid, 'SIGTERM');
    const t = setTimeout(() => this.killNow(), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(t);
  }

  killNow(): void {
    if (this.alive) process.kill(this.pid, 'SIGKILL');
  }

  /** CPU time used so far (user + system, all threads), from /proc/<pid>/stat; undefined once gone. */
  cpuSeconds(): number | undefined {
    try {
      const stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      // Fields after the command name (which may contain spaces): utime and stime are the 12th and
      // 13th, in clock ticks.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS_PER_SECOND;
    } catch {
      return undefined;
    }
  }

  /**
   * Wait until the process is idle: under `busyFraction` of one CPU over each of two successive
   * `windowMs` windows (e.g. a node's start-up work is done). Resolves with the seconds waited.
   */
  async waitIdle(busyFraction: number, windowMs: number, timeoutMs: number): Promise<number> {
    const t0 = Date.now();
    let quiet = 0;
    let last = this.cpuSeconds();
    while (quiet < 2) {
      if (Date.now() - t0 > timeoutMs)
        throw new Error(`${this.label} still busy after ${timeoutMs} ms`);
      await sleep(windowMs);
      const now = this.cpuSeconds();
      if (now === undefined || last === undefined)
        throw new Error(`${this.label} has no /proc stat`);
      quiet = now - last < (busyFraction * windowMs) / 1000 ? quiet + 1 : 0;
      last = now;
    }
    return (Date.now() - t0) / 1000;
  }

  /** Resident set size in bytes, from /proc/<pid>/status (VmRSS, reported in kB). */
  rssBytes(): number | undefined {
    try {
      const status = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
      const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
      return m ? Number(m[1]) * 1024 : undefined;
    } catch {
      return undefined;
    }
  }
}
