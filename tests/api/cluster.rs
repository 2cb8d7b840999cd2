//! Several nodes: two coffer processes on one PostgreSQL database and one S3 bucket prefix
//! (the test stack's Garage), each with its own storage root, as two machines would be.
//! Every rule that must hold across nodes, black-box: revocations reach the other node at
//! once, one-use links and quotas are exact when raced through both, the sweeper's work is
//! done once, login throttling is one budget, a node killed mid-upload leaves nothing once the
//! other has swept, and the nodes ride out a PostgreSQL restart and a Garage node going away.
//!
//! Tests that stop or restart a backend take the stack exclusively (`require_exclusive`: a
//! file lock in the stack's directory keeps every other stack test, of this process or
//! another, out meanwhile) and act only through that directory's `scripts/stack`; whatever
//! they stopped is started again when the test ends, even if it failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::fixtures::png;
use crate::helpers::raw::{RawConn, upload_head};
use crate::helpers::s3::{Gate, Mode, S3Env, within};
use crate::helpers::stack::{Stack, TestDb};
use crate::helpers::{TestApp, TestAppBuilder, TestUser, assert_problem, stack};

/// One node of a cluster on `db` and `prefix`, through Garage node `garage` (1-based).
fn node(stack: &Stack, db: &Arc<TestDb>, prefix: &str, garage: usize) -> TestAppBuilder {
    let mut b = TestApp::builder().database(db.clone());
    for (k, v) in stack.server_env(db, prefix) {
        // The clamd scanner is not this branch's concern.
        if k != "COFFER_SCAN__CLAMD" && k != "COFFER_DATABASE_URL" {
            b = b.env(&k, v);
        }
    }
    b.env("COFFER_S3__ENDPOINT", stack.s3_endpoint_of(garage))
        // Long enough that only a revocation can end an entry within a test.
        .env("COFFER_AUTH__PRINCIPAL_CACHE_SECS", "60")
}

/// Two nodes with the same secret, database and bucket prefix, each with `env` on top.
async fn two_nodes(stack: &Stack, env: &[(&str, &str)]) -> (TestApp, TestApp, String) {
    let db = Arc::new(stack.fresh_database());
    let prefix = stack.fresh_prefix();
    let mut a = node(stack, &db, &prefix, 1);
    for (k, v) in env {
        a = a.env(k, *v);
    }
    let a = a.spawn().await;
    let mut b = node(stack, &db, &prefix, 2).env("COFFER_SECRET_KEY", a.secret());
    for (k, v) in env {
        b = b.env(k, *v);
    }
    (a, b.spawn().await, prefix)
}

async fn me(app: &TestApp, token: &str) -> u16 {
    app.me().bearer(token).status().await
}

/// A gate in front of the database, and the database URL that goes through it.
async fn gated_database(db: &TestDb) -> (Gate, String) {
    let (head, tail) = db.url.rsplit_once('@').expect("user@host in the URL");
    let (hostport, name) = tail.split_once('/').expect("/database in the URL");
    let gate = Gate::start(hostport).await;
    let gated = format!(
        "{head}@{}/{name}",
        gate.endpoint.trim_start_matches("http://")
    );
    (gate, gated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_revocation_on_one_node_ends_the_credential_on_the_other_at_once() {
    let Some(stack) =
        stack::require("cluster_a_revocation_on_one_node_ends_the_credential_on_the_other_at_once")
    else {
        return;
    };
    let (a, b, _) = two_nodes(&stack, &[]).await;
    let u = a.user("roaming").await;
    for round in 0..10 {
        let (token, _) = a.login("roaming", crate::helpers::PASSWORD).await;
        // Both nodes have it cached now.
        assert_eq!(me(&a, &token).await, 200);
        assert_eq!(me(&b, &token).await, 200);
        assert_eq!(me(&b, &token).await, 200);
        assert_eq!(a.logout().bearer(&token).status().await, 204);
        assert_eq!(
            me(&b, &token).await,
            401,
            "round {round}: the very next request"
        );
        assert_eq!(me(&a, &token).await, 401);
    }
    for round in 0..10 {
        let key = a.new_api_key(&u.token, &format!("k{round}")).await;
        let secret = key["key"].as_str().unwrap();
        assert_eq!(b.me().api_key(secret).status().await, 200);
        assert_eq!(b.me().api_key(secret).status().await, 200);
        let id = key["id"].as_str().unwrap();
        assert_eq!(a.delete_api_key(id).bearer(&u.token).status().await, 204);
        assert_eq!(
            b.me().api_key(secret).status().await,
            401,
            "round {round}: the very next request"
        );
    }
    // Refresh-token reuse detected on B ends the login on A at once (its rotated token too).
    for round in 0..5 {
        let (token, refresh) = a.login("roaming", crate::helpers::PASSWORD).await;
        let rotated = a.refresh(&refresh).expect(200).await;
        let new_token = rotated["access_token"].as_str().unwrap().to_owned();
        for t in [&token, &new_token] {
            assert_eq!(me(&a, t).await, 200);
            assert_eq!(me(&a, t).await, 200);
        }
        assert_eq!(
            b.refresh(&refresh).status().await,
            401,
            "round {round}: reuse"
        );
        for t in [&token, &new_token] {
            assert_eq!(me(&a, t).await, 401, "round {round}: the very next request");
        }
    }
    // An account deleted on B: its token and key die on A at once.
    let admin = b.admin("remover").await;
    let doomed = b.user("doomed").await;
    let key = b.new_api_key(&doomed.token, "doomed-key").await;
    let secret = key["key"].as_str().unwrap();
    assert_eq!(me(&a, &doomed.token).await, 200);
    assert_eq!(a.me().api_key(secret).status().await, 200);
    assert_eq!(
        b.delete_user(&doomed.id)
            .bearer(&admin.token)
            .status()
            .await,
        204
    );
    assert_eq!(
        me(&a, &doomed.token).await,
        401,
        "deleted: the very next request"
    );
    assert_eq!(a.me().api_key(secret).status().await, 401);
    // A demotion on B reaches A's cache: the admin's token stops working as an admin there.
    let admin = a.admin("boss").await;
    let other = a.admin("boss2").await;
    assert_eq!(
        a.get("/api/v1/admin/users")
            .bearer(&admin.token)
            .status()
            .await,
        200
    );
    assert_eq!(
        b.set_role(&admin.id, "user")
            .bearer(&other.token)
            .status()
            .await,
        200
    );
    assert_ne!(
        a.get("/api/v1/admin/users")
            .bearer(&admin.token)
            .status()
            .await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_one_use_link_raced_through_both_nodes_is_served_once() {
    let Some(stack) =
        stack::require("cluster_a_one_use_link_raced_through_both_nodes_is_served_once")
    else {
        return;
    };
    let (a, b, _) = two_nodes(&stack, &[]).await;
    let u = a.user("sharer").await;
    let bytes = png(3000);
    let f = b.stored(&u.token, "s.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    for round in 0..8 {
        let link = a
            .new_link(&u.token, id, &json!({"expires_in": 60, "max_downloads": 1}))
            .await;
        let url = link["url"].as_str().unwrap();
        let (ra, rb) = tokio::join!(a.get(url).send(), b.get(url).send());
        let (sa, sb) = (ra.status(), rb.status());
        let mut statuses = [sa, sb];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::GONE],
            "round {round}: one download across nodes"
        );
        let winner = if sa == StatusCode::OK { ra } else { rb };
        assert_eq!(winner.bytes().await.unwrap().as_ref(), &bytes[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_uploads_raced_through_both_nodes_never_exceed_the_quota() {
    let Some(stack) =
        stack::require("cluster_uploads_raced_through_both_nodes_never_exceed_the_quota")
    else {
        return;
    };
    let (a, b, _) = two_nodes(&stack, &[("COFFER_LIMITS__USER_QUOTA_BYTES", "100000")]).await;
    let u = a.user("hoarder").await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    // Ten uploads of 30 000 bytes, five through each node at once: three fit.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            let token = u.token.clone();
            tokio::spawn(async move {
                app.upload(&token, &format!("q{i}.png"), png(30_000))
                    .await
                    .status()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap().as_u16() {
            201 => created += 1,
            413 => {}
            other => panic!("upload answered {other}"),
        }
    }
    assert_eq!(created, 3, "stored + reserved stays within the quota");
    let listed = a.files().as_user(&u).expect(200).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    // Nothing stays reserved (the refused ones released theirs): what is left can be used.
    assert_eq!(
        b.upload(&u.token, "rest.png", png(10_000)).await.status(),
        201,
        "nothing stays reserved"
    );
    assert_eq!(
        b.upload(&u.token, "over.png", png(1)).await.status(),
        413,
        "full"
    );
}

/// Files that expire in a second, uploaded through `app`.
async fn expiring(app: &TestApp, u: &TestUser, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let f = app
            .post("/api/v1/files")
            .bearer(&u.token)
            .query(&[
                ("filename", format!("e{i}.png")),
                ("expires_in", "1".into()),
            ])
            .body(png(200))
            .expect(201)
            .await;
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_the_sweepers_work_is_done_once() {
    let Some(stack) = stack::require("cluster_the_sweepers_work_is_done_once") else {
        return;
    };
    let s3 = S3Env::of(&stack);
    let (a, b, prefix) = two_nodes(&stack, &[("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")]).await;
    let admin = a.admin("root").await;
    let mut ids = expiring(&a, &admin, 6).await;
    ids.extend(expiring(&b, &admin, 6).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let expired: Vec<Value> = a
            .audit(&admin.token)
            .await
            .into_iter()
            .filter(|e| e["event"] == "file.expire")
            .collect();
        if expired.len() >= ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} expired",
            expired.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another sweep or two on both nodes, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired: Vec<String> = a
        .audit(&admin.token)
        .await
        .into_iter()
        .filter(|e| e["event"] == "file.expire")
        .map(|e| e["subject_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = expired.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        expired.len(),
        "each expiry audited once: {expired:?}"
    );
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sorted, want);
    // One node held the lease and swept; the other never did.
    let swept = [&a, &b]
        .iter()
        .filter(|n| n.logs().contains("retention sweep"))
        .count();
    assert_eq!(swept, 1, "nodes that swept");
    let blobs: Vec<String> = s3
        .keys(&prefix)
        .await
        .into_iter()
        .filter(|k| k.contains("/blobs/"))
        .collect();
    assert!(blobs.is_empty(), "expired blobs left: {blobs:?}");
    assert_eq!(a.run_cli(&["check"]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_login_throttling_and_the_login_budget_are_shared() {
    let Some(stack) = stack::require("cluster_login_throttling_and_the_login_budget_are_shared")
    else {
        return;
    };
    // Three failures in all, from one address, delay the next attempt on either node.
    let (a, b, _) = two_nodes(&stack, &[("COFFER_AUTH__LOGIN_FAILURES_BEFORE_DELAY", "3")]).await;
    a.user("guarded").await;
    assert_eq!(a.try_login("guarded", "wrong-1").status().await, 401);
    assert_eq!(a.try_login("guarded", "wrong-2").status().await, 401);
    assert_eq!(b.try_login("guarded", "wrong-3").status().await, 401);
    for app in [&a, &b] {
        let r = app
            .try_login("guarded", crate::helpers::PASSWORD)
            .send()
            .await;
        assert_eq!(r.status(), 429, "throttled on every node");
        assert!(r.headers().get("retry-after").is_some());
    }
    drop((a, b));

    // login_per_minute is per address for the whole service.
    let (a, b, _) = two_nodes(&stack, &[("COFFER_RATE_LIMIT__LOGIN_PER_MINUTE", "4")]).await;
    for i in 0..4 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            app.try_login("nobody", "x").status().await,
            401,
            "attempt {i}"
        );
    }
    for app in [&a, &b] {
        let r = app.try_login("nobody", "x").send().await;
        assert_eq!(r.status(), 429, "the budget is spent on both nodes");
        assert!(r.headers().get("retry-after").is_some());
    }
}

/// Rows in `upload_reservations`.
fn reservations(db: &TestDb) -> u64 {
    db.psql("SELECT count(*) FROM upload_reservations")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_node_killed_mid_upload_leaves_no_row_object_or_quota_after_the_sweep() {
    let test = "cluster_a_node_killed_mid_upload_leaves_no_row_object_or_quota_after_the_sweep";
    let Some(stack) = stack::require(test) else {
        return;
    };
    let s3 = S3Env::of(&stack);
    let quota = 30_000_000u64;
    let env = [
        ("COFFER_LIMITS__USER_QUOTA_BYTES", "30000000"),
        ("COFFER_LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "2"),
        ("COFFER_UPLOADS__ABANDONED_AFTER_SECS", "4"),
        ("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1"),
    ];
    let (mut a, b, prefix) = two_nodes(&stack, &env).await;
    let db = a.database.clone().unwrap();
    let u = a.user("crasher").await;
    let kept = b.stored(&u.token, "kept.png", png(4000)).await;
    let kept = kept["id"].as_str().unwrap().to_owned();

    // Through A: more than two parts of a multipart upload, then A dies.
    let mut c = RawConn::open(a.addr).await;
    c.send(&upload_head(&u.token, "inflight.png", 25_000_000, None))
        .await;
    c.send(&png(12 * 1024 * 1024)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.psql("SELECT count(*) FROM upload_reservations WHERE staging_id IS NOT NULL") != "1" {
        assert!(Instant::now() < deadline, "the upload never staged a part");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !s3.multipart_uploads(&prefix).unwrap_or_default().is_empty(),
        "a multipart upload is open"
    );
    a.expect_leftovers();
    a.kill9();
    drop(c);

    // B goes on serving meanwhile.
    assert_eq!(me(&b, &u.token).await, 200);
    assert_eq!(b.content_of(&u.token, &kept).await, png(4000));

    // Then its sweeper cleans up after A: no reservation, no open multipart upload.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let open = s3.multipart_uploads(&prefix).unwrap_or_default();
        if reservations(&db) == 0 && open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned up: {} reservations, multipart {open:?}; B's log:\n{}",
            reservations(&db),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rows = db.psql("SELECT count(*) FROM files");
    assert_eq!(rows, "1", "only the kept file's row");
    let blobs: Vec<String> = s3
        .keys(&prefix)
        .await
        .into_iter()
        .filter(|k| k.contains("/blobs/"))
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert!(blobs[0].contains(&kept));
    // The whole quota but the kept file is free again.
    let rest = usize::try_from(quota).unwrap() - 4000;
    assert_eq!(
        b.upload(&u.token, "rest.png", png(rest)).await.status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_the_nodes_ride_out_a_postgres_restart_without_one_of_their_own() {
    let Some(stack) = stack::require_exclusive(
        "cluster_the_nodes_ride_out_a_postgres_restart_without_one_of_their_own",
    ) else {
        return;
    };
    let (a, b, _) = two_nodes(&stack, &[("COFFER_DATABASE__CALL_TIMEOUT_SECS", "2")]).await;
    let u = a.user("patient").await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // /readyz of both nodes, polled through the restart.
    let probes: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|app| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let s = app.get("/readyz").send().await.status().as_u16();
                    if seen.last() != Some(&s) {
                        seen.push(s);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| stack.pg_restart());
    for app in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while me(app, &u.token).await != 200 {
            assert!(Instant::now() < deadline, "not back; log:\n{}", app.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (name, p) in ["a", "b"].into_iter().zip(probes) {
        let seen = p.await.unwrap();
        assert!(
            seen.contains(&503),
            "node {name} was never unready: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&200), "node {name} ready again: {seen:?}");
        assert!(
            seen.iter().all(|s| *s == 200 || *s == 503),
            "node {name}: {seen:?}"
        );
    }
    // The revocation feed is back too: a logout on A ends the token on B at once.
    let (token, _) = a.login("patient", crate::helpers::PASSWORD).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.logs().contains("revocation listener is back") {
        assert!(Instant::now() < deadline, "B's listener is not back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(me(&b, &token).await, 200);
    assert_eq!(me(&b, &token).await, 200);
    assert_eq!(a.logout().bearer(&token).status().await, 204);
    assert_eq!(me(&b, &token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_uploads_and_downloads_go_on_with_a_garage_node_down() {
    let Some(stack) =
        stack::require_exclusive("cluster_uploads_and_downloads_go_on_with_a_garage_node_down")
    else {
        return;
    };
    // A talks to Garage node 1, B to node 2; node 3 goes away.
    let (a, b, _) = two_nodes(&stack, &[]).await;
    let u = a.user("steady").await;
    let before = png(6 * 1024 * 1024);
    let f = a.stored(&u.token, "before.png", before.clone()).await;
    let before_id = f["id"].as_str().unwrap().to_owned();

    tokio::task::block_in_place(|| stack.garage_stop(3));
    let during = png(7 * 1024 * 1024 + 17);
    let f = b.stored(&u.token, "during.png", during.clone()).await;
    let during_id = f["id"].as_str().unwrap().to_owned();
    let small = a.stored(&u.token, "small.png", png(999)).await;
    assert_eq!(a.content_of(&u.token, &during_id).await, during);
    assert_eq!(b.content_of(&u.token, &before_id).await, before);
    assert_eq!(
        b.content_of(&u.token, small["id"].as_str().unwrap()).await,
        png(999)
    );
    assert_eq!(a.get("/readyz").status().await, 200);
    assert_eq!(b.get("/readyz").status().await, 200);

    tokio::task::block_in_place(|| stack.garage_start(3));
    assert_eq!(a.content_of(&u.token, &during_id).await, during);
}

/// A 503 problem (`service-unavailable`) that says when to retry.
async fn unavailable(r: reqwest::Response, what: &str) {
    let retry = r.headers().get("retry-after").cloned();
    let body = assert_problem(r, 503, "service-unavailable").await;
    assert!(retry.is_some(), "{what}: no Retry-After on {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_database_down_or_silent_is_503_with_retry_after_on_both_nodes_until_it_is_back()
{
    let Some(stack) = stack::require(
        "cluster_a_database_down_or_silent_is_503_with_retry_after_on_both_nodes_until_it_is_back",
    ) else {
        return;
    };
    // Both nodes reach PostgreSQL through one gate: down (connections refused and cut) or
    // silent (a network that drops everything), the rest of the stack untouched.
    let db = Arc::new(stack.fresh_database());
    let (gate, gated) = gated_database(&db).await;
    let prefix = stack.fresh_prefix();
    let env = [
        ("COFFER_DATABASE__CALL_TIMEOUT_SECS", "2"),
        ("COFFER_SERVER__REQUEST_TIMEOUT_SECS", "10"),
    ];
    let mut a = node(&stack, &db, &prefix, 1).env("COFFER_DATABASE_URL", gated.clone());
    for (k, v) in env {
        a = a.env(k, v);
    }
    let a = a.spawn().await;
    let mut b = node(&stack, &db, &prefix, 2)
        .env("COFFER_DATABASE_URL", gated.clone())
        .env("COFFER_SECRET_KEY", a.secret());
    for (k, v) in env {
        b = b.env(k, v);
    }
    let b = b.spawn().await;
    let u = a.user("weathered").await;
    let f = a.stored(&u.token, "kept.png", png(5000)).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let link = a.new_link(&u.token, &id, &json!({"expires_in": 600})).await;
    let url = link["url"].as_str().unwrap().to_owned();
    // Cached on both: the outage must not be hidden behind the cache for long either.
    for app in [&a, &b] {
        assert_eq!(me(app, &u.token).await, 200);
    }

    // No answer may take longer than a database call's deadline and a little.
    let limit = Duration::from_secs(5);
    for mode in [Mode::Refuse, Mode::Silent] {
        gate.set(mode);
        for (name, app) in [("a", &a), ("b", &b)] {
            within(Duration::from_secs(15), "unready", || async {
                app.get("/readyz").status().await == 503
            })
            .await;
            // The credential cache stops serving once the node knows its revocation feed is
            // gone (at once when refused, after a missed heartbeat when silent).
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let t = Instant::now();
                let r = app.me().bearer(&u.token).send().await;
                assert!(
                    t.elapsed() < limit,
                    "{mode:?} {name}: me took {:?}",
                    t.elapsed()
                );
                if r.status() != 200 {
                    unavailable(r, "me").await;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{mode:?} {name}: still served from memory"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let calls: [(&str, crate::helpers::request::Req); 4] = [
                (
                    "login",
                    app.try_login("weathered", crate::helpers::PASSWORD),
                ),
                (
                    "upload",
                    app.post("/api/v1/files")
                        .bearer(&u.token)
                        .query(&[("filename", "new.png")])
                        .body(png(3000)),
                ),
                ("download", app.content(&id).bearer(&u.token)),
                ("link", app.get(&url)),
            ];
            for (what, call) in calls {
                let t = Instant::now();
                let r = call.send().await;
                assert!(
                    t.elapsed() < limit,
                    "{mode:?} {name}: {what} took {:?}",
                    t.elapsed()
                );
                unavailable(r, what).await;
            }
        }
    }

    // Back: both nodes serve again without a restart, the revocation feed included.
    gate.set(Mode::Open);
    for app in [&a, &b] {
        within(Duration::from_secs(20), "ready again", || async {
            app.get("/readyz").status().await == 200
        })
        .await;
        within(Duration::from_secs(20), "serving again", || async {
            me(app, &u.token).await == 200
        })
        .await;
    }
    assert_eq!(a.content_of(&u.token, &id).await, png(5000));
    assert_eq!(b.get(&url).status().await, 200);
    let logs = format!("{}{}", a.logs(), b.logs());
    assert!(!logs.contains("internal error"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_an_object_store_without_quorum_is_503_with_retry_after_on_both_nodes_until_it_is_back()
 {
    let Some(stack) = stack::require_exclusive(
        "cluster_an_object_store_without_quorum_is_503_with_retry_after_on_both_nodes_until_it_is_back",
    ) else {
        return;
    };
    // A talks to Garage node 1, B to node 2. Nodes 2 and 3 go away: B's endpoint refuses,
    // A's answers but cannot reach a quorum (replication 3, consistent mode).
    let (a, b, _) = two_nodes(&stack, &[]).await;
    let u = a.user("outaged").await;
    let kept = png(4000);
    let f = a.stored(&u.token, "kept.png", kept.clone()).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let big = png(6 * 1024 * 1024);

    tokio::task::block_in_place(|| {
        stack.garage_stop(2);
        stack.garage_stop(3);
    });
    // Within a call's deadline (5 s) and a little, never the request timeout.
    let limit = Duration::from_secs(9);
    for (name, app) in [("a", &a), ("b", &b)] {
        within(Duration::from_secs(20), "unready", || async {
            app.get("/readyz").status().await == 503
        })
        .await;
        // What needs no blob goes on.
        assert_eq!(me(app, &u.token).await, 200, "{name}");
        assert_eq!(app.files().as_user(&u).status().await, 200, "{name}");
        let calls = [
            ("download", app.content(&id).bearer(&u.token)),
            (
                "upload",
                app.post("/api/v1/files")
                    .bearer(&u.token)
                    .query(&[("filename", "new.png")])
                    .body(png(3000)),
            ),
            (
                "large upload",
                app.post("/api/v1/files")
                    .bearer(&u.token)
                    .query(&[("filename", "big.png")])
                    .body(big.clone()),
            ),
        ];
        for (what, call) in calls {
            let t = Instant::now();
            let r = call.send().await;
            assert!(t.elapsed() < limit, "{name}: {what} took {:?}", t.elapsed());
            unavailable(r, what).await;
        }
    }

    tokio::task::block_in_place(|| {
        stack.garage_start(2);
        stack.garage_start(3);
    });
    for app in [&a, &b] {
        within(Duration::from_secs(20), "ready again", || async {
            app.get("/readyz").status().await == 200
        })
        .await;
        assert_eq!(app.content_of(&u.token, &id).await, kept);
        app.stored(&u.token, "after.png", png(5000)).await;
    }
    // Nothing of the refused uploads was kept.
    let listed = a.files().as_user(&u).expect(200).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    let logs = format!("{}{}", a.logs(), b.logs());
    assert!(!logs.contains("internal error"), "{logs}");
}

/// A small file deleted through one node is gone from the other node's memory at once: the
/// deletion is announced like a revocation. Blobs on one local disk both nodes share (the
/// small-file cache keeps only files of the local store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_file_deleted_on_one_node_is_gone_from_the_others_memory_at_once() {
    let Some(stack) =
        stack::require("cluster_a_file_deleted_on_one_node_is_gone_from_the_others_memory_at_once")
    else {
        return;
    };
    let db = Arc::new(stack.fresh_database());
    let disk = tempfile::tempdir().unwrap();
    let node = || {
        TestApp::builder()
            .database(db.clone())
            .root(disk.path())
            .env("COFFER_AUTH__PRINCIPAL_CACHE_SECS", "60")
    };
    let a = node().spawn().await;
    let b = node().env("COFFER_SECRET_KEY", a.secret()).spawn().await;
    let u = a.user("sharer").await;
    let admin = a.admin("sweeper_of_users").await;
    let body = png(4096);
    for round in 0..10 {
        let (by, other) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let f = by.stored(&u.token, "shared.png", body.clone()).await;
        let id = f["id"].as_str().unwrap();
        // Both nodes hold it in memory now.
        for node in [&a, &b, &a, &b] {
            let r = node.download(&u.token, id, &[]).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
        }
        assert_eq!(by.delete_file(id).bearer(&u.token).status().await, 204);
        assert_eq!(
            other.download(&u.token, id, &[]).await.status(),
            404,
            "round {round}: the very next download on the other node"
        );
        assert_eq!(by.download(&u.token, id, &[]).await.status(), 404);
    }
    // An account deleted through A: its files are gone from B's memory at once.
    let f = b.stored(&u.token, "last.png", body.clone()).await;
    let id = f["id"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(b.download(&admin.token, id, &[]).await.status(), 200);
    }
    assert_eq!(
        a.delete_user(&u.id).bearer(&admin.token).status().await,
        204
    );
    assert_eq!(b.download(&admin.token, id, &[]).await.status(), 404);
}

/// A node whose connection to the database goes silent (its listener hears nothing more, yet
/// PostgreSQL still counts it) serves no revoked credential from memory once the revoking
/// request on another node has answered: its heartbeat notices the silence before the
/// revoking node stops waiting for its confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_logout_holds_at_once_on_a_node_whose_database_went_silent() {
    let Some(stack) =
        stack::require("cluster_a_logout_holds_at_once_on_a_node_whose_database_went_silent")
    else {
        return;
    };
    let db = Arc::new(stack.fresh_database());
    let (gate, gated) = gated_database(&db).await;
    let prefix = stack.fresh_prefix();
    let a = node(&stack, &db, &prefix, 1).spawn().await;
    let b = node(&stack, &db, &prefix, 2)
        .env("COFFER_DATABASE_URL", gated)
        .env("COFFER_DATABASE__CALL_TIMEOUT_SECS", "2")
        .env("COFFER_SECRET_KEY", a.secret())
        .spawn()
        .await;
    let u = a.user("partitioned").await;
    // Cached on b.
    assert_eq!(me(&b, &u.token).await, 200);
    assert_eq!(me(&b, &u.token).await, 200);
    gate.set(Mode::Silent);
    assert_eq!(a.logout().bearer(&u.token).status().await, 204);
    // The logout has answered: b may fail (503: it cannot reach the database), never serve.
    let status = me(&b, &u.token).await;
    assert_ne!(
        status, 200,
        "b still served the logged-out token from memory"
    );
    gate.set(Mode::Open);
    within(
        Duration::from_secs(30),
        "b back, the token dead",
        || async { me(&b, &u.token).await == 401 },
    )
    .await;
}
