//! Crash safety: `kill -9` in the middle of an upload or a deletion, then `coffer check` or a
//! restart on the same root.

use crate::helpers::TestApp;
use crate::helpers::fixtures::png;
use crate::helpers::raw::{RawConn, upload_head};

#[tokio::test]
async fn kill_9_mid_upload_then_restart_leaves_a_consistent_store() {
    let mut app = TestApp::builder()
        .single_node("watches the local temp file and blob files around a kill -9")
        .spawn()
        .await;
    let u = app.user("crasher").await;
    let kept = app.stored(&u.token, "kept.png", png(5000)).await;
    let kept = kept["id"].as_str().unwrap();

    // An upload in flight when the process dies.
    let mut c = RawConn::open(app.addr).await;
    c.send(&upload_head(&u.token, "inflight.png", 50_000_000, None))
        .await;
    c.send(&png(2_000_000)).await;
    app.eventually("a temp file exists", || !app.temp_files().is_empty())
        .await;
    // A crash between "blob renamed into place" and "row committed" leaves an orphan blob;
    // simulate one, since the window is too short to hit by timing.
    app.plant_orphan_blob(&png(100));
    // The temp file this leaves is the point; the next server on the root must remove it.
    app.expect_leftovers();
    app.kill9();
    drop(c);
    assert!(
        !app.temp_files().is_empty(),
        "the crash left a temp file behind"
    );

    let app = app.relaunch().spawn().await;
    assert!(
        app.temp_files().is_empty(),
        "temp files removed at start-up"
    );
    let blobs = app.blob_files();
    assert_eq!(
        blobs.len(),
        1,
        "only the committed file's blob remains: {blobs:?}"
    );
    assert!(blobs[0].to_string_lossy().contains(kept));
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    // The surviving file is whole and the session survived the restart.
    let r = app.download(&u.token, kept, &[]).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &png(5000)[..]);
    let list = app.files().as_user(&u).expect(200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

/// The crash window of a delete, made in the database after a `kill -9`: the row is gone and
/// its blob queued (one transaction), the blob itself not yet deleted. Returns the blob's key.
fn crash_mid_delete(app: &TestApp, id: &str) -> String {
    let key = app.sql_text(&format!(
        "DELETE FROM files WHERE id = '{id}' RETURNING blob_key"
    ));
    app.sql_exec(&format!(
        "INSERT INTO blob_deletions (blob_key, queued_at) VALUES ('{key}', 0)"
    ));
    key
}

#[tokio::test]
async fn an_interrupted_delete_is_finished_at_start_up() {
    let mut app = TestApp::spawn().await;
    let u = app.user("halfdeleted").await;
    let f = app.stored(&u.token, "gone.png", png(500)).await;
    let id = f["id"].as_str().unwrap();
    app.kill9();
    crash_mid_delete(&app, id);
    assert_eq!(app.blob_files().len(), 1);
    let app = app.relaunch().spawn().await;
    assert!(
        app.blob_files().is_empty(),
        "the queued blob is deleted at start-up"
    );
    assert_eq!(app.file(id).as_user(&u).status().await, 404);
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn check_reports_an_interrupted_delete_and_repair_finishes_it() {
    let mut app = TestApp::spawn().await;
    let u = app.user("halfchecked").await;
    let kept = app.stored(&u.token, "kept.png", png(700)).await;
    let f = app.stored(&u.token, "gone.png", png(500)).await;
    let id = f["id"].as_str().unwrap();
    let other = app.stored(&u.token, "other.png", png(600)).await;
    let other = other["id"].as_str().unwrap();
    app.kill9();
    let key = crash_mid_delete(&app, id);
    // And one whose blob was already deleted when the process died, before it was dequeued.
    let other_key = crash_mid_delete(&app, other);
    app.remove_blob(&app.blob_of(other));

    // Before the next start, check says what happened and what finishes it.
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 1, "a state that needs action: {out}");
    for k in [&key, &other_key] {
        assert!(
            out.contains(&format!("interrupted deletion: blob {k}")) && out.contains("--repair"),
            "{out}"
        );
    }
    assert!(!out.contains("missing blob"), "{out}");
    assert!(!out.contains("orphan blob"), "{out}");

    let (code, out) = app.run_cli(&["check", "--repair"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        app.blob_files().len(),
        1,
        "only the kept file's blob is left"
    );

    let app = app.relaunch().spawn().await;
    assert_eq!(app.file(id).as_user(&u).status().await, 404);
    let r = app
        .download(&u.token, kept["id"].as_str().unwrap(), &[])
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &png(700)[..]);
}
