/** Public surface of the Raft core. */
export * from './types';
export * from './errors';
export * from './storage';
export { RawNode } from './raw-node';
export type { RaftConfig, RaftStatus, ProgressStatus, BasicStatus } from './raw-node';
export { encodeConfChange, decodeConfChange, confChangeProblem, applyToConf } from './confchange';
