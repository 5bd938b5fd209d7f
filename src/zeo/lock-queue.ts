/** The lock waiter queue moved to the storage API's side (server/lock-queue.ts); kept for imports. */
export * from '../server/lock-queue';
