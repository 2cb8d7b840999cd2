//! Logging in: one answer for every failure, case-insensitive names, and input that is data,
//! never SQL.

use crate::helpers::fixtures::png;
use crate::helpers::{PASSWORD, TestApp, problem};

#[tokio::test]
async fn login_does_not_reveal_which_users_exist() {
    let app = TestApp::spawn().await;
    app.user("carol").await;
    let unknown = app.try_login("nobody", PASSWORD).send().await;
    assert_eq!(unknown.headers()["www-authenticate"], "Bearer");
    let unknown = problem(unknown, 401).await;
    let wrong = app.try_login("carol", "Wrong-Pass-99").problem(401).await;
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
        app.try_login(username, "' OR '1'='1").problem(401).await;
    }
    let f = app
        .stored(&u.token, "'; DROP TABLE files; --.png", png(100))
        .await;
    assert_eq!(f["filename"], "; DROP TABLE files; --.png");
    app.files()
        .as_user(&u)
        .query(&[("limit", "1 OR 1=1")])
        .problem(422)
        .await;
    let list = app.files().as_user(&u).expect(200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    app.login("bobby", PASSWORD).await;
}
