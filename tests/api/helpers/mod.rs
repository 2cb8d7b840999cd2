//! The black-box harness: every test starts the real `coffer` binary on a free loopback port
//! with a fresh storage root and a random secret, and talks to it over HTTP. Dropping a
//! [`TestApp`] stops it and fails the test if it left a temp file in the storage root.
//!
//! A case reads as the request and what must come back:
//!
//! ```ignore
//! let u = app.user("alice").await;
//! let f = app.stored(&u.token, "a.png", png(100)).await;            // 201 or the test fails
//! app.file(id).as_user(&thief).problem(404).await;                  // calls.rs: one per route
//! assert_eq!(app.me().api_key(&key).status().await, 200);
//! for (row, body, want) in [("no lifetime", json!({"expires_in": 0}),
//!                            (422, "validation-failed", "expires_in"))] {
//!     assert_eq!(app.create_link(id, &body).as_user(&u).refusal().await, want, "{row}");
//! }
//! ```
//!
//! `request.rs` has `Req` and `Refusal`, `calls.rs` the per-route calls and the audit,
//! blob and CLI helpers, `raw.rs` requests no client library sends, `fixtures.rs` the files.
//! `TEST_LOG=1` echoes the server's log to stderr.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

pub mod calls;
pub mod clamd;
pub mod fixtures;
pub mod images;
pub mod raw;
pub mod request;
pub mod s3;
pub mod stack;

pub use calls::{account, each_once, outcome};
pub use request::{Refusal, assert_problem, file_form};

/// The binary under test: this build's, or `COFFER_TEST_BIN` (a release build, for the
/// measurements marked `#[ignore]`).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("COFFER_TEST_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_coffer").to_owned())
    })
}

/// A fresh strong secret.
pub fn secret() -> String {
    let out = Command::new(bin())
        .arg("gen-secret")
        .output()
        .expect("gen-secret");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Environment every test server gets unless a test overrides it: fast password hashing and
/// rate limits out of the way (rate-limit tests set their own).
fn base_env() -> Vec<(String, String)> {
    [
        ("COFFER_AUTH__ARGON2_MEMORY_KIB", "1024"),
        ("COFFER_AUTH__ARGON2_ITERATIONS", "1"),
        ("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "100000"),
        ("COFFER_RATE_LIMIT__BURST", "100000"),
        ("COFFER_RATE_LIMIT__LOGIN_PER_MINUTE", "100000"),
        ("COFFER_SERVER__BIND", "127.0.0.1:0"),
        ("COFFER_LOG__LEVEL", "info"),
        ("COFFER_SERVER__SHUTDOWN_GRACE_SECS", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Builds a [`TestApp`].
pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    root: Option<PathBuf>,
    args: Vec<String>,
    database: Option<Arc<stack::TestDb>>,
    wait_ready: bool,
    tls_root: Option<String>,
}

impl TestAppBuilder {
    /// Set (or override) one environment variable.
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.to_owned(), v.into()));
        self
    }

    /// Remove an environment variable (e.g. the secret).
    pub fn without(mut self, k: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self
    }

    /// Serve an existing storage root (restart tests).
    pub fn root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// Keep the metadata in a fresh database of the test stack's PostgreSQL
    /// (`COFFER_DATABASE_URL`), dropped once the server is gone.
    pub fn postgres(self, stack: &stack::Stack) -> Self {
        self.database(Arc::new(stack.fresh_database()))
    }

    /// Keep the metadata in `db`, which another server may share (several nodes).
    pub fn database(mut self, db: Arc<stack::TestDb>) -> Self {
        self = self.env("COFFER_DATABASE_URL", db.url.clone());
        self.database = Some(db);
        self
    }

    /// Extra arguments after `serve`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// The server speaks HTTPS (native TLS configured by the test): its client trusts this
    /// PEM certificate, and nothing else.
    pub fn tls_root(mut self, pem: &str) -> Self {
        self.tls_root = Some(pem.to_owned());
        self
    }

    /// Return once the server listens, without waiting for `/readyz` to say 200 (a test of
    /// a server that starts unready).
    pub fn unready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Start the server and wait until it listens (and, unless [`Self::unready`], is ready).
    pub async fn spawn(self) -> TestApp {
        let wait_ready = self.wait_ready;
        let tmp = TempDir::new().unwrap();
        let root = self
            .root
            .clone()
            .unwrap_or_else(|| tmp.path().join("storage"));
        let mut cmd = self.command(&root);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start coffer");
        let logs = Arc::new(Mutex::new(String::new()));
        let log_pump = pump(child.stderr.take().unwrap(), logs.clone());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        let started = Instant::now();
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let listening = line.trim().strip_prefix("coffer listening on ");
        let scheme_addr = listening.and_then(|l| l.split_once("://"));
        let (scheme, addr): (&str, SocketAddr) = match scheme_addr {
            Some((scheme, a)) => (scheme, a.parse().unwrap()),
            None => {
                let _ = child.kill();
                let status = child.wait();
                // The log ends when the process does: read all of it before saying why.
                let _ = log_pump.join();
                let log = logs.lock().unwrap().clone();
                panic!(
                    "server did not start ({status:?} after {:?}); stdout: {line:?}\nlog:\n{log}",
                    started.elapsed()
                );
            }
        };
        assert_eq!(
            scheme,
            if self.tls_root.is_some() {
                "https"
            } else {
                "http"
            },
            "the scheme the server announced"
        );
        let mut client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some(pem) = &self.tls_root {
            client =
                client.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
        }
        let app = TestApp {
            addr,
            base: format!("{scheme}://{addr}"),
            root,
            _tmp: tmp,
            database: self.database,
            child: Some(child),
            logs,
            // Idle pooled connections are dropped well before the server's idle cut-off, so
            // no request races a connection the server is closing.
            client: client.build().unwrap(),
            env: self.env,
            leftovers_expected: false,
        };
        if wait_ready {
            app.wait_ready().await;
        }
        app
    }

    fn command(&self, root: &Path) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").args(&self.args);
        clean_env(&mut cmd);
        cmd.env("COFFER_STORAGE__ROOT", root);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Start from an environment without any COFFER_* a developer may have exported.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("COFFER_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    // Never pick up a config.toml from the working directory.
    cmd.current_dir(std::env::temp_dir());
}

fn pump(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    let echo = std::env::var_os("TEST_LOG").is_some();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if echo {
                        eprint!("{text}");
                    }
                    into.lock().unwrap().push_str(&text);
                }
            }
        }
    })
}

/// A running server.
pub struct TestApp {
    /// Its address.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub base: String,
    /// Its storage root.
    pub root: PathBuf,
    _tmp: TempDir,
    /// The PostgreSQL database it serves, if any (dropped after the server stops).
    pub database: Option<Arc<stack::TestDb>>,
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    /// An HTTP client that follows no redirects.
    pub client: Client,
    env: Vec<(String, String)>,
    /// Set by [`TestApp::expect_leftovers`]: the drop check is off.
    leftovers_expected: bool,
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// User id.
    pub id: String,
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// Access token.
    pub token: String,
    /// Refresh token.
    pub refresh: String,
}

/// Default password for test users (meets the policy).
pub const PASSWORD: &str = "Correct-Horse-9-Battery";

impl TestApp {
    /// A builder with the default test environment and a fresh secret.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: base_env(),
            root: None,
            args: Vec::new(),
            database: None,
            wait_ready: true,
            tls_root: None,
        }
        .env("COFFER_SECRET_KEY", secret())
    }

    /// Start with defaults.
    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server not ready; log:\n{}", self.logs());
    }

    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The environment the server runs with (for CLI calls on the same root).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The server's `COFFER_SECRET_KEY`.
    pub fn secret(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "COFFER_SECRET_KEY")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// A builder for a new server on this one's root with its secret (stop this one first).
    pub fn relaunch(&self) -> TestAppBuilder {
        let builder = TestApp::builder()
            .root(&self.root)
            .env("COFFER_SECRET_KEY", self.secret());
        match &self.database {
            Some(db) => builder.database(db.clone()),
            None => builder,
        }
    }

    /// Walk a paged listing (`items` / `next_cursor`); returns each page's items.
    pub async fn pages(&self, path: &str, token: &str, limit: usize) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut req = self
                .authed(Method::GET, path, token)
                .query(&[("limit", limit.to_string())]);
            if let Some(c) = &cursor {
                req = req.query(&[("cursor", c)]);
            }
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            pages.push(v["items"].as_array().unwrap().clone());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return pages,
            }
        }
    }

    /// A request with no credentials.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request with a bearer token.
    pub fn authed(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(token)
    }

    /// POST JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.req(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Register (201 expected) and log in.
    pub async fn user(&self, username: &str) -> TestUser {
        let r = self
            .post_json(
                "/api/v1/auth/register",
                &json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
            )
            .await;
        assert_eq!(
            r.status(),
            201,
            "register {username}: {}",
            r.text().await.unwrap()
        );
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (token, refresh) = self.login(username, PASSWORD).await;
        TestUser {
            id,
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            token,
            refresh,
        }
    }

    /// Log in; panics unless 200.
    pub async fn login(&self, username: &str, password: &str) -> (String, String) {
        let r = self
            .post_json(
                "/api/v1/auth/login",
                &json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(r.status(), 200, "login {username}");
        let v: Value = r.json().await.unwrap();
        (
            v["access_token"].as_str().unwrap().to_owned(),
            v["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    /// Create an admin with the CLI (as an operator would) and log in.
    pub async fn admin(&self, username: &str) -> TestUser {
        let out = self
            .cli(&[
                "user",
                "create",
                "--username",
                username,
                "--email",
                &format!("{username}@example.com"),
                "--admin",
            ])
            .env("COFFER_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (token, refresh) = self.login(username, PASSWORD).await;
        TestUser {
            id: user["id"].as_str().unwrap().to_owned(),
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            token,
            refresh,
        }
    }

    /// A CLI command on this server's root and environment.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        clean_env(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("COFFER_STORAGE__ROOT", &self.root);
        cmd.args(args);
        cmd
    }

    /// Raw-body upload.
    pub async fn upload(&self, token: &str, name: &str, bytes: Vec<u8>) -> Response {
        self.authed(Method::POST, "/api/v1/files", token)
            .query(&[("filename", name)])
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    /// Multipart upload with one `file` part.
    pub async fn upload_multipart(&self, token: &str, name: &str, bytes: Vec<u8>) -> Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.authed(Method::POST, "/api/v1/files", token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Upload and return the file object (panics unless 201).
    pub async fn stored(&self, token: &str, name: &str, bytes: Vec<u8>) -> Value {
        let r = self.upload(token, name, bytes).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 201, "upload {name}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// GET a file's content with optional extra headers.
    pub async fn download(&self, token: &str, id: &str, headers: &[(&str, &str)]) -> Response {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        self.authed(Method::GET, &format!("/api/v1/files/{id}/content"), token)
            .headers(h)
            .send()
            .await
            .unwrap()
    }

    /// The audit trail as an admin sees it (all pages).
    pub async fn audit(&self, admin_token: &str) -> Vec<Value> {
        self.pages("/api/v1/admin/audit", admin_token, 1000)
            .await
            .concat()
    }

    /// Every regular file under the storage root's `blobs/` (and `tmp/`).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        files_under(&self.root.join("blobs"))
    }

    /// Leftovers of uploads in flight.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        files_under(&self.root.join("tmp"))
    }

    /// Wait until `cond` holds (bounded).
    pub async fn eventually(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// Declare that this server's storage root may keep temp files when the test ends: a test
    /// that kills it with SIGKILL mid-upload leaves them by design. Turns the drop check off.
    pub fn expect_leftovers(&mut self) {
        self.leftovers_expected = true;
    }

    /// Kill the server with SIGKILL (crash tests) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop gracefully (SIGTERM) and return the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// How long a dropped server may take to remove the temp file of an upload it refused or lost
/// a moment ago (the removal runs after the answer).
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

impl Drop for TestApp {
    /// Stops the server, then checks that it left no temp file in the storage root's `tmp/`
    /// (every refused, aborted or failed upload must clean up after itself), unless the test
    /// said otherwise ([`TestApp::expect_leftovers`]) or has already failed.
    fn drop(&mut self) {
        let check = !self.leftovers_expected && !std::thread::panicking();
        if check && self.child.is_some() {
            let deadline = Instant::now() + LEFTOVER_GRACE;
            while !self.temp_files().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        self.kill9();
        if check {
            let left = self.temp_files();
            assert!(
                left.is_empty(),
                "the server left {} temp file(s) in the storage root: {left:?}\nlog:\n{}",
                left.len(),
                self.logs()
            );
        }
    }
}

/// Regular files below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A response's `Content-Type` (empty when it has none).
pub fn content_type(r: &Response) -> String {
    r.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Assert a response is a problem document with `status`, returning its body.
pub async fn problem(r: Response, status: u16) -> Value {
    let got = r.status().as_u16();
    let ct = content_type(&r);
    let body = r.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct}: {body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], status);
    assert!(
        v["type"].is_string() && v["title"].is_string() && v["detail"].is_string(),
        "{v}"
    );
    v
}
