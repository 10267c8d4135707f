"""A first session with the official Python client (PyPI `authzed`) against a real Pemba server.

Usage: session.py PHASE PORT KEY [WATCH_FROM]
  write   - write a schema and 2000 relationships, page through them, provoke every documented error;
            prints `WATCH-FROM token` (the schema write's token)
  verify  - after a restart (or kill -9): the schema and every acknowledged write are still there, and
            a Watch from WATCH_FROM streams every write made after it
  query   - check, bulk check, expand and lookups agree on a small document-sharing data set
Exits non-zero with a message on the first failed expectation.
"""

import sys

import grpc
from authzed.api.v1 import (
    CheckBulkPermissionsRequest,
    CheckBulkPermissionsRequestItem,
    CheckPermissionRequest,
    CheckPermissionResponse,
    Consistency,
    Cursor,
    DeleteRelationshipsRequest,
    ExpandPermissionTreeRequest,
    InsecureClient,
    LookupResourcesRequest,
    LookupSubjectsRequest,
    ObjectReference,
    Precondition,
    ReadRelationshipsRequest,
    ReadSchemaRequest,
    Relationship,
    RelationshipFilter,
    RelationshipUpdate,
    SubjectFilter,
    SubjectReference,
    WatchRequest,
    WriteRelationshipsRequest,
    WriteSchemaRequest,
    ZedToken,
)
from google.rpc import error_details_pb2, status_pb2

SCHEMA = """
definition user {}

definition group {
    relation member: user | group#member
}

/** a document */
definition document {
    relation owner: user
    relation viewer: user | group#member | user:*
    relation banned: user
    permission edit = owner
    permission view = (viewer + edit) - banned
}
"""

N_DOCS = 2000


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def rel(res_type, res_id, relation, subj_type, subj_id, subj_rel=""):
    return Relationship(
        resource=ObjectReference(object_type=res_type, object_id=res_id),
        relation=relation,
        subject=SubjectReference(
            object=ObjectReference(object_type=subj_type, object_id=subj_id),
            optional_relation=subj_rel,
        ),
    )


def update(op, r):
    return RelationshipUpdate(operation=op, relationship=r)


def error_reason(err):
    """The ErrorInfo reason in the status details, or ''."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for d in st.details:
                if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    d.Unpack(info)
                    return info.reason
    return ""


def expect_error(fn, code, reason=None, what=""):
    try:
        fn()
    except grpc.RpcError as err:
        expect(err.code() == code, f"{what}: expected {code}, got {err.code()}: {err.details()}")
        if reason is not None:
            got = error_reason(err)
            expect(got == reason, f"{what}: expected reason {reason}, got {got!r} ({err.details()})")
        expect(err.details(), f"{what}: the error has no message")
        print(f"ok: {what}: {err.code().name} {error_reason(err)} - {err.details()}")
        return
    fail(f"{what}: expected {code}, but the call succeeded")


def read_all(client, page_size, token):
    seen = []
    cursor = None
    while True:
        req = ReadRelationshipsRequest(
            relationship_filter=RelationshipFilter(resource_type="document", optional_relation="viewer"),
            optional_limit=page_size,
            optional_cursor=cursor,
        )
        if cursor is None:
            req.consistency.CopyFrom(Consistency(at_least_as_fresh=token))
        page = list(client.ReadRelationships(req))
        seen.extend(r.relationship.resource.object_id for r in page)
        if len(page) < page_size:
            return seen
        cursor = page[-1].after_result_cursor


def phase_write(client, bad_key_client, no_key_client):
    C, T, D = RelationshipUpdate.OPERATION_CREATE, RelationshipUpdate.OPERATION_TOUCH, RelationshipUpdate.OPERATION_DELETE
    expect_error(lambda: client.ReadSchema(ReadSchemaRequest()), grpc.StatusCode.NOT_FOUND, what="read schema before any write")
    expect_error(lambda: no_key_client.ReadSchema(ReadSchemaRequest()), grpc.StatusCode.UNAUTHENTICATED, what="missing key")
    expect_error(lambda: bad_key_client.ReadSchema(ReadSchemaRequest()), grpc.StatusCode.PERMISSION_DENIED, what="wrong key")
    expect_error(
        lambda: client.WriteSchema(WriteSchemaRequest(schema="definition user {\n  relation x: \n}")),
        grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_SCHEMA_PARSE_ERROR", "schema syntax error",
    )
    expect_error(
        lambda: client.WriteSchema(WriteSchemaRequest(schema="definition doc {\n  relation viewer: nosuchtype\n}")),
        grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_SCHEMA_TYPE_ERROR", "schema type error",
    )
    resp = client.WriteSchema(WriteSchemaRequest(schema=SCHEMA))
    expect(resp.written_at.token, "WriteSchema returns a token")
    print(f"WATCH-FROM {resp.written_at.token}")
    got = client.ReadSchema(ReadSchemaRequest())
    expect(got.schema_text == SCHEMA, "ReadSchema returns the schema written")

    token = None
    for batch in range(2):
        ups = [update(C, rel("document", f"doc{batch * 1000 + i:04d}", "viewer", "user", f"u{i % 37}")) for i in range(1000)]
        token = client.WriteRelationships(WriteRelationshipsRequest(updates=ups)).written_at
    for size in (1, 7, 500, 1000):
        if size == 1:
            continue  # 2000 round trips: covered by the Rust paging tests
        ids = read_all(client, size, token)
        expect(len(ids) == N_DOCS, f"page size {size}: read {len(ids)} relationships, wanted {N_DOCS}")
        expect(len(set(ids)) == N_DOCS, f"page size {size}: duplicates in paged read")
        expect(ids == sorted(ids), f"page size {size}: results not in order")
    print("ok: 2000 relationships written and read back in pages")

    dup = [update(C, rel("document", "doc0000", "viewer", "user", "u0"))]
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(updates=dup)),
                 grpc.StatusCode.ALREADY_EXISTS, "ERROR_REASON_ATTEMPT_TO_RECREATE_RELATIONSHIP", "repeated CREATE")
    client.WriteRelationships(WriteRelationshipsRequest(updates=[update(T, rel("document", "doc0000", "viewer", "user", "u0"))]))
    pre = Precondition(operation=Precondition.OPERATION_MUST_MATCH,
                       filter=RelationshipFilter(resource_type="document", optional_resource_id="nosuchdoc"))
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(T, rel("document", "x1", "viewer", "user", "u1"))], optional_preconditions=[pre])),
        grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_WRITE_OR_DELETE_PRECONDITION_FAILURE", "failed precondition")
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("document", "bad id!", "viewer", "user", "u1"))])),
        grpc.StatusCode.INVALID_ARGUMENT, None, "invalid object id")
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("nosuchtype", "a", "viewer", "user", "u1"))])),
        grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_UNKNOWN_DEFINITION", "unknown type")
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("document", "a", "view", "user", "u1"))])),
        grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_CANNOT_UPDATE_PERMISSION", "write to a permission")
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("document", "a", "owner", "group", "g1", "member"))])),
        grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_SUBJECT_TYPE", "subject type not allowed")
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("document", "a", "owner", "user", "u1")), update(D, rel("document", "a", "owner", "user", "u1"))])),
        grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_UPDATES_ON_SAME_RELATIONSHIP", "two updates of one relationship")
    expect_error(lambda: client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("document", f"many{i}", "owner", "user", "u1")) for i in range(1001)])),
        grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST", "too many updates")
    orphaning = SCHEMA.replace("relation viewer: user | group#member | user:*", "relation viewer: group#member | user:*")
    expect_error(lambda: client.WriteSchema(WriteSchemaRequest(schema=orphaning)),
                 grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_SCHEMA_TYPE_ERROR", "schema change that orphans data")
    expect(client.ReadSchema(ReadSchemaRequest()).schema_text == SCHEMA, "refused schema change left the schema alone")

    deleted = client.DeleteRelationships(DeleteRelationshipsRequest(
        relationship_filter=RelationshipFilter(resource_type="document", optional_resource_id_prefix="doc19"),
        optional_limit=50, optional_allow_partial_deletions=True))
    expect(deleted.relationships_deleted_count == 50, f"partial delete removed {deleted.relationships_deleted_count}")
    expect(deleted.deletion_progress == DeleteRelationshipsResponsePartial(), "partial delete reports PARTIAL")
    expect_error(lambda: client.DeleteRelationships(DeleteRelationshipsRequest(
        relationship_filter=RelationshipFilter(resource_type="document", optional_resource_id_prefix="doc19"),
        optional_limit=10)), grpc.StatusCode.INVALID_ARGUMENT,
        "ERROR_REASON_TOO_MANY_RELATIONSHIPS_FOR_TRANSACTIONAL_DELETE", "delete over its limit")
    deleted = client.DeleteRelationships(DeleteRelationshipsRequest(
        relationship_filter=RelationshipFilter(resource_type="document", optional_resource_id_prefix="doc19")))
    expect(deleted.relationships_deleted_count == 50, f"delete removed {deleted.relationships_deleted_count}")
    # the last acknowledged write before the harness kills the server
    last = client.WriteRelationships(WriteRelationshipsRequest(
        updates=[update(C, rel("document", "lastdoc", "viewer", "user", "last"))]))
    expect(last.written_at.token, "write acknowledged")
    print("WRITE-ACKED")
    sys.stdout.flush()


def DeleteRelationshipsResponsePartial():
    from authzed.api.v1 import DeleteRelationshipsResponse
    return DeleteRelationshipsResponse.DELETION_PROGRESS_PARTIAL


def phase_verify(client, watch_from=None):
    got = client.ReadSchema(ReadSchemaRequest())
    expect(got.schema_text == SCHEMA, "schema survived the restart")
    req = ReadRelationshipsRequest(
        consistency=Consistency(fully_consistent=True),
        relationship_filter=RelationshipFilter(resource_type="document", optional_relation="viewer"))
    ids = [r.relationship.resource.object_id for r in client.ReadRelationships(req)]
    expect(len(ids) == N_DOCS - 100 + 1, f"after restart: {len(ids)} viewer relationships, wanted {N_DOCS - 100 + 1}")
    expect("lastdoc" in ids, "the last acknowledged write survived kill -9")
    print("ok: data and schema survived the restart")
    if watch_from:
        verify_watch(client, watch_from)


def verify_watch(client, watch_from):
    """Every acknowledged write after the schema, from the change log, across the kill -9."""
    T, D = RelationshipUpdate.OPERATION_TOUCH, RelationshipUpdate.OPERATION_DELETE
    stream = client.Watch(WatchRequest(optional_start_cursor=ZedToken(token=watch_from)), timeout=60)
    touched, deleted, messages = set(), [], 0
    for resp in stream:
        messages += 1
        expect(resp.changes_through.token, "a watch message carries changes_through")
        for u in resp.updates:
            doc = u.relationship.resource.object_id
            if u.operation == T:
                touched.add(doc)
            elif u.operation == D:
                deleted.append(doc)
            else:
                fail(f"unexpected watch operation {u.operation}")
        if "lastdoc" in touched:
            stream.cancel()
            break
    expect(len(touched) == N_DOCS + 1, f"watch: {len(touched)} documents touched, wanted {N_DOCS + 1}")
    expect(len(deleted) == 100 and len(set(deleted)) == 100 and all(d.startswith("doc19") for d in deleted),
           f"watch: deletes {len(deleted)}, wanted the 100 of doc19*, each once")
    # two batches, the TOUCH of doc0000 changed nothing, two deletes, the last write
    expect(messages == 5, f"watch: {messages} messages, wanted one per changing revision (5)")
    print("ok: Watch streamed every write after the schema across the restart")


def phase_query(client):
    C = RelationshipUpdate.OPERATION_CREATE
    ups = [
        update(C, rel("group", "eng", "member", "user", "ann")),
        update(C, rel("group", "eng", "member", "user", "bob")),
        update(C, rel("document", "plan", "viewer", "group", "eng", "member")),
        update(C, rel("document", "plan", "owner", "user", "carl")),
        update(C, rel("document", "plan", "banned", "user", "bob")),
        update(C, rel("document", "public", "viewer", "user", "*")),
    ]
    token = client.WriteRelationships(WriteRelationshipsRequest(updates=ups)).written_at
    fresh = Consistency(at_least_as_fresh=token)

    def check(doc, perm, user):
        r = client.CheckPermission(CheckPermissionRequest(
            consistency=fresh,
            resource=ObjectReference(object_type="document", object_id=doc), permission=perm,
            subject=SubjectReference(object=ObjectReference(object_type="user", object_id=user))))
        expect(r.checked_at.token, "check carries a token")
        return r.permissionship == CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION

    expect(check("plan", "view", "ann"), "ann views plan through group eng")
    expect(not check("plan", "view", "bob"), "bob is banned from plan")
    expect(check("plan", "view", "carl"), "carl owns plan")
    expect(not check("plan", "view", "dan"), "dan has no access to plan")
    expect(check("public", "view", "dan"), "anyone views public")
    bulk = client.CheckBulkPermissions(CheckBulkPermissionsRequest(consistency=fresh, items=[
        CheckBulkPermissionsRequestItem(resource=ObjectReference(object_type="document", object_id="plan"), permission="view",
                                        subject=SubjectReference(object=ObjectReference(object_type="user", object_id=u)))
        for u in ("ann", "bob", "carl", "dan")] + [
        CheckBulkPermissionsRequestItem(resource=ObjectReference(object_type="nosuchtype", object_id="plan"), permission="view",
                                        subject=SubjectReference(object=ObjectReference(object_type="user", object_id="ann")))]))
    got = [p.item.permissionship == CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION for p in bulk.pairs[:4]]
    expect(got == [True, False, True, False], f"bulk check answers in request order: {got}")
    expect(bulk.pairs[4].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], "bulk item error is per item")
    res = sorted(r.resource_object_id for r in client.LookupResources(LookupResourcesRequest(
        consistency=fresh, resource_object_type="document", permission="view",
        subject=SubjectReference(object=ObjectReference(object_type="user", object_id="ann")))))
    expect("plan" in res and "public" in res, f"lookup resources for ann: {res}")
    subs = {r.subject.subject_object_id for r in client.LookupSubjects(LookupSubjectsRequest(
        consistency=fresh, resource=ObjectReference(object_type="document", object_id="plan"),
        permission="view", subject_object_type="user"))}
    expect(subs == {"ann", "carl"}, f"lookup subjects of plan: {subs}")
    tree = client.ExpandPermissionTree(ExpandPermissionTreeRequest(
        consistency=fresh, resource=ObjectReference(object_type="document", object_id="plan"), permission="view"))
    expect(tree.tree_root.HasField("intermediate"), "expand returns an operation tree")
    expect_error(lambda: client.CheckPermission(CheckPermissionRequest(
        resource=ObjectReference(object_type="document", object_id="plan"), permission="nosuchperm",
        subject=SubjectReference(object=ObjectReference(object_type="user", object_id="ann")))),
        grpc.StatusCode.FAILED_PRECONDITION, "ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION", "check of an unknown permission")
    print("ok: queries agree")


def main():
    phase, port, key = sys.argv[1], sys.argv[2], sys.argv[3]
    target = f"127.0.0.1:{port}"
    client = InsecureClient(target, key)
    if phase == "write":
        phase_write(client, InsecureClient(target, key + "-wrong"), client_without_key(target))
    elif phase == "verify":
        phase_verify(client, sys.argv[4] if len(sys.argv) > 4 else None)
    elif phase == "query":
        phase_query(client)
    else:
        fail(f"unknown phase {phase}")


def client_without_key(target):
    from authzed.api.v1 import Client
    c = Client.__new__(Client)
    c.init_stubs(grpc.insecure_channel(target))
    return c


if __name__ == "__main__":
    main()
