"""The official Python client (PyPI `authzed`) against a Pemba server over TLS with several keys.

Usage: tls_keys.py PORT CA_PEM GOOD_KEYS BAD_KEY
  PORT       the server's port on 127.0.0.1
  CA_PEM     the certificate the client trusts (the server's self-signed certificate)
  GOOD_KEYS  comma-separated preshared keys the server accepts
  BAD_KEY    a key it must refuse
Exits non-zero with a message on the first failed expectation.
"""

import sys

import grpc
from authzed.api.v1 import (
    CheckPermissionRequest,
    CheckPermissionResponse,
    Client,
    Consistency,
    InsecureClient,
    ObjectReference,
    ReadSchemaRequest,
    Relationship,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
    WriteSchemaRequest,
)

SCHEMA = """
definition user {}

definition document {
    relation viewer: user
    permission view = viewer
}
"""


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def tls_client(target, ca, key):
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca),
        grpc.access_token_call_credentials(key),
    )
    return Client(target, creds)


def main():
    port, ca_path, good, bad = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
    target = f"127.0.0.1:{port}"
    with open(ca_path, "rb") as f:
        ca = f.read()

    first = tls_client(target, ca, good[0])
    first.WriteSchema(WriteSchemaRequest(schema=SCHEMA), timeout=10)
    first.WriteRelationships(
        WriteRelationshipsRequest(
            updates=[
                RelationshipUpdate(
                    operation=RelationshipUpdate.Operation.OPERATION_TOUCH,
                    relationship=Relationship(
                        resource=ObjectReference(object_type="document", object_id="plan"),
                        relation="viewer",
                        subject=SubjectReference(object=ObjectReference(object_type="user", object_id="ann")),
                    ),
                )
            ]
        ),
        timeout=10,
    )
    print("ok: schema and relationship written over TLS")

    for key in good:
        client = tls_client(target, ca, key)
        schema = client.ReadSchema(ReadSchemaRequest(), timeout=10)
        if "definition document" not in schema.schema_text:
            fail(f"key {key!r}: unexpected schema {schema.schema_text!r}")
        resp = client.CheckPermission(
            CheckPermissionRequest(
                consistency=Consistency(fully_consistent=True),
                resource=ObjectReference(object_type="document", object_id="plan"),
                permission="view",
                subject=SubjectReference(object=ObjectReference(object_type="user", object_id="ann")),
            ),
            timeout=10,
        )
        if resp.permissionship != CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION:
            fail(f"key {key!r}: check answered {resp.permissionship}")
        print(f"ok: key {key!r} accepted")

    try:
        tls_client(target, ca, bad).ReadSchema(ReadSchemaRequest(), timeout=10)
        fail(f"key {bad!r} was accepted")
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.PERMISSION_DENIED:
            fail(f"key {bad!r}: expected PERMISSION_DENIED, got {err.code()}: {err.details()}")
        if err.details() != "invalid preshared key: invalid token":
            fail(f"key {bad!r}: unexpected message {err.details()!r}")
        print(f"ok: key {bad!r} refused: {err.details()}")

    try:
        InsecureClient(target, good[0]).ReadSchema(ReadSchemaRequest(), timeout=5)
        fail("a plain-text client was served by the TLS listener")
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            fail(f"plain text: expected UNAVAILABLE, got {err.code()}: {err.details()}")
        print(f"ok: plain text refused: {err.code().name}")


if __name__ == "__main__":
    main()
