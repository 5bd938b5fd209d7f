/** A single node without Raft: commands are applied in arrival order with a synced write each. */
import type { Command } from '../storage/codec';
import type { ApplyResult, ObjectStore } from '../storage/object-store';
import { ReplicaView, Replicator, stampCommand } from './replicator';

export class LocalReplicator implements Replicator {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Pick<ObjectStore, 'apply' | 'appliedIndex'>,
    private readonly nodeId: string,
    private readonly nowMs: () => number,
  ) {}

  propose(cmd: Command): Promise<ApplyResult> {
    const run = this.tail.then(() =>
      this.store.apply(this.store.appliedIndex + 1, stampCommand(cmd, this.nowMs())),
    );
    this.tail = run.catch(() => undefined);
    return run;
  }

  async linearizableRead(): Promise<void> {
    await this.tail;
  }

  view(): ReplicaView {
    const i = this.store.appliedIndex;
    return {
      nodeId: this.nodeId,
      role: 'standalone',
      leaderId: this.nodeId,
      leaderAddress: '',
      term: 0,
      commitIndex: i,
      appliedIndex: i,
    };
  }

  /** A standalone node has no other members. */
  heardFromMs(): undefined {
    return undefined;
  }

  async close(): Promise<void> {
    await this.tail;
  }
}
