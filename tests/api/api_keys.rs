//! API keys: created, shown once, listed without their secret, used instead of a token, never
//! able to manage credentials, deleted by their owner only.

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn api_keys_lifecycle() {
    let app = TestApp::builder().spawn().await;
    let u = app.user("ivan").await;
    let created = app
        .create_api_key(&json!({"name": "backend", "expires_in_days": 30}))
        .as_user(&u)
        .expect(201)
        .await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let prefix = created["prefix"].as_str().unwrap();
    assert_eq!(prefix.len(), 12);
    assert!(key.starts_with(prefix));
    assert!(created["expires_at"].is_string());

    // Shown once: the listing has neither the key nor its hash.
    let list = app.get("/api/v1/api-keys").as_user(&u).expect(200).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("key").is_none() && items[0].get("hash").is_none());
    assert!(!list.to_string().contains(&key[12..]));

    let me = app.me().api_key(key).expect(200).await;
    assert_eq!(me["id"], u.id.as_str());
    // An API key cannot manage credentials.
    let refresh = json!({"refresh_token": u.refresh});
    let delete_key = format!("/api/v1/api-keys/{id}");
    for (row, method, path, body) in [
        (
            "create a key",
            Method::POST,
            "/api/v1/api-keys",
            json!({"name": "x"}),
        ),
        ("log out", Method::POST, "/api/v1/auth/logout", json!(null)),
        ("refresh", Method::POST, "/api/v1/auth/refresh", refresh),
        (
            "delete a key",
            Method::DELETE,
            delete_key.as_str(),
            json!(null),
        ),
    ] {
        let mut req = app.request(method, path).api_key(key);
        if !body.is_null() {
            req = req.json(&body);
        }
        assert_eq!(req.refusal().await, (403, "forbidden", ""), "{row}");
    }

    // Validation.
    for days in [0, 3651] {
        let body = json!({"name": "x", "expires_in_days": days});
        let refusal = app.create_api_key(&body).as_user(&u).refusal().await;
        assert_eq!(
            refusal,
            (422, "validation-failed", "expires_in_days"),
            "{days} days"
        );
    }
    let no_expiry = app
        .create_api_key(&json!({"name": "forever"}))
        .as_user(&u)
        .expect(201)
        .await;
    assert!(no_expiry["expires_at"].is_null());

    // Someone else cannot delete it; the owner can, and then it stops working.
    let other = app.user("judy").await;
    app.delete_api_key(id).as_user(&other).problem(404).await;
    assert_eq!(app.delete_api_key(id).as_user(&u).status().await, 204);
    app.me().api_key(key).problem(401).await;
    // A key with a valid prefix but a wrong secret.
    let forged = format!("{}_{}", &key[..12], "A".repeat(43));
    app.me().api_key(&forged).problem(401).await;
}
