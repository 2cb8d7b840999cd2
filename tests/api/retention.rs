//! Retention, consistency checks and backups.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, files_under, problem};

#[tokio::test]
async fn expired_files_disappear_with_their_blobs() {
    let app = TestApp::builder()
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let admin = app.admin("keeper").await;
    let u = app.user("ephemeral").await;
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .query(&[("filename", "short.png"), ("expires_in", "1")])
        .body(png(500))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    assert!(f["expires_at"].is_string());
    let kept = app.stored(&u.token, "kept.png", png(500)).await;
    let id = f["id"].as_str().unwrap().to_owned();
    app.eventually("the blob is swept", || app.blob_files().len() == 1)
        .await;
    problem(
        app.authed(Method::GET, &format!("/api/v1/files/{id}"), &u.token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        app.authed(
            Method::GET,
            &format!("/api/v1/files/{}", kept["id"].as_str().unwrap()),
            &u.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        200
    );
    // The sweeper records the expiry right after removing the row.
    for _ in 0..200 {
        let entries = app.audit(&admin.token).await;
        if entries
            .iter()
            .any(|e| e["event"] == "file.expire" && e["subject_id"] == id.as_str())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no file.expire entry");
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
        let r = app
            .authed(Method::POST, "/api/v1/files", &u.token)
            .query(&[("filename", "a.png"), ("expires_in", bad)])
            .body(png(50))
            .send()
            .await
            .unwrap();
        let v = problem(r, 422).await;
        assert_eq!(v["errors"][0]["field"], "expires_in");
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
    let part = reqwest::multipart::Part::bytes(png(50)).file_name("m.png");
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .query(&[("expires_in", "60")])
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["expires_at"].is_string());
}

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
async fn check_reports_orphans_missing_blobs_and_repairs_them() {
    let app = TestApp::spawn().await;
    let u = app.user("checked").await;
    let a = app.stored(&u.token, "a.png", png(500)).await;
    app.stored(&u.token, "b.png", png(600)).await;
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 0, "{out}");

    // An orphan blob, and a row whose blob is gone.
    let orphan = uuid::Uuid::new_v4().to_string();
    let shard = app
        .root
        .join("blobs")
        .join(&orphan[..2])
        .join(&orphan[2..4]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(&orphan), b"stray").unwrap();
    let a_blob = app
        .blob_files()
        .into_iter()
        .find(|p| p.to_string_lossy().contains(a["id"].as_str().unwrap()))
        .unwrap();
    std::fs::remove_file(a_blob).unwrap();
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("orphan blob") && out.contains(&orphan),
        "{out}"
    );
    assert!(
        out.contains("missing blob") && out.contains(a["id"].as_str().unwrap()),
        "{out}"
    );
    // A blob with the wrong length.
    let b_blob = app
        .blob_files()
        .into_iter()
        .find(|p| !p.to_string_lossy().contains(&orphan))
        .unwrap();
    let mut bytes = std::fs::read(&b_blob).unwrap();
    bytes.push(0);
    std::fs::write(&b_blob, &bytes).unwrap();
    let (_, out) = run(&mut app.cli(&["check"]));
    assert!(out.contains("size mismatch"), "{out}");
    bytes.pop();
    std::fs::write(&b_blob, &bytes).unwrap();

    let (code, out) = run(&mut app.cli(&["check", "--repair"]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&mut app.cli(&["check", "--deep"]));
    assert_eq!(code, 0, "{out}");
    problem(
        app.authed(
            Method::GET,
            &format!("/api/v1/files/{}", a["id"].as_str().unwrap()),
            &u.token,
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn check_detects_an_edited_or_deleted_audit_entry() {
    let app = TestApp::spawn().await;
    let admin = app.admin("chain").await;
    app.user("somebody").await;
    app.audit(&admin.token).await; // flushes the queue
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 0, "{out}");
    let db = rusqlite::Connection::open(app.root.join("coffer.db")).unwrap();
    db.execute(
        "UPDATE audit SET client_ip = '10.6.6.6' WHERE seq = (SELECT MIN(seq) + 1 FROM audit)",
        [],
    )
    .unwrap();
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit chain"), "{out}");
    let app2 = TestApp::spawn().await;
    let admin2 = app2.admin("chain2").await;
    app2.user("another").await;
    app2.audit(&admin2.token).await;
    let db = rusqlite::Connection::open(app2.root.join("coffer.db")).unwrap();
    db.execute(
        "DELETE FROM audit WHERE seq = (SELECT MIN(seq) + 1 FROM audit)",
        [],
    )
    .unwrap();
    let (code, out) = run(&mut app2.cli(&["check"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit chain"), "{out}");
}

#[tokio::test]
async fn backup_while_uploading_yields_a_consistent_store() {
    let app = TestApp::spawn().await;
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
    let backup = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let (out, ()) = tokio::join!(backup, uploads);
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest_path.join("coffer.db").is_file() && dest_path.join("manifest.jsonl").is_file());
    let db = rusqlite::Connection::open(dest_path.join("coffer.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 5);
    let manifest = std::fs::read_to_string(dest_path.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count() as i64, n + 1);
    // The backup is itself a storage root that passes check.
    let mut check = app.cli(&["check", "--deep"]);
    check.env("COFFER_STORAGE__ROOT", &dest_path);
    let (code, text) = run(&mut check);
    assert_eq!(code, 0, "{text}");
    assert_eq!(files_under(&dest_path.join("blobs")).len() as i64, n);
}

#[tokio::test]
async fn backup_refuses_a_destination_inside_or_around_the_storage_root() {
    let app = TestApp::spawn().await;
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
        let (code, out) = run(&mut app.cli(&["backup", dest.to_str().unwrap()]));
        assert_eq!(code, 2, "{}: {out}", dest.display());
        assert!(
            out.contains("backup destination") && out.contains("storage root"),
            "{}: {out}",
            dest.display()
        );
    }
    // Nothing was written: no new folder, no copy in the root or around it, and the store
    // still checks clean.
    for dest in [root.join("x"), root.join("tmp/x"), links.join("new")] {
        assert!(!dest.exists(), "{} was created", dest.display());
    }
    assert!(!parent.join("coffer.db").exists() && !parent.join("manifest.jsonl").exists());
    assert!(app.temp_files().is_empty());
    let (code, out) = run(&mut app.cli(&["check"]));
    assert_eq!(code, 0, "{out}");

    // A sibling of the root is fine, and is a valid root itself.
    let sibling = parent.join("backup");
    let (code, out) = run(&mut app.cli(&["backup", sibling.to_str().unwrap()]));
    assert_eq!(code, 0, "{out}");
    let mut check = app.cli(&["check", "--deep"]);
    check.env("COFFER_STORAGE__ROOT", &sibling);
    let (code, out) = run(&mut check);
    assert_eq!(code, 0, "{out}");
}
