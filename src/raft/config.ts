import { Prng } from '../util/prng';
import { ConfigError } from './errors';
import { RaftStorage } from './storage';
import { NodeId } from './types';

export interface RaftConfig {
  id: NodeId;
  /** Followers start an election after a random timeout in [electionTicks, 2*electionTicks) ticks. */
  electionTicks: number;
  /** Leader sends heartbeats every heartbeatTicks ticks. Must be < electionTicks. */
  heartbeatTicks: number;
  storage: RaftStorage;
  /** Index the host's state machine has applied (>= storage snapshot index, <= hard state commit). */
  applied: number;
  /** Source of randomness for election timeouts. */
  rng: Prng;
  preVote: boolean;
  checkQuorum: boolean;
  /** Max entry payload bytes per Append message (at least one entry is always sent). */
  maxSizePerMsg: number;
  /** Max Append messages in flight per peer in replicate state. */
  maxInflightMsgs: number;
  /** Max payload bytes of entries appended by the leader but not yet committed (0 = unlimited). */
  maxUncommittedEntriesBytes: number;
  logger?: (line: string) => void;
}

function positiveInt(name: string, v: unknown): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new ConfigError(`${name} must be a positive integer, got ${String(v)}`);
  }
}

/** Validate up front so misconfiguration fails with a clear message, not a later assertion. */
export function validateConfig(cfg: RaftConfig): void {
  if (typeof cfg.id !== 'string' || cfg.id === '')
    throw new ConfigError('id must be a non-empty string');
  positiveInt('heartbeatTicks', cfg.heartbeatTicks);
  positiveInt('electionTicks', cfg.electionTicks);
  if (cfg.electionTicks <= cfg.heartbeatTicks) {
    throw new ConfigError(
      `electionTicks (${cfg.electionTicks}) must be greater than heartbeatTicks (${cfg.heartbeatTicks})`,
    );
  }
  if (!cfg.storage) throw new ConfigError('storage is required');
  if (!cfg.rng) throw new ConfigError('rng is required');
  positiveInt('maxSizePerMsg', cfg.maxSizePerMsg);
  positiveInt('maxInflightMsgs', cfg.maxInflightMsgs);
  if (!Number.isSafeInteger(cfg.maxUncommittedEntriesBytes) || cfg.maxUncommittedEntriesBytes < 0) {
    throw new ConfigError('maxUncommittedEntriesBytes must be an integer >= 0 (0 = unlimited)');
  }
  if (!Number.isSafeInteger(cfg.applied) || cfg.applied < 0) {
    throw new ConfigError(`applied must be an integer >= 0, got ${String(cfg.applied)}`);
  }
  const { hardState } = cfg.storage.initialState();
  const snapIndex = cfg.storage.firstIndex() - 1;
  const commit = Math.max(hardState.commit, snapIndex);
  if (cfg.applied > commit) {
    throw new ConfigError(
      `applied (${cfg.applied}) is beyond the persisted commit index (${commit})`,
    );
  }
  if (cfg.applied < snapIndex) {
    throw new ConfigError(
      `applied (${cfg.applied}) is below the storage snapshot (${snapIndex}): install the snapshot first`,
    );
  }
  if (hardState.commit > cfg.storage.lastIndex()) {
    throw new ConfigError(
      `hard state commit ${hardState.commit} beyond last index ${cfg.storage.lastIndex()}`,
    );
  }
}
