/**
 * A small deterministic in-memory cluster for scenario tests: every node is a real RawNode on a
 * MemoryStorage; stabilize() runs the host loop (persist → send → apply → advance) and delivers
 * messages until nothing moves. Links can be cut; messages can be inspected or dropped.
 */
import { Mulberry32 } from '../../src/util/prng';
import {
  ConfState,
  Entry,
  EntryType,
  MemoryStorage,
  Message,
  MessageType,
  RaftConfig,
  RawNode,
  ReadState,
  Ready,
  decodeConfChange,
} from '../../src/raft';

export interface TestNode {
  id: string;
  raw: RawNode;
  storage: MemoryStorage;
  /** Entries applied, in order (state machine). */
  applied: Entry[];
  appliedIndex: number;
  conf: ConfState;
  readStates: ReadState[];
}

export type NodeOptions = Partial<Omit<RaftConfig, 'id' | 'storage' | 'applied'>>;

const MAX_ROUNDS = 1000;

export class Network {
  readonly nodes = new Map<string, TestNode>();
  /** Messages produced and not yet delivered. */
  queue: Message[] = [];
  /** Every delivered message, for assertions. */
  delivered: Message[] = [];
  private readonly cut = new Set<string>();
  /** Extra filter: return false to drop a message. */
  filter: (m: Message) => boolean = () => true;
  /** Sees every Ready a node hands out, before it is processed (golden traces). */
  onReady: (id: string, rd: Ready) => void = () => undefined;
  private seed = 1;

  constructor(voters: string[], opts: NodeOptions & { learners?: string[] } = {}) {
    const conf = { voters, learners: opts.learners ?? [] };
    for (const id of [...voters, ...conf.learners])
      this.addNode(id, MemoryStorage.bootstrap(conf), opts);
  }

  addNode(id: string, storage: MemoryStorage, opts: NodeOptions = {}): TestNode {
    const applied = storage.snapshot().index;
    const raw = new RawNode({
      id,
      electionTicks: 10,
      heartbeatTicks: 1,
      storage,
      applied,
      rng: new Mulberry32(this.seed++),
      preVote: true,
      checkQuorum: true,
      maxSizePerMsg: 1024 * 1024,
      maxInflightMsgs: 256,
      maxUncommittedEntriesBytes: 0,
      ...opts,
    });
    const node: TestNode = {
      id,
      raw,
      storage,
      applied: [],
      appliedIndex: applied,
      conf: storage.initialState().conf,
      readStates: [],
    };
    this.nodes.set(id, node);
    return node;
  }

  node(id: string): TestNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** Cut both directions between id and everyone else. */
  isolate(id: string): void {
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cut.add(`${id}>${other}`);
      this.cut.add(`${other}>${id}`);
    }
  }

  cutLink(from: string, to: string): void {
    this.cut.add(`${from}>${to}`);
  }

  heal(): void {
    this.cut.clear();
    this.filter = () => true;
  }

  /** Run one node's host loop once: persist, queue messages, apply, advance. */
  processReady(n: TestNode): boolean {
    if (!n.raw.hasReady()) return false;
    const rd = n.raw.ready();
    this.onReady(n.id, rd);
    if (rd.snapshot) {
      n.storage.applySnapshot(rd.snapshot);
      n.appliedIndex = rd.snapshot.index;
      n.conf = rd.snapshot.conf;
    }
    if (rd.hardState) n.storage.setHardState(rd.hardState);
    n.storage.append(rd.entries);
    this.queue.push(...rd.messages, ...rd.messagesAfterAppend);
    for (const e of rd.committedEntries) {
      n.applied.push(e);
      n.appliedIndex = e.index;
      if (e.type === EntryType.ConfChange) n.conf = n.raw.applyConfChange(decodeConfChange(e.data));
    }
    n.readStates.push(...rd.readStates);
    n.raw.advance(rd);
    return true;
  }

  /** Deliver one message now (ignores cuts). */
  deliver(m: Message): void {
    const to = this.nodes.get(m.to);
    if (!to) return;
    this.delivered.push(m);
    to.raw.step(m);
  }

  /** Process readies and deliver messages until quiescent. */
  stabilize(): void {
    for (let round = 0; round < MAX_ROUNDS; round++) {
      let moved = false;
      for (const n of this.nodes.values()) moved = this.processReady(n) || moved;
      const q = this.queue;
      this.queue = [];
      for (const m of q) {
        moved = true;
        if (this.cut.has(`${m.from}>${m.to}`) || !this.filter(m)) continue;
        this.deliver(m);
      }
      if (!moved) return;
    }
    throw new Error('network did not stabilize');
  }

  /** Tick the given nodes (default all) n times, stabilizing after each tick. */
  tick(n: number, ids?: string[]): void {
    for (let i = 0; i < n; i++) {
      for (const id of ids ?? [...this.nodes.keys()]) this.node(id).raw.tick();
      this.stabilize();
    }
  }

  /** Tick only `id` until it campaigns and the election settles. */
  campaign(id: string): void {
    const before = this.node(id).raw.status().term;
    for (let i = 0; i < 100; i++) {
      this.node(id).raw.tick();
      this.stabilize();
      const s = this.node(id).raw.status();
      if (s.role === 'leader' || (s.term > before && s.role !== 'precandidate')) return;
    }
    throw new Error(`${id} never campaigned`);
  }

  leaders(): string[] {
    return [...this.nodes.values()]
      .filter((n) => n.raw.status().role === 'leader')
      .map((n) => n.id);
  }

  /** Propose at `id` and stabilize; returns the entry index. */
  propose(id: string, text: string): number {
    const i = this.node(id).raw.propose(new TextEncoder().encode(text));
    this.stabilize();
    return i;
  }

  appliedTexts(id: string): string[] {
    return this.node(id)
      .applied.filter((e) => e.type === EntryType.Normal && e.data.length > 0)
      .map((e) => new TextDecoder().decode(e.data));
  }

  countDelivered(type: MessageType, from?: string, to?: string): number {
    return this.delivered.filter(
      (m) => m.type === type && (!from || m.from === from) && (!to || m.to === to),
    ).length;
  }
}

export const text = (s: string): Uint8Array => new TextEncoder().encode(s);
