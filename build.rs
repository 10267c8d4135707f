//! Build script: compiles the wire API in `proto/` into Rust without a system
//! `protoc`.
//!
//! `protox` parses the .proto files into a `FileDescriptorSet` (it ships the
//! google.protobuf well-known types), and `tonic-prost-build` generates the
//! prost messages plus the tonic clients and servers from it. The serialized
//! descriptor set is also written to `$OUT_DIR/pemba_descriptor.bin` so that
//! gRPC reflection can serve it and tests can compare it against the
//! descriptors of the official authzed clients.

use std::env;
use std::error::Error;
use std::fs;
use std::path::PathBuf;

/// The .proto files to compile, relative to `proto/`. Their imports
/// (google/protobuf/*, google/rpc/status.proto) are pulled in automatically.
const PROTO_FILES: &[&str] = &[
    "authzed/api/v1/core.proto",
    "authzed/api/v1/debug.proto",
    "authzed/api/v1/error_reason.proto",
    "authzed/api/v1/permission_service.proto",
    "authzed/api/v1/schema_service.proto",
    "authzed/api/v1/watch_service.proto",
    "authzed/api/v1/experimental_service.proto",
    "pemba/internal/v1/token.proto",
    "pemba/admin/v1/backup.proto",
];

/// Name of the serialized `FileDescriptorSet` written to `$OUT_DIR`.
const DESCRIPTOR_SET_FILE: &str = "pemba_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let files: Vec<PathBuf> = PROTO_FILES.iter().map(|f| proto_dir.join(f)).collect();
    let fds = protox::compile(&files, [&proto_dir])?;

    // Written by hand: `compile_fds` does not honour `file_descriptor_set_path`
    // (prost-build only writes it when it runs protoc itself).
    let encoded = protox::prost::Message::encode_to_vec(&fds);
    fs::write(out_dir.join(DESCRIPTOR_SET_FILE), encoded)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // google.rpc.Status (CheckBulkPermissionsPair.error) is the same type
        // tonic-types uses for the richer error model, so errors can be moved
        // between the two without conversion.
        .extern_path(".google.rpc.Status", "::tonic_types::pb::Status")
        .compile_fds(fds)?;

    Ok(())
}
