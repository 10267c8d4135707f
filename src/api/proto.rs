//! The wire types: code generated from proto/ at build time.
//!
//! This is the only module that includes generated code. `build.rs` compiles
//! `proto/` with protox + tonic-prost-build; `google.rpc.Status` is not
//! generated here but mapped to `tonic_types::pb::Status`.

// Generated code is not written by us, so lints that judge style or docs are
// relaxed for it only.
#![allow(
    missing_docs,
    reason = "generated code: proto messages without comments produce undocumented items"
)]
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    reason = "generated code: prost/tonic output is not written to our clippy standards"
)]
#![allow(
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links,
    reason = "generated code: proto comments are copied into doc comments verbatim"
)]

/// `authzed.api.v1`: SpiceDB's public API, spoken unchanged so official clients work.
pub mod authzed {
    /// `authzed.api`.
    pub mod api {
        /// `authzed.api.v1`: messages, enums, and the tonic clients and servers.
        pub mod v1 {
            tonic::include_proto!("authzed.api.v1");
        }
    }
}

/// `pemba.internal.v1`: Pemba's own encodings of ZedTokens and cursors.
pub mod pemba_internal {
    tonic::include_proto!("pemba.internal.v1");
}

/// `pemba`: Pemba's own public packages.
pub mod pemba {
    /// `pemba.admin`.
    pub mod admin {
        /// `pemba.admin.v1`: the administrative API (backups), with its tonic client and server.
        pub mod v1 {
            tonic::include_proto!("pemba.admin.v1");
        }
    }
}

/// The serialized `FileDescriptorSet` of every file in proto/ plus its imports
/// (written by build.rs), e.g. for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pemba_descriptor");
