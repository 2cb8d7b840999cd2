//! API keys: created, shown once, listed without their secret, used instead of a token, never
//! able to manage credentials, deleted by their owner only.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, problem};

#[tokio::test]
async fn api_keys_lifecycle() {
    let app = TestApp::spawn().await;
    let u = app.user("ivan").await;
    let r = app
        .authed(Method::POST, "/api/v1/api-keys", &u.token)
        .json(&json!({"name": "backend", "expires_in_days": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap();
    assert_eq!(prefix.len(), 12);
    assert!(key.starts_with(prefix));
    assert!(created["expires_at"].is_string());

    let list: Value = app
        .authed(Method::GET, "/api/v1/api-keys", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("key").is_none() && items[0].get("hash").is_none());
    assert!(!list.to_string().contains(&key[12..]));

    let with_key = |m: Method, p: &str| app.req(m, p).header("x-api-key", key.clone());
    let me: Value = with_key(Method::GET, "/api/v1/users/me")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], u.id.as_str());
    // An API key cannot manage credentials.
    problem(
        with_key(Method::POST, "/api/v1/api-keys")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        with_key(Method::POST, "/api/v1/auth/logout")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        with_key(Method::POST, "/api/v1/auth/refresh")
            .json(&json!({"refresh_token": u.refresh}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let id = created["id"].as_str().unwrap();
    problem(
        with_key(Method::DELETE, &format!("/api/v1/api-keys/{id}"))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;

    // Validation.
    problem(
        app.authed(Method::POST, "/api/v1/api-keys", &u.token)
            .json(&json!({"name": "x", "expires_in_days": 0}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        app.authed(Method::POST, "/api/v1/api-keys", &u.token)
            .json(&json!({"name": "x", "expires_in_days": 3651}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let no_expiry: Value = app
        .authed(Method::POST, "/api/v1/api-keys", &u.token)
        .json(&json!({"name": "forever"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(no_expiry["expires_at"].is_null());

    // Someone else cannot delete it; the owner can, and then it stops working.
    let other = app.user("judy").await;
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            &other.token,
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        app.authed(Method::DELETE, &format!("/api/v1/api-keys/{id}"), &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(
        with_key(Method::GET, "/api/v1/users/me")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    // A key with a valid prefix but a wrong secret.
    let forged = format!("{}_{}", &key[..12], "A".repeat(43));
    problem(
        app.req(Method::GET, "/api/v1/users/me")
            .header("x-api-key", forged)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}
