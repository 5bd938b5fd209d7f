/** Enforcement of the configured limits: past one, RESOURCE_EXHAUSTED naming it. */
import type { LimitsConfig } from './config';
import { limit } from './errors';

export class Limits {
  constructor(readonly config: LimitsConfig) {}

  checkTransaction(objects: number, dataBytes: number): void {
    if (objects > this.config.maxTxnObjects)
      throw limit(
        'max_txn_objects',
        `${objects} objects in one transaction, at most ${this.config.maxTxnObjects}`,
      );
    if (dataBytes > this.config.maxTxnBytes)
      throw limit(
        'max_txn_bytes',
        `${dataBytes} data bytes in one transaction, at most ${this.config.maxTxnBytes}`,
      );
  }

  checkSubscribers(open: number): void {
    if (open >= this.config.maxSubscribers)
      throw limit('max_subscribers', `${open} subscribers open on this node`);
  }

  checkPending(pending: number): void {
    if (pending >= this.config.maxPendingProposals)
      throw limit('max_pending_proposals', `${pending} proposals already pending`);
  }
}
