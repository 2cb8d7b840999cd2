//! Events and webhooks (API.md "Events and webhooks"), black-box: a real HTTP receiver on a
//! loopback port (the app backend coffer talks to, an axum server in this process) gets
//! every event after its change committed, signed so that the official `standardwebhooks`
//! verifier (Python, `target/webhooks-venv`, made by `.ci/run`) accepts it; retried with the
//! same event id after a 500 and after a receiver that hangs; in order per file; surviving a
//! `kill -9`; never following a redirect; and never reaching a private address with the
//! safety flags off. On the two-node stack, 200 uploads give exactly 200 `file.created`
//! events, also when the delivering node is killed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::helpers::fixtures::{png, sha256_hex, tus_metadata};
use crate::helpers::{Refusal, TestApp, TestAppBuilder, TestUser, stack};

/// What the receiver does with the next request.
#[derive(Debug, Clone)]
enum Step {
    /// Answer with this status.
    Status(u16),
    /// Never answer (until the test ends).
    Hang,
    /// Answer 302 to this location.
    Redirect(String),
    /// Answer this status with a body of this many bytes.
    Long(u16, usize),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
    at: Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_owned()
    }

    fn file_id(&self) -> String {
        self.json()["data"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct Inbox {
    got: Vec<Got>,
    script: VecDeque<Step>,
    /// Per request, ms before answering (a slow backend).
    delay_ms: u64,
}

/// A real HTTP server on a loopback port that records what it receives.
struct Receiver {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let state = inbox.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { receive(state, headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inbox, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn then(&self, steps: &[Step]) {
        self.inbox
            .lock()
            .unwrap()
            .script
            .extend(steps.iter().cloned());
    }

    fn slow(&self, ms: u64) {
        self.inbox.lock().unwrap().delay_ms = ms;
    }

    fn got(&self) -> Vec<Got> {
        self.inbox.lock().unwrap().got.clone()
    }

    /// Wait (at most `secs`) until `cond` holds for what arrived; what arrived.
    async fn until(&self, secs: u64, what: &str, cond: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got();
            if cond(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs} s; got {:#?}",
                got.iter().map(|g| (&g.id, g.kind())).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(state: Arc<Mutex<Inbox>>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (step, delay) = {
        let mut inbox = state.lock().unwrap();
        inbox.got.push(Got {
            id: h("webhook-id"),
            timestamp: h("webhook-timestamp"),
            signature: h("webhook-signature"),
            content_type: h("content-type"),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        });
        let step = inbox.script.pop_front().unwrap_or(Step::Status(200));
        (step, inbox.delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match step {
        Step::Status(s) => (StatusCode::from_u16(s).unwrap(), "thanks").into_response(),
        Step::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Step::Redirect(to) => (StatusCode::FOUND, [("location", to)], "").into_response(),
        Step::Long(s, n) => (StatusCode::from_u16(s).unwrap(), "é".repeat(n / 2)).into_response(),
    }
}

/// A server that may send to loopback over plain HTTP, with `timeout` seconds per try.
/// The same server again (its root and secret), receivers on loopback allowed.
fn reopen(app: &TestApp) -> TestAppBuilder {
    app.relaunch()
        .env("COFFER_WEBHOOKS__ALLOW_HTTP", "true")
        .env("COFFER_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
}

fn open_app(timeout: u64) -> TestAppBuilder {
    TestApp::builder()
        .env("COFFER_WEBHOOKS__ALLOW_HTTP", "true")
        .env("COFFER_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
        .env("COFFER_WEBHOOKS__TIMEOUT_SECS", timeout.to_string())
}

async fn hook(app: &TestApp, u: &TestUser, url: &str, events: Option<&[&str]>) -> Value {
    let mut body = json!({ "url": url });
    if let Some(e) = events {
        body["events"] = json!(e);
    }
    app.post("/api/v1/webhooks")
        .as_user(u)
        .json(&body)
        .expect(201)
        .await
}

async fn deliveries(app: &TestApp, u: &TestUser, hook: &Value) -> Vec<Value> {
    let v = app
        .get(&format!(
            "/api/v1/webhooks/{}/deliveries",
            hook["id"].as_str().unwrap()
        ))
        .as_user(u)
        .expect(200)
        .await;
    v["items"].as_array().unwrap().clone()
}

/// The delivery log once `cond` holds (tries are recorded just after their answer: poll).
async fn log_until(
    app: &TestApp,
    u: &TestUser,
    hook: &Value,
    what: &str,
    cond: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = deliveries(app, u, hook).await;
        if cond(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "{what}: {log:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Python interpreter with `standardwebhooks` (`.ci/run` makes it).
fn python() -> Option<std::path::PathBuf> {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/webhooks-venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("COFFER_TEST_REQUIRE_STACK").as_deref() != Ok("1"),
        "target/webhooks-venv with standardwebhooks is missing (see .ci/run)"
    );
    eprintln!("skipped the official verifier: no target/webhooks-venv (see .ci/run)");
    None
}

/// Verify each delivery with the official verifier; the ids it accepted, or the error.
fn verify(py: &std::path::Path, secret: &str, got: &[Got]) -> Result<Vec<String>, String> {
    const SCRIPT: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
req = json.load(sys.stdin)
wh = Webhook(req["secret"])
ok = []
for d in req["deliveries"]:
    payload = wh.verify(d["body"], d["headers"])
    ok.append(payload["id"])
print(json.dumps(ok))
"#;
    let req = json!({
        "secret": secret,
        "deliveries": got.iter().map(|g| json!({
            "body": g.body,
            "headers": {
                "webhook-id": g.id,
                "webhook-timestamp": g.timestamp,
                "webhook-signature": g.signature,
            },
        })).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new(py)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test]
async fn webhooks_get_every_event_signed_for_the_official_verifier_and_in_order() {
    let rx = Receiver::start().await;
    let app = open_app(5)
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let u = app.user("hooked").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    let secret = h["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{h}");
    assert_eq!(h["events"].as_array().unwrap().len(), 5, "{h}");
    // Listed without the secret.
    let list = app.get("/api/v1/webhooks").as_user(&u).expect(200).await;
    assert_eq!(list["items"][0]["id"], h["id"]);
    assert!(list["items"][0].get("secret").is_none(), "{list}");

    // Created, linked and used, deleted: in that order.
    let f = app.stored(&u.token, "a.png", png(300)).await;
    let id = f["id"].as_str().unwrap();
    let link = app
        .post(&format!("/api/v1/files/{id}/links"))
        .as_user(&u)
        .json(&json!({"expires_in": 600}))
        .expect(201)
        .await;
    let got = app.get(link["url"].as_str().unwrap()).send().await.status();
    assert_eq!(got, 200);
    assert_eq!(
        app.delete(&format!("/api/v1/files/{id}"))
            .as_user(&u)
            .status()
            .await,
        204
    );
    // And one that expires.
    let short = app
        .post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "short.png"), ("expires_in", "1")])
        .body(png(200))
        .expect(201)
        .await;
    let got = rx.until(30, "five events", |g| g.len() >= 5).await;
    let kinds: Vec<String> = got
        .iter()
        .filter(|g| g.file_id() == id)
        .map(Got::kind)
        .collect();
    assert_eq!(kinds, ["file.created", "link.used", "file.deleted"]);
    let short_kinds: Vec<String> = got
        .iter()
        .filter(|g| g.json()["data"]["id"] == short["id"])
        .map(Got::kind)
        .collect();
    assert_eq!(short_kinds, ["file.created", "file.expired"]);
    for g in &got {
        assert_eq!(g.content_type, "application/json");
        let v = g.json();
        assert_eq!(v["id"], g.id.as_str(), "the body's id is webhook-id");
        assert!(g.id.starts_with("evt_"), "{}", g.id);
        assert!(v["timestamp"].is_string());
        assert!(
            v["data"].as_object().unwrap().contains_key("grant_id"),
            "{v}"
        );
    }
    let created = got
        .iter()
        .find(|g| g.kind() == "file.created" && g.file_id() == id)
        .unwrap();
    assert_eq!(created.json()["data"]["sha256"], f["sha256"]);
    assert_eq!(created.json()["data"]["filename"], "a.png");

    // The official verifier accepts every delivery, and refuses a tampered one.
    if let Some(py) = python() {
        let ids = verify(&py, &secret, &got).unwrap();
        assert_eq!(ids.len(), got.len());
        let mut bad = got[0].clone();
        bad.body = bad.body.replace("file.", "flie.");
        assert!(
            verify(&py, &secret, &[bad]).is_err(),
            "a tampered body passes"
        );
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert!(
            verify(&py, other, &got[..1]).is_err(),
            "another secret passes"
        );
    }

    // The delivery log: each delivered once, answered 200.
    let log = log_until(&app, &u, &h, "every delivery recorded", |l| {
        l.len() == got.len() && l.iter().all(|d| d["delivered_at"].is_string())
    })
    .await;
    assert_eq!(log.len(), got.len(), "{log:#?}");
    for d in &log {
        assert_eq!(d["attempts"], 1, "{d}");
        assert_eq!(d["last_status"], 200, "{d}");
        assert!(d["delivered_at"].is_string(), "{d}");
        assert!(d["next_attempt_at"].is_null(), "{d}");
        assert_eq!(d["last_answer"], "thanks", "{d}");
    }
    // Neither the secret nor a signature is logged.
    let logs = app.logs();
    assert!(!logs.contains(secret.trim_start_matches("whsec_")));
    assert!(!logs.contains(&got[0].signature[3..]));
}

#[tokio::test]
async fn a_delivery_answered_500_is_retried_with_the_same_event_id_and_the_files_next_event_waits()
{
    let rx = Receiver::start().await;
    rx.then(&[Step::Status(500)]);
    let app = open_app(5).spawn().await;
    let u = app.user("retried").await;
    let h = hook(&app, &u, &rx.url(), Some(&["file.created", "file.deleted"])).await;
    let f = app.stored(&u.token, "a.png", png(300)).await;
    let id = f["id"].as_str().unwrap();
    rx.until(10, "the first try", |g| !g.is_empty()).await;
    // Deleted while its creation waits for a retry: the deletion must come after it.
    assert_eq!(
        app.delete(&format!("/api/v1/files/{id}"))
            .as_user(&u)
            .status()
            .await,
        204
    );
    let log = log_until(&app, &u, &h, "the first try recorded", |l| {
        l.iter()
            .any(|d| d["type"] == "file.created" && d["attempts"] == 1)
    })
    .await;
    let first = log.iter().find(|d| d["type"] == "file.created").unwrap();
    assert_eq!(first["last_status"], 500, "{first}");
    assert_eq!(first["attempts"], 1);
    assert!(first["next_attempt_at"].is_string());
    let got = rx
        .until(30, "the retry and the deletion", |g| g.len() >= 3)
        .await;
    let seen: Vec<(String, String)> = got.iter().map(|g| (g.kind(), g.id.clone())).collect();
    assert_eq!(seen[0].0, "file.created");
    assert_eq!(seen[1], seen[0], "the retry carries the same event id");
    assert_eq!(seen[2].0, "file.deleted", "{seen:?}");
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "back-off of about 5 s: {waited:?}"
    );
    assert!(got[2].at >= got[1].at);
    let log = log_until(&app, &u, &h, "the retry recorded", |l| {
        l.iter()
            .any(|d| d["type"] == "file.created" && d["delivered_at"].is_string())
    })
    .await;
    let created = log.iter().find(|d| d["type"] == "file.created").unwrap();
    assert_eq!(created["attempts"], 2, "{created}");
    assert_eq!(created["last_status"], 200);
}

#[tokio::test]
async fn the_delivery_log_keeps_at_most_512_bytes_of_an_answer() {
    let rx = Receiver::start().await;
    rx.then(&[Step::Long(200, 100_000)]);
    let app = open_app(5).spawn().await;
    let u = app.user("verbose").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    app.stored(&u.token, "a.png", png(300)).await;
    rx.until(10, "the try", |g| !g.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        let log = deliveries(&app, &u, &h).await;
        if log[0]["delivered_at"].is_string() {
            break log[0].clone();
        }
        assert!(Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kept = d["last_answer"].as_str().unwrap();
    assert!(
        kept.len() <= 512 && kept.len() >= 500,
        "{} bytes",
        kept.len()
    );
    assert!(
        kept.chars().all(|c| c == 'é'),
        "cut at a character boundary"
    );
}

/// The `webhook-signature` a receiver expects, computed here from the secret's text.
fn expected_signature(secret: &str, g: &Got) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", g.id, g.timestamp, g.body).as_bytes());
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

/// The secret as stored: `(hex of the stored bytes, key id)`, and the secret's own bytes.
fn stored_secret(app: &TestApp, secret: &str) -> (String, String, Vec<u8>) {
    let stored =
        app.sql_text("SELECT hex(secret) || ' ' || coalesce(secret_key_id, '') FROM webhooks");
    let (sealed, key_id) = stored.split_once(' ').unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    (sealed.to_owned(), key_id.trim().to_owned(), raw)
}

/// A signing secret is never stored as it is: sealed with the encryption-at-rest key when it
/// is on, else with a key derived from the service secret; either way webhooks sign with it.
#[tokio::test]
async fn the_secret_is_sealed_with_or_without_encryption_at_rest_and_still_signs() {
    for encrypted in [true, false] {
        let rx = Receiver::start().await;
        let mut app = open_app(5).single_node("reads the SQLite file behind the server");
        if encrypted {
            app = app.env("COFFER_ENCRYPTION_KEY", crate::helpers::secret());
        }
        let app = app.spawn().await;
        let u = app.user("sealed").await;
        let h = hook(&app, &u, &rx.url(), None).await;
        let secret = h["secret"].as_str().unwrap();
        // Stored sealed: not the secret's bytes, and naming the key that sealed it.
        let (sealed, key_id, raw) = stored_secret(&app, secret);
        assert!(!key_id.is_empty(), "encrypted: {encrypted}");
        assert!(!sealed.eq_ignore_ascii_case(&hex::encode(&raw)));
        assert_eq!(sealed.len(), 2 * (12 + 32 + 16), "nonce, key, tag");
        app.stored(&u.token, "a.png", png(300)).await;
        let got = rx.until(10, "the event", |g| !g.is_empty()).await;
        assert_eq!(got[0].signature, expected_signature(secret, &got[0]));
    }
}

/// A secret an earlier version stored as it is (no encryption at rest) is sealed when the
/// server starts, and the webhook goes on signing with it.
#[tokio::test]
async fn a_secret_stored_in_the_clear_is_sealed_at_start_up() {
    let rx = Receiver::start().await;
    let mut app = open_app(5)
        .single_node("writes the SQLite file behind the server")
        .spawn()
        .await;
    let u = app.user("cleartext").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    let secret = h["secret"].as_str().unwrap().to_owned();
    app.terminate();
    let (_, _, raw) = stored_secret(&app, &secret);
    app.sql_exec(&format!(
        "UPDATE webhooks SET secret = x'{}', secret_key_id = NULL",
        hex::encode(&raw)
    ));
    let app = reopen(&app).spawn().await;
    let (sealed, key_id, _) = stored_secret(&app, &secret);
    assert!(!key_id.is_empty());
    assert!(!sealed.eq_ignore_ascii_case(&hex::encode(&raw)));
    app.stored(&u.token, "a.png", png(300)).await;
    let got = rx.until(10, "the event", |g| !g.is_empty()).await;
    assert_eq!(got[0].signature, expected_signature(&secret, &got[0]));
}

#[tokio::test]
async fn a_delivery_is_given_up_after_max_attempts() {
    let rx = Receiver::start().await;
    rx.then(&[Step::Status(503)]);
    let app = open_app(5)
        .env("COFFER_WEBHOOKS__MAX_ATTEMPTS", "1")
        .spawn()
        .await;
    let u = app.user("given_up").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    app.stored(&u.token, "a.png", png(300)).await;
    rx.until(10, "the one try", |g| !g.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        let log = deliveries(&app, &u, &h).await;
        if log[0]["attempts"] == 1 {
            break log[0].clone();
        }
        assert!(Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["last_status"], 503, "{d}");
    assert!(d["next_attempt_at"].is_null(), "given up: {d}");
    assert!(d["delivered_at"].is_null(), "{d}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(rx.got().len(), 1, "no second try after giving up");
}

#[tokio::test]
async fn a_receiver_that_hangs_is_timed_out_and_tried_again_with_the_same_id() {
    let rx = Receiver::start().await;
    rx.then(&[Step::Hang]);
    let app = open_app(1).spawn().await;
    let u = app.user("hung").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    app.stored(&u.token, "a.png", png(300)).await;
    let got = rx.until(20, "two tries", |g| g.len() >= 2).await;
    assert_eq!(got[0].id, got[1].id);
    let log = log_until(&app, &u, &h, "the second try recorded", |l| {
        l.first().is_some_and(|d| d["delivered_at"].is_string())
    })
    .await;
    assert_eq!(log[0]["attempts"], 2, "{log:#?}");
    assert!(log[0]["delivered_at"].is_string());
    // A manual retry sends it again, now, with the same id.
    let path = format!(
        "/api/v1/webhooks/{}/deliveries/{}/retry",
        h["id"].as_str().unwrap(),
        got[0].id
    );
    assert_eq!(app.post(&path).as_user(&u).status().await, 202);
    let again = rx.until(10, "the manual retry", |g| g.len() >= 3).await;
    assert_eq!(again[2].id, got[0].id);
}

#[tokio::test]
async fn a_refused_upload_sends_upload_rejected_and_no_file_created() {
    let rx = Receiver::start().await;
    let app = open_app(5)
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "1000")
        .spawn()
        .await;
    let u = app.user("refused").await;
    hook(&app, &u, &rx.url(), None).await;
    assert_eq!(
        app.upload(&u.token, "evil.exe", vec![0u8; 10])
            .await
            .status(),
        415
    );
    assert_eq!(
        app.upload(&u.token, "big.png", png(5000)).await.status(),
        413
    );
    // Then one that is stored: once it arrived, everything before it has too.
    let ok = app.stored(&u.token, "ok.png", png(300)).await;
    let got = rx
        .until(15, "the stored file's event", |g| {
            g.iter().any(|g| g.kind() == "file.created")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.got().len().max(got.len());
    let all = rx.got();
    assert_eq!(all.len(), got);
    let created: Vec<&Got> = all.iter().filter(|g| g.kind() == "file.created").collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].json()["data"]["id"], ok["id"]);
    let mut rejected: Vec<(String, String)> = all
        .iter()
        .filter(|g| g.kind() == "upload.rejected")
        .map(|g| {
            let d = &g.json()["data"];
            (
                d["filename"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            ("big.png".to_owned(), "size".to_owned()),
            ("evil.exe".to_owned(), "type".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_event_in_flight_at_kill_9_is_delivered_after_the_restart() {
    let rx = Receiver::start().await;
    rx.then(&[Step::Hang]);
    let mut app = open_app(2).spawn().await;
    let u = app.user("crashy").await;
    hook(&app, &u, &rx.url(), None).await;
    let f = app.stored(&u.token, "a.png", png(300)).await;
    let first = rx.until(10, "the try in flight", |g| !g.is_empty()).await;
    app.kill9();
    let app = reopen(&app)
        .env("COFFER_WEBHOOKS__TIMEOUT_SECS", "2")
        .spawn()
        .await;
    // Its lease (timeout + margin) runs out, then the new process takes it over.
    let got = rx
        .until(40, "the delivery after the restart", |g| g.len() >= 2)
        .await;
    assert_eq!(got[1].id, first[0].id);
    assert_eq!(got[1].json()["data"]["id"], f["id"]);
    drop(app);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let rx = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    rx.then(&[Step::Redirect(elsewhere.url())]);
    let app = open_app(5).spawn().await;
    let u = app.user("redirected").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    app.stored(&u.token, "a.png", png(300)).await;
    rx.until(10, "the try", |g| !g.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        let log = deliveries(&app, &u, &h).await;
        if log[0]["attempts"] == 1 {
            break log[0].clone();
        }
        assert!(Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["last_status"], 302, "{d}");
    assert!(
        d["last_error"].as_str().unwrap().contains("redirect"),
        "{d}"
    );
    assert!(d["delivered_at"].is_null());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(elsewhere.got().is_empty(), "the redirect was followed");
    assert_eq!(rx.got().len(), 1);
}

#[tokio::test]
async fn with_the_safety_flags_off_private_targets_are_refused() {
    let app = TestApp::spawn().await;
    let u = app.user("careful").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://10.0.0.1/",
        "https://localhost/",
        "https://2130706433/",
        "https://user:pw@example.com/",
        "ftp://example.com/",
    ] {
        let v = app
            .post("/api/v1/webhooks")
            .as_user(&u)
            .json(&json!({ "url": url }))
            .problem(422)
            .await;
        assert_eq!(v["errors"][0]["field"], "url", "{url}: {v}");
    }
    // Validation of the rest of the body.
    for body in [
        json!({"url": "https://example.com/", "events": ["file.*"]}),
        json!({"url": "https://example.com/", "events": []}),
        json!({"url": "https://example.com/", "secret": "mine"}),
    ] {
        app.post("/api/v1/webhooks")
            .as_user(&u)
            .json(&body)
            .problem(422)
            .await;
    }
    assert!(
        app.get("/api/v1/webhooks").as_user(&u).expect(200).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// A host name (not `localhost`, which is refused at creation) that resolves only to loopback
/// or private addresses here, without asking any DNS server: this machine's name, or another
/// name of /etc/hosts.
async fn a_name_resolving_privately() -> String {
    let mut names = vec![
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_owned(),
    ];
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        names.extend(line.split_whitespace().skip(1).map(str::to_owned));
    }
    let private = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v) => v.is_loopback() || v.is_private() || v.is_link_local(),
        std::net::IpAddr::V6(v) => v.is_loopback() || (v.segments()[0] & 0xfe00) == 0xfc00,
    };
    for name in names {
        let grammar = name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            && name
                .rsplit('.')
                .next()
                .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()));
        if name.eq_ignore_ascii_case("localhost") || !grammar {
            continue;
        }
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), 80)).await {
            Ok(found) => found.collect(),
            Err(_) => continue,
        };
        if !addrs.is_empty() && addrs.iter().all(|a| private(a.ip())) {
            return name;
        }
    }
    panic!("no name of this machine or /etc/hosts resolves only to private addresses")
}

#[tokio::test]
async fn a_name_resolving_to_a_private_address_is_refused_at_delivery() {
    let rx = Receiver::start().await;
    let app = TestApp::builder()
        .env("COFFER_WEBHOOKS__ALLOW_HTTP", "true")
        .spawn()
        .await;
    let u = app.user("rebound").await;
    let name = a_name_resolving_privately().await;
    let url = format!("http://{name}:{}/hook", rx.addr.port());
    let h = hook(&app, &u, &url, None).await;
    app.stored(&u.token, "a.png", png(300)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let d = loop {
        let log = deliveries(&app, &u, &h).await;
        if log.first().is_some_and(|d| d["attempts"] == 1) {
            break log[0].clone();
        }
        assert!(Instant::now() < deadline, "{log:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let why = d["last_error"].as_str().unwrap();
    assert!(why.starts_with("refused"), "{d}");
    assert!(
        d["next_attempt_at"].is_string(),
        "retried like any failure: {d}"
    );
    assert!(d["last_status"].is_null());
    assert!(rx.got().is_empty(), "a private address was reached");
}

/// An account has at most `webhooks.max_per_user` webhooks: one more is 422 (field `url`);
/// deleting one makes room, and another account's count is its own.
#[tokio::test]
async fn an_account_has_at_most_max_per_user_webhooks() {
    let rx = Receiver::start().await;
    let app = open_app(5)
        .env("COFFER_WEBHOOKS__MAX_PER_USER", "2")
        .spawn()
        .await;
    let (u, v) = (app.user("many_hooks").await, app.user("own_count").await);
    let first = hook(&app, &u, &rx.url(), None).await;
    hook(&app, &u, &rx.url(), None).await;
    let r = app
        .post("/api/v1/webhooks")
        .as_user(&u)
        .json(&json!({ "url": rx.url() }))
        .send()
        .await;
    let refusal = Refusal::of(r).await;
    assert_eq!(refusal, (422, "validation-failed", "url"));
    hook(&app, &v, &rx.url(), None).await;
    let id = first["id"].as_str().unwrap();
    app.delete(&format!("/api/v1/webhooks/{id}"))
        .as_user(&u)
        .expect(204)
        .await;
    hook(&app, &u, &rx.url(), None).await;
}

#[tokio::test]
async fn webhooks_are_their_owners_only() {
    let rx = Receiver::start().await;
    let app = open_app(5).spawn().await;
    let a = app.user("owner_a").await;
    let b = app.user("owner_b").await;
    let h = hook(&app, &a, &rx.url(), Some(&["file.created"])).await;
    let id = h["id"].as_str().unwrap();
    // b's files are not a's webhook's business.
    app.stored(&b.token, "b.png", png(300)).await;
    app.stored(&a.token, "a.png", png(300)).await;
    let got = rx.until(10, "a's event", |g| !g.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.got().len(), 1);
    assert_eq!(got[0].json()["data"]["filename"], "a.png");
    // An API key works as its owner; b sees none of a's webhooks.
    let key = app
        .post("/api/v1/api-keys")
        .as_user(&a)
        .json(&json!({"name": "backend"}))
        .expect(201)
        .await;
    let via_key = app
        .get("/api/v1/webhooks")
        .api_key(key["key"].as_str().unwrap())
        .expect(200)
        .await;
    assert_eq!(via_key["items"][0]["id"], h["id"]);
    for path in [
        format!("/api/v1/webhooks/{id}/deliveries"),
        format!("/api/v1/webhooks/{id}/deliveries/{}/retry", got[0].id),
        format!("/api/v1/webhooks/{id}"),
    ] {
        let method = if path.ends_with("retry") {
            app.post(&path)
        } else if path.ends_with("deliveries") {
            app.get(&path)
        } else {
            app.delete(&path)
        };
        assert_eq!(method.as_user(&b).status().await, 404, "{path}");
    }
    let mine = app.get("/api/v1/webhooks").as_user(&b).expect(200).await;
    assert!(mine["items"].as_array().unwrap().is_empty());
    // Paging of the log.
    app.stored(&a.token, "a2.png", png(300)).await;
    rx.until(10, "the second event", |g| g.len() >= 2).await;
    let first = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .query(&[("limit", "1")])
        .as_user(&a)
        .expect(200)
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .query(&[("limit", "1"), ("cursor", cursor)])
        .as_user(&a)
        .expect(200)
        .await;
    assert_eq!(second["items"][0]["event_id"], got[0].id.as_str());
    assert!(second["next_cursor"].is_null());
    // Deleted: no more events.
    assert_eq!(
        app.delete(&format!("/api/v1/webhooks/{id}"))
            .as_user(&a)
            .status()
            .await,
        204
    );
    app.stored(&a.token, "a3.png", png(300)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.got().len(), 2);
}

/// On the two-node stack: 200 uploads spread over both nodes give exactly 200 `file.created`
/// deliveries (none twice but those in flight when a node was killed), and killing the node
/// that was delivering loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_two_hundred_uploads_over_two_nodes_give_two_hundred_events_despite_a_kill() {
    let Some(stack) = stack::require("webhooks::cluster_two_hundred_uploads") else {
        return;
    };
    let rx = Receiver::start().await;
    // Slow enough that deliveries are in flight when the node dies.
    rx.slow(1500);
    let db = Arc::new(stack.fresh_database());
    let prefix = stack.fresh_prefix();
    let node = |secret: Option<String>, garage: usize| {
        let mut b = TestApp::builder().database(db.clone());
        for (k, v) in stack.server_env(&db, &prefix) {
            if k != "COFFER_SCAN__CLAMD" && k != "COFFER_DATABASE_URL" {
                b = b.env(&k, v);
            }
        }
        if let Some(s) = secret {
            b = b.env("COFFER_SECRET_KEY", s);
        }
        b.env("COFFER_S3__ENDPOINT", stack.s3_endpoint_of(garage))
            .env("COFFER_WEBHOOKS__ALLOW_HTTP", "true")
            .env("COFFER_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")
            .env("COFFER_WEBHOOKS__TIMEOUT_SECS", "5")
    };
    let mut a = node(None, 1).spawn().await;
    let b = node(Some(a.secret()), 2).spawn().await;
    let u = a.user("many").await;
    let h = hook(&a, &u, &rx.url(), Some(&["file.created"])).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        if i == 120 {
            // Kill a node while it delivers (the receiver is slow: both nodes have tries in
            // flight all along).
            a.expect_leftovers();
            a.kill9();
        }
        let app = if i < 120 && i % 2 == 0 { &a } else { &b };
        let f = app
            .stored(&u.token, &format!("f{i}.png"), png(100 + i))
            .await;
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    let got = rx
        .until(120, "200 distinct file.created events", |g| {
            let mut seen: Vec<&str> = g.iter().map(|g| g.id.as_str()).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len() >= 200
        })
        .await;
    // Every delivery recorded as delivered: also those the killed node had claimed, once their
    // lease ran out and the other node took them over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = b
            .get(&format!(
                "/api/v1/webhooks/{}/deliveries",
                h["id"].as_str().unwrap()
            ))
            .query(&[("limit", "1000")])
            .as_user(&u)
            .expect(200)
            .await;
        let items = log["items"].as_array().unwrap();
        let done = items
            .iter()
            .filter(|d| d["delivered_at"].is_string())
            .count();
        if items.len() == 200 && done == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} delivered",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = rx.got();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for g in &all {
        assert_eq!(g.kind(), "file.created");
        *per_id.entry(g.id.clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 200, "distinct events");
    let mut files: Vec<String> = all.iter().map(Got::file_id).collect();
    files.sort();
    files.dedup();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(files, want, "one event per stored file");
    // Twice only for what the killed node had in flight (it could not record the answer):
    // some, since every try takes 1.5 s, and the other node took them over.
    let twice = per_id.values().filter(|n| **n > 1).count();
    assert!(
        (1..=64).contains(&twice),
        "{twice} events sent twice (the killed node's tries in flight); node a:\n{}\nnode b:\n{}",
        a.logs(),
        b.logs()
    );
    assert!(per_id.values().all(|n| *n <= 2), "{per_id:?}");
    assert!(got.len() >= 200);
    drop(b);
    drop(a);
}

#[tokio::test]
async fn tus_and_grant_uploads_send_their_events_with_the_grant() {
    let rx = Receiver::start().await;
    let app = open_app(5).spawn().await;
    let u = app.user("tusevents").await;
    hook(&app, &u, &rx.url(), None).await;
    // A grant for two uploads (a refused one and a resumable one).
    let grant = app
        .post("/api/v1/upload-grants")
        .as_user(&u)
        .json(&json!({ "max_uploads": 2 }))
        .expect(201)
        .await;
    let token = grant["token"].as_str().unwrap().to_owned();
    let body = png(20_000);
    let tus = |method: reqwest::Method, path: &str| {
        app.request(method, path)
            .header("tus-resumable", "1.0.0")
            .header("upload-grant", &token)
    };
    // Refused at creation (its extension): upload.rejected, type, with the grant.
    let r = tus(reqwest::Method::POST, "/api/v1/uploads")
        .header("upload-length", "100")
        .header("upload-metadata", &tus_metadata("tool.exe"))
        .send()
        .await;
    assert_eq!(r.status(), 415);
    // Stored in two PATCHes: file.created, with the grant.
    let r = tus(reqwest::Method::POST, "/api/v1/uploads")
        .header("upload-length", &body.len().to_string())
        .header("upload-metadata", &tus_metadata("resumed.png"))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    for (offset, part) in [(0, &body[..9_000]), (9_000, &body[9_000..])] {
        let r = tus(reqwest::Method::PATCH, &loc)
            .header("upload-offset", &offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(part.to_vec())
            .send()
            .await;
        assert_eq!(r.status(), 204);
    }
    // A grant bound to other content: upload.rejected, checksum, with its grant.
    let bound = app
        .post("/api/v1/upload-grants")
        .as_user(&u)
        .json(&json!({ "sha256": "00".repeat(32) }))
        .expect(201)
        .await;
    let r = app
        .post("/api/v1/files?filename=other.png")
        .header("upload-grant", bound["token"].as_str().unwrap())
        .body(png(500))
        .send()
        .await;
    assert_eq!(r.status(), 422);

    let got = rx.until(15, "three events", |g| g.len() >= 3).await;
    let created: Vec<Value> = got
        .iter()
        .filter(|g| g.kind() == "file.created")
        .map(|g| g.json())
        .collect();
    assert_eq!(created.len(), 1, "{got:#?}");
    assert_eq!(created[0]["data"]["filename"], "resumed.png");
    assert_eq!(created[0]["data"]["grant_id"], grant["id"]);
    assert_eq!(created[0]["data"]["sha256"], sha256_hex(&body));
    let mut rejected: Vec<(String, String, Value)> = got
        .iter()
        .filter(|g| g.kind() == "upload.rejected")
        .map(|g| {
            let d = g.json()["data"].clone();
            (
                d["filename"].as_str().unwrap_or_default().to_owned(),
                d["reason"].as_str().unwrap_or_default().to_owned(),
                d["grant_id"].clone(),
            )
        })
        .collect();
    rejected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rejected,
        [
            (
                "other.png".to_owned(),
                "checksum".to_owned(),
                bound["id"].clone()
            ),
            (
                "tool.exe".to_owned(),
                "type".to_owned(),
                grant["id"].clone()
            ),
        ]
    );
}

#[tokio::test]
async fn content_safety_verdicts_send_upload_rejected_with_their_reason() {
    let Some(stack) = stack::require("content_safety_verdicts_send_upload_rejected") else {
        return;
    };
    let rx = Receiver::start().await;
    let app = open_app(5)
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .spawn()
        .await;
    let u = app.user("verdicts").await;
    hook(&app, &u, &rx.url(), None).await;
    let infected = [
        b"just text\n".to_vec(),
        stack::eicar(),
        b"\nmore text\n".to_vec(),
    ]
    .concat();
    assert_eq!(
        app.upload(&u.token, "eicar.txt", infected).await.status(),
        422
    );
    let zip_tail = b"PK\x05\x06\0\0\0\0\x01\0\x01\0\x2e\0\0\0\x10\0\0\0\0\0".to_vec();
    let polyglot = [png(5_000), zip_tail].concat();
    assert_eq!(
        app.upload(&u.token, "zip.png", polyglot).await.status(),
        415
    );
    let clean = app.stored(&u.token, "clean.png", png(300)).await;
    let got = rx
        .until(15, "two rejections and a file", |g| g.len() >= 3)
        .await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|g| {
            let v = g.json();
            let d = &v["data"];
            let what = d["reason"]
                .as_str()
                .or_else(|| d["id"].as_str())
                .unwrap_or_default()
                .to_owned();
            (g.kind(), what)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "file.created".to_owned(),
                clean["id"].as_str().unwrap().to_owned()
            ),
            ("upload.rejected".to_owned(), "infected".to_owned()),
            ("upload.rejected".to_owned(), "polyglot".to_owned()),
        ]
    );
}

/// An admin deleting an account: its files' `file.deleted` events still reach its webhooks
/// (retried after a 500, and across a `kill -9` and restart), and the webhooks go with their
/// logs once nothing is pending.
#[tokio::test]
async fn deleting_an_account_delivers_its_file_deleted_events_then_its_webhooks_go() {
    let rx = Receiver::start().await;
    let mut app = open_app(2).spawn().await;
    let admin = app.admin("hook_admin").await;
    let u = app.user("leaving").await;
    let idle = app.user("leaving_idle").await;
    hook(&app, &u, &rx.url(), Some(&["file.created", "file.deleted"])).await;
    // An account whose webhook has nothing to deliver: it goes with the account.
    hook(&app, &idle, &rx.url(), Some(&["link.used"])).await;
    let a = app.stored(&u.token, "a.png", png(300)).await;
    let b = app.stored(&u.token, "b.png", png(301)).await;
    rx.until(10, "the creations", |g| g.len() == 2).await;
    assert_eq!(app.sql_number("SELECT count(*) FROM webhooks"), 2);
    // The backend fails the first deletion event once.
    rx.then(&[Step::Status(500)]);
    for who in [&u, &idle] {
        assert_eq!(
            app.delete(&format!("/api/v1/admin/users/{}", who.id))
                .as_user(&admin)
                .status()
                .await,
            204
        );
    }
    let got = rx
        .until(10, "the first deletion event", |g| g.len() >= 3)
        .await;
    let failed = got[2].clone();
    assert_eq!(failed.kind(), "file.deleted");
    // The idle account's webhook is gone; the other waits for its back-off, retired.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.sql_number("SELECT count(*) FROM webhooks") != 1 {
        assert!(Instant::now() < deadline, "the idle webhook stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.sql_number("SELECT count(*) FROM webhooks WHERE owner_id IS NULL"),
        1
    );
    // A restart in the middle changes nothing: the retired webhook and its outbox are rows.
    app.kill9();
    let app = reopen(&app)
        .env("COFFER_WEBHOOKS__TIMEOUT_SECS", "2")
        .spawn()
        .await;
    // Waits for the failed event's second try itself: delivery is at least once, so the other
    // file's event may arrive twice (sent just before the kill, again after) before it, and a
    // count of three arrivals could be reached without it (seen once in a full-suite run).
    let got = rx
        .until(30, "both deletion events, the failed one again", |g| {
            g.iter().any(|x| x.id == failed.id && x.at > failed.at)
                && g.iter().filter(|x| x.kind() == "file.deleted").count() >= 3
        })
        .await;
    let deleted: Vec<&Got> = got.iter().filter(|x| x.kind() == "file.deleted").collect();
    let mut files: Vec<String> = deleted.iter().map(|x| x.file_id()).collect();
    files.sort();
    files.dedup();
    let mut want = vec![
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    ];
    want.sort();
    assert_eq!(files, want);
    // Drained: the webhook and its log are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.sql_number("SELECT count(*) FROM webhooks") != 0 {
        assert!(Instant::now() < deadline, "the retired webhook stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.sql_number("SELECT count(*) FROM webhook_deliveries"), 0);
    drop(app);
}

/// Creating and deleting a webhook are in the audit trail, with the URL's host and never the
/// secret or the URL's path.
#[tokio::test]
async fn creating_and_deleting_a_webhook_are_audited_without_the_secret() {
    let rx = Receiver::start().await;
    let app = open_app(5).spawn().await;
    let admin = app.admin("hook_auditor").await;
    let u = app.user("audited_hooks").await;
    let url = format!("{}?token=backend-own-token-42", rx.url());
    let h = hook(&app, &u, &url, Some(&["file.created"])).await;
    let id = h["id"].as_str().unwrap();
    let secret = h["secret"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/api/v1/webhooks/{id}"))
            .as_user(&u)
            .status()
            .await,
        204
    );
    let entries = app
        .audit_with(&admin.token, &["webhook.create", "webhook.delete"])
        .await;
    let created = entries
        .iter()
        .find(|e| e["event"] == "webhook.create")
        .unwrap();
    assert_eq!(created["actor_id"], u.id.as_str());
    assert_eq!(created["subject_id"], id);
    assert_eq!(created["detail"]["host"], rx.addr.to_string());
    assert_eq!(created["detail"]["events"], json!(["file.created"]));
    let deleted = entries
        .iter()
        .find(|e| e["event"] == "webhook.delete")
        .unwrap();
    assert_eq!(deleted["actor_id"], u.id.as_str());
    assert_eq!(deleted["subject_id"], id);
    let text = serde_json::to_string(&entries).unwrap();
    let raw = secret.trim_start_matches("whsec_");
    assert!(!text.contains(raw) && !text.contains("backend-own-token-42"));
    // Another owner's webhook is a 404 and not audited as deleted.
    let h2 = hook(&app, &u, &rx.url(), None).await;
    let other = app.user("not_the_owner").await;
    assert_eq!(
        app.delete(&format!("/api/v1/webhooks/{}", h2["id"].as_str().unwrap()))
            .as_user(&other)
            .status()
            .await,
        404
    );
    let entries = app.audit_with(&admin.token, &["webhook.create"]).await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["event"] == "webhook.delete")
            .count(),
        1
    );
}

/// Without encryption at rest the secrets are sealed with the service secret's key: after a
/// change of `COFFER_SECRET_KEY` (the old one in `COFFER_SECRET_OLD_KEYS`) webhooks still
/// sign, `coffer rotate-key` re-seals them under the new one, and then the old secret can go.
#[tokio::test]
async fn after_a_change_of_service_secret_webhooks_still_sign() {
    let rx = Receiver::start().await;
    let mut app = open_app(5)
        .single_node("reads the SQLite file behind the server")
        .spawn()
        .await;
    let u = app.user("resecret").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    let secret = h["secret"].as_str().unwrap().to_owned();
    let before = app.sql_text("SELECT secret_key_id FROM webhooks");
    let (old_secret, new_secret) = (app.secret(), crate::helpers::secret());
    app.terminate();
    let relaunch = |app: &TestApp| reopen(app).env("COFFER_SECRET_KEY", new_secret.clone());
    let mut app = relaunch(&app)
        .env("COFFER_SECRET_OLD_KEYS", old_secret)
        .spawn()
        .await;
    let (token, _) = app.login(&u.username, &u.password).await;
    app.stored(&token, "a.png", png(300)).await;
    let got = rx.until(10, "the event", |g| !g.is_empty()).await;
    assert_eq!(got[0].signature, expected_signature(&secret, &got[0]));
    let (code, stdout) = app.run_cli(&["rotate-key"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("re-wrapped 1 webhook secrets"), "{stdout}");
    assert_ne!(app.sql_text("SELECT secret_key_id FROM webhooks"), before);
    app.terminate();
    let app = relaunch(&app).spawn().await;
    app.stored(&token, "b.png", png(300)).await;
    let got = rx.until(10, "the second event", |g| g.len() >= 2).await;
    assert_eq!(got[1].signature, expected_signature(&secret, &got[1]));
}

/// A secret no configured key opens (the service secret changed without
/// `COFFER_SECRET_OLD_KEYS`) does not use up tries: the event waits, the server says why, and
/// once the earlier secret is named again the event is delivered, signed with the secret.
#[tokio::test]
async fn a_secret_no_key_opens_makes_events_wait_not_fail() {
    let rx = Receiver::start().await;
    let mut app = open_app(2)
        .single_node("reads the SQLite file behind the server")
        .env("COFFER_WEBHOOKS__MAX_ATTEMPTS", "1")
        .spawn()
        .await;
    let u = app.user("lostkey").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    let secret = h["secret"].as_str().unwrap().to_owned();
    let (old_secret, new_secret) = (app.secret(), crate::helpers::secret());
    app.terminate();
    let relaunch = |app: &TestApp| {
        reopen(app)
            .env("COFFER_WEBHOOKS__TIMEOUT_SECS", "2")
            .env("COFFER_WEBHOOKS__MAX_ATTEMPTS", "1")
            .env("COFFER_SECRET_KEY", new_secret.clone())
    };
    let mut app = relaunch(&app).spawn().await;
    assert!(
        app.logs()
            .contains("sealed under keys this node does not have")
    );
    let (token, _) = app.login(&u.username, &u.password).await;
    let u = TestUser { token, ..u };
    app.stored(&u.token, "a.png", png(300)).await;
    app.eventually("the server says why it cannot sign", || {
        app.logs()
            .contains("cannot unseal the webhook's signing secret")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.got().is_empty());
    let log = deliveries(&app, &u, &h).await;
    assert_eq!(log[0]["attempts"], 0, "not a try: {log:#?}");
    assert!(
        log[0]["next_attempt_at"].is_string(),
        "still pending: {log:#?}"
    );
    app.terminate();
    let app = relaunch(&app)
        .env("COFFER_SECRET_OLD_KEYS", old_secret)
        .spawn()
        .await;
    let got = rx
        .until(30, "the event, once the key is back", |g| !g.is_empty())
        .await;
    assert_eq!(got[0].signature, expected_signature(&secret, &got[0]));
    drop(app);
}

/// `coffer rotate-key` re-wraps webhook secrets too: with the old key removed, webhooks still
/// sign, with the secret shown at creation.
#[tokio::test]
async fn after_key_rotation_without_the_old_key_webhooks_still_sign() {
    let rx = Receiver::start().await;
    let (old_key, new_key) = (crate::helpers::secret(), crate::helpers::secret());
    let mut app = open_app(5)
        .env("COFFER_ENCRYPTION_KEY", old_key.clone())
        .spawn()
        .await;
    let u = app.user("rotated_hooks").await;
    let h = hook(&app, &u, &rx.url(), None).await;
    let secret = h["secret"].as_str().unwrap().to_owned();
    let before = app.sql_text("SELECT secret_key_id FROM webhooks");
    app.terminate();

    let mut app = reopen(&app)
        .env("COFFER_ENCRYPTION_KEY", new_key.clone())
        .env("COFFER_ENCRYPTION_OLD_KEYS", old_key)
        .spawn()
        .await;
    let (code, stdout) = app.run_cli(&["rotate-key"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(", 1 webhook secrets"), "{stdout}");
    let after = app.sql_text("SELECT secret_key_id FROM webhooks");
    assert_ne!(before.trim(), after.trim(), "sealed under the new key");
    app.terminate();

    let app = reopen(&app)
        .env("COFFER_ENCRYPTION_KEY", new_key)
        .spawn()
        .await;
    app.stored(&u.token, "after.png", png(300)).await;
    let got = rx.until(10, "the event", |g| !g.is_empty()).await;
    assert_eq!(got[0].signature, expected_signature(&secret, &got[0]));
    let log = log_until(&app, &u, &h, "delivered", |l| {
        l.first().is_some_and(|d| d["delivered_at"].is_string())
    })
    .await;
    assert_eq!(log[0]["last_status"], 200, "{log:#?}");
}
