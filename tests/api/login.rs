//! Logging in: one answer for every failure, case-insensitive names, and input that is data,
//! never SQL.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, problem};

#[tokio::test]
async fn login_does_not_reveal_which_users_exist() {
    let app = TestApp::spawn().await;
    app.user("carol").await;
    let unknown = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "nobody", "password": PASSWORD}),
        )
        .await;
    assert_eq!(unknown.headers()["www-authenticate"], "Bearer");
    let unknown = problem(unknown, 401).await;
    let wrong = problem(
        app.post_json(
            "/api/v1/auth/login",
            &json!({"username": "carol", "password": "Wrong-Pass-99"}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(unknown["detail"], wrong["detail"]);
    assert_eq!(unknown["type"], wrong["type"]);
    // Usernames are case-insensitive at login too.
    app.login("CAROL", PASSWORD).await;
}

#[tokio::test]
async fn sql_injection_payloads_are_just_data() {
    // Every query binds its values; these strings must behave as plain (odd) text.
    let app = TestApp::spawn().await;
    let u = app.user("bobby").await;
    for username in [
        "bobby' OR '1'='1",
        "bobby'--",
        "x\" OR \"\"=\"",
        "bobby; DROP TABLE users",
    ] {
        let r = app
            .post_json(
                "/api/v1/auth/login",
                &json!({"username": username, "password": "' OR '1'='1"}),
            )
            .await;
        problem(r, 401).await;
    }
    let name = "'; DROP TABLE files; --.png";
    let f = app
        .stored(&u.token, name, crate::helpers::fixtures::png(100))
        .await;
    assert_eq!(f["filename"], "; DROP TABLE files; --.png");
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .query(&[("limit", "1 OR 1=1")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["status"], 422);
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    app.login("bobby", PASSWORD).await;
}
