/**
 * ClientStorage's writes: two-phase commit (vote, finish, abort) and the one-call session commit
 * that is applied exactly once across retries and failover (storage.proto CommitRequest), each
 * returning once the client's caches reflect the commit (read-your-writes).
 */
import { randomUUID } from 'node:crypto';
import type { CacheCoherence } from './cache-coherence';
import type { ConnectionManager } from './connection-manager';
import {
  CommitUnknownError,
  ConflictError,
  DisconnectedError,
  InvalidArgumentError,
  LockedError,
  NotFoundError,
  SessionExpiredError,
  ZeoRaftError,
} from './errors';
import type { Tracker } from './load-tracker';
import type { StoreSpec, Transaction } from './transaction';
import { Z64 } from '../util/ids';

/**
 * Idle commit sessions kept for reuse. A session carries one commit at a time, so a client uses
 * as many as it has commits in flight; beyond this many idle ones the rest are dropped (the
 * cluster forgets them in time).
 */
const SESSION_POOL_MAX = 256;

/**
 * A client session for exactly-once commits (storage.proto CommitRequest): its id, the number of
 * its last commit sent, and the newest TID the client had seen when it started.
 */
interface CommitSession {
  id: string;
  seq: number;
  since: Buffer;
}

/**
 * Whether an error is the cluster's answer to a session commit (the state machine's result,
 * recorded for the session), which settles its outcome: it was not applied.
 */
function isSessionAnswer(e: ZeoRaftError): boolean {
  return (
    e instanceof ConflictError ||
    e instanceof LockedError ||
    e instanceof NotFoundError ||
    e instanceof InvalidArgumentError
  );
}

export class Committer {
  /** Idle commit sessions, the most recently used last. */
  private readonly sessionPool: CommitSession[] = [];

  constructor(
    private readonly conns: Pick<ConnectionManager, 'invoke' | 'storage' | 'retryWindowMs'>,
    private readonly coherence: CacheCoherence,
    /** Throws unless the client may write now. */
    private readonly writable: () => void,
    private readonly onError: ((e: unknown) => void) | undefined,
  ) {}

  private get storage(): string {
    return this.conns.storage;
  }

  /**
   * Phase one: conflict-check and lock the transaction's objects on the cluster. Retried across
   * failover with the same transaction id (the server treats a repeated vote as one).
   */
  async tpcVote(txn: Transaction): Promise<void> {
    this.writable();
    if (txn.state !== 'open')
      throw new ZeoRaftError(`transaction ${txn.id} is ${txn.state}; it cannot be voted`);
    txn.state = 'voting';
    let attempt = 0;
    try {
      await this.conns
        .invoke('Vote', () => {
          attempt++;
          return {
            transactionId: txn.id,
            transaction: this.transactionMessage(txn),
          };
        })
        .catch((e: unknown) => {
          // A retried vote of a transaction that a lost reply already finished: it is voted.
          if (
            attempt > 1 &&
            e instanceof InvalidArgumentError &&
            /already finished/.test(e.message)
          )
            return {};
          throw e;
        });
      txn.state = 'voted';
    } catch (e) {
      txn.state = 'failed';
      if (e instanceof DisconnectedError) {
        // The vote may have landed: release its locks rather than let them wait for the timeout.
        await this.abortQuietly(txn);
      }
      throw e;
    }
  }

  /**
   * A commit succeeded with `tid`: the transaction is finished, the client's view includes it
   * (read-your-writes), and what it stored is cached at that TID (unless an invalidation raced).
   */
  private async settleCommitted(
    txn: Transaction,
    tid: Buffer,
    trackers: { s: StoreSpec; t: Tracker }[],
  ): Promise<void> {
    txn.state = 'finished';
    txn.tid = tid;
    this.coherence.noteSeen(tid);
    this.coherence.applyOwnCommits();
    // Read-your-writes: the next view must include this transaction.
    if (await this.coherence.waitForTid(tid, this.conns.retryWindowMs)) {
      for (const { s, t } of trackers) this.coherence.cacheReply(s.oid, tid, undefined, s.data, t);
    }
  }

  /**
   * Phase two: commit a voted transaction (voting it first if needed) and return its TID, once
   * this client's caches reflect it. A successful vote guarantees the finish; if no node confirms
   * it within the retry window the outcome is unknown (CommitUnknownError).
   */

  async tpcFinish(txn: Transaction): Promise<Buffer> {
    if (txn.state === 'open') await this.tpcVote(txn);
    if (txn.state !== 'voted')
      throw new ZeoRaftError(`transaction ${txn.id} is ${txn.state}; it cannot be finished`);
    txn.state = 'finishing';
    const tracker = this.coherence.tracker;
    const trackers = txn.stores.map((s) => ({ s, t: tracker.start(s.oid) }));
    try {
      let tid: Buffer;
      try {
        const r = await this.conns.invoke('Finish', () => ({
          storage: this.storage,
          transactionId: txn.id,
        }));
        tid = r.tid;
      } catch (e) {
        txn.state = 'failed';
        if (e instanceof DisconnectedError)
          throw new CommitUnknownError(
            `transaction ${txn.id} was voted but its finish was not confirmed: ${e.message}`,
            e.grpcCode,
            e.detail,
            { cause: e },
          );
        throw e;
      }
      await this.settleCommitted(txn, tid, trackers);
      return tid;
    } finally {
      for (const { t } of trackers) tracker.end(t);
      this.coherence.dropOwnCommit(txn.tid ?? Z64);
    }
  }

  /** Abandon a transaction, releasing any locks its vote took. */
  async tpcAbort(txn: Transaction): Promise<void> {
    const wasVoted = txn.state === 'voting' || txn.state === 'voted' || txn.state === 'failed';
    if (txn.state === 'finished') throw new ZeoRaftError(`transaction ${txn.id} is finished`);
    txn.state = 'aborted';
    if (wasVoted)
      await this.conns.invoke('Abort', () => ({ storage: this.storage, transactionId: txn.id }));
  }

  private async abortQuietly(txn: Transaction): Promise<void> {
    await this.conns
      .invoke('Abort', () => ({ storage: this.storage, transactionId: txn.id }))
      .catch((e: unknown) => this.onError?.(e));
  }

  /** The wire form of a transaction's metadata and changes (Vote and Commit carry it). */
  private transactionMessage(txn: Transaction) {
    return {
      storage: this.storage,
      user: txn.meta.user ?? '',
      description: txn.meta.description ?? '',
      extension: txn.meta.extension ?? Buffer.alloc(0),
      stores: txn.stores.map((s) => ({
        oid: s.oid,
        serial: s.serial,
        data: s.data,
        refs: s.refs ?? [],
        blobId: s.blobId ?? Buffer.alloc(0),
      })),
      checks: txn.checks,
      deletes: txn.deletes,
    };
  }

  /** Commit an open transaction with one session `Commit` (see ClientStorage.commit()). */
  async commitOnce(txn: Transaction): Promise<Buffer> {
    this.writable();
    if (txn.state !== 'open')
      throw new ZeoRaftError(`transaction ${txn.id} is ${txn.state}; it cannot be committed`);
    txn.state = 'finishing';
    const transaction = this.transactionMessage(txn);
    const tracker = this.coherence.tracker;
    const trackers = txn.stores.map((s) => ({ s, t: tracker.start(s.oid) }));
    let session = this.sessionPool.pop() ?? this.newSession();
    session.seq++;
    try {
      let tid: Buffer;
      for (let fresh = false; ;) {
        // Whether an attempt may have reached the log: anything but a "not leader" refusal.
        let mayHaveApplied = false;
        try {
          const r = await this.conns.invoke(
            'Commit',
            () => ({
              transaction,
              sessionId: session.id,
              sequence: session.seq,
              sessionSinceTid: session.since,
            }),
            (e) => (mayHaveApplied ||= e.detail?.kind !== 'NOT_LEADER'),
          );
          tid = r.tid;
          if (r.previousTid.length === 8)
            this.coherence.addOwnCommit(tid, r.previousTid, [
              ...txn.stores.map((s) => s.oid),
              ...txn.deletes.map((d) => d.oid),
            ]);
          break;
        } catch (e) {
          // The session was forgotten (idle too long): with no earlier attempt of this commit
          // possibly applied, it is safe to send it again in a new session.
          if (e instanceof SessionExpiredError && !mayHaveApplied && !fresh) {
            session = this.newSession();
            session.seq = 1;
            fresh = true;
            continue;
          }
          txn.state = 'failed';
          // After an attempt that may have been applied, only the cluster's answer for the
          // session settles the outcome; anything else (no node in time, a limit, the session
          // forgotten) leaves it unknown.
          if (
            e instanceof SessionExpiredError ||
            (mayHaveApplied && e instanceof ZeoRaftError && !isSessionAnswer(e))
          )
            throw new CommitUnknownError(
              `transaction ${txn.id} may or may not have committed: ${e.message}`,
              e.grpcCode,
              e.detail,
              { cause: e },
            );
          throw e;
        }
      }
      await this.settleCommitted(txn, tid, trackers);
      return tid;
    } finally {
      for (const { t } of trackers) tracker.end(t);
      this.coherence.dropOwnCommit(txn.tid ?? Z64);
      // A later commit in the session gets the next number: an attempt of this one still in
      // flight somewhere is then refused (SEQUENCE_OLD), never applied after it.
      if (this.sessionPool.length < SESSION_POOL_MAX) this.sessionPool.push(session);
    }
  }

  private newSession(): CommitSession {
    return { id: randomUUID(), seq: 0, since: this.coherence.seen };
  }
}
