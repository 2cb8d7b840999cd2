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

/// A new service secret continues the chain; `check` verifies each entry with the key that
/// signed it (earlier secrets in `COFFER_SECRET_OLD_KEYS`), and without the old one reports
/// "signed with another key", never tampering. `serve` warns when it cannot vouch for the
/// stored chain.
#[tokio::test]
async fn the_audit_chain_survives_a_change_of_secret() {
    let mut app = TestApp::spawn().await;
    let old_secret = app.secret();
    let admin = app.admin("rotator").await;
    app.audit(&admin.token).await; // flushes the queue
    app.terminate();

    let new_secret = crate::helpers::secret();
    let app2 = app
        .relaunch()
        .env("COFFER_SECRET_KEY", new_secret.clone())
        .spawn()
        .await;
    app2.eventually("the unknown-key warning", || {
        app2.logs().contains("signed with another key (fingerprint")
    })
    .await;
    let (token, _) = app2.login("rotator", PASSWORD).await;
    app2.audit(&token).await;

    // Only the new secret: the old entries are unverifiable, not altered.
    let (code, out) = app2.run_cli(&["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("signed with another key (fingerprint "),
        "{out}"
    );
    assert!(!out.contains("altered"), "{out}");
    // With the old secret named, every entry verifies; the chain's head, sealed with the old
    // secret, could not be verified by that server, so it stayed where it was, and says so.
    let (code, out) = crate::helpers::outcome(
        app2.cli(&["check"])
            .env("COFFER_SECRET_OLD_KEYS", &old_secret),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        !out.contains("altered") && !out.contains("cut short"),
        "{out}"
    );
    assert!(out.contains("without moving its head"), "{out}");
    // A server given the chain's newest key among its old ones says nothing, and its next
    // entry moves the head on: everything verifies.
    drop(app2);
    let app3 = app
        .relaunch()
        .env("COFFER_SECRET_KEY", old_secret)
        .env("COFFER_SECRET_OLD_KEYS", new_secret)
        .spawn()
        .await;
    app3.user("quiet").await;
    let (token, _) = app3.login("rotator", PASSWORD).await;
    app3.audit(&token).await; // flushes the queue
    assert!(
        !app3.logs().contains("signed with another key"),
        "{}",
        app3.logs()
    );
    let (code, out) = app3.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");
}
