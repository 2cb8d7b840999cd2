//! The in-process credential cache: a revocation drops what it revoked and nothing else, so
//! one user cannot empty the cache for everyone (issue 20, item 7).

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, problem};

/// A counter or gauge from `/metrics`.
async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

/// Create an API key: the 201 body.
async fn create_key(app: &TestApp, token: &str, name: &str) -> Value {
    let r = app
        .authed(Method::POST, "/api/v1/api-keys", token)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

#[tokio::test]
async fn another_users_key_churn_leaves_a_cached_credential_cached() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__PRINCIPAL_CACHE_SECS", "600")
        .spawn()
        .await;
    let churner = app.user("churner").await;
    let bystander = app.user("bystander").await;
    let key = create_key(&app, &bystander.token, "backend").await;
    let key = key["key"].as_str().unwrap().to_owned();
    let me_by_token = || {
        app.authed(Method::GET, "/api/v1/users/me", &bystander.token)
            .send()
    };
    let me_by_key = |k: &str| {
        app.req(Method::GET, "/api/v1/users/me")
            .header("x-api-key", k)
            .send()
    };
    // Checked once against the database, then cached.
    assert_eq!(me_by_token().await.unwrap().status(), 200);
    assert_eq!(me_by_key(&key).await.unwrap().status(), 200);

    // The other user creates, uses (so it is cached too) and deletes keys in a loop: each
    // deleted key stops working at once.
    for i in 0..20 {
        let created = create_key(&app, &churner.token, &format!("k{i}")).await;
        let k = created["key"].as_str().unwrap();
        assert_eq!(me_by_key(k).await.unwrap().status(), 200);
        let id = created["id"].as_str().unwrap();
        let r = app
            .authed(
                Method::DELETE,
                &format!("/api/v1/api-keys/{id}"),
                &churner.token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        problem(me_by_key(k).await.unwrap(), 401).await;
    }
    // Its logout ends its own login only.
    let r = app
        .authed(Method::POST, "/api/v1/auth/logout", &churner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(
        app.authed(Method::GET, "/api/v1/users/me", &churner.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;

    // The bystander's token and key are still answered from the cache.
    let (hits, misses) = (
        metric(&app, "coffer_principal_cache_hits_total").await,
        metric(&app, "coffer_principal_cache_misses_total").await,
    );
    assert_eq!(me_by_token().await.unwrap().status(), 200);
    assert_eq!(me_by_key(&key).await.unwrap().status(), 200);
    assert_eq!(
        metric(&app, "coffer_principal_cache_hits_total").await - hits,
        2,
        "both were cache hits"
    );
    assert_eq!(
        metric(&app, "coffer_principal_cache_misses_total").await,
        misses
    );
    // 20 keys and one login were dropped by their revocations.
    assert!(metric(&app, "coffer_principal_cache_revoked_total").await >= 21);
}
