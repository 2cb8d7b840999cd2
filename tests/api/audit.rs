//! The audit trail: security events recorded without secrets (in the trail and in the log), and
//! read page by page.

use crate::helpers::{PASSWORD, TestApp, each_once};

#[tokio::test]
async fn security_events_are_audited_without_secrets() {
    let app = TestApp::spawn().await;
    let admin = app.admin("auditor").await;
    let u = app.user("leo").await;
    app.try_login("leo", "Not-The-Pass-1").problem(401).await;
    let pair = app.refresh(&u.refresh).expect(200).await;
    app.refresh(&u.refresh).problem(401).await;
    let key = app.new_api_key(&admin.token, "k").await;
    let key_id = key["id"].as_str().unwrap();
    assert_eq!(
        app.delete_api_key(key_id).as_user(&admin).status().await,
        204
    );
    let (t, _) = app.login("leo", PASSWORD).await;
    assert_eq!(app.logout().bearer(&t).status().await, 204);

    let entries = app
        .audit_with(
            &admin.token,
            &[
                "auth.login_failed",
                "auth.refresh_reuse",
                "apikey.delete",
                "auth.logout",
            ],
        )
        .await;
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
        PASSWORD,
        "Not-The-Pass-1",
        &u.token,
        &u.refresh,
        &t,
        pair["refresh_token"].as_str().unwrap(),
        key["key"].as_str().unwrap(),
        &app.secret(),
    ];
    let trail = serde_json::to_string(&entries).unwrap();
    // Wait for the log to catch up with the last request, then scan all of it.
    app.eventually("the log captured the events", || {
        app.logs().contains("auth.logout")
    })
    .await;
    let logs = app.logs();
    for s in secrets {
        assert!(!trail.contains(s), "secret in audit trail");
        assert!(!logs.contains(s), "secret in logs");
    }
    assert!(!logs.contains("$argon2"), "hash in logs");
    assert!(!trail.contains("$argon2"), "hash in audit trail");
}

#[tokio::test]
async fn audit_pages_cover_everything_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin("pager").await;
    for i in 0..7 {
        app.try_login(&format!("ghost{i}"), "Wrong-1-Pass")
            .problem(401)
            .await;
    }
    let pages = app.pages("/api/v1/admin/audit", &admin.token, 3).await;
    assert!(pages.iter().all(|p| p.len() <= 3));
    let ids = each_once(&pages.concat(), "id");
    assert!(ids.len() >= 8);
}
