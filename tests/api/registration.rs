//! Registration: the account a sign-up creates, uniqueness, validation of every field, closed
//! registration, and accounts made with the CLI.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, problem};

fn register_body(username: &str, email: &str, password: &str) -> Value {
    json!({"username": username, "email": email, "password": password})
}

#[tokio::test]
async fn registration_statuses() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json(
            "/api/v1/auth/register",
            &register_body("alice", "alice@example.com", PASSWORD),
        )
        .await;
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["username"], "alice");
    assert_eq!(user["role"], "user");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    let keys: Vec<_> = user.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");

    // Uniqueness is case-insensitive, for usernames and emails.
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("ALICE", "other@example.com", PASSWORD),
        )
        .await,
        409,
    )
    .await;
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("alice2", "Alice@Example.COM", PASSWORD),
        )
        .await,
        409,
    )
    .await;

    // Validation lists every bad field.
    let v = problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("a!", "not-an-email", "short"),
        )
        .await,
        422,
    )
    .await;
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"username") && fields.contains(&"email") && fields.contains(&"password"),
        "{v}"
    );
    for weak in ["alllowercase1", "NoDigitsAtAll", "Password1", "Qwerty123"] {
        let v = problem(
            app.post_json(
                "/api/v1/auth/register",
                &register_body("bob", "bob@example.com", weak),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(v["errors"][0]["field"], "password", "{weak}");
    }
    // A role field is rejected, never honoured.
    let mut body = register_body("mallory", "mallory@example.com", PASSWORD);
    body["role"] = json!("admin");
    let v = problem(app.post_json("/api/v1/auth/register", &body).await, 422).await;
    assert_eq!(v["errors"][0]["field"], "role");
    // Every missing field is named, not only the first; an array is not an object.
    let v = problem(
        app.post_json("/api/v1/auth/register", &json!({"username": "carl"}))
            .await,
        422,
    )
    .await;
    let fields: Vec<_> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"]);
    let v = problem(
        app.post_json(
            "/api/v1/auth/register",
            &json!(["carl", "carl@example.com", PASSWORD]),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(v["errors"][0]["field"], "body");
}

#[tokio::test]
async fn closed_registration_is_403_but_the_cli_still_creates_users() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__OPEN_REGISTRATION", "false")
        .spawn()
        .await;
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("eve", "eve@example.com", PASSWORD),
        )
        .await,
        403,
    )
    .await;
    let admin = app.admin("root_admin").await;
    let me: Value = app
        .authed(Method::GET, "/api/v1/users/me", &admin.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    // The CLI applies the same policy; the password may come from standard input.
    let mut child = app
        .cli(&[
            "user",
            "create",
            "--username",
            "weakling",
            "--email",
            "w@example.com",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let mut child = app
        .cli(&[
            "user",
            "create",
            "--username",
            "stdin_user",
            "--email",
            "s@example.com",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    app.login("stdin_user", PASSWORD).await;
}
