#!/usr/bin/env python3
"""Copy a FileStorage, with its history and its blobs, into a ZeoRaft storage through a ZEO port.

What zodbconvert and ZODB's copyTransactionsFrom do (every transaction at its own TID, with its
status and metadata, every record through ZODB's `restore`), plus blobs: ZEO's ClientStorage has no
`restoreBlob`, so copyTransactionsFrom through any ZEO server leaves blob records without their
files. Here a record whose data is a blob's is sent with `storeBlob` in the same transaction at the
same TID (based on the copy's serial of the object), the blob file streamed to the node.

Needs ZODB and ZEO (`pip install ZEO`). Usage:

    python zodb_import.py --source Data.fs [--blob-dir blobs] --zeo 127.0.0.1:8101 [--storage 1]
                          [--incremental]

--incremental resumes after the copy's last transaction (a copy that was interrupted).
Prints one line per 100 transactions and a summary; exits non-zero on the first error.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import ZODB.FileStorage
import ZODB.POSException
from ZODB.blob import is_blob_record
from ZODB.utils import p64, u64

import ZEO.ClientStorage


def copy(source, dest, blobs, start=None, log=print):
    """Copy the transactions of `source` from `start` on into `dest`; returns (txns, records, blobs)."""
    serials = {}  # the copy's serial of every object written so far (BaseStorage.copy's preindex)
    tmp = tempfile.mkdtemp(prefix='zodb-import-')
    txns = records = blob_count = 0
    try:
        for txn in source.iterator(start):
            dest.tpc_begin(txn, txn.tid, txn.status)
            for r in txn:
                blob_file = None
                if blobs and r.data is not None and is_blob_record(r.data):
                    try:
                        blob_file = source.loadBlob(r.oid, r.tid)
                    except ZODB.POSException.POSKeyError:
                        blob_file = None  # a blob record whose file is gone: copy the record alone
                if blob_file is not None:
                    # storeBlob takes the file over: give it a copy.
                    fd, path = tempfile.mkstemp(dir=tmp)
                    os.close(fd)
                    shutil.copyfile(blob_file, path)
                    dest.storeBlob(r.oid, serial_of(dest, serials, r.oid), r.data, path, '', txn)
                    blob_count += 1
                else:
                    dest.restore(r.oid, r.tid, r.data, '', r.data_txn, txn)
                serials[r.oid] = txn.tid
                records += 1
            dest.tpc_vote(txn)
            dest.tpc_finish(txn)
            txns += 1
            if txns % 100 == 0:
                log('%d transactions copied (last %s)' % (txns, txn.tid.hex()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return txns, records, blob_count


def serial_of(dest, serials, oid):
    """The copy's current serial of `oid`: written by this run, or already there (incremental)."""
    if oid in serials:
        return serials[oid]
    try:
        return dest.getTid(oid)
    except ZODB.POSException.POSKeyError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--source', required=True, help='the FileStorage (Data.fs) to copy')
    parser.add_argument('--blob-dir', help="the FileStorage's blob directory, if it has blobs")
    parser.add_argument('--zeo', required=True,
                        help="ZEO addresses of the cluster's nodes, host:port, comma-separated")
    parser.add_argument('--storage', default='1', help='the storage to copy into (default 1)')
    parser.add_argument('--incremental', action='store_true',
                        help="resume after the copy's last transaction")
    args = parser.parse_args(argv)
    addresses = []
    for a in args.zeo.split(','):
        host, _, port = a.rpartition(':')
        addresses.append((host, int(port)))
    source = ZODB.FileStorage.FileStorage(args.source, read_only=True, blob_dir=args.blob_dir)
    blob_cache = tempfile.mkdtemp(prefix='zodb-import-cache-')
    dest = ZEO.ClientStorage.ClientStorage(addresses, storage=args.storage, wait=True,
                                           blob_dir=blob_cache, shared_blob_dir=False)
    try:
        start = None
        last = dest.lastTransaction()
        if u64(last):
            if not args.incremental:
                sys.exit('storage %s already holds transactions (last %s): use --incremental to '
                         'resume a copy' % (args.storage, last.hex()))
            start = p64(u64(last) + 1)
        began = time.monotonic()
        txns, records, blobs = copy(source, dest, args.blob_dir is not None, start)
        seconds = time.monotonic() - began
        print('copied %d transactions, %d records, %d blobs in %.1f s (%.1f transactions/s)' % (
            txns, records, blobs, seconds, txns / seconds if seconds else 0.0))
    finally:
        dest.close()
        source.close()
        shutil.rmtree(blob_cache, ignore_errors=True)


if __name__ == '__main__':
    main()
