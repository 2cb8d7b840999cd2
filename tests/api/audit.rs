//! The audit trail: security events recorded without secrets (in the trail and in the log), and
//! read page by page.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, problem};

#[tokio::test]
async fn security_events_are_audited_without_secrets() {
    let app = TestApp::spawn().await;
    let admin = app.admin("auditor").await;
    let u = app.user("leo").await;
    app.post_json(
        "/api/v1/auth/login",
        &json!({"username": "leo", "password": "Not-The-Pass-1"}),
    )
    .await;
    let pair: Value = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": u.refresh}))
        .await
        .json()
        .await
        .unwrap();
    app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": u.refresh}))
        .await;
    let key: Value = app
        .authed(Method::POST, "/api/v1/api-keys", &admin.token)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.authed(
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap()),
        &admin.token,
    )
    .send()
    .await
    .unwrap();
    let (t, _) = app.login("leo", PASSWORD).await;
    app.authed(Method::POST, "/api/v1/auth/logout", &t)
        .send()
        .await
        .unwrap();

    let entries = app.audit(&admin.token).await;
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "auth.register",
        "auth.login",
        "auth.login_failed",
        "auth.refresh",
        "auth.refresh_reuse",
        "auth.logout",
        "apikey.create",
        "apikey.delete",
    ] {
        assert!(events.contains(&want), "{want} missing from {events:?}");
    }
    let failed = entries
        .iter()
        .find(|e| e["event"] == "auth.login_failed")
        .unwrap();
    assert_eq!(failed["client_ip"], "127.0.0.1");
    for e in &entries {
        for k in [
            "id",
            "at",
            "event",
            "actor_id",
            "subject_id",
            "client_ip",
            "detail",
        ] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
    }
    // Newest first.
    assert!(entries.first().unwrap()["at"].as_str() >= entries.last().unwrap()["at"].as_str());

    // No password, token, hash or key anywhere: not in the trail, not in the server's log.
    let secrets = [
        PASSWORD.to_owned(),
        "Not-The-Pass-1".to_owned(),
        u.token.clone(),
        u.refresh.clone(),
        t.clone(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
        app.secret(),
    ];
    let trail = serde_json::to_string(&entries).unwrap();
    // Wait for the log to catch up with the last request, then scan all of it.
    app.eventually("the log captured the events", || {
        app.logs().contains("auth.logout")
    })
    .await;
    let logs = app.logs();
    for s in &secrets {
        assert!(!trail.contains(s.as_str()), "secret in audit trail");
        assert!(!logs.contains(s.as_str()), "secret in logs");
    }
    assert!(!logs.contains("$argon2"), "hash in logs");
    assert!(!trail.contains("$argon2"), "hash in audit trail");
}

#[tokio::test]
async fn audit_pages_cover_everything_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin("pager").await;
    for i in 0..7 {
        app.post_json(
            "/api/v1/auth/login",
            &json!({"username": format!("ghost{i}"), "password": "Wrong-1-Pass"}),
        )
        .await;
    }
    let pages = app.pages("/api/v1/admin/audit", &admin.token, 3).await;
    assert!(pages.iter().all(|p| p.len() <= 3));
    let mut seen: Vec<String> = pages
        .concat()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total);
    assert!(total >= 8);
    problem(
        app.authed(Method::GET, "/api/v1/admin/audit?limit=0", &admin.token)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        app.authed(Method::GET, "/api/v1/admin/audit?limit=1001", &admin.token)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        app.authed(Method::GET, "/api/v1/admin/audit?cursor=@@@", &admin.token)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}
