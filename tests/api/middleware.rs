//! The middleware stack: security headers on every response, CORS, trusted hosts, request ids,
//! body limits, and framework errors as problem documents.

use reqwest::{Method, Response};
use serde_json::json;

use crate::helpers::{TestApp, problem};

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
        .env("COFFER_RATE_LIMIT__BURST", "3")
        .spawn()
        .await;
    let ok = app
        .req(Method::GET, "/api/v1/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_security_headers_except_cache(&ok);
    let nf = app.req(Method::GET, "/api/v1/nope").send().await.unwrap();
    assert_eq!(nf.status(), 404);
    assert_security_headers(&nf);
    assert!(
        nf.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let big = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "x".repeat(70_000), "password": "y"}),
        )
        .await;
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
    let r = app.req(Method::PUT, "/api/v1/files").send().await.unwrap();
    assert!(r.headers().get("allow").is_some());
    problem(r, 405).await;
    problem(app.req(Method::GET, "/nowhere").send().await.unwrap(), 404).await;
    let r = app
        .req(Method::POST, "/api/v1/auth/login")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 415).await;
    let r = app
        .req(Method::POST, "/api/v1/auth/login")
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    let r = app
        .post_json("/api/v1/auth/login", &json!({"username": "a"}))
        .await;
    let v = problem(r, 422).await;
    assert_eq!(v["errors"][0]["field"], "password");
    let r = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": 5, "password": "x"}),
        )
        .await;
    let v = problem(r, 422).await;
    assert_eq!(v["errors"][0]["field"], "username");
}

#[tokio::test]
async fn oversized_json_is_413() {
    let app = TestApp::spawn().await;
    let body =
        json!({"username": "a", "email": "a@example.com", "password": "x".repeat(65 * 1024)});
    problem(app.post_json("/api/v1/auth/register", &body).await, 413).await;
}

#[tokio::test]
async fn cors_answers_configured_origins_only() {
    let app = TestApp::builder()
        .env("COFFER_CORS__ALLOWED_ORIGINS", "https://app.example.com")
        .spawn()
        .await;
    let pre = app
        .req(Method::OPTIONS, "/api/v1/files")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-max-age"], "600");
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
        .req(Method::GET, "/healthz")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
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
        .req(Method::OPTIONS, "/api/v1/files")
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
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
        let mut req = app.req(Method::GET, "/healthz");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        no_cors(req.send().await.unwrap().headers());
    }
}

#[tokio::test]
async fn hosts_outside_the_allow_list_are_refused() {
    let app = TestApp::builder()
        .env("COFFER_SERVER__ALLOWED_HOSTS", "files.example.com")
        .spawn()
        .await;
    let r = app
        .req(Method::GET, "/api/v1/openapi.json")
        .header("host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_security_headers(&r);
    problem(r, 400).await;
    let r = app
        .req(Method::GET, "/api/v1/openapi.json")
        .header("host", "FILES.example.com:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Load balancers probe by IP.
    let r = app.req(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hsts_only_behind_tls() {
    let app = TestApp::spawn().await;
    let r = app.req(Method::GET, "/healthz").send().await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    let app = TestApp::builder()
        .env("COFFER_SERVER__BEHIND_TLS_PROXY", "true")
        .spawn()
        .await;
    let r = app.req(Method::GET, "/nope").send().await.unwrap();
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_only_when_plain() {
    let app = TestApp::spawn().await;
    let r = app
        .req(Method::GET, "/healthz")
        .header("x-request-id", "abc-123.X_y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123.X_y");
    let r = app
        .req(Method::GET, "/healthz")
        .header("x-request-id", "bad id\twith tabs")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id\twith tabs");
    let long = "a".repeat(65);
    let r = app
        .req(Method::GET, "/nope")
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, long);
    let v = problem(r, 404).await;
    assert_eq!(v["request_id"], id.as_str());
}
