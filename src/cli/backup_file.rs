//! `pemba backup export` and `pemba backup import`: a server's data as a YAML file.
//!
//! A running server's schema and relationships as a SpiceDB validation-file-shaped YAML file,
//! written and read in bounded memory.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use prost::Message as _;

use super::client::{Client, ClientArgs, call_failed, runtime};
use crate::api::client::{relationship_for_write, relationship_from_proto, relationship_to_proto};
use crate::api::proto::authzed::api::v1 as pb;
use crate::model::parse_relationship;
use crate::schema::CompiledSchema;
use pb::permissions_service_client::PermissionsServiceClient;
use pb::schema_service_client::SchemaServiceClient;

/// Relationships per ReadRelationships page (the server's largest limit).
const PAGE: u32 = 1000;
/// Relationships per ImportBulkRelationships message, at most.
const BATCH: usize = 1000;
/// Encoded bytes per ImportBulkRelationships message, at most (the server takes 4 MiB).
const BATCH_BYTES: usize = 1 << 20;
/// ImportBulkRelationships messages buffered between the file reader and the network.
const IN_FLIGHT: usize = 4;
/// The longest line an import reads.
const MAX_LINE: usize = 16 << 20;
/// The largest schema an import reads.
const MAX_SCHEMA: usize = 16 << 20;

/// Flags of `pemba backup export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// how to reach the server
    #[command(flatten)]
    pub client: ClientArgs,
    /// the file to write (`-` or none: stdout); it is written beside under a temporary name and
    /// renamed into place once complete
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Flags of `pemba backup import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// the file to read: YAML with a `schema: |-` and a `relationships: |-` block (what
    /// `pemba backup export` writes), or text with one relationship a line (`//` comments)
    pub file: PathBuf,
    /// how to reach the server
    #[command(flatten)]
    pub client: ClientArgs,
    /// do not write the file's schema; check the relationships against the server's
    #[arg(long)]
    pub skip_schema: bool,
}

fn at_exact(token: &pb::ZedToken) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtExactSnapshot(token.clone())),
    })
}

/// Runs `pemba backup export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = Client::connect(&args.client).await?;
        let answer = SchemaServiceClient::new(client.channel.clone())
            .read_schema(client.request(pb::ReadSchemaRequest {}))
            .await
            .map_err(|s| call_failed("ReadSchema", &s))?
            .into_inner();
        let token = answer
            .read_at
            .context("ReadSchema answered without a revision")?;
        let schema = crate::schema::compile_stored(&answer.schema_text)
            .map_err(|e| anyhow!("the server's schema does not compile here: {e}"))?;
        let mut out = Output::create(args.output.as_deref())?;
        write_schema_block(&mut out, &answer.schema_text)?;
        out.write_all(b"relationships: |-\n")?;
        let mut permissions = PermissionsServiceClient::new(client.channel.clone());
        let mut count: u64 = 0;
        // A filter needs a resource type: read each definition's relationships in turn, every
        // page at the schema's revision.
        for resource_type in schema.definitions.keys() {
            let mut cursor: Option<pb::Cursor> = None;
            loop {
                let request = client.request(pb::ReadRelationshipsRequest {
                    consistency: at_exact(&token),
                    relationship_filter: Some(pb::RelationshipFilter {
                        resource_type: resource_type.clone(),
                        ..Default::default()
                    }),
                    optional_limit: PAGE,
                    optional_cursor: cursor.take(),
                });
                let mut stream = permissions
                    .read_relationships(request)
                    .await
                    .map_err(|s| call_failed("ReadRelationships", &s))?
                    .into_inner();
                let mut in_page: u32 = 0;
                while let Some(item) = stream
                    .message()
                    .await
                    .map_err(|s| call_failed("ReadRelationships", &s))?
                {
                    let rel = relationship_from_proto(
                        item.relationship.as_ref(),
                        "relationship",
                        usize::MAX,
                    )
                    .map_err(|e| anyhow!("the server sent a relationship it refuses: {e}"))?;
                    let line = rel.to_string();
                    out.write_all(b"  ")?;
                    out.write_all(yaml_safe(&line).as_bytes())?;
                    out.write_all(b"\n")?;
                    count += 1;
                    in_page += 1;
                    cursor = item.after_result_cursor;
                }
                if in_page < PAGE {
                    break;
                }
                if cursor.is_none() {
                    bail!("ReadRelationships answered a full page without a cursor");
                }
            }
        }
        out.finish()?;
        eprintln!("revision: {}", token.token);
        eprintln!("relationships: {count}");
        anyhow::Ok(())
    })
}

/// Where an export goes: stdout, or a temporary file renamed into place by [`Output::finish`]
/// (and removed if the export fails).
enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File {
        writer: BufWriter<File>,
        temp: PathBuf,
        target: PathBuf,
        done: bool,
    },
}

impl Output {
    fn create(path: Option<&Path>) -> anyhow::Result<Output> {
        let Some(target) = path.filter(|p| *p != Path::new("-")) else {
            return Ok(Output::Stdout(BufWriter::new(std::io::stdout())));
        };
        let name = target
            .file_name()
            .with_context(|| format!("--output `{}` names no file", target.display()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        let file =
            File::create(&temp).with_context(|| format!("cannot create `{}`", temp.display()))?;
        Ok(Output::File {
            writer: BufWriter::new(file),
            temp,
            target: target.to_path_buf(),
            done: false,
        })
    }

    fn finish(mut self) -> anyhow::Result<()> {
        match &mut self {
            Output::Stdout(w) => w.flush().context("cannot write to stdout"),
            Output::File {
                writer,
                temp,
                target,
                done,
            } => {
                writer
                    .flush()
                    .and_then(|()| writer.get_ref().sync_all())
                    .with_context(|| format!("cannot write `{}`", temp.display()))?;
                std::fs::rename(&*temp, &*target).with_context(|| {
                    format!(
                        "cannot rename `{}` to `{}`",
                        temp.display(),
                        target.display()
                    )
                })?;
                *done = true;
                Ok(())
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout(w) => w.write(buf),
            Output::File { writer, .. } => writer.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(w) => w.flush(),
            Output::File { writer, .. } => writer.flush(),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Output::File {
            temp, done: false, ..
        } = self
        {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// May `c` stand in a YAML block scalar as itself? (YAML's printable set, minus the characters
/// YAML 1.1 readers take as line breaks.)
fn yaml_printable(c: char) -> bool {
    matches!(c, '\t' | ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// A relationship line with the characters a YAML block cannot hold written as JSON `\u`
/// escapes: they can only stand inside a caveat context's JSON strings (identifiers are ASCII),
/// where the escape reads back as the same character.
fn yaml_safe(line: &str) -> Cow<'_, str> {
    if line.chars().all(yaml_printable) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if yaml_printable(c) {
            out.push(c);
        } else {
            // every character outside the printable set is in the Basic Multilingual Plane
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        }
    }
    Cow::Owned(out)
}

/// `schema: |-` and the schema indented by two spaces (`|2-` when its first line is itself
/// indented); blank lines are written empty.
fn write_schema_block(out: &mut impl Write, schema: &str) -> anyhow::Result<()> {
    let schema = schema.replace("\r\n", "\n");
    if let Some(c) = schema.chars().find(|c| *c != '\n' && !yaml_printable(*c)) {
        bail!(
            "the schema holds the character U+{:04X}, which a YAML file cannot hold as text",
            u32::from(c)
        );
    }
    let schema = schema.trim_end_matches('\n');
    let indented_first = schema
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with([' ', '\t']));
    out.write_all(if indented_first {
        b"schema: |2-\n"
    } else {
        b"schema: |-\n"
    })?;
    for line in schema.lines() {
        if line.trim().is_empty() {
            out.write_all(b"\n")?;
        } else {
            out.write_all(b"  ")?;
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// A line of an import file that matters.
#[derive(Debug, PartialEq, Eq)]
enum Item<'a> {
    /// the `schema:` key (its lines follow)
    SchemaStart,
    /// a line of the schema block, indentation removed
    SchemaLine(&'a str),
    /// a relationship, trimmed
    Relationship(&'a str),
}

/// Which block a YAML block scalar holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Schema,
    Relationships,
}

/// Where the scanner is in an import file.
#[derive(Debug, Clone, Copy)]
enum State {
    /// before the first line that is not blank or a comment
    Start,
    /// a text file of relationships
    Text,
    /// YAML, at the top level
    Top,
    /// YAML, inside a block scalar (indentation known once its first line is seen)
    Block(Key, Option<usize>),
    /// YAML, inside the value of a key we do not read
    Other,
}

/// `key: rest` of a top-level YAML mapping line, if it is one.
fn split_key(line: &str) -> Option<(&str, &str)> {
    let (key, rest) = line.split_once(':')?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (is_key && (rest.is_empty() || rest.starts_with([' ', '\t']))).then_some((key, rest))
}

/// Reads `path` line by line and hands every schema line and relationship to `each` with its
/// 1-based line number. Holds one line at a time.
fn scan(
    path: &Path,
    mut each: impl FnMut(usize, Item<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut state = State::Start;
    let mut seen = [false; 2];
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        line_no += 1;
        if buf.len() > MAX_LINE {
            bail!(
                "{}:{line_no}: line longer than {MAX_LINE} bytes",
                path.display()
            );
        }
        let mut bytes = buf.as_slice();
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if line_no == 1 {
            bytes = bytes.strip_prefix("\u{FEFF}".as_bytes()).unwrap_or(bytes);
        }
        let line = std::str::from_utf8(bytes)
            .map_err(|_| anyhow!("{}:{line_no}: not UTF-8", path.display()))?;
        state = scan_line(state, line, &mut seen, &mut |item| each(line_no, item))
            .map_err(|e| anyhow!("{}:{line_no}: {e}", path.display()))?;
    }
}

/// One line through the scanner's state machine.
fn scan_line(
    mut state: State,
    line: &str,
    seen: &mut [bool; 2],
    each: &mut dyn FnMut(Item<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<State> {
    let blank = line.trim().is_empty();
    // A line that ends a block or another key's value is read again at the top level.
    loop {
        match state {
            State::Start => {
                let t = line.trim();
                if blank || t.starts_with('#') || t.starts_with("//") || t == "---" {
                    return Ok(State::Start);
                }
                state = if split_key(t).is_some() {
                    State::Top
                } else {
                    State::Text
                };
            }
            State::Text => {
                let t = line.trim();
                if !t.is_empty() && !t.starts_with("//") {
                    each(Item::Relationship(t))?;
                }
                return Ok(State::Text);
            }
            State::Top => return top_line(line, seen, each),
            State::Other => {
                if blank || line.starts_with([' ', '\t', '#', '-']) {
                    return Ok(State::Other);
                }
                state = State::Top;
            }
            State::Block(key, indent) => {
                if blank {
                    if key == Key::Schema {
                        each(Item::SchemaLine(""))?;
                    }
                    return Ok(state);
                }
                let spaces = line.len() - line.trim_start_matches(' ').len();
                let indent = match indent {
                    Some(n) => n,
                    None if spaces == 0 => {
                        state = State::Top;
                        continue;
                    }
                    None => spaces,
                };
                if spaces < indent {
                    state = State::Top;
                    continue;
                }
                let content = line.get(indent..).unwrap_or_default();
                match key {
                    Key::Schema => each(Item::SchemaLine(content))?,
                    Key::Relationships => {
                        let t = content.trim();
                        if !t.is_empty() && !t.starts_with("//") {
                            each(Item::Relationship(t))?;
                        }
                    }
                }
                return Ok(State::Block(key, Some(indent)));
            }
        }
    }
}

/// A line at the top level of the YAML mapping.
fn top_line(
    line: &str,
    seen: &mut [bool; 2],
    each: &mut dyn FnMut(Item<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<State> {
    let t = line.trim_end();
    if t.trim().is_empty() || t.starts_with('#') || t == "---" || t == "..." {
        return Ok(State::Top);
    }
    if line.starts_with([' ', '\t']) {
        bail!("unexpected indentation at the top level of the YAML file");
    }
    let (name, rest) = split_key(t).ok_or_else(|| anyhow!("expected a top-level `key:`"))?;
    let key = match name {
        "schema" => Key::Schema,
        "relationships" => Key::Relationships,
        _ => return Ok(State::Other),
    };
    let slot = &mut seen[usize::from(key == Key::Relationships)];
    if *slot {
        bail!("`{name}` appears twice");
    }
    *slot = true;
    if key == Key::Schema {
        each(Item::SchemaStart)?;
    }
    let mut words = rest.split_whitespace();
    let header = words.next().unwrap_or_default();
    if words.next().is_some_and(|w| !w.starts_with('#')) {
        bail!("`{name}` must be a block scalar (`{name}: |-`)");
    }
    if header.is_empty() || header == "\"\"" || header == "''" {
        return Ok(State::Top);
    }
    let mut chars = header.chars();
    if !matches!(chars.next(), Some('|' | '>')) {
        bail!("`{name}` must be a block scalar (`{name}: |-`) or empty");
    }
    let mut indent = None;
    let mut chomp = false;
    for c in chars {
        match c {
            '-' | '+' if !chomp => chomp = true,
            '1'..='9' if indent.is_none() => indent = c.to_digit(10).map(|d| d as usize),
            _ => bail!("bad block scalar header `{header}`"),
        }
    }
    Ok(State::Block(key, indent))
}

/// The relationship on line `line_no` of `path`, checked as the server would check it.
fn relationship_line(
    path: &Path,
    line_no: usize,
    text: &str,
    schema: &CompiledSchema,
) -> anyhow::Result<pb::Relationship> {
    let at = || format!("{}:{line_no}", path.display());
    let parsed = parse_relationship(text).map_err(|e| anyhow!("{}: {e}", at()))?;
    let proto = relationship_to_proto(&parsed);
    // The server applies its own context size limit.
    let rel = relationship_from_proto(Some(&proto), "relationship", usize::MAX)
        .map_err(|e| anyhow!("{}: invalid relationship `{text}`: {e}", at()))?;
    relationship_for_write(schema, &rel)
        .map_err(|e| anyhow!("{}: relationship `{text}`: {e}", at()))?;
    Ok(proto)
}

/// The schema block of an import file, if it has one, and the line it starts on.
fn read_schema_block(path: &Path) -> anyhow::Result<Option<(usize, String)>> {
    let mut schema: Option<(usize, String)> = None;
    scan(path, |line_no, item| {
        match item {
            Item::SchemaStart => schema = Some((line_no, String::new())),
            Item::SchemaLine(l) => {
                if let Some((_, text)) = &mut schema {
                    if text.len() + l.len() >= MAX_SCHEMA {
                        bail!("the schema is larger than {MAX_SCHEMA} bytes");
                    }
                    text.push_str(l);
                    text.push('\n');
                }
            }
            Item::Relationship(_) => {}
        }
        Ok(())
    })?;
    Ok(schema.map(|(line, text)| (line, text.trim_end_matches('\n').to_string())))
}

/// Messages from the file reader to the ImportBulkRelationships call.
enum Batch {
    Relationships(pb::ImportBulkRelationshipsRequest),
    /// every relationship was sent: the stream may end
    Done,
}

/// Runs `pemba backup import`.
pub fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let path = args.file.clone();
    let file_schema = read_schema_block(&path)?;
    runtime()?.block_on(async {
        let client = Client::connect(&args.client).await?;
        let mut schemas = SchemaServiceClient::new(client.channel.clone());
        let (schema_text, write_schema) = match (&file_schema, args.skip_schema) {
            (Some((_, text)), false) => (text.clone(), true),
            _ => {
                let answer = schemas
                    .read_schema(client.request(pb::ReadSchemaRequest {}))
                    .await
                    .map_err(|s| call_failed("ReadSchema", &s))?;
                (answer.into_inner().schema_text, false)
            }
        };
        let schema = crate::schema::compile(&schema_text).map_err(|e| match &file_schema {
            Some((line, _)) if write_schema => {
                anyhow!(
                    "{}:{line}: the schema does not compile: {e}",
                    path.display()
                )
            }
            _ => anyhow!("the server's schema does not compile here: {e}"),
        })?;
        // Check every line before anything is written: a bad line names itself and nothing
        // is imported, the schema included.
        let mut count: u64 = 0;
        scan(&path, |line_no, item| {
            if let Item::Relationship(text) = item {
                relationship_line(&path, line_no, text, &schema)?;
                count += 1;
            }
            Ok(())
        })?;
        if write_schema {
            schemas
                .write_schema(client.request(pb::WriteSchemaRequest {
                    schema: schema_text.clone(),
                }))
                .await
                .map_err(|s| call_failed("WriteSchema", &s))?;
            println!("schema: written");
        }
        let loaded = if count == 0 {
            0
        } else {
            send_relationships(&client, path.clone(), schema).await?
        };
        println!("relationships: {loaded}");
        anyhow::Ok(())
    })
}

/// Streams the file's relationships through one ImportBulkRelationships call, reading the file
/// on a thread a few messages ahead of the network. The server commits only a stream that
/// ends; if the reader fails the stream never ends and the call is dropped (cancelled).
async fn send_relationships(
    client: &Client,
    path: PathBuf,
    schema: CompiledSchema,
) -> anyhow::Result<u64> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(IN_FLIGHT);
    let (produced_tx, mut produced) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || {
            let result = read_batches(&path, &schema, &tx);
            let _ = produced_tx.send(result);
        })
        .context("cannot start the file reader")?;
    let outbound = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Batch::Relationships(b)) => Some((b, rx)),
            Some(Batch::Done) => None,
            None => {
                // the reader failed: never end the stream, which would commit it
                std::future::pending::<()>().await;
                None
            }
        }
    });
    let mut permissions = PermissionsServiceClient::new(client.channel.clone());
    let call = permissions.import_bulk_relationships(client.request(outbound));
    tokio::pin!(call);
    let answer = tokio::select! {
        answer = &mut call => answer,
        read = &mut produced => {
            match read {
                Ok(Ok(())) => call.await,
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("the file reader stopped unexpectedly"),
            }
        }
    };
    let answer = answer
        .map_err(|s| call_failed("ImportBulkRelationships", &s))?
        .into_inner();
    Ok(answer.num_loaded)
}

/// The file's relationships in messages of at most [`BATCH`] relationships or [`BATCH_BYTES`].
fn read_batches(
    path: &Path,
    schema: &CompiledSchema,
    tx: &tokio::sync::mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    let closed = || anyhow!("the import call ended before the file was sent");
    let mut batch: Vec<pb::Relationship> = Vec::with_capacity(BATCH);
    let mut bytes = 0usize;
    scan(path, |line_no, item| {
        if let Item::Relationship(text) = item {
            let rel = relationship_line(path, line_no, text, schema)?;
            bytes += rel.encoded_len();
            batch.push(rel);
            if batch.len() >= BATCH || bytes >= BATCH_BYTES {
                let relationships = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                bytes = 0;
                tx.blocking_send(Batch::Relationships(pb::ImportBulkRelationshipsRequest {
                    relationships,
                }))
                .map_err(|_| closed())?;
            }
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        tx.blocking_send(Batch::Relationships(pb::ImportBulkRelationshipsRequest {
            relationships: batch,
        }))
        .map_err(|_| closed())?;
    }
    tx.blocking_send(Batch::Done).map_err(|_| closed())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn items(text: &str) -> anyhow::Result<Vec<(usize, String)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, text).unwrap();
        let mut out = Vec::new();
        scan(&path, |n, item| {
            out.push((n, format!("{item:?}")));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn yaml_blocks_are_read_line_by_line() {
        let got = items(
            "# backup\nschema: |-\n  definition user {}\n\n    // indented\nassertions:\n  assertTrue:\n    - a\nrelationships: |-\n  a:b#c@d:e\n  // comment\n\n  a:b#c@d:f[x:{\"k\":1}]\nvalidation: null\n",
        )
        .unwrap();
        let want: Vec<(usize, String)> = vec![
            (2, "SchemaStart".into()),
            (3, r#"SchemaLine("definition user {}")"#.into()),
            (4, r#"SchemaLine("")"#.into()),
            (5, r#"SchemaLine("  // indented")"#.into()),
            (10, r#"Relationship("a:b#c@d:e")"#.into()),
            (13, r#"Relationship("a:b#c@d:f[x:{\"k\":1}]")"#.into()),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn indentation_indicator_and_empty_values() {
        let got = items("schema: |2-\n    indented\n  less\nrelationships: \"\"\n").unwrap();
        assert_eq!(
            got,
            vec![
                (1, "SchemaStart".to_string()),
                (2, r#"SchemaLine("  indented")"#.to_string()),
                (3, r#"SchemaLine("less")"#.to_string()),
            ]
        );
    }

    #[test]
    fn text_files_and_malformed_yaml() {
        let got = items("// c\n\n a:b#c@d:e \r\nx:y#z@w:v\n").unwrap();
        assert_eq!(
            got,
            vec![
                (3, r#"Relationship("a:b#c@d:e")"#.to_string()),
                (4, r#"Relationship("x:y#z@w:v")"#.to_string()),
            ]
        );
        let err = items("schema: |-\n  x\nschema: |-\n").unwrap_err();
        assert!(
            err.to_string().contains(":3: `schema` appears twice"),
            "{err}"
        );
        let err = items("schema: \"definition a {}\"\n").unwrap_err();
        assert!(err.to_string().contains(":1: `schema` must be"), "{err}");
        let err = items("relationships: |-\n  a:b#c@d:e\n oops\n").unwrap_err();
        assert!(
            err.to_string().contains(":3: unexpected indentation"),
            "{err}"
        );
    }

    #[test]
    fn export_blocks_read_back() {
        let schema = "use expiration\n\n  /* indented first */\ndefinition user {}\n";
        let mut out = Vec::new();
        write_schema_block(&mut out, "definition user {}\r\n\r\n// x\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "schema: |-\n  definition user {}\n\n  // x\n"
        );
        let mut out = Vec::new();
        write_schema_block(&mut out, &schema[16..]).unwrap();
        assert!(out.starts_with(b"schema: |2-\n"));
        assert!(write_schema_block(&mut Vec::new(), "// \u{7}").is_err());
        let line = "a:b#c@d:e[x:{\"s\":\"\u{2028}\u{85}\u{7f}é\"}]";
        let safe = yaml_safe(line);
        assert_eq!(safe, "a:b#c@d:e[x:{\"s\":\"\\u2028\\u0085\\u007fé\"}]");
        let back = parse_relationship(&safe).unwrap();
        assert_eq!(back, parse_relationship(line).unwrap());
    }

    /// A reader that fails after some messages were sent never ends the stream: the call is
    /// cancelled and the server commits none of what it received.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_failing_mid_stream_commits_nothing() {
        use std::sync::Arc;

        use crate::api::{Api, Limits};
        use crate::engine::EngineConfig;
        use crate::server::{self, ServerOptions};
        use crate::store::{Datastore, MemoryStore};

        let store: Arc<dyn Datastore> = Arc::new(MemoryStore::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = Api::new(
            Arc::clone(&store),
            EngineConfig::default(),
            Limits::default(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server::run(
            listener,
            api,
            Arc::clone(&store),
            ServerOptions::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let client = Client::connect(&ClientArgs {
            endpoint: Some(addr.to_string()),
            preshared_key: None,
            ca_cert: None,
            insecure: true,
        })
        .await
        .unwrap();
        let text = "definition user {}\ndefinition doc { relation viewer: user }";
        SchemaServiceClient::new(client.channel.clone())
            .write_schema(client.request(pb::WriteSchemaRequest {
                schema: text.into(),
            }))
            .await
            .unwrap();
        let schema = crate::schema::compile(text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rels.txt");
        let mut lines: Vec<String> = (0..2500)
            .map(|i| format!("doc:d{i}#viewer@user:u{i}"))
            .collect();
        lines.push("doc:x#nosuch@user:u".into());
        std::fs::write(&path, lines.join("\n")).unwrap();

        let err = send_relationships(&client, path, schema)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("rels.txt:2501:"), "{err}");
        // Two full messages reached the server before the reader failed; none is committed.
        let read = PermissionsServiceClient::new(client.channel.clone())
            .read_relationships(client.request(pb::ReadRelationshipsRequest {
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
                }),
                relationship_filter: Some(pb::RelationshipFilter {
                    resource_type: "doc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap();
        assert!(read.is_none(), "an aborted import committed: {read:?}");
        let _ = stop.send(());
        served.await.unwrap().unwrap();
    }
}
