"""Differential test: random schemas and relationships, every query answered by Pemba and by the
reference SpiceDB (the embedded library, see spicedb_oracle.py), answers compared.

Usage:
  differential.py PEMBA_TARGET SEED N_CASES [options]   compare Pemba at host:port with SpiceDB
  differential.py --oracle-only SEED N_CASES [options]  only run the generator against SpiceDB

Options:
  --case K          run only case K (with the same generated content as in a full run)
  --max-show M      print at most M mismatches in full (default 40; all are counted)
  --report PATH     also write every mismatch, in full, to PATH
  --max-checks C    cap of CheckPermission triples per case (default 700, sampled deterministically)
  --print-cases     print every generated schema and relationship set
  --caveats-only    make every case caveated (by default about 30% are)
  --oracle-timeout S  give up on a SpiceDB answer after S seconds (default 10; also 3 GiB RSS)
  --case-budget S   skip the rest of a case once SpiceDB has spent S seconds on it (default 60;
                    deep recursion through data cycles can make every query slow)
  -v / -vv          progress on stderr: each case / each query

Every case uses definition names under a unique prefix (`c0017/user`, `c0017/group`, ...), so one
server holds all cases: before a case, the relationships of the previous case's definitions are
deleted and the new schema replaces the old one. Queries use `fully_consistent` on both sides.

Known, deliberate differences from SpiceDB are not mismatches: they are printed as `tolerated`
and counted per class in the summary line
(`differential: N cases, M queries, K mismatches, T tolerated (class=count, ...)`):
  cycle-depth           in a case with a cycle (generator flags data-cycles / permission-cycle,
                        a self-referencing permission, or a cycle in the relationship graph),
                        either side answered FAILED_PRECONDITION (max depth): SpiceDB follows a
                        cycle until its depth budget runs out, racing other branches, so its
                        answer there is nondeterministic, while Pemba answers definitely when
                        some path decides it and fails with max depth otherwise (CheckBulk: per
                        item; other calls: the whole call)
  bulk-error-isolation  a CheckBulk item SpiceDB failed with max depth, Pemba answered, and
                        another item of the same dispatch batch (resource type, permission,
                        subject) failed with max depth on either side: SpiceDB fails the whole
                        batch, Pemba only the item that failed
  spicedb-lookup-inconsistent
                        LookupSubjects in a schema with `.all()` arrows where SpiceDB's
                        LookupSubjects disagrees with its own Check (same context), and Pemba's
                        answer is exactly what that Check says per subject (HAS, or CONDITIONAL
                        with the same missing context). Minimal repro (CONDITIONAL):
                            caveat c1(d duration) { d > duration("1h") }
                            caveat c2(name string, x int) { name != "b" || x == 2 }
                            definition user {}
                            definition group { relation member: user with c2 | group#member with c1
                                permission view = member - member.all(view) }
                            group:g1#member@group:g2#member[c1], group:g1#member@user:u2[c2]
                          LookupSubjects group:g1#view subjects group#member: SpiceDB g2
                          CONDITIONAL missing [d, name, x] (apparently the caveat of u2, a
                          member whose type has no `view`, joins the expression), its Check of
                          group:g1#view@group:g2#member CONDITIONAL missing [d], as Pemba's
                          both; or
                        LookupResources in a caveated case where SpiceDB's answer disagrees with
                        its own Check (same context) and Pemba's answer is exactly what that
                        Check says (HAS, or CONDITIONAL with the same missing context) per
                        resource (SpiceDB drops CONDITIONAL results under an exclusion)
  spicedb-direct-beside-subject-set
                        Check / CheckBulk item in a case with a caveated or expired relationship
                        whose subject has type T, on a relation allowing T in two ways or more
                        (the object type T and a subject set `T#rel`, or two subject sets `T#a`
                        and `T#b`), one of them `with` a caveat or expiration. SpiceDB's Check (a SpiceDB bug; Pemba does not imitate
                        it) ignores such a caveated relationship, so is less permissive than
                        Pemba (NO or CONDITIONAL vs CONDITIONAL or HAS), and sees such an expired
                        one, so is more permissive (seen for a plain subject and for a subject
                        set subject). Minimal repros:
                            caveat cx(x int) { x > 1 }
                            definition user { relation friend: user }
                            definition group { relation member: user with cx | user#friend }
                            group:g1#member@user:u1[cx]
                          Check group:g1#member@user:u1 with {"x": 5}: SpiceDB NO, Pemba HAS
                          (SpiceDB says HAS for `user with cx`, `user with cx | user` and
                          `user with cx | group#member`: the subject set must be of type user);
                            use expiration
                            definition group { relation owner: group
                                relation member: group with expiration | group#owner }
                            group:g2#member@group:g1[expiration:2020-06-15T08:30:00Z]
                          Check group:g2#member@group:g1: SpiceDB HAS, Pemba NO (SpiceDB says
                          NO for `group with expiration` alone); the same with
                          `relation member: group#owner with expiration | group#edit` and
                          group:g2#member@group:g1#owner[expiration:2020-...], checked for
                          group:g1#owner
                        Also a Check where Pemba fails with a caveat parameter type error
                        (INVALID_ARGUMENT) and SpiceDB answers NO or CONDITIONAL in such a case
                        with a caveated relationship: SpiceDB never evaluates the caveat it
                        ignores. Minimal repro:
                            caveat c2(d duration, name string) { name != "b" && d > duration("1h") }
                            definition user {}
                            definition org { relation member: org with c2 | org#manager
                                relation manager: user }
                            org:o2#member@org:o1[c2]
                          Check org:o2#member@org:o1 with {"d": "30m", "name": 3}: SpiceDB NO,
                          Pemba INVALID_ARGUMENT (SpiceDB says INVALID_ARGUMENT for
                          `org with c2` alone)
  spicedb-bulk-inconsistent
                        CheckBulk item in a schema with `.all()` arrows that SpiceDB's Check of
                        the same item alone (same context) answers as Pemba does, while its
                        CheckBulk answers otherwise: batched with another resource whose
                        tupleset relationship to the same object has another caveat, SpiceDB's
                        bulk checker answers NO (a SpiceDB bug; Pemba does not imitate it).
                        Minimal repro:
                            caveat kb(x int, y int) { x > 3 && y > 1 }
                            definition user {}
                            definition org { relation member: org#viewer with kb
                                relation viewer: user
                                permission access = member.all(viewer) }
                            org:o1#member@org:o3#viewer[kb], org:o3#viewer@user:u3,
                            org:o2#member@org:o3#viewer[kb:{"x": 1}]
                          CheckBulk [org:o1#access@user:u3, org:o2#access@user:u3] with
                          {"x": 5, "y": 2}: SpiceDB NO, NO; its Check of the first item HAS, as
                          Pemba's (no context: NO vs CONDITIONAL [x, y]); the same with
                          `member->viewer` agrees
  spicedb-schema-cycle-code
                        WriteSchema of a schema with a permission that is its own alias
                        (`permission zzprobe = zzprobe`, a schema probe): both refuse it with
                        the same message ("there exists a cycle in permissions"), SpiceDB
                        without a gRPC status (UNKNOWN), Pemba with FAILED_PRECONDITION, the
                        code of its other schema type errors (as SpiceDB's)
  spicedb-racy          a Check (or CheckBulk item) SpiceDB answered differently when asked the
                        same request again (up to 6 times), one of its answers being Pemba's: SpiceDB races the branches
                        of a union and, with a context that fails on one caveat while another
                        branch decides, answers the error or the result depending on which
                        branch ends first (e.g. d1#member@g1#member, d1#member@g2#member,
                        g1#member@u3[cav1:{ip:10.1.2.3}], g2#member@u3[cav1], context
                        {"ip":"999.1.1.1"}: Check d1#member@u3 is INVALID_ARGUMENT or HAS)
Caveated cases (about 30%, all with --caveats-only) add `caveat` definitions, `use expiration`,
allowed types `with cav` / `with expiration` / `with cav and expiration`, relationships with a
caveat (no, partial or full context) and/or an expiration (2020: expired, invisible; 2300), and
Check / CheckBulk / LookupResources / LookupSubjects with partial, full and wrong-typed request
contexts. Check answers compare the permissionship and, for CONDITIONAL, the sorted set of
`missing_required_context`. Lookup answers are merged per id before comparing (SpiceDB may
stream one id several times: HAS wins, missing context is the union).

A difference that is none of these (in particular HAS vs NO, or different result sets where
both sides succeeded) is a mismatch. Streamed results are compared as sets (SpiceDB may repeat
a resource or subject).

Exit status: 0 when every answer agreed (or, with --oracle-only, when the generator produced
valid cases), 1 on any mismatch, 2 on usage errors.
"""

import datetime
import json
import os
import random
import re
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from authzed.api.v1 import (  # noqa: E402
    CheckBulkPermissionsRequest,
    CheckBulkPermissionsRequestItem,
    CheckPermissionRequest,
    Consistency,
    DeleteRelationshipsRequest,
    ExpandPermissionTreeRequest,
    LookupResourcesRequest,
    LookupSubjectsRequest,
    ObjectReference,
    ReadRelationshipsRequest,
    Relationship,
    RelationshipFilter,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
)

from google.protobuf.json_format import MessageToDict  # noqa: E402
from google.protobuf.struct_pb2 import Struct  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

from authzed.api.v1 import ContextualizedCaveat  # noqa: E402
from spicedb_oracle import CODE_NAMES, GrpcTarget, OracleProcess, RpcFailure  # noqa: E402

FULL = Consistency(fully_consistent=True)

# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------

DEF_POOL = ["group", "folder", "document", "org"]
ID_PREFIX = {"user": "u", "group": "g", "folder": "f", "document": "d", "org": "o"}
REL_NAMES = ["member", "viewer", "editor", "owner", "parent", "banned", "reader", "manager"]
PERM_NAMES = ["view", "edit", "admin", "read", "manage", "access"]


class Rel:
    def __init__(self, name):
        self.name = name
        self.wildcard = None  # short def name whose `:*` this relation allows, if any
        self.types = []  # (short def name, subject relation or None, is wildcard)
        # Allowed-type variants per entry of `types`: [(caveat full name or None, with expiration)];
        # an entry absent here is the plain type only.
        self.variants = {}


class Def:
    def __init__(self, short, prefix):
        self.short = short
        self.name = f"{prefix}/{short}"
        self.rels = {}  # name -> Rel, in order
        self.perms = []  # (name, expression text)
        self.perm_names = []

    def names(self):
        return list(self.rels) + self.perm_names


class Case:
    """A generated schema and relationship set."""

    def __init__(self, index, attempt, prefix, defs, schema, rels, ids, flags, extra=None, caveats=None):
        self.extra = extra or {}  # rel tuple -> (caveat name or None, context dict or None, expires datetime or None)
        self.caveats = caveats or []  # [(full name, [param names], expression)]
        self.caveats_only = False
        self.index = index
        self.attempt = attempt
        self.prefix = prefix
        self.defs = defs  # short -> Def
        self.schema = schema
        self.rels = rels  # list of (res_short, res_id, relation, subj_short, subj_id, subj_rel or None)
        self.ids = ids  # short -> list of ids
        self.flags = flags

    def full(self, short):
        return f"{self.prefix}/{short}"

    def rel_text(self, r):
        rs, rid, rel, ss, sid, srel = r
        s = f"{self.full(rs)}:{rid}#{rel}@{self.full(ss)}:{sid}"
        s += f"#{srel}" if srel else ""
        cav, ctx, exp = self.extra.get(r, (None, None, None))
        if cav:
            s += f"[{cav}" + (f":{json.dumps(ctx, sort_keys=True)}" if ctx else "") + "]"
        if exp:
            s += f"[expiration:{exp.strftime('%Y-%m-%dT%H:%M:%SZ')}]"
        return s

    def relationships_text(self):
        return "\n".join(self.rel_text(r) for r in self.rels)


def _weighted_sample(rng, items, weights, k):
    items, weights = list(items), list(weights)
    out = []
    while items and len(out) < k:
        i = rng.choices(range(len(items)), weights=weights)[0]
        out.append(items.pop(i))
        weights.pop(i)
    return out


# Caveats: one pool of parameter names with fixed types, shared by every caveat of a case, so
# one query context applies consistently to all of them.
CAVEAT_PARAMS = {"x": "int", "y": "int", "name": "string", "flag": "bool", "tags": "list<string>",
                 "ts": "timestamp", "now": "timestamp", "d": "duration", "ip": "ipaddress"}
CAVEAT_ATOMS = [
    ("x > 3", ("x",)), ("x == 2", ("x",)), ("x <= y", ("x", "y")), ("y < 3", ("y",)),
    ('name == "a"', ("name",)), ('name != "b"', ("name",)),
    ("flag", ("flag",)), ("!flag", ("flag",)),
    ('"a" in tags', ("tags",)),
    ("ts < now", ("ts", "now")), ('ts > timestamp("2021-01-01T00:00:00Z")', ("ts",)),
    ('d > duration("1h")', ("d",)),
    ('ip.in_cidr("10.0.0.0/8")', ("ip",)),
]
CAVEAT_VALUES = {
    "int": [1, 2, 3, 4, 5],
    "string": ["a", "b", "c"],
    "bool": [True, False],
    "list<string>": [[], ["a"], ["b"], ["a", "b"], ["c", "b"]],
    "timestamp": ["2020-01-01T00:00:00Z", "2022-06-01T12:00:00Z", "2300-01-01T00:00:00Z"],
    "duration": ["30m", "1h", "2h30m"],
    "ipaddress": ["10.1.2.3", "192.168.0.1", "10.255.0.1"],
}
# Values of the wrong type for a parameter (evaluation then fails with INVALID_ARGUMENT).
CAVEAT_WRONG = {
    "int": ["abc", 2.5], "string": [3], "bool": ["yes"], "list<string>": [3], "timestamp": ["notatime"],
    "duration": ["forever"], "ipaddress": ["999.1.1.1"],
}
EXPIRED_AT = [datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
              datetime.datetime(2020, 6, 15, 8, 30, tzinfo=datetime.timezone.utc)]
EXPIRES_LATER = [datetime.datetime(2300, 1, 1, tzinfo=datetime.timezone.utc),
                 datetime.datetime(2300, 7, 4, 12, 0, tzinfo=datetime.timezone.utc)]


def caveat_value(rng, param):
    return rng.choice(CAVEAT_VALUES[CAVEAT_PARAMS[param]])


def caveat_context(rng, params, mode):
    """A context over `params`: mode "none" (None), "partial" (a proper subset, may be empty) or
    "full"."""
    params = sorted(params)
    if mode == "none" or not params:
        return None
    if mode == "partial":
        chosen = rng.sample(params, rng.randint(0, max(0, len(params) - 1)))
    else:
        chosen = params
    return {p: caveat_value(rng, p) for p in sorted(chosen)}


def generate_caveats(rng, prefix):
    """[(full name, [param names], expression text)]; 1-3 caveats."""
    out = []
    for k in range(rng.randint(1, 3)):
        n = rng.choices([1, 2, 3], weights=[4, 4, 2])[0]
        atoms = rng.sample(CAVEAT_ATOMS, n)
        text = atoms[0][0]
        for i, (a, _) in enumerate(atoms[1:]):
            op = rng.choice(["&&", "||"])
            if i > 0 and rng.random() < 0.5:
                text = f"({text})"
            text = f"{text} {op} {a}"
        params = sorted({p for _, ps in atoms for p in ps})
        # Rarely a parameter the expression does not use (SpiceDB refuses it: a WriteSchema probe).
        if rng.random() < 0.03:
            params = sorted(set(params) | {rng.choice(list(CAVEAT_PARAMS))})
        out.append((f"{prefix}/cav{k + 1}", params, text))
    return out


def generate_case(seed, index, attempt=0, caveats_only=False):
    rng = random.Random(f"pemba-differential/{seed}/{index}/{attempt}")
    # Caveat/expiration choices use their own stream, so the rest of a case stays as it was.
    crng = random.Random(f"pemba-differential-caveats/{seed}/{index}/{attempt}")
    caveated = caveats_only or crng.random() < 0.3
    prefix = f"c{index:04d}" if attempt == 0 else f"c{index:04d}a{attempt}"
    flags = set()
    allow_cycles = rng.random() < 0.12
    perm_self_cycle = rng.random() < 0.03
    if allow_cycles:
        flags.add("data-cycles")
    if perm_self_cycle:
        flags.add("permission-cycle")

    n_defs = rng.choices([2, 3, 4], weights=[2, 4, 3])[0]
    shorts = ["user"] + rng.sample(DEF_POOL, n_defs - 1)
    defs = {s: Def(s, prefix) for s in shorts}
    others = shorts[1:]

    # Phase 1: relation and permission names, wildcard flags.
    for s in others:
        d = defs[s]
        names = rng.sample(REL_NAMES, rng.randint(1, 3))
        # Encourage the classic recursive shapes.
        if s in ("group", "org") and "member" not in names and rng.random() < 0.7:
            names[0] = "member"
        if s in ("folder", "document") and "parent" not in names and rng.random() < 0.6:
            names[-1] = "parent" if len(names) > 1 or rng.random() < 0.5 else names[-1]
        for n in dict.fromkeys(names):
            r = Rel(n)
            if n != "parent" and rng.random() < 0.2:
                r.wildcard = "user" if rng.random() < 0.9 else rng.choice(others)
            d.rels[n] = r
        d.perm_names = rng.sample([p for p in PERM_NAMES if p not in d.rels], rng.randint(0, 3))
        if not d.perm_names and rng.random() < 0.7:
            d.perm_names = [rng.choice(PERM_NAMES)]

    # Phase 2: allowed types.
    for s in others:
        d = defs[s]
        for r in d.rels.values():
            cands, weights = [], []
            cands.append(("user", None, False))
            weights.append(0.5 if r.name == "parent" else 5)
            for x in others:
                cands.append((x, None, False))
                w = 1.2
                if r.name == "parent" and (x == s or (s == "document" and x == "folder")):
                    w = 8
                weights.append(w)
                for xr in defs[x].rels.values():
                    if xr.wildcard:
                        continue  # SpiceDB: wildcard relations cannot be transitively included
                    cands.append((x, xr.name, False))
                    weights.append(3 if xr.name == "member" else 0.8)
                for p in defs[x].perm_names:
                    cands.append((x, p, False))
                    weights.append(0.3)
            k = rng.choices([1, 2, 3], weights=[5, 4, 2])[0]
            r.types = _weighted_sample(rng, cands, weights, k)
            if r.wildcard:
                r.types.append((r.wildcard, None, True))
                if rng.random() < 0.3:
                    rng.shuffle(r.types)

    # Phase 2b: caveats and expiration on allowed types.
    caveats = []
    use_expiration = False
    if caveated:
        flags.add("caveats")
        caveats = generate_caveats(crng, prefix)
        use_expiration = crng.random() < 0.6
        if use_expiration:
            flags.add("expiration")
        cnames = [c[0] for c in caveats]
        for s in others:
            for r in defs[s].rels.values():
                for ty in r.types:
                    if crng.random() > 0.65:
                        continue
                    c1 = crng.choice(cnames)
                    opts = [[(c1, False)], [(None, False), (c1, False)]]
                    if len(cnames) > 1:
                        c2 = crng.choice([c for c in cnames if c != c1])
                        opts.append([(c1, False), (c2, False)])
                    if use_expiration:
                        opts += [[(None, True)], [(c1, True)], [(None, False), (None, True)],
                                 [(None, True), (c1, False)], [(None, False), (c1, True)]]
                    r.variants[ty] = crng.choice(opts)

    # Phase 3: permission expressions.
    for s in others:
        d = defs[s]
        arrow_rels = [r for r in d.rels.values() if not r.wildcard]
        # With the permission-cycle flag, one permission refers to itself exactly once, at the
        # top of a union (several self-references make SpiceDB's check explode exponentially).
        cyclic = rng.choice(d.perm_names) if perm_self_cycle and d.perm_names else None
        for i, pname in enumerate(d.perm_names):
            earlier = d.perm_names[:i]

            def leaf():
                roll = rng.random()
                if roll < 0.04:
                    return "nil"
                if roll < 0.35 and arrow_rels:
                    r = rng.choice(arrow_rels)
                    targets = sorted({n for (t, _, w) in r.types if not w for n in defs[t].names()})
                    if not targets or rng.random() < 0.03:
                        target = "missing"
                    else:
                        target = rng.choice(targets)
                    form = rng.random()
                    if form < 0.2:
                        return f"{r.name}.all({target})"
                    if form < 0.25:
                        return f"{r.name}.any({target})"
                    return f"{r.name}->{target}"
                if earlier and roll < 0.55:
                    return rng.choice(earlier)
                return rng.choice(list(d.rels))

            def expr(depth):
                if depth >= 3 or rng.random() < (0.35 if depth == 0 else 0.55):
                    e = leaf()
                    return (e, False)
                op = rng.choices(["+", "&", "-"], weights=[5, 2, 2])[0]
                n = 3 if (op != "-" and rng.random() < 0.25) else 2
                parts = []
                for _ in range(n):
                    sub, compound = expr(depth + 1)
                    if compound and rng.random() < 0.8:
                        sub = f"({sub})"
                    elif not compound and rng.random() < 0.05:
                        sub = f"({sub})"
                    parts.append(sub)
                return (f" {op} ".join(parts), True)

            text, compound = expr(0)
            if pname == cyclic:
                text = f"{pname} + ({text})" if compound else f"{text} + {pname}"
            d.perms.append((pname, text))

    # Occasionally a line that SpiceDB may refuse, to compare WriteSchema errors (refused
    # schemas are regenerated, so this costs no query coverage).
    probe = {}
    if rng.random() < 0.06:
        flags.add("schema-probe")
        s = rng.choice(others)
        d = defs[s]
        wild = [(x, r.name) for x in others for r in defs[x].rels.values() if r.wildcard]
        choices = [
            "permission zzprobe = nosuchrel",
            f"relation zzprobe: {prefix}/user | {prefix}/user",
            f"relation zzprobe: {prefix}/nosuchdef",
            f"relation zzprobe: {prefix}/user#nosuchrel",
            "permission zzprobe = zzprobe",
            f"permission zzprobe = {next(iter(d.rels))}->nosuchrel",
        ]
        if d.perm_names:
            choices.append(f"permission zzprobe = {d.perm_names[0]}->{next(iter(d.rels))}")
            choices.append(f"relation {d.perm_names[0]}: {prefix}/user")
        if caveated:
            choices.append(f"relation zzprobe: {prefix}/user with {prefix}/nosuchcav")
            choices.append(f"relation zzprobe: {prefix}/user with {caveats[0][0]} | {prefix}/user with {caveats[0][0]}")
            if not use_expiration:
                choices.append(f"relation zzprobe: {prefix}/user with expiration")
        if wild:
            x, wr = rng.choice(wild)
            choices.append(f"relation zzprobe: {prefix}/{x}#{wr}")
            if x == s:
                choices.append(f"permission zzprobe = {wr}->{wr}")
                choices.append(f"permission zzprobe = {wr}.all({wr})")
        probe[s] = rng.choice(choices)

    # Schema text.
    blocks = []
    if caveated and crng.random() < 0.05:
        # A caveat SpiceDB should refuse (type error / unknown parameter), to compare WriteSchema.
        flags.add("schema-probe")
        name, params, _ = caveats[0]
        bad = crng.choice([('x == "a"', ["x"]), ("nosuchparam > 1", ["x"]), ("x + 1", ["x"]), ("flag", ["flag", "flag"])])
        caveats[0] = (name, bad[1], bad[0])
    if use_expiration:
        blocks.append("use expiration")
    for name, params, text in caveats:
        plist = ", ".join(f"{p} {CAVEAT_PARAMS[p]}" for p in params)
        blocks.append(f"caveat {name}({plist}) {{\n    {text}\n}}")
    for s in shorts:
        d = defs[s]
        lines = []
        if s in probe:
            lines.append("    " + probe[s])
        for r in d.rels.values():
            types = []
            for t, sr, w in r.types:
                tn = f"{prefix}/{t}"
                base = f"{tn}:*" if w else (f"{tn}#{sr}" if sr else tn)
                for cav, exp in r.variants.get((t, sr, w), [(None, False)]):
                    traits = ([f"{cav}"] if cav else []) + (["expiration"] if exp else [])
                    types.append(base + (" with " + " and ".join(traits) if traits else ""))
            lines.append(f"    relation {r.name}: {' | '.join(types)}")
        for pname, text in d.perms:
            lines.append(f"    permission {pname} = {text}")
        if lines:
            blocks.append(f"definition {d.name} {{\n" + "\n".join(lines) + "\n}")
        else:
            blocks.append(f"definition {d.name} {{}}")
    schema = "\n\n".join(blocks) + "\n"

    # Objects.
    ids = {}
    for s in shorts:
        n = rng.randint(2, 4) if s != "user" else rng.randint(2, 5)
        ids[s] = [f"{ID_PREFIX[s]}{i}" for i in range(1, n + 1)]
    objects = [(s, i) for s in others for i in ids[s]]
    rng.shuffle(objects)
    rank = {o: k for k, o in enumerate(objects)}

    # Relationships.
    with_rels = [s for s in others if defs[s].rels]
    target = rng.randint(5, 40)
    rels, seen = [], set()
    extra = {}
    back_edges = rng.choice([1, 1, 2]) if allow_cycles else 0
    tries = 0
    while len(rels) < target and tries < target * 20 and with_rels:
        tries += 1
        s = rng.choice(with_rels)
        rid = rng.choice(ids[s])
        r = rng.choice(list(defs[s].rels.values()))
        t, sr, w = rng.choice(r.types)
        if w:
            sid = "*"
        else:
            sid = rng.choice(ids[t])
            if t != "user" and rank[(t, sid)] >= rank[(s, rid)]:
                # Against the rank order: this edge may close a cycle. Only a few per case, and
                # only in cycle cases (dense cycles make SpiceDB itself explode).
                if back_edges <= 0:
                    continue
                back_edges -= 1
        key = (s, rid, r.name, t, sid, sr)
        if key in seen:
            continue
        seen.add(key)
        rels.append(key)
        variants = r.variants.get((t, sr, w))
        if variants:
            cav, exp = crng.choice(variants)
            ctx = None
            if cav:
                params = next(c[1] for c in caveats if c[0] == cav)
                ctx = caveat_context(crng, params, crng.choice(["none", "none", "partial", "full"]))
            expires = None
            if exp:
                expires = crng.choice(EXPIRED_AT if crng.random() < 0.35 else EXPIRES_LATER)
            if cav or expires:
                extra[key] = (cav, ctx, expires)
    case = Case(index, attempt, prefix, defs, schema, rels, ids, flags, extra, caveats)
    case.seed = seed
    case.caveats_only = caveats_only
    return case


def _self_referencing_permissions(schema):
    """Permissions whose expression names the permission itself (not behind an arrow)."""
    out = []
    for m in re.finditer(r"permission\s+(\w+)\s*=\s*([^\n]*)", schema):
        name, text = m.group(1), m.group(2)
        for t in re.finditer(r"(->|\.all\(|\.any\()?\s*\b(\w+)\b", text):
            if t.group(2) == name and not t.group(1):
                out.append(name)
                break
    return out


def _graph_has_cycle(rels):
    """Whether the relationships, as edges resource object -> subject object, contain a cycle
    (relations ignored: conservative)."""
    edges = {}
    for rs, rid, _rel, ss, sid, _srel in rels:
        if sid == "*":
            continue
        edges.setdefault((rs, rid), set()).add((ss, sid))
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {}
    for start in list(edges):
        if colour.get(start, WHITE) != WHITE:
            continue
        colour[start] = GREY
        stack = [(start, iter(edges.get(start, ())))]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
                continue
            c = colour.get(nxt, WHITE)
            if c == GREY:
                return True
            if c == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(edges.get(nxt, ()))))
    return False


def case_cycle_reasons(case):
    """Why a case may make SpiceDB (and Pemba) recurse until the depth limit: [] when acyclic."""
    reasons = sorted(f for f in case.flags if f in ("data-cycles", "permission-cycle"))
    if _self_referencing_permissions(case.schema):
        reasons.append("self-referencing permission")
    if _graph_has_cycle(case.rels):
        reasons.append("relationship graph cycle")
    return reasons


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


def obj(case, short, oid):
    return ObjectReference(object_type=case.full(short), object_id=oid)


def subj(case, short, oid, srel=None):
    return SubjectReference(object=obj(case, short, oid), optional_relation=srel or "")


def subj_text(case, s):
    short, oid, srel = s
    return f"{case.full(short)}:{oid}" + (f"#{srel}" if srel else "")


def plan_queries(case, max_checks):
    """Every query of a case, as (kind, description, request)."""
    rng = random.Random(f"plan/{case.prefix}")
    defs = case.defs
    others = [s for s in defs if s != "user"]
    # Objects that occur in the data, plus one unknown id per type.
    seen_objs = {s: set() for s in defs}
    subject_sets = set()
    plain_subjects = set()
    for rs, rid, rel, ss, sid, srel in case.rels:
        seen_objs[rs].add(rid)
        if sid != "*":
            seen_objs[ss].add(sid)
            if srel:
                subject_sets.add((ss, sid, srel))
            elif ss != "user":
                plain_subjects.add((ss, sid, None))
    resources = []
    for s in others:
        for oid in sorted(seen_objs[s]):
            resources.append((s, oid))
    unknown_def = rng.choice(others)
    resources.append((unknown_def, "zz_unknown"))

    subjects = [("user", u, None) for u in case.ids["user"]]  # includes users absent from the data
    subjects += sorted(plain_subjects) + sorted(subject_sets)

    queries = []
    triples = []
    for rs, rid in resources:
        for perm in defs[rs].names():
            for sb in subjects:
                triples.append((rs, rid, perm, sb))
    if len(triples) > max_checks:
        triples = rng.sample(triples, max_checks)
        triples.sort(key=repr)
    for rs, rid, perm, sb in triples:
        req = CheckPermissionRequest(consistency=FULL, resource=obj(case, rs, rid), permission=perm, subject=subj(case, *sb))
        queries.append(("check", f"CheckPermission {case.full(rs)}:{rid}#{perm} @ {subj_text(case, sb)}", req))

    # Error probes: unknown permission, wildcard subject, unknown resource type.
    rs, rid = resources[0]
    queries.append(("check", f"CheckPermission {case.full(rs)}:{rid}#nosuch @ {case.full('user')}:u1",
                    CheckPermissionRequest(consistency=FULL, resource=obj(case, rs, rid), permission="nosuch",
                                           subject=subj(case, "user", "u1"))))
    if defs[rs].names():
        p = defs[rs].names()[0]
        queries.append(("check", f"CheckPermission {case.full(rs)}:{rid}#{p} @ {case.full('user')}:*",
                        CheckPermissionRequest(consistency=FULL, resource=obj(case, rs, rid), permission=p,
                                               subject=subj(case, "user", "*"))))
    queries.append(("lookup_resources", f"LookupResources {case.prefix}/nosuch#view @ {case.full('user')}:u1",
                    LookupResourcesRequest(consistency=FULL, resource_object_type=f"{case.prefix}/nosuch",
                                           permission="view", subject=subj(case, "user", "u1"))))

    # Bulk checks of the same triples, in chunks.
    for start in range(0, len(triples), 100):
        chunk = triples[start:start + 100]
        items = [CheckBulkPermissionsRequestItem(resource=obj(case, rs, rid), permission=perm, subject=subj(case, *sb))
                 for rs, rid, perm, sb in chunk]
        queries.append(("check_bulk", f"CheckBulkPermissions items {start}..{start + len(chunk) - 1}",
                        CheckBulkPermissionsRequest(consistency=FULL, items=items)))

    # LookupResources for every (resource type, permission, subject).
    for rs in others:
        for perm in defs[rs].names():
            for sb in subjects:
                queries.append(("lookup_resources", f"LookupResources {case.full(rs)}#{perm} @ {subj_text(case, sb)}",
                                LookupResourcesRequest(consistency=FULL, resource_object_type=case.full(rs),
                                                       permission=perm, subject=subj(case, *sb))))

    # LookupSubjects for every (resource, permission, subject type [+ relation]).
    subject_types = [(s, None) for s in defs]
    subject_types += sorted({(ss, sr) for (ss, _, sr) in subject_sets})
    for rs, rid in resources:
        for perm in defs[rs].names():
            for st, sr in subject_types:
                desc = f"LookupSubjects {case.full(rs)}:{rid}#{perm} subjects {case.full(st)}" + (f"#{sr}" if sr else "")
                queries.append(("lookup_subjects", desc,
                                LookupSubjectsRequest(consistency=FULL, resource=obj(case, rs, rid), permission=perm,
                                                      subject_object_type=case.full(st),
                                                      optional_subject_relation=sr or "")))

    # ExpandPermissionTree for every (resource, permission).
    for rs, rid in resources:
        for perm in defs[rs].names():
            queries.append(("expand", f"ExpandPermissionTree {case.full(rs)}:{rid}#{perm}",
                            ExpandPermissionTreeRequest(consistency=FULL, resource=obj(case, rs, rid), permission=perm)))

    # ReadRelationships per resource type.
    for rs in others:
        queries.append(("read_relationships", f"ReadRelationships {case.full(rs)}",
                        ReadRelationshipsRequest(consistency=FULL,
                                                 relationship_filter=RelationshipFilter(resource_type=case.full(rs)))))
    if case.caveats:
        queries += plan_context_queries(case, triples, resources, subjects, subject_types)
    return queries


def to_struct(ctx):
    st = Struct()
    st.update(ctx)
    return st


def ctx_text(ctx):
    return json.dumps(ctx, sort_keys=True, separators=(",", ":"))


def plan_context_queries(case, triples, resources, subjects, subject_types):
    """For a caveated case: Check, CheckBulk, LookupResources and LookupSubjects with request
    contexts (partial, full, and sometimes one wrong-typed value). Queries without a context are
    the ones plan_queries makes anyway."""
    rng = random.Random(f"plan-context/{case.prefix}")
    params = sorted({p for _, ps, _ in case.caveats for p in ps if p in CAVEAT_PARAMS})
    contexts = []
    for mode in ["partial", "partial", "full", "full"]:
        ctx = caveat_context(rng, params, mode)
        if ctx is not None and ctx not in contexts:
            contexts.append(ctx)
    if rng.random() < 0.5 and params:
        ctx = caveat_context(rng, params, "full")
        p = rng.choice(params)
        ctx[p] = rng.choice(CAVEAT_WRONG[CAVEAT_PARAMS[p]])
        contexts.append(ctx)
    queries = []
    per_ctx_checks = 120
    for ctx in contexts:
        st = to_struct(ctx)
        sample = triples if len(triples) <= per_ctx_checks else sorted(rng.sample(triples, per_ctx_checks), key=repr)
        for rs, rid, perm, sb in sample:
            req = CheckPermissionRequest(consistency=FULL, resource=obj(case, rs, rid), permission=perm,
                                         subject=subj(case, *sb), context=st)
            queries.append(("check", f"CheckPermission {case.full(rs)}:{rid}#{perm} @ {subj_text(case, sb)} "
                            f"context {ctx_text(ctx)}", req))
    # Bulk: every item with a context drawn from [none] + contexts.
    pool = [None] + contexts
    sample = triples if len(triples) <= 200 else sorted(rng.sample(triples, 200), key=repr)
    for start in range(0, len(sample), 100):
        chunk = sample[start:start + 100]
        items, descs = [], []
        for rs, rid, perm, sb in chunk:
            ctx = rng.choice(pool)
            item = CheckBulkPermissionsRequestItem(resource=obj(case, rs, rid), permission=perm, subject=subj(case, *sb))
            if ctx is not None:
                item.context.CopyFrom(to_struct(ctx))
            items.append(item)
        queries.append(("check_bulk", f"CheckBulkPermissions (with contexts {', '.join(ctx_text(c) for c in contexts)}) "
                        f"items {start}..{start + len(chunk) - 1}",
                        CheckBulkPermissionsRequest(consistency=FULL, items=items)))
    # Lookups with each context, sampled.
    lr = [(rs, perm, sb) for rs in case.defs if rs != "user" for perm in case.defs[rs].names() for sb in subjects]
    ls = [(rs, rid, perm, st_) for rs, rid in resources for perm in case.defs[rs].names() for st_ in subject_types]
    for ctx in contexts:
        st = to_struct(ctx)
        for rs, perm, sb in (lr if len(lr) <= 40 else rng.sample(lr, 40)):
            queries.append(("lookup_resources", f"LookupResources {case.full(rs)}#{perm} @ {subj_text(case, sb)} "
                            f"context {ctx_text(ctx)}",
                            LookupResourcesRequest(consistency=FULL, resource_object_type=case.full(rs),
                                                   permission=perm, subject=subj(case, *sb), context=st)))
        for rs, rid, perm, (sty, sr) in (ls if len(ls) <= 40 else rng.sample(ls, 40)):
            desc = (f"LookupSubjects {case.full(rs)}:{rid}#{perm} subjects {case.full(sty)}" + (f"#{sr}" if sr else "")
                    + f" context {ctx_text(ctx)}")
            queries.append(("lookup_subjects", desc,
                            LookupSubjectsRequest(consistency=FULL, resource=obj(case, rs, rid), permission=perm,
                                                  subject_object_type=case.full(sty),
                                                  optional_subject_relation=sr or "", context=st)))
    return queries


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

_OPS = {0: "UNSPECIFIED", 1: "UNION", 2: "INTERSECTION", 3: "EXCLUSION"}


def _ref(o):
    return f"{o.object_type}:{o.object_id}"


def _subref(s):
    return _ref(s.object) + (f"#{s.optional_relation}" if s.optional_relation else "")


def norm_tree(t):
    head = f"{_ref(t.expanded_object)}#{t.expanded_relation}" if t.HasField("expanded_object") else f"?#{t.expanded_relation}"
    kind = t.WhichOneof("tree_type")
    if kind == "intermediate":
        op = _OPS.get(t.intermediate.operation, str(t.intermediate.operation))
        kids = [norm_tree(c) for c in t.intermediate.children]
        if op in ("UNION", "INTERSECTION"):
            kids.sort(key=repr)
        return (op, head, tuple(kids))
    if kind == "leaf":
        return ("LEAF", head, tuple(sorted(_subref(s) for s in t.leaf.subjects)))
    return ("EMPTY", head)


def tree_text(t, indent=0):
    pad = "  " * indent
    if t[0] == "LEAF":
        return f"{pad}leaf {t[1]}: [{', '.join(t[2])}]"
    if t[0] == "EMPTY":
        return f"{pad}(no tree) {t[1]}"
    return "\n".join([f"{pad}{t[0]} {t[1]}"] + [tree_text(c, indent + 1) for c in t[2]])


def _lookup_perm(p):
    return {0: "UNSPECIFIED", 1: "HAS", 2: "CONDITIONAL"}.get(p, str(p))


def _check_perm(p):
    return {0: "UNSPECIFIED", 1: "NO", 2: "HAS", 3: "CONDITIONAL"}.get(p, str(p))


MAX_DEPTH_ITEM = "ERROR FAILED_PRECONDITION (max depth)"


def is_max_depth(code, message):
    """A FAILED_PRECONDITION max-depth error (same text in SpiceDB and Pemba)."""
    return code == "FAILED_PRECONDITION" and "max depth" in (message or "").lower()


def answer_is_max_depth(ans):
    ok, v = ans
    return not ok and is_max_depth(v[0], v[1])


def _missing(info_holder):
    """Sorted, de-duplicated missing_required_context (SpiceDB may repeat names)."""
    return tuple(sorted(set(info_holder.partial_caveat_info.missing_required_context)))


def _check_answer(r):
    """A check result: the permissionship, with the missing context when CONDITIONAL."""
    perm = _check_perm(r.permissionship)
    if perm == "CONDITIONAL" or r.HasField("partial_caveat_info"):
        return f"{perm} missing={list(_missing(r))}"
    return perm


def _rel_extra(rel):
    out = ""
    if rel.HasField("optional_caveat"):
        ctx = MessageToDict(rel.optional_caveat.context) if rel.optional_caveat.HasField("context") else {}
        out += f"[{rel.optional_caveat.caveat_name}" + (f":{json.dumps(ctx, sort_keys=True)}" if ctx else "") + "]"
    if rel.HasField("optional_expires_at"):
        out += f"[expiration:{rel.optional_expires_at.ToJsonString()}]"
    return out


def normalise(kind, resp):
    if kind == "check":
        return _check_answer(resp)
    if kind == "check_bulk":
        out = []
        for pair in resp.pairs:
            r = pair.request
            req = f"{_ref(r.resource)}#{r.permission}@{_subref(r.subject)}"
            if pair.HasField("error"):
                code = CODE_NAMES.get(pair.error.code, str(pair.error.code))
                if is_max_depth(code, pair.error.message):
                    out.append((req, MAX_DEPTH_ITEM))
                else:
                    out.append((req, "ERROR " + code))
            else:
                out.append((req, _check_answer(pair.item)))
        return tuple(out)
    if kind == "lookup_resources":
        # SpiceDB may stream a resource several times (HAS and CONDITIONAL, or CONDITIONAL with
        # different missing context): merged per id, HAS wins, missing context is the union.
        merged = {}
        for r in resp:
            perm, miss = _lookup_perm(r.permissionship), set(_missing(r))
            cur = merged.get(r.resource_object_id)
            if perm == "HAS" or (cur and cur[0] == "HAS"):
                merged[r.resource_object_id] = ("HAS", set())
            else:
                merged[r.resource_object_id] = (perm, (cur[1] if cur else set()) | miss)
        return tuple(sorted((k, v[0], tuple(sorted(v[1]))) for k, v in merged.items()))
    if kind == "lookup_subjects":
        # Merged per subject id as for lookup_resources (HAS wins, missing context is the union;
        # exclusions and deprecated fields are unioned).
        merged = {}
        for r in resp:
            sid = r.subject.subject_object_id
            perm, miss = _lookup_perm(r.subject.permissionship), set(_missing(r.subject))
            excluded = {(e.subject_object_id, _lookup_perm(e.permissionship), _missing(e)) for e in r.excluded_subjects}
            cur = merged.get(sid)
            if cur:
                if perm == "HAS" or cur[0] == "HAS":
                    perm, miss = "HAS", set()
                else:
                    miss |= cur[1]
                excluded |= cur[2]
                dep_ids = cur[3] | {r.subject_object_id}
                dep_ex = cur[4] | set(r.excluded_subject_ids)
            else:
                dep_ids, dep_ex = {r.subject_object_id}, set(r.excluded_subject_ids)
            merged[sid] = (perm, miss, excluded, dep_ids, dep_ex)
        return tuple(sorted((sid, v[0], tuple(sorted(v[2])), "deprecated:", ",".join(sorted(v[3])),
                             tuple(sorted(v[4])), tuple(sorted(v[1]))) for sid, v in merged.items()))
    if kind == "expand":
        return norm_tree(resp.tree_root)
    if kind == "read_relationships":
        return tuple(sorted(f"{_ref(r.relationship.resource)}#{r.relationship.relation}@{_subref(r.relationship.subject)}"
                            + _rel_extra(r.relationship) for r in resp))
    raise ValueError(kind)


def run_query(target, kind, req):
    """(True, normalised answer) or (False, (code, message))."""
    try:
        return True, normalise(kind, getattr(target, kind)(req))
    except RpcFailure as e:
        return False, (e.code, e.message)


def same(a, b):
    (ok_a, va), (ok_b, vb) = a, b
    if ok_a != ok_b:
        return False
    if not ok_a:
        return va[0] == vb[0]
    return va == vb


def answer_text(kind, ans):
    ok, v = ans
    if not ok:
        return f"error {v[0]}: {v[1]}"
    if kind == "expand":
        return "\n" + tree_text(v)
    if kind == "check_bulk":
        return "\n" + "\n".join(f"  {r} -> {p}" for r, p in v)
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) if not isinstance(x, tuple) else "(" + ", ".join(map(str, x)) + ")" for x in v) + "]"
    return str(v)


def bulk_diff(a, b):
    """For bulk checks: the differing items only."""
    (ok_a, va), (ok_b, vb) = a, b
    if not (ok_a and ok_b) or len(va) != len(vb):
        return None
    return [(x, y) for x, y in zip(va, vb) if x != y]


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def reset(target):
    """Deletes every relationship of every definition in the target's current schema."""
    try:
        schema = target.read_schema().schema_text
    except RpcFailure:
        return
    for name in re.findall(r"definition\s+([a-z0-9_/]+)", schema):
        try:
            target.delete_relationships(DeleteRelationshipsRequest(relationship_filter=RelationshipFilter(resource_type=name)))
        except RpcFailure:
            pass


def write_request(case):
    updates = []
    for key in case.rels:
        rs, rid, rel, ss, sid, srel = key
        r = Relationship(resource=obj(case, rs, rid), relation=rel, subject=subj(case, ss, sid, srel))
        cav, ctx, exp = case.extra.get(key, (None, None, None))
        if cav:
            r.optional_caveat.CopyFrom(ContextualizedCaveat(caveat_name=cav, context=to_struct(ctx or {})))
        if exp:
            ts = Timestamp()
            ts.FromDatetime(exp)
            r.optional_expires_at.CopyFrom(ts)
        updates.append(RelationshipUpdate(operation=RelationshipUpdate.OPERATION_TOUCH, relationship=r))
    return WriteRelationshipsRequest(updates=updates)


def clear_case(target, case):
    if case is None:
        return
    for d in case.defs.values():
        try:
            target.delete_relationships(DeleteRelationshipsRequest(relationship_filter=RelationshipFilter(resource_type=d.name)))
        except RpcFailure:
            pass


class Mismatch:
    def __init__(self, case, kind, desc, oracle, pemba, note=""):
        self.case, self.kind, self.desc, self.oracle, self.pemba, self.note = case, kind, desc, oracle, pemba, note

    def text(self):
        c = self.case
        lines = [
            f"=== MISMATCH case {c.index} (attempt {c.attempt}, flags {sorted(c.flags) or '-'}): {self.kind}",
            f"query: {self.desc}",
            f"reproduce: differential.py HOST:PORT {c.seed} {c.index + 1} --case {c.index}"
            + (" --caveats-only" if c.caveats_only else ""),
            "schema:",
            c.schema.rstrip(),
            "relationships:",
            c.relationships_text() or "(none)",
            f"spicedb: {answer_text(self.kind, self.oracle)}" if self.oracle is not None else "",
            f"pemba:   {answer_text(self.kind, self.pemba)}" if self.pemba is not None else "",
        ]
        if self.note:
            lines.append(self.note)
        return "\n".join(x for x in lines if x)


# ---------------------------------------------------------------------------------------------
# Tolerated differences (see the module docstring)
# ---------------------------------------------------------------------------------------------

_BULK_REQ = re.compile(r"^([^:]+):[^#]*#([^@]*)@(.*)$")


_RANK = {"NO": 0, "CONDITIONAL": 1, "HAS": 2}


def _rank(answer):
    """NO < CONDITIONAL < HAS for a check answer text, None for anything else."""
    return _RANK.get(answer.split()[0]) if isinstance(answer, str) and answer else None


def direct_beside_subject_set(case):
    """What SpiceDB's Check may get wrong in the case: {"caveat"} if it has a caveated
    relationship SpiceDB may ignore, {"expired"} if it has an expired one SpiceDB may see (subject
    of type T, on a relation allowing T in two ways or more, `T` and `T#rel` or `T#a` and `T#b`,
    one of them `with` a caveat or expiration), both, or neither."""
    affected = set()  # (resource short, relation, subject short)
    for s, d in case.defs.items():
        for r in d.rels.values():
            for t in {ty[0] for ty in r.types if not ty[2]}:
                same_type = [ty for ty in r.types if ty[0] == t and not ty[2]]
                with_something = any(c is not None or e for ty in same_type
                                     for c, e in r.variants.get(ty, [(None, False)]))
                if len({ty[1] for ty in same_type}) >= 2 and with_something:
                    affected.add((s, r.name, t))
    out = set()
    now = datetime.datetime.now(datetime.timezone.utc)
    for rel in case.rels:
        rs, _, rname, ss, _, srel = rel
        if (rs, rname, ss) not in affected:
            continue
        cav, _, exp = case.extra.get(rel, (None, None, None))
        if cav:
            out.add("caveat")
        if exp is not None and (exp if exp.tzinfo else exp.replace(tzinfo=datetime.timezone.utc)) <= now:
            out.add("expired")
    return out


def spicedb_direct_bug(affected, o_answer, p_answer):
    """A difference `direct_beside_subject_set` explains."""
    return ("caveat" in affected and less_permissive(o_answer, p_answer)) \
        or ("expired" in affected and less_permissive(p_answer, o_answer))


def spicedb_ignored_caveat_error(affected, o_ans, p_ans):
    """A Check Pemba failed with a caveat parameter type error where SpiceDB answered NO or
    CONDITIONAL, in a case with a caveated relationship SpiceDB's Check may ignore (see
    `direct_beside_subject_set`): SpiceDB never evaluates the caveat it ignores."""
    (ok_o, vo), (ok_p, vp) = o_ans, p_ans
    return ("caveat" in affected and ok_o and not ok_p and vp[0] == "INVALID_ARGUMENT"
            and "caveat parameter type error" in vp[1] and _rank(vo) in (0, 1))


def spicedb_bulk_inconsistent_items(oracle, case, req, o_ans, p_ans):
    """For a CheckBulk difference (both succeeded) in a schema with `.all()` arrows: the indices of
    the differing items SpiceDB's Check of the item alone (same context) answers as Pemba did."""
    (ok_o, vo), (ok_p, vp) = o_ans, p_ans
    if ".all(" not in case.schema or not (ok_o and ok_p) or not (len(vo) == len(vp) == len(req.items)):
        return set()
    out = set()
    for i, (x, y) in enumerate(zip(vo, vp)):
        if x == y or y[1].startswith("ERROR"):
            continue
        it = req.items[i]
        creq = CheckPermissionRequest(consistency=FULL, resource=it.resource, permission=it.permission,
                                      subject=it.subject)
        if it.HasField("context"):
            creq.context.CopyFrom(it.context)
        try:
            alone = _check_answer(oracle.check(creq))
        except RpcFailure:
            continue
        if alone == y[1]:
            out.add(i)
    return out


def schema_cycle_code(o_ans, p_ans):
    """A WriteSchema both refused for a cycle in permissions, SpiceDB with UNKNOWN (an error
    without a gRPC status), Pemba with FAILED_PRECONDITION."""
    (ok_o, vo), (ok_p, vp) = o_ans, p_ans
    cycle = "there exists a cycle in permissions"
    return (not ok_o and not ok_p and vo[0] == "UNKNOWN" and vp[0] == "FAILED_PRECONDITION"
            and cycle in vo[1] and cycle in vp[1])


def less_permissive(o_answer, p_answer):
    ro, rp = _rank(o_answer), _rank(p_answer)
    return ro is not None and rp is not None and ro < rp


def spicedb_racy(oracle, kind, req, o_ans, p_ans, tries=6):
    """Asks SpiceDB the same query again: True when it answers differently from the first time
    and one of its answers is Pemba's."""
    seen = [o_ans]
    for _ in range(tries):
        again = run_query(oracle, kind, req)
        if not again[0] and again[1][0] == "ORACLE_LIMIT":
            return False
        if not any(same(again, x) for x in seen):
            seen.append(again)
        if len(seen) > 1 and any(same(x, p_ans) for x in seen):
            return True
    return False


def spicedb_racy_items(oracle, req, o_ans, p_ans, tries=6):
    """For a CheckBulk difference (both succeeded): the indices of the items SpiceDB answered
    differently when asked again, with Pemba's answer among its answers."""
    if not (o_ans[0] and p_ans[0]) or len(o_ans[1]) != len(p_ans[1]):
        return set()
    seen = [{x[1]} for x in o_ans[1]]
    for _ in range(tries):
        again = run_query(oracle, "check_bulk", req)
        if not again[0] or len(again[1]) != len(seen):
            break
        for answers, item in zip(seen, again[1]):
            answers.add(item[1])
    return {i for i, (answers, p_item) in enumerate(zip(seen, p_ans[1]))
            if len(answers) > 1 and p_item[1] in answers}


def tolerate_call(cyclic, o, p):
    """The tolerated class of a whole-call difference, or None."""
    if cyclic and (answer_is_max_depth(o) or answer_is_max_depth(p)):
        return "cycle-depth"
    return None


def bulk_item_classes(cyclic, o_items, p_items, beside_subject_set=frozenset(), racy_items=frozenset(),
                      inconsistent_items=frozenset()):
    """For two CheckBulk answers (both succeeded, same items): [(spicedb item, pemba item, tolerated
    class or None)] for every differing item."""
    groups = {}  # (resource type, permission, subject) -> indices of items failed with max depth
    for i, ((req, a), (_, b)) in enumerate(zip(o_items, p_items)):
        if MAX_DEPTH_ITEM in (a, b):
            m = _BULK_REQ.match(req)
            groups.setdefault(m.groups() if m else req, set()).add(i)
    out = []
    for i, (x, y) in enumerate(zip(o_items, p_items)):
        if x == y:
            continue
        cls = None
        m = _BULK_REQ.match(x[0])
        others = groups.get(m.groups() if m else x[0], set()) - {i}
        if x[1] == MAX_DEPTH_ITEM and not y[1].startswith("ERROR") and others:
            cls = "bulk-error-isolation"
        elif cyclic and MAX_DEPTH_ITEM in (x[1], y[1]):
            cls = "cycle-depth"
        elif spicedb_direct_bug(beside_subject_set, x[1], y[1]):
            cls = "spicedb-direct-beside-subject-set"
        elif i in racy_items:
            cls = "spicedb-racy"
        elif i in inconsistent_items:
            cls = "spicedb-bulk-inconsistent"
        out.append((x, y, cls))
    return out


def lookup_subjects_matches_oracle_check(oracle, case, req, o_ans, p_ans):
    """Rule for `.all()` schemas: SpiceDB's LookupSubjects may disagree with its own Check. True
    when Pemba's LookupSubjects answer is exactly what SpiceDB's Check says per subject: HAS for
    the subjects listed HAS (or covered by the wildcard), CONDITIONAL with the same missing context
    for those listed CONDITIONAL (not under a wildcard), NO for the others (over every object of
    the subject type in the case, every id either side returned, and an unknown id when a
    wildcard is involved)."""
    (ok_o, vo), (ok_p, vp) = o_ans, p_ans
    if not (ok_o and ok_p) or ".all(" not in case.schema:
        return False
    st = req.subject_object_type
    short = st[len(case.prefix) + 1:] if st.startswith(case.prefix + "/") else None
    cands = set(case.ids.get(short, []))
    wildcard = False
    for entry in list(vo) + list(vp):
        if entry[0] == "*":
            wildcard = True
        else:
            cands.add(entry[0])
        cands.update(e[0] for e in entry[2])
        cands.update(entry[5])
    if wildcard:
        cands.add("zz_unknown_subject")
    concrete = {e[0] for e in vp if e[0] != "*"}
    wild = [e for e in vp if e[0] == "*"]
    excluded = {x[0] for e in wild for x in e[2]}
    for sid in sorted(cands):
        if sid == "*":
            continue
        creq = CheckPermissionRequest(consistency=FULL, resource=req.resource, permission=req.permission,
                                      subject=SubjectReference(object=ObjectReference(object_type=st, object_id=sid),
                                                               optional_relation=req.optional_subject_relation))
        if req.HasField("context"):
            creq.context.CopyFrom(req.context)
        try:
            resp = oracle.check(creq)
        except RpcFailure:
            return False
        perm = _check_perm(resp.permissionship)
        listed = next((e for e in vp if e[0] == sid), None)
        if perm == "CONDITIONAL":
            if wild or listed is None or listed[1] != "CONDITIONAL" or listed[6] != _missing(resp):
                return False
            continue
        if perm not in ("HAS", "NO"):
            return False
        if listed is not None and listed[1] != "HAS":
            return False
        pemba_has = sid in concrete or (bool(wild) and sid not in excluded)
        if (perm == "HAS") != pemba_has:
            return False
    return True


def lookup_resources_matches_oracle_check(oracle, case, req, o_ans, p_ans):
    """Rule for caveated cases: SpiceDB's LookupResources may disagree with its own Check (it drops
    CONDITIONAL results under an exclusion, for one). True when Pemba's answer is exactly what
    SpiceDB's Check (same context) says for every object of the resource type in the case and
    every id either side returned."""
    (ok_o, vo), (ok_p, vp) = o_ans, p_ans
    if not (ok_o and ok_p) or not case.caveats:
        return False
    rt = req.resource_object_type
    short = rt[len(case.prefix) + 1:] if rt.startswith(case.prefix + "/") else None
    cands = set(case.ids.get(short, [])) | {e[0] for e in vo} | {e[0] for e in vp}
    want = []
    for rid in sorted(cands):
        creq = CheckPermissionRequest(consistency=FULL, resource=ObjectReference(object_type=rt, object_id=rid),
                                      permission=req.permission, subject=req.subject)
        if req.HasField("context"):
            creq.context.CopyFrom(req.context)
        try:
            resp = oracle.check(creq)
        except RpcFailure:
            return False
        perm = _check_perm(resp.permissionship)
        if perm == "HAS":
            want.append((rid, "HAS", ()))
        elif perm == "CONDITIONAL":
            want.append((rid, "CONDITIONAL", _missing(resp)))
        elif perm != "NO":
            return False
    return tuple(want) == tuple(vp)


def _short(text, n=300):
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + " ..."


def classify(kind, o, p):
    ok_o, vo = o
    ok_p, vp = p
    if ok_o and not ok_p:
        return f"{kind}: pemba error {vp[0]}, spicedb ok"
    if ok_p and not ok_o:
        return f"{kind}: spicedb error {vo[0]}, pemba ok"
    if not ok_o:
        return f"{kind}: error codes {vo[0]} vs {vp[0]}"
    return f"{kind}: different answer"


def main(argv):
    args = list(argv)
    opts = {"--case": None, "--max-show": "40", "--report": None, "--max-checks": "700", "--oracle-timeout": "10", "--case-budget": "60"}
    flags = set()
    i = 0
    pos = []
    while i < len(args):
        a = args[i]
        if a in opts:
            if i + 1 >= len(args):
                print(__doc__, file=sys.stderr)
                return 2
            opts[a] = args[i + 1]
            i += 2
        elif a in ("--oracle-only", "--print-cases", "--caveats-only", "-v", "-vv"):
            flags.add(a)
            i += 1
        elif a.startswith("--"):
            print(__doc__, file=sys.stderr)
            return 2
        else:
            pos.append(a)
            i += 1
    oracle_only = "--oracle-only" in flags
    verbose = 2 if "-vv" in flags else (1 if "-v" in flags else 0)
    if (oracle_only and len(pos) != 2) or (not oracle_only and len(pos) != 3):
        print(__doc__, file=sys.stderr)
        return 2
    if oracle_only:
        target_addr, seed, n_cases = None, int(pos[0]), int(pos[1])
    else:
        target_addr, seed, n_cases = pos[0], int(pos[1]), int(pos[2])
    max_show = int(opts["--max-show"])
    max_checks = int(opts["--max-checks"])
    case_filter = int(opts["--case"]) if opts["--case"] is not None else None

    oracle = OracleProcess(timeout=float(opts['--oracle-timeout']))
    pemba = GrpcTarget(target_addr) if target_addr else None
    if pemba:
        reset(pemba)

    t0 = time.time()
    stats = Counter()
    outcomes = Counter()
    timing = Counter()
    mismatches = []
    classes = Counter()
    class_example = {}
    tolerated = []  # (class, Mismatch)
    tolerated_classes = Counter()
    prev = None  # previous accepted case (its relationships are deleted before the next case)

    def record(m, cls):
        mismatches.append(m)
        classes[cls] += 1
        class_example.setdefault(cls, m)

    def tolerate(m, cls):
        tolerated.append((cls, m))
        tolerated_classes[cls] += 1

    indices = [case_filter] if case_filter is not None else range(n_cases)
    for index in indices:
        case = None
        for attempt in range(20):
            cand = generate_case(seed, index, attempt, caveats_only="--caveats-only" in flags)
            stats["schemas generated"] += 1
            clear_case(oracle, prev)
            if pemba:
                clear_case(pemba, prev)
            prev = None
            try:
                oracle.write_schema(cand.schema)
                o_ans = (True, None)
            except RpcFailure as e:
                o_ans = (False, (e.code, e.message))
            if pemba:
                try:
                    pemba.write_schema(cand.schema)
                    p_ans = (True, None)
                except RpcFailure as e:
                    p_ans = (False, (e.code, e.message))
                stats["queries"] += 1
                if not same(o_ans, p_ans):
                    m = Mismatch(cand, "write_schema", "WriteSchema", o_ans, p_ans)
                    if schema_cycle_code(o_ans, p_ans):
                        tolerate(m, "spicedb-schema-cycle-code")
                    else:
                        record(m, classify("write_schema", o_ans, p_ans))
                    if o_ans[0]:
                        stats["cases skipped (pemba refused schema)"] += 1
                        break
            if not o_ans[0]:
                stats["schemas refused by spicedb"] += 1
                stats[f"schema refusal: {o_ans[1][0]} {re.sub(r'`[^`]*`', '`_`', o_ans[1][1])[:90]}"] += 1
                continue
            case = cand
            break
        if case is None:
            continue
        stats["schemas accepted by spicedb"] += 1
        if "--print-cases" in flags:
            print(f"--- case {index} (attempt {case.attempt}, flags {sorted(case.flags) or '-'})\n{case.schema}{case.relationships_text()}\n")

        wreq = write_request(case)
        try:
            oracle.write_relationships(wreq)
            o_ans = (True, None)
        except RpcFailure as e:
            o_ans = (False, (e.code, e.message))
        prev = case
        if pemba:
            try:
                pemba.write_relationships(wreq)
                p_ans = (True, None)
            except RpcFailure as e:
                p_ans = (False, (e.code, e.message))
            stats["queries"] += 1
            if not same(o_ans, p_ans):
                record(Mismatch(case, "write_relationships", "WriteRelationships (all relationships)", o_ans, p_ans),
                       classify("write_relationships", o_ans, p_ans))
                stats["cases skipped (write mismatch)"] += 1
                continue
        if not o_ans[0]:
            stats["relationship writes refused by spicedb"] += 1
            print(f"generator bug? case {index}: SpiceDB refused the relationships: {o_ans[1]}", file=sys.stderr)
            continue
        stats["cases run"] += 1
        stats["relationships written"] += len(case.rels)
        for f in case.flags:
            stats[f"cases with {f}"] += 1
        cycle_reasons = case_cycle_reasons(case)
        cyclic = bool(cycle_reasons)
        beside_subject_set = direct_beside_subject_set(case)
        if cyclic:
            stats["cases with a cycle (max-depth differences tolerated)"] += 1

        if verbose:
            print(f"case {index}: {len(case.rels)} relationships, flags {sorted(case.flags) or '-'}"
                  + (f", cycle: {', '.join(cycle_reasons)}" if cyclic else ""), file=sys.stderr, flush=True)
        case_budget = float(opts["--case-budget"])
        case_spent = 0.0
        planned = plan_queries(case, max_checks)
        for qi, (kind, desc, req) in enumerate(planned):
            if case_spent > case_budget:
                stats["queries skipped (case over its SpiceDB time budget)"] += len(planned) - qi
                print(f"case {index}: over its time budget, {len(planned) - qi} queries skipped", file=sys.stderr, flush=True)
                break
            if verbose > 1:
                print(f"  {desc}", file=sys.stderr, flush=True)
            tq = time.time()
            o_ans = run_query(oracle, kind, req)
            timing[f"spicedb {kind}"] += time.time() - tq
            case_spent += time.time() - tq
            stats["queries"] += 1
            if not o_ans[0] and o_ans[1][0] == "ORACLE_LIMIT":
                stats["queries SpiceDB gave up on (not compared)"] += 1
                print(f"case {index}: SpiceDB gave up on {desc}: {o_ans[1][1]}", file=sys.stderr, flush=True)
                continue
            if o_ans[0]:
                if kind == "check":
                    outcomes[f"check {o_ans[1].split()[0]}"] += 1
                elif kind in ("lookup_resources", "lookup_subjects"):
                    outcomes[f"{kind} {'non-empty' if o_ans[1] else 'empty'}"] += 1
                else:
                    outcomes[f"{kind} ok"] += 1
            else:
                outcomes[f"{kind} error {o_ans[1][0]}"] += 1
            if not pemba:
                continue
            tq = time.time()
            p_ans = run_query(pemba, kind, req)
            timing[f"pemba {kind}"] += time.time() - tq
            if same(o_ans, p_ans):
                continue
            note = f"cycle: {', '.join(cycle_reasons)}" if cyclic else ""
            cls = tolerate_call(cyclic, o_ans, p_ans)
            if cls:
                tolerate(Mismatch(case, kind, desc, o_ans, p_ans, note), cls)
                continue
            if kind == "check" and o_ans[0] and p_ans[0] and spicedb_direct_bug(beside_subject_set, o_ans[1], p_ans[1]):
                tolerate(Mismatch(case, kind, desc, o_ans, p_ans, note), "spicedb-direct-beside-subject-set")
                continue
            if kind == "check" and spicedb_ignored_caveat_error(beside_subject_set, o_ans, p_ans):
                tolerate(Mismatch(case, kind, desc, o_ans, p_ans, note), "spicedb-direct-beside-subject-set")
                continue
            if kind == "check":
                tq = time.time()
                racy = spicedb_racy(oracle, kind, req, o_ans, p_ans)
                case_spent += time.time() - tq
                if racy:
                    tolerate(Mismatch(case, kind, desc, o_ans, p_ans, note), "spicedb-racy")
                    continue
            if kind == "check_bulk":
                diff = bulk_diff(o_ans, p_ans)
                if diff is not None:
                    tq = time.time()
                    racy_items = spicedb_racy_items(oracle, req, o_ans, p_ans)
                    inconsistent_items = spicedb_bulk_inconsistent_items(oracle, case, req, o_ans, p_ans)
                    case_spent += time.time() - tq
                    for x, y, cls in bulk_item_classes(cyclic, o_ans[1], p_ans[1], beside_subject_set, racy_items,
                                                       inconsistent_items):
                        m = Mismatch(case, "check_bulk item", f"{desc}: item {x[0]}", (True, x[1]), (True, y[1]), note)
                        if cls:
                            tolerate(m, cls)
                        else:
                            record(m, f"check_bulk item: {x[1]} vs {y[1]}")
                    continue
            if kind == "lookup_resources":
                tq = time.time()
                consistent = lookup_resources_matches_oracle_check(oracle, case, req, o_ans, p_ans)
                case_spent += time.time() - tq
                if consistent:
                    tolerate(Mismatch(case, kind, desc, o_ans, p_ans, note), "spicedb-lookup-inconsistent")
                    continue
            if kind == "lookup_subjects":
                tq = time.time()
                consistent = lookup_subjects_matches_oracle_check(oracle, case, req, o_ans, p_ans)
                case_spent += time.time() - tq
                if consistent:
                    tolerate(Mismatch(case, kind, desc, o_ans, p_ans, note), "spicedb-lookup-inconsistent")
                    continue
            record(Mismatch(case, kind, desc, o_ans, p_ans, note), classify(kind, o_ans, p_ans))

    elapsed = time.time() - t0
    oracle.close()
    if pemba:
        pemba.close()
    n_run = stats["cases run"]
    print(f"seed {seed}: {stats['schemas generated']} schemas generated, {stats['schemas accepted by spicedb']} accepted "
          f"by SpiceDB, {stats['schemas refused by spicedb']} refused (regenerated); {n_run} cases run, "
          f"{stats['relationships written']} relationships; {elapsed:.1f}s")
    for k, v in sorted(stats.items()):
        if k.startswith(("schema refusal", "cases with", "cases skipped", "relationship writes", "queries SpiceDB", "queries skipped")):
            print(f"  {k}: {v}")
    print("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(timing.items())))
    print("  oracle answers: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
    if oracle_only:
        print(f"differential: {n_run} cases, {stats['queries']} queries (oracle only)")
        ok = stats["relationship writes refused by spicedb"] == 0 and n_run == len(indices)
        return 0 if ok else 1

    for m in mismatches[:max_show]:
        print(m.text())
        print()
    if len(mismatches) > max_show:
        print(f"... {len(mismatches) - max_show} more mismatches not shown (use --max-show / --report)")
    for cls, m in tolerated[:max_show]:
        print(f"tolerated [{cls}] case {m.case.index}: {m.desc}: spicedb {_short(answer_text(m.kind, m.oracle))} "
              f"| pemba {_short(answer_text(m.kind, m.pemba))}")
    if len(tolerated) > max_show:
        print(f"... {len(tolerated) - max_show} more tolerated differences not shown (use --max-show / --report)")
    if classes:
        print("mismatch classes (count, first example case):")
        for cls, n in classes.most_common():
            print(f"  {n:6d}  {cls}  (case {class_example[cls].case.index}: {class_example[cls].desc})")
    if opts["--report"]:
        with open(opts["--report"], "w") as f:
            for m in mismatches:
                f.write(m.text() + "\n\n")
            for cls, m in tolerated:
                f.write(f"=== tolerated [{cls}]\n" + m.text().replace("=== MISMATCH", "=== (tolerated)", 1) + "\n\n")
    tol = f", {len(tolerated)} tolerated"
    if tolerated_classes:
        tol += " (" + ", ".join(f"{c}={n}" for c, n in sorted(tolerated_classes.items())) + ")"
    print(f"differential: {n_run} cases, {stats['queries']} queries, {len(mismatches)} mismatches{tol}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
