//! The engine's data-driven tests, the way SpiceDB tests itself: YAML cases, cross-checked.
//!
//! Data-driven YAML cases (`tests/cases/*.yaml`: schema, relationships, assertions) each loaded
//! into a `MemoryStore` (and once into a `RocksStore`, and a `PostgresStore` when the run has
//! PostgreSQL), with every assertion checked AND a
//! cross-check that Check, CheckBulk, LookupResources, LookupSubjects and Expand agree with each
//! other over every resource × relation/permission × subject in the data; plus a property test
//! that generates small schemas and relationships and checks the engine against a naive
//! fixpoint evaluator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use pemba::engine::{
    Engine, EngineConfig, EngineError, ExpandTree, Permissionship, ResolvedSubject, SetOperation,
    Snapshot,
};
use pemba::model::{
    Context, ObjectRef, Relationship, Revision, SubjectRef, Timestamp, parse_relationship,
};
use pemba::schema::CompiledSchema;
use pemba::store::{
    Datastore, MemoryStore, PostgresStore, RelationshipUpdate, RocksStore, UpdateOp,
};

// ---------------------------------------------------------------------------------------------
// YAML cases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for readers of the case file")]
    description: String,
    schema: String,
    #[serde(default)]
    relationships: String,
    #[serde(default)]
    assertions: Assertions,
    /// the engine's depth budget for this case (default 50)
    #[serde(default, rename = "maxDepth")]
    max_depth: Option<u32>,
    /// exact LookupResources answers: `query: type#permission@subject`, `expect: [id, id?]`
    #[serde(default, rename = "lookupResources")]
    lookup_resources: Vec<Expectation>,
    /// exact LookupSubjects answers: `query: type:id#permission@subject_type[#relation]`,
    /// `expect: [id, id?, "*-excluded-other?"]` (`?` marks a conditional result)
    #[serde(default, rename = "lookupSubjects")]
    lookup_subjects: Vec<Expectation>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Assertions {
    #[serde(default, rename = "assertTrue")]
    has: Vec<String>,
    #[serde(default, rename = "assertFalse")]
    no: Vec<String>,
    #[serde(default, rename = "assertCaveated")]
    caveated: Vec<String>,
    #[serde(default, rename = "assertMaxDepthExceeded")]
    max_depth: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    query: String,
    expect: Vec<String>,
}

/// `tests/cases`, or `PEMBA_CASES_DIR` (to run ad-hoc cases).
fn cases_dir() -> PathBuf {
    match std::env::var_os("PEMBA_CASES_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("cases"),
    }
}

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/cases exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `tuple` or `tuple with {json}`.
fn parse_assertion(s: &str) -> Result<(Relationship, Context), String> {
    let (tuple, ctx) = match s.split_once(" with ") {
        Some((t, c)) => {
            let v: serde_json::Value =
                serde_json::from_str(c).map_err(|e| format!("bad context in `{s}`: {e}"))?;
            match v {
                serde_json::Value::Object(m) => (t, m),
                _ => return Err(format!("context of `{s}` is not an object")),
            }
        }
        None => (s, Context::new()),
    };
    let rel = parse_relationship(tuple).map_err(|e| e.to_string())?;
    Ok((rel, ctx))
}

/// Every relationship must fit the schema (catches typos in case files).
fn validate_relationships(schema: &CompiledSchema, rels: &[Relationship]) -> Result<(), String> {
    for r in rels {
        let def = schema
            .definition(&r.resource.object_type)
            .ok_or_else(|| format!("`{r}`: no definition `{}`", r.resource.object_type))?;
        let rel = def
            .relation(&r.relation)
            .ok_or_else(|| format!("`{r}`: no relation `{}`", r.relation))?;
        if !rel.allows(
            &r.subject.object.object_type,
            r.subject.relation.as_deref(),
            r.subject.is_wildcard(),
            r.caveat.as_ref().map(|c| c.name.as_str()),
            r.expires_at.is_some(),
        ) {
            return Err(format!("`{r}`: subject type not allowed by the schema"));
        }
    }
    Ok(())
}

fn load(store: &dyn Datastore, rels: &[Relationship], now: Timestamp) -> Revision {
    let updates: Vec<RelationshipUpdate> = rels
        .iter()
        .map(|r| RelationshipUpdate {
            op: UpdateOp::Touch,
            relationship: r.clone(),
        })
        .collect();
    for chunk in updates.chunks(500) {
        store
            .write_relationships(&[], chunk, now)
            .expect("write relationships");
    }
    store.head_revision().expect("head revision")
}

fn perm_str(p: Permissionship) -> &'static str {
    match p {
        Permissionship::NoPermission => "NO_PERMISSION",
        Permissionship::HasPermission => "HAS_PERMISSION",
        Permissionship::ConditionalPermission => "CONDITIONAL_PERMISSION",
    }
}

fn err_kind(e: &EngineError) -> String {
    match e {
        EngineError::MaxDepthExceeded { .. } => "MaxDepthExceeded".into(),
        other => format!("{other:?}"),
    }
}

fn render_resource(r: &pemba::engine::LookupResult) -> String {
    let mut s = r.resource_id.clone();
    if r.permissionship == Permissionship::ConditionalPermission {
        s.push('?');
    }
    s
}

fn render_subject(r: &ResolvedSubject) -> String {
    let mut s = r.subject_id.clone();
    if r.permissionship == Permissionship::ConditionalPermission {
        s.push('?');
    }
    for e in &r.excluded_subjects {
        s.push('-');
        s.push_str(&e.subject_id);
        if e.permissionship == Permissionship::ConditionalPermission {
            s.push('?');
        }
    }
    s
}

fn run_case(path: &Path) -> Vec<String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).expect("read case");
    let case: Case = match serde_yaml_ng::from_str(&text) {
        Ok(c) => c,
        Err(e) => return vec![format!("{name}: bad YAML: {e}")],
    };
    let schema = match pemba::schema::compile(&case.schema) {
        Ok(s) => s,
        Err(e) => return vec![format!("{name}: schema does not compile: {e}")],
    };
    let mut rels = Vec::new();
    for line in case.relationships.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        match parse_relationship(line) {
            Ok(r) => rels.push(r),
            Err(e) => return vec![format!("{name}: {e}")],
        }
    }
    if let Err(e) = validate_relationships(&schema, &rels) {
        return vec![format!("{name}: {e}")];
    }
    let config = EngineConfig {
        max_depth: case.max_depth.unwrap_or(50),
        ..EngineConfig::default()
    };
    let engine = Engine::new(config.clone());
    let now = Timestamp::now();
    let store = MemoryStore::new();
    let rev = load(&store, &rels, now);
    let snap = Snapshot::new(&store, &schema, rev, now);

    let mut failures = Vec::new();
    let label = format!("{name} (memory)");
    check_assertions(&engine, &snap, &case, &label, &mut failures);
    check_expectations(&engine, &snap, &case, &label, &mut failures);
    let world = World::new(&engine, snap, &schema, &rels);
    let memory_answers = world.consistency(&label, &mut failures);
    if let (Some(dir), Some(d)) = (std::env::var_os("PEMBA_CASES_DUMP"), &world.dump) {
        let out = Path::new(&dir).join(format!("{name}.json"));
        std::fs::write(
            out,
            serde_json::Value::Array(d.borrow().clone()).to_string(),
        )
        .expect("write dump");
    }

    // The general checker alone (the fast path off) gives every check the same answer, and
    // every assertion holds with it too.
    let general = Engine::new(EngineConfig {
        fast_path: false,
        ..config
    });
    let glabel = format!("{name} (general checker)");
    check_assertions(&general, &snap, &case, &glabel, &mut failures);
    let gworld = World::new(&general, snap, &schema, &rels);
    same_answers(
        &gworld,
        &memory_answers,
        &glabel,
        ("with the fast path", "without"),
        &mut failures,
    );

    // Once more on RocksDB: same assertions, same answers.
    let dir = tempfile::tempdir().expect("temp dir");
    let rocks = RocksStore::open(dir.path()).expect("open rocks");
    let rrev = load(&rocks, &rels, now);
    let rsnap = Snapshot::new(&rocks, &schema, rrev, now);
    let rlabel = format!("{name} (rocksdb)");
    check_assertions(&engine, &rsnap, &case, &rlabel, &mut failures);
    let rworld = World::new(&engine, rsnap, &schema, &rels);
    same_answers(
        &rworld,
        &memory_answers,
        &rlabel,
        ("memory store says", "rocksdb says"),
        &mut failures,
    );

    // And on PostgreSQL, when the run has one (`.ci/run` starts it).
    if let Some(uri) = pemba::store::postgres_test_schema_uri() {
        pemba::store::migrate_postgres(&uri, &pemba::store::PostgresTls::default())
            .expect("migrate");
        let pg = PostgresStore::open(&uri).expect("open postgres");
        let prev = load(&pg, &rels, now);
        let psnap = Snapshot::new(&pg, &schema, prev, now);
        let plabel = format!("{name} (postgres)");
        check_assertions(&engine, &psnap, &case, &plabel, &mut failures);
        let pworld = World::new(&engine, psnap, &schema, &rels);
        same_answers(
            &pworld,
            &memory_answers,
            &plabel,
            ("memory store says", "postgres says"),
            &mut failures,
        );
    }
    failures
}

/// Records every check of `answers` that `world` answers differently; `says` names the two
/// sides in the message.
fn same_answers(
    world: &World<'_>,
    answers: &BTreeMap<Key, String>,
    label: &str,
    says: (&str, &str),
    failures: &mut Vec<String>,
) {
    for (key, want) in answers {
        let got = world.check(&key.0, &key.1, &key.2);
        if got != *want {
            failures.push(format!(
                "{label}: check {}#{}@{}: {} {want}, {} {got}",
                key.0, key.1, key.2, says.0, says.1
            ));
        }
    }
}

fn check_assertions(
    engine: &Engine,
    snap: &Snapshot<'_>,
    case: &Case,
    label: &str,
    failures: &mut Vec<String>,
) {
    let groups: [(&Vec<String>, &str); 4] = [
        (&case.assertions.has, "HAS_PERMISSION"),
        (&case.assertions.no, "NO_PERMISSION"),
        (&case.assertions.caveated, "CONDITIONAL_PERMISSION"),
        (&case.assertions.max_depth, "MaxDepthExceeded"),
    ];
    for (list, want) in groups {
        for a in list {
            let (rel, context) = match parse_assertion(a) {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let req = pemba::engine::CheckRequest {
                resource: rel.resource.clone(),
                permission: rel.relation.clone(),
                subject: rel.subject.clone(),
                context,
                with_tracing: false,
            };
            let got = match engine.check(snap, &req) {
                Ok(r) => perm_str(r.permissionship).to_string(),
                Err(e) => err_kind(&e),
            };
            if got != want {
                failures.push(format!(
                    "{label}: assertion `{a}`: expected {want}, got {got}"
                ));
            }
        }
    }
}

fn check_expectations(
    engine: &Engine,
    snap: &Snapshot<'_>,
    case: &Case,
    label: &str,
    failures: &mut Vec<String>,
) {
    for e in &case.lookup_resources {
        // `type#permission@subject`
        let Some((left, subject)) = e.query.split_once('@') else {
            failures.push(format!("{label}: bad lookupResources query `{}`", e.query));
            continue;
        };
        let Some((rtype, perm)) = left.split_once('#') else {
            failures.push(format!("{label}: bad lookupResources query `{}`", e.query));
            continue;
        };
        let subject = match parse_relationship(&format!("x:x#x@{subject}")) {
            Ok(r) => r.subject,
            Err(err) => {
                failures.push(format!("{label}: {err}"));
                continue;
            }
        };
        let got = match engine.lookup_resources(snap, rtype, perm, &subject, &Context::new()) {
            Ok(v) => v.iter().map(render_resource).collect::<Vec<_>>(),
            Err(err) => vec![err_kind(&err)],
        };
        if got != e.expect {
            failures.push(format!(
                "{label}: lookupResources `{}`: expected {:?}, got {:?}",
                e.query, e.expect, got
            ));
        }
    }
    for e in &case.lookup_subjects {
        // `type:id#permission@subject_type[#relation]`
        let parsed = e
            .query
            .split_once('@')
            .and_then(|(l, r)| Some((parse_relationship(&format!("{l}@x:x")).ok()?, r)));
        let Some((rel, subject)) = parsed else {
            failures.push(format!("{label}: bad lookupSubjects query `{}`", e.query));
            continue;
        };
        let (stype, srel) = match subject.split_once('#') {
            Some((t, r)) => (t, Some(r)),
            None => (subject, None),
        };
        let got = match engine.lookup_subjects(
            snap,
            &rel.resource,
            &rel.relation,
            stype,
            srel,
            &Context::new(),
        ) {
            Ok(v) => v.iter().map(render_subject).collect::<Vec<_>>(),
            Err(err) => vec![err_kind(&err)],
        };
        if got != e.expect {
            failures.push(format!(
                "{label}: lookupSubjects `{}`: expected {:?}, got {:?}",
                e.query, e.expect, got
            ));
        }
    }
}

#[test]
fn yaml_cases() {
    let files = case_files();
    if std::env::var_os("PEMBA_CASES_DIR").is_none() {
        assert!(
            files.len() >= 25,
            "expected at least 25 case files, found {}",
            files.len()
        );
    }
    let mut failures = Vec::new();
    for f in &files {
        failures.extend(run_case(f));
    }
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(60).collect();
        panic!(
            "{} failure(s) in {} case files:\n{}",
            failures.len(),
            files.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-API consistency
// ---------------------------------------------------------------------------------------------

/// Everything in the data, and the answers of Check over it.
struct World<'a> {
    engine: &'a Engine,
    snap: Snapshot<'a>,
    schema: &'a CompiledSchema,
    /// every object mentioned (not wildcards)
    objects: BTreeSet<ObjectRef>,
    /// plain objects, one never-mentioned object per wildcard type, and every subject set
    subjects: Vec<SubjectRef>,
    /// types whose wildcard appears in the data
    wildcard_types: BTreeSet<String>,
    /// any caveat in the data?
    caveated: bool,
    /// when set (`PEMBA_CASES_DUMP`), every query and answer, for comparing with SpiceDB
    dump: Option<std::cell::RefCell<Vec<serde_json::Value>>>,
}

type Key = (ObjectRef, String, SubjectRef);

impl<'a> World<'a> {
    fn new(
        engine: &'a Engine,
        snap: Snapshot<'a>,
        schema: &'a CompiledSchema,
        rels: &[Relationship],
    ) -> World<'a> {
        let mut objects = BTreeSet::new();
        let mut subject_sets = BTreeSet::new();
        let mut wildcard_types = BTreeSet::new();
        let mut caveated = false;
        for r in rels {
            objects.insert(r.resource.clone());
            caveated |= r.caveat.is_some();
            if r.subject.is_wildcard() {
                wildcard_types.insert(r.subject.object.object_type.clone());
                continue;
            }
            objects.insert(r.subject.object.clone());
            if r.subject.relation.is_some() {
                subject_sets.insert(r.subject.clone());
            }
        }
        let mut subjects: Vec<SubjectRef> = objects
            .iter()
            .map(|o| SubjectRef::object(o.object_type.clone(), o.object_id.clone()))
            .collect();
        for t in &wildcard_types {
            subjects.push(SubjectRef::object(t.clone(), "never_mentioned"));
        }
        subjects.extend(subject_sets);
        World {
            engine,
            snap,
            schema,
            objects,
            subjects,
            wildcard_types,
            caveated,
            dump: std::env::var_os("PEMBA_CASES_DUMP").map(|_| Default::default()),
        }
    }

    fn record(&self, entry: serde_json::Value) {
        if let Some(d) = &self.dump {
            d.borrow_mut().push(entry);
        }
    }

    fn members(&self, type_name: &str) -> Vec<String> {
        match self.schema.definition(type_name) {
            Some(d) => d
                .relations
                .iter()
                .map(|r| r.name.clone())
                .chain(d.permissions.iter().map(|p| p.name.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    fn request(&self, o: &ObjectRef, m: &str, s: &SubjectRef) -> pemba::engine::CheckRequest {
        pemba::engine::CheckRequest {
            resource: o.clone(),
            permission: m.to_string(),
            subject: s.clone(),
            context: Context::new(),
            with_tracing: false,
        }
    }

    /// `HAS_PERMISSION`, `CONDITIONAL_PERMISSION[missing]`, `NO_PERMISSION` or an error kind.
    fn check(&self, o: &ObjectRef, m: &str, s: &SubjectRef) -> String {
        answer(self.engine.check(&self.snap, &self.request(o, m, s)))
    }

    /// Runs every cross-check; returns the Check answers.
    fn consistency(&self, label: &str, failures: &mut Vec<String>) -> BTreeMap<Key, String> {
        let mut answers: BTreeMap<Key, String> = BTreeMap::new();
        let mut keys: Vec<Key> = Vec::new();
        for o in &self.objects {
            for m in self.members(&o.object_type) {
                for s in &self.subjects {
                    keys.push((o.clone(), m.clone(), s.clone()));
                }
            }
        }
        for k in &keys {
            let a = self.check(&k.0, &k.1, &k.2);
            if a != "HAS_PERMISSION"
                && a != "NO_PERMISSION"
                && !a.starts_with("CONDITIONAL_PERMISSION")
                && a != "MaxDepthExceeded"
            {
                failures.push(format!(
                    "{label}: check {}#{}@{}: unexpected {a}",
                    k.0, k.1, k.2
                ));
            }
            answers.insert(k.clone(), a);
        }

        // CheckBulk answers item by item as Check does, except that (as in SpiceDB) items of
        // one resource type, permission and subject are evaluated together: when they are
        // several, a data cycle met anywhere fails all of them.
        let mut batch_sizes: BTreeMap<(String, String, SubjectRef), BTreeSet<String>> =
            BTreeMap::new();
        for k in &keys {
            batch_sizes
                .entry((k.0.object_type.clone(), k.1.clone(), k.2.clone()))
                .or_default()
                .insert(k.0.object_id.clone());
        }
        let reqs: Vec<_> = keys
            .iter()
            .map(|k| self.request(&k.0, &k.1, &k.2))
            .collect();
        let bulk = self.engine.check_bulk(&self.snap, &reqs);
        if bulk.len() != reqs.len() {
            failures.push(format!(
                "{label}: check_bulk returned {} answers for {}",
                bulk.len(),
                reqs.len()
            ));
        }
        for (k, b) in keys.iter().zip(bulk) {
            let b = answer(b);
            let single = &answers[k];
            let batched = batch_sizes
                .get(&(k.0.object_type.clone(), k.1.clone(), k.2.clone()))
                .is_some_and(|ids| ids.len() > 1);
            if &b != single && !(batched && b == "MaxDepthExceeded") {
                failures.push(format!(
                    "{label}: check_bulk {}#{}@{}: bulk says {b}, check says {single}",
                    k.0, k.1, k.2
                ));
            }
        }

        // A wildcard subject is refused.
        for t in &self.wildcard_types {
            if let Some(o) = self.objects.iter().next() {
                for m in self.members(&o.object_type).into_iter().take(1) {
                    let a = self.check(o, &m, &SubjectRef::object(t.clone(), "*"));
                    if a != "WildcardSubjectNotAllowed" {
                        failures.push(format!(
                            "{label}: check {o}#{m}@{t}:*: expected a refusal, got {a}"
                        ));
                    }
                }
            }
        }

        self.lookup_resources_agree(label, &answers, failures);
        self.lookup_subjects_agree(label, &answers, failures);
        if !self.caveated {
            self.expand_agrees(label, &answers, failures);
        }
        answers
    }

    fn lookup_resources_agree(
        &self,
        label: &str,
        answers: &BTreeMap<Key, String>,
        failures: &mut Vec<String>,
    ) {
        let types: BTreeSet<&String> = self.objects.iter().map(|o| &o.object_type).collect();
        for s in &self.subjects {
            // SpiceDB's Check lets a wildcard `t:*` match a subject set `t:x#r`, its
            // LookupResources does not: skip those subjects.
            if s.relation.is_some() && self.wildcard_types.contains(&s.object.object_type) {
                continue;
            }
            for t in &types {
                for m in self.members(t) {
                    let lr = self
                        .engine
                        .lookup_resources(&self.snap, t, &m, s, &Context::new());
                    self.record(serde_json::json!([
                        "lr",
                        t,
                        m,
                        s.to_string(),
                        match &lr {
                            Ok(v) => v.iter().map(render_resource).collect::<Vec<_>>(),
                            Err(e) => vec![err_kind(e)],
                        }
                    ]));
                    let lr = match lr {
                        Ok(v) => v,
                        Err(EngineError::MaxDepthExceeded { .. }) => continue,
                        Err(e) => {
                            failures
                                .push(format!("{label}: lookupResources {t}#{m}@{s}: error {e}"));
                            continue;
                        }
                    };
                    let mut found: BTreeMap<String, String> = BTreeMap::new();
                    let mut last: Option<String> = None;
                    for r in &lr {
                        if last.as_ref().is_some_and(|l| *l >= r.resource_id) {
                            failures.push(format!(
                                "{label}: lookupResources {t}#{m}@{s}: not sorted/unique at `{}`",
                                r.resource_id
                            ));
                        }
                        last = Some(r.resource_id.clone());
                        let a = match r.permissionship {
                            Permissionship::HasPermission => "HAS_PERMISSION".to_string(),
                            Permissionship::ConditionalPermission => {
                                format!("CONDITIONAL_PERMISSION{:?}", r.missing_context)
                            }
                            Permissionship::NoPermission => "NO_PERMISSION".to_string(),
                        };
                        found.insert(r.resource_id.clone(), a);
                    }
                    for o in self.objects.iter().filter(|o| &o.object_type == *t) {
                        let key = (o.clone(), m.clone(), s.clone());
                        let Some(want) = answers.get(&key) else {
                            continue;
                        };
                        let got = found.remove(&o.object_id);
                        let ok = match (want.as_str(), &got) {
                            ("NO_PERMISSION" | "MaxDepthExceeded", None) => true,
                            (w, Some(g)) => w == g,
                            _ => false,
                        };
                        if !ok {
                            failures.push(format!(
                                "{label}: lookupResources {t}#{m}@{s} for `{}`: check says {want}, lookup says {}",
                                o.object_id,
                                got.as_deref().unwrap_or("absent")
                            ));
                        }
                    }
                    for (id, _) in found {
                        failures.push(format!(
                            "{label}: lookupResources {t}#{m}@{s}: unknown resource `{id}`"
                        ));
                    }
                }
            }
        }
    }

    fn lookup_subjects_agree(
        &self,
        label: &str,
        answers: &BTreeMap<Key, String>,
        failures: &mut Vec<String>,
    ) {
        let kinds: BTreeSet<(String, Option<String>)> = self
            .subjects
            .iter()
            .map(|s| (s.object.object_type.clone(), s.relation.clone()))
            .collect();
        for o in &self.objects {
            for m in self.members(&o.object_type) {
                for (st, sr) in &kinds {
                    // SpiceDB's Check lets a wildcard `t:*` match a subject set `t:x#r`, its
                    // LookupSubjects does not: skip that combination.
                    if sr.is_some() && self.wildcard_types.contains(st) {
                        continue;
                    }
                    let ls = self.engine.lookup_subjects(
                        &self.snap,
                        o,
                        &m,
                        st,
                        sr.as_deref(),
                        &Context::new(),
                    );
                    self.record(serde_json::json!([
                        "ls",
                        o.to_string(),
                        m,
                        st,
                        sr,
                        match &ls {
                            Ok(v) => v.iter().map(render_subject).collect::<Vec<_>>(),
                            Err(e) => vec![err_kind(e)],
                        }
                    ]));
                    let ls = match ls {
                        Ok(v) => v,
                        Err(EngineError::MaxDepthExceeded { .. }) => continue,
                        Err(e) => {
                            failures
                                .push(format!("{label}: lookupSubjects {o}#{m}@{st}: error {e}"));
                            continue;
                        }
                    };
                    let wildcard = ls.iter().find(|r| r.subject_id == "*");
                    for s in self
                        .subjects
                        .iter()
                        .filter(|s| &s.object.object_type == st && &s.relation == sr)
                    {
                        let key = (o.clone(), m.clone(), s.clone());
                        let Some(want) = answers.get(&key) else {
                            continue;
                        };
                        let id = &s.object.object_id;
                        let listed = ls.iter().find(|r| &r.subject_id == id);
                        // As SpiceDB, a concrete subject may be listed (say conditional)
                        // beside a wildcard that covers it (say unconditionally): the answer is
                        // the better of the two.
                        let via_wildcard = wildcard.map(|w| {
                            match w.excluded_subjects.iter().find(|e| &e.subject_id == id) {
                                Some(e) if e.permissionship == Permissionship::HasPermission => {
                                    "NO_PERMISSION".to_string()
                                }
                                Some(e) => format!("CONDITIONAL_PERMISSION{:?}", e.missing_context),
                                None => resolved_answer(w),
                            }
                        });
                        let got = match (listed.map(resolved_answer), via_wildcard) {
                            (Some(a), Some(b)) => better_answer(a, b),
                            (Some(a), None) | (None, Some(a)) => a,
                            (None, None) => "NO_PERMISSION".to_string(),
                        };
                        let ok = if want == "MaxDepthExceeded" {
                            got == "NO_PERMISSION"
                        } else {
                            &got == want
                        };
                        if !ok {
                            failures.push(format!(
                                "{label}: lookupSubjects {o}#{m}@{st}{} for `{s}`: check says {want}, lookup says {got} ({:?})",
                                sr.as_ref().map(|r| format!("#{r}")).unwrap_or_default(),
                                ls.iter().map(render_subject).collect::<Vec<_>>()
                            ));
                        }
                    }
                }
            }
        }
    }

    fn expand_agrees(
        &self,
        label: &str,
        answers: &BTreeMap<Key, String>,
        failures: &mut Vec<String>,
    ) {
        for o in &self.objects {
            for m in self.members(&o.object_type) {
                let tree = match self.engine.expand(&self.snap, o, &m) {
                    Ok(t) => t,
                    Err(EngineError::MaxDepthExceeded { .. }) => continue,
                    Err(e) => {
                        failures.push(format!("{label}: expand {o}#{m}: error {e}"));
                        continue;
                    }
                };
                if tree.object() != o || tree.relation() != m {
                    failures.push(format!(
                        "{label}: expand {o}#{m}: root is {}#{}",
                        tree.object(),
                        tree.relation()
                    ));
                }
                for s in self.subjects.iter().filter(|s| s.relation.is_none()) {
                    let Some(want) = answers.get(&(o.clone(), m.clone(), s.clone())) else {
                        continue;
                    };
                    let naive = self.eval_tree(&tree, s);
                    let ok = matches!(
                        (want.as_str(), naive),
                        (_, None)
                            | ("MaxDepthExceeded", _)
                            | ("HAS_PERMISSION", Some(true))
                            | ("NO_PERMISSION", Some(false))
                    );
                    if !ok {
                        failures.push(format!("{label}: expand {o}#{m} evaluated for `{s}` gives {naive:?}, check says {want}"));
                    }
                }
            }
        }
    }

    /// Evaluates an expansion naively: leaf subject sets are asked of Check. `None`: unknown.
    fn eval_tree(&self, tree: &ExpandTree, s: &SubjectRef) -> Option<bool> {
        match tree {
            ExpandTree::Leaf { subjects, .. } => {
                let mut unknown = false;
                for x in subjects {
                    if x == s || (x.is_wildcard() && x.object.object_type == s.object.object_type) {
                        return Some(true);
                    }
                    if let Some(r) = &x.relation {
                        match self.check(&x.object, r, s).as_str() {
                            "HAS_PERMISSION" => return Some(true),
                            "NO_PERMISSION" => {}
                            _ => unknown = true,
                        }
                    }
                }
                if unknown { None } else { Some(false) }
            }
            ExpandTree::Intermediate {
                operation,
                children,
                ..
            } => {
                let vals: Vec<Option<bool>> =
                    children.iter().map(|c| self.eval_tree(c, s)).collect();
                match operation {
                    SetOperation::Union => {
                        if vals.contains(&Some(true)) {
                            Some(true)
                        } else if vals.contains(&None) {
                            None
                        } else {
                            Some(false)
                        }
                    }
                    SetOperation::Intersection => {
                        if vals.is_empty() || vals.contains(&Some(false)) {
                            Some(false)
                        } else if vals.contains(&None) {
                            None
                        } else {
                            Some(true)
                        }
                    }
                    SetOperation::Exclusion => {
                        let base = *vals.first()?;
                        let rest = &vals[1..];
                        match base {
                            Some(false) => Some(false),
                            None => None,
                            Some(true) => {
                                if rest.contains(&Some(true)) {
                                    Some(false)
                                } else if rest.contains(&None) {
                                    None
                                } else {
                                    Some(true)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn answer(r: Result<pemba::engine::CheckResult, EngineError>) -> String {
    match r {
        Ok(r) => match r.permissionship {
            Permissionship::ConditionalPermission => {
                format!("CONDITIONAL_PERMISSION{:?}", r.missing_context)
            }
            p => perm_str(p).to_string(),
        },
        Err(e) => err_kind(&e),
    }
}

/// The better of two answers for one subject: HAS over CONDITIONAL over NO; two conditional
/// answers need the missing context of either.
fn better_answer(a: String, b: String) -> String {
    if a == "HAS_PERMISSION" || b == "NO_PERMISSION" {
        return a;
    }
    if b == "HAS_PERMISSION" || a == "NO_PERMISSION" {
        return b;
    }
    let missing = |s: &str| -> Vec<String> {
        serde_json::from_str(s.trim_start_matches("CONDITIONAL_PERMISSION")).unwrap_or_default()
    };
    let mut all = missing(&a);
    all.extend(missing(&b));
    all.sort();
    all.dedup();
    format!("CONDITIONAL_PERMISSION{all:?}")
}

fn resolved_answer(r: &ResolvedSubject) -> String {
    match r.permissionship {
        Permissionship::ConditionalPermission => {
            format!("CONDITIONAL_PERMISSION{:?}", r.missing_context)
        }
        p => perm_str(p).to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random schemas and relationships against a naive fixpoint evaluator
// ---------------------------------------------------------------------------------------------

mod generated {
    use super::*;
    use proptest::prelude::*;

    const TYPES: [&str; 3] = ["res_a", "res_b", "res_c"];
    const IDS: [&str; 3] = ["a", "b", "c"];
    const USERS: [&str; 3] = ["u1", "u2", "u3"];

    /// A generated permission expression (independent of the crate's schema types).
    #[derive(Debug, Clone)]
    pub(super) enum GExpr {
        Nil,
        Name(&'static str),
        Arrow(&'static str, bool),
        Union(Vec<GExpr>),
        Inter(Vec<GExpr>),
        Excl(Box<GExpr>, Box<GExpr>),
    }

    impl GExpr {
        fn render(&self) -> String {
            match self {
                GExpr::Nil => "nil".into(),
                GExpr::Name(n) => (*n).into(),
                GExpr::Arrow(c, false) => format!("parent->{c}"),
                GExpr::Arrow(c, true) => format!("parent.all({c})"),
                GExpr::Union(v) => format!(
                    "({})",
                    v.iter().map(GExpr::render).collect::<Vec<_>>().join(" + ")
                ),
                GExpr::Inter(v) => format!(
                    "({})",
                    v.iter().map(GExpr::render).collect::<Vec<_>>().join(" & ")
                ),
                GExpr::Excl(a, b) => format!("({} - {})", a.render(), b.render()),
            }
        }
    }

    /// One resource type: allowed subject types of its four relations, and two permissions.
    #[derive(Debug, Clone)]
    pub(super) struct GType {
        /// `user` and/or `user:*`
        viewer: (bool, bool),
        /// `user`, and `res_x#member` for the chosen types
        member: (bool, Vec<usize>),
        /// `res_x` for the chosen types (non-empty)
        parent: Vec<usize>,
        /// `user`, `user:*`, `res_x#member`
        banned: (bool, bool, Vec<usize>),
        perm_a: GExpr,
        perm_b: GExpr,
    }

    #[derive(Debug, Clone)]
    pub(super) struct GRel {
        rtype: usize,
        rid: usize,
        relation: &'static str,
        subject: SubjectRef,
    }

    /// Leaves of `perm_a` (`for_b` false) or `perm_b` (true): relations, arrows to any member,
    /// and for `perm_b` also `perm_a` (never a permission naming itself: an alias cycle).
    fn leaf(for_b: bool) -> BoxedStrategy<GExpr> {
        let mut names = vec!["viewer", "member", "banned"];
        if for_b {
            names.push("perm_a");
        }
        prop_oneof![
            1 => Just(GExpr::Nil),
            4 => proptest::sample::select(names).prop_map(GExpr::Name),
            3 => (proptest::sample::select(vec!["viewer", "member", "perm_a", "perm_b"]), proptest::bool::weighted(0.3))
                .prop_map(|(c, all)| GExpr::Arrow(c, all)),
        ]
        .boxed()
    }

    fn expr(for_b: bool) -> BoxedStrategy<GExpr> {
        leaf(for_b)
            .prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 2..3).prop_map(GExpr::Union),
                    proptest::collection::vec(inner.clone(), 2..3).prop_map(GExpr::Inter),
                    (inner.clone(), inner).prop_map(|(a, b)| GExpr::Excl(Box::new(a), Box::new(b))),
                ]
            })
            .boxed()
    }

    fn type_indexes() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::btree_set(0..TYPES.len(), 0..3).prop_map(|s| s.into_iter().collect())
    }

    fn gtype() -> impl Strategy<Value = GType> {
        (
            prop_oneof![Just((true, false)), Just((false, true)), Just((true, true))],
            (any::<bool>(), type_indexes()),
            proptest::collection::btree_set(0..TYPES.len(), 1..3),
            (any::<bool>(), any::<bool>(), type_indexes()),
            expr(false),
            expr(true),
        )
            .prop_map(
                |(viewer, (mu, mt), parent, (bu, bw, bt), perm_a, perm_b)| GType {
                    viewer,
                    member: (mu || mt.is_empty(), mt),
                    parent: parent.into_iter().collect(),
                    banned: (bu || (!bw && bt.is_empty()), bw, bt),
                    perm_a,
                    perm_b,
                },
            )
    }

    pub(super) fn render_schema(types: &[GType]) -> String {
        let mut s = String::from("definition user {}\n\n");
        for (i, t) in types.iter().enumerate() {
            let mut viewer = Vec::new();
            if t.viewer.0 {
                viewer.push("user".to_string());
            }
            if t.viewer.1 {
                viewer.push("user:*".to_string());
            }
            let mut member = Vec::new();
            if t.member.0 {
                member.push("user".to_string());
            }
            for x in &t.member.1 {
                member.push(format!("{}#member", TYPES[*x]));
            }
            let parent: Vec<String> = t.parent.iter().map(|x| TYPES[*x].to_string()).collect();
            let mut banned = Vec::new();
            if t.banned.0 {
                banned.push("user".to_string());
            }
            if t.banned.1 {
                banned.push("user:*".to_string());
            }
            for x in &t.banned.2 {
                banned.push(format!("{}#member", TYPES[*x]));
            }
            s.push_str(&format!(
                "definition {} {{\n    relation viewer: {}\n    relation member: {}\n    relation parent: {}\n    relation banned: {}\n    permission perm_a = {}\n    permission perm_b = {}\n}}\n\n",
                TYPES[i],
                viewer.join(" | "),
                member.join(" | "),
                parent.join(" | "),
                banned.join(" | "),
                t.perm_a.render(),
                t.perm_b.render(),
            ));
        }
        s
    }

    /// The subjects a relation of type `t` may hold.
    fn allowed_subjects(t: &GType, relation: &str) -> Vec<SubjectRef> {
        let users = |out: &mut Vec<SubjectRef>| {
            for u in USERS {
                out.push(SubjectRef::object("user", u));
            }
        };
        let sets = |out: &mut Vec<SubjectRef>, types: &[usize]| {
            for x in types {
                for id in IDS {
                    out.push(SubjectRef {
                        object: ObjectRef::new(TYPES[*x], id),
                        relation: Some("member".into()),
                    });
                }
            }
        };
        let mut out = Vec::new();
        match relation {
            "viewer" => {
                if t.viewer.0 {
                    users(&mut out);
                }
                if t.viewer.1 {
                    out.push(SubjectRef::object("user", "*"));
                }
            }
            "member" => {
                if t.member.0 {
                    users(&mut out);
                }
                sets(&mut out, &t.member.1);
            }
            "parent" => {
                for x in &t.parent {
                    for id in IDS {
                        out.push(SubjectRef::object(TYPES[*x], id));
                    }
                }
            }
            _ => {
                if t.banned.0 {
                    users(&mut out);
                }
                if t.banned.1 {
                    out.push(SubjectRef::object("user", "*"));
                }
                sets(&mut out, &t.banned.2);
            }
        }
        out
    }

    pub(super) fn world() -> impl Strategy<Value = (Vec<GType>, Vec<GRel>)> {
        proptest::collection::vec(gtype(), 1..=3).prop_flat_map(|types| {
            let n = types.len();
            let picks = proptest::collection::vec(
                (
                    0..n,
                    0..IDS.len(),
                    proptest::sample::select(vec!["viewer", "member", "parent", "banned"]),
                    any::<proptest::sample::Index>(),
                ),
                0..40,
            );
            (Just(types), picks).prop_map(|(types, picks)| {
                let mut rels = Vec::new();
                for (rt, rid, relation, pick) in picks {
                    // Keep generated references within the generated types.
                    let allowed: Vec<SubjectRef> = allowed_subjects(&types[rt], relation)
                        .into_iter()
                        .filter(|s| {
                            s.object.object_type == "user"
                                || TYPES[..types.len()].contains(&s.object.object_type.as_str())
                        })
                        .collect();
                    if allowed.is_empty() {
                        continue;
                    }
                    let subject = allowed[pick.index(allowed.len())].clone();
                    rels.push(GRel {
                        rtype: rt,
                        rid,
                        relation,
                        subject,
                    });
                }
                (types, rels)
            })
        })
    }

    /// Types referenced by a generated schema must exist: clamp references to the generated
    /// types.
    pub(super) fn clamp(types: &mut [GType]) {
        let n = types.len();
        for t in types.iter_mut() {
            t.member.1.retain(|x| *x < n);
            if t.member.1.is_empty() {
                t.member.0 = true;
            }
            t.parent.retain(|x| *x < n);
            if t.parent.is_empty() {
                t.parent.push(0);
            }
            t.banned.2.retain(|x| *x < n);
            if !t.banned.0 && !t.banned.1 && t.banned.2.is_empty() {
                t.banned.0 = true;
            }
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Tri {
        T,
        F,
        U,
    }

    fn or(vals: impl IntoIterator<Item = Tri>) -> Tri {
        let mut unknown = false;
        for v in vals {
            match v {
                Tri::T => return Tri::T,
                Tri::U => unknown = true,
                Tri::F => {}
            }
        }
        if unknown { Tri::U } else { Tri::F }
    }

    fn and(vals: impl IntoIterator<Item = Tri>) -> Tri {
        let mut unknown = false;
        let mut any = false;
        for v in vals {
            any = true;
            match v {
                Tri::F => return Tri::F,
                Tri::U => unknown = true,
                Tri::T => {}
            }
        }
        if !any {
            Tri::F
        } else if unknown {
            Tri::U
        } else {
            Tri::T
        }
    }

    pub(super) type Atom = (usize, usize, &'static str);

    /// The naive evaluator: Kleene iteration over every (object, relation-or-permission) for one
    /// subject, from "unknown" until nothing changes. Unknown at the end means the answer hinges
    /// on a cycle, which the engine reports as MaxDepthExceeded.
    pub(super) fn naive(types: &[GType], rels: &[GRel], s: &SubjectRef) -> HashMap<Atom, Tri> {
        let members = ["viewer", "member", "parent", "banned", "perm_a", "perm_b"];
        let mut vals: HashMap<Atom, Tri> = HashMap::new();
        for t in 0..types.len() {
            for id in 0..IDS.len() {
                for m in members {
                    vals.insert((t, id, m), Tri::U);
                }
            }
        }
        let type_index = |name: &str| TYPES[..types.len()].iter().position(|t| *t == name);
        loop {
            let mut changed = false;
            let keys: Vec<Atom> = vals
                .iter()
                .filter(|(_, v)| **v == Tri::U)
                .map(|(k, _)| *k)
                .collect();
            for atom in keys {
                let v = eval_atom(types, rels, s, atom, &vals, &type_index);
                if v != Tri::U {
                    vals.insert(atom, v);
                    changed = true;
                }
            }
            if !changed {
                return vals;
            }
        }
    }

    fn eval_atom(
        types: &[GType],
        rels: &[GRel],
        s: &SubjectRef,
        (t, id, m): Atom,
        vals: &HashMap<Atom, Tri>,
        type_index: &dyn Fn(&str) -> Option<usize>,
    ) -> Tri {
        if s.relation.as_deref() == Some(m)
            && s.object.object_type == TYPES[t]
            && s.object.object_id == IDS[id]
        {
            return Tri::T;
        }
        let val = |ty: &str, oid: &str, rel: &str| -> Tri {
            let (Some(ti), Some(ii)) = (type_index(ty), IDS.iter().position(|x| *x == oid)) else {
                return Tri::F;
            };
            let rel: &'static str = match rel {
                "viewer" => "viewer",
                "member" => "member",
                "parent" => "parent",
                "banned" => "banned",
                "perm_a" => "perm_a",
                "perm_b" => "perm_b",
                _ => return Tri::F,
            };
            // The self-match of a dispatched sub-problem.
            if s.relation.as_deref() == Some(rel)
                && s.object.object_type == ty
                && s.object.object_id == oid
            {
                return Tri::T;
            }
            vals.get(&(ti, ii, rel)).copied().unwrap_or(Tri::F)
        };
        let here = |relation: &'static str| {
            rels.iter()
                .filter(move |r| r.rtype == t && r.rid == id && r.relation == relation)
        };
        match m {
            "perm_a" | "perm_b" => {
                let e = if m == "perm_a" {
                    &types[t].perm_a
                } else {
                    &types[t].perm_b
                };
                eval_expr(e, &val, &here, TYPES[t], IDS[id])
            }
            relation => {
                let mut parts = Vec::new();
                for r in here(relation) {
                    if r.subject == *s {
                        parts.push(Tri::T);
                    } else if r.subject.is_wildcard()
                        && r.subject.object.object_type == s.object.object_type
                    {
                        // SpiceDB's Check: a wildcard matches whatever the subject's relation is.
                        parts.push(Tri::T);
                    } else if let Some(sr) = &r.subject.relation {
                        parts.push(val(
                            &r.subject.object.object_type,
                            &r.subject.object.object_id,
                            sr,
                        ));
                    }
                }
                or(parts)
            }
        }
    }

    fn eval_expr<'r, H, I>(
        e: &GExpr,
        val: &dyn Fn(&str, &str, &str) -> Tri,
        here: &H,
        t: &str,
        id: &str,
    ) -> Tri
    where
        H: Fn(&'static str) -> I,
        I: Iterator<Item = &'r GRel>,
    {
        match e {
            GExpr::Nil => Tri::F,
            GExpr::Name(n) => val(t, id, n),
            GExpr::Arrow(c, all) => {
                let vs: Vec<Tri> = here("parent")
                    .map(|r| {
                        val(
                            &r.subject.object.object_type,
                            &r.subject.object.object_id,
                            c,
                        )
                    })
                    .collect();
                if *all { and(vs) } else { or(vs) }
            }
            GExpr::Union(v) => or(v.iter().map(|x| eval_expr(x, val, here, t, id))),
            GExpr::Inter(v) => and(v.iter().map(|x| eval_expr(x, val, here, t, id))),
            GExpr::Excl(a, b) => match eval_expr(a, val, here, t, id) {
                Tri::F => Tri::F,
                Tri::U => Tri::U,
                Tri::T => match eval_expr(b, val, here, t, id) {
                    Tri::T => Tri::F,
                    Tri::F => Tri::T,
                    Tri::U => Tri::U,
                },
            },
        }
    }

    pub(super) fn to_relationships(rels: &[GRel]) -> Vec<Relationship> {
        rels.iter()
            .map(|r| {
                Relationship::new(
                    ObjectRef::new(TYPES[r.rtype], IDS[r.rid]),
                    r.relation,
                    r.subject.clone(),
                )
            })
            .collect()
    }

    pub(super) fn subjects(n_types: usize) -> Vec<SubjectRef> {
        let mut out: Vec<SubjectRef> = USERS
            .iter()
            .map(|u| SubjectRef::object("user", *u))
            .collect();
        out.push(SubjectRef::object("user", "never_mentioned"));
        for t in &TYPES[..n_types] {
            for id in IDS {
                out.push(SubjectRef::object(*t, id));
                out.push(SubjectRef {
                    object: ObjectRef::new(*t, id),
                    relation: Some("member".into()),
                });
            }
        }
        out
    }

    pub(super) fn tri_str(v: Tri) -> &'static str {
        match v {
            Tri::T => "HAS_PERMISSION",
            Tri::F => "NO_PERMISSION",
            Tri::U => "MaxDepthExceeded",
        }
    }

    pub(super) fn ids() -> &'static [&'static str] {
        &IDS
    }

    pub(super) fn type_names() -> &'static [&'static str] {
        &TYPES
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 256,
        failure_persistence: None,
        .. proptest::prelude::ProptestConfig::default()
    })]

    #[test]
    fn random_schemas_agree_with_naive_fixpoint((types, rels) in generated::world()) {
        let mut types = types;
        generated::clamp(&mut types);
        let text = generated::render_schema(&types);
        let schema = pemba::schema::compile(&text).unwrap_or_else(|e| panic!("generated schema does not compile: {e}\n{text}"));
        let relationships = generated::to_relationships(&rels);
        validate_relationships(&schema, &relationships).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let engine = Engine::new(EngineConfig { max_depth: 500, ..EngineConfig::default() });
        let now = Timestamp::now();
        let store = MemoryStore::new();
        let rev = load(&store, &relationships, now);
        let snap = Snapshot::new(&store, &schema, rev, now);

        let mut failures = Vec::new();
        let mut extra = World::new(&engine, snap, &schema, &relationships);
        extra.subjects = generated::subjects(types.len());
        for t in &generated::type_names()[..types.len()] {
            for id in generated::ids() {
                extra.objects.insert(ObjectRef::new(*t, *id));
            }
        }
        // The general checker alone (the fast path off) must agree with the fast path.
        let general = Engine::new(EngineConfig {
            max_depth: 500,
            fast_path: false,
            ..EngineConfig::default()
        });
        let general_world = World::new(&general, snap, &schema, &relationships);
        // Check against the naive evaluator, for every object and subject of the universe.
        for s in &extra.subjects {
            let vals = generated::naive(&types, &rels, s);
            for ((t, id, m), v) in &vals {
                let o = ObjectRef::new(generated::type_names()[*t], generated::ids()[*id]);
                let got = extra.check(&o, m, s);
                let want = generated::tri_str(*v);
                if got != want {
                    failures.push(format!("check {o}#{m}@{s}: naive says {want}, engine says {got}"));
                }
                let general_got = general_world.check(&o, m, s);
                if general_got != got {
                    failures.push(format!("check {o}#{m}@{s}: with the fast path {got}, without {general_got}"));
                }
            }
        }
        extra.consistency("generated", &mut failures);
        if !failures.is_empty() {
            panic!("{} failure(s):\n{}\nschema:\n{text}\nrelationships:\n{}",
                failures.len(),
                failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
                relationships.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"));
        }
    }
}
