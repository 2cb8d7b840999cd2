//! Registration: the account a sign-up creates, uniqueness, validation of every field, closed
//! registration, and accounts made with the CLI.

use std::io::Write as _;
use std::process::Stdio;

use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, account};

#[tokio::test]
async fn registration_statuses() {
    let app = TestApp::spawn().await;
    let user = app
        .register(&account("alice", "alice@example.com", PASSWORD))
        .expect(201)
        .await;
    assert_eq!(user["username"], "alice");
    assert_eq!(user["role"], "user");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    let keys: Vec<_> = user.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");

    let mut with_role = account("mallory", "mallory@example.com", PASSWORD);
    with_role["role"] = json!("admin");
    let weak = |password| account("bob", "bob@example.com", password);
    let refused = [
        // Uniqueness is case-insensitive, for usernames and emails.
        (
            "the username in other case",
            account("ALICE", "other@example.com", PASSWORD),
            (409, "conflict", ""),
        ),
        (
            "the email in other case",
            account("alice2", "Alice@Example.COM", PASSWORD),
            (409, "conflict", ""),
        ),
        // Validation lists every bad field.
        (
            "every field bad",
            account("a!", "not-an-email", "short"),
            (422, "validation-failed", "username,email,password"),
        ),
        (
            "no upper case",
            weak("alllowercase1"),
            (422, "validation-failed", "password"),
        ),
        (
            "no digit",
            weak("NoDigitsAtAll"),
            (422, "validation-failed", "password"),
        ),
        (
            "a common password",
            weak("Password1"),
            (422, "validation-failed", "password"),
        ),
        (
            "another common password",
            weak("Qwerty123"),
            (422, "validation-failed", "password"),
        ),
        // A role field is rejected, never honoured.
        ("a role", with_role, (422, "validation-failed", "role")),
        // Every missing field is named, not only the first.
        (
            "missing fields",
            json!({"username": "carl"}),
            (422, "validation-failed", "email,password"),
        ),
        // An array is not an object.
        (
            "an array",
            json!(["carl", "carl@example.com", PASSWORD]),
            (422, "validation-failed", "body"),
        ),
    ];
    for (row, body, want) in refused {
        assert_eq!(app.register(&body).refusal().await, want, "{row}");
    }
}

/// `coffer user create` with `stdin` as its standard input; whether it succeeded.
fn create_user_reading_stdin(app: &TestApp, username: &str, stdin: &str) -> bool {
    let email = format!("{username}@example.com");
    let mut child = app
        .cli(&["user", "create", "--username", username, "--email", &email])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().status.success()
}

#[tokio::test]
async fn closed_registration_is_403_but_the_cli_still_creates_users() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__OPEN_REGISTRATION", "false")
        .spawn()
        .await;
    app.register(&account("eve", "eve@example.com", PASSWORD))
        .problem(403)
        .await;
    let admin = app.admin("root_admin").await;
    let me = app.me().as_user(&admin).expect(200).await;
    assert_eq!(me["role"], "admin");
    // The CLI applies the same policy; the password may come from standard input.
    assert!(!create_user_reading_stdin(&app, "weakling", "password\n"));
    assert!(create_user_reading_stdin(
        &app,
        "stdin_user",
        &format!("{PASSWORD}\n")
    ));
    app.login("stdin_user", PASSWORD).await;
}
