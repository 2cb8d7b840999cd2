//! Encryption at rest: nothing readable on disk, ranges decrypt only what they need, tampering
//! is caught, keys rotate, old files keep working.

use futures_util::StreamExt as _;
use serde_json::json;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, assert_problem, files_under, problem, secret};

const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";

fn marked_text(len: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!("{MARKER} line {i}\n"));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn encrypted_app(key: &str) -> TestApp {
    TestApp::builder()
        .env("COFFER_ENCRYPTION_KEY", key)
        .spawn()
        .await
}

#[tokio::test]
async fn blobs_reveal_nothing_and_differ_for_the_same_file() {
    let app = encrypted_app(&secret()).await;
    let u = app.user("sealed").await;
    let data = marked_text(200_000);
    let a = app.stored(&u.token, "a.txt", data.clone()).await;
    let b = app.stored(&u.token, "a.txt", data.clone()).await;
    assert_eq!(a["sha256"], b["sha256"], "the plaintext hash stays usable");
    let blobs = app.blob_files();
    assert_eq!(blobs.len(), 2);
    let (x, y) = (app.read_blob(&blobs[0]), app.read_blob(&blobs[1]));
    for blob in [&x, &y] {
        assert!(!contains(blob, MARKER.as_bytes()));
        assert!(!contains(blob, a["sha256"].as_str().unwrap().as_bytes()));
        assert!(!contains(blob, b"a.txt"));
    }
    assert_ne!(x, y);
    // Nothing else under the storage root holds the plaintext either.
    for f in files_under(&app.root) {
        assert!(
            !contains(&std::fs::read(&f).unwrap(), MARKER.as_bytes()),
            "{}",
            f.display()
        );
    }
}

#[tokio::test]
async fn every_range_shape_returns_the_right_bytes() {
    let app = encrypted_app(&secret()).await;
    let u = app.user("ranges").await;
    let data = png(300_000);
    let f = app.stored(&u.token, "r.png", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    let r = app.download(&u.token, id, &[]).await;
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    let seg = 65_536;
    for (spec, from, to) in [
        ("bytes=0-0".to_owned(), 0, 0),
        (format!("bytes={}-{}", seg - 1, seg), seg - 1, seg),
        (format!("bytes={}-{}", seg, 3 * seg + 5), seg, 3 * seg + 5),
        ("bytes=-10".to_owned(), 299_990, 299_999),
        ("bytes=250000-".to_owned(), 250_000, 299_999),
        ("bytes=0-299999".to_owned(), 0, 299_999),
    ] {
        let r = app.download(&u.token, id, &[("range", &spec)]).await;
        assert_eq!(r.status(), 206, "{spec}");
        let body = r.bytes().await.unwrap();
        assert_eq!(body.as_ref(), &data[from..=to], "{spec}");
    }
    let r = app
        .download(&u.token, id, &[("range", "bytes=300000-")])
        .await;
    problem(r, 416).await;
}

/// Integrity errors in the audit trail once there are at least `least` (bounded wait: on two
/// nodes, the node that answered appends a moment later).
async fn integrity_events(app: &TestApp, admin: &str, least: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = app
            .audit(admin)
            .await
            .iter()
            .filter(|e| e["event"] == "file.integrity_error")
            .count();
        if n >= least || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Read the whole body; `Err` if the connection broke off. Whatever arrived must be a prefix
/// of the real content: tampered bytes are never served.
async fn read_all(r: reqwest::Response) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => return Err(got),
        }
    }
    Ok(got)
}

/// Rewrite a file's sealed blob behind the server's back.
fn tamper(app: &TestApp, file: &serde_json::Value, edit: impl FnOnce(&mut Vec<u8>)) {
    let blob = app.blob_of(file["id"].as_str().unwrap());
    let mut bytes = app.read_blob(&blob);
    edit(&mut bytes);
    app.write_blob(&blob, &bytes);
}

#[tokio::test]
async fn a_small_encrypted_file_is_served_but_its_plaintext_is_never_kept_in_memory() {
    let app = TestApp::builder()
        .single_node("reads one process's cache counters in /metrics")
        .env("COFFER_ENCRYPTION_KEY", secret())
        .env("COFFER_AUTH__PRINCIPAL_CACHE_SECS", "60")
        .spawn()
        .await;
    let u = app.user("sealed_small").await;
    let bytes = png(4096);
    let f = app.stored(&u.token, "small.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    for range in [None, Some("bytes=10-19")] {
        for _ in 0..3 {
            let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
            let r = app.download(&u.token, id, &headers).await;
            let got = r.bytes().await.unwrap();
            match range {
                None => assert_eq!(got.as_ref(), &bytes[..]),
                Some(_) => assert_eq!(got.as_ref(), &bytes[10..20]),
            }
        }
    }
    // Read with its row every time (the cache's misses), never from memory.
    assert_eq!(app.metric("coffer_small_file_cache_hits_total").await, 0);
    assert_eq!(app.metric("coffer_small_file_cache_entries").await, 0);
}

#[tokio::test]
async fn tampering_fails_cleanly_and_is_audited() {
    let app = encrypted_app(&secret()).await;
    let admin = app.admin("tamperwatch").await;
    let u = app.user("victim").await;
    let data = png(300_000);
    let stride = 65_536 + 16;
    let header = 16;
    let get = async |f: &serde_json::Value, headers: &[(&str, &str)]| {
        app.download(&u.token, f["id"].as_str().unwrap(), headers)
            .await
    };

    // A flipped byte in the first segment: a 500 integrity-error before any byte.
    let f = app.stored(&u.token, "flip.png", data.clone()).await;
    tamper(&app, &f, |b| b[header + 10] ^= 0x01);
    assert_problem(get(&f, &[]).await, 500, "integrity-error").await;
    assert_eq!(integrity_events(&app, &admin.token, 1).await, 1);

    // The same in a small file, whose bytes are read and opened together with its row.
    let small = png(4_000);
    let f = app.stored(&u.token, "small.png", small.clone()).await;
    assert_eq!(read_all(get(&f, &[]).await).await.unwrap(), small);
    tamper(&app, &f, |b| b[header + 100] ^= 0x01);
    assert_problem(get(&f, &[]).await, 500, "integrity-error").await;
    let r = get(&f, &[("range", "bytes=0-9")]).await;
    assert_problem(r, 500, "integrity-error").await;
    assert!(integrity_events(&app, &admin.token, 3).await >= 3);

    // A flipped byte in the blob's header is refused too, even for a range far from it.
    let f = app.stored(&u.token, "head.png", data.clone()).await;
    tamper(&app, &f, |b| b[2] ^= 0x01);
    let r = get(&f, &[("range", "bytes=200000-200009")]).await;
    problem(r, 500).await;

    // A flipped byte in a later segment: the transfer breaks off; the bytes before are genuine.
    // Segments are opened up to 4 at a time (256 KiB), so "later" means past the first 4.
    let big = png(1_400_000);
    let f = app.stored(&u.token, "late.png", big.clone()).await;
    tamper(&app, &f, |b| b[header + 18 * stride + 5] ^= 0x80);
    let got = read_all(get(&f, &[]).await).await;
    let got = got.expect_err("a tampered transfer must not complete");
    assert!(got.len() < big.len() && big.starts_with(&got));
    // A range inside the tampered segment is refused up front.
    let r = get(&f, &[("range", "bytes=1180000-1180010")]).await;
    problem(r, 500).await;

    // Truncated at a segment boundary (the final-segment flag is gone).
    let f = app.stored(&u.token, "cut.png", data.clone()).await;
    tamper(&app, &f, |b| b.truncate(header + 2 * stride));
    let r = get(&f, &[]).await;
    if r.status() == 200 {
        let got = read_all(r)
            .await
            .expect_err("a truncated blob must not complete");
        assert!(data.starts_with(&got));
    } else {
        problem(r, 500).await;
    }
    problem(get(&f, &[("range", "bytes=-5")]).await, 500).await;

    // Two segments swapped.
    let f = app.stored(&u.token, "swap.png", data.clone()).await;
    tamper(&app, &f, |b| {
        let (x, y) = b[header..header + 2 * stride].split_at_mut(stride);
        x.swap_with_slice(y);
    });
    problem(get(&f, &[]).await, 500).await;

    assert!(integrity_events(&app, &admin.token, 6).await >= 6);
    // `check --deep` finds all five.
    let out = app.cli(&["check", "--deep"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.matches("corrupt").count() + text.matches("size mismatch").count() >= 5,
        "{text}"
    );
}

#[tokio::test]
async fn key_rotation_keeps_every_file_readable() {
    let old_key = secret();
    let new_key = secret();
    let mut app = encrypted_app(&old_key).await;
    let u = app.user("rotator").await;
    let data = marked_text(100_000);
    let f = app.stored(&u.token, "r.txt", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    app.terminate();

    // New key, old key still listed: old files read, new files use the new key.
    let mut app = app
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", new_key.clone())
        .env("COFFER_ENCRYPTION_OLD_KEYS", old_key.clone())
        .spawn()
        .await;
    assert!(app.content_of(&u.token, id).await == data);
    let (code, stdout) = app.run_cli(&["rotate-key"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("re-wrapped 1"), "{stdout}");
    app.terminate();

    // After rotation the old key is no longer needed.
    let app = app
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", new_key)
        .spawn()
        .await;
    assert!(app.content_of(&u.token, id).await == data);
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn files_from_before_encryption_still_download_and_can_be_converted() {
    let mut app = TestApp::spawn().await;
    let u = app.user("legacy").await;
    let data = marked_text(150_000);
    let f = app.stored(&u.token, "old.txt", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    app.terminate();

    let key = secret();
    let app = app
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", key)
        .spawn()
        .await;
    assert!(app.content_of(&u.token, id).await == data);
    let fresh = app.stored(&u.token, "new.txt", data.clone()).await;
    // What a run that crashed after writing its sealed blob, before switching the row, left
    // under the name this run writes to.
    if app.bucket_prefix().is_none() {
        let shard = app.root.join("blobs").join(&id[..2]).join(&id[2..4]);
        std::fs::write(
            shard.join(format!("{id}.s")),
            b"a crashed run's sealed blob",
        )
        .unwrap();
    }
    let out = app.cli(&["encrypt-existing"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("encrypted 1 files"), "{stdout}");
    for blob in app.blob_files() {
        assert!(
            !contains(&app.read_blob(&blob), MARKER.as_bytes()),
            "{}",
            blob.display()
        );
    }
    for fid in [id, fresh["id"].as_str().unwrap()] {
        let r = app
            .download(&u.token, fid, &[("range", "bytes=70000-70099")])
            .await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[70_000..70_100]);
    }
    let v = app.file(id).as_user(&u).expect(200).await;
    assert_eq!(v["sha256"], f["sha256"]);
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

/// Everything a user does with files, with a name no log may repeat; the hashes of what was
/// stored.
async fn file_activity(app: &TestApp, token: &str, stem: &str) -> Vec<String> {
    let raw = app
        .stored(token, &format!("{stem}.txt"), marked_text(70_000))
        .await;
    let r = app
        .upload_multipart(token, &format!("{stem} (2).png"), png(5_000))
        .await;
    assert_eq!(r.status(), 201);
    let multi: serde_json::Value = r.json().await.unwrap();
    let refused = app
        .upload(token, &format!("{stem}.exe"), b"MZ\x90\x00".to_vec())
        .await;
    problem(refused, 415).await;
    let mut hashes = Vec::new();
    for f in [&raw, &multi] {
        let id = f["id"].as_str().unwrap();
        let etag = format!("\"{}\"", f["sha256"].as_str().unwrap());
        hashes.push(f["sha256"].as_str().unwrap().to_owned());
        assert_eq!(app.download(token, id, &[]).await.status(), 200);
        let unchanged = [("if-none-match", etag.as_str()), ("range", "bytes=0-9")];
        assert_eq!(app.download(token, id, &unchanged).await.status(), 304);
        let head = app.head(&format!("/api/v1/files/{id}/content"));
        assert_eq!(head.bearer(token).status().await, 200);
        assert_eq!(app.file(id).bearer(token).status().await, 200);
        let link = app.new_link(token, id, &json!({"expires_in": 60})).await;
        assert_eq!(app.get(link["url"].as_str().unwrap()).status().await, 200);
    }
    assert_eq!(app.pages("/api/v1/files", token, 1).await.len(), 2);
    for f in [&raw, &multi] {
        let id = f["id"].as_str().unwrap();
        assert_eq!(app.delete_file(id).bearer(token).status().await, 204);
    }
    hashes
}

#[tokio::test]
async fn logs_carry_no_file_hash_or_name_when_encrypted() {
    const STEM: &str = "zq-distinctive-name-7c41";
    for encrypted in [true, false] {
        // Debug level: stricter than what operators run.
        let mut builder = TestApp::builder().env("COFFER_LOG__LEVEL", "debug");
        if encrypted {
            builder = builder.env("COFFER_ENCRYPTION_KEY", secret());
        }
        let app = builder.spawn().await;
        let admin = app.admin("auditor").await;
        let u = app.user("namer").await;
        let hashes = file_activity(&app, &u.token, STEM).await;
        // The audit trail, inside the protected store, keeps the hashes.
        let trail = serde_json::to_string(&app.audit(&admin.token).await).unwrap();
        app.eventually("the log caught up", || {
            app.logs().matches("audit file.delete").count() == 2
        })
        .await;
        let logs = app.logs();
        for hash in &hashes {
            assert!(trail.contains(hash.as_str()), "hash not in the audit trail");
            // Without encryption the hash stays in the log (unchanged, and useful to match
            // uploads against lists of known-bad files); with it, the log never has it.
            assert_eq!(
                logs.contains(hash.as_str()),
                !encrypted,
                "hash in the log (encrypted: {encrypted})"
            );
        }
        // Names are never logged, encrypted or not.
        assert!(!logs.contains(STEM), "name in the log:\n{logs}");
        assert!(
            !logs.contains("zq-distinctive"),
            "part of a name in the log"
        );
    }
}
