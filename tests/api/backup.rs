//! `coffer backup`: a consistent copy while uploads go on, which is itself a storage root, and
//! never inside or around the root it copies.

use std::path::Path;
use std::time::Duration;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, files_under, outcome};

/// `coffer check --deep` on another storage root (a backup) with the server's settings.
fn check_deep(app: &TestApp, root: &Path) -> (i32, String) {
    outcome(
        app.cli(&["check", "--deep"])
            .env("COFFER_STORAGE__ROOT", root),
    )
}

#[tokio::test]
async fn backup_while_uploading_yields_a_consistent_store() {
    let app = TestApp::builder()
        .single_node("checks the SQLite copy and the blob files of the embedded store")
        .spawn()
        .await;
    let u = app.user("backedup").await;
    for i in 0..5 {
        app.stored(&u.token, &format!("pre{i}.png"), png(20_000))
            .await;
    }
    let dest = tempfile::tempdir().unwrap();
    let dest_path = dest.path().join("backup");
    let uploads = async {
        for i in 0..20 {
            app.stored(&u.token, &format!("during{i}.png"), png(30_000))
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let mut cmd = app.cli(&["backup", dest_path.to_str().unwrap()]);
    let backup = tokio::task::spawn_blocking(move || outcome(&mut cmd));
    let ((code, out), ()) = tokio::join!(async { backup.await.unwrap() }, uploads);
    assert_eq!(code, 0, "{out}");
    assert!(dest_path.join("coffer.db").is_file() && dest_path.join("manifest.jsonl").is_file());
    let db = rusqlite::Connection::open(dest_path.join("coffer.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 5);
    let manifest = std::fs::read_to_string(dest_path.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count() as i64, n + 1);
    // The backup is itself a storage root that passes check.
    let (code, text) = check_deep(&app, &dest_path);
    assert_eq!(code, 0, "{text}");
    assert_eq!(files_under(&dest_path.join("blobs")).len() as i64, n);
}

#[tokio::test]
async fn backup_refuses_a_destination_inside_or_around_the_storage_root() {
    let app = TestApp::builder()
        .single_node("symlinks into the local blobs/ folder")
        .spawn()
        .await;
    let u = app.user("careful").await;
    app.stored(&u.token, "a.png", png(500)).await;
    let root = app.root.canonicalize().unwrap();
    let parent = root.parent().unwrap().to_path_buf();
    let elsewhere = tempfile::tempdir().unwrap();
    let links = elsewhere.path();
    std::os::unix::fs::symlink(root.join("blobs"), links.join("into-blobs")).unwrap();
    std::os::unix::fs::symlink(&root, links.join("to-root")).unwrap();
    std::os::unix::fs::symlink(&parent, links.join("to-parent")).unwrap();
    let refused = [
        root.join("x"),
        root.join("tmp/x"),
        root.join("blobs"),
        root.join("blobs/ab/new"),
        root.clone(),
        parent.clone(),
        links.join("into-blobs"),
        links.join("into-blobs/x"),
        links.join("to-root/tmp/x"),
        links.join("to-parent"),
        // `new` does not exist yet: mkdir would make it, then follow the link.
        links.join("new/../into-blobs/y"),
    ];
    for dest in &refused {
        let (code, out) = app.run_cli(&["backup", dest.to_str().unwrap()]);
        assert_eq!(code, 2, "{}: {out}", dest.display());
        assert!(
            out.contains("backup destination") && out.contains("storage root"),
            "{}: {out}",
            dest.display()
        );
    }
    // A dangling link (here into the root) cannot be told safe: refused the same way.
    std::os::unix::fs::symlink(root.join("nonexistent"), links.join("dangling")).unwrap();
    let (code, out) = app.run_cli(&["backup", links.join("dangling").to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot resolve it"), "{out}");
    assert!(!root.join("nonexistent").exists());
    // Nothing was written: no new folder, no copy in the root or around it, and the store
    // still checks clean.
    for dest in [root.join("x"), root.join("tmp/x"), links.join("new")] {
        assert!(!dest.exists(), "{} was created", dest.display());
    }
    assert!(!parent.join("coffer.db").exists() && !parent.join("manifest.jsonl").exists());
    assert!(app.temp_files().is_empty());
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");

    // A sibling of the root is fine, and is a valid root itself.
    let sibling = parent.join("backup");
    let (code, out) = app.run_cli(&["backup", sibling.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_deep(&app, &sibling);
    assert_eq!(code, 0, "{out}");
}
