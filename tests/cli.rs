//! The `pemba` command line, run as a user runs it: the real binary against a real
//! `pemba serve`, the getting-started page's commands as written, `pemba validate` on the
//! worked examples and on broken copies of them, and the generated CLI reference.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, serve_command, wait_listening};

/// A `pemba serve --datastore memory` child, killed on drop, and a config dir of its own for
/// the client's contexts.
struct Server {
    child: Child,
    port: u16,
    config: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let port = free_port();
        let mut child = serve_command(port)
            .args(["--datastore", "memory", "--metrics-enabled=false"])
            .spawn()
            .unwrap();
        wait_listening(&mut child, port, Duration::from_secs(30));
        Server {
            child,
            port,
            config: tempfile::tempdir().unwrap(),
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `pemba ARGS` against this server.
    fn pemba(&self, args: &[&str]) -> Output {
        self.pemba_with_stdin(args, "")
    }

    fn pemba_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write as _;
        let mut child = pemba()
            .args(args)
            .env("PEMBA_ENDPOINT", self.endpoint())
            .env("PEMBA_CONFIG_DIR", self.config.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `pemba ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.pemba(args);
        assert!(
            out.status.success(),
            "pemba {args:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pemba() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pemba"));
    c.env("PEMBA_LOG", "warn")
        .env_remove("PEMBA_TOKEN")
        .env_remove("PEMBA_ENDPOINT")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const CAVEATED: &str = "caveat on_network(ip ipaddress, allowed string) {
    ip.in_cidr(allowed)
}

definition user {}

definition group {
    relation member: user | group#member
}

definition document {
    relation viewer: user | group#member | user with on_network
    relation banned: user
    permission view = viewer - banned
}
";

/// Every client verb against a running server: answers, exit codes, JSON, errors.
#[test]
fn every_verb_works_against_a_server() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("s.zed");
    std::fs::write(&schema, CAVEATED).unwrap();
    let schema = schema.to_str().unwrap();

    // schema write / read / check
    let token = s.ok(&["schema", "write", schema]);
    assert!(!token.trim().is_empty());
    assert!(s.ok(&["schema", "read"]).contains("caveat on_network"));
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["schema", "read", "--json"])).unwrap();
    assert!(
        json["schema_text"]
            .as_str()
            .unwrap()
            .contains("definition group")
    );
    assert!(
        s.ok(&["schema", "check", schema])
            .contains("ok (3 definitions, 1 caveats)")
    );

    // relationship create (arguments and stdin), duplicate, touch, read
    s.ok(&[
        "relationship",
        "create",
        "document:plan#viewer@user:ann",
        "group:eng#member@user:bob",
    ]);
    let piped = s.pemba_with_stdin(
        &["relationship", "create"],
        "// from stdin\ndocument:plan#viewer@group:eng#member\n\ndocument:plan#banned@user:eve\n",
    );
    assert!(piped.status.success(), "{}", stderr(&piped));
    let dup = s.pemba(&["relationship", "create", "document:plan#viewer@user:ann"]);
    assert_eq!(code(&dup), 3);
    assert!(stderr(&dup).contains("AlreadyExists"), "{}", stderr(&dup));
    s.ok(&[
        "relationship",
        "touch",
        r#"document:plan#viewer@user:carl[on_network:{"allowed":"10.0.0.0/8"}]"#,
    ]);
    let read = s.ok(&["relationship", "read", "document:plan#viewer"]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines.len(), 3, "{read}");
    assert!(read.contains("document:plan#viewer@group:eng#member"));
    assert!(
        read.contains(r#"document:plan#viewer@user:carl[on_network:{"allowed":"10.0.0.0/8"}]"#)
    );
    let one = s.ok(&["relationship", "read", "document@user:ann", "--json"]);
    let v: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(v["relationship"], "document:plan#viewer@user:ann");

    // permission check: the exit code is the answer
    let check = |who: &str, extra: &[&str]| {
        let mut args = vec!["permission", "check", "document:plan", "view", who];
        args.extend_from_slice(extra);
        s.pemba(&args)
    };
    let yes = check("user:bob", &[]);
    assert_eq!((code(&yes), stdout(&yes).trim()), (0, "true"));
    let no = check("user:eve", &["--consistency", "full"]);
    assert_eq!((code(&no), stdout(&no).trim()), (1, "false"));
    let maybe = check("user:carl", &[]);
    assert_eq!(code(&maybe), 2, "{}", stdout(&maybe));
    assert!(stdout(&maybe).contains("caveated (missing context: ip)"));
    let inside = check("user:carl", &["--context", r#"{"ip":"10.1.2.3"}"#]);
    assert_eq!(code(&inside), 0);
    let outside = check("user:carl", &["--context", r#"{"ip":"192.168.0.1"}"#]);
    assert_eq!(code(&outside), 1);
    let exact = check(
        "user:ann",
        &["--consistency", &format!("at-least:{}", token.trim())],
    );
    assert_eq!(code(&exact), 0);
    let explained = check("user:bob", &["--explain"]);
    let tree = stdout(&explained);
    assert!(tree.contains("document:plan#view @ user:bob"), "{tree}");
    assert!(tree.contains("group:eng#member @ user:bob"), "{tree}");
    let json = check("user:bob", &["--json", "--explain"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(v["permissionship"], "true");
    assert!(!v["trace"]["sub_problems"].as_array().unwrap().is_empty());
    let bad = check("user:bob", &["--consistency", "sometimes"]);
    assert_eq!(code(&bad), 3);
    let unknown = s.pemba(&["permission", "check", "document:plan", "nope", "user:bob"]);
    assert_eq!(code(&unknown), 3);
    assert!(
        stderr(&unknown).contains("FailedPrecondition"),
        "{}",
        stderr(&unknown)
    );

    // bulk, expand, lookups
    let bulk = s.ok(&[
        "permission",
        "bulk",
        "document:plan#view@user:ann",
        "document:plan#view@user:eve",
    ]);
    assert_eq!(
        bulk.lines().collect::<Vec<_>>(),
        [
            "document:plan#view@user:ann true",
            "document:plan#view@user:eve false"
        ]
    );
    let expand = s.ok(&["permission", "expand", "document:plan", "view"]);
    assert!(
        expand.contains("document:plan#view (exclusion)"),
        "{expand}"
    );
    assert!(expand.contains("group:eng#member"), "{expand}");
    s.ok(&["relationship", "create", "document:spec#viewer@user:ann"]);
    assert_eq!(
        s.ok(&[
            "permission",
            "lookup-resources",
            "document",
            "view",
            "user:ann"
        ]),
        "plan\nspec\n"
    );
    let page = s.ok(&[
        "permission",
        "lookup-resources",
        "document",
        "view",
        "user:ann",
        "--limit",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(page.trim()).unwrap();
    assert_eq!(v["resource_id"], "plan");
    let rest = s.ok(&[
        "permission",
        "lookup-resources",
        "document",
        "view",
        "user:ann",
        "--cursor",
        v["cursor"].as_str().unwrap(),
    ]);
    assert_eq!(rest, "spec\n");
    let subjects = s.ok(&[
        "permission",
        "lookup-subjects",
        "document:plan",
        "view",
        "user",
    ]);
    assert!(
        subjects.contains("ann\n") && subjects.contains("bob\n"),
        "{subjects}"
    );
    assert!(
        subjects.contains("carl (caveated, missing context: ip)"),
        "{subjects}"
    );
    assert!(!subjects.contains("eve"), "{subjects}");

    // delete, bulk-delete
    s.ok(&["relationship", "delete", "document:spec#viewer@user:ann"]);
    let refused = s.pemba(&["relationship", "bulk-delete", "group"]);
    assert_eq!(code(&refused), 3);
    assert!(stderr(&refused).contains("--force"));
    assert!(
        s.ok(&["relationship", "bulk-delete", "document:plan#banned"])
            .starts_with("deleted 1 relationships")
    );
    assert_eq!(s.ok(&["relationship", "read", "document:plan#banned"]), "");

    // export, then import into another server: the same answers there
    let exported = s.ok(&["export"]);
    assert!(exported.starts_with("schema: |-\n"), "{exported}");
    let file = dir.path().join("export.yaml");
    std::fs::write(&file, &exported).unwrap();
    let other = Server::start();
    other.ok(&["import", file.to_str().unwrap()]);
    assert_eq!(
        other.ok(&["relationship", "read", "document"]),
        s.ok(&["relationship", "read", "document"])
    );
    let text = s.ok(&["export", "--format", "text"]);
    assert_eq!(text.lines().count(), 4, "{text}");

    // schema diff (local): what changed between two files
    let after = dir.path().join("after.zed");
    std::fs::write(
        &after,
        CAVEATED.replace(
            "    permission view = viewer - banned\n",
            "    relation editor: user\n    permission view = viewer + editor - banned\n",
        ),
    )
    .unwrap();
    let diff = s.ok(&["schema", "diff", schema, after.to_str().unwrap()]);
    assert!(diff.contains("added relation document#editor"), "{diff}");
    assert!(
        diff.contains("changed expression of permission document#view"),
        "{diff}"
    );
    assert_eq!(s.ok(&["schema", "diff", schema, schema]), "no changes\n");

    // usage errors, completions
    let usage = s.pemba(&["permission", "check", "document:plan"]);
    assert_eq!(code(&usage), 64);
    let bash = s.ok(&["completions", "bash"]);
    assert!(bash.contains("pemba") && bash.contains("lookup-resources"));
}

/// `pemba watch` prints each change as it is committed.
#[test]
fn watch_prints_changes_as_they_happen() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("s.zed");
    std::fs::write(&schema, CAVEATED).unwrap();
    let token = s.ok(&["schema", "write", schema.to_str().unwrap()]);
    let watcher = pemba()
        .args(["watch", "--limit", "2", "--start", token.trim()])
        .env("PEMBA_ENDPOINT", s.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    s.ok(&["relationship", "create", "document:a#viewer@user:ann"]);
    s.ok(&["relationship", "delete", "document:a#viewer@user:ann"]);
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "TOUCH document:a#viewer@user:ann\nDELETE document:a#viewer@user:ann\n"
    );
}

/// Named contexts: saved, listed (tokens hidden), used by the verbs, removed.
#[test]
fn contexts_name_servers() {
    let s = Server::start();
    let config = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        pemba()
            .args(args)
            .env("PEMBA_CONFIG_DIR", config.path())
            .output()
            .unwrap()
    };
    let set = run(&["context", "set", "local", &s.endpoint(), "sekrit"]);
    assert!(set.status.success(), "{}", stderr(&set));
    let list = stdout(&run(&["context", "list"]));
    assert!(
        list.contains("* local") && list.contains(&s.endpoint()),
        "{list}"
    );
    assert!(!list.contains("sekrit"), "{list}");
    assert!(stdout(&run(&["context", "list", "--reveal-tokens"])).contains("sekrit"));
    // with no --endpoint, the verbs talk to the current context's server
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("s.zed");
    std::fs::write(&schema, CAVEATED).unwrap();
    let written = run(&["schema", "write", schema.to_str().unwrap()]);
    assert!(written.status.success(), "{}", stderr(&written));
    assert!(s.ok(&["schema", "read"]).contains("on_network"));
    let none = run(&["context", "use", "nope"]);
    assert_eq!(code(&none), 3);
    assert!(run(&["context", "remove", "local"]).status.success());
    assert!(!stdout(&run(&["context", "list"])).contains("local"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(config.path().join("contexts.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the contexts file holds tokens: {mode:o}");
    }
}

/// Runs each ```sh block of `page` (a Markdown file of the repository) in order against `s`,
/// with `pemba` on the PATH, from the repository's root; their stdout, concatenated.
fn run_sh_blocks(s: &Server, page: &str) -> String {
    let text = std::fs::read_to_string(repo().join(page)).unwrap();
    let blocks: Vec<&str> = text
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .filter(|b| {
            // the server's own commands (`bash .ci/run`, `cargo run`) are not for this
            b.lines()
                .all(|l| !l.starts_with("bash ") && !l.starts_with("cargo "))
        })
        .collect();
    assert!(!blocks.is_empty(), "{page} has no sh block");
    let bin = Path::new(env!("CARGO_BIN_EXE_pemba")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut all = String::new();
    for block in blocks {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env("PATH", &path)
            .env("PEMBA_ENDPOINT", s.endpoint())
            .env("PEMBA_CONFIG_DIR", s.config.path())
            .env("PEMBA_LOG", "warn")
            .env_remove("PEMBA_TOKEN")
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{page}: the block\n{block}\nfailed: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        all.push_str(&stdout(&out));
    }
    all
}

/// The answers (`true` / `false` lines) in some output.
fn answers(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| *l == "true" || *l == "false")
        .collect()
}

/// Every ```sh block of docs/getting-started.md, in order, against a fresh server.
#[test]
fn getting_started_runs_as_written() {
    let s = Server::start();
    let all = run_sh_blocks(&s, "docs/getting-started.md");
    assert_eq!(
        answers(&all),
        ["true", "true", "true", "true", "false", "false"],
        "{all}"
    );
    assert!(all.contains("Success!"), "{all}");
}

/// The README's first session, done with the command line alone, as written.
#[test]
fn the_readme_session_runs_as_written() {
    let s = Server::start();
    let all = run_sh_blocks(&s, "README.md");
    assert_eq!(answers(&all), ["true", "true", "false"], "{all}");
    assert!(
        all.contains("\nplan\n") && all.contains("\nann\nbob\n"),
        "{all}"
    );
    assert!(all.contains("group:eng#member @ user:bob"), "{all}");
    assert!(all.contains("Success!"), "{all}");
}

/// Runs `pemba validate ARGS`.
fn validate(args: &[&str]) -> Output {
    pemba().arg("validate").args(args).output().unwrap()
}

/// The line (1-based) of the first line of `text` containing `needle` after a line
/// containing `after`.
fn line_of(text: &str, after: &str, needle: &str) -> usize {
    let start = text.lines().position(|l| l.contains(after)).unwrap();
    start
        + 1
        + text
            .lines()
            .skip(start + 1)
            .position(|l| l.contains(needle))
            .unwrap()
        + 1
}

/// The worked examples validate; broken copies fail with messages naming the line to fix.
#[test]
fn validate_passes_the_examples_and_points_at_broken_lines() {
    let examples: Vec<PathBuf> = std::fs::read_dir(repo().join("schema"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(examples.len() >= 4, "{examples:?}");
    for e in &examples {
        let out = validate(&[e.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", e.display(), stderr(&out));
        assert!(stdout(&out).starts_with("Success! - "), "{}", stdout(&out));
    }

    let source = std::fs::read_to_string(repo().join("schema/document_sharing.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = validate(&[p.to_str().unwrap()]);
        assert_eq!(code(&out), 1, "{name} should fail: {}", stdout(&out));
        (p.to_str().unwrap().to_string(), stderr(&out))
    };

    // an assertion that does not hold: the message names its line in assertTrue
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&source).unwrap();
    let false_one = parsed["assertions"]["assertFalse"][0]
        .as_str()
        .unwrap()
        .to_string();
    let text = source.replacen("assertTrue:", &format!("assertTrue:\n    - {false_one}"), 1);
    let (path, err) = broken("assert.yaml", text.clone());
    let line = line_of(&text, "assertTrue:", &false_one);
    assert!(
        err.contains(&format!("{path}:{line}:")) && err.contains("assertTrue failed"),
        "{err}"
    );

    // a typo in the schema: line, column and caret
    let text = source.replacen("relation parent: folder", "relation parent: foldr", 1);
    let (path, err) = broken("schema.yaml", text.clone());
    let line = line_of(&text, "schema:", "foldr");
    assert!(err.contains(&format!("{path}:{line}:")), "{err}");
    assert!(err.contains("foldr") && err.contains('^'), "{err}");

    // an expected subject that is not found, and one found that is not listed
    let entry = parsed["validation"]
        .as_mapping()
        .unwrap()
        .values()
        .next()
        .unwrap()[0]
        .as_str()
        .unwrap()
        .to_string();
    let wrong_entry = "[user:nobody] is <document:nowhere#viewer>";
    let text = source.replacen(&entry, wrong_entry, 1);
    assert_ne!(text, source);
    let (path, err) = broken("expected.yaml", text.clone());
    let line = line_of(&text, "validation:", wrong_entry);
    assert!(err.contains(&format!("{path}:{line}:")), "{err}");
    assert!(
        err.contains("missing expected subject `user:nobody`"),
        "{err}"
    );
    assert!(err.contains("found but not listed"), "{err}");
    assert!(
        err.contains("(- listed, + found)") && err.contains("  + "),
        "{err}"
    );

    // --update writes what is found; the file then validates, with the comments outside
    // the `validation` block kept
    let p = dir.path().join("expected.yaml");
    let updating = validate(&["--update", p.to_str().unwrap()]);
    assert!(updating.status.success(), "{}", stderr(&updating));
    let updated = std::fs::read_to_string(&p).unwrap();
    assert!(!updated.contains("user:nobody"), "{updated}");
    for comment in source
        .lines()
        .take_while(|l| !l.starts_with("validation:"))
        .filter(|l| l.trim_start().starts_with('#'))
    {
        assert!(updated.contains(comment), "{comment}");
    }
    assert!(validate(&[p.to_str().unwrap()]).status.success());

    // a relationship written twice
    let first_rel = parsed["relationships"]
        .as_str()
        .unwrap()
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("//"))
        .unwrap()
        .to_string();
    let (head, tail) = source.split_at(source.find("\nrelationships:").unwrap());
    let text = format!(
        "{head}{}",
        tail.replacen(&first_rel, &format!("{first_rel}\n  {first_rel}"), 1)
    );
    let (_, err) = broken("repeated.yaml", text);
    assert!(err.contains("found repeated relationship"), "{err}");

    // `schemaFile` and `relationshipsFile`, relative to the file; a `.zed` file compiles
    std::fs::write(dir.path().join("s.zed"), CAVEATED).unwrap();
    std::fs::write(
        dir.path().join("rels.txt"),
        "// the data\ndocument:d#viewer@user:ann\ndocument:d#banned@user:bob\n",
    )
    .unwrap();
    let split = dir.path().join("split.yaml");
    std::fs::write(
        &split,
        "schemaFile: s.zed\nrelationshipsFile: rels.txt\nassertions:\n  assertTrue:\n    - document:d#view@user:ann\n  assertFalse:\n    - document:d#view@user:bob\n",
    )
    .unwrap();
    let out = validate(&[split.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Success! - 2 relationships loaded, 2 assertions run"));
    let zed = validate(&[dir.path().join("s.zed").to_str().unwrap()]);
    assert!(zed.status.success(), "{}", stderr(&zed));
    let escape = dir.path().join("escape.yaml");
    std::fs::write(&escape, "schemaFile: ../s.zed\n").unwrap();
    let out = validate(&[escape.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("inside the validation file's directory"),
        "{}",
        stderr(&out)
    );

    // a legacy key
    let (_, err) = broken("legacy.yaml", format!("{source}\nvalidation_tuples: []\n"));
    assert!(err.contains("validation_tuples"), "{err}");
}

/// A validation file of 10,000 relationships validates quickly (the time is printed, for the
/// docs; the test asserts only the answer).
#[test]
fn validate_handles_ten_thousand_relationships() {
    let mut rels = String::new();
    for i in 0..5000 {
        rels.push_str(&format!("  document:d{i}#viewer@user:u{}\n", i % 100));
        rels.push_str(&format!("  document:d{i}#parent@folder:f{}\n", i % 50));
    }
    let text = format!(
        "schema: |-\n  definition user {{}}\n  definition folder {{\n    relation viewer: user\n  }}\n  definition document {{\n    relation parent: folder\n    relation viewer: user\n    permission view = viewer + parent->viewer\n  }}\nrelationships: |-\n{rels}assertions:\n  assertTrue:\n    - document:d1#view@user:u1\n  assertFalse:\n    - document:d1#view@user:u2\nvalidation:\n  document:d7#view:\n    - '[user:u7] is <document:d7#viewer>'\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.yaml");
    std::fs::write(&p, text).unwrap();
    let started = Instant::now();
    let out = validate(&[p.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("Success! - 10000 relationships loaded, 2 assertions run, 1"),
        "{}",
        stdout(&out)
    );
    println!("validate, 10,000 relationships: {took:?} for the whole process");
}

/// docs/cli.md is what the binary's command definitions say.
#[test]
fn the_cli_reference_is_generated() {
    let generated = pemba::cli::reference::markdown();
    let path = repo().join("docs/cli.md");
    if std::env::var_os("PEMBA_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/cli.md is out of date: run `PEMBA_UPDATE_DOCS=1 cargo test --release --test cli`"
    );
    for verb in [
        "pemba permission check",
        "pemba validate",
        "pemba context set",
    ] {
        assert!(generated.contains(verb), "{verb}");
    }
}

/// `pemba serve-testing --load-configs`: every new store (one per token) starts with the
/// files' schema and relationships; a bad file stops the server at start.
#[test]
fn serve_testing_loads_configs_into_every_store() {
    let port = free_port();
    let mut child = pemba()
        .args(["serve-testing", "--grpc-addr", &format!("127.0.0.1:{port}")])
        .args(["--readonly-grpc-enabled=false"])
        .args(["--load-configs", "schema/document_sharing.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_listening(&mut child, port, Duration::from_secs(30));
    let endpoint = format!("127.0.0.1:{port}");
    let ask = |token: &str, args: &[&str]| {
        pemba()
            .args(args)
            .args(["--endpoint", &endpoint, "--token", token])
            .output()
            .unwrap()
    };
    let example: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("schema/document_sharing.yaml")).unwrap(),
    )
    .unwrap();
    let granted = example["assertions"]["assertTrue"][0].as_str().unwrap();
    let (resource, rest) = granted.split_once('#').unwrap();
    let (permission, subject) = rest.split_once('@').unwrap();
    for token in ["one", "two"] {
        let check = ask(
            token,
            &["permission", "check", resource, permission, subject],
        );
        assert_eq!(code(&check), 0, "{token}: {}", stderr(&check));
    }
    // Stores stay apart: a write with one token is not seen with the other.
    let wrote = ask(
        "one",
        &["relationship", "create", "document:fresh#viewer@user:zoe"],
    );
    assert!(wrote.status.success(), "{}", stderr(&wrote));
    let mine = ask(
        "one",
        &["permission", "check", "document:fresh", "view", "user:zoe"],
    );
    let theirs = ask(
        "two",
        &["permission", "check", "document:fresh", "view", "user:zoe"],
    );
    assert_eq!((code(&mine), code(&theirs)), (0, 1));
    let _ = child.kill();
    let _ = child.wait();

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "schema: |-\n  definition user {}\nrelationships: |-\n  document:x#viewer@user:a\n",
    )
    .unwrap();
    let refused = pemba()
        .args(["serve-testing", "--grpc-addr", "127.0.0.1:0"])
        .args(["--readonly-grpc-enabled=false", "--load-configs"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&refused), 3);
    assert!(
        stderr(&refused).contains("bad.yaml:4:") && stderr(&refused).contains("document"),
        "{}",
        stderr(&refused)
    );
}
