/** Operating errors of the Raft core: one class per condition, each with a stable `code`. */
export class RaftError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RaftError';
  }
}

export type ProposalDropReason =
  | 'not-leader'
  | 'transferring'
  | 'uncommitted-limit'
  | 'conf-change-pending'
  | 'invalid-conf-change';

/** A proposal (entry or conf change) was not appended; the caller may retry elsewhere or later. */
export class ProposalDroppedError extends RaftError {
  constructor(
    readonly reason: ProposalDropReason,
    detail: string,
  ) {
    super('RAFT_PROPOSAL_DROPPED', `proposal dropped (${reason}): ${detail}`);
    this.name = 'ProposalDroppedError';
  }
}

/** Requested entries are below the storage's first index (compacted into a snapshot). */
export class CompactedError extends RaftError {
  constructor(index: number, firstIndex: number) {
    super('RAFT_LOG_COMPACTED', `index ${index} is compacted (first index ${firstIndex})`);
    this.name = 'CompactedError';
  }
}

/** Requested entries are beyond the storage's last index. */
export class UnavailableError extends RaftError {
  constructor(index: number, lastIndex: number) {
    super('RAFT_LOG_UNAVAILABLE', `index ${index} is unavailable (last index ${lastIndex})`);
    this.name = 'UnavailableError';
  }
}

/** A snapshot older than the one already held was offered. */
export class SnapshotOutOfDateError extends RaftError {
  constructor(index: number, current: number) {
    super('RAFT_SNAPSHOT_OUT_OF_DATE', `snapshot ${index} is older than current ${current}`);
    this.name = 'SnapshotOutOfDateError';
  }
}

/** RaftConfig failed validation. */
export class ConfigError extends RaftError {
  constructor(message: string) {
    super('RAFT_INVALID_CONFIG', `invalid raft config: ${message}`);
    this.name = 'ConfigError';
  }
}
