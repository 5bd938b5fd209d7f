import assert from 'node:assert/strict';
import { MemoryLevel } from 'memory-level';
import { EntryType, HardState, Ready, SnapshotMeta } from '../../src/raft';
import { DurableLog } from '../../src/server/raft-log';

type Db = Parameters<typeof DurableLog.openOn>[0];

function ready(parts: Partial<Ready>): Ready {
  return {
    entries: [],
    committedEntries: [],
    messages: [],
    messagesAfterAppend: [],
    readStates: [],
    mustSync: true,
    ...parts,
  };
}

const entry = (index: number, term: number) => ({
  index,
  term,
  type: EntryType.Normal,
  data: new Uint8Array([index]),
});

describe('DurableLog: a joining node (new, or back after losing its disk)', () => {
  const conf = { voters: ['n1', 'n2', 'n3'], learners: [] };
  const open = (db: Db) => DurableLog.openOn(db, { initial: conf, join: true, fsync: true });

  it('votes only once it holds a committed entry of its leader term, not at the snapshot', async () => {
    const db = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    let log = await open(db as unknown as Db);
    assert.equal(log.joining, true);
    // The leader of term 5 sends its snapshot at index 18 (term 3): entries after 18 that this
    // node acknowledged before it lost its disk may have been committed and are not in it.
    const snap: SnapshotMeta = { index: 18, term: 3, conf };
    const hs = (commit: number): HardState => ({ term: 5, vote: '', commit });
    await log.persist(ready({ snapshot: snap, hardState: hs(18) }));
    assert.equal(log.joining, true, 'a snapshot alone does not end joining');
    // Entries from the leader, the last of its own term, but not yet known to be committed.
    await log.persist(ready({ entries: [entry(19, 3), entry(20, 5)], hardState: hs(19) }));
    assert.equal(log.joining, true, 'committed only up to a previous-term entry');
    // A restart in between keeps the node joining.
    await db.close();
    await db.open();
    log = await open(db as unknown as Db);
    assert.equal(log.joining, true, 'joining survives a restart');
    // The leader's own-term entry is committed and held here: everything committed is here too.
    await log.persist(ready({ hardState: hs(20) }));
    assert.equal(log.joining, false);
    await db.close();
    await db.open();
    log = await open(db as unknown as Db);
    assert.equal(log.joining, false, 'the end of joining is durable');
    await db.close();
  });

  it('a snapshot ending in an entry of the leader term is enough (that entry is committed)', async () => {
    const db = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const log = await open(db as unknown as Db);
    await log.persist(
      ready({ snapshot: { index: 4, term: 2, conf }, hardState: { term: 2, vote: '', commit: 9 } }),
    );
    // The leader commits 9 but this node holds only up to 4: what counts is min(commit, last),
    // an entry of term 2, the current term.
    assert.equal(log.joining, false);
    await db.close();
  });
});

describe('DurableLog: the commit index', () => {
  const conf = { voters: ['n1', 'n2', 'n3'], learners: [] };
  const open = (db: Db) => DurableLog.openOn(db, { initial: conf, join: false, fsync: true });
  /** The commit index on disk, read by a second log over the same database. */
  const durableCommit = async (db: Db) => (await open(db)).mem.hardState().commit;
  const hs = (commit: number): HardState => ({ term: 2, vote: 'n1', commit });

  it('is written with the next write when it is all that changed, and at compaction and close', async () => {
    const db = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    const log = await open(db as unknown as Db);
    await log.persist(ready({ entries: [entry(2, 2), entry(3, 2)], hardState: hs(1) }));
    assert.equal(await durableCommit(db as unknown as Db), 1);
    // A Ready that only moves the commit index: no write of its own.
    await log.persist(ready({ hardState: hs(3), mustSync: false }));
    assert.equal(log.mem.hardState().commit, 3, 'the core sees it at once');
    assert.equal(await durableCommit(db as unknown as Db), 1, 'not written alone');
    await log.persist(ready({ entries: [entry(4, 2)], mustSync: true }));
    assert.equal(await durableCommit(db as unknown as Db), 3, 'written with the next entries');
    await log.persist(ready({ hardState: hs(4), mustSync: false }));
    await log.compact(4, conf, 4);
    assert.equal(await durableCommit(db as unknown as Db), 4, 'written with the compaction');
    await log.persist(ready({ entries: [entry(5, 2)], hardState: hs(4), mustSync: true }));
    await log.persist(ready({ hardState: hs(5), mustSync: false }));
    await log.close();
    await db.open();
    assert.equal(await durableCommit(db as unknown as Db), 5, 'written at close');
    await db.close();
  });
});
