"""The worked examples' assertions, asked of the reference SpiceDB.

Usage: python tests/oracle/examples.py schema/*.yaml

For each validation file: its schema and relationships are written to SpiceDB (in-process,
see `spicedb_oracle.py`), and every `assertTrue` / `assertFalse` / `assertCaveated` entry is
checked there; the answers must be what the file says (which `pemba validate` also checks
against Pemba). Exits 1 listing every disagreement.
"""
import datetime
import json
import re
import sys

import yaml
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from authzed.api.v1 import (
    CheckPermissionRequest,
    CheckPermissionResponse,
    Consistency,
    ContextualizedCaveat,
    ObjectReference,
    Relationship,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
)
from spicedb_oracle import Oracle, RpcFailure

REL = re.compile(
    r"^(?P<rt>[^:]+):(?P<rid>[^#]+)#(?P<rel>[^@]+)@(?P<st>[^:]+):(?P<sid>[^#\[]+)"
    r"(?:#(?P<srel>[^\[]+))?(?P<rest>.*)$"
)


def parse(text):
    m = REL.match(text.strip())
    if not m:
        raise ValueError(f"not a relationship: {text}")
    r = Relationship(
        resource=ObjectReference(object_type=m["rt"], object_id=m["rid"]),
        relation=m["rel"],
        subject=SubjectReference(
            object=ObjectReference(object_type=m["st"], object_id=m["sid"]),
            optional_relation=m["srel"] or "",
        ),
    )
    for part in re.findall(r"\[([^\[\]]*(?:\{.*?\})?)\]", m["rest"]):
        name, _, value = part.partition(":")
        if name == "expiration":
            ts = Timestamp()
            ts.FromDatetime(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")))
            r.optional_expires_at.CopyFrom(ts)
        else:
            st = Struct()
            if value:
                st.update(json.loads(value))
            r.optional_caveat.CopyFrom(ContextualizedCaveat(caveat_name=name, context=st))
    return r


WANT = {
    "assertTrue": CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION,
    "assertFalse": CheckPermissionResponse.PERMISSIONSHIP_NO_PERMISSION,
    "assertCaveated": CheckPermissionResponse.PERMISSIONSHIP_CONDITIONAL_PERMISSION,
}


def run(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    problems = []
    oracle = Oracle()
    try:
        oracle.write_schema(doc["schema"])
        lines = [l.strip() for l in (doc.get("relationships") or "").splitlines()]
        rels = [parse(l) for l in lines if l and not l.startswith("//")]
        for i in range(0, len(rels), 500):
            oracle.write_relationships(WriteRelationshipsRequest(updates=[
                RelationshipUpdate(operation=RelationshipUpdate.OPERATION_TOUCH, relationship=r)
                for r in rels[i:i + 500]
            ]))
        for kind, want in WANT.items():
            for entry in (doc.get("assertions") or {}).get(kind) or []:
                rel_text, _, ctx = entry.partition(" with ")
                r = parse(rel_text)
                req = CheckPermissionRequest(
                    consistency=Consistency(fully_consistent=True),
                    resource=r.resource, permission=r.relation, subject=r.subject)
                if ctx:
                    req.context.update(json.loads(ctx))
                try:
                    got = oracle.check(req).permissionship
                except RpcFailure as e:
                    problems.append(f"{path}: {kind} {entry}: SpiceDB failed: {e}")
                    continue
                if got != want:
                    name = CheckPermissionResponse.Permissionship.Name(got)
                    problems.append(f"{path}: {kind} {entry}: SpiceDB answers {name}")
    finally:
        oracle.close()
    return problems


def main():
    problems = []
    for path in sys.argv[1:]:
        problems += run(path)
        print(f"{path}: checked against SpiceDB")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
