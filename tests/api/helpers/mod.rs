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
//! `TEST_LOG=1` echoes the server's log to stderr. `COFFER_TEST_MULTINODE=1` (with the test
//! stack) runs every app as two nodes on PostgreSQL and Garage behind one address
//! (`front.rs`); [`TestAppBuilder::single_node`] keeps one embedded server, with a reason.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write as _};
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
pub mod front;
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
    /// Why this app must be one embedded server even in multi-node mode.
    single_node: Option<OneNode>,
    /// The bucket prefix of the multi-node app this one is relaunched from.
    prefix: Option<Arc<front::Prefix>>,
    /// Set by [`Self::two_nodes`].
    two_nodes: bool,
}

impl TestAppBuilder {
    /// Run one server on the embedded default (SQLite and the local storage root) even when
    /// the suite runs in multi-node mode, because of `reason` (the test looks at that one
    /// server's disk, signals its process, counts its connections...).
    pub fn single_node(mut self, reason: &'static str) -> Self {
        self.single_node = Some(OneNode(reason));
        self
    }

    /// Two nodes behind the front whenever the stack is there, multi-node mode or not (the
    /// harness's own test; the caller has checked for the stack).
    pub fn two_nodes(mut self) -> Self {
        self.two_nodes = true;
        self
    }

    /// Whether this app is several nodes: multi-node mode, not marked single-node, and not a
    /// test that picks its own backends (a database, an object store).
    fn multinode(&self) -> bool {
        (front::enabled() || self.two_nodes)
            && self.one_node().is_none()
            && (self.prefix.is_some() || self.database.is_none())
            && !self
                .env
                .iter()
                .any(|(k, _)| k == "COFFER_STORAGE__BACKEND" || k == "COFFER_DATABASE_URL")
    }

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
        self.single_node("native TLS: the harness's relay and second node speak plain HTTP")
    }

    /// Return once the server listens, without waiting for `/readyz` to say 200 (a test of
    /// a server that starts unready).
    pub fn unready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// The single-node mark that applies in this run.
    fn one_node(&self) -> Option<OneNode> {
        self.single_node
    }

    /// Start the server and wait until it listens (and, unless [`Self::unready`], is ready);
    /// in multi-node mode, both nodes and the front.
    pub async fn spawn(self) -> TestApp {
        if self.multinode() {
            return self.spawn_nodes().await;
        }
        if front::enabled()
            && let Some(mark) = self.one_node()
        {
            mark.note();
        }
        let wait_ready = self.wait_ready;
        let tmp = TempDir::new().unwrap();
        let root = self
            .root
            .clone()
            .unwrap_or_else(|| tmp.path().join("storage"));
        let node = start(self.command(&root, &self.env));
        assert_eq!(
            node.scheme,
            if self.tls_root.is_some() {
                "https"
            } else {
                "http"
            },
            "the scheme the server announced"
        );
        let app = TestApp {
            addr: node.addr,
            base: format!("{}://{}", node.scheme, node.addr),
            root,
            _tmp: tmp,
            database: self.database,
            child: node.child,
            logs: node.logs,
            client: client(false, self.tls_root.as_deref()),
            env: self.env,
            leftovers_expected: false,
            first_addr: node.addr,
            others: Vec::new(),
            front: None,
            prefix: None,
            _stack: None,
            single_node: self.single_node,
        };
        if wait_ready {
            app.wait_ready().await;
        }
        app
    }

    /// Two nodes on a fresh database and bucket prefix (or this app's, when relaunched),
    /// behind a [`front::Front`].
    async fn spawn_nodes(self) -> TestApp {
        let stack = front::stack();
        let prefix = self
            .prefix
            .clone()
            .unwrap_or_else(|| front::Prefix::fresh(&stack));
        let tmp = TempDir::new().unwrap();
        let root = self
            .root
            .clone()
            .unwrap_or_else(|| tmp.path().join("storage"));
        let mut env = self.env.clone();
        let shared = [
            ("COFFER_STORAGE__BACKEND", "s3"),
            ("COFFER_S3__REGION", stack.s3_region.as_str()),
            ("COFFER_S3__BUCKET", stack.s3_bucket.as_str()),
            ("COFFER_S3__PREFIX", prefix.prefix.as_str()),
            ("COFFER_S3__FORCE_PATH_STYLE", "true"),
            ("COFFER_S3_ACCESS_KEY_ID", stack.s3_access_key_id.as_str()),
            (
                "COFFER_S3_SECRET_ACCESS_KEY",
                stack.s3_secret_access_key.as_str(),
            ),
        ];
        for (k, v) in shared {
            if !env.iter().any(|(key, _)| key == k) {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
        // A relaunch keeps the database; a fresh app gets its own.
        let db = self
            .database
            .clone()
            .unwrap_or_else(|| Arc::new(stack.fresh_database()));
        env.retain(|(k, _)| k != "COFFER_DATABASE_URL");
        env.push(("COFFER_DATABASE_URL".to_owned(), db.url.clone()));
        // Node 1 (and the CLI) use Garage node 1; node 2 uses Garage node 2.
        let mut env_a = env.clone();
        env_a.push((
            "COFFER_S3__ENDPOINT".to_owned(),
            stack.s3_endpoint_of(1).to_owned(),
        ));
        let mut env_b = env.clone();
        env_b.push((
            "COFFER_S3__ENDPOINT".to_owned(),
            stack
                .s3_endpoint_of(2.min(stack.s3_endpoints.len()))
                .to_owned(),
        ));
        let root_b = second_root(&root);
        // Both start at once (PostgreSQL migrates once, under its advisory lock).
        let cmd_a = self.command(&root, &env_a);
        let cmd_b = self.command(&root_b, &env_b);
        let (a, b) = (spawn_child(cmd_a), spawn_child(cmd_b));
        let (a, b) = (a.listening(), b.listening());
        let front = front::Front::start(vec![a.addr, b.addr]);
        let app = TestApp {
            addr: front.addr,
            base: format!("http://{}", front.addr),
            root,
            _tmp: tmp,
            database: Some(db),
            child: a.child,
            logs: a.logs,
            client: client(true, None),
            env: env_a,
            leftovers_expected: false,
            first_addr: a.addr,
            others: vec![Node {
                scheme: "http",
                child: b.child,
                logs: b.logs,
                addr: b.addr,
                root: root_b,
            }],
            front: Some(front),
            prefix: Some(prefix),
            _stack: Some(stack),
            single_node: None,
        };
        if self.wait_ready {
            app.wait_ready().await;
        }
        app
    }

    fn command(&self, root: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").args(&self.args);
        clean_env(&mut cmd);
        cmd.env("COFFER_STORAGE__ROOT", root);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Why a test's app stays one embedded server in multi-node mode: it needs one process or the
/// embedded store by its nature.
#[derive(Debug, Clone, Copy)]
struct OneNode(&'static str);

impl OneNode {
    /// Say once per test, on the process's stderr (not captured), that it runs on one node
    /// and why.
    fn note(self) {
        static NOTED: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
        if noted.contains(&test) {
            return;
        }
        let line = format!("single node: {test}: {}", self.0);
        noted.push(test);
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// The storage root of a multi-node app's second node, beside the first's.
fn second_root(root: &Path) -> PathBuf {
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push("-node2");
    root.with_file_name(name)
}

/// The harness's HTTP client: no redirects; idle connections dropped well before the
/// server's idle cut-off (so no request races a connection the server is closing), or, in
/// multi-node mode, not kept at all (each request a new connection: the next node).
/// With `tls_root`, it trusts that PEM certificate and nothing else.
fn client(multinode: bool, tls_root: Option<&str>) -> Client {
    let mut builder = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(5));
    if multinode {
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(pem) = tls_root {
        builder = builder.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
    }
    builder.build().unwrap()
}

/// A server process that has not said where it listens yet.
struct Spawned {
    child: Child,
    logs: Arc<Mutex<String>>,
    log_pump: std::thread::JoinHandle<()>,
    first_line: std::sync::mpsc::Receiver<String>,
    started: Instant,
}

fn spawn_child(mut cmd: Command) -> Spawned {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start coffer");
    let logs = Arc::new(Mutex::new(String::new()));
    let log_pump = pump(child.stderr.take().unwrap(), logs.clone());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, first_line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    Spawned {
        child,
        logs,
        log_pump,
        first_line,
        started: Instant::now(),
    }
}

/// One running server process.
struct Node {
    child: Option<Child>,
    logs: Arc<Mutex<String>>,
    /// `http` or `https` (native TLS), as the server announced.
    scheme: &'static str,
    addr: SocketAddr,
    root: PathBuf,
}

impl Spawned {
    /// Wait for the line that says where it listens; panics with its log if it never comes.
    fn listening(mut self) -> Node {
        let line = self
            .first_line
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        let announced = line.trim().strip_prefix("coffer listening on ");
        let scheme_addr = announced.and_then(|l| match l.split_once("://") {
            Some(("http", a)) => Some(("http", a)),
            Some(("https", a)) => Some(("https", a)),
            _ => None,
        });
        match scheme_addr {
            Some((scheme, a)) => Node {
                child: Some(self.child),
                logs: self.logs,
                scheme,
                addr: a.parse().unwrap(),
                root: PathBuf::new(),
            },
            None => {
                let _ = self.child.kill();
                let status = self.child.wait();
                // The log ends when the process does: read all of it before saying why.
                let _ = self.log_pump.join();
                let log = self.logs.lock().unwrap().clone();
                panic!(
                    "server did not start ({status:?} after {:?}); stdout: {line:?}\nlog:\n{log}",
                    self.started.elapsed()
                );
            }
        }
    }
}

fn start(cmd: Command) -> Node {
    spawn_child(cmd).listening()
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
    /// The first node's own address (`addr` unless multi-node).
    first_addr: SocketAddr,
    /// In multi-node mode, the nodes after the first (whose process is `child`).
    others: Vec<Node>,
    /// In multi-node mode, the address clients connect to.
    front: Option<front::Front>,
    /// In multi-node mode, the bucket prefix the nodes share.
    prefix: Option<Arc<front::Prefix>>,
    /// In multi-node mode, the stack, held (shared) while the nodes run.
    _stack: Option<stack::Stack>,
    /// The single-node mark it was started with (a relaunch keeps it).
    single_node: Option<OneNode>,
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
            single_node: None,
            prefix: None,
            two_nodes: false,
        }
        .env("COFFER_SECRET_KEY", secret())
    }

    /// Start with defaults.
    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut bases = vec![self.base.clone()];
        if self.front.is_some() {
            bases = self
                .node_addrs()
                .iter()
                .map(|a| format!("http://{a}"))
                .collect();
        }
        for base in bases {
            loop {
                if let Ok(r) = self.client.get(format!("{base}/readyz")).send().await
                    && r.status() == StatusCode::OK
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "server not ready; log:\n{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Each node's own address (one, unless multi-node).
    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        match &self.front {
            None => vec![self.addr],
            Some(_) => {
                let mut addrs = vec![self.first_addr];
                addrs.extend(self.others.iter().map(|n| n.addr));
                addrs
            }
        }
    }

    /// In multi-node mode, the bucket prefix the nodes keep their blobs under.
    pub fn bucket_prefix(&self) -> Option<&str> {
        self.prefix.as_deref().map(|p| p.prefix.as_str())
    }

    /// Whether this app is several nodes behind a front.
    pub fn is_multinode(&self) -> bool {
        self.front.is_some()
    }

    /// Each node's log so far, in [`Self::node_addrs`]'s order.
    pub fn node_logs(&self) -> Vec<String> {
        let mut all = vec![self.logs.lock().unwrap().clone()];
        all.extend(self.others.iter().map(|n| n.logs.lock().unwrap().clone()));
        all
    }

    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server logged so far (every node's, one after the other).
    pub fn logs(&self) -> String {
        let mut all = self.logs.lock().unwrap().clone();
        for (i, n) in self.others.iter().enumerate() {
            all.push_str(&format!("\n--- node {} ---\n", i + 2));
            all.push_str(&n.logs.lock().unwrap());
        }
        all
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

    /// A builder for a new server on this one's root with its secret (stop this one first);
    /// in multi-node mode, new nodes on the same database, prefix and roots.
    pub fn relaunch(&self) -> TestAppBuilder {
        let mut builder = TestApp::builder()
            .root(&self.root)
            .env("COFFER_SECRET_KEY", self.secret());
        builder.single_node = self.single_node;
        if let Some(prefix) = &self.prefix {
            builder.prefix = Some(prefix.clone());
            builder.database = self.database.clone();
            builder.two_nodes = true;
            // Chosen by the harness, not by the test: still multi-node.
            return builder;
        }
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
            // Appended: a header named twice goes as two lines.
            h.append(
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

    /// The audit trail once it holds every one of `events` (bounded wait): each node writes
    /// its entries just after the answers that caused them, so a read through another node
    /// may come a moment early.
    pub async fn audit_with(&self, admin_token: &str, events: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.audit(admin_token).await;
            let missing: Vec<&&str> = events
                .iter()
                .filter(|want| !entries.iter().any(|e| e["event"] == **want))
                .collect();
            if missing.is_empty() {
                return entries;
            }
            assert!(Instant::now() < deadline, "no audit entry for {missing:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The audit trail as an admin sees it (all pages).
    pub async fn audit(&self, admin_token: &str) -> Vec<Value> {
        self.pages("/api/v1/admin/audit", admin_token, 1000)
            .await
            .concat()
    }

    /// One number from the server's metadata, whichever engine holds it: `sql` (written for
    /// both dialects, values inlined) on PostgreSQL with psql, or on the SQLite file.
    pub fn sql_number(&self, sql: &str) -> i64 {
        match &self.database {
            Some(db) => db
                .psql(sql)
                .parse()
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            None => rusqlite::Connection::open(self.root.join("coffer.db"))
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// One text value from the server's metadata (as [`Self::sql_number`]); statements such
    /// as `DELETE ... RETURNING` change it too.
    pub fn sql_text(&self, sql: &str) -> String {
        match &self.database {
            Some(db) => db.psql(sql),
            None => rusqlite::Connection::open(self.root.join("coffer.db"))
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// The server's metadata store opened through the library, behind its back (a state no
    /// route makes, e.g. an account locked mid-deletion).
    pub async fn meta_store(&self) -> coffer::meta::MetaStore {
        match &self.database {
            Some(db) => coffer::meta::MetaStore::open_postgres(&coffer::meta::postgres::Settings {
                url: db.url.clone(),
                pool_size: 1,
                connect_timeout: Duration::from_secs(10),
                call_timeout: Duration::from_secs(10),
            })
            .await
            .unwrap(),
            None => coffer::meta::MetaStore::open_sqlite(&self.root.join("coffer.db"), 1)
                .await
                .unwrap(),
        }
    }

    /// Run `sql` (written for both dialects) on the server's metadata behind its back.
    pub fn sql_exec(&self, sql: &str) {
        match &self.database {
            Some(db) => {
                db.psql(sql);
            }
            None => {
                rusqlite::Connection::open(self.root.join("coffer.db"))
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// Every regular file under the storage root's `blobs/`. Multi-node apps keep blobs in
    /// the bucket: there, the object keys under the app's prefix, for counting (a test that
    /// reads or edits a blob file is a single-node test).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        match &self.prefix {
            Some(prefix) => prefix.keys().into_iter().map(PathBuf::from).collect(),
            None => files_under(&self.root.join("blobs")),
        }
    }

    /// The bytes of a blob that [`Self::blob_files`] or `blob_of` named (a file, or an
    /// object of the bucket).
    pub fn read_blob(&self, blob: &Path) -> Vec<u8> {
        match &self.prefix {
            Some(prefix) => prefix.get(&blob.to_string_lossy()),
            None => std::fs::read(blob).unwrap(),
        }
    }

    /// Overwrite a blob behind the server's back (corruption tests).
    pub fn write_blob(&self, blob: &Path, bytes: &[u8]) {
        match &self.prefix {
            Some(prefix) => prefix.put(&blob.to_string_lossy(), bytes),
            None => std::fs::write(blob, bytes).unwrap(),
        }
    }

    /// Remove a blob behind the server's back, as an operator's mistake would.
    pub fn remove_blob(&self, blob: &Path) {
        match &self.prefix {
            Some(prefix) => prefix.delete(&blob.to_string_lossy()),
            None => std::fs::remove_file(blob).unwrap(),
        }
    }

    /// Leftovers of uploads in flight, on every node.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut all = files_under(&self.root.join("tmp"));
        for n in &self.others {
            all.extend(files_under(&n.root.join("tmp")));
        }
        all
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

    /// Kill the server (every node) with SIGKILL (crash tests) and reap it.
    pub fn kill9(&mut self) {
        let children = std::iter::once(self.child.take())
            .chain(self.others.iter_mut().map(|n| n.child.take()));
        for mut c in children.flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop gracefully (SIGTERM; every node) and return the (first node's) exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let first = self.child.take()?;
        let children: Vec<Child> = std::iter::once(first)
            .chain(self.others.iter_mut().filter_map(|n| n.child.take()))
            .collect();
        for c in &children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        let mut statuses: Vec<_> = children.into_iter().map(reap).collect();
        statuses.swap_remove(0)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Wait (bounded) for a process sent SIGTERM; SIGKILL it past 15 s.
fn reap(mut c: Child) -> Option<std::process::ExitStatus> {
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

/// How long a dropped server may take to remove the temp file of an upload it refused or lost
/// a moment ago (the removal runs after the answer).
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

impl Drop for TestApp {
    /// Stops the server, then checks that it left no temp file in the storage root's `tmp/`
    /// (every refused, aborted or failed upload must clean up after itself), unless the test
    /// said otherwise ([`TestApp::expect_leftovers`]) or has already failed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test shows what its server warned about (captured with its output).
            let log = self.logs();
            let worrying: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            let from = worrying.len().saturating_sub(40);
            eprintln!(
                "server warnings and errors:\n{}",
                worrying[from..].join("\n")
            );
        }
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
