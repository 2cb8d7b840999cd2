//! `coffer migrate --to CONFIG`: a real SQLite file and storage directory copied into a fresh
//! PostgreSQL database and a fresh prefix of the Garage bucket (the test stack), interrupted
//! with SIGKILL and run again, a corrupt source blob refused, and a server on the target
//! serving the same accounts, files, links and keys; `check --deep` and `backup` on the
//! target. Without the stack these pass after the skip note.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::fixtures::{noise, png, tus_metadata};
use crate::helpers::s3::S3Env;
use crate::helpers::stack::{self, Stack, TestDb};
use crate::helpers::{TestApp, outcome, secret};

/// The target's configuration: PostgreSQL (URL from `COFFER_TO_DATABASE_URL`) and the bucket.
fn target_config(dir: &Path, stack: &Stack, prefix: &str) -> std::path::PathBuf {
    let path = dir.join("target.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nbackend = \"s3\"\nroot = \"{}\"\n\n[s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
             bucket = \"{}\"\nprefix = \"{prefix}\"\nforce_path_style = true\n",
            dir.join("target-root").display(),
            stack.s3_endpoint,
            stack.s3_region,
            stack.s3_bucket,
        ),
    )
    .unwrap();
    path
}

/// `coffer migrate --to CONFIG` on the source's root and environment.
fn migrate(source: &TestApp, config: &Path, db: &TestDb, stack: &Stack) -> Command {
    let mut cmd = source.cli(&["migrate", "--to", config.to_str().unwrap()]);
    cmd.env("COFFER_TO_DATABASE_URL", &db.url)
        .env("COFFER_S3_ACCESS_KEY_ID", &stack.s3_access_key_id)
        .env("COFFER_S3_SECRET_ACCESS_KEY", &stack.s3_secret_access_key);
    cmd
}

/// A stored file's id and the bytes the source serves for it (what the target must serve:
/// the upload policy may have rewritten what was sent).
async fn served(source: &TestApp, token: &str, file: &serde_json::Value) -> (String, Vec<u8>) {
    let id = file["id"].as_str().unwrap().to_owned();
    let bytes = source.content_of(token, &id).await;
    (id, bytes)
}

#[tokio::test]
async fn migrate_copies_sqlite_and_files_into_postgres_and_s3_resumably() {
    let Some(stack) = stack::require("migrate_copies_sqlite_and_files_into_postgres_and_s3") else {
        return;
    };
    let enc_key = secret();
    // The source: the embedded default, first plain, then with encryption at rest on.
    let mut source = TestApp::builder()
        .single_node("the source of a migration is the embedded SQLite store on local disk")
        .spawn()
        .await;
    let admin = source.admin("root").await;
    let alice = source.user("alice").await;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // About 1 MB each: the copy must take long enough after its first blob for the kill
    // below to land in the middle of it (with 300 KB files and a faster opener, CI once saw
    // every blob copied before the kill).
    for i in 0..24 {
        let mut bytes = png(64);
        bytes.extend(noise(1_000_000 + i * 1000, i as u64));
        let f = source
            .stored(&alice.token, &format!("n{i}.png"), bytes)
            .await;
        files.push(served(&source, &alice.token, &f).await);
    }
    source.terminate();
    let mut source = source
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", enc_key.clone())
        .single_node("the source of a migration is the embedded SQLite store on local disk")
        .spawn()
        .await;
    for i in 0..24 {
        let bytes = png(250_000 + i * 777);
        let f = source
            .stored(&alice.token, &format!("s{i}.png"), bytes)
            .await;
        files.push(served(&source, &alice.token, &f).await);
    }
    // A grant of 3 uses: one upload done with it, one resumable upload unfinished. The
    // unfinished one is not copied, nor the use it holds.
    let grant = source
        .post("/api/v1/upload-grants")
        .as_user(&alice)
        .json(&json!({ "max_uploads": 3 }))
        .expect(201)
        .await;
    let grant_token = grant["token"].as_str().unwrap();
    let f: serde_json::Value = source
        .post("/api/v1/files")
        .header("upload-grant", grant_token)
        .query(&[("filename", "granted.png")])
        .body(png(5_000))
        .expect(201)
        .await;
    files.push(served(&source, &alice.token, &f).await);
    let r = source
        .post("/api/v1/uploads")
        .header("tus-resumable", "1.0.0")
        .header("upload-grant", grant_token)
        .header("upload-length", "5000")
        .header("upload-metadata", &tus_metadata("later.png"))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        source.sql_number("SELECT uses FROM upload_grants"),
        2,
        "the unfinished upload holds a use"
    );
    let link = source
        .new_link(&alice.token, &files[0].0, &json!({"expires_in": 3600}))
        .await;
    let key = source.new_api_key(&alice.token, "ci").await;
    let (gone_token, _) = source.login("alice", crate::helpers::PASSWORD).await;
    source.logout().bearer(&gone_token).expect(204).await;
    source.terminate();

    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(stack.fresh_database());
    let prefix = stack.fresh_prefix();
    let config = target_config(dir.path(), &stack, &prefix);
    let s3 = S3Env::of(&stack);

    // Interrupted: killed once the first blob is in the bucket.
    let mut child = migrate(&source, &config, &db, &stack)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.keys(&prefix).await.is_empty() {
        assert!(Instant::now() < deadline, "migrate copied nothing");
        assert!(child.try_wait().unwrap().is_none(), "migrate ended early");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let copied_before = s3.keys(&prefix).await.len();
    assert!(
        copied_before < files.len(),
        "migrate finished before it was interrupted"
    );

    // Run again: it continues.
    let (code, out) = outcome(&mut migrate(&source, &config, &db, &stack));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(continuing)"), "{out}");
    assert!(out.contains("already in the target"), "{out}");
    // Once more: nothing left to copy, nothing duplicated.
    let (code, out) = outcome(&mut migrate(&source, &config, &db, &stack));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 blobs copied"), "{out}");
    assert_eq!(s3.keys(&prefix).await.len(), files.len());
    assert_eq!(
        db.psql("SELECT count(*) FROM files"),
        files.len().to_string()
    );
    assert_eq!(db.psql("SELECT count(*) FROM users"), "2");
    assert_eq!(
        db.psql("SELECT uses FROM upload_grants"),
        "1",
        "the use the unfinished upload held stays behind with it"
    );

    // A server on the target serves the same store.
    let target = TestApp::builder()
        .single_node("serves the migrated PostgreSQL + S3 store of this test")
        .root(&dir.path().join("target-root"))
        .database(db.clone())
        .s3(&s3, &prefix)
        .env("COFFER_S3__FORCE_PATH_STYLE", "true")
        .env("COFFER_SECRET_KEY", source.secret())
        .env("COFFER_ENCRYPTION_KEY", enc_key)
        .spawn()
        .await;
    let (token, _) = target.login("alice", crate::helpers::PASSWORD).await;
    let listed: usize = target
        .pages("/api/v1/files", &token, 100)
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(listed, files.len());
    for (id, bytes) in &files {
        assert_eq!(&target.content_of(&token, id).await, bytes, "file {id}");
    }
    // The old access token still works (same secret); the logged-out one does not.
    target.me().bearer(&alice.token).expect(200).await;
    target.me().bearer(&gone_token).problem(401).await;
    target
        .me()
        .api_key(key["key"].as_str().unwrap())
        .expect(200)
        .await;
    let r = target
        .req(Method::GET, link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &files[0].1[..]);
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(
        db.psql("SELECT used_bytes FROM users WHERE username = 'alice'"),
        total.to_string()
    );
    let events = target.audit_events(&admin.token).await;
    assert!(events.iter().any(|e| e == "auth.logout"), "{events:?}");

    let (code, out) = target.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
    // A backup of the PostgreSQL + S3 store: the blobs and the manifest.
    let dest = dir.path().join("backup");
    let (code, out) = target.run_cli(&["backup", dest.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pg_dump"), "{out}");
    let manifest = std::fs::read_to_string(dest.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), files.len() + 1);
    assert_eq!(
        crate::helpers::files_under(&dest.join("blobs")).len(),
        files.len()
    );
}

#[tokio::test]
async fn migrate_refuses_a_corrupt_source_blob_and_a_foreign_target() {
    let Some(stack) = stack::require("migrate_refuses_a_corrupt_source_blob_and_a_foreign_target")
    else {
        return;
    };
    let mut source = TestApp::builder()
        .single_node("corrupts a blob file of the embedded store on local disk")
        .spawn()
        .await;
    let u = source.user("bob").await;
    let good = source.stored(&u.token, "good.png", png(4000)).await;
    let bad = source.stored(&u.token, "bad.png", png(5000)).await;
    let bad_id = bad["id"].as_str().unwrap();
    source.terminate();
    // Same length, one byte flipped.
    let blob = source.blob_of(bad_id);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[4321] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = stack.fresh_database();
    let prefix = stack.fresh_prefix();
    let config = target_config(dir.path(), &stack, &prefix);
    let (code, out) = outcome(&mut migrate(&source, &config, &db, &stack));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(bad_id) && out.contains("does not match its sha256"),
        "{out}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM files"), "1");
    assert_eq!(
        db.psql("SELECT id::text FROM files"),
        good["id"].as_str().unwrap()
    );
    assert_eq!(S3Env::of(&stack).keys(&prefix).await.len(), 1);

    // The target, as far as it goes, is whole.
    let mut check = Command::new(crate::helpers::bin());
    crate::helpers::clean_env(&mut check);
    check
        .args(["--config", config.to_str().unwrap(), "check", "--deep"])
        .env("COFFER_DATABASE_URL", &db.url)
        .env("COFFER_S3_ACCESS_KEY_ID", &stack.s3_access_key_id)
        .env("COFFER_S3_SECRET_ACCESS_KEY", &stack.s3_secret_access_key)
        .env("COFFER_SECRET_KEY", source.secret());
    let (code, out) = outcome(&mut check);
    assert_eq!(code, 0, "{out}");

    // Another store into that (non-empty) target: refused, exit 2.
    let other = TestApp::builder()
        .single_node("the source of a migration is the embedded SQLite store on local disk")
        .spawn()
        .await;
    other.user("carol").await;
    let (code, out) = outcome(&mut migrate(&other, &config, &db, &stack));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("empty store"), "{out}");
    // The source itself as the target: refused, exit 2.
    let own = dir.path().join("own.toml");
    std::fs::write(
        &own,
        format!("[storage]\nroot = \"{}\"\n", other.root.display()),
    )
    .unwrap();
    let (code, out) = outcome(&mut other.cli(&["migrate", "--to", own.to_str().unwrap()]));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is the source store"), "{out}");
}
