/**
 * Wire and persistence types of the Raft core. Indices and terms are JS numbers
 * (safe integers); index 0 and term 0 mean "none". NodeId '' means "no node".
 */
export type NodeId = string;

export enum EntryType {
  Normal = 0,
  ConfChange = 1,
}

/** One log entry. Invariant: entries of a log have consecutive indices. */
export interface Entry {
  index: number;
  term: number;
  type: EntryType;
  data: Uint8Array;
}

/** The state that must be durable before any message of the same Ready is sent. */
export interface HardState {
  term: number;
  /** Candidate voted for in `term`; '' = none. */
  vote: NodeId;
  /** Highest index known committed. */
  commit: number;
}

export interface ConfState {
  voters: NodeId[];
  learners: NodeId[];
}

/** Metadata of a state-machine snapshot; the data itself is moved by the host. */
export interface SnapshotMeta {
  /** Last log index covered by the snapshot. */
  index: number;
  /** Term of that entry. */
  term: number;
  /** Membership as of `index` (conf changes apply at apply time). */
  conf: ConfState;
}

export enum ConfChangeType {
  AddLearner = 0,
  PromoteLearner = 1,
  RemoveNode = 2,
  AddVoter = 3,
}

export interface ConfChange {
  type: ConfChangeType;
  node: NodeId;
}

export enum MessageType {
  /** Leader -> follower: entries after (index, logTerm), plus the leader's commit. */
  Append = 0,
  AppendResp = 1,
  Vote = 2,
  VoteResp = 3,
  PreVote = 4,
  PreVoteResp = 5,
  Heartbeat = 6,
  HeartbeatResp = 7,
  /** Leader -> follower: install the snapshot described by `snapshot` (data moved by host). */
  Snapshot = 8,
  /** Leader -> transferee: start an election now, ignoring pre-vote and leases. */
  TimeoutNow = 9,
  /** Follower -> leader: a forwarded read request; `context` identifies it. */
  ReadIndex = 10,
  ReadIndexResp = 11,
  /** Follower -> leader: please transfer leadership to `from`'s requested target (`index` unused). */
  TransferLeader = 12,
}

export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  /** Sender's term; 0 for forwarded requests (ReadIndex, TransferLeader) that carry no term. */
  term: number;
  /** Append: term of entry `index`. Rejected AppendResp: term of `rejectHint`. Votes: last log term. */
  logTerm: number;
  /** Append: index preceding `entries`. AppendResp: last matched index (or rejected index). Votes: last log index. ReadIndexResp: read index. */
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  rejectHint: number;
  snapshot?: SnapshotMeta;
  context?: Uint8Array;
}

/** Result of a read request: reads at `context` are linearizable once applied >= index. */
export interface ReadState {
  index: number;
  context: Uint8Array;
}

export type Role = 'follower' | 'candidate' | 'precandidate' | 'leader' | 'learner';

export interface SoftState {
  leader: NodeId;
  role: Role;
}

export interface Ready {
  /** Present when changed since the last Ready. Volatile; informational. */
  softState?: SoftState;
  /** Present when changed: persist before sending messagesAfterAppend. */
  hardState?: HardState;
  /** Append to stable storage, first truncating any suffix from entries[0].index on. */
  entries: Entry[];
  /** Install (the host already holds the data): persist it, discard the log up to it. */
  snapshot?: SnapshotMeta;
  /**
   * Apply in order. They are committed, so durable on a quorum already: the host may apply them
   * while it persists this Ready.
   */
  committedEntries: Entry[];
  /**
   * May be sent at once, before this Ready is persisted (Appends, heartbeats, vote requests,
   * forwarded requests): none of them vouches for state of this node that a crash could lose.
   * A leader counts its own entries only after advance(), and one Ready is handed out at a time,
   * so nothing that relies on this Ready's writes leaves before they are durable.
   */
  messages: Message[];
  /**
   * Send only once this Ready's hard state, entries and snapshot are durable (etcd's
   * msgsAfterAppend): acknowledgements of entries and snapshots (AppendResp) and votes
   * (VoteResp, PreVoteResp). Sending one earlier lets a crash lose an acknowledged entry or a
   * granted vote.
   */
  messagesAfterAppend: Message[];
  readStates: ReadState[];
  /** True when hardState (term/vote) or entries must be fsynced before messagesAfterAppend go. */
  mustSync: boolean;
}

export function emptyMessage(type: MessageType, from: NodeId, to: NodeId): Message {
  return {
    type,
    from,
    to,
    term: 0,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
  };
}

/** Bytes an entry counts for in message-size and uncommitted-size limits. */
export function entryBytes(e: Entry): number {
  return e.data.length;
}

export function isEmptyHardState(h: HardState): boolean {
  return h.term === 0 && h.vote === '' && h.commit === 0;
}

export function hardStateEqual(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
