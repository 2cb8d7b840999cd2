//! The shared backends that `scripts/stack up` starts: PostgreSQL, a three-node Garage (S3)
//! cluster with replication 3, and clamd with the project's EICAR-only signature database.
//! `scripts/test-stack` brings them up, exports their `COFFER_TEST_*` variables and runs
//! `cargo test`; CI does the same. Under a plain `cargo test` they are absent and the tests
//! that need them pass after saying once that they were skipped.
//!
//! ```ignore
//! let Some(stack) = stack::require("s3_upload_roundtrip") else { return };
//! let db = stack.fresh_database();   // dropped (with its connections) when `db` goes
//! let prefix = stack.fresh_prefix(); // "t-<uuid>/": this test's corner of the bucket
//! ```
//!
//! Many tests share one stack at a time. A test that injects failures (stops a Garage node,
//! restarts PostgreSQL, stops clamd) takes it with [`require_exclusive`] instead: that waits
//! until no other test holds the stack (in this process or another: the lock is a file lock
//! in the state directory) and keeps the others out until it ends. Whatever such a test
//! stopped is started again when its `Stack` is dropped, even if the test panicked.
//! One test must not hold two `Stack`s at once when one of them is exclusive (it would wait
//! for itself).
//!
//! With `COFFER_TEST_REQUIRE_STACK=1` (set by `scripts/test-stack` and CI) a missing stack
//! fails the test instead of skipping it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// The state directory of the running stack (`DIR` of `scripts/stack up --dir DIR`).
pub const STACK_DIR: &str = "COFFER_TEST_STACK_DIR";
/// `postgres://coffer:PASSWORD@127.0.0.1:PORT/coffer`; the role may create databases.
pub const DATABASE_URL: &str = "COFFER_TEST_DATABASE_URL";
/// The S3 endpoint tests use by default (Garage node 1), `http://127.0.0.1:PORT`.
pub const S3_ENDPOINT: &str = "COFFER_TEST_S3_ENDPOINT";
/// The S3 region Garage expects in signatures.
pub const S3_REGION: &str = "COFFER_TEST_S3_REGION";
/// The bucket (shared by all tests: each works below its own prefix).
pub const S3_BUCKET: &str = "COFFER_TEST_S3_BUCKET";
/// Access key id with read, write and owner rights on the bucket.
pub const S3_ACCESS_KEY_ID: &str = "COFFER_TEST_S3_ACCESS_KEY_ID";
/// Its secret.
pub const S3_SECRET_ACCESS_KEY: &str = "COFFER_TEST_S3_SECRET_ACCESS_KEY";
/// `unix:/path/to/clamd.sock`.
pub const CLAMD: &str = "COFFER_TEST_CLAMD";
/// How many Garage nodes there are; node N's own endpoint is `COFFER_TEST_S3_ENDPOINT_N`.
pub const GARAGE_NODES: &str = "COFFER_TEST_GARAGE_NODES";
/// Set to `1`: a missing stack fails the test instead of skipping it.
pub const REQUIRE_STACK: &str = "COFFER_TEST_REQUIRE_STACK";

/// The stack, as its environment describes it.
#[derive(Debug)]
pub struct Stack {
    /// State directory (logs, configs, PIDs).
    pub dir: PathBuf,
    /// Database URL of the shared `coffer` database (tests use [`Stack::fresh_database`]).
    pub database_url: String,
    /// The default S3 endpoint (node 1).
    pub s3_endpoint: String,
    /// Every node's own S3 endpoint; `s3_endpoints[0]` is node 1.
    pub s3_endpoints: Vec<String>,
    /// S3 region.
    pub s3_region: String,
    /// Bucket.
    pub s3_bucket: String,
    /// Access key id.
    pub s3_access_key_id: String,
    /// Secret access key.
    pub s3_secret_access_key: String,
    /// clamd address as `scan.clamd` takes it (`unix:/path`).
    pub clamd: String,
    /// Held for the whole test: shared, or exclusive for failure injection.
    _lock: File,
    exclusive: bool,
    /// What this (exclusive) holder stopped and has not started again.
    stopped: Mutex<Vec<Stopped>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Garage(usize),
    Clamd,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn must(name: &str) -> String {
    var(name).unwrap_or_else(|| {
        panic!("{STACK_DIR} is set but {name} is not: source the stack's env file again")
    })
}

static SKIP_NOTE: Once = Once::new();

/// The stack for a test named `test`, shared with other tests; `None` (after a one-time note
/// on stderr) when no stack runs.
pub fn require(test: &str) -> Option<Stack> {
    take(test, false)
}

/// The stack for a test that injects failures: no other test holds it meanwhile.
pub fn require_exclusive(test: &str) -> Option<Stack> {
    take(test, true)
}

fn take(test: &str, exclusive: bool) -> Option<Stack> {
    let stack = Stack::from_env_locked(exclusive);
    if stack.is_none() {
        assert!(
            var(REQUIRE_STACK).as_deref() != Some("1"),
            "{test} needs the PostgreSQL+Garage stack and {REQUIRE_STACK}=1, but {STACK_DIR} is not set"
        );
        SKIP_NOTE.call_once(|| {
            // Straight to the process's stderr: the test harness captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test} needs the PostgreSQL+Garage stack; run scripts/test-stack \
                 (further stack tests in this run skip silently)"
            );
        });
    }
    stack
}

impl Stack {
    /// The stack from the `COFFER_TEST_*` variables, shared with other tests; `None` when
    /// `COFFER_TEST_STACK_DIR` is not set. Prefer [`require`], which says why a test skipped.
    pub fn from_env() -> Option<Stack> {
        Self::from_env_locked(false)
    }

    fn from_env_locked(exclusive: bool) -> Option<Stack> {
        let dir = PathBuf::from(var(STACK_DIR)?);
        let nodes: usize = must(GARAGE_NODES)
            .parse()
            .expect("COFFER_TEST_GARAGE_NODES");
        let s3_endpoints = (1..=nodes)
            .map(|n| must(&format!("{S3_ENDPOINT}_{n}")))
            .collect();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .unwrap_or_else(|e| panic!("stack lock in {}: {e}", dir.display()));
        if exclusive {
            lock.lock().expect("exclusive stack lock");
        } else {
            lock.lock_shared().expect("shared stack lock");
        }
        Some(Stack {
            dir,
            database_url: must(DATABASE_URL),
            s3_endpoint: must(S3_ENDPOINT),
            s3_endpoints,
            s3_region: must(S3_REGION),
            s3_bucket: must(S3_BUCKET),
            s3_access_key_id: must(S3_ACCESS_KEY_ID),
            s3_secret_access_key: must(S3_SECRET_ACCESS_KEY),
            clamd: must(CLAMD),
            _lock: lock,
            exclusive,
            stopped: Mutex::new(Vec::new()),
        })
    }

    // ---- Per-test isolation ------------------------------------------------------------

    /// A new, empty database for this test (owned by the stack's role), dropped with the
    /// returned value.
    pub fn fresh_database(&self) -> TestDb {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        psql(&self.database_url, &format!("CREATE DATABASE {name}"));
        let base = self
            .database_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .expect("database URL has a path");
        TestDb {
            url: format!("{base}/{name}"),
            name,
            admin_url: self.database_url.clone(),
        }
    }

    /// A key prefix of this test's own in the shared bucket, `t-<uuid>/`. Objects below it are
    /// not removed (the bucket goes with the stack).
    pub fn fresh_prefix(&self) -> String {
        format!("t-{}/", uuid::Uuid::new_v4().simple())
    }

    /// Environment for a coffer server on this stack, with `db` and `prefix` (the names of
    /// API.md's "Several nodes" and "Content safety" settings). Add `(COFFER_S3__ENDPOINT, ..)`
    /// again to point a server at another node.
    pub fn server_env(&self, db: &TestDb, prefix: &str) -> Vec<(String, String)> {
        [
            ("COFFER_DATABASE_URL", db.url.as_str()),
            ("COFFER_STORAGE__BACKEND", "s3"),
            ("COFFER_S3__ENDPOINT", self.s3_endpoint.as_str()),
            ("COFFER_S3__REGION", self.s3_region.as_str()),
            ("COFFER_S3__BUCKET", self.s3_bucket.as_str()),
            ("COFFER_S3__PREFIX", prefix),
            ("COFFER_S3__FORCE_PATH_STYLE", "true"),
            ("COFFER_S3_ACCESS_KEY_ID", self.s3_access_key_id.as_str()),
            (
                "COFFER_S3_SECRET_ACCESS_KEY",
                self.s3_secret_access_key.as_str(),
            ),
            ("COFFER_SCAN__CLAMD", self.clamd.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Garage node `n`'s own S3 endpoint (1-based).
    pub fn s3_endpoint_of(&self, n: usize) -> &str {
        assert!(
            (1..=self.s3_endpoints.len()).contains(&n),
            "Garage node {n} of {}",
            self.s3_endpoints.len()
        );
        &self.s3_endpoints[n - 1]
    }

    // ---- Failure injection (exclusive holders only) --------------------------------------

    /// Stop Garage node `n` (1-based). S3 goes on through the others (replication 3).
    pub fn garage_stop(&self, n: usize) {
        self.s3_endpoint_of(n);
        self.control(&["garage-stop", &n.to_string()]);
        self.note_stopped(Stopped::Garage(n));
    }

    /// Start Garage node `n` again, connected both ways, and wait until the cluster sees it.
    pub fn garage_start(&self, n: usize) {
        self.control(&["garage-start", &n.to_string()]);
        self.note_started(Stopped::Garage(n));
    }

    /// Stop PostgreSQL and start it again on the same port and data; returns once it answers.
    pub fn pg_restart(&self) {
        self.control(&["pg-restart"]);
    }

    /// Stop clamd (its socket goes away).
    pub fn clamd_stop(&self) {
        self.control(&["clamd-stop"]);
        self.note_stopped(Stopped::Clamd);
    }

    /// Start clamd again; returns once it answers PING.
    pub fn clamd_start(&self) {
        self.control(&["clamd-start"]);
        self.note_started(Stopped::Clamd);
    }

    fn note_stopped(&self, what: Stopped) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if !stopped.contains(&what) {
            stopped.push(what);
        }
    }

    fn note_started(&self, what: Stopped) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        stopped.retain(|s| *s != what);
    }

    /// `scripts/stack --dir DIR ARGS...`; panics with its output unless it succeeds.
    fn control(&self, args: &[&str]) {
        assert!(
            self.exclusive,
            "failure injection ({}) needs stack::require_exclusive: other tests share this stack",
            args.join(" ")
        );
        let out = self.run_script(args);
        assert!(
            out.status.success(),
            "scripts/stack {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run_script(&self, args: &[&str]) -> Output {
        Command::new(script())
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/stack")
    }

    // ---- Direct access, for checks that bypass coffer -------------------------------------

    /// A signed S3 request with curl against `endpoint` for `key` in the bucket; returns the
    /// status and the body.
    pub fn s3(
        &self,
        endpoint: &str,
        method: &str,
        key: &str,
        body: Option<&[u8]>,
    ) -> (u16, Vec<u8>) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "30", "-X", method])
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.s3_region))
            .arg("--user")
            .arg(format!(
                "{}:{}",
                self.s3_access_key_id, self.s3_secret_access_key
            ))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(["-w", "%{http_code}", "-o"])
            .arg(tmp.path())
            .arg(format!("{endpoint}/{}/{key}", self.s3_bucket))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]).stdin(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null());
        }
        let mut child = cmd.spawn().expect("curl");
        if let Some(body) = body {
            child.stdin.take().unwrap().write_all(body).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let status = String::from_utf8_lossy(&out.stdout);
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {endpoint}/{key}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (status, std::fs::read(tmp.path()).unwrap())
    }

    /// clamd's socket path.
    pub fn clamd_socket(&self) -> &Path {
        Path::new(
            self.clamd
                .strip_prefix("unix:")
                .expect("COFFER_TEST_CLAMD is unix:PATH"),
        )
    }

    /// One clamd command (`PING`, `VERSION`, ...) in its `z` form; the answer without the NUL.
    pub fn clamd_command(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.clamd_socket())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("z{command}\0").as_bytes())?;
        read_reply(s)
    }

    /// Scan `bytes` with INSTREAM; clamd's answer, e.g. `stream: OK` or
    /// `stream: Coffer.Test.EICAR.UNOFFICIAL FOUND`.
    pub fn clamd_scan(&self, bytes: &[u8]) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.clamd_socket())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"zINSTREAM\0")?;
        for chunk in bytes.chunks(64 * 1024) {
            s.write_all(&u32::try_from(chunk.len()).unwrap().to_be_bytes())?;
            s.write_all(chunk)?;
        }
        s.write_all(&0u32.to_be_bytes())?;
        read_reply(s)
    }
}

fn read_reply(mut s: UnixStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let end = reply.iter().position(|b| *b == 0).unwrap_or(reply.len());
    Ok(String::from_utf8_lossy(&reply[..end]).into_owned())
}

impl Drop for Stack {
    /// A failure-injection test leaves the stack whole, even when it panicked.
    fn drop(&mut self) {
        let stopped = std::mem::take(self.stopped.get_mut().unwrap_or_else(|e| e.into_inner()));
        for what in stopped {
            let out = match what {
                Stopped::Garage(n) => self.run_script(&["garage-start", &n.to_string()]),
                Stopped::Clamd => self.run_script(&["clamd-start"]),
            };
            if !out.status.success() {
                let _ = writeln!(
                    std::io::stderr(),
                    "stack: could not start {what:?} again: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// A database of one test's own; `DROP DATABASE ... WITH (FORCE)` when dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Its URL (the stack's role and password).
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// Run SQL in this database with psql; its unaligned, tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let out = psql_output(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        if !out.status.success() {
            let _ = writeln!(
                std::io::stderr(),
                "stack: could not drop database {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Run SQL with psql against `url`; its output, trimmed. Panics unless psql succeeds.
pub fn psql(url: &str, sql: &str) -> String {
    let out = psql_output(url, sql);
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn psql_output(url: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql (PostgreSQL client) on PATH")
}

/// `scripts/stack` of this checkout.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack")
}

/// The EICAR anti-virus test file (68 bytes). Built from two halves so that the whole string
/// never appears in the source, where a virus scanner on a developer's machine would flag it.
pub fn eicar() -> Vec<u8> {
    let mut v = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$".to_vec();
    v.extend_from_slice(b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    v
}
