#!/usr/bin/env python3
"""Check Pemba's proto descriptors against the official Python client's.

Usage: compare_descriptors.py PATH_TO_PEMBA_DESCRIPTOR_SET

PATH is the serialized google.protobuf.FileDescriptorSet that build.rs writes
to $OUT_DIR/pemba_descriptor.bin. The installed `authzed` package (PyPI) is the
reference: every message, field, enum value and RPC it has in package
authzed.api.v1 (and google.rpc.Status, which we describe ourselves) must exist
in ours with the same number, type, label, oneof and streaming mode.

Prints every mismatch and exits 1 if there is any. Differences that do not
change the wire (deprecation markers, which file a type lives in, things we
have that the client lacks) are printed as notes and do not fail the check.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2

PACKAGES = ("authzed.api.v1", "google.rpc")
# Types outside authzed.api.v1 that we describe ourselves and must match too.
EXTRA_CHECKED_TYPES = (".google.rpc.Status",)

FDP = descriptor_pb2.FieldDescriptorProto
TYPE_NAMES = {v: k for k, v in FDP.Type.items()}
LABEL_NAMES = {v: k for k, v in FDP.Label.items()}


@dataclass
class Model:
    """Everything wire-relevant in a set of files, keyed by full name."""

    # message full name -> field name -> (number, type, type_name, label, oneof, proto3_optional)
    messages: dict[str, dict[str, tuple]] = field(default_factory=dict)
    # message/enum/service full name -> file it is declared in
    files: dict[str, str] = field(default_factory=dict)
    # full name -> deprecated flag (messages, fields, enum values, methods)
    deprecated: dict[str, bool] = field(default_factory=dict)
    # enum full name -> value name -> number
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    # service full name -> method name -> (input, output, client_streaming, server_streaming)
    services: dict[str, dict[str, tuple]] = field(default_factory=dict)

    def add_file(self, fdp: descriptor_pb2.FileDescriptorProto) -> None:
        prefix = "." + fdp.package if fdp.package else ""
        for msg in fdp.message_type:
            self._add_message(fdp.name, prefix, msg)
        for enum in fdp.enum_type:
            self._add_enum(fdp.name, prefix, enum)
        for svc in fdp.service:
            name = f"{prefix}.{svc.name}"
            self.files[name] = fdp.name
            methods = {}
            for m in svc.method:
                methods[m.name] = (
                    m.input_type,
                    m.output_type,
                    m.client_streaming,
                    m.server_streaming,
                )
                self.deprecated[f"{name}.{m.name}"] = m.options.deprecated
            self.services[name] = methods

    def _add_message(self, file: str, prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{msg.name}"
        self.files[name] = file
        self.deprecated[name] = msg.options.deprecated
        fields = {}
        for f in msg.field:
            oneof = ""
            # A proto3 `optional` field sits in a synthetic oneof; it is not a real oneof.
            if f.HasField("oneof_index") and not f.proto3_optional:
                oneof = msg.oneof_decl[f.oneof_index].name
            fields[f.name] = (
                f.number,
                TYPE_NAMES.get(f.type, str(f.type)),
                f.type_name,
                LABEL_NAMES.get(f.label, str(f.label)),
                oneof,
                f.proto3_optional,
            )
            self.deprecated[f"{name}.{f.name}"] = f.options.deprecated
        self.messages[name] = fields
        for nested in msg.nested_type:
            if nested.options.map_entry:
                # Map entries are compared through their fields like any message.
                pass
            self._add_message(file, name, nested)
        for enum in msg.enum_type:
            self._add_enum(file, name, enum)

    def _add_enum(self, file: str, prefix: str, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        name = f"{prefix}.{enum.name}"
        self.files[name] = file
        self.enums[name] = {v.name: v.number for v in enum.value}
        for v in enum.value:
            self.deprecated[f"{name}.{v.name}"] = v.options.deprecated


def in_scope(full_name: str) -> bool:
    return full_name.startswith(".authzed.api.v1.") or full_name in EXTRA_CHECKED_TYPES


def load_ours(path: str) -> Model:
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as fh:
        fds.ParseFromString(fh.read())
    model = Model()
    for fdp in fds.file:
        model.add_file(fdp)
    return model


def load_reference() -> Model:
    """Descriptors of every authzed.api.v1 *_pb2 module, plus google.rpc.status_pb2."""
    import authzed.api.v1 as v1pkg

    modules = []
    for info in pkgutil.iter_modules(v1pkg.__path__):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(f"authzed.api.v1.{info.name}"))
    if not modules:
        raise SystemExit("no authzed.api.v1 *_pb2 modules found in the installed authzed package")
    try:
        modules.append(importlib.import_module("google.rpc.status_pb2"))
    except ImportError:
        print("note: google.rpc.status_pb2 not installed; google.rpc.Status not compared")

    model = Model()
    for mod in modules:
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        model.add_file(fdp)
    return model


def compare(ours: Model, ref: Model) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    notes: list[str] = []

    for msg, ref_fields in sorted(ref.messages.items()):
        if not in_scope(msg):
            continue
        if msg not in ours.messages:
            errors.append(f"missing message {msg}")
            continue
        our_fields = ours.messages[msg]
        for fname, ref_f in sorted(ref_fields.items(), key=lambda kv: kv[1][0]):
            if fname not in our_fields:
                errors.append(f"missing field {msg}.{fname} = {ref_f[0]} ({ref_f[1]} {ref_f[2]})")
                continue
            our_f = our_fields[fname]
            if our_f != ref_f:
                errors.append(
                    f"field {msg}.{fname}: ours (number, type, type_name, label, oneof, optional)="
                    f"{our_f}, client={ref_f}"
                )
        ref_numbers = {f[0]: n for n, f in ref_fields.items()}
        for fname, our_f in sorted(our_fields.items(), key=lambda kv: kv[1][0]):
            if fname in ref_fields:
                continue
            other = ref_numbers.get(our_f[0])
            if other is not None:
                errors.append(
                    f"field {msg}.{fname} = {our_f[0]}: the client uses number {our_f[0]} for `{other}`"
                )
            else:
                notes.append(f"extra field in ours: {msg}.{fname} = {our_f[0]}")

    for enum, ref_values in sorted(ref.enums.items()):
        if not in_scope(enum):
            continue
        if enum not in ours.enums:
            errors.append(f"missing enum {enum}")
            continue
        our_values = ours.enums[enum]
        for vname, num in sorted(ref_values.items(), key=lambda kv: kv[1]):
            if vname not in our_values:
                errors.append(f"missing enum value {enum}.{vname} = {num}")
            elif our_values[vname] != num:
                errors.append(f"enum value {enum}.{vname}: ours={our_values[vname]}, client={num}")
        for vname, num in sorted(our_values.items(), key=lambda kv: kv[1]):
            if vname not in ref_values:
                notes.append(f"extra enum value in ours: {enum}.{vname} = {num}")

    for svc, ref_methods in sorted(ref.services.items()):
        if not in_scope(svc):
            continue
        if svc not in ours.services:
            errors.append(f"missing service {svc}")
            continue
        our_methods = ours.services[svc]
        for mname, ref_m in sorted(ref_methods.items()):
            if mname not in our_methods:
                errors.append(f"missing rpc {svc}.{mname}")
            elif our_methods[mname] != ref_m:
                errors.append(
                    f"rpc {svc}.{mname}: ours (input, output, client_streaming, server_streaming)="
                    f"{our_methods[mname]}, client={ref_m}"
                )
        for mname in sorted(set(our_methods) - set(ref_methods)):
            notes.append(f"extra rpc in ours: {svc}.{mname}")

    for kind, ours_names, ref_names in (
        ("message", ours.messages, ref.messages),
        ("enum", ours.enums, ref.enums),
        ("service", ours.services, ref.services),
    ):
        for name in sorted(set(ours_names) - set(ref_names)):
            if in_scope(name):
                notes.append(f"extra {kind} in ours: {name}")

    # Not wire-relevant, but worth knowing (reflection output, generated docs).
    for name, ref_file in sorted(ref.files.items()):
        if in_scope(name) and name in ours.files and ours.files[name] != ref_file:
            notes.append(f"{name} is declared in {ours.files[name]} (client: {ref_file})")
    for name, ref_dep in sorted(ref.deprecated.items()):
        if in_scope(name) and name in ours.deprecated and ours.deprecated[name] != ref_dep:
            notes.append(f"deprecated flag of {name}: ours={ours.deprecated[name]}, client={ref_dep}")

    return errors, notes


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ours = load_ours(argv[1])
    ref = load_reference()

    try:
        from importlib.metadata import version

        print(f"reference: authzed {version('authzed')} (protobuf {version('protobuf')})")
    except Exception:  # noqa: BLE001 - version info is cosmetic
        pass

    errors, notes = compare(ours, ref)
    checked = (
        sum(1 for m in ref.messages if in_scope(m)),
        sum(len(f) for m, f in ref.messages.items() if in_scope(m)),
        sum(1 for e in ref.enums if in_scope(e)),
        sum(len(m) for s, m in ref.services.items() if in_scope(s)),
    )
    print(
        f"compared {checked[0]} messages, {checked[1]} fields, {checked[2]} enums, "
        f"{checked[3]} rpcs"
    )
    for n in notes:
        print(f"note: {n}")
    for e in errors:
        print(f"MISMATCH: {e}")
    if errors:
        print(f"{len(errors)} mismatches")
        return 1
    print("no mismatches")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
