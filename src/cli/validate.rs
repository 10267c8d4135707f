//! `pemba validate`: SpiceDB validation files checked in-process, pointing at the line to fix.
//!
//! A validation file (the format `zed validate` reads) holds a schema (`schema`, or
//! `schemaFile` relative to the file), relationships (`relationships`: one per line, `//`
//! comments allowed; or `relationshipsFile`), `assertions` (`assertTrue`, `assertFalse`,
//! `assertCaveated`: relationship strings, each optionally followed by ` with {json context}`)
//! and `validation`: the expected relations, for each `type:id#relation` every subject that
//! reaches it and the relations where it was found (`[user:ann] is <document:d#viewer>`).
//!
//! Everything runs here, over an in-memory store: the schema is compiled, the relationships
//! checked against it as WriteRelationships checks them, the assertions checked with a depth
//! of 25 (as SpiceDB's development tools do), and the expected relations compared with a
//! recursive Expand. Assertions come first; the expected relations are compared only when
//! they pass. `--update` rewrites the `validation` block with what was found.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};

use crate::engine::{CheckRequest, Engine, EngineConfig, ExpandTree, Permissionship, Snapshot};
use crate::model::{Context, ObjectRef, Relationship, Timestamp, parse_relationship};
use crate::schema::{CompiledSchema, SchemaError};
use crate::store::{Datastore, MemoryStore, RelationshipUpdate, UpdateOp};

/// `pemba validate` arguments.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// validation files (YAML, SpiceDB's format) or schema files (`.zed`: compiled only)
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// rewrite each file's `validation` block with the expected relations found
    #[arg(long)]
    pub update: bool,
}

/// The depth SpiceDB's development tools check and expand with.
const DEPTH: u32 = 25;

/// Runs `pemba validate`: true if every file validated.
pub fn run(args: &ValidateArgs) -> anyhow::Result<bool> {
    let mut ok = 0usize;
    let many = args.files.len() > 1;
    for path in &args.files {
        if many {
            println!("{}", path.display());
        }
        match validate_path(path, args.update) {
            Ok(summary) => {
                ok += 1;
                println!("{summary}");
            }
            Err(failure) => {
                eprintln!("{failure}");
                if !many {
                    return Ok(false);
                }
            }
        }
    }
    if many {
        println!(
            "total files: {}, successfully validated files: {ok}",
            args.files.len()
        );
    }
    Ok(ok == args.files.len())
}

/// The schemas and relationships of validation files, merged (the schemas' definitions and
/// caveats together, the relationships one after the other), checked as `pemba validate`
/// checks them: what `pemba serve-testing --load-configs` starts every store with. Assertions
/// and expected relations are not run.
pub fn load_configs(paths: &[PathBuf]) -> Result<(String, Vec<Relationship>), String> {
    let files = paths
        .iter()
        .map(|p| read_contents(p))
        .collect::<Result<Vec<_>, String>>()?;
    let mut schema = String::new();
    for f in &files {
        if let Some(part) = &f.schema {
            schema.push_str(&part.text);
        }
        schema.push('\n');
    }
    let compiled = crate::schema::compile(&schema)
        .map_err(|e| format!("error: the schemas of --load-configs, merged: {e}"))?;
    let mut all = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &files {
        let Some(part) = &f.relationships else {
            continue;
        };
        for r in relationships(&compiled, &part.text, &part.source(&f.whole(), 0))? {
            if seen.insert(r.key()) {
                all.push(r);
            }
        }
    }
    Ok((schema, all))
}

/// The lines of a relationships text that hold a relationship: blank lines and `//` comments
/// are skipped.
pub(crate) fn relationship_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
}

/// A part of a validation file (its schema or its relationships): given inline, or in a file
/// of its own that a `...File` key names, which its messages then point into.
pub(crate) struct Part {
    /// the part's text
    pub(crate) text: String,
    /// the name of the file it came from, if not the validation file
    file: Option<String>,
}

impl Part {
    /// Where the part's messages point: its own file, or the validation file (`whole`) with
    /// the part's first line at `offset`.
    fn source<'a>(&'a self, whole: &Source<'a>, offset: usize) -> Source<'a> {
        match &self.file {
            Some(name) => Source {
                name: name.clone(),
                text: &self.text,
                offset: 0,
            },
            None => Source {
                name: whole.name.clone(),
                text: whole.text,
                offset,
            },
        }
    }
}

/// The part given inline (`inline`) or in the file `named` names (which must stay inside the
/// validation file's directory); `keys` are the two keys' names, for the message when both
/// are set.
fn read_part(
    path: &Path,
    inline: Option<&String>,
    named: Option<&String>,
    keys: (&str, &str),
) -> Result<Option<Part>, String> {
    let name = path.display();
    match (inline, named) {
        (Some(_), Some(_)) => Err(format!(
            "error: {name}: `{}` and `{}` cannot both be set",
            keys.0, keys.1
        )),
        (None, None) => Ok(None),
        (Some(text), None) => Ok(Some(Part {
            text: text.clone(),
            file: None,
        })),
        (None, Some(file)) => {
            let p = local_path(path, file).map_err(|e| format!("error: {name}: {e:#}"))?;
            let text = read(&p).map_err(|e| format!("error: {name}: {e:#}"))?;
            Ok(Some(Part {
                text,
                file: Some(p.display().to_string()),
            }))
        }
    }
}

/// A validation file, read: its text, its keys, and its schema and relationships (from its
/// keys or the files they name).
pub(crate) struct Contents {
    name: String,
    text: String,
    parts: FileParts,
    /// the schema, if the file has one
    pub(crate) schema: Option<Part>,
    /// the relationships, if the file has any
    pub(crate) relationships: Option<Part>,
}

impl Contents {
    /// The whole validation file, for messages.
    fn whole(&self) -> Source<'_> {
        Source {
            name: self.name.clone(),
            text: &self.text,
            offset: 0,
        }
    }
}

/// Reads and parses the validation file at `path`; errors are the messages to print.
pub(crate) fn read_contents(path: &Path) -> Result<Contents, String> {
    let text = read(path).map_err(|e| format!("error: {e:#}"))?;
    let name = path.display().to_string();
    let parts: FileParts = {
        let whole = Source {
            name: name.clone(),
            text: &text,
            offset: 0,
        };
        serde_yaml_ng::from_str(&text).map_err(|e| match e.location() {
            Some(l) => whole.error_at(l.line(), l.column(), &format!("invalid YAML: {e}")),
            None => format!("error: {name}: invalid YAML: {e}"),
        })?
    };
    let schema = read_part(
        path,
        parts.schema.as_ref(),
        parts.schema_file.as_ref(),
        ("schema", "schemaFile"),
    )?;
    let relationships = read_part(
        path,
        parts.relationships.as_ref(),
        parts.relationships_file.as_ref(),
        ("relationships", "relationshipsFile"),
    )?;
    Ok(Contents {
        name,
        text,
        parts,
        schema,
        relationships,
    })
}

/// The parts of a validation file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParts {
    schema: Option<String>,
    #[serde(rename = "schemaFile")]
    schema_file: Option<String>,
    relationships: Option<String>,
    #[serde(rename = "relationshipsFile")]
    relationships_file: Option<String>,
    #[serde(default)]
    assertions: Option<AssertionLists>,
    #[serde(default)]
    validation: Option<serde_yaml_ng::Mapping>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AssertionLists {
    #[serde(rename = "assertTrue", default)]
    assert_true: Option<Vec<String>>,
    #[serde(rename = "assertFalse", default)]
    assert_false: Option<Vec<String>>,
    #[serde(rename = "assertCaveated", default)]
    assert_caveated: Option<Vec<String>>,
}

/// A source text and where it came from, to point at lines in messages.
struct Source<'a> {
    name: String,
    text: &'a str,
    /// the line of `text` that is line 1 of the part being reported on, minus one
    offset: usize,
}

impl Source<'_> {
    /// `error: NAME:LINE:COLUMN: message` with the line and a caret under the column.
    fn error_at(&self, line: usize, column: usize, message: &str) -> String {
        let line = line + self.offset;
        let mut out = format!("error: {}:{line}:{column}: {message}", self.name);
        if let Some(src) = self.text.lines().nth(line.saturating_sub(1)) {
            let gutter = line.to_string().len();
            let _ = write!(out, "\n {line} | {src}\n {:gutter$} | ", "");
            let _ = write!(out, "{:>width$}", "^", width = column.max(1));
        }
        out
    }

    /// The first line (1-based, of the whole text) containing `needle` after the lines
    /// containing each of `anchors` in turn (the section it belongs to).
    fn line_of(&self, anchors: &[&str], needle: &str) -> Option<usize> {
        let mut from = 0;
        for anchor in anchors {
            if let Some(i) = self
                .text
                .lines()
                .skip(from)
                .position(|l| l.contains(anchor))
            {
                from += i + 1;
            }
        }
        let needle = needle.trim();
        let found = |from: usize| {
            self.text
                .lines()
                .skip(from)
                .position(|l| l.contains(needle))
                .map(|i| from + i + 1)
        };
        found(from).or_else(|| found(0))
    }

    /// [`Source::error_at`] on the line holding `needle` after `anchors` (column of its
    /// start), or without a line when it is not found.
    fn error_on(&self, anchors: &[&str], needle: &str, message: &str) -> String {
        let whole = Source {
            name: self.name.clone(),
            text: self.text,
            offset: 0,
        };
        match whole.line_of(anchors, needle) {
            Some(line) => {
                let column = self
                    .text
                    .lines()
                    .nth(line - 1)
                    .and_then(|l| l.find(needle.trim()))
                    .map_or(1, |c| c + 1);
                whole.error_at(line, column, message)
            }
            None => format!("error: {}: {message}", self.name),
        }
    }
}

/// The line (1-based) where the YAML block of `key` starts its value, minus one: a block
/// scalar's first line of content is this plus one.
fn block_offset(text: &str, key: &str) -> usize {
    let prefix = format!("{key}:");
    text.lines()
        .position(|l| l.starts_with(&prefix))
        .map_or(0, |i| i + 1)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// A file named inside another, relative to its directory; it must stay inside it.
fn local_path(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("`{name}` must be a path inside the validation file's directory");
    }
    Ok(base.parent().unwrap_or(Path::new(".")).join(rel))
}

/// A schema error in the file at `path`, with its line and a caret under the column.
pub(crate) fn schema_report(path: &Path, text: &str, e: &SchemaError) -> String {
    let src = Source {
        name: path.display().to_string(),
        text,
        offset: 0,
    };
    schema_error(&src, e)
}

fn schema_error(src: &Source<'_>, e: &SchemaError) -> String {
    match e {
        SchemaError::Parse {
            message,
            line,
            column,
        } => src.error_at(*line, *column, &format!("parse error: {message}")),
        SchemaError::Type {
            message,
            line,
            column,
        } => src.error_at(*line, *column, &format!("schema error: {message}")),
        other => format!("error: {}: {other}", src.name),
    }
}

/// Validates one file; `Ok` carries the success line, `Err` the whole failure report.
fn validate_path(path: &Path, update: bool) -> Result<String, String> {
    let started = Instant::now();
    let name = path.display().to_string();
    if path.extension().is_some_and(|e| e == "zed") {
        let text = read(path).map_err(|e| format!("error: {e:#}"))?;
        let src = Source {
            name,
            text: &text,
            offset: 0,
        };
        crate::schema::compile(&text).map_err(|e| schema_error(&src, &e))?;
        return Ok("Success! - schema compiled".into());
    }
    let contents = read_contents(path)?;
    let text = &contents.text;
    let whole = contents.whole();
    let parts = &contents.parts;

    // The schema.
    let Some(schema_part) = &contents.schema else {
        return Err(format!("error: {name}: no `schema` or `schemaFile`"));
    };
    let schema_src = schema_part.source(&whole, block_offset(text, "schema"));
    let schema =
        crate::schema::compile(&schema_part.text).map_err(|e| schema_error(&schema_src, &e))?;

    // The relationships.
    let (rels_text, rels_src) = match &contents.relationships {
        Some(part) => (part.text.as_str(), part.source(&whole, 0)),
        None => ("", whole_clone(&whole)),
    };
    let rels = relationships(&schema, rels_text, &rels_src)?;
    let now = Timestamp::now();
    let store = MemoryStore::new();
    let updates: Vec<RelationshipUpdate> = rels
        .iter()
        .map(|r| RelationshipUpdate {
            op: UpdateOp::Touch,
            relationship: r.clone(),
        })
        .collect();
    let rev = if updates.is_empty() {
        store.head_revision()
    } else {
        store.write_relationships(&[], &updates, now)
    }
    .map_err(|e| format!("error: {name}: cannot load the relationships: {e}"))?;
    let engine = Engine::new(EngineConfig {
        max_depth: DEPTH,
        ..EngineConfig::default()
    });
    let snap = Snapshot::new(&store, &schema, rev, now);

    // The assertions.
    let asserted = assertions(&engine, &snap, parts.assertions.as_ref(), &whole)?;

    // The expected relations.
    let mut validated = 0;
    if let Some(expected) = &parts.validation {
        let mut found = BTreeMap::new();
        let mut failures = Vec::new();
        for (key, listed) in expected {
            let key = key
                .as_str()
                .ok_or_else(|| format!("error: {name}: a `validation` key is not a string"))?;
            let (object, relation) =
                parse_key(key).map_err(|e| whole.error_on(&["validation:"], key, &e))?;
            let members = expand_members(&engine, &snap, &object, &relation).map_err(|e| {
                whole.error_on(
                    &["validation:"],
                    key,
                    &format!("cannot expand `{key}`: {e}"),
                )
            })?;
            let listed: Vec<String> = match listed {
                serde_yaml_ng::Value::Null => Vec::new(),
                v => serde_yaml_ng::from_value(v.clone()).map_err(|e| {
                    whole.error_on(
                        &["validation:"],
                        key,
                        &format!("`{key}` must list strings: {e}"),
                    )
                })?,
            };
            if !update {
                failures.extend(compare(key, &listed, &members, &whole));
            }
            found.insert(key.to_string(), members);
            validated += 1;
        }
        if update {
            let block = render_validation(&found);
            let rewritten = replace_validation_block(text, &block);
            std::fs::write(path, rewritten)
                .map_err(|e| format!("error: cannot write `{name}`: {e}"))?;
        } else if !failures.is_empty() {
            return Err(failures.join("\n\n"));
        }
    }
    Ok(format!(
        "Success! - {} relationships loaded, {asserted} assertions run, {validated} expected \
         relations validated ({:.0?})",
        rels.len(),
        started.elapsed()
    ))
}

fn whole_clone<'a>(s: &Source<'a>) -> Source<'a> {
    Source {
        name: s.name.clone(),
        text: s.text,
        offset: s.offset,
    }
}

/// Parses and checks the relationships, one per line (`//` comments and blank lines skipped);
/// a relationship repeated (ignoring caveat and expiration) is an error, as in SpiceDB.
fn relationships(
    schema: &CompiledSchema,
    text: &str,
    src: &Source<'_>,
) -> Result<Vec<Relationship>, String> {
    const ANCHOR: &[&str] = &["relationships:"];
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in relationship_lines(text) {
        let rel = parse_relationship(line).map_err(|e| {
            src.error_on(ANCHOR, line, &format!("invalid relationship: {}", e.reason))
        })?;
        crate::api::client::relationship_for_write(schema, &rel)
            .map_err(|e| src.error_on(ANCHOR, line, &format!("relationship `{line}`: {e}")))?;
        if !seen.insert(rel.key()) {
            return Err(src.error_on(
                ANCHOR,
                line,
                &format!("found repeated relationship `{line}`"),
            ));
        }
        out.push(rel);
    }
    Ok(out)
}

/// Runs the assertions; returns how many `assertTrue` and `assertFalse` ran (as zed counts).
fn assertions(
    engine: &Engine,
    snap: &Snapshot<'_>,
    lists: Option<&AssertionLists>,
    src: &Source<'_>,
) -> Result<usize, String> {
    let Some(lists) = lists else { return Ok(0) };
    let mut failures = Vec::new();
    let mut counted = 0;
    for (list, want, label) in [
        (
            &lists.assert_true,
            Permissionship::HasPermission,
            "assertTrue",
        ),
        (
            &lists.assert_false,
            Permissionship::NoPermission,
            "assertFalse",
        ),
        (
            &lists.assert_caveated,
            Permissionship::ConditionalPermission,
            "assertCaveated",
        ),
    ] {
        let anchors = ["assertions:", label];
        for entry in list.iter().flatten() {
            if want != Permissionship::ConditionalPermission {
                counted += 1;
            }
            let (rel_text, context) = match entry.split_once(" with ") {
                Some((r, c)) => {
                    let context: Context = serde_json::from_str(c.trim()).map_err(|e| {
                        src.error_on(&anchors, entry, &format!("invalid caveat context: {e}"))
                    })?;
                    (r.trim(), context)
                }
                None => (entry.trim(), Context::new()),
            };
            let rel = parse_relationship(rel_text).map_err(|e| {
                src.error_on(&anchors, entry, &format!("invalid assertion: {}", e.reason))
            })?;
            if rel.caveat.is_some() {
                return Err(src.error_on(
                    &anchors,
                    entry,
                    "cannot specify a caveat on an assertion",
                ));
            }
            let got = engine
                .check(
                    snap,
                    &CheckRequest {
                        resource: rel.resource.clone(),
                        permission: rel.relation.clone(),
                        subject: rel.subject.clone(),
                        context,
                        with_tracing: false,
                    },
                )
                .map_err(|e| {
                    src.error_on(&anchors, entry, &format!("cannot check `{rel_text}`: {e}"))
                })?;
            if got.permissionship != want {
                let mut message = format!(
                    "{label} failed: `{rel_text}` is {}",
                    answer_text(got.permissionship)
                );
                if !got.missing_context.is_empty() {
                    let _ = write!(
                        message,
                        " (missing caveat context: {})",
                        got.missing_context.join(", ")
                    );
                }
                failures.push(src.error_on(&anchors, entry, &message));
            }
        }
    }
    if failures.is_empty() {
        Ok(counted)
    } else {
        Err(failures.join("\n\n"))
    }
}

fn answer_text(p: Permissionship) -> &'static str {
    match p {
        Permissionship::HasPermission => "true",
        Permissionship::NoPermission => "false",
        Permissionship::ConditionalPermission => "caveated (conditional on missing context)",
    }
}

/// `type:id#relation` of a `validation` key.
fn parse_key(key: &str) -> Result<(ObjectRef, String), String> {
    let (object, relation) = key
        .split_once('#')
        .ok_or_else(|| format!("`{key}` must be `type:id#relation`"))?;
    let (t, id) = object
        .split_once(':')
        .ok_or_else(|| format!("`{key}` must be `type:id#relation`"))?;
    if t.is_empty() || id.is_empty() || relation.is_empty() {
        return Err(format!("`{key}` must be `type:id#relation`"));
    }
    Ok((ObjectRef::new(t, id), relation.to_string()))
}

// ---- expected relations: the subjects a recursive Expand finds ----

/// A subject found by the expansion: where it was found directly, whether only under a
/// caveat, and for a wildcard the subjects it does not cover (each possibly caveated).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Found {
    relations: BTreeSet<String>,
    caveated: bool,
    excluded: BTreeMap<String, bool>,
}

/// Subjects found, by their text (`user:ann`, `group:eng#member`, `user:*`).
type Members = BTreeMap<String, Found>;

fn wildcard_of(subject: &str) -> Option<String> {
    let (t, id) = subject.split_once(':')?;
    (id != "*" && !id.contains('#')).then(|| format!("{t}:*"))
}

fn union(mut a: Members, b: Members) -> Members {
    for (s, f) in b {
        match a.get_mut(&s) {
            Some(e) => {
                e.relations.extend(f.relations);
                e.caveated = e.caveated && f.caveated;
                e.excluded.retain(|k, _| f.excluded.contains_key(k));
            }
            None => {
                a.insert(s, f);
            }
        }
    }
    a
}

fn intersect(a: &Members, b: &Members) -> Members {
    let mut out = Members::new();
    let mut one_side = |x: &Members, y: &Members| {
        for (s, f) in x {
            let other = y.get(s).or_else(|| {
                let w = wildcard_of(s)?;
                y.get(&w).filter(|wf| !wf.excluded.contains_key(s))
            });
            if let Some(o) = other {
                let mut m = f.clone();
                m.relations.extend(o.relations.iter().cloned());
                m.caveated = f.caveated || o.caveated;
                for (k, c) in &o.excluded {
                    m.excluded.insert(k.clone(), *c);
                }
                out.entry(s.clone())
                    .and_modify(|e: &mut Found| e.relations.extend(m.relations.clone()))
                    .or_insert(m);
            }
        }
    };
    one_side(a, b);
    one_side(b, a);
    out
}

fn exclude(a: Members, b: &Members) -> Members {
    let mut out = Members::new();
    for (s, mut f) in a {
        if s.ends_with(":*") {
            if let Some(w) = b.get(&s) {
                if !w.caveated {
                    continue;
                }
                f.caveated = true;
            }
            for (k, kf) in b {
                if k.split_once(':').map(|(t, _)| t) == s.split_once(':').map(|(t, _)| t)
                    && !k.ends_with(":*")
                    && !k.contains('#')
                {
                    f.excluded.insert(k.clone(), kf.caveated);
                }
            }
            out.insert(s, f);
            continue;
        }
        let removed = b.get(&s).or_else(|| {
            let w = wildcard_of(&s)?;
            b.get(&w).filter(|wf| !wf.excluded.contains_key(&s))
        });
        match removed {
            Some(r) if !r.caveated => {}
            Some(_) => {
                f.caveated = true;
                out.insert(s, f);
            }
            None => {
                out.insert(s, f);
            }
        }
    }
    out
}

/// The subjects of `object#relation` found by a recursive Expand: each subject set is listed
/// and expanded in turn (a subject set met again on the way is not expanded twice).
fn expand_members(
    engine: &Engine,
    snap: &Snapshot<'_>,
    object: &ObjectRef,
    relation: &str,
) -> anyhow::Result<Members> {
    let mut path = Vec::new();
    members_of(engine, snap, object, relation, &mut path)
}

fn members_of(
    engine: &Engine,
    snap: &Snapshot<'_>,
    object: &ObjectRef,
    relation: &str,
    path: &mut Vec<String>,
) -> anyhow::Result<Members> {
    let here = format!("{object}#{relation}");
    if path.contains(&here) {
        return Ok(Members::new());
    }
    if path.len() >= DEPTH as usize {
        bail!("subject sets nested deeper than {DEPTH} under `{here}`");
    }
    let tree = engine
        .expand(snap, object, relation)
        .map_err(|e| anyhow!("{e}"))?;
    path.push(here);
    let out = tree_members(engine, snap, &tree, path);
    path.pop();
    out
}

fn tree_members(
    engine: &Engine,
    snap: &Snapshot<'_>,
    tree: &ExpandTree,
    path: &mut Vec<String>,
) -> anyhow::Result<Members> {
    let (mut members, node_caveat) = match tree {
        ExpandTree::Leaf {
            object,
            relation,
            subjects,
            subject_caveats,
            caveat,
        } => {
            let here = format!("<{object}#{relation}>");
            let mut members = Members::new();
            for (i, s) in subjects.iter().enumerate() {
                let caveated = subject_caveats.get(i).is_some_and(Option::is_some);
                let mut found = Members::new();
                found.insert(
                    s.to_string(),
                    Found {
                        relations: BTreeSet::from([here.clone()]),
                        caveated,
                        excluded: BTreeMap::new(),
                    },
                );
                if let Some(r) = &s.relation {
                    let mut inner = members_of(engine, snap, &s.object, r, path)?;
                    if caveated {
                        for f in inner.values_mut() {
                            f.caveated = true;
                        }
                    }
                    found = union(found, inner);
                }
                members = union(members, found);
            }
            (members, caveat.is_some())
        }
        ExpandTree::Intermediate {
            operation,
            children,
            caveat,
            ..
        } => {
            let mut parts = Vec::with_capacity(children.len());
            for c in children {
                parts.push(tree_members(engine, snap, c, path)?);
            }
            let mut parts = parts.into_iter();
            let first = parts.next().unwrap_or_default();
            let members = match operation {
                crate::engine::SetOperation::Union => parts.fold(first, union),
                crate::engine::SetOperation::Intersection => {
                    parts.fold(first, |acc, p| intersect(&acc, &p))
                }
                crate::engine::SetOperation::Exclusion => {
                    parts.fold(first, |acc, p| exclude(acc, &p))
                }
            };
            (members, caveat.is_some())
        }
    };
    if node_caveat {
        for f in members.values_mut() {
            f.caveated = true;
        }
    }
    Ok(members)
}

/// How zed writes a found subject: `[user:ann] is <document:d#viewer>/<group:g#member>`.
fn render_found(subject: &str, f: &Found) -> String {
    let mut s = subject.to_string();
    if f.caveated {
        s.push_str("[...]");
    }
    if !f.excluded.is_empty() {
        let ex: Vec<String> = f
            .excluded
            .iter()
            .map(|(k, c)| if *c { format!("{k}[...]") } else { k.clone() })
            .collect();
        let _ = write!(s, " - {{{}}}", ex.join(", "));
    }
    let rels: Vec<&str> = f.relations.iter().map(String::as_str).collect();
    format!("[{s}] is {}", rels.join("/"))
}

/// An expected-relations entry, as parsed: the subject (without caveat marker or
/// exclusions), and the rest for comparing.
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    subject: String,
    found: Found,
}

fn parse_listed(entry: &str) -> Result<Listed, String> {
    let (Some(open), Some(close)) = (entry.find('['), entry.rfind(']')) else {
        return Err(format!(
            "`{entry}` must be `[subject] is <type:id#relation>`"
        ));
    };
    let inner = entry
        .get(open + 1..close)
        .ok_or_else(|| format!("`{entry}` must be `[subject] is <type:id#relation>`"))?;
    let rest = entry.get(close + 1..).unwrap_or_default();
    let relations: BTreeSet<String> = rest
        .split('<')
        .skip(1)
        .filter_map(|p| p.split_once('>').map(|(r, _)| format!("<{}>", r.trim())))
        .collect();
    let (subject_part, excluded_part) = match inner.split_once(" - ") {
        Some((s, e)) => (s.trim(), Some(e.trim())),
        None => (inner.trim(), None),
    };
    let (subject, caveated) = match subject_part.strip_suffix("[...]") {
        Some(s) => (s.trim(), true),
        None => (subject_part, false),
    };
    let subject = subject.strip_suffix("#...").unwrap_or(subject).to_string();
    let mut excluded = BTreeMap::new();
    if let Some(e) = excluded_part {
        let e = e.trim_start_matches('{').trim_end_matches('}');
        for item in e.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.strip_suffix("[...]") {
                Some(k) => excluded.insert(k.trim().to_string(), true),
                None => excluded.insert(item.to_string(), false),
            };
        }
    }
    Ok(Listed {
        subject,
        found: Found {
            relations,
            caveated,
            excluded,
        },
    })
}

/// The differences between the expected subjects of `key` and those found, one message each,
/// pointing at the entry's line (or the key's), with a diff of the whole list at the end.
fn compare(key: &str, listed: &[String], found: &Members, src: &Source<'_>) -> Vec<String> {
    let anchors = ["validation:", key];
    let mut problems = Vec::new();
    let mut expected: BTreeMap<String, (String, Listed)> = BTreeMap::new();
    for entry in listed {
        match parse_listed(entry) {
            Ok(l) => {
                expected.insert(l.subject.clone(), (entry.clone(), l));
            }
            Err(e) => problems.push(src.error_on(&anchors, entry, &e)),
        }
    }
    for (subject, (entry, l)) in &expected {
        match found.get(subject) {
            None => problems.push(src.error_on(
                &anchors,
                entry,
                &format!("missing expected subject `{subject}` for `{key}`"),
            )),
            Some(f) if f.relations != l.found.relations => problems.push(src.error_on(
                &anchors,
                entry,
                &format!(
                    "found different relationships for subject `{subject}` of `{key}`: expected \
                     {}, found {}",
                    join(&l.found.relations),
                    join(&f.relations)
                ),
            )),
            Some(f) if f.caveated != l.found.caveated => problems.push(src.error_on(
                &anchors,
                entry,
                &format!(
                    "found caveat mismatch for subject `{subject}` of `{key}`: {}",
                    if f.caveated {
                        "it is caveated, mark it `[...]`"
                    } else {
                        "it is not caveated"
                    }
                ),
            )),
            Some(f) if f.excluded != l.found.excluded => problems.push(src.error_on(
                &anchors,
                entry,
                &format!(
                    "found different exclusions for wildcard `{subject}` of `{key}`: {}",
                    render_found(subject, f)
                ),
            )),
            Some(_) => {}
        }
    }
    for (subject, f) in found {
        if !expected.contains_key(subject) {
            problems.push(src.error_on(
                &["validation:"],
                key,
                &format!(
                    "subject `{subject}` found but not listed in expected subjects of `{key}`: \
                     {}",
                    render_found(subject, f)
                ),
            ));
        }
    }
    if !problems.is_empty() {
        let mut diff = format!("expected relations of `{key}` (- listed, + found):");
        let listed_lines: BTreeSet<String> = expected
            .values()
            .map(|(_, l)| render_found(&l.subject, &l.found))
            .collect();
        let found_lines: BTreeSet<String> = found.iter().map(|(s, f)| render_found(s, f)).collect();
        for l in listed_lines.difference(&found_lines) {
            let _ = write!(diff, "\n  - {l}");
        }
        for l in found_lines.difference(&listed_lines) {
            let _ = write!(diff, "\n  + {l}");
        }
        problems.push(diff);
    }
    problems
}

fn join(s: &BTreeSet<String>) -> String {
    s.iter().map(String::as_str).collect::<Vec<_>>().join("/")
}

/// The `validation` block for what was found, as zed's generator writes it.
fn render_validation(found: &BTreeMap<String, Members>) -> String {
    let mut out = String::from("validation:\n");
    for (key, members) in found {
        if members.is_empty() {
            let _ = writeln!(out, "  {key}: []");
            continue;
        }
        let _ = writeln!(out, "  {key}:");
        for (s, f) in members {
            let line = render_found(s, f).replace('\'', "''");
            let _ = writeln!(out, "    - '{line}'");
        }
    }
    out
}

/// `text` with its top-level `validation:` block replaced by `block` (appended if absent);
/// comments and the other keys are kept as they are.
fn replace_validation_block(text: &str, block: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("validation:")) else {
        let mut out = text.trim_end().to_string();
        out.push_str("\n\n");
        out.push_str(block);
        return out;
    };
    let end = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| {
            !l.is_empty() && !l.starts_with(' ') && !l.starts_with('\t') && !l.starts_with('-')
        })
        .map_or(lines.len(), |(i, _)| i);
    let mut out = String::new();
    for l in lines.iter().take(start) {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(block);
    for l in lines.iter().skip(end) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_entries_parse_as_zed_writes_them() {
        let l = parse_listed("[user:tom[...]] is <document:d#viewer>/<group:g#member>").unwrap();
        assert_eq!(l.subject, "user:tom");
        assert!(l.found.caveated);
        assert_eq!(l.found.relations.len(), 2);
        let w = parse_listed("[user:* - {user:a, user:b[...]}] is <document:d#viewer>").unwrap();
        assert_eq!(w.subject, "user:*");
        assert_eq!(w.found.excluded.get("user:b"), Some(&true));
        assert_eq!(w.found.excluded.get("user:a"), Some(&false));
        assert_eq!(
            render_found(&w.subject, &w.found),
            "[user:* - {user:a, user:b[...]}] is <document:d#viewer>"
        );
        assert_eq!(
            parse_listed("[user:x#...] is <g:g#member>")
                .unwrap()
                .subject,
            "user:x"
        );
        assert!(parse_listed("user:x is <g:g#member>").is_err());
    }

    #[test]
    fn the_validation_block_is_replaced_in_place() {
        let text = "# head\nschema: |-\n  definition user {}\nvalidation:\n  a:b#c:\n    - '[x:y] is <a:b#c>'\n# tail comment\nassertions:\n  assertTrue: []\n";
        let out = replace_validation_block(text, "validation:\n  new: []\n");
        assert_eq!(
            out,
            "# head\nschema: |-\n  definition user {}\nvalidation:\n  new: []\n# tail comment\nassertions:\n  assertTrue: []\n"
        );
        let appended = replace_validation_block("schema: x\n", "validation: {}\n");
        assert_eq!(appended, "schema: x\n\nvalidation: {}\n");
    }

    #[test]
    fn exclusions_of_a_wildcard_are_kept_and_caveats_weaken() {
        let one = |s: &str, caveated: bool| {
            Members::from([(
                s.to_string(),
                Found {
                    relations: BTreeSet::from(["<d:x#r>".to_string()]),
                    caveated,
                    excluded: BTreeMap::new(),
                },
            )])
        };
        let base = union(one("user:*", false), one("user:ann", false));
        let out = exclude(base, &union(one("user:bob", false), one("user:ann", true)));
        let star = out.get("user:*").unwrap();
        assert_eq!(star.excluded.get("user:bob"), Some(&false));
        assert_eq!(star.excluded.get("user:ann"), Some(&true));
        assert!(out.get("user:ann").unwrap().caveated);
        let both = intersect(&one("user:*", false), &one("user:ann", false));
        assert!(both.contains_key("user:ann"));
    }
}
