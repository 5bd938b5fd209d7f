#!/usr/bin/env python3
"""A ZEO client without the msgpack package against nodes greeting Z5 (pickle framing).

`import msgpack` is made to fail before ZEO is imported, as on a machine where msgpack is not
installed: the client can then only speak pickle. Through the given nodes' ZEO ports it checks the
negotiated protocol, commits and loads with ZODB (objects, a 2 MiB value, non-ASCII text, a
transaction extension), sees another client's commit (invalidations over Z5), gets a
ConflictError and a POSKeyError (exceptions over Z5), undoes, lists undoLog with a specification,
iterates, reads history and packs.

Prints one JSON line with what it did; exits non-zero on any failure.

Usage: python z5_client.py --zeo HOST:PORT,HOST:PORT,...
"""
import sys

sys.modules['msgpack'] = None  # `import msgpack` now raises ImportError

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import transaction  # noqa: E402
import ZODB  # noqa: E402
import ZODB.POSException  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402

import ZEO.ClientStorage  # noqa: E402


def client(addr):
    s = ZEO.ClientStorage.ClientStorage(addr, storage='1', wait=True)
    version = s._server.client.protocol_version
    assert version == b'Z5', version
    return s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--zeo', required=True)
    args = parser.parse_args()
    addrs = [(a.rsplit(':', 1)[0], int(a.rsplit(':', 1)[1])) for a in args.zeo.split(',')]
    try:
        import msgpack  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError('msgpack is importable')
    done = []

    db1 = ZODB.DB(client(addrs[0]))
    db2 = ZODB.DB(client(addrs[1 % len(addrs)]))
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = db1.open(tm1), db2.open(tm2)

    big = bytes(range(256)) * (8 * 1024)  # 2 MiB
    t = tm1.get()
    t.note('cr\u00e9ation \u2013 Z5')
    t.setUser('alice', '/site')
    t.setExtendedInfo('request', {'path': '/edit', 'n': [1, 2, 3], 'f': 1.5, 'none': None})
    c1.root()['m'] = PersistentMapping({'v': 1, 'text': 'h\u00e9llo', 'big': big})
    c1.root()['other'] = PersistentMapping()
    tm1.commit()
    done.append('commit')

    # The other client, through another node, sees it (invalidations and loads over Z5).
    deadline = time.monotonic() + 20
    while True:
        tm2.begin()
        m = c2.root().get('m')
        if m is not None:
            break
        assert time.monotonic() < deadline, 'the commit never reached the other client'
        time.sleep(0.05)
    assert m['v'] == 1 and m['text'] == 'h\u00e9llo' and m['big'] == big
    done.append('load elsewhere')

    # A conflict: both change m; the second commit fails with ConflictError naming m.
    m['v'] = 2
    c1.root()['m']['v'] = 3
    tm1.commit()
    try:
        tm2.commit()
    except ZODB.POSException.ConflictError as e:
        assert e.oid == m._p_oid, (e.oid, m._p_oid)
        tm2.abort()
        done.append('ConflictError')
    else:
        raise AssertionError('no ConflictError')

    # POSKeyError for an object that does not exist.
    try:
        db1.storage.load(b'\x00\x00\x00\x00\x00\x01\x00\x00')
    except ZODB.POSException.POSKeyError:
        done.append('POSKeyError')
    else:
        raise AssertionError('no POSKeyError')

    # Undo of the last change of 'other', found by a specification.
    c1.root()['other']['k'] = 'undo me'
    tm1.get().note('to undo')
    tm1.commit()
    log = [d for d in db1.undoLog(0, 20) if d['description'] == 'to undo']
    assert len(log) == 1, db1.undoLog(0, 20)
    info = db1.storage.undoInfo(0, 20, {'description': b'to undo'})
    assert [d['id'] for d in info] == [log[0]['id']], info
    db1.undo(log[0]['id'], tm1.get())
    tm1.commit()
    tm1.begin()
    assert 'k' not in c1.root()['other']
    done.append('undo')

    # Iteration, history and pack.
    txns = list(db1.storage.iterator())
    assert any(t.description == 'cr\u00e9ation \u2013 Z5'.encode() for t in txns), txns
    first = [t for t in txns if t.description.startswith(b'cr')][0]
    assert first.extension['request']['path'] == '/edit', first.extension
    assert first.user == b'/site alice', first.user
    assert len(db1.storage.history(m._p_oid, 10)) == 2
    db1.pack(time.time())
    done.append('iterate, history, pack')

    c1.close()
    c2.close()
    db1.close()
    db2.close()
    print(json.dumps({'protocol': 'Z5', 'done': done, 'transactions': len(txns)}))


if __name__ == '__main__':
    main()
