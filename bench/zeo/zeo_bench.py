#!/usr/bin/env python3
"""One point of the ZEO-door benchmark (`npm run bench -- --compare zeo`), against any ZEO server.

Drives a ZEO 5+ server (ZeoRaft's ZEO port, or a real `runzeo`) with the real Python ZEO client
(`ZEO.ClientStorage`, from the pinned .venv-zodb) and prints one JSON object on stdout.

Workloads (--workload):
  commit  C clients, each committing one 256-byte object per transaction among objects of its own
          (no conflicts): tpc_begin, store, tpc_vote, tpc_finish. Latency per transaction.
  load    C clients loading random objects of 1,000 written first, with the protocol's
          loadBefore(oid, max TID) sent directly (the client's cache would answer otherwise).
  watch   W watcher clients (a ClientStorage each, with a DB object that records invalidations)
          and one writer committing at R commits/s (open loop). Delay from the writer's tpc_finish
          return to each watcher's receipt (a receipt before it counts as 0 and is counted), and
          the invalidations that never arrived.
  hot     C writers, each with its own ZODB.DB over its own ClientStorage, incrementing one shared
          BTrees.Length (`length.change(1)`, commit) as fast as they can. Errors are exceptions
          from commit (no retry); at the end the counter must equal the successful commits.
  hotset  the same, each writer inserting keys of its own into one shared BTrees.IIBTree.IITreeSet
          of 1,000 keys (several buckets); at the end the set must hold every committed key.
  hotpc   the same with ZODB's test class ZODB.tests.ConflictResolution.PCounter, an application
          class with its own _p_resolveConflict: a ZEO server resolves it (it can import it), ZeoRaft
          sends the conflict back to the client, which resolves it and votes again.

Clients are spread round-robin over --addrs (one address each) and over up to PROCESSES_MAX
processes (threads inside), so the Python client's GIL is not the only bottleneck. Every process
does its set-up, then all start together; the first --warmup seconds are not measured.
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import struct
import sys
import threading
import time
import traceback

import transaction
import ZODB
import ZEO.ClientStorage
from BTrees.IIBTree import IITreeSet
from BTrees.Length import Length
from ZODB.tests.ConflictResolution import PCounter
from ZODB.Connection import TransactionMetaData
from ZODB.utils import p64, u64, z64

#: Worker processes at most (the machine's cores are shared with the servers).
PROCESSES_MAX = 4
OBJECT_BYTES = 256
#: Objects each commit client owns (it cycles through them).
OWN_OBJECTS = 4
LOAD_OBJECTS = 1000
LOAD_BATCH = 100
MAX_TID = p64((1 << 63) - 1)
#: How long watchers wait after the writer's last commit for the last invalidations.
WATCH_GRACE_S = 3.0
CONNECT_TIMEOUT_S = 30


def client(addr, **kw):
    host, port = addr.rsplit(':', 1)
    kw.setdefault('wait', True)
    kw.setdefault('wait_timeout', CONNECT_TIMEOUT_S)
    return ZEO.ClientStorage.ClientStorage((host, int(port)), storage=kw.pop('storage', '1'), **kw)


def quantile(sorted_values, q):
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[rank]


def commit_one(st, oid, serial, data, meta=None):
    t = TransactionMetaData(*(meta or ()))
    st.tpc_begin(t)
    st.store(oid, serial, data, '', t)
    st.tpc_vote(t)
    return st.tpc_finish(t)


# ------------------------------------------------------------------------------------------------
# Per-client loops. Each returns a dict; `ready` is called after set-up, `start` is the shared
# start time (warm-up until then + warmup, measured until then + warmup + duration).

def commit_client(opts, i, ready, start):
    st = client(opts.addrs[i % len(opts.addrs)])
    try:
        data = os.urandom(OBJECT_BYTES)
        oids = [st.new_oid() for _ in range(OWN_OBJECTS)]
        serials = {oid: z64 for oid in oids}
        for oid in oids:
            serials[oid] = commit_one(st, oid, z64, data)
        ready()
        t0 = start() + opts.warmup
        t1 = t0 + opts.duration
        lat = []
        n = 0
        while True:
            oid = oids[n % OWN_OBJECTS]
            n += 1
            a = time.time()
            serials[oid] = commit_one(st, oid, serials[oid], data)
            b = time.time()
            if b > t1:
                break
            if a >= t0:
                lat.append((b - a) * 1000)
        return dict(lat=lat)
    finally:
        st.close()


def load_client(opts, i, ready, start):
    st = client(opts.addrs[i % len(opts.addrs)])
    try:
        oids = [p64(u64(opts.first_oid) + k) for k in range(LOAD_OBJECTS)]
        rnd = random.Random(i)
        call = st._server.call
        ready()
        t0 = start() + opts.warmup
        t1 = t0 + opts.duration
        lat = []
        while True:
            oid = oids[rnd.randrange(LOAD_OBJECTS)]
            a = time.time()
            r = call('loadBefore', oid, MAX_TID)
            b = time.time()
            if r is None:
                raise AssertionError('object %s not found' % u64(oid))
            if b > t1:
                break
            if a >= t0:
                lat.append((b - a) * 1000)
        return dict(lat=lat)
    finally:
        st.close()


class Recorder:
    """What ZEO's ClientStorage calls with invalidations: the arrival time of each TID."""

    def __init__(self):
        self.received = {}

    def invalidate(self, tid, oids, *args):
        self.received.setdefault(tid, time.time())

    def invalidateCache(self, *args):
        pass

    transform_record_data = untransform_record_data = lambda self, v: v


def watch_client(opts, i, ready, start):
    """A watcher (i < watchers) or, for i == watchers, the writer."""
    if i < opts.watchers:
        st = client(opts.addrs[i % len(opts.addrs)])
        rec = Recorder()
        st.registerDB(rec)
        try:
            ready()
            t = start() + opts.warmup + opts.duration + WATCH_GRACE_S
            time.sleep(max(0, t - time.time()))
            return dict(received={tid.hex(): at for tid, at in rec.received.items()})
        finally:
            st.close()
    st = client(opts.addrs[i % len(opts.addrs)])
    try:
        data = os.urandom(OBJECT_BYTES)
        oid = st.new_oid()
        serial = commit_one(st, oid, z64, data)
        ready()
        t0 = start() + opts.warmup
        t1 = t0 + opts.duration
        finished = {}
        k = 0
        # Open loop at `rate` until t1: a writer that falls behind commits less (commits/s shows
        # it) rather than running past the watchers' window.
        while True:
            due = t0 + k / opts.rate
            if max(due, time.time()) > t1:
                break
            time.sleep(max(0, due - time.time()))
            k += 1
            serial = commit_one(st, oid, serial, data)
            finished[serial.hex()] = time.time()
        return dict(finished=finished, behind_s=max(0.0, time.time() - t1))
    finally:
        st.close()


def hot_client(opts, i, ready, start):
    db = ZODB.DB(client(opts.addrs[i % len(opts.addrs)]))
    try:
        tm = transaction.TransactionManager()
        conn = db.open(transaction_manager=tm)
        counter = conn.root()[opts.key]
        if opts.workload == 'hot':
            change = counter.change
        elif opts.workload == 'hotpc':
            change = counter.inc
        else:
            # Keys of this writer only: 10**6 * (i + 1) + n; the set's first keys stay (0..999).
            inserted = []

            def change(_n, _next=iter(range(10**6 * (i + 1), 10**6 * (i + 2)))):
                k = next(_next)
                inserted.append(k)
                counter.insert(k)
        ready()
        t0 = start() + opts.warmup
        t1 = t0 + opts.duration
        ok = errors = warm = 0
        kinds = {}
        committed = []
        lat = []
        while True:
            a = time.time()
            if a > t1:
                break
            try:
                tm.begin()
                change(1)
                tm.commit()
                b = time.time()
                if opts.workload == 'hotset':
                    committed.extend(inserted)
                    del inserted[:]
                if a >= t0 and b <= t1:
                    ok += 1
                    lat.append((b - a) * 1000)
                else:
                    warm += 1
            except Exception as e:
                tm.abort()
                if opts.workload == 'hotset':
                    del inserted[:]
                if a >= t0:
                    errors += 1
                    kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
                else:
                    warm += 1  # may or may not have committed: counted in `total` below
        conn.close()
        return dict(ok=ok, errors=errors, kinds=kinds, lat=lat, warm=warm, keys=committed)
    finally:
        db.close()


LOOPS = dict(commit=commit_client, load=load_client, watch=watch_client, hot=hot_client,
             hotpc=hot_client, hotset=hot_client)


# ------------------------------------------------------------------------------------------------
# Processes

def worker(opts, indexes, ready_q, go, start_at, out_q):
    results = {}
    errors = []
    readies = threading.Semaphore(0)

    def ready():
        ready_q.put(1)

    def start():
        go.wait()
        return start_at.value

    def run(i):
        try:
            results[i] = LOOPS[opts.workload](opts, i, ready, start)
        except BaseException:
            errors.append(traceback.format_exc())
            ready_q.put(0)
        finally:
            readies.release()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out_q.put(dict(results=results, errors=errors))


def run_clients(opts, n):
    ctx = mp.get_context('fork')
    procs = min(n, PROCESSES_MAX)
    ready_q, out_q = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value('d', 0.0)
    ps = [ctx.Process(target=worker, args=(opts, list(range(p, n, procs)), ready_q, go,
                                           start_at, out_q), daemon=True)
          for p in range(procs)]
    for p in ps:
        p.start()
    for _ in range(n):
        if not ready_q.get(timeout=120):
            break
    start_at.value = time.time() + 0.2
    go.set()
    results, errors = {}, []
    for _ in ps:
        r = out_q.get()
        results.update(r['results'])
        errors.extend(r['errors'])
    for p in ps:
        p.join()
    if errors:
        raise RuntimeError('client failed:\n' + errors[0])
    return [results[i] for i in range(n)]


def latency_summary(lat, seconds):
    lat = sorted(lat)
    return dict(count=len(lat), per_second=len(lat) / seconds, p50_ms=quantile(lat, 0.5),
                p99_ms=quantile(lat, 0.99), max_ms=lat[-1] if lat else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--addrs', required=True, help='host:port[,host:port...]')
    ap.add_argument('--workload', required=True, choices=sorted(LOOPS))
    ap.add_argument('--clients', type=int, default=1)
    ap.add_argument('--duration', type=float, default=3.0)
    ap.add_argument('--warmup', type=float, default=1.0)
    ap.add_argument('--watchers', type=int, default=20)
    ap.add_argument('--rate', type=float, default=200.0)
    opts = ap.parse_args()
    opts.addrs = opts.addrs.split(',')
    w = opts.workload
    out = dict(workload=w, clients=opts.clients, duration_s=opts.duration)
    if w == 'commit':
        rs = run_clients(opts, opts.clients)
        out.update(latency_summary([x for r in rs for x in r['lat']], opts.duration))
    elif w == 'load':
        st = client(opts.addrs[0])
        try:
            data = os.urandom(OBJECT_BYTES)
            oids = []
            for b in range(0, LOAD_OBJECTS, LOAD_BATCH):
                t = TransactionMetaData()
                st.tpc_begin(t)
                for _ in range(LOAD_BATCH):
                    oid = st.new_oid()
                    oids.append(oid)
                    st.store(oid, z64, data, '', t)
                st.tpc_vote(t)
                st.tpc_finish(t)
        finally:
            st.close()
        # new_oid hands out consecutive OIDs within a batch of 100; keep them consecutive overall.
        if [u64(o) for o in oids] != list(range(u64(oids[0]), u64(oids[0]) + LOAD_OBJECTS)):
            raise SystemExit('the server handed out non-consecutive OIDs; cannot run loads')
        opts.first_oid = oids[0]
        rs = run_clients(opts, opts.clients)
        out.update(latency_summary([x for r in rs for x in r['lat']], opts.duration))
    elif w == 'watch':
        out['watchers'] = opts.watchers
        out['rate'] = opts.rate
        rs = run_clients(opts, opts.watchers + 1)
        finished = rs[-1]['finished']
        delays, missing, before = [], 0, 0
        for r in rs[:-1]:
            got = r['received']
            for tid, at in finished.items():
                if tid not in got:
                    missing += 1
                    continue
                d = (got[tid] - at) * 1000
                if d < 0:
                    before += 1
                delays.append(max(0.0, d))
        delays.sort()
        out.update(commits=len(finished), commits_per_second=len(finished) / opts.duration,
                   writer_behind_s=rs[-1]['behind_s'], expected=len(finished) * opts.watchers,
                   missing=missing, before_finish=before, p50_ms=quantile(delays, 0.5),
                   p99_ms=quantile(delays, 0.99), max_ms=delays[-1] if delays else None)
    elif w in ('hot', 'hotpc', 'hotset'):
        opts.key = 'hot-%d-%d' % (os.getpid(), int(time.time()))
        db = ZODB.DB(client(opts.addrs[0]))
        try:
            with db.transaction() as conn:
                conn.root()[opts.key] = (Length() if w == 'hot' else PCounter() if w == 'hotpc'
                                         else IITreeSet(range(1000)))
            rs = run_clients(opts, opts.clients)
            # The counter holds every commit that succeeded (warm-up ones too): none is lost.
            conn = db.open()
            conn.sync()
            counter = conn.root()[opts.key]
            if w == 'hotset':
                want = set(range(1000)).union(*(r['keys'] for r in rs))
                value = len(counter)
                missing = len(want - set(counter))
                extra = len(set(counter) - want)
            else:
                value = counter() if w == 'hot' else counter._value
            conn.close()
        finally:
            db.close()
        ok = sum(r['ok'] for r in rs)
        errors = sum(r['errors'] for r in rs)
        kinds = {}
        for r in rs:
            for k, v in r['kinds'].items():
                kinds[k] = kinds.get(k, 0) + v
        lat = sorted(x for r in rs for x in r['lat'])
        if w == 'hotset':
            # Every committed insert is in the set, and nothing else: (warm-up ones included).
            out.update(set_missing=missing, set_extra=extra)
            if missing or extra:
                out['lost_or_extra'] = True
            value = ok + sum(r['warm'] for r in rs)  # the bounds below do not apply to sets
        out.update(commits=ok, per_second=ok / opts.duration, errors=errors, error_kinds=kinds,
                   p50_ms=quantile(lat, 0.5), p99_ms=quantile(lat, 0.99), counter=value,
                   counter_at_least=ok, counter_at_most=ok + sum(r['warm'] for r in rs))
        if not out['counter_at_least'] <= value <= out['counter_at_most']:
            out['lost_or_extra'] = True
    json.dump(out, sys.stdout)
    sys.stdout.write('\n')


if __name__ == '__main__':
    code = 0
    try:
        main()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # ZEO client threads may linger; do not wait for them.
    os._exit(code)
