//! The real binary with `storage.backend = "s3"`: files go to the bucket and come back (whole,
//! ranged, across part boundaries), deletions reach the bucket, encryption seals before the
//! bytes leave, and a store that refuses or hangs makes the node unready and its blob requests
//! 503 with `Retry-After` in seconds, never a 500 or a hang; it recovers by itself.

use std::time::{Duration, Instant};

use coffer::blob::s3::PART_SIZE;
use object_store::ObjectStoreExt as _;
use reqwest::Response;
use serde_json::Value;

use crate::helpers::s3::{Gate, Mode, S3Env, fresh_prefix, within};
use crate::helpers::{TestApp, assert_problem, problem, secret};

/// ASCII text (an allowed `.txt` upload) of `len` bytes whose content depends on position.
fn text(len: usize, marker: &str) -> Vec<u8> {
    let mut s = String::with_capacity(len + 64);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!("{marker} {i:012}\n"));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    memchr::memmem::find(hay, needle.as_bytes()).is_some()
}

/// A 503 problem that tells the client when to retry.
async fn unavailable(r: Response) {
    let retry = r.headers().get("retry-after").cloned();
    let body = assert_problem(r, 503, "service-unavailable").await;
    assert!(retry.is_some(), "no Retry-After on {body}");
}

async fn ready(app: &TestApp) -> u16 {
    app.get("/readyz").status().await
}

#[tokio::test]
async fn s3_files_round_trip_with_ranges_and_deletes() {
    let Some(s3) = S3Env::require("s3_files_round_trip") else {
        return;
    };
    let prefix = fresh_prefix();
    let app = TestApp::builder().s3(&s3, &prefix).spawn().await;
    let u = app.user("bucketeer").await;

    // Large enough for a multipart upload of three parts, the last one short.
    let big = text(2 * PART_SIZE + 12_345, "round-trip");
    let f = app.stored(&u.token, "big.txt", big.clone()).await;
    let id = f["id"].as_str().unwrap();
    assert_eq!(f["size"], big.len());
    let small = app
        .upload_multipart(&u.token, "small.txt", b"small and whole\n".to_vec())
        .await;
    assert_eq!(small.status(), 201);
    let small: Value = small.json().await.unwrap();

    // Both live in the bucket under the prefix, nothing under the storage root.
    let keys = s3.keys(&prefix).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("{prefix}blobs/")))
    );
    assert!(keys.iter().any(|k| k.ends_with(id)));
    assert!(app.blob_files().is_empty() && app.temp_files().is_empty());
    assert_eq!(
        s3.multipart_uploads(&prefix).unwrap_or_default(),
        Vec::<String>::new()
    );

    let r = app.download(&u.token, id, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == big[..], "whole file differs");
    // Ranges: the start, across the first part boundary, the last byte.
    let (b, e) = (PART_SIZE - 10, PART_SIZE + 9);
    for (from, to) in [(0, 99), (b, e), (big.len() - 1, big.len() - 1)] {
        let range = format!("bytes={from}-{to}");
        let r = app.download(&u.token, id, &[("range", &range)]).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {from}-{to}/{}", big.len()).as_str()
        );
        assert!(r.bytes().await.unwrap() == big[from..=to], "{range}");
    }
    let r = app
        .download(&u.token, small["id"].as_str().unwrap(), &[])
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"small and whole\n");

    // Deleting a file deletes its object.
    assert_eq!(app.delete_file(id).as_user(&u).status().await, 204);
    let keys = s3.keys(&prefix).await;
    assert_eq!(
        keys.len(),
        1,
        "deleted {id}, kept {}: {keys:?}",
        small["id"]
    );
    assert!(!keys.iter().any(|k| k.ends_with(id)));
    problem(app.download(&u.token, id, &[]).await, 404).await;

    // `coffer check` sees the bucket: consistent now, and an object without a row is an
    // orphan that --repair removes.
    let out = app.cli(&["check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let orphan = format!("{prefix}blobs/ab/cd/abcd0000-0000-4000-8000-000000000000");
    s3.raw()
        .put(
            &object_store::path::Path::from(orphan.as_str()),
            "orphan".into(),
        )
        .await
        .unwrap();
    let out = app.cli(&["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("orphan blob"));
    let out = app.cli(&["check", "--repair"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(s3.keys(&prefix).await.len(), 1);
}

#[tokio::test]
async fn s3_objects_hold_no_plaintext_when_encryption_is_on() {
    let Some(s3) = S3Env::require("s3_objects_hold_no_plaintext") else {
        return;
    };
    let prefix = fresh_prefix();
    let app = TestApp::builder()
        .s3(&s3, &prefix)
        .env("COFFER_ENCRYPTION_KEY", secret())
        .spawn()
        .await;
    let u = app.user("sealer").await;
    let marker = "PLAINTEXT-MARKER-5e1d";
    for len in [50_000, PART_SIZE + 70_000] {
        let data = text(len, marker);
        let f = app.stored(&u.token, "secret.txt", data.clone()).await;
        let id = f["id"].as_str().unwrap();
        let key = s3
            .keys(&prefix)
            .await
            .into_iter()
            .find(|k| k.contains(id))
            .unwrap();
        assert!(key.ends_with(".s"), "a sealed blob's key: {key}");
        let stored = s3.object(&key).await;
        assert!(stored.len() > len, "sealed blobs carry tags");
        assert!(!contains(&stored, marker), "plaintext in the bucket");
        assert!(!contains(&stored, f["sha256"].as_str().unwrap()));
        assert!(!contains(&stored, "secret.txt"));
        let r = app
            .download(&u.token, id, &[("range", "bytes=1000-1999")])
            .await;
        assert_eq!(r.status(), 206);
        assert!(r.bytes().await.unwrap() == data[1000..2000]);
        let r = app.download(&u.token, id, &[]).await;
        assert!(r.bytes().await.unwrap() == data[..]);
    }
}

#[tokio::test]
async fn an_unreachable_object_store_makes_the_node_unready_and_answers_503() {
    // Needs no store: a loopback port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let nowhere = S3Env::unreachable(closed);
    // It starts (serving, unready) rather than refusing to: it recovers by itself later.
    let app = TestApp::builder()
        .s3(&nowhere, "down/")
        .unready()
        .spawn()
        .await;
    assert_eq!(ready(&app).await, 503);
    let u = app.user("patient").await;
    let t = Instant::now();
    unavailable(app.upload(&u.token, "a.txt", b"hello\n".to_vec()).await).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(app.temp_files().is_empty());
    assert!(!app.logs().contains("internal error"), "{}", app.logs());
}

#[tokio::test]
async fn an_object_store_outage_is_503_and_the_node_recovers_by_itself() {
    let Some(s3) = S3Env::require("an_object_store_outage") else {
        return;
    };
    let gate = Gate::start(&s3.endpoint).await;
    let prefix = fresh_prefix();
    let app = TestApp::builder()
        .s3(&s3.via(gate.endpoint.clone()), &prefix)
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let u = app.user("weather").await;
    let data = text(100_000, "outage");
    let kept = app.stored(&u.token, "kept.txt", data.clone()).await;
    let kept = kept["id"].as_str().unwrap().to_owned();
    let doomed = app.stored(&u.token, "doomed.txt", data.clone()).await;
    let doomed = doomed["id"].as_str().unwrap().to_owned();

    for mode in [Mode::Refuse, Mode::Silent] {
        gate.set(mode);
        within(Duration::from_secs(5), "unready", || async {
            ready(&app).await == 503
        })
        .await;
        // Each answer comes within a call's deadline (5 s), far inside the request timeout.
        let limit = Duration::from_secs(8);
        let t = Instant::now();
        unavailable(app.download(&u.token, &kept, &[]).await).await;
        assert!(
            t.elapsed() < limit,
            "{mode:?}: download took {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        unavailable(app.upload(&u.token, "new.txt", data.clone()).await).await;
        assert!(
            t.elapsed() < limit,
            "{mode:?}: upload took {:?}",
            t.elapsed()
        );
        let big = text(PART_SIZE + 1000, "outage");
        let t = Instant::now();
        unavailable(app.upload(&u.token, "big.txt", big).await).await;
        assert!(
            t.elapsed() < limit,
            "{mode:?}: large upload took {:?}",
            t.elapsed()
        );
    }
    // Deleting while the store is down: the row goes at once, the object when it is back.
    assert_eq!(app.delete_file(&doomed).as_user(&u).status().await, 204);

    gate.set(Mode::Open);
    within(Duration::from_secs(5), "ready again", || async {
        ready(&app).await == 200
    })
    .await;
    let r = app.download(&u.token, &kept, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == data[..]);
    let again = app.stored(&u.token, "after.txt", data.clone()).await;
    assert_eq!(again["size"], data.len());
    // The next sweep (every second) finishes it; a sweep that began during the outage may
    // first wait out its calls' deadlines, and a loaded machine (CI runs the suite in
    // parallel) slows Garage too: 30 s, and the node's log if even that is not enough.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.keys(&prefix).await.iter().any(|k| k.contains(&doomed)) {
        assert!(
            Instant::now() < deadline,
            "the queued deletion was not done in 30 s; the node's log:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing half-written was left: no object without a row, no unfinished upload.
    assert_eq!(s3.keys(&prefix).await.len(), 2);
    within(Duration::from_secs(10), "aborted uploads gone", || async {
        s3.multipart_uploads(&prefix).is_none_or(|v| v.is_empty())
    })
    .await;
    assert!(!app.logs().contains("internal error"), "{}", app.logs());
}

#[tokio::test]
async fn s3_credentials_come_from_the_environment_only() {
    use std::process::Command;

    use crate::helpers::{bin, clean_env};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "file-secret-value\n").unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(bin());
        clean_env(&mut cmd);
        cmd.arg("serve")
            .env("COFFER_SECRET_KEY", secret())
            .env("COFFER_STORAGE__ROOT", dir.path().join("root"))
            .env("COFFER_SERVER__BIND", "127.0.0.1:0")
            .env("COFFER_STORAGE__BACKEND", "s3")
            .env("COFFER_S3__ENDPOINT", "http://127.0.0.1:9")
            .env("COFFER_S3__BUCKET", "coffer");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let path = file.to_str().unwrap();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "COFFER_S3_ACCESS_KEY_ID"),
        (
            &[("COFFER_S3_ACCESS_KEY_ID", "GK1")],
            "COFFER_S3_SECRET_ACCESS_KEY",
        ),
        (
            &[
                ("COFFER_S3_ACCESS_KEY_ID", "GK1"),
                ("COFFER_S3_SECRET_ACCESS_KEY", "env-secret-value"),
                ("COFFER_S3_SECRET_ACCESS_KEY_FILE", path),
            ],
            "both COFFER_S3_SECRET_ACCESS_KEY and COFFER_S3_SECRET_ACCESS_KEY_FILE",
        ),
        // In the configuration, a secret is an unknown key, not a setting.
        (
            &[
                ("COFFER_S3_ACCESS_KEY_ID", "GK1"),
                ("COFFER_S3__SECRET_ACCESS_KEY", "env-secret-value"),
            ],
            "secret_access_key",
        ),
    ];
    for (vars, says) in cases {
        let (code, stderr) = run(vars);
        assert_eq!(code, Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains(says), "{vars:?}: {stderr}");
        assert!(
            !stderr.contains("env-secret-value") && !stderr.contains("file-secret-value"),
            "a secret in the message: {stderr}"
        );
    }
}
