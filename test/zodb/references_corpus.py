#!/usr/bin/env python3
"""Records written by the pinned ZODB, each with ZODB.serialize.referencesf's answer.

Builds a database on a FileStorage in a temporary directory — persistent mappings and lists,
BTrees large enough to split into buckets, persistent references inside tuples, lists, dicts and
sets, weak references, cross-database references, objects whose class pickles as a bare OID
reference, big and unicode payloads — and writes the states of its objects again with pickle
protocols 1 and 2, and with OIDs as Python 2 str (records of older ZODBs). Then mutates records at
random (seeded): flipped bytes, cuts, spliced pieces.

Prints one JSON object per line: {"kind": ..., "record": hex, "refs": [hex, ...]} when
referencesf reads the record, {"kind": ..., "record": hex, "error": "..."} when it raises.
Used by test/storage/zodb-refs.test.ts to compare the server's reader with referencesf.

Usage: references_corpus.py [--mutants N] [--seed S]
"""
import argparse
import io
import json
import os
import random
import resource
import shutil
import sys
import tempfile

import BTrees.IOBTree
import BTrees.OOBTree
import persistent
import persistent.list
import persistent.mapping
import persistent.wref
import transaction
import ZODB
import ZODB.FileStorage
import ZODB.tests.util
from ZODB._compat import PersistentPickler
from ZODB.serialize import ObjectWriter, referencesf

#: This process's address space at most.
ADDRESS_SPACE_BYTES_MAX = 2 << 30


class Thing(persistent.Persistent):
    """Holds references in every container shape."""


class WithArgs(persistent.Persistent):
    """Pickles its class with __getnewargs__: references to it are bare OIDs (no class)."""

    def __init__(self, x):
        self.x = x

    def __getnewargs__(self):
        return (self.x,)


def build(path):
    databases = {}
    db = ZODB.DB(ZODB.FileStorage.FileStorage(os.path.join(path, 'Data.fs')),
                 databases=databases, database_name='main')
    other = ZODB.DB(ZODB.FileStorage.FileStorage(os.path.join(path, 'Other.fs')),
                    databases=databases, database_name='other')
    conn = db.open()
    root = conn.root()
    far = conn.get_connection('other').root()
    far['x'] = Thing()
    transaction.commit()

    leaves = [Thing() for _ in range(20)]
    for i, leaf in enumerate(leaves):
        leaf.n = i
        leaf.text = 'été %d ☃' % i
        leaf.blob = os.urandom(i * 37)
    t = Thing()
    t.tuple = (leaves[0], leaves[1], 3)
    t.list = [leaves[2], [leaves[3]], {'k': leaves[4]}]
    t.dict = {leaves[5]: 1, 'x': (leaves[6],)}
    t.set = {1, 2, 3}
    t.frozen = frozenset(['a', 'b'])
    t.weak = persistent.wref.WeakRef(leaves[7])
    t.far = far['x']  # a cross-database reference
    t.again = leaves[0]
    t.self = t
    t.big = 10 ** 40
    t.float = 1.5
    t.bytes = b'\x00' * 8  # 8 bytes, but not a persistent id
    root['thing'] = t
    root['mapping'] = persistent.mapping.PersistentMapping(
        {str(i): leaves[i] for i in range(8, 12)})
    root['list'] = persistent.list.PersistentList(leaves[12:16])
    root['args'] = WithArgs(1)
    root['args_holder'] = Thing()
    root['args_holder'].ref = root['args']
    tree = BTrees.OOBTree.OOBTree()
    for i in range(2000):  # splits into buckets and an internal node
        tree['key%05d' % i] = leaves[i % 20] if i % 3 == 0 else i
    root['tree'] = tree
    itree = BTrees.IOBTree.IOBTree()
    for i in range(500):
        itree[i] = leaves[i % 20]
    root['itree'] = itree
    root['leaves'] = leaves
    transaction.commit()
    # A second revision of some objects, and a deletion of a reference.
    t.list.append(leaves[16])
    t._p_changed = True
    del root['mapping']['8']
    transaction.commit()
    conn.close()
    other.close()
    db.close()


def records(path):
    storage = ZODB.FileStorage.FileStorage(os.path.join(path, 'Data.fs'), read_only=True)
    try:
        for txn in storage.iterator():
            for rec in txn:
                if rec.data:
                    yield rec.data
    finally:
        storage.close()


def other_protocols(path):
    """The current objects written again with other pickle protocols (as older ZODBs did)."""
    databases = {}
    db = ZODB.DB(ZODB.FileStorage.FileStorage(os.path.join(path, 'Data.fs'), read_only=True),
                 databases=databases, database_name='main')
    other = ZODB.DB(ZODB.FileStorage.FileStorage(os.path.join(path, 'Other.fs'), read_only=True),
                    databases=databases, database_name='other')
    conn = db.open()
    try:
        todo = [conn.root()]
        seen = set()
        objs = []
        while todo and len(objs) < 200:
            obj = todo.pop()
            if obj._p_oid in seen:
                continue
            seen.add(obj._p_oid)
            obj._p_activate()
            objs.append(obj)
            state = obj.__getstate__()
            stack = [state]
            while stack:
                v = stack.pop()
                if isinstance(v, persistent.Persistent) and v._p_jar is conn:
                    todo.append(v)
                elif isinstance(v, dict):
                    stack.extend(v.keys())
                    stack.extend(v.values())
                elif isinstance(v, (list, tuple)):
                    stack.extend(v)
        for obj in objs:
            writer = ObjectWriter(obj)
            data = writer.serialize(obj)
            # As Python 2's ZODB wrote them: OIDs as str (SHORT_BINSTRING), not bytes.
            yield 'python 2 str', data.replace(b'C\x08', b'U\x08')
            # Protocols 1 and 2 of zodbpickle's pickler (bytes become _codecs.encode calls,
            # which referencesf cannot read as OIDs). ZODB's unpickler reads no protocol above 3.
            for proto in (1, 2):
                writer = ObjectWriter(obj)
                writer._file = io.BytesIO()
                writer._p = PersistentPickler(writer.persistent_id, writer._file, proto)
                yield 'protocol %d' % proto, writer.serialize(obj)
    finally:
        conn.close()
        other.close()
        db.close()


def mutants(seeds, n, rng):
    for _ in range(n):
        b = bytearray(rng.choice(seeds))
        how = rng.randrange(4)
        if how == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif how == 1:
            b = b[:rng.randrange(len(b) + 1)]
        elif how == 2:
            other = rng.choice(seeds)
            i = rng.randrange(len(other) + 1)
            j = rng.randrange(len(b) + 1)
            b = b[:j] + other[i:i + rng.randint(1, 40)] + b[j:]
        else:
            i = rng.randrange(len(b) + 1)
            b = b[:i] + b[i + rng.randint(1, 8):]
        yield bytes(b)


def line(kind, data):
    out = {'kind': kind, 'record': data.hex()}
    try:
        out['refs'] = [r.hex() for r in referencesf(data)]
    except Exception as e:  # referencesf's own failure on a malformed record
        out['error'] = '%s: %s' % (type(e).__name__, str(e)[:200])
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mutants', type=int, default=2000)
    ap.add_argument('--seed', type=int, default=1)
    args = ap.parse_args()
    # A mutated length can make the unpickler allocate gigabytes before it finds the record short:
    # such an allocation fails at once (MemoryError, recorded as referencesf raising) instead.
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES_MAX, ADDRESS_SPACE_BYTES_MAX))
    path = tempfile.mkdtemp(prefix='zodb-refs-')
    try:
        build(path)
        seeds = []
        for data in records(path):
            seeds.append(data)
            line('zodb', data)
        for kind, data in other_protocols(path):
            seeds.append(data)
            line(kind, data)
        for data in mutants(seeds, args.mutants, random.Random(args.seed)):
            line('mutant', data)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
