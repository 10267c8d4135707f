//! The benchmark workload: a seeded document-sharing data set and the queries asked of it.
//!
//! A data set at any scale S (users, nested groups, a folder tree, documents) and the query ids
//! that `pemba-bench` and the criterion benches ask about. Model types only, no proto. This file
//! is part of the `pemba-bench` binary; the benches include it with `#[path]`.
//!
//! At scale S: 1000·S users; 100·S groups of 10–30 random users, 30% of them (from the second
//! on) also holding one lower-numbered group's members; 200·S folders, 90% (from the second on)
//! with a lower-numbered parent, each with an owner and half with a group viewer; 5000·S
//! documents, each with a parent folder, an owner, 0–3 editors (a user or a group's members),
//! 0–5 user viewers, 2% public (`user:*`), 1% with one banned user. About 33,000·S
//! relationships, every one distinct. The same `(scale, seed)` always gives the same data and
//! the same queries.

#![allow(
    dead_code,
    reason = "pemba-bench and each criterion bench use a different subset"
)]

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng as _, SeedableRng as _};

use pemba::model::{ObjectRef, Relationship, SubjectRef};

/// The workload's schema (document sharing).
pub fn schema() -> &'static str {
    SCHEMA
}

const SCHEMA: &str = "definition user {}

definition group {
    relation member: user | group#member
}

definition folder {
    relation parent: folder
    relation owner: user
    relation editor: user | group#member
    relation viewer: user | group#member | user:*
    permission edit = owner + editor + parent->edit
    permission view = viewer + edit + parent->view
}

definition document {
    relation parent: folder
    relation owner: user
    relation editor: user | group#member
    relation viewer: user | group#member | user:*
    relation banned: user
    permission edit = owner + editor + parent->edit
    permission view = (viewer + edit + parent->view) - banned
}
";

/// How many objects of each type a scale has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// `user:u0` … `user:u{users-1}`
    pub users: usize,
    /// `group:g0` …
    pub groups: usize,
    /// `folder:f0` …
    pub folders: usize,
    /// `document:d0` …
    pub documents: usize,
}

/// The object counts at `scale` (a scale of 0 counts as 1).
pub fn sizes(scale: u32) -> Sizes {
    let s = scale.max(1) as usize;
    Sizes {
        users: 1000 * s,
        groups: 100 * s,
        folders: 200 * s,
        documents: 5000 * s,
    }
}

/// The id of user number `i`.
pub fn user_id(i: usize) -> String {
    format!("u{i}")
}

/// The id of group number `i`.
pub fn group_id(i: usize) -> String {
    format!("g{i}")
}

/// The id of folder number `i`.
pub fn folder_id(i: usize) -> String {
    format!("f{i}")
}

/// The id of document number `i`.
pub fn document_id(i: usize) -> String {
    format!("d{i}")
}

/// `user:u{i}`.
pub fn user(i: usize) -> SubjectRef {
    SubjectRef::object("user", user_id(i))
}

/// `document:d{i}`.
pub fn document(i: usize) -> ObjectRef {
    ObjectRef::new("document", document_id(i))
}

fn group_members(i: usize) -> SubjectRef {
    SubjectRef {
        object: ObjectRef::new("group", group_id(i)),
        relation: Some("member".to_string()),
    }
}

fn rel(res_type: &str, res_id: String, relation: &str, subject: SubjectRef) -> Relationship {
    Relationship::new(ObjectRef::new(res_type, res_id), relation, subject)
}

/// Every relationship of the workload at `scale` with `seed`, in generation order (groups,
/// folders, documents; each object's relationships together). No two are the same tuple.
pub fn relationships(scale: u32, seed: u64) -> Vec<Relationship> {
    let n = sizes(scale);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(33_500 * scale.max(1) as usize);

    for g in 0..n.groups {
        let k = rng.random_range(10..=30).min(n.users);
        for u in sample(&mut rng, n.users, k) {
            out.push(rel("group", group_id(g), "member", user(u)));
        }
        if g > 0 && rng.random_bool(0.3) {
            let inner = rng.random_range(0..g);
            out.push(rel("group", group_id(g), "member", group_members(inner)));
        }
    }

    for f in 0..n.folders {
        if f > 0 && rng.random_bool(0.9) {
            let parent = rng.random_range(0..f);
            let subject = SubjectRef::object("folder", folder_id(parent));
            out.push(rel("folder", folder_id(f), "parent", subject));
        }
        let owner = rng.random_range(0..n.users);
        out.push(rel("folder", folder_id(f), "owner", user(owner)));
        if rng.random_bool(0.5) {
            let g = rng.random_range(0..n.groups);
            out.push(rel("folder", folder_id(f), "viewer", group_members(g)));
        }
    }

    for d in 0..n.documents {
        let id = document_id(d);
        let folder = rng.random_range(0..n.folders);
        let parent = SubjectRef::object("folder", folder_id(folder));
        out.push(rel("document", id.clone(), "parent", parent));
        let owner = rng.random_range(0..n.users);
        out.push(rel("document", id.clone(), "owner", user(owner)));

        // editors: distinct users and distinct groups
        let editors = rng.random_range(0..=3usize);
        let mut editor_users = Vec::new();
        let mut editor_groups = Vec::new();
        for _ in 0..editors {
            if rng.random_bool(0.5) {
                let u = rng.random_range(0..n.users);
                if !editor_users.contains(&u) {
                    editor_users.push(u);
                }
            } else {
                let g = rng.random_range(0..n.groups);
                if !editor_groups.contains(&g) {
                    editor_groups.push(g);
                }
            }
        }
        for u in editor_users {
            out.push(rel("document", id.clone(), "editor", user(u)));
        }
        for g in editor_groups {
            out.push(rel("document", id.clone(), "editor", group_members(g)));
        }

        let viewers = rng.random_range(0..=5usize).min(n.users);
        for u in sample(&mut rng, n.users, viewers) {
            out.push(rel("document", id.clone(), "viewer", user(u)));
        }
        if rng.random_bool(0.02) {
            out.push(rel(
                "document",
                id.clone(),
                "viewer",
                SubjectRef::object("user", "*"),
            ));
        }
        if rng.random_bool(0.01) {
            let banned = rng.random_range(0..n.users);
            out.push(rel("document", id, "banned", user(banned)));
        }
    }
    out
}

/// The query stream's generator: seeded from `seed` but independent of the data's stream, so
/// the queries are the same whether or not the data was just generated.
fn query_rng(seed: u64, salt: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `n` random `(document, user)` pairs to check `document#view` for.
pub fn check_pairs(scale: u32, seed: u64, n: usize) -> Vec<(ObjectRef, SubjectRef)> {
    let sz = sizes(scale);
    let mut rng = query_rng(seed, 1);
    (0..n)
        .map(|_| {
            let d = rng.random_range(0..sz.documents);
            let u = rng.random_range(0..sz.users);
            (document(d), user(u))
        })
        .collect()
}

/// `n` random users to look up `document#view` resources for.
pub fn lookup_resources_users(scale: u32, seed: u64, n: usize) -> Vec<SubjectRef> {
    let sz = sizes(scale);
    let mut rng = query_rng(seed, 2);
    (0..n)
        .map(|_| user(rng.random_range(0..sz.users)))
        .collect()
}

/// `n` random documents to look up `document#view` users for.
pub fn lookup_subjects_documents(scale: u32, seed: u64, n: usize) -> Vec<ObjectRef> {
    let sz = sizes(scale);
    let mut rng = query_rng(seed, 3);
    (0..n)
        .map(|_| document(rng.random_range(0..sz.documents)))
        .collect()
}

/// A `(document, user)` pair that holds `document#viewer` directly, if the data has one.
pub fn direct_viewer_pair(rels: &[Relationship]) -> Option<(ObjectRef, SubjectRef)> {
    rels.iter()
        .find(|r| {
            r.resource.object_type == "document"
                && r.relation == "viewer"
                && r.subject.relation.is_none()
                && !r.subject.is_wildcard()
        })
        .map(|r| (r.resource.clone(), r.subject.clone()))
}

/// A `(document, user)` pair whose `document#view` holds only through the document's folder
/// ancestry and a nested group: the user is a member of a group nested in a group that views
/// an ancestor folder of the document (at least two folder hops up), and has no direct
/// relation to the document. `None` if the data has no such pair.
pub fn nested_viewer_pair(rels: &[Relationship]) -> Option<(ObjectRef, SubjectRef)> {
    use std::collections::HashMap;
    let mut folder_parent: HashMap<&str, &str> = HashMap::new();
    let mut folder_group: HashMap<&str, &str> = HashMap::new();
    let mut nested: HashMap<&str, &str> = HashMap::new();
    let mut direct_user: HashMap<&str, &str> = HashMap::new();
    let mut on_document: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut doc_parent: Vec<(&str, &str)> = Vec::new();
    for r in rels {
        let id = r.resource.object_id.as_str();
        let sid = r.subject.object.object_id.as_str();
        match (r.resource.object_type.as_str(), r.relation.as_str()) {
            ("folder", "parent") => {
                folder_parent.insert(id, sid);
            }
            ("folder", "viewer") if r.subject.relation.is_some() => {
                folder_group.insert(id, sid);
            }
            ("group", "member") if r.subject.relation.is_some() => {
                nested.insert(id, sid);
            }
            ("group", "member") => {
                direct_user.entry(id).or_insert(sid);
            }
            ("document", "parent") => doc_parent.push((id, sid)),
            ("document", _) => on_document.entry(id).or_default().push(sid),
            _ => {}
        }
    }
    for (doc, folder) in doc_parent {
        // climb at least two folders before looking for a group viewer
        let Some(up1) = folder_parent.get(folder) else {
            continue;
        };
        let Some(up2) = folder_parent.get(up1) else {
            continue;
        };
        let mut f = *up2;
        for _ in 0..64 {
            if let Some(outer) = folder_group.get(f)
                && let Some(inner) = nested.get(outer)
                && let Some(u) = direct_user.get(inner)
                && !on_document.get(doc).is_some_and(|s| s.contains(u))
                && !on_document.get(doc).is_some_and(|s| s.contains(&"*"))
            {
                return Some((
                    ObjectRef::new("document", doc),
                    SubjectRef::object("user", *u),
                ));
            }
            match folder_parent.get(f) {
                Some(p) => f = p,
                None => break,
            }
        }
    }
    None
}

// The imports are inside the tests: the criterion benches include this file with `cfg(test)`
// set but without a test harness, which drops the `#[test]` functions.
#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_distinct_and_about_33k_per_scale() {
        use super::*;
        use std::collections::HashSet;

        let a = relationships(1, 42);
        let b = relationships(1, 42);
        assert_eq!(a, b);
        assert!((30_000..36_000).contains(&a.len()), "{}", a.len());
        let keys: HashSet<_> = a.iter().map(Relationship::key).collect();
        assert_eq!(keys.len(), a.len());
        assert_ne!(a, relationships(1, 43));
        assert!(pemba::schema::compile(schema()).is_ok());
    }

    #[test]
    fn pickers_find_pairs() {
        use super::*;

        let rels = relationships(1, 42);
        assert!(direct_viewer_pair(&rels).is_some());
        assert!(nested_viewer_pair(&rels).is_some());
        assert_eq!(check_pairs(1, 42, 10), check_pairs(1, 42, 10));
        assert_eq!(lookup_resources_users(1, 7, 3).len(), 3);
        assert_eq!(lookup_subjects_documents(1, 7, 3).len(), 3);
    }
}
