//! The middleware stack: security headers on every response, CORS, trusted hosts, request ids,
//! body limits, and framework errors as problem documents.

use reqwest::{Method, Response};
use serde_json::json;

use crate::helpers::{Refusal, TestApp, account, problem};

fn assert_security_headers(r: &Response) {
    let h = r.headers();
    let get = |k: &str| {
        h.get(k)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{k} missing on {}", r.status()))
    };
    assert_eq!(get("x-content-type-options"), "nosniff");
    assert_eq!(get("x-frame-options"), "DENY");
    assert_eq!(get("referrer-policy"), "no-referrer");
    assert!(!get("permissions-policy").is_empty());
    let csp = get("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(get("cache-control").contains("no-store"));
    assert!(!get("x-request-id").is_empty());
    assert!(h.get("server").is_none());
}

#[tokio::test]
async fn security_headers_on_200_404_405_413_429() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "1")
        .env("COFFER_RATE_LIMIT__BURST", "4")
        .spawn()
        .await;
    let ok = app.get("/api/v1/openapi.json").send().await;
    assert_eq!(ok.status(), 200);
    assert_security_headers_except_cache(&ok);
    let nf = app.get("/api/v1/nope").send().await;
    assert_eq!(nf.status(), 404);
    assert_security_headers(&nf);
    let csp = nf.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let wrong_method = app.request(Method::PUT, "/api/v1/files").send().await;
    assert_eq!(wrong_method.status(), 405);
    assert_security_headers(&wrong_method);
    let big = app.try_login(&"x".repeat(70_000), "y").send().await;
    assert_eq!(big.status(), 413);
    assert_security_headers(&big);
    let mut limited = None;
    for _ in 0..10 {
        let Ok(r) = app.req(Method::GET, "/api/v1/users/me").send().await else {
            continue;
        };
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("rate limit never hit");
    assert_security_headers(&limited);
    assert!(limited.headers().get("retry-after").is_some());
}

fn assert_security_headers_except_cache(r: &Response) {
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(
        h.contains_key("permissions-policy")
            && h.contains_key("x-request-id")
            && h.contains_key("content-security-policy")
    );
}

#[tokio::test]
async fn errors_from_the_framework_are_problems() {
    let app = TestApp::spawn().await;
    // Methods a route does not have: 405 with Allow.
    for (method, path) in [
        (Method::PUT, "/api/v1/files"),
        (Method::DELETE, "/api/v1/auth/login"),
        (Method::PATCH, "/api/v1/users/me"),
    ] {
        let r = app.request(method.clone(), path).send().await;
        let row = format!("{method} {path}");
        assert!(r.headers().get("allow").is_some(), "{row}: no Allow");
        let got = Refusal::of(r).await;
        assert_eq!(got, (405, "method-not-allowed", ""), "{row}");
    }
    let login = |content_type: &str, body: &str| {
        app.post("/api/v1/auth/login")
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    for (row, req, want) in [
        ("no such path", app.get("/nowhere"), (404, "not-found", "")),
        (
            "JSON sent as text",
            login("text/plain", "{}"),
            (415, "unsupported-media-type", ""),
        ),
        (
            "malformed JSON",
            login("application/json", "{nope"),
            (400, "bad-request", ""),
        ),
        (
            "a missing field",
            app.post("/api/v1/auth/login")
                .json(&json!({"username": "a"})),
            (422, "validation-failed", "password"),
        ),
        (
            "a field of the wrong type",
            app.post("/api/v1/auth/login")
                .json(&json!({"username": 5, "password": "x"})),
            (422, "validation-failed", "username"),
        ),
    ] {
        assert_eq!(req.refusal().await, want, "{row}");
    }
}

#[tokio::test]
async fn oversized_json_is_413() {
    let app = TestApp::spawn().await;
    let body = account("a", "a@example.com", &"x".repeat(65 * 1024));
    app.register(&body).problem(413).await;
}

#[tokio::test]
async fn cors_answers_configured_origins_only() {
    let app = TestApp::builder()
        .env("COFFER_CORS__ALLOWED_ORIGINS", "https://app.example.com")
        .spawn()
        .await;
    let pre = app
        .request(Method::OPTIONS, "/api/v1/files")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await;
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    // cors.max_age_secs, default 7200 (Chromium's own cap).
    assert_eq!(h["access-control-max-age"], "7200");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase()
            .contains("authorization")
    );
    assert!(h.get("access-control-allow-credentials").is_none());

    let r = app
        .get("/healthz")
        .header("origin", "https://app.example.com")
        .send()
        .await;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        r.headers()["vary"]
            .to_str()
            .unwrap()
            .to_lowercase()
            .contains("origin")
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );

    let evil = app
        .request(Method::OPTIONS, "/api/v1/files")
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await;
    let no_cors = |h: &reqwest::header::HeaderMap| {
        let cors: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(
            cors.is_empty(),
            "CORS headers for a refused origin: {cors:?}"
        );
    };
    no_cors(evil.headers());
    for origin in [Some("https://evil.example.com"), None] {
        let mut req = app.get("/healthz");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        no_cors(req.send().await.headers());
    }
}

#[tokio::test]
async fn hosts_outside_the_allow_list_are_refused() {
    let app = TestApp::builder()
        .env("COFFER_SERVER__ALLOWED_HOSTS", "files.example.com")
        .spawn()
        .await;
    let r = app
        .get("/api/v1/openapi.json")
        .header("host", "evil.example.com")
        .send()
        .await;
    assert_security_headers(&r);
    problem(r, 400).await;
    let r = app
        .get("/api/v1/openapi.json")
        .header("host", "FILES.example.com:8443")
        .send()
        .await;
    assert_eq!(r.status(), 200);
    // Load balancers probe by IP.
    let r = app.get("/healthz").send().await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hsts_only_behind_tls() {
    let app = TestApp::spawn().await;
    let r = app.get("/healthz").send().await;
    assert!(r.headers().get("strict-transport-security").is_none());
    let app = TestApp::builder()
        .env("COFFER_SERVER__BEHIND_TLS_PROXY", "true")
        .spawn()
        .await;
    let r = app.get("/nope").send().await;
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_only_when_plain() {
    let app = TestApp::spawn().await;
    let r = app
        .get("/healthz")
        .header("x-request-id", "abc-123.X_y")
        .send()
        .await;
    assert_eq!(r.headers()["x-request-id"], "abc-123.X_y");
    let r = app
        .get("/healthz")
        .header("x-request-id", "bad id\twith tabs")
        .send()
        .await;
    assert_ne!(r.headers()["x-request-id"], "bad id\twith tabs");
    let long = "a".repeat(65);
    let r = app.get("/nope").header("x-request-id", &long).send().await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, long);
    let v = problem(r, 404).await;
    assert_eq!(v["request_id"], id.as_str());
}
