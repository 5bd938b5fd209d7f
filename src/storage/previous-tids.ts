/**
 * The TID before each recently committed transaction of a storage, remembered when the commit's
 * batch lands: a commit's answer names it (CommitResponse.previous_tid, which lets a client chain
 * its own commit into its view of the history) without a seek in the transaction records. A
 * miss (an old TID, or after a restart or a snapshot install) is answered by the seek.
 */
/** Commits remembered (about 100 bytes each), across storages; the oldest go first. */
export const PREVIOUS_TIDS_MAX = 4096;

export class PreviousTids {
  private readonly map = new Map<string, Buffer>();

  constructor(private readonly entriesMax = PREVIOUS_TIDS_MAX) {}

  remember(storage: string, tid: Buffer, previous: Buffer): void {
    this.map.set(key(storage, tid), previous);
    if (this.map.size > this.entriesMax) this.map.delete(this.map.keys().next().value!);
  }

  get(storage: string, tid: Buffer): Buffer | undefined {
    return this.map.get(key(storage, tid));
  }

  /** Forget everything (the state was replaced by a snapshot). */
  clear(): void {
    this.map.clear();
  }
}

function key(storage: string, tid: Buffer): string {
  return `${storage}\0${tid.toString('latin1')}`;
}
