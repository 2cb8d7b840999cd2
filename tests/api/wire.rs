//! The wire below the router, over raw TCP: what hyper's HTTP/1 parser refuses by itself, the
//! `Host` rules of RFC 9112 §3.2 and its transfer codings (§6.1).

use crate::helpers::TestApp;
use crate::helpers::raw::{RawConn, RawResponse, exchange};

/// A problem document with every header the contract puts on an error; returns its request id.
fn assert_problem(r: &RawResponse, status: u16) -> String {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{:?} {body}", r.headers);
    let get = |k: &str| {
        r.header(k)
            .unwrap_or_else(|| panic!("{k} missing on {status}: {:?}", r.headers))
    };
    assert!(get("content-type").starts_with("application/problem+json"));
    assert_eq!(get("x-content-type-options"), "nosniff");
    assert_eq!(get("x-frame-options"), "DENY");
    assert_eq!(get("referrer-policy"), "no-referrer");
    assert!(!get("permissions-policy").is_empty());
    assert_eq!(
        get("content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
    assert_eq!(get("cache-control"), "no-store");
    assert!(r.header("server").is_none());
    let id = get("x-request-id").to_owned();
    let v = r.json();
    assert_eq!(v["status"], status, "{v}");
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:coffer:problem:")
    );
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    assert_eq!(v["request_id"], id.as_str(), "{v}");
    id
}

fn get(path: &str, host_lines: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n").into_bytes()
}

/// 100 KiB of header lines: past hyper's 64 KiB read buffer.
fn oversized_headers() -> Vec<u8> {
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..25 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(4096)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

const GOOD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
const GARBAGE: &[u8] = b"GARB\x01GE / HTTP/1.1\r\n\r\n";

#[tokio::test]
async fn parser_errors_are_problems_with_the_security_headers() {
    let app = TestApp::spawn().await;

    let r = exchange(app.addr, &oversized_headers()).await;
    let first = assert_problem(&r, 431);
    assert_eq!(r.header("connection"), Some("close"));
    let r = exchange(app.addr, GARBAGE).await;
    let second = assert_problem(&r, 400);
    assert_ne!(first, second, "each refusal gets a fresh id");

    // On a keep-alive connection, after a good request; then the server closes.
    let mut c = RawConn::open(app.addr).await;
    c.send(GOOD).await;
    assert_eq!(c.response().await.status, 200);
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n")
        .await;
    assert_problem(&c.response().await, 400);
    assert!(c.closed().await, "nothing follows the refusal");

    // Pipelined in one packet, after a HEAD (whose Content-Length announces no body) and a
    // GET: both answers pass unchanged, then the refusal.
    let mut c = RawConn::open(app.addr).await;
    let mut burst = b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    burst.extend_from_slice(GOOD);
    burst.extend_from_slice(&oversized_headers());
    c.send(&burst).await;
    let head = c.head_response().await;
    assert_eq!(head.status, 200);
    assert!(head.header("content-length").is_some() && head.body.is_empty());
    let ok = c.response().await;
    assert_eq!((ok.status, ok.json()["status"].as_str()), (200, Some("ok")));
    assert_problem(&c.response().await, 431);
    assert!(c.closed().await);

    // A server behind a TLS proxy adds HSTS here too.
    let app = TestApp::builder()
        .env("COFFER_SERVER__BEHIND_TLS_PROXY", "true")
        .spawn()
        .await;
    let r = exchange(app.addr, GARBAGE).await;
    assert_problem(&r, 400);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains")
    );
}

#[tokio::test]
async fn host_must_come_once_and_well_formed() {
    const HOST: &str = "files.example.com";
    for allow_list in [false, true] {
        let mut builder = TestApp::builder();
        if allow_list {
            builder = builder.env("COFFER_SERVER__ALLOWED_HOSTS", HOST);
        }
        let app = builder.spawn().await;
        // Probes are exempt from the allow list, not from HTTP's framing rules.
        for path in ["/healthz", "/api/v1/openapi.json"] {
            let refused = [
                String::new(),
                format!("Host: {HOST}\r\nHost: {HOST}\r\n"),
                format!("Host: {HOST}\r\nHost: evil.example.com\r\n"),
                format!("Host: evil.example.com\r\nHost: {HOST}\r\n"),
                format!("Host: user@{HOST}\r\n"),
                format!("Host: {HOST}:80x\r\n"),
                "Host: \r\n".to_owned(),
            ];
            for lines in &refused {
                let r = exchange(app.addr, &get(path, lines)).await;
                assert_eq!(r.status, 400, "{path} {lines:?} (allow list {allow_list})");
                assert_problem(&r, 400);
            }
            let r = exchange(app.addr, &get(path, &format!("Host: {HOST}:8080\r\n"))).await;
            assert_eq!(r.status, 200, "{path}");
            // HTTP/1.0 predates Host (RFC 9112 §3.2 binds HTTP/1.1): accepted without one,
            // except where the allow list needs a name to check.
            let r = exchange(app.addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await;
            let expected = if allow_list && path != "/healthz" {
                400
            } else {
                200
            };
            assert_eq!(
                r.status, expected,
                "HTTP/1.0 {path} (allow list {allow_list})"
            );
        }
        // The allow list holds for the target's authority too (absolute form, RFC 9112 §3.2.2).
        let r = exchange(
            app.addr,
            &get(
                "http://evil.example.com/api/v1/openapi.json",
                &format!("Host: {HOST}\r\n"),
            ),
        )
        .await;
        assert_eq!(r.status, if allow_list { 400 } else { 200 });
    }
}

/// RFC 9112 §6.1: hyper takes any coding list ending in `chunked` for chunked; a coding
/// coffer does not decode is 501 (an upload would otherwise store the compressed bytes), and
/// `chunked` twice is 400. Plain chunked works.
#[tokio::test]
async fn only_chunked_once_is_taken_as_a_transfer_coding() {
    let app = TestApp::spawn().await;
    let post = |codings: &str| {
        format!(
            "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n{codings}\
             Content-Type: application/json\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        )
        .into_bytes()
    };
    for (codings, status) in [
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            501,
        ),
        ("Transfer-Encoding: chunked, chunked\r\n", 400),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
    ] {
        let r = exchange(app.addr, &post(codings)).await;
        assert_problem(&r, status);
    }
    // The login's own answer: the body was read as chunked.
    let r = exchange(app.addr, &post("Transfer-Encoding: chunked\r\n")).await;
    assert_eq!(r.status, 422);
}

/// `POST /api/v1/files` announcing `len` bytes, with `extra` header lines.
fn upload_head(len: usize, extra: &str) -> Vec<u8> {
    format!("POST /api/v1/files?filename=a.txt HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len}\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn an_early_answer_is_followed_by_reading_the_rest_of_the_body() {
    use std::time::{Duration, Instant};
    const LEN: usize = 3 << 20;
    let app = TestApp::builder()
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "100000")
        .spawn()
        .await;
    let u = app.user("drainer").await;
    let auth = format!("Authorization: Bearer {}\r\n", u.token);
    let body = vec![b'a'; LEN];
    // 401 (no credential), 413 (announced over the limit) and 413 found while streaming (a
    // chunked body): each answer comes while the client is still sending and the rest of the
    // body is taken. Then the connection serves the next request, or, when the answer said
    // `Connection: close` (a 413 does), closes cleanly.
    let chunked = {
        let mut b = format!("{:x}\r\n", LEN).into_bytes();
        b.extend_from_slice(&body);
        b.extend_from_slice(b"\r\n0\r\n\r\n");
        b
    };
    let cases: [(&str, Vec<u8>, &[u8], u16); 3] = [
        ("401", upload_head(LEN, ""), &body, 401),
        ("413 announced", upload_head(LEN, &auth), &body, 413),
        (
            "413 streaming",
            format!(
                "POST /api/v1/files?filename=a.txt HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
            )
            .into_bytes(),
            &chunked,
            413,
        ),
    ];
    for (case, head, rest, status) in cases {
        let mut c = RawConn::open(app.addr).await;
        c.send(&head).await;
        let (first, rest) = rest.split_at(200_000);
        c.send(first).await;
        let r = c.response().await;
        assert_problem(&r, status);
        assert!(
            c.send_while_taken(rest, Duration::from_secs(5)).await,
            "{case}: the rest of the body is read"
        );
        if r.header("connection") == Some("close") {
            assert!(c.closed().await, "{case}");
        } else {
            c.send(GOOD).await;
            assert_eq!(
                c.response().await.status,
                200,
                "{case}: the connection lives on"
            );
        }
    }
    let list = app.files().as_user(&u).expect(200).await;
    assert!(list["items"].as_array().unwrap().is_empty());

    // Past server.drain_limit_bytes the connection closes after the answer; a client waiting
    // for 100 Continue is not waited for.
    let app = TestApp::builder()
        .env("COFFER_SERVER__DRAIN_LIMIT_BYTES", "65536")
        .spawn()
        .await;
    let mut c = RawConn::open(app.addr).await;
    c.send(&upload_head(LEN, "")).await;
    c.send(&body[..1000]).await;
    assert_problem(&c.response().await, 401);
    let _ = c
        .send_while_taken(&body[1000..], Duration::from_secs(5))
        .await;
    assert!(c.closed().await, "closed past the limit");
    // Once the body was read, 100 Continue went out and the client sends: drained too (here
    // a 413 found while streaming, so closed after it).
    let app2 = TestApp::builder()
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "100000")
        .spawn()
        .await;
    let u = app2.user("continuer").await;
    let mut c = RawConn::open(app2.addr).await;
    c.send(
        format!(
            "POST /api/v1/files?filename=a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            u.token
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.response().await.status, 100);
    let mut chunked = format!("{:x}\r\n", LEN).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (first, rest) = chunked.split_at(200_000);
    c.send(first).await;
    assert_problem(&c.response().await, 413);
    assert!(
        c.send_while_taken(rest, Duration::from_secs(5)).await,
        "after 100 Continue the rest is read"
    );
    assert!(c.closed().await);

    let mut c = RawConn::open(app.addr).await;
    let started = Instant::now();
    c.send(&upload_head(LEN, "Expect: 100-continue\r\n")).await;
    assert_problem(&c.response().await, 401);
    assert!(c.closed().await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
