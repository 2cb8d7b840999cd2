//! Administration: the admin role (and what an admin's API key may not do), listing users page
//! by page, roles, and deleting accounts with everything they own, even while they are in use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::json;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, TestUser, each_once};

#[tokio::test]
async fn admin_routes_need_the_admin_role() {
    let app = TestApp::spawn().await;
    let u = app.user("kim").await;
    for path in ["/api/v1/admin/users", "/api/v1/admin/audit"] {
        app.get(path).problem(401).await;
        app.get(path).as_user(&u).problem(403).await;
    }
    app.delete_user(&u.id).as_user(&u).problem(403).await;
    let admin = app.admin("chief").await;
    let users = app.get("/api/v1/admin/users").as_user(&admin);
    assert_eq!(users.status().await, 200);
    // The last admin cannot be deleted.
    app.delete_user(&admin.id)
        .as_user(&admin)
        .problem(409)
        .await;
}

#[tokio::test]
async fn an_admins_api_key_has_no_admin_powers() {
    let app = TestApp::spawn().await;
    let admin = app.admin("boss").await;
    let u = app.user("mona").await;
    let theirs = app.stored(&u.token, "m.png", png(2000)).await;
    let key = app.new_api_key(&admin.token, "backend").await;
    let key = key["key"].as_str().unwrap();
    for (row, req) in [
        ("list users", app.get("/api/v1/admin/users")),
        ("read the audit trail", app.get("/api/v1/admin/audit")),
        ("promote a user", app.set_role(&u.id, "admin")),
        ("delete a user", app.delete_user(&u.id)),
    ] {
        let refusal = req.api_key(key).refusal().await;
        assert_eq!(refusal, (403, "forbidden", ""), "{row}");
    }
    // The key acts as its owner for files: another user's file is not found.
    let id = theirs["id"].as_str().unwrap();
    app.file(id).api_key(key).problem(404).await;
    // The admin's login still can.
    assert_eq!(app.file(id).as_user(&admin).status().await, 200);
}

#[tokio::test]
async fn user_pages_cover_everyone_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin("lister").await;
    for i in 0..6 {
        app.user(&format!("member{i}")).await;
    }
    let users = app
        .pages("/api/v1/admin/users", &admin.token, 2)
        .await
        .concat();
    assert!(users.iter().all(|u| u.as_object().unwrap().len() == 5));
    let names = each_once(&users, "username");
    assert_eq!(names.first().unwrap(), "member5", "newest first");
    assert_eq!(names.len(), 7);
}

#[tokio::test]
async fn an_admin_may_delete_another_admin_but_not_the_last() {
    let app = TestApp::spawn().await;
    let a = app.admin("first").await;
    let b = app.admin("second").await;
    assert_eq!(app.delete_user(&b.id).as_user(&a).status().await, 204);
    app.delete_user(&a.id).as_user(&a).problem(409).await;
    app.delete_user("not-a-uuid").as_user(&a).problem(404).await;
}

#[tokio::test]
async fn promotion_and_demotion_apply_to_live_tokens_at_once() {
    let app = TestApp::builder().spawn().await;
    let admin = app.admin("promoter").await;
    let u = app.user("climber").await;
    let list_users = || app.get("/api/v1/admin/users").as_user(&u);
    list_users().problem(403).await;
    // users/me, read before (so each node may hold the account in memory), tells the change too.
    let before = app.me().as_user(&u).expect(200).await;
    let me = || app.me().as_user(&u).expect(200);
    assert_eq!(me().await, before);
    let promoted = app
        .set_role(&u.id, "admin")
        .as_user(&admin)
        .expect(200)
        .await;
    assert_eq!(promoted["role"], "admin");
    // The same token, no new login: admin now.
    assert_eq!(list_users().status().await, 200);
    for _ in 0..2 {
        let now = me().await;
        assert_eq!(now["role"], "admin");
        assert_eq!(
            (
                &now["id"],
                &now["username"],
                &now["email"],
                &now["created_at"]
            ),
            (
                &before["id"],
                &before["username"],
                &before["email"],
                &before["created_at"]
            )
        );
    }
    app.set_role(&u.id, "user")
        .as_user(&admin)
        .expect(200)
        .await;
    list_users().problem(403).await;
    for _ in 0..2 {
        assert_eq!(me().await, before);
    }
    // The last admin cannot demote itself; unknown roles are 422.
    let demote_self = app.set_role(&admin.id, "user").as_user(&admin);
    demote_self.problem(409).await;
    app.set_role(&u.id, "root")
        .as_user(&admin)
        .problem(422)
        .await;
    let events = app.audit_events(&admin.token).await;
    assert_eq!(events.iter().filter(|e| *e == "admin.user_role").count(), 2);
}

#[tokio::test]
async fn admins_see_any_file_and_delete_users_with_everything() {
    let app = TestApp::spawn().await;
    let admin = app.admin("root").await;
    let u = app.user("leaving").await;
    let keep = app.user("staying").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let f = app.stored(&u.token, &format!("l{i}.png"), png(200)).await;
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    app.stored(&keep.token, "k.png", png(200)).await;
    let link = app
        .new_link(&u.token, &ids[0], &json!({"expires_in": 600}))
        .await;
    assert_eq!(app.file(&ids[0]).as_user(&admin).status().await, 200);
    let users = app
        .get("/api/v1/admin/users?limit=2")
        .as_user(&admin)
        .expect(200)
        .await;
    assert_eq!(users["items"].as_array().unwrap().len(), 2);
    assert!(users["next_cursor"].is_string());
    assert!(!users.to_string().contains("argon2"));

    assert_eq!(app.delete_user(&u.id).as_user(&admin).status().await, 204);
    assert_eq!(
        app.blob_files().len(),
        1,
        "only the other user's blob is left"
    );
    app.get(link["url"].as_str().unwrap()).problem(404).await;
    for id in &ids {
        app.file(id).as_user(&admin).problem(404).await;
    }
    app.delete_user(&u.id).as_user(&admin).problem(404).await;
    let events = app.audit_events(&admin.token).await;
    assert!(events.iter().any(|e| e == "admin.user_delete"));
    assert!(events.iter().any(|e| e == "file.upload"));
}

/// How a user being deleted authenticates its uploads.
#[derive(Clone)]
enum Cred {
    Token(String),
    Key(String),
}

/// One upload attempt, timed from the test's start.
#[derive(Debug)]
struct Attempt {
    sent: Duration,
    answered: Duration,
    status: u16,
}

/// Upload one-byte text files back to back until `stop` is set.
async fn keep_uploading(app: &TestApp, cred: Cred, stop: &AtomicBool, t0: Instant) -> Vec<Attempt> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = app
            .req(Method::POST, "/api/v1/files")
            .query(&[("filename", format!("f{}.txt", out.len()))])
            .body("x");
        let req = match &cred {
            Cred::Token(t) => req.bearer_auth(t),
            Cred::Key(k) => req.header("x-api-key", k),
        };
        let sent = t0.elapsed();
        // 0: the connection failed (never expected).
        let status = req.send().await.map_or(0, |r| r.status().as_u16());
        out.push(Attempt {
            sent,
            answered: t0.elapsed(),
            status,
        });
        if status != 201 {
            // Refused: keep trying, without hammering the server.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}

/// `n` small files of `u`, uploaded a few at a time.
async fn seed_files(app: &TestApp, u: &TestUser, n: usize) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let f = app
                .stored(&u.token, &format!("seed{i}.txt"), b"seed".to_vec())
                .await;
            f["id"].as_str().unwrap().to_owned()
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// What is left of a user in the database (rows per table) and in the storage root (files
/// under `blobs/` and `tmp/`, blobs queued for deletion); empty when the account is gone
/// without a trace.
fn leftovers(app: &TestApp, user_id: &str) -> Vec<String> {
    let mut left = Vec::new();
    for (what, sql) in [
        ("users", "SELECT COUNT(*) FROM users WHERE id = '{id}'"),
        (
            "files",
            "SELECT COUNT(*) FROM files WHERE owner_id = '{id}'",
        ),
        (
            "sessions",
            "SELECT COUNT(*) FROM sessions WHERE user_id = '{id}'",
        ),
        (
            "api_keys",
            "SELECT COUNT(*) FROM api_keys WHERE user_id = '{id}'",
        ),
        (
            "links",
            "SELECT COUNT(*) FROM links l LEFT JOIN files f ON f.id = l.file_id
             WHERE f.id IS NULL OR f.owner_id = '{id}'",
        ),
    ] {
        let n = app.sql_number(&sql.replace("{id}", user_id));
        if n > 0 {
            left.push(format!("{n} rows in {what}"));
        }
    }
    let queued = app.sql_number("SELECT COUNT(*) FROM blob_deletions");
    if queued > 0 {
        left.push(format!("{queued} blobs queued for deletion"));
    }
    for (dir, files) in [("blobs", app.blob_files()), ("tmp", app.temp_files())] {
        if !files.is_empty() {
            left.push(format!("{} files under {dir}/", files.len()));
        }
    }
    left
}

/// Wait (bounded) until nothing of the user is left; fail naming what is.
async fn assert_nothing_left(app: &TestApp, user_id: &str, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(app, user_id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_being_deleted_can_upload_nothing_once_the_account_is_locked() {
    let app = TestApp::spawn().await;
    let admin = app.admin("remover").await;
    let victim = app.user("leaver").await;
    let key = app.new_api_key(&victim.token, "uploader").await;
    let key = key["key"].as_str().unwrap().to_owned();
    // Enough files that removing them takes a good while.
    seed_files(&app, &victim, 300).await;

    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let creds = [
        Cred::Token(victim.token.clone()),
        Cred::Token(victim.token.clone()),
        Cred::Key(key.clone()),
        Cred::Key(key),
    ];
    let uploads = futures_util::future::join_all(
        creds
            .into_iter()
            .map(|c| keep_uploading(&app, c, &stop, t0)),
    );
    let delete = async {
        // The victim is uploading already when the admin acts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let issued = t0.elapsed();
        let r = app.delete_user(&victim.id).as_user(&admin).send().await;
        let done = t0.elapsed();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        // Let the victim try a little longer after the deletion.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        (issued, done, status, body)
    };
    let (attempts, (issued, done, status, body)) = tokio::join!(uploads, delete);
    let attempts: Vec<Attempt> = attempts.into_iter().flatten().collect();

    assert!(
        // 0.75 s to 7 s on the 2-core build machine; the first refusal comes within ~20 ms.
        done - issued >= Duration::from_millis(150),
        "the deletion took only {:?}: too quick to race; seed more files",
        done - issued
    );
    let unexpected: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| ![201, 401, 404].contains(&a.status))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    // The lock is the first thing a deletion does: the victim's credentials are dead from the
    // first refusal on, which comes early in the deletion, not at its end.
    let first_refusal = attempts
        .iter()
        .filter(|a| a.status != 201)
        .map(|a| a.answered)
        .min()
        .expect("the victim was refused at some point");
    let succeeded_meanwhile = attempts
        .iter()
        .filter(|a| a.status == 201 && a.sent >= issued)
        .count();
    assert!(
        first_refusal < issued + (done - issued) / 2,
        "the victim was first refused {:?} after the DELETE was issued, which took {:?}; \
         {succeeded_meanwhile} uploads sent meanwhile succeeded",
        first_refusal - issued,
        done - issued
    );
    let late: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.status == 201 && a.sent > first_refusal)
        .collect();
    assert!(
        late.is_empty(),
        "uploads succeeded after the lock: {late:?}"
    );
    assert_eq!(status, 204, "{body}");
    eprintln!(
        "deletion took {:?}; first refusal {:?} after it was issued; {} uploads tried, \
         {succeeded_meanwhile} sent after the DELETE was issued succeeded (they beat the lock)",
        done - issued,
        first_refusal - issued,
        attempts.len()
    );
    assert_nothing_left(&app, &victim.id, "after the deletion").await;
}

#[tokio::test]
async fn deleting_a_user_who_keeps_uploading_answers_204_and_leaves_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin("reaper").await;
    // Light and heavy uploaders: a few files slipping in after the last pass (the final
    // delete failed on the foreign key: 500), or so many that passes never caught up (408).
    for (run, loops) in [2, 3, 4, 6].into_iter().enumerate() {
        let victim = app.user(&format!("busy{run}")).await;
        let key = app.new_api_key(&victim.token, "uploader").await;
        let key = key["key"].as_str().unwrap().to_owned();
        let seeded = seed_files(&app, &victim, 10).await;
        app.new_link(&victim.token, &seeded[0], &json!({"expires_in": 3600}))
            .await;

        let t0 = Instant::now();
        let stop = AtomicBool::new(false);
        let uploads = futures_util::future::join_all((0..loops).map(|i| {
            let cred = if i % 3 == 2 {
                Cred::Key(key.clone())
            } else {
                Cred::Token(victim.token.clone())
            };
            keep_uploading(&app, cred, &stop, t0)
        }));
        let delete = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = app.delete_user(&victim.id).as_user(&admin).send().await;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.store(true, Ordering::Relaxed);
            (status, body)
        };
        let (attempts, (status, body)) = tokio::join!(uploads, delete);
        assert_eq!(status, 204, "run {run}: {body}");
        let unexpected: Vec<Attempt> = attempts
            .into_iter()
            .flatten()
            .filter(|a| ![201, 401, 404].contains(&a.status))
            .collect();
        assert!(unexpected.is_empty(), "run {run}: {unexpected:?}");
        assert_nothing_left(&app, &victim.id, &format!("run {run}")).await;
    }
}
