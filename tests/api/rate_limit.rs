//! Per-address rate limits and the client address behind proxies.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, problem};

async fn hit_until_429(app: &TestApp, xff: Option<&str>, max: usize) -> Option<reqwest::Response> {
    for _ in 0..max {
        let mut req = app.req(Method::GET, "/api/v1/openapi.json");
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let r = req.send().await.unwrap();
        if r.status() == 429 {
            return Some(r);
        }
    }
    None
}

#[tokio::test]
async fn global_bucket_refuses_with_retry_after_and_spoofing_does_not_reset_it() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "1")
        .env("COFFER_RATE_LIMIT__BURST", "5")
        .spawn()
        .await;
    let r = hit_until_429(&app, None, 20).await.expect("no 429");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v = problem(r, 429).await;
    assert!(v["type"].as_str().unwrap().ends_with("rate-limited"));
    // The peer is not a trusted proxy: a forged X-Forwarded-For changes nothing.
    let r = app
        .req(Method::GET, "/api/v1/openapi.json")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    for h in ["forwarded", "x-real-ip", "true-client-ip"] {
        let r = app
            .req(Method::GET, "/api/v1/openapi.json")
            .header(h, "203.0.113.8")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{h}");
    }
    // Health probes are exempt.
    assert_eq!(
        app.req(Method::GET, "/healthz")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn trusted_proxies_forward_the_client_address() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "1")
        .env("COFFER_RATE_LIMIT__BURST", "3")
        .env("COFFER_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .spawn()
        .await;
    assert!(
        hit_until_429(&app, Some("198.51.100.1"), 10)
            .await
            .is_some()
    );
    // Another client behind the same proxy has its own bucket.
    let r = app
        .req(Method::GET, "/api/v1/openapi.json")
        .header("x-forwarded-for", "198.51.100.2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The right-most untrusted entry decides: a client cannot prepend its way to a new bucket.
    let r = app
        .req(Method::GET, "/api/v1/openapi.json")
        .header("x-forwarded-for", "10.9.9.9, 198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn sixth_login_in_a_minute_is_429() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__LOGIN_PER_MINUTE", "5")
        .spawn()
        .await;
    for i in 0..5 {
        let r = app
            .post_json(
                "/api/v1/auth/login",
                &json!({"username": "nobody", "password": "Wrong-Pass-1"}),
            )
            .await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "nobody", "password": "Wrong-Pass-1"}),
        )
        .await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    problem(r, 429).await;
    // Register shares the budget.
    let r = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"username": "newbie", "email": "n@example.com", "password": "Correct-Horse-9"}),
        )
        .await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn repeated_failures_against_one_account_are_slowed_not_locked_for_others() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__LOGIN_FAILURES_BEFORE_DELAY", "3")
        .env("COFFER_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .spawn()
        .await;
    let u = app.user("victim").await;
    let attempt = |ip: &'static str, pw: &'static str| {
        app.req(Method::POST, "/api/v1/auth/login")
            .header("x-forwarded-for", ip)
            .json(&json!({"username": "victim", "password": pw}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("203.0.113.66", "Wrong-Guess-1")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let r = attempt("203.0.113.66", "Wrong-Guess-1").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // The owner, from another address, still gets in.
    let r = attempt("198.51.100.10", crate::helpers::PASSWORD)
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", u.username);
}
