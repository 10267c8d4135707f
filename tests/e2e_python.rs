//! End to end with the official Python client (PyPI `authzed`) against the real binary.
//!
//! Start the real `pemba` binary on a free port with a RocksDB data dir, drive it from Python,
//! kill -9 it right after an acknowledged write, restart it, check nothing was lost, run
//! queries, then stop it with SIGTERM and expect a clean exit. Also: the same client over TLS
//! (a certificate the test generates) with two preshared keys from the environment, as during a
//! key rotation.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test harness: a failed step should abort the test"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, serve_command, wait_listening};

const KEY: &str = "e2e-test-key";

/// A venv with the official client, made once per target dir (or `PEMBA_E2E_VENV`). The tests
/// of this file run in parallel threads: one makes the venv while the others wait for it (two
/// `python3 -m venv` in one directory at once fail on a fresh machine).
fn python() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let venv = std::env::var_os("PEMBA_E2E_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("authzed-venv"));
    let py = venv.join("bin").join("python");
    let ready = venv.join(".authzed-installed");
    if !ready.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs")
            .success();
        assert!(ok, "python3 -m venv failed");
        let ok = Command::new(&py)
            .args(["-m", "pip", "install", "--quiet", "authzed==1.25.0"])
            .status()
            .expect("pip runs")
            .success();
        assert!(ok, "pip install authzed failed");
        std::fs::write(&ready, b"").expect("marker written");
    }
    py
}

fn session(py: &Path, phase: &str, port: u16) -> String {
    session_with(py, phase, port, &[])
}

fn session_with(py: &Path, phase: &str, port: u16, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/session.py");
    let out = Command::new(py)
        .arg(script)
        .args([phase, &port.to_string(), KEY])
        .args(extra)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "phase `{phase}` failed:\n{stdout}\n{stderr}"
    );
    stdout
}

fn start(data_dir: &Path, port: u16) -> Child {
    let mut child = serve_command(port)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--grpc-preshared-key", KEY])
        .spawn()
        .expect("pemba starts");
    wait_listening(&mut child, port, Duration::from_secs(30));
    child
}

#[test]
fn python_client_session_survives_kill_and_restart() {
    let py = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");

    let port = free_port();
    let mut server = start(&data, port);
    let out = session(&py, "write", port);
    assert!(
        out.contains("WRITE-ACKED"),
        "write phase did not finish: {out}"
    );
    let watch_from = out
        .lines()
        .find_map(|l| l.strip_prefix("WATCH-FROM "))
        .expect("the write phase prints the token to watch from")
        .to_string();
    server.kill().expect("kill -9");
    server.wait().expect("reaped");

    let port = free_port();
    let mut server = start(&data, port);
    session_with(&py, "verify", port, &[&watch_from]);
    session(&py, "query", port);

    let ok = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "SIGTERM sent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.try_wait().expect("wait") {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn python_client_over_tls_with_two_keys() {
    let py = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("cert written");
    std::fs::write(&key_path, key.serialize_pem()).expect("key written");

    let port = free_port();
    let mut server = serve_command(port)
        .args(["--datastore", "memory"])
        .arg("--grpc-tls-cert-path")
        .arg(&cert_path)
        .arg("--grpc-tls-key-path")
        .arg(&key_path)
        .env("PEMBA_GRPC_PRESHARED_KEY", "old-key,new-key")
        .spawn()
        .expect("pemba starts");
    wait_listening(&mut server, port, Duration::from_secs(30));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/tls_keys.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(port.to_string())
        .arg(&cert_path)
        .args(["old-key,new-key", "other-key"])
        .output()
        .expect("python runs");
    server.kill().expect("kill");
    server.wait().expect("reaped");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "TLS session failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("key 'new-key' accepted"), "{stdout}");
}

/// `pemba serve-testing`, as an application's test suite starts it: each token its own store,
/// the read-only port over the same stores, the Experimental service's older RPCs; the time
/// from start to listening is printed (it must be as quick to start as `serve`).
#[test]
fn python_client_against_serve_testing() {
    let py = python();
    let (port, readonly) = (free_port(), free_port());
    let started = Instant::now();
    let mut server = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args(["serve-testing", "--grpc-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--readonly-grpc-addr")
        .arg(format!("127.0.0.1:{readonly}"))
        .env("PEMBA_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pemba serve-testing starts");
    wait_listening(&mut server, port, Duration::from_secs(30));
    wait_listening(&mut server, readonly, Duration::from_secs(30));
    println!("serve-testing listening after {:?}", started.elapsed());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/testing_server.py");
    let out = Command::new(&py)
        .arg(script)
        .args([port.to_string(), readonly.to_string()])
        .output()
        .expect("python runs");
    server.kill().expect("kill");
    server.wait().expect("reaped");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "serve-testing session failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: token B has another store"), "{stdout}");
}

#[test]
fn refuses_bad_flags_and_locked_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args(["serve", "--grpc-addr", "0.0.0.0:0"])
        .output()
        .expect("runs");
    assert!(
        !out.status.success(),
        "non-loopback without a key is refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));

    let out = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args(["serve", "--datastore", "nosuch"])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "unknown datastore is refused");

    let out = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args([
            "serve",
            "--datastore",
            "memory",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--grpc-preshared-key", "k1,"])
        .output()
        .expect("runs");
    assert!(!out.status.success(), "an empty key is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    let out = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args([
            "serve",
            "--datastore",
            "memory",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--grpc-tls-key-path", "key.pem"])
        .output()
        .expect("runs");
    assert!(
        !out.status.success(),
        "a key without a certificate is refused"
    );

    let data = dir.path().join("data");
    let port = free_port();
    let mut first = start(&data, port);
    let out = Command::new(env!("CARGO_BIN_EXE_pemba"))
        .args(["serve", "--grpc-addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("runs");
    first.kill().expect("kill");
    first.wait().expect("reaped");
    assert!(!out.status.success(), "a locked data dir is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("locked"),
        "message names the lock: {stderr}"
    );
}
