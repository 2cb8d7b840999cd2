//! Crash safety: `kill -9` in the middle of an upload, then a restart on the same root.

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

#[tokio::test]
async fn an_interrupted_delete_is_finished_at_start_up() {
    let mut app = TestApp::spawn().await;
    let u = app.user("halfdeleted").await;
    let f = app.stored(&u.token, "gone.png", png(500)).await;
    let id = f["id"].as_str().unwrap().to_owned();
    app.kill9();
    // The crash window of a delete: the row is gone and its blob queued (one transaction),
    // the blob itself not yet deleted.
    let db = rusqlite::Connection::open(app.root.join("coffer.db")).unwrap();
    let key: String = db
        .query_row(
            "DELETE FROM files WHERE id = ?1 RETURNING blob_key",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "INSERT INTO blob_deletions (blob_key, queued_at) VALUES (?1, 0)",
        [&key],
    )
    .unwrap();
    drop(db);
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
