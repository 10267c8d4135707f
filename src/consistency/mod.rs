//! Consistency: zookie-style tokens, the revision a request reads at, and paging cursors.
//!
//! Tokens are opaque, versioned and tied to one store; the revision a request reads at is chosen
//! from its consistency (`minimize_latency`, `at_least_as_fresh`, `at_exact_snapshot`,
//! `fully_consistent`); cursors pin paged reads to a revision.

mod error;
mod token;

pub use error::ConsistencyError;
pub use token::{Cursor, decode_cursor, decode_token, encode_cursor, encode_token, hash_request};

use crate::model::Revision;
use crate::store::Datastore;

/// What freshness a read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// any recent revision (Pemba reads the head: a single node has it at no cost)
    MinimizeLatency,
    /// at least as fresh as the revision in this token
    AtLeastAsFresh(String),
    /// exactly the revision in this token
    AtExactSnapshot(String),
    /// the newest committed revision
    FullyConsistent,
}

/// What an `at_least_as_fresh` read does with a token another datastore issued (another
/// Pemba store, or SpiceDB, whose tokens an application switching over has stored): SpiceDB's
/// `--mismatch-zed-token-behavior`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MismatchedTokens {
    /// read at the head, as if the read asked for full consistency (SpiceDB's default)
    #[default]
    FullConsistency,
    /// read at the revision a `minimize_latency` read would (the head, on Pemba)
    MinLatency,
    /// refuse the read
    Error,
}

impl std::str::FromStr for MismatchedTokens {
    type Err = String;

    /// SpiceDB's flag values: `full-consistency`, `min-latency`, `error`.
    fn from_str(s: &str) -> Result<MismatchedTokens, String> {
        match s {
            "full-consistency" => Ok(MismatchedTokens::FullConsistency),
            "min-latency" => Ok(MismatchedTokens::MinLatency),
            "error" => Ok(MismatchedTokens::Error),
            other => Err(format!(
                "unknown mismatched token behaviour {other:?}: expected full-consistency, \
                 min-latency or error"
            )),
        }
    }
}

/// Picks the revision a read runs at.
///
/// A token from another datastore cannot be compared with our revisions: `at_least_as_fresh`
/// then does what `mismatched` says, and `at_exact_snapshot` is refused whatever it says.
///
/// On a datastore several nodes share, a token may name a revision another node committed
/// that this node has not replayed yet: the read waits for it (bounded: see
/// [`Datastore::refresh`]); `fully_consistent` first reads the datastore's head and waits for
/// that. `minimize_latency` reads this node's head, which follows the others closely.
pub fn choose_revision(
    store: &dyn Datastore,
    requirement: &Requirement,
    mismatched: MismatchedTokens,
) -> Result<Revision, ConsistencyError> {
    let head = store.head_revision()?;
    match requirement {
        Requirement::MinimizeLatency => Ok(head),
        Requirement::FullyConsistent => Ok(store.refresh(None)?),
        Requirement::AtLeastAsFresh(token) => match decode_token(token, store.unique_id())? {
            Some(rev) => {
                let head = if rev > head {
                    store.refresh(Some(rev))?
                } else {
                    head
                };
                if rev > head {
                    return Err(ConsistencyError::TokenInFuture {
                        revision: rev,
                        head,
                    });
                }
                Ok(head)
            }
            None => match mismatched {
                MismatchedTokens::FullConsistency => {
                    tracing::debug!("a token from another datastore; reading at the head");
                    Ok(store.refresh(None)?)
                }
                MismatchedTokens::MinLatency => Ok(head),
                MismatchedTokens::Error => Err(ConsistencyError::MismatchedToken),
            },
        },
        Requirement::AtExactSnapshot(token) => match decode_token(token, store.unique_id())? {
            Some(rev) => {
                reach(store, rev)?;
                Ok(rev)
            }
            None => Err(ConsistencyError::ForeignToken),
        },
    }
}

/// Could choosing the revision for `requirement` wait for the datastore? Only on a datastore
/// several nodes share ([`Datastore::shared`]): a full-consistency read (which reads its
/// head), or a token past this node's head (which it waits for). A caller on an async
/// executor runs such a read on the blocking pool.
pub fn may_wait(store: &dyn Datastore, requirement: &Requirement) -> bool {
    if !store.shared() {
        return false;
    }
    let past_head = |token: &str| match decode_token(token, store.unique_id()) {
        Ok(Some(rev)) => store.head_revision().is_ok_and(|head| rev > head),
        // another datastore's token may be read at the head (full consistency)
        Ok(None) => true,
        Err(_) => false,
    };
    match requirement {
        Requirement::MinimizeLatency => false,
        Requirement::FullyConsistent => true,
        Requirement::AtLeastAsFresh(token) | Requirement::AtExactSnapshot(token) => {
            past_head(token)
        }
    }
}

/// Makes sure `rev` (an exact snapshot's, or a cursor's) can be read here: on a shared
/// datastore, waits for this node to reach it first (see [`Datastore::refresh`]); then fails
/// if it is past the head or below the garbage-collection horizon.
pub fn reach(store: &dyn Datastore, rev: Revision) -> Result<(), ConsistencyError> {
    if rev > store.head_revision()? {
        store.refresh(Some(rev))?;
    }
    store.check_revision(rev)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectRef, Relationship, SubjectRef, Timestamp};
    use crate::store::{MemoryStore, RelationshipUpdate, UpdateOp};

    fn write_one(store: &MemoryStore, id: &str) -> Revision {
        let rel = Relationship::new(
            ObjectRef::new("document", id),
            "viewer",
            SubjectRef::object("user", "ann"),
        );
        store
            .write_relationships(
                &[],
                &[RelationshipUpdate {
                    op: UpdateOp::Create,
                    relationship: rel,
                }],
                Timestamp::now(),
            )
            .unwrap()
    }

    #[test]
    fn revision_choice() {
        let store = MemoryStore::new();
        let r1 = write_one(&store, "a");
        let t1 = encode_token(r1, store.unique_id());
        let r2 = write_one(&store, "b");
        assert_eq!(
            choose_revision(
                &store,
                &Requirement::MinimizeLatency,
                MismatchedTokens::default()
            )
            .unwrap(),
            r2
        );
        assert_eq!(
            choose_revision(
                &store,
                &Requirement::FullyConsistent,
                MismatchedTokens::default()
            )
            .unwrap(),
            r2
        );
        assert_eq!(
            choose_revision(
                &store,
                &Requirement::AtLeastAsFresh(t1.clone()),
                MismatchedTokens::default()
            )
            .unwrap(),
            r2
        );
        assert_eq!(
            choose_revision(
                &store,
                &Requirement::AtExactSnapshot(t1),
                MismatchedTokens::default()
            )
            .unwrap(),
            r1
        );
        let foreign = encode_token(r1, "someotherstore00");
        assert_eq!(
            choose_revision(
                &store,
                &Requirement::AtLeastAsFresh(foreign.clone()),
                MismatchedTokens::default()
            )
            .unwrap(),
            r2
        );
        assert!(matches!(
            choose_revision(
                &store,
                &Requirement::AtExactSnapshot(foreign.clone()),
                MismatchedTokens::default()
            ),
            Err(ConsistencyError::ForeignToken)
        ));
        for t in [foreign.as_str(), "GhUKEzE3MDAwMDAwMDAwMDAwMDAwMDA="] {
            let fresh = Requirement::AtLeastAsFresh(t.to_string());
            assert_eq!(
                choose_revision(&store, &fresh, MismatchedTokens::MinLatency).unwrap(),
                r2
            );
            assert!(matches!(
                choose_revision(&store, &fresh, MismatchedTokens::Error),
                Err(ConsistencyError::MismatchedToken)
            ));
        }
        let future = encode_token(Revision(r2.0 + 5), store.unique_id());
        assert!(matches!(
            choose_revision(
                &store,
                &Requirement::AtLeastAsFresh(future),
                MismatchedTokens::default()
            ),
            Err(ConsistencyError::TokenInFuture { .. })
        ));
        assert!(matches!(
            choose_revision(
                &store,
                &Requirement::AtLeastAsFresh("!!".into()),
                MismatchedTokens::default()
            ),
            Err(ConsistencyError::MalformedToken(_))
        ));
    }

    /// Only a shared datastore's reads may wait: a full-consistency read, or a token past
    /// the node's head until the node has it.
    #[test]
    fn only_a_shared_datastore_may_wait() {
        let memory = MemoryStore::new();
        let t = encode_token(write_one(&memory, "a"), memory.unique_id());
        for r in [
            Requirement::FullyConsistent,
            Requirement::AtLeastAsFresh(t.clone()),
            Requirement::AtExactSnapshot(t),
        ] {
            assert!(!may_wait(&memory, &r));
        }

        let Some(uri) = crate::store::postgres_test_schema_uri() else {
            return;
        };
        crate::store::migrate_postgres(&uri, &crate::store::PostgresTls::default()).unwrap();
        let slow = crate::store::PostgresOptions {
            follow_interval: std::time::Duration::from_secs(3600),
            ..crate::store::PostgresOptions::default()
        };
        let a = crate::store::PostgresStore::open_with(&uri, slow.clone()).unwrap();
        let b = crate::store::PostgresStore::open_with(&uri, slow).unwrap();
        let written = a
            .write_relationships(
                &[],
                &[RelationshipUpdate {
                    op: UpdateOp::Create,
                    relationship: Relationship::new(
                        ObjectRef::new("document", "a"),
                        "viewer",
                        SubjectRef::object("user", "ann"),
                    ),
                }],
                Timestamp::now(),
            )
            .unwrap();
        let token = encode_token(written, a.unique_id());
        let fresh = Requirement::AtLeastAsFresh(token);
        assert!(may_wait(&b, &fresh), "b is behind the token");
        assert!(!may_wait(&a, &fresh), "a wrote it");
        assert!(may_wait(&a, &Requirement::FullyConsistent));
        assert!(!may_wait(&b, &Requirement::MinimizeLatency));
        assert_eq!(
            choose_revision(&b, &fresh, MismatchedTokens::default()).unwrap(),
            written
        );
        assert!(!may_wait(&b, &fresh), "b has caught up");
    }
}
