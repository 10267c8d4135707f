"""The official Python client (PyPI `authzed`) against `pemba serve-testing`, as a test suite uses it.

Usage: testing_server.py PORT READONLY_PORT
  Each test of an application's suite picks its own token and so gets its own empty store; the
  read-only port serves the same stores and refuses writes; the Experimental service's older
  RPCs (which the client still exposes) work.
Exits non-zero with a message on the first failed expectation.
"""

import sys
import uuid

import grpc
from authzed.api.v1 import (
    BulkCheckPermissionRequest,
    BulkCheckPermissionRequestItem,
    BulkExportRelationshipsRequest,
    BulkImportRelationshipsRequest,
    CheckPermissionRequest,
    CheckPermissionResponse,
    Consistency,
    InsecureClient,
    ObjectReference,
    ReadSchemaRequest,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
    WriteSchemaRequest,
)

from session import SCHEMA, client_without_key, expect, expect_error, rel

HAS = CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION
NO = CheckPermissionResponse.PERMISSIONSHIP_NO_PERMISSION
FULL = Consistency(fully_consistent=True)


def check(client, doc, user):
    return client.CheckPermission(CheckPermissionRequest(
        consistency=FULL,
        resource=ObjectReference(object_type="document", object_id=doc),
        permission="view",
        subject=SubjectReference(object=ObjectReference(object_type="user", object_id=user)),
    )).permissionship


def main():
    port, readonly_port = sys.argv[1], sys.argv[2]
    target, readonly = f"127.0.0.1:{port}", f"127.0.0.1:{readonly_port}"
    token_a, token_b = f"test-{uuid.uuid4()}", f"test-{uuid.uuid4()}"
    a, b = InsecureClient(target, token_a), InsecureClient(target, token_b)

    a.WriteSchema(WriteSchemaRequest(schema=SCHEMA))
    a.WriteRelationships(WriteRelationshipsRequest(updates=[
        RelationshipUpdate(operation=RelationshipUpdate.OPERATION_CREATE,
                           relationship=rel("document", "plan", "viewer", "user", "ann")),
    ]))
    expect(check(a, "plan", "ann") == HAS, "token A sees its own write")
    print("ok: token A has its own store")

    expect_error(lambda: b.ReadSchema(ReadSchemaRequest()), grpc.StatusCode.NOT_FOUND,
                 what="token B's store starts empty")
    b.WriteSchema(WriteSchemaRequest(schema=SCHEMA))
    expect(check(b, "plan", "ann") == NO, "token B does not see token A's relationships")
    print("ok: token B has another store")

    nobody = client_without_key(target)
    expect_error(lambda: nobody.ReadSchema(ReadSchemaRequest()), grpc.StatusCode.NOT_FOUND,
                 what="calls without a token share a default store, empty at first")

    ro = InsecureClient(readonly, token_a)
    expect(check(ro, "plan", "ann") == HAS, "the read-only port serves token A's store")
    expect_error(lambda: ro.WriteRelationships(WriteRelationshipsRequest(updates=[
        RelationshipUpdate(operation=RelationshipUpdate.OPERATION_TOUCH,
                           relationship=rel("document", "plan", "viewer", "user", "bob")),
    ])), grpc.StatusCode.UNAVAILABLE, "ERROR_REASON_SERVICE_READ_ONLY", "a write on the read-only port")
    expect_error(lambda: ro.WriteSchema(WriteSchemaRequest(schema=SCHEMA)), grpc.StatusCode.UNAVAILABLE,
                 "ERROR_REASON_SERVICE_READ_ONLY", "a schema write on the read-only port")

    # The Experimental service's older names, as the client exposes them.
    loaded = a.BulkImportRelationships(iter([BulkImportRelationshipsRequest(relationships=[
        rel("document", f"doc{i}", "viewer", "user", "carl") for i in range(50)
    ])]))
    expect(loaded.num_loaded == 50, f"bulk import loaded {loaded.num_loaded}")
    exported = [r for page in a.BulkExportRelationships(BulkExportRelationshipsRequest(consistency=FULL))
                for r in page.relationships]
    expect(len(exported) == 51, f"bulk export returned {len(exported)}")
    checked = a.BulkCheckPermission(BulkCheckPermissionRequest(consistency=FULL, items=[
        BulkCheckPermissionRequestItem(
            resource=ObjectReference(object_type="document", object_id=doc),
            permission="view",
            subject=SubjectReference(object=ObjectReference(object_type="user", object_id=user)))
        for doc, user in [("doc7", "carl"), ("plan", "carl"), ("plan", "ann")]
    ]))
    got = [p.item.permissionship for p in checked.pairs]
    expect(got == [HAS, NO, HAS], f"bulk check: {got}")
    print("ok: the Experimental service's bulk import, export and check")


if __name__ == "__main__":
    main()
