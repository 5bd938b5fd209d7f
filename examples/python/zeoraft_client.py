#!/usr/bin/python3
"""A ZeoRaft client in Python: the .proto files are the whole contract.

Uses Debian's python3-grpcio and python3-grpc-tools (run it with /usr/bin/python3). The gRPC
stubs are generated from ../../proto into a temporary directory each time it starts, so there is
nothing to build or install.

  zeoraft_client.py --nodes 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 demo
      open storage "1", allocate an OID, commit an object, load it back, show the node's status
  zeoraft_client.py --nodes ... follow [--from TID] [--count N] [--seconds S]
      follow the Subscribe stream: one line per committed transaction, in TID order; when the
      node goes away (UNAVAILABLE) move to the next node and resume after the last TID received
  zeoraft_client.py --nodes ... commit [--count N]
      commit N small transactions (for watching `follow` in another terminal)

Every line printed is one JSON object, so scripts (and the tests) can read the output.
"""

import argparse
import datetime
import importlib
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
Z64 = bytes(8)

# Status codes after which another node may succeed: the node is down or shutting down
# (UNAVAILABLE), or it has not caught up with the TID we have already seen (DEADLINE_EXCEEDED).
FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
CALL_TIMEOUT_S = 10.0
# How long to keep cycling through the node list before giving up.
FAILOVER_BUDGET_S = 60.0


def load_stubs():
    """Compile storage.proto into a temporary directory and import the generated modules."""
    out = tempfile.mkdtemp(prefix="zeoraft-py-stubs-")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_DIR,
        "-I" + well_known,
        "--python_out=" + out,
        "--grpc_python_out=" + out,
        "zeoraft/v1/storage.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed to compile %s/zeoraft/v1/storage.proto" % PROTO_DIR)
    sys.path.insert(0, out)
    pb2 = importlib.import_module("zeoraft.v1.storage_pb2")
    pb2_grpc = importlib.import_module("zeoraft.v1.storage_pb2_grpc")
    return pb2, pb2_grpc


pb, pb_grpc = load_stubs()


def emit(**fields):
    print(json.dumps(fields), flush=True)


def tid_time(tid):
    """A TID in ZODB's TimeStamp layout as an ISO UTC time (minutes packed high, seconds low)."""
    if not tid or tid == Z64:
        return None
    v = int.from_bytes(tid, "big")
    minutes, frac = v >> 32, v & 0xFFFFFFFF
    minute = minutes % 60
    hours = minutes // 60
    hour = hours % 24
    days = hours // 24
    day = days % 31 + 1
    months = days // 31
    month = months % 12 + 1
    year = months // 12 + 1900
    seconds = frac * 60.0 / (1 << 32)
    t = datetime.datetime(year, month, day, hour, minute, tzinfo=datetime.timezone.utc)
    return (t + datetime.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


class Cluster:
    """A list of node addresses and a channel to the current one; moves on when a node fails."""

    def __init__(self, addresses):
        self.addresses = addresses
        self.index = 0
        self.channel = None
        self.stub = None
        self.connect()

    @property
    def address(self):
        return self.addresses[self.index]

    def connect(self):
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.StorageStub(self.channel)

    def next_node(self, code, details):
        old = self.address
        self.index = (self.index + 1) % len(self.addresses)
        emit(event="failover", node=old, to=self.address, code=code, error=details)
        self.connect()

    def call(self, method, request):
        """A unary call, moved to the next node on UNAVAILABLE until the failover budget is spent."""
        deadline = time.monotonic() + FAILOVER_BUDGET_S
        while True:
            try:
                return getattr(self.stub, method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as e:
                if e.code() not in FAILOVER_CODES or time.monotonic() > deadline:
                    raise
                self.next_node(e.code().name, e.details())
                time.sleep(0.2)


def demo(cluster, args):
    opened = cluster.call("Open", pb.OpenRequest(storage=args.storage, client_name="python-example"))
    emit(event="opened", node=opened.node_id, leader=opened.leader_id, storage=opened.info.name,
         last_tid=opened.last_tid.hex(), objects=opened.info.object_count)
    oid = cluster.call("NewOids", pb.NewOidsRequest(storage=args.storage, count=1)).oids[0]
    data = ("hello from python at %s" % time.time()).encode()
    txn = pb.Transaction(storage=args.storage, user="python", description="example commit",
                         stores=[pb.StoreOp(oid=oid, serial=Z64, data=data)])
    tid = cluster.call("Commit", pb.CommitRequest(transaction=txn)).tid
    emit(event="committed", oid=oid.hex(), tid=tid.hex(), time=tid_time(tid))
    # seen_tid: the node answers only once it has applied our commit (read-your-writes anywhere).
    loaded = cluster.call("Load", pb.LoadRequest(storage=args.storage, oid=oid, seen_tid=tid))
    emit(event="loaded", oid=oid.hex(), serial=loaded.serial.hex(), data=loaded.data.decode(),
         matches=loaded.data == data and loaded.serial == tid)
    st = cluster.call("Status", pb.StatusRequest())
    emit(event="status", node=st.node_id, role=st.role, leader=st.leader_id, term=st.term,
         commit_index=st.commit_index, applied_index=st.applied_index)


def commit(cluster, args):
    oid = cluster.call("NewOids", pb.NewOidsRequest(storage=args.storage, count=1)).oids[0]
    serial = Z64
    for i in range(args.count):
        txn = pb.Transaction(storage=args.storage, user="python", description="commit %d" % i,
                             stores=[pb.StoreOp(oid=oid, serial=serial, data=b"revision %d" % i)])
        serial = cluster.call("Commit", pb.CommitRequest(transaction=txn)).tid
        emit(event="committed", oid=oid.hex(), tid=serial.hex(), time=tid_time(serial))


def follow(cluster, args):
    """Subscribe, and across node failures resume after the last TID received (etcd-style watch)."""
    last = bytes.fromhex(args.from_tid) if args.from_tid else b""
    received = 0
    end = time.monotonic() + args.seconds
    failover_deadline = None
    while time.monotonic() < end and (args.count == 0 or received < args.count):
        try:
            if last:
                # Tell the node what we have seen: it answers once it has applied at least that.
                cluster.stub.Open(pb.OpenRequest(storage=args.storage, last_tid=last,
                                                 client_name="python-follow"), timeout=CALL_TIMEOUT_S)
            stream = cluster.stub.Subscribe(
                pb.SubscribeRequest(storage=args.storage, from_tid=last, progress_interval_ms=500),
                timeout=max(0.1, end - time.monotonic()))
            emit(event="subscribed", node=cluster.address, from_tid=last.hex())
            for ev in stream:
                failover_deadline = None
                kind = ev.WhichOneof("event")
                if kind == "commit":
                    c = ev.commit
                    if last and c.tid <= last:
                        sys.exit("stream went backwards or repeated: %s after %s" % (c.tid.hex(), last.hex()))
                    last = c.tid
                    received += 1
                    emit(event="commit", node=cluster.address, tid=c.tid.hex(), time=tid_time(c.tid),
                         oids=[o.hex() for o in c.oids])
                    if args.count and received >= args.count:
                        break
                elif kind == "progress":
                    # A bookmark: everything up to it was delivered, so resuming from it is safe.
                    if ev.progress.tid > last:
                        last = ev.progress.tid
                elif kind == "reset":
                    emit(event="reset", node=cluster.address, oldest_tid=ev.reset.oldest_tid.hex(),
                         resume_tid=ev.reset.tid.hex())
                    last = ev.reset.tid
                elif kind == "leader_lost":
                    emit(event="leader_lost", node=cluster.address, reporter=ev.leader_lost.node_id)
            else:
                # The node ended the stream without an error (it should not): try the next one.
                cluster.next_node("OK", "stream ended")
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() >= end:
                break
            if e.code() not in FAILOVER_CODES:
                raise
            failover_deadline = failover_deadline or time.monotonic() + FAILOVER_BUDGET_S
            if time.monotonic() > failover_deadline:
                raise
            cluster.next_node(e.code().name, e.details())
            time.sleep(0.2)
    emit(event="done", received=received, last_tid=last.hex())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103",
                    help="comma-separated client addresses of the nodes, tried in order")
    ap.add_argument("--storage", default="1", help='storage name (ZEO default "1")')
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="open, commit, load, status")
    c = sub.add_parser("commit", help="commit N transactions")
    c.add_argument("--count", type=int, default=10)
    f = sub.add_parser("follow", help="follow the Subscribe stream across failovers")
    f.add_argument("--from", dest="from_tid", default="", help="resume after this TID (hex)")
    f.add_argument("--count", type=int, default=0, help="stop after N commits (0: never)")
    f.add_argument("--seconds", type=float, default=3600.0, help="stop after S seconds")
    args = ap.parse_args()
    cluster = Cluster([a.strip() for a in args.nodes.split(",") if a.strip()])
    {"demo": demo, "commit": commit, "follow": follow}[args.command](cluster, args)


if __name__ == "__main__":
    main()
