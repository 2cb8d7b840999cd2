//! Crash safety: `kill -9` in the middle of an upload or a deletion, then `coffer check` or a
//! restart on the same root.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, files_under};

#[tokio::test]
async fn kill_9_mid_upload_then_restart_leaves_a_consistent_store() {
    let mut app = TestApp::spawn().await;
    let u = app.user("crasher").await;
    let kept = app.stored(&u.token, "kept.png", png(5000)).await;

    // An upload in flight when the process dies.
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/files?filename=inflight.png HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 50000000\r\n\r\n",
        u.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&png(2_000_000)).await.unwrap();
    app.eventually("a temp file exists", || !app.temp_files().is_empty())
        .await;
    // A crash between "blob renamed into place" and "row committed" leaves an orphan blob;
    // simulate one, since the window is too short to hit by timing.
    let orphan_id = uuid::Uuid::new_v4().to_string();
    let shard = app
        .root
        .join("blobs")
        .join(&orphan_id[0..2])
        .join(&orphan_id[2..4]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(&orphan_id), png(100)).unwrap();
    // The temp file this leaves is the point; the next server on the root must remove it.
    app.expect_leftovers();
    app.kill9();
    drop(s);
    assert!(
        !files_under(&app.root.join("tmp")).is_empty(),
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
    assert!(
        blobs[0]
            .to_string_lossy()
            .contains(kept["id"].as_str().unwrap())
    );
    let out = app.cli(&["check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The surviving file is whole and the session survived the restart.
    let r = app
        .download(&u.token, kept["id"].as_str().unwrap(), &[])
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &png(5000)[..]);
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// The crash window of a delete, made on disk after a `kill -9`: the row is gone and its blob
/// queued (one transaction), the blob itself not yet deleted. Returns the blob's key.
fn crash_mid_delete(app: &TestApp, id: &str) -> String {
    let db = rusqlite::Connection::open(app.root.join("coffer.db")).unwrap();
    let key: String = db
        .query_row(
            "DELETE FROM files WHERE id = ?1 RETURNING blob_key",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "INSERT INTO blob_deletions (blob_key, queued_at) VALUES (?1, 0)",
        [&key],
    )
    .unwrap();
    key
}

#[tokio::test]
async fn an_interrupted_delete_is_finished_at_start_up() {
    let mut app = TestApp::spawn().await;
    let u = app.user("halfdeleted").await;
    let f = app.stored(&u.token, "gone.png", png(500)).await;
    let id = f["id"].as_str().unwrap().to_owned();
    app.kill9();
    crash_mid_delete(&app, &id);
    assert_eq!(app.blob_files().len(), 1);
    let app = app.relaunch().spawn().await;
    assert!(
        app.blob_files().is_empty(),
        "the queued blob is deleted at start-up"
    );
    assert_eq!(
        app.authed(Method::GET, &format!("/api/v1/files/{id}"), &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(app.cli(&["check"]).output().unwrap().status.success());
}

/// Run a CLI command: exit code and everything it printed.
fn run(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn check_reports_an_interrupted_delete_and_repair_finishes_it() {
    let mut app = TestApp::spawn().await;
    let u = app.user("halfchecked").await;
    let kept = app.stored(&u.token, "kept.png", png(700)).await;
    let f = app.stored(&u.token, "gone.png", png(500)).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let other = app.stored(&u.token, "other.png", png(600)).await;
    app.kill9();
    let key = crash_mid_delete(&app, &id);
    // And one whose blob was already deleted when the process died, before it was dequeued.
    let other_key = crash_mid_delete(&app, other["id"].as_str().unwrap());
    let other_blob = app
        .blob_files()
        .into_iter()
        .find(|p| p.to_string_lossy().contains(other["id"].as_str().unwrap()))
        .unwrap();
    std::fs::remove_file(other_blob).unwrap();

    // Before the next start, check says what happened and what finishes it.
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 1, "a state that needs action: {out}");
    for k in [&key, &other_key] {
        assert!(
            out.contains(&format!("interrupted deletion: blob {k}")) && out.contains("--repair"),
            "{out}"
        );
    }
    assert!(!out.contains("missing blob"), "{out}");
    assert!(!out.contains("orphan blob"), "{out}");

    let (code, out) = run(&mut app.cli(&["check", "--repair"]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        app.blob_files().len(),
        1,
        "only the kept file's blob is left"
    );

    let app = app.relaunch().spawn().await;
    assert_eq!(
        app.authed(Method::GET, &format!("/api/v1/files/{id}"), &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = app
        .download(&u.token, kept["id"].as_str().unwrap(), &[])
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &png(700)[..]);
}
