/**
 * A recorded client history and its checker. Writers run read-modify-write commits against
 * random live nodes; every operation is recorded with its outcome. The checker then verifies,
 * on every node: each acknowledged commit is present exactly once with its data; no two
 * acknowledged commits were based on the same serial of an object; TIDs strictly increase and
 * every node holds the same transaction sequence; every read was at least as new as the
 * client's last TID.
 */
import * as assert from 'node:assert/strict';
import { ZeoRaftError } from '../../src/client/errors';
import { Z64, hex, idCompare, idMax, p64 } from '../../src/util/ids';
import type { TestCluster } from './cluster';
import { sleep } from './index';

export interface CommitOp {
  writer: number;
  node: string;
  oid: Buffer;
  base: Buffer;
  data: Buffer;
  outcome: 'ok' | 'conflict' | 'error';
  tid?: Buffer;
  error?: string;
}

export interface ReadOp {
  writer: number;
  node: string;
  seen: Buffer;
  asOf: Buffer;
}

export class Workload {
  readonly commits: CommitOp[] = [];
  readonly reads: ReadOp[] = [];
  private running = false;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly cluster: TestCluster,
    private readonly opts: {
      writers: number;
      objects: number;
      pauseMs?: number;
      nodes?: () => string[];
    },
  ) {}

  get acked(): CommitOp[] {
    return this.commits.filter((c) => c.outcome === 'ok');
  }

  start(): void {
    this.running = true;
    for (let w = 0; w < this.opts.writers; w++) this.loops.push(this.writer(w));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }

  /** Wait until at least n more commits were acknowledged. */
  async progress(n: number, timeoutMs = 20_000): Promise<void> {
    const target = this.acked.length + n;
    const end = Date.now() + timeoutMs;
    while (this.acked.length < target) {
      if (Date.now() > end)
        throw new Error(
          `only ${this.acked.length}/${target} commits acknowledged in ${timeoutMs} ms; last errors: ${this.commits
            .slice(-3)
            .map((c) => c.error)
            .join(' | ')}`,
        );
      await sleep(20);
    }
  }

  private async writer(w: number): Promise<void> {
    let seen = Z64;
    let seq = 0;
    while (this.running) {
      const nodes = (this.opts.nodes ?? (() => this.cluster.alive()))();
      const node = nodes[(w + seq) % Math.max(1, nodes.length)];
      const oid = p64(BigInt(1 + ((w * 7 + seq) % this.opts.objects)));
      seq++;
      if (!node) {
        await sleep(50);
        continue;
      }
      const rpc = this.cluster.rpc(node);
      let base = Z64;
      try {
        const l = await rpc.call('Load', { oid, seenTid: seen }, 3000);
        this.reads.push({ writer: w, node, seen, asOf: l.asOfTid });
        base = l.serial;
      } catch (e) {
        if (!(e instanceof ZeoRaftError) || e.code !== 'ZEORAFT_NOT_FOUND') {
          await sleep(50);
          continue;
        }
      }
      const data = Buffer.from(`w${w}-${seq}`);
      const op: CommitOp = { writer: w, node, oid, base, data, outcome: 'error' };
      try {
        const r = await rpc.call(
          'Commit',
          { transaction: { user: `w${w}`, stores: [{ oid, serial: base, data }] } },
          5000,
        );
        op.outcome = 'ok';
        op.tid = r.tid;
        seen = idMax(seen, r.tid);
      } catch (e) {
        op.outcome =
          e instanceof ZeoRaftError && e.code === 'ZEORAFT_CONFLICT' ? 'conflict' : 'error';
        op.error = String(e);
        if (op.outcome === 'error') await sleep(50);
      }
      this.commits.push(op);
      if (this.opts.pauseMs) await sleep(this.opts.pauseMs);
    }
  }

  /** Check the recorded history against every node in `nodes` (all must be up). */
  async check(nodes: string[]): Promise<void> {
    const acked = this.acked;
    assert.ok(acked.length > 0, 'some commits were acknowledged');
    const seenTid = acked.reduce((m, c) => idMax(m, c.tid as Buffer), Z64);
    // No two acknowledged commits based on the same serial of the same object.
    const bases = new Set<string>();
    for (const c of acked) {
      const k = `${hex(c.oid)}@${hex(c.base)}`;
      assert.ok(
        !bases.has(k),
        `two acknowledged commits of ${hex(c.oid)} were based on serial ${hex(c.base)}`,
      );
      bases.add(k);
    }
    // TIDs of acknowledged commits are unique.
    assert.equal(
      new Set(acked.map((c) => hex(c.tid as Buffer))).size,
      acked.length,
      'acknowledged TIDs are unique',
    );
    // Every read was at least as new as what its client had seen.
    for (const r of this.reads)
      assert.ok(
        idCompare(r.asOf, r.seen) >= 0,
        `a read on ${r.node} at ${hex(r.asOf)} was older than the client's ${hex(r.seen)}`,
      );
    let reference: string[] | undefined;
    for (const id of nodes) {
      const rpc = this.cluster.rpc(id);
      await rpc.call('Sync', {}, 20_000);
      for (const c of acked) {
        const got = await rpc.call(
          'LoadSerial',
          { oid: c.oid, serial: c.tid as Buffer, seenTid },
          20_000,
        );
        assert.deepEqual(
          got.data,
          c.data,
          `node ${id}: acknowledged commit ${hex(c.tid as Buffer)} of ${hex(c.oid)} has its data`,
        );
      }
      const txns = await rpc.iterate({}, 30_000);
      const tids = txns.map((t) => hex(t.tid));
      for (let i = 1; i < txns.length; i++)
        assert.ok(
          idCompare(txns[i].tid, txns[i - 1].tid) > 0,
          `node ${id}: TIDs strictly increase`,
        );
      const present = new Set(tids);
      for (const c of acked)
        assert.ok(
          present.has(hex(c.tid as Buffer)),
          `node ${id} has acknowledged transaction ${hex(c.tid as Buffer)}`,
        );
      // Every node holds the same sequence of transactions (nothing applied twice or skipped).
      const sig = txns.map((t) => `${hex(t.tid)}:${t.records.map((r) => hex(r.oid)).join('+')}`);
      if (reference)
        assert.deepEqual(sig, reference, `node ${id} holds the same transactions as ${nodes[0]}`);
      else reference = sig;
    }
  }
}
