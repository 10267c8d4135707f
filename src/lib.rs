//! Pemba: a Zanzibar-style ReBAC database that speaks SpiceDB's `authzed.api.v1` gRPC API.
//!
//! # Layout
//! Modules in the order data flows through them; each depends only on those before it:
//! `model` (ids, tuples, revisions) → `schema` (lexer → parser → typecheck → compiled form) →
//! `store` (the `Datastore` trait; RocksDB and in-memory implementations; MVCC) → `engine`
//! (check, expand, lookups through a dispatcher with a depth budget) → `consistency` (tokens,
//! revision choice) → `api` (thin tonic services; the only place errors become
//! `tonic::Status`) → `server` (listener, auth, health, shutdown) → `cli` (`pemba serve`).
//! Only `api`, `server` and `cli` use tonic or prost types.

pub mod api;
pub mod cli;
pub mod consistency;
pub mod engine;
pub mod model;
pub mod schema;
pub mod server;
pub mod store;
