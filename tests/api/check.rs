//! `coffer check`: orphan and missing blobs, wrong sizes, a broken audit chain; `--repair`.

use crate::helpers::TestApp;
use crate::helpers::fixtures::png;

#[tokio::test]
async fn check_reports_orphans_missing_blobs_and_repairs_them() {
    let app = TestApp::spawn().await;
    let u = app.user("checked").await;
    let a = app.stored(&u.token, "a.png", png(500)).await;
    let a_id = a["id"].as_str().unwrap();
    app.stored(&u.token, "b.png", png(600)).await;
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");

    // An orphan blob, and a row whose blob is gone.
    let orphan = app.plant_orphan_blob(b"stray");
    app.remove_blob(&app.blob_of(a_id));
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("orphan blob") && out.contains(&orphan),
        "{out}"
    );
    assert!(out.contains("missing blob") && out.contains(a_id), "{out}");
    // A blob with the wrong length.
    let b_blob = app
        .blob_files()
        .into_iter()
        .find(|p| !p.to_string_lossy().contains(&orphan))
        .unwrap();
    let mut bytes = app.read_blob(&b_blob);
    bytes.push(0);
    app.write_blob(&b_blob, &bytes);
    let (_, out) = app.run_cli(&["check"]);
    assert!(out.contains("size mismatch"), "{out}");
    bytes.pop();
    app.write_blob(&b_blob, &bytes);

    let (code, out) = app.run_cli(&["check", "--repair"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
    app.file(a_id).as_user(&u).problem(404).await;
}

#[tokio::test]
async fn check_detects_an_edited_or_deleted_audit_entry() {
    for (row, tampering) in [
        (
            "an edited entry",
            "UPDATE audit SET client_ip = '10.6.6.6' WHERE seq = (SELECT MIN(seq) + 1 FROM audit)",
        ),
        (
            "a deleted entry",
            "DELETE FROM audit WHERE seq = (SELECT MIN(seq) + 1 FROM audit)",
        ),
    ] {
        let app = TestApp::spawn().await;
        let admin = app.admin("chain").await;
        app.user("somebody").await;
        // Every entry written (on two nodes, each appends just after its answer).
        app.audit_with(&admin.token, &["auth.register", "auth.login"])
            .await;
        let (code, out) = app.run_cli(&["check"]);
        assert_eq!(code, 0, "{row}, before: {out}");
        app.sql_exec(tampering);
        let (code, out) = app.run_cli(&["check"]);
        assert_eq!(code, 1, "{row}: {out}");
        assert!(out.contains("audit chain"), "{row}: {out}");
    }
}
