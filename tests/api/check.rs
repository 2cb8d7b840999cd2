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
        (
            "the newest entries cut off",
            "DELETE FROM audit WHERE seq > (SELECT MAX(seq) - 2 FROM audit)",
        ),
        ("the chain's head removed", "DELETE FROM audit_head"),
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
        // Without the secret that keys the chain nothing is verified, so nothing is "ok".
        let (code, out) =
            crate::helpers::outcome(app.cli(&["check"]).env_remove("COFFER_SECRET_KEY"));
        assert_eq!(code, 1, "{row}, no secret: {out}");
        assert!(out.contains("audit chain not verified"), "{out}");
        assert!(!out.contains("store consistent"), "{out}");
        // A head that is gone is not re-made by new entries, only by --repair, once reported.
        if row == "the chain's head removed" {
            app.user("later").await;
            app.audit_with(&admin.token, &["auth.register"]).await;
            let (code, out) = app.run_cli(&["check"]);
            assert_eq!(code, 1, "{out}");
            assert!(out.contains("audit chain head missing"), "{out}");
            let (code, out) = app.run_cli(&["check", "--repair"]);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("sealed a new audit chain head"), "{out}");
        }
    }
}

/// `check` and `backup` where no store is: exit 2 naming the absolute root, nothing created
/// (a wrong working directory must not "check" a fresh empty store and call it consistent).
#[test]
fn check_and_backup_never_create_a_store() {
    use crate::helpers::{bin, clean_env, secret};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    std::fs::create_dir(base.join("empty")).unwrap();
    let dest = base.join("dest");
    for root in ["absent", "empty"] {
        for args in [vec!["check"], vec!["backup", dest.to_str().unwrap()]] {
            let mut cmd = std::process::Command::new(bin());
            clean_env(&mut cmd);
            // A relative root, resolved against the working directory.
            cmd.current_dir(&base)
                .env("COFFER_STORAGE__ROOT", root)
                .env("COFFER_SECRET_KEY", secret())
                .args(&args);
            let (code, out) = crate::helpers::outcome(&mut cmd);
            assert_eq!(code, 2, "{root} {args:?}: {out}");
            let abs = base.join(root);
            assert!(
                out.contains("no store at") && out.contains(abs.to_str().unwrap()),
                "{root} {args:?}: {out}"
            );
            assert_eq!(abs.exists(), root == "empty", "{root} {args:?} created it");
            assert!(!dest.exists(), "{args:?} created the destination");
        }
        assert_eq!(std::fs::read_dir(base.join("empty")).unwrap().count(), 0);
    }
}

#[tokio::test]
async fn check_and_backup_name_the_absolute_root() {
    let app = TestApp::spawn().await;
    let root = app.root.canonicalize().unwrap();
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("store at {}", root.display())),
        "{out}"
    );
    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path().join("b");
    let (code, out) = app.run_cli(&["backup", dest.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("store at {}", root.display())),
        "{out}"
    );
}

/// A blob that no file row names yet but an upload in flight does (its reservation, on any
/// node) is not an orphan, however old: a store's modification time can precede the row by
/// seconds when the database stalls at the commit. Once the reservation is gone it is one.
#[tokio::test]
async fn the_blob_of_an_upload_in_flight_is_not_an_orphan() {
    let app = TestApp::spawn().await;
    let u = app.user("inflight").await;
    let id = app.plant_orphan_blob(b"being committed");
    let key = format!("{}/{}/{id}", &id[..2], &id[2..4]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    app.sql_exec(&format!(
        "INSERT INTO upload_reservations (id, owner_id, bytes, blob_key, node, started_at,
             touched_at)
         VALUES ('{id}', '{}', 15, '{key}', 'another-node', {now}, {now})",
        u.id
    ));
    let held = |app: &TestApp| {
        app.blob_files()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&id))
    };
    let (code, out) = app.run_cli(&["check", "--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("orphan blob"), "{out}");
    assert!(held(&app), "the upload's blob was deleted");
    app.sql_exec(&format!(
        "DELETE FROM upload_reservations WHERE id = '{id}'"
    ));
    let (_, out) = app.run_cli(&["check", "--repair"]);
    assert!(out.contains("orphan blob"), "{out}");
    assert!(!held(&app), "a blob no one holds is an orphan");
}
