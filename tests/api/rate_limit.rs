//! Per-address rate limits and the client address behind proxies.

use crate::helpers::{PASSWORD, Refusal, TestApp, account};

/// GET the document (as the address `xff` forwards, if any) until a 429 comes; at most `max`
/// tries.
async fn hit_until_429(app: &TestApp, xff: Option<&str>, max: usize) -> Option<reqwest::Response> {
    for _ in 0..max {
        let mut req = app.get("/api/v1/openapi.json");
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let r = req.send().await;
        if r.status() == 429 {
            return Some(r);
        }
    }
    None
}

/// A 429's `Retry-After`, in whole seconds.
fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn global_bucket_refuses_with_retry_after_and_spoofing_does_not_reset_it() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "1")
        .env("COFFER_RATE_LIMIT__BURST", "5")
        .spawn()
        .await;
    let r = hit_until_429(&app, None, 20).await.expect("no 429");
    assert!(retry_after(&r) >= 1);
    assert_eq!(Refusal::of(r).await, (429, "rate-limited", ""));
    // The peer is not a trusted proxy: a forged address in any forwarding header changes
    // nothing.
    for (header, value) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "203.0.113.8"),
        ("x-real-ip", "203.0.113.8"),
        ("true-client-ip", "203.0.113.8"),
    ] {
        let r = app.get("/api/v1/openapi.json").header(header, value);
        assert_eq!(r.status().await, 429, "{header}");
    }
    // Health probes are exempt.
    assert_eq!(app.get("/healthz").status().await, 200);
}

#[tokio::test]
async fn trusted_proxies_forward_the_client_address() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "1")
        .env("COFFER_RATE_LIMIT__BURST", "3")
        .env("COFFER_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .spawn()
        .await;
    let limited = hit_until_429(&app, Some("198.51.100.1"), 10).await;
    assert!(limited.is_some());
    let forwarded = |xff: &str| {
        app.get("/api/v1/openapi.json")
            .header("x-forwarded-for", xff)
    };
    // Another client behind the same proxy has its own bucket.
    assert_eq!(forwarded("198.51.100.2").status().await, 200);
    // The right-most untrusted entry decides: a client cannot prepend its way to a new bucket.
    let prepended = forwarded("10.9.9.9, 198.51.100.1");
    assert_eq!(prepended.status().await, 429);
}

#[tokio::test]
async fn sixth_login_in_a_minute_is_429() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__LOGIN_PER_MINUTE", "5")
        .spawn()
        .await;
    for i in 0..5 {
        let r = app.try_login("nobody", "Wrong-Pass-1");
        assert_eq!(r.status().await, 401, "attempt {i}");
    }
    let r = app.try_login("nobody", "Wrong-Pass-1").send().await;
    assert!(retry_after(&r) >= 1);
    assert_eq!(Refusal::of(r).await, (429, "rate-limited", ""));
    // Register shares the budget.
    let newbie = account("newbie", "n@example.com", "Correct-Horse-9");
    assert_eq!(app.register(&newbie).status().await, 429);
}

#[tokio::test]
async fn repeated_failures_against_one_account_are_slowed_not_locked_for_others() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__LOGIN_FAILURES_BEFORE_DELAY", "3")
        .env("COFFER_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .spawn()
        .await;
    let u = app.user("victim").await;
    let attempt = |ip: &str, password: &str| {
        app.try_login("victim", password)
            .header("x-forwarded-for", ip)
            .send()
    };
    for _ in 0..3 {
        let r = attempt("203.0.113.66", "Wrong-Guess-1").await;
        assert_eq!(r.status(), 401);
    }
    let r = attempt("203.0.113.66", "Wrong-Guess-1").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // The owner, from another address, still gets in.
    let r = attempt("198.51.100.10", PASSWORD).await;
    assert_eq!(r.status(), 200, "{}", u.username);
}
