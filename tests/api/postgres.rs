//! The service with its metadata in PostgreSQL (`COFFER_DATABASE_URL`, a fresh database of the
//! test stack per test): the main flows end to end, two nodes sharing one database and one
//! storage root, and a database restart under traffic. Without the stack these pass after the
//! skip note.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, TestUser, problem, stack};

async fn link(app: &TestApp, u: &TestUser, file: &str, body: Value) -> String {
    let r = app
        .authed(
            Method::POST,
            &format!("/api/v1/files/{file}/links"),
            &u.token,
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn postgres_accounts_files_links_administration_and_check_work_end_to_end() {
    let Some(stack) =
        stack::require("postgres_accounts_files_links_administration_and_check_work_end_to_end")
    else {
        return;
    };
    let app = TestApp::builder().postgres(&stack).spawn().await;
    let admin = app.admin("root").await;
    let u = app.user("pgalice").await;
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &json!({"username": "PGALICE", "email": "x@example.com", "password": crate::helpers::PASSWORD}),
        )
        .await,
        409,
    )
    .await;
    let me: Value = app
        .authed(Method::GET, "/api/v1/users/me", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "pgalice");

    let bytes = png(5000);
    let f = app.stored(&u.token, "p.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    let pages = app.pages("/api/v1/files", &u.token, 10).await;
    assert_eq!(pages.concat().len(), 1);
    let r = app
        .download(&u.token, id, &[("range", "bytes=10-19")])
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[10..20]);

    let url = link(&app, &u, id, json!({"expires_in": 60, "max_downloads": 1})).await;
    let r = app.req(Method::GET, &url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..]);
    problem(app.req(Method::GET, &url).send().await.unwrap(), 410).await;

    let r = app
        .authed(Method::DELETE, &format!("/api/v1/files/{id}"), &u.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(app.download(&u.token, id, &[]).await, 404).await;
    problem(app.req(Method::GET, &url).send().await.unwrap(), 404).await;

    // An account with files goes with them; the last administrator stays.
    app.stored(&u.token, "q.png", png(100)).await;
    let r = app
        .authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", u.id),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(
        app.authed(Method::GET, "/api/v1/users/me", &u.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", admin.id),
            &admin.token,
        )
        .send()
        .await
        .unwrap(),
        409,
    )
    .await;
    assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());

    let events: Vec<String> = app
        .audit(&admin.token)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    for want in [
        "auth.register",
        "auth.login",
        "file.upload",
        "file.download",
        "link.create",
        "link.use",
        "file.delete",
        "admin.user_delete",
    ] {
        assert!(events.iter().any(|e| e == want), "{want} in {events:?}");
    }
    let out = app.cli(&["check"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("store consistent"), "{stdout}");

    // Backup: blobs and manifest, and the database is for pg_dump.
    app.stored(&admin.token, "kept.png", png(300)).await;
    let dest = tempfile::tempdir().unwrap();
    let out = app
        .cli(&["backup", dest.path().join("b").to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("pg_dump"), "{stdout}");
    let manifest = std::fs::read_to_string(dest.path().join("b/manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 2, "{manifest}");
    assert!(!dest.path().join("b/coffer.db").exists());
    assert_eq!(
        crate::helpers::files_under(&dest.path().join("b/blobs")).len(),
        1
    );
    // Nothing of the metadata went to the storage root.
    assert!(!app.root.join("coffer.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_nodes_on_one_database_share_accounts_and_link_budgets() {
    let Some(stack) =
        stack::require("postgres_two_nodes_on_one_database_share_accounts_and_link_budgets")
    else {
        return;
    };
    let a = TestApp::builder().postgres(&stack).spawn().await;
    // Node b: same database, same storage root (a shared volume), same secret.
    let b = a.relaunch().spawn().await;
    let u = a.user("shared").await;
    let (token_b, _) = b.login("shared", crate::helpers::PASSWORD).await;
    let f = b.stored(&token_b, "s.png", png(2000)).await;
    let id = f["id"].as_str().unwrap();
    assert_eq!(a.download(&u.token, id, &[]).await.status(), 200);

    for round in 0..8 {
        let url = link(&a, &u, id, json!({"expires_in": 60, "max_downloads": 1})).await;
        let (ra, rb) = tokio::join!(
            a.req(Method::GET, &url).send(),
            b.req(Method::GET, &url).send()
        );
        let mut statuses = [ra.unwrap().status(), rb.unwrap().status()];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::GONE],
            "round {round}: one download per budget across nodes"
        );
    }
    // Both nodes wrote to the trail: still one chain.
    let out = a.cli(&["check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_database_restart_answers_503_with_retry_after_and_the_node_recovers() {
    let Some(stack) = stack::require_exclusive(
        "postgres_a_database_restart_answers_503_with_retry_after_and_the_node_recovers",
    ) else {
        return;
    };
    let app = Arc::new(
        TestApp::builder()
            .postgres(&stack)
            .env("COFFER_DATABASE__CALL_TIMEOUT_SECS", "2")
            .spawn()
            .await,
    );
    let u = app.user("patient").await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (app, stop, token) = (app.clone(), stop.clone(), u.token.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = app
                    .authed(Method::GET, "/api/v1/users/me", &token)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("an answer, not a hang");
                let status = r.status();
                let retry_after = r.headers().get("retry-after").cloned();
                seen.push((status, retry_after, started.elapsed()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| stack.pg_restart());
    // The same process serves again by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app
            .authed(Method::GET, "/api/v1/users/me", &u.token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not back: {}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.req(Method::GET, "/readyz")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    let unavailable = seen.iter().filter(|(s, _, _)| *s == 503).count();
    for (status, retry_after, took) in &seen {
        assert!(
            *status == 200 || *status == 503,
            "{status} during the restart; log:\n{}",
            app.logs()
        );
        if *status == 503 {
            assert!(retry_after.is_some(), "503 without Retry-After");
        }
        assert!(*took < Duration::from_secs(5), "an answer took {took:?}");
    }
    assert!(
        unavailable > 0,
        "no request fell in the outage: {}",
        seen.len()
    );
    eprintln!(
        "during the restart: {} answers, {unavailable} of them 503",
        seen.len()
    );
}
