//! Transaction metadata: the JSON object a writer attaches to a write, kept with its revision.

use serde_json::{Map, Value};

/// What a writer said about its write (`optional_transaction_metadata`, a
/// `google.protobuf.Struct` on the wire): kept in the change log with the revision and given
/// back to every watcher of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransactionMetadata(pub Map<String, Value>);
