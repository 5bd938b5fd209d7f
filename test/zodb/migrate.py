#!/usr/bin/env python3
"""Moving a FileStorage site into ZeoRaft with zodbconvert, verified transaction by transaction.

1. Builds a FileStorage (Data.fs) with the real ZODB: a few hundred transactions over persistent
   mappings and a BTree, with users, descriptions (some not ASCII) and extensions, undos (some
   undoing object creations, which leave records without data; some undoing undos), and a pack in
   the middle (its transactions get status 'p').
2. Runs RelStorage's `zodbconvert` (pinned in requirements.txt) from that FileStorage into storage
   `1` of a running cluster through its ZEO port, and times it.
3. Compares the two with their iterators through another node: the same TIDs, statuses, users,
   descriptions, extensions and records (OID, TID, data, data_txn) in the same order, and the
   same current state of every object.
4. Opens the copy with ZODB and commits to it, as the site would after moving in, then packs it
   with garbage collection: everything reachable from the root stays, byte for byte, and an object
   that became unreachable after the source's pack goes.
5. Does the same for a second FileStorage with blobs (created, changed, their changes undone,
   their creation undone), copied into storage `blobs` with examples/python/zodb_import.py
   (zodbconvert cannot copy blobs through ZEO: ZEO's client has no restoreBlob), and compares the
   blob files as well.

Prints one JSON line with the counts and the speed; exits non-zero on any difference.

Usage: python migrate.py --zeo HOST:PORT,HOST:PORT,... --workdir DIR [--transactions N]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import transaction
import ZODB
import ZODB.FileStorage
import ZODB.POSException
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.TimeStamp import TimeStamp

import ZEO.ClientStorage
import ZODB.blob
import ZODB.serialize
import ZODB.utils
from ZODB.blob import Blob

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMPORT = os.path.join(REPO, 'examples', 'python', 'zodb_import.py')

#: Containers whose contents the transactions change (several, so undos do not conflict).
CONTAINERS = 20


def build_source(path, n_txns, seed=17):
    """A FileStorage with history: returns facts about what it holds, for the checks."""
    rnd = random.Random(seed)
    storage = ZODB.FileStorage.FileStorage(path, create=True)
    db = ZODB.DB(storage)
    conn = db.open()
    root = conn.root()
    root['tree'] = OOBTree()
    for c in range(CONTAINERS):
        root['c%d' % c] = PersistentMapping()
    transaction.get().note('set up')
    transaction.commit()

    def commit(i, container, description):
        t = transaction.get()
        t.setUser('user%d' % (i % 5), '/site')
        t.note(description)
        t.setExtendedInfo('i', i)
        if i % 7 == 0:
            t.setExtendedInfo('request', {'path': '/edit/%d' % i, 'agent': 'zodb'})
        transaction.commit()
        return storage.lastTransaction()

    pack_tid = None
    undo_last = None
    for i in range(n_txns):
        c = root['c%d' % (i % CONTAINERS)]
        kind = i % 10
        if kind == 3:
            # A creation to undo: a new object in the container, undone next.
            c['new%d' % i] = PersistentMapping({'payload': rnd.randbytes(64)})
            commit(i, c, 'create %d' % i)
            undo_last = 'create %d' % i
        elif kind == 4 and undo_last:
            undo(db, undo_last)
            commit(i, c, 'undo (%s) \u2013 caf\u00e9' % undo_last)
            undo_last = 'undo (%s) \u2013 caf\u00e9' % undo_last if i % 20 == 4 else None
        elif kind == 5 and undo_last:
            # An undo of an undo: the creation comes back.
            undo(db, undo_last)
            commit(i, c, 'redo %d' % i)
            undo_last = None
        else:
            c['k%d' % (i % 13)] = rnd.randbytes(rnd.randrange(16, 300))
            root['tree'][i] = 'value %d' % i
            commit(i, c, 'change %d' % i)
        if i == n_txns // 3:
            pack_tid = storage.lastTransaction()
    # An object that becomes unreachable after the pack time below: the copy's pack collects it.
    root['c0']['orphan'] = PersistentMapping({'n': 1})
    commit(n_txns, root['c0'], 'orphan')
    del root['c0']['orphan']
    commit(n_txns + 1, root['c0'], 'orphaned')
    # Pack as of a third of the way: FileStorage drops the transactions left without records and
    # marks the ones it rewrote with status 'p'.
    db.pack(TimeStamp(pack_tid).timeTime() + 1e-6)
    conn.close()
    db.close()


def build_blob_source(path, blob_dir, n_txns, seed=23):
    """A FileStorage with blobs and their history, in cycles of eight transactions."""
    rnd = random.Random(seed)
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, create=True, blob_dir=blob_dir))
    conn = db.open()
    root = conn.root()
    root['files'] = PersistentMapping()
    transaction.commit()
    for i in range(n_txns):
        files = root['files']
        c, step = divmod(i, 8)
        if step == 0:
            files['f%d' % c] = Blob(rnd.randbytes(rnd.randrange(1, 300_000)))
            note = 'add f%d' % c
        elif step in (1, 2):
            with files['f%d' % c].open('w') as f:
                f.write(rnd.randbytes(rnd.randrange(1, 100_000)))
            note = 'change f%d %d' % (c, step)
        elif step == 3:
            undo(db, 'change f%d 2' % c)  # the blob goes back to its first change
            note = 'undo change f%d' % c
        elif step == 4:
            files['g%d' % c] = Blob(b'short-lived %d' % c)
            note = 'add g%d' % c
        elif step == 5:
            undo(db, 'add g%d' % c)  # a blob whose creation is undone: a record without data
            note = 'undo add g%d' % c
        else:
            files['n%d' % i] = i
            note = 'misc %d' % i
        transaction.get().note(note)
        transaction.commit()
    conn.close()
    db.close()


def undo(db, description):
    for d in db.undoLog(0, 50):
        if d['description'] == description.encode('utf-8') or d['description'] == description:
            db.undo(d['id'])
            return
    raise AssertionError('no transaction %r to undo' % description)


def convert(source_path, zeo, workdir):
    """zodbconvert from the FileStorage into storage 1 through the first node's ZEO port."""
    config = os.path.join(workdir, 'convert.conf')
    host, port = zeo[0]
    with open(config, 'w') as f:
        f.write('<filestorage source>\n  path %s\n  read-only true\n</filestorage>\n'
                '<zeoclient destination>\n  server %s:%d\n  storage 1\n  wait true\n'
                '</zeoclient>\n' % (source_path, host, port))
    zodbconvert = os.path.join(os.path.dirname(sys.executable), 'zodbconvert')
    started = time.monotonic()
    subprocess.run([zodbconvert, config], check=True)
    return time.monotonic() - started


def records(txn):
    return [(r.oid, r.tid, r.data, r.data_txn) for r in txn]


def compare(source, dest, blobs=False):
    """Transaction by transaction; returns counts. Raises AssertionError on a difference.

    With `blobs`: a blob record is copied with storeBlob (a new blob file, no backpointer), so
    its data_txn is not compared; its blob file is, byte for byte.
    """
    counts = {'transactions': 0, 'records': 0, 'without_data': 0, 'backpointers': 0,
              'statuses': {}, 'blobs': 0}
    oids = set()
    it1, it2 = source.iterator(), dest.iterator()
    for t1 in it1:
        t2 = next(it2, None)
        assert t2 is not None, 'the copy ends before %s' % t1.tid.hex()
        where = 'transaction %s' % t1.tid.hex()
        assert t1.tid == t2.tid, '%s: the copy has %s' % (where, t2.tid.hex())
        for attr in ('status', 'user', 'description', 'extension', 'extension_bytes'):
            a, b = getattr(t1, attr), getattr(t2, attr)
            assert a == b, '%s: %s %r in the source, %r in the copy' % (where, attr, a, b)
        r1, r2 = records(t1), records(t2)
        if blobs:
            for i, r in enumerate(r1):
                if r[2] is not None and ZODB.blob.is_blob_record(r[2]) and i < len(r2):
                    r2[i] = r2[i][:3] + (r[3],)
                    if same_blob(source, dest, r[0], r[1]):
                        counts['blobs'] += 1
        assert r1 == r2, '%s: records differ:\n%r\n%r' % (where, r1, r2)
        counts['transactions'] += 1
        counts['records'] += len(r1)
        counts['without_data'] += sum(1 for r in r1 if r[2] is None)
        counts['backpointers'] += sum(1 for r in r1 if r[3] is not None)
        counts['statuses'][t1.status] = counts['statuses'].get(t1.status, 0) + 1
        oids.update(r[0] for r in r1)
    extra = next(it2, None)
    assert extra is None, 'the copy has an extra transaction %s' % extra.tid.hex()
    for oid in sorted(oids):
        try:
            expected = source.load(oid)
        except ZODB.POSException.POSKeyError:
            try:
                got = dest.load(oid)
            except ZODB.POSException.POSKeyError:
                continue
            raise AssertionError('object %s: none in the source, %r in the copy' % (oid.hex(), got))
        assert dest.load(oid) == expected, 'object %s: current state differs' % oid.hex()
    counts['objects'] = len(oids)
    return counts


def reachable(storage):
    """The OIDs reachable from the root, by the references in the current records."""
    seen, todo = set(), [ZODB.utils.z64]
    while todo:
        oid = todo.pop()
        if oid in seen:
            continue
        seen.add(oid)
        data, _ = storage.load(oid)
        todo.extend(ZODB.serialize.referencesf(data))
    return seen


def oids_of(storage):
    """Every OID a storage's transactions wrote."""
    return {r.oid for t in storage.iterator() for r in t}


def same_blob(source, dest, oid, tid):
    """Whether both have the same blob file for the revision (True), or neither has one (False)."""
    try:
        path = source.loadBlob(oid, tid)
    except ZODB.POSException.POSKeyError:
        try:
            dest.loadBlob(oid, tid)
        except ZODB.POSException.POSKeyError:
            return False
        raise AssertionError('blob %s@%s: none in the source, one in the copy' % (
            oid.hex(), tid.hex()))
    with open(path, 'rb') as f1, open(dest.loadBlob(oid, tid), 'rb') as f2:
        assert f1.read() == f2.read(), 'blob %s@%s differs' % (oid.hex(), tid.hex())
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--zeo', required=True, help='the nodes\' ZEO addresses, comma-separated')
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--transactions', type=int, default=300)
    parser.add_argument('--blob-transactions', type=int, default=40)
    args = parser.parse_args()
    zeo = [(a.rsplit(':', 1)[0], int(a.rsplit(':', 1)[1])) for a in args.zeo.split(',')]
    source_path = os.path.join(args.workdir, 'Data.fs')
    build_source(source_path, args.transactions)

    seconds = convert(source_path, zeo, args.workdir)

    source = ZODB.FileStorage.FileStorage(source_path, read_only=True)
    dest = ZEO.ClientStorage.ClientStorage(zeo[1 % len(zeo)], storage='1', wait=True,
                                           read_only=True)
    try:
        counts = compare(source, dest)
    finally:
        dest.close()

    # The site moved in: open it with ZODB through another node and carry on.
    db = ZODB.DB(ZEO.ClientStorage.ClientStorage(zeo[2 % len(zeo)], storage='1', wait=True))
    with db.transaction() as conn:
        root = conn.root()
        assert sorted(root)[:2] == ['c0', 'c1'] and len(root['tree']) > 0
        root['c0']['after'] = 'moved in'
    last = db.storage.lastTransaction()
    assert last > source.lastTransaction(), 'a commit after the copy follows its TIDs'
    # Pack with garbage collection works on the copy: the references of restored records were
    # read when they were stored, so everything reachable from the root stays, byte for byte, and
    # what is not reachable goes.
    live = reachable(db.storage)
    before = {oid: db.storage.load(oid) for oid in live}
    unreachable = set()
    for oid in oids_of(source) - live:
        try:
            db.storage.load(oid)
        except ZODB.POSException.POSKeyError:
            continue  # deleted already (an undone creation)
        unreachable.add(oid)
    assert unreachable, 'the source has an unreachable object for the pack to collect'
    db.pack(time.time() + 1)
    db.close()
    # Read back through a client without a cache (ZEO sends no invalidation for a collected object).
    fresh = ZEO.ClientStorage.ClientStorage(zeo[0], storage='1', wait=True, read_only=True)
    for oid, state in before.items():
        assert fresh.load(oid) == state, 'object %s changed by pack' % oid.hex()
    for oid in unreachable:
        try:
            fresh.load(oid)
        except ZODB.POSException.POSKeyError:
            continue
        raise AssertionError('unreachable object %s survived the pack' % oid.hex())
    fresh.close()
    counts['after_pack'] = {'reachable': len(live), 'collected': len(unreachable)}
    source.close()

    counts['seconds'] = round(seconds, 3)
    counts['transactions_per_second'] = round(counts['transactions'] / seconds, 1)

    # A site with blobs, through examples/python/zodb_import.py into storage `blobs`.
    blob_path = os.path.join(args.workdir, 'Blobs.fs')
    blob_dir = os.path.join(args.workdir, 'blobs')
    build_blob_source(blob_path, blob_dir, args.blob_transactions)
    started = time.monotonic()
    subprocess.run([sys.executable, IMPORT, '--source', blob_path, '--blob-dir', blob_dir,
                    '--zeo', args.zeo, '--storage', 'blobs'], check=True)
    blob_seconds = time.monotonic() - started
    source = ZODB.FileStorage.FileStorage(blob_path, read_only=True, blob_dir=blob_dir)
    cache = os.path.join(args.workdir, 'blob-cache')
    dest = ZEO.ClientStorage.ClientStorage(zeo[1 % len(zeo)], storage='blobs', wait=True,
                                           read_only=True, blob_dir=cache)
    try:
        blob_counts = compare(source, dest, blobs=True)
    finally:
        dest.close()
        source.close()
    blob_counts['seconds'] = round(blob_seconds, 3)
    counts['blob_site'] = blob_counts
    print(json.dumps(counts, sort_keys=True))


if __name__ == '__main__':
    main()
