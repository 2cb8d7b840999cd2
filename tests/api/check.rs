//! `coffer check`: orphan and missing blobs, wrong sizes, a broken audit chain; `--repair`.

use reqwest::Method;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, problem};

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
