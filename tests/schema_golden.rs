//! Golden tests for the schema pipeline: each `*.zed` file against its `*.expected`.
//!
//! Every `tests/schema_golden/*.zed` is compiled and its result (a stable dump of the compiled
//! schema, or the error as `kind line:column: message`) must equal the sibling `*.expected`. Run
//! with `REGEN=1` to rewrite the expected files, then review the diff. Also compiles every
//! example schema in `schema/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test on unexpected input"
)]

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use pemba::schema::{CompiledSchema, SchemaError, compile};

/// `tests/` of the crate that owns this file, whichever crate compiles it.
fn tests_dir() -> PathBuf {
    let this_file = Path::new(file!());
    let absolute = if this_file.is_absolute() {
        this_file.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(this_file)
    };
    absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("tests"))
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// A stable, human-readable dump of a compiled schema.
fn dump(s: &CompiledSchema) -> String {
    let mut out = String::new();
    writeln!(out, "use_expiration: {}", s.use_expiration).unwrap();
    for c in s.caveats.values() {
        let params: Vec<String> = c
            .parameters
            .iter()
            .map(|p| format!("{} {}", p.name, p.type_))
            .collect();
        writeln!(out, "caveat {}({})", c.name, params.join(", ")).unwrap();
        if !c.comment.is_empty() {
            writeln!(out, "  comment: {:?}", c.comment).unwrap();
        }
        writeln!(out, "  expression: {:?}", c.expression).unwrap();
    }
    for d in s.definitions.values() {
        writeln!(out, "definition {}", d.name).unwrap();
        if !d.comment.is_empty() {
            writeln!(out, "  comment: {:?}", d.comment).unwrap();
        }
        for r in &d.relations {
            let allowed: Vec<String> = r.allowed.iter().map(ToString::to_string).collect();
            writeln!(out, "  relation {}: {}", r.name, allowed.join(" | ")).unwrap();
            if !r.comment.is_empty() {
                writeln!(out, "    comment: {:?}", r.comment).unwrap();
            }
        }
        for p in &d.permissions {
            writeln!(out, "  permission {} = {}", p.name, p.expr).unwrap();
            if !p.comment.is_empty() {
                writeln!(out, "    comment: {:?}", p.comment).unwrap();
            }
        }
    }
    out
}

fn render_error(e: &SchemaError) -> String {
    let kind = if e.is_parse() { "parse" } else { "type" };
    format!(
        "{kind} error {}:{}: {}\n",
        e.line(),
        e.column(),
        e.message()
    )
}

fn render(text: &str) -> String {
    match compile(text) {
        Ok(s) => dump(&s),
        Err(e) => render_error(&e),
    }
}

#[test]
fn golden_files_match() {
    let dir = tests_dir().join("schema_golden");
    let regen = std::env::var_os("REGEN").is_some_and(|v| !v.is_empty() && v != "0");
    let inputs = files_with_extension(&dir, "zed");
    assert!(
        inputs.len() >= 40,
        "golden inputs missing in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for input in &inputs {
        let text = fs::read_to_string(input).unwrap();
        let got = render(&text);
        let expected_path = input.with_extension("expected");
        if regen {
            fs::write(&expected_path, &got).unwrap();
            continue;
        }
        match fs::read_to_string(&expected_path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                input.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no {} (run with REGEN=1)\n--- got\n{got}",
                input.display(),
                expected_path.display()
            )),
        }
    }
    // Every expected file belongs to an input.
    for expected in files_with_extension(&dir, "expected") {
        if !expected.with_extension("zed").exists() {
            failures.push(format!("{}: stale, no matching .zed", expected.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatch(es):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_error_files_fail_and_ok_files_compile() {
    let dir = tests_dir().join("schema_golden");
    let inputs = files_with_extension(&dir, "zed");
    let errors = inputs
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("err_"))
        })
        .count();
    assert!(errors >= 15, "only {errors} error cases");
    for input in inputs {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        let result = compile(&fs::read_to_string(&input).unwrap());
        if name.starts_with("err_") {
            assert!(result.is_err(), "{name} compiled");
        } else {
            assert!(
                result.is_ok(),
                "{name}: {}",
                render(&fs::read_to_string(&input).unwrap())
            );
        }
    }
}

#[test]
fn every_example_schema_compiles() {
    let dir = tests_dir()
        .parent()
        .map(|p| p.join("schema"))
        .unwrap_or_else(|| PathBuf::from("schema"));
    let examples = files_with_extension(&dir, "zed");
    let names: Vec<String> = examples
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for required in ["document_sharing.zed", "caveats.zed", "expiration.zed"] {
        assert!(
            names.iter().any(|n| n == required),
            "schema/{required} missing"
        );
    }
    for path in &examples {
        let text = fs::read_to_string(path).unwrap();
        let schema =
            compile(&text).unwrap_or_else(|e| panic!("{}: {}", path.display(), render_error(&e)));
        assert!(!schema.is_empty(), "{} is empty", path.display());
        assert_eq!(schema.source, text);
    }
}

#[test]
fn document_sharing_has_the_expected_shape() {
    let path = tests_dir()
        .parent()
        .map(|p| p.join("schema/document_sharing.zed"))
        .unwrap();
    let s = compile(&fs::read_to_string(path).unwrap()).unwrap();
    let doc = s.definition("document").unwrap();
    assert_eq!(
        doc.permission("view").unwrap().expr.to_string(),
        "(viewer + edit + parent->view) - banned"
    );
    assert_eq!(
        doc.permission("edit").unwrap().expr.to_string(),
        "owner + editor + parent->edit"
    );
    let viewer: Vec<String> = doc
        .relation("viewer")
        .unwrap()
        .allowed
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(viewer, vec!["user", "group#member", "user:*"]);
    assert!(s.has_member("folder", "view"));
    assert!(s.has_member("group", "member"));
    assert!(!s.has_member("user", "member"));
}
