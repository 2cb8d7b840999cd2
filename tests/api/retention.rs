//! Retention: expiring files (bounded, with a default) disappear with their blobs.

use crate::helpers::TestApp;
use crate::helpers::fixtures::png;

#[tokio::test]
async fn expired_files_disappear_with_their_blobs() {
    let app = TestApp::builder()
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let admin = app.admin("keeper").await;
    let u = app.user("ephemeral").await;
    let f = app
        .post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "short.png"), ("expires_in", "1")])
        .body(png(500))
        .expect(201)
        .await;
    assert!(f["expires_at"].is_string());
    let kept = app.stored(&u.token, "kept.png", png(500)).await;
    let id = f["id"].as_str().unwrap();
    app.eventually("the blob is swept", || app.blob_files().len() == 1)
        .await;
    app.file(id).as_user(&u).problem(404).await;
    let kept = app.file(kept["id"].as_str().unwrap()).as_user(&u);
    assert_eq!(kept.status().await, 200);
    // The sweeper records the expiry right after removing the row.
    app.audited(&admin.token, "file.expire", |e| {
        e["event"] == "file.expire" && e["subject_id"] == id
    })
    .await;
}

#[tokio::test]
async fn expiry_is_bounded_and_defaults_apply() {
    let app = TestApp::builder()
        .env("COFFER_RETENTION__MAX_EXPIRES_SECS", "3600")
        .env("COFFER_RETENTION__DEFAULT_TTL_SECS", "600")
        .spawn()
        .await;
    let u = app.user("bounded").await;
    for bad in ["0", "3601", "-5", "soon"] {
        let got = app
            .post("/api/v1/files")
            .as_user(&u)
            .query(&[("filename", "a.png"), ("expires_in", bad)])
            .body(png(50))
            .refusal()
            .await;
        assert_eq!(got, (422, "validation-failed", "expires_in"), "{bad}");
    }
    let f = app.stored(&u.token, "default.png", png(50)).await;
    let at = time::OffsetDateTime::parse(
        f["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let secs = (at - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((590..=600).contains(&secs), "{secs}");
    // Multipart takes the query too.
    let f = app
        .post("/api/v1/files")
        .as_user(&u)
        .query(&[("expires_in", "60")])
        .multipart(crate::helpers::file_form("m.png", png(50)))
        .expect(201)
        .await;
    assert!(f["expires_at"].is_string());
}

/// A node stopped cleanly hands the sweeper's lease over: the node started in its place sweeps
/// at its first tick, not once the old lease runs out (two intervals, here 2 minutes).
#[tokio::test]
async fn a_clean_stop_hands_the_sweeper_lease_over() {
    let mut app = TestApp::builder()
        .single_node("reads the SQLite file behind the server")
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "60")
        .spawn()
        .await;
    app.eventually("the sweeper holds its lease", || {
        app.sql_number("SELECT count(*) FROM leases WHERE name = 'sweeper'") == 1
    })
    .await;
    app.terminate();
    assert_eq!(
        app.sql_number("SELECT count(*) FROM leases WHERE name = 'sweeper'"),
        0
    );
    let app = app
        .relaunch()
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "60")
        .spawn()
        .await;
    let u = app.user("short_lived").await;
    app.post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "short.png"), ("expires_in", "1")])
        .body(png(500))
        .expect(201)
        .await;
    // The first tick came at start-up; this one's next is a minute away, so restart once more
    // to have a tick now, with the lease free again.
    let mut app = app;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.terminate();
    let app = app
        .relaunch()
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "60")
        .spawn()
        .await;
    app.eventually("the expired file is swept at once", || {
        app.blob_files().is_empty()
    })
    .await;
}
