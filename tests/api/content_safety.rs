//! Content safety through the real binary (API.md "Content safety"): uploads scanned by a real
//! clamd (the stack's, or one of the test's own when it must die), refused with nothing left
//! behind when infected (422), when clamd dies, errs or hangs (503), when too large to scan
//! (413, or stored unscanned as configured); polyglots and image bombs refused (415); images
//! stored without their metadata, with the same pixels and entropy-coded bytes, which exiftool
//! confirms on the stored bytes.

use std::time::{Duration, Instant};

use reqwest::{Body, Response};

use serde_json::Value;

use crate::helpers::clamd::OwnClamd;
use crate::helpers::fixtures::{noise, pdf, png, sha256_hex, tus_metadata};
use crate::helpers::images::{
    entropy_coded, exiftool, idat, jpeg_with_metadata, leaked_tags, pixels, png_with_metadata,
};
use crate::helpers::raw::{RawConn, upload_head};
use crate::helpers::s3::{S3Env, fresh_prefix};
use crate::helpers::stack::{self, eicar};
use crate::helpers::{TestApp, TestUser, assert_problem};

const SIGNATURE: &str = "Coffer.Test.EICAR.UNOFFICIAL";

/// Text that is no signature of anything, `len` bytes.
fn text(len: usize) -> Vec<u8> {
    let line = b"nothing to see here, just lines of text\n";
    line.iter().copied().cycle().take(len).collect()
}

/// A text file with the EICAR string in the middle.
fn infected(len: usize) -> Vec<u8> {
    let mut v = text(len);
    v.splice(len / 2..len / 2, eicar());
    v
}

/// Nothing of any refused upload is left: no row, no blob, no staging file.
async fn nothing_stored(app: &TestApp, u: &TestUser) {
    let list = app.files().as_user(u).expect(200).await;
    assert_eq!(list["items"], Value::Array(vec![]), "rows: {list}");
    if app
        .env()
        .iter()
        .all(|(k, _)| k != "COFFER_STORAGE__BACKEND")
    {
        assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    }
    assert!(app.temp_files().is_empty(), "{:?}", app.temp_files());
}

/// A 503 that says when to retry.
async fn unavailable(r: Response) -> Value {
    let retry = r.headers().get("retry-after").cloned();
    let body = assert_problem(r, 503, "service-unavailable").await;
    assert!(retry.is_some(), "no Retry-After on {body}");
    body
}

async fn infected_422(r: Response) {
    let body = assert_problem(r, 422, "infected").await;
    assert!(
        body["detail"].as_str().unwrap().contains(SIGNATURE),
        "{body}"
    );
}

// ---- The virus scanner ---------------------------------------------------------------------

#[tokio::test]
async fn eicar_split_across_two_tus_patches_is_refused_at_the_last() {
    let Some(stack) = stack::require("eicar_split_across_two_tus_patches_is_refused_at_the_last")
    else {
        return;
    };
    let app = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .spawn()
        .await;
    let u = app.user("tuscarrier").await;
    let e = eicar();
    // Each PATCH alone holds half the string; clamd sees the whole file at the last one.
    let body = [text(70_000), e.clone(), text(1_000)].concat();
    let cut = 70_000 + 30;
    let meta = tus_metadata("split.txt");
    let tus = |r: crate::helpers::request::Req| r.as_user(&u).header("tus-resumable", "1.0.0");
    let created = tus(app.post("/api/v1/uploads"))
        .header("upload-length", &body.len().to_string())
        .header("upload-metadata", &meta)
        .send()
        .await;
    assert_eq!(created.status(), 201);
    let loc = created.headers()["location"].to_str().unwrap().to_owned();
    let patch = |offset: usize, bytes: Vec<u8>| {
        tus(app.request(reqwest::Method::PATCH, &loc))
            .header("upload-offset", &offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes)
            .send()
    };
    assert_eq!(patch(0, body[..cut].to_vec()).await.status(), 204);
    infected_422(patch(cut, body[cut..].to_vec()).await).await;
    // The upload is over: nothing stored, its staged chunks gone.
    let head = tus(app.head(&loc)).send().await;
    assert_eq!(head.status(), 404);
    app.eventually("the staged chunks are deleted", || {
        app.blob_files().is_empty()
    })
    .await;
    nothing_stored(&app, &u).await;
}

#[tokio::test]
async fn eicar_is_refused_on_raw_and_multipart_uploads_and_nothing_is_stored() {
    let Some(stack) = stack::require("eicar_is_refused_on_raw_and_multipart_uploads") else {
        return;
    };
    // A quota that two leaked reservations would exhaust.
    let app = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .env("COFFER_LIMITS__USER_QUOTA_BYTES", "400000")
        .spawn()
        .await;
    let admin = app.admin("auditor").await;
    let u = app.user("carrier").await;

    infected_422(app.upload(&u.token, "a.txt", infected(150_000)).await).await;
    infected_422(
        app.upload_multipart(&u.token, "b.txt", infected(150_000))
            .await,
    )
    .await;
    // The string split across two chunks of a streamed body sent apart in time.
    let e = eicar();
    let (first, second) = (
        [text(70_000), e[..30].to_vec()].concat(),
        [e[30..].to_vec(), text(1000)].concat(),
    );
    let stream = futures_util::stream::unfold(0, move |i| {
        let (first, second) = (first.clone(), second.clone());
        async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((Ok(second), 2))
                }
                _ => None,
            }
        }
    });
    let r = app
        .post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "split.txt")])
        .body(Body::wrap_stream(stream))
        .send()
        .await;
    infected_422(r).await;
    nothing_stored(&app, &u).await;
    let audited = app
        .audited(&admin.token, "file.infected", |e| {
            e["event"] == "file.infected"
        })
        .await;
    assert_eq!(audited["detail"]["signature"], SIGNATURE, "{audited}");
    assert_eq!(audited["actor_id"], u.id.as_str(), "{audited}");

    // Clean files pass, marked scanned; the refusals released their reservations.
    let f = app.stored(&u.token, "clean.txt", text(300_000)).await;
    let scanned = f["scanned_at"].as_str().expect("scanned_at set");
    assert!(scanned.ends_with('Z'), "{f}");
    let again = app
        .file(f["id"].as_str().unwrap())
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(again["scanned_at"], f["scanned_at"]);
    let m = app.upload_multipart(&u.token, "m.png", png(20_000)).await;
    assert_eq!(m.status(), 201);
    assert!(m.json::<Value>().await.unwrap()["scanned_at"].is_string());
}

#[tokio::test]
async fn with_encryption_at_rest_clamd_and_the_walkers_see_the_plaintext() {
    let Some(stack) =
        stack::require("with_encryption_at_rest_clamd_and_the_walkers_see_the_plaintext")
    else {
        return;
    };
    let app = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .env("COFFER_ENCRYPTION_KEY", crate::helpers::secret())
        .spawn()
        .await;
    let u = app.user("sealed").await;
    infected_422(app.upload(&u.token, "e.txt", infected(300_000)).await).await;
    nothing_stored(&app, &u).await;
    let (jpeg, clean) = jpeg_with_metadata(1);
    let f = app.stored(&u.token, "photo.jpg", jpeg).await;
    let id = f["id"].as_str().unwrap();
    assert!(f["scanned_at"].is_string());
    assert_eq!(f["sha256"], sha256_hex(&clean));
    assert!(app.content_of(&u.token, id).await == clean);
    let sealed = app.read_blob(&app.blob_of(id));
    assert!(
        !sealed.windows(16).any(|w| w == &clean[..16]),
        "the blob is sealed"
    );
}

#[tokio::test]
async fn clamd_killed_mid_upload_answers_503_and_stores_nothing() {
    let Some(mut clamd) = OwnClamd::start("clamd_killed_mid_upload_answers_503") else {
        return;
    };
    let app = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", clamd.addr())
        .env("COFFER_SCAN__TIMEOUT_SECS", "5")
        .spawn()
        .await;
    let admin = app.admin("watcher").await;
    let u = app.user("unlucky").await;
    assert_eq!(app.get("/readyz").status().await, 200);
    // Prove it scans first.
    infected_422(app.upload(&u.token, "e.txt", infected(10_000)).await).await;

    // A raw connection: the answer comes while the body is still unfinished, and a client
    // library that keeps writing would see the connection close instead of reading it.
    let mut c = RawConn::open(app.addr).await;
    c.send(&upload_head(&u.token, "big.txt", 8 << 20, None))
        .await;
    // 2 MiB in: clamd has been fed (the pipeline hands over 64-256 KiB batches).
    for _ in 0..8 {
        c.send(&text(256 * 1024)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    clamd.kill();
    let killed = Instant::now();
    // One more batch: feeding it to clamd fails.
    c.send(&text(256 * 1024)).await;
    let r = c.response().await;
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["type"], "urn:coffer:problem:service-unavailable");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    nothing_stored(&app, &u).await;
    let e = app
        .audited(&admin.token, "scanner_unavailable", |e| {
            e["detail"]["reason"] == "scanner_unavailable"
        })
        .await;
    assert_eq!(e["event"], "file.upload_rejected");
    // clamd gone: not ready, and every upload is refused before a byte is stored.
    assert_eq!(app.get("/readyz").status().await, 503);
    unavailable(app.upload(&u.token, "later.txt", text(100)).await).await;
    nothing_stored(&app, &u).await;
}

#[tokio::test]
async fn a_clamd_that_never_answers_makes_uploads_503_within_the_timeout() {
    let Some(own) =
        OwnClamd::start("a_clamd_that_never_answers_makes_uploads_503_within_the_timeout")
    else {
        return;
    };
    own.freeze();
    let app = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", own.addr())
        .env("COFFER_SCAN__TIMEOUT_SECS", "1")
        .unready()
        .spawn()
        .await;
    let u = app.user("waiting").await;
    assert_eq!(app.get("/readyz").status().await, 503);
    // Small: it all fits in the socket buffers, the wait is for the verdict.
    let started = Instant::now();
    unavailable(app.upload(&u.token, "small.txt", text(1000)).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    nothing_stored(&app, &u).await;
    // Large: the writes to clamd stall once the buffers fill, so the upload stalls too (a raw
    // connection: the answer comes before the body ends).
    let started = Instant::now();
    let mut c = RawConn::open(app.addr).await;
    c.send(&upload_head(&u.token, "large.txt", 64 << 20, None))
        .await;
    let mut sent = 0;
    while sent < 64 << 20
        && c.send_while_taken(&text(256 * 1024), Duration::from_millis(500))
            .await
    {
        sent += 256 * 1024;
    }
    assert!(
        sent < 64 << 20,
        "the server took the whole body without clamd reading it"
    );
    let r = c.response().await;
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "a frozen clamd stalled the upload after {sent} bytes; 503 after {:?}",
        started.elapsed()
    );
    nothing_stored(&app, &u).await;
}

#[tokio::test]
async fn an_unreachable_clamd_fails_closed_unless_configured_to_fail_open() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:{}", dir.path().join("no-clamd.sock").display());
    let closed = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &nowhere)
        .unready()
        .spawn()
        .await;
    let u = closed.user("closed").await;
    assert_eq!(closed.get("/readyz").status().await, 503);
    unavailable(closed.upload(&u.token, "a.txt", text(100)).await).await;
    unavailable(closed.upload_multipart(&u.token, "a.png", png(5000)).await).await;
    nothing_stored(&closed, &u).await;

    let open = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &nowhere)
        .env("COFFER_SCAN__FAIL_OPEN", "true")
        .unready()
        .spawn()
        .await;
    let admin = open.admin("auditor").await;
    let u = open.user("open").await;
    let f = open.stored(&u.token, "a.txt", text(100)).await;
    assert_eq!(f["scanned_at"], Value::Null, "{f}");
    let e = open
        .audited(&admin.token, "file.unscanned", |e| {
            e["event"] == "file.unscanned"
        })
        .await;
    assert_eq!(e["detail"]["reason"], "scanner_unavailable");
    assert_eq!(e["subject_id"], f["id"]);
}

#[tokio::test]
async fn files_too_large_to_scan_are_413_unless_configured_to_be_stored_unscanned() {
    let Some(stack) = stack::require("files_too_large_to_scan_are_413") else {
        return;
    };
    let strict = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .env("COFFER_SCAN__MAX_BYTES", "100000")
        .spawn()
        .await;
    let u = strict.user("big").await;
    assert_problem(
        strict.upload(&u.token, "big.txt", text(300_000)).await,
        413,
        "payload-too-large",
    )
    .await;
    assert_problem(
        strict
            .upload_multipart(&u.token, "big.txt", text(300_000))
            .await,
        413,
        "payload-too-large",
    )
    .await;
    // A resumable upload announcing more is refused at its creation, before any byte.
    let tus_create = |app: &TestApp, u: &TestUser, len: &str| {
        app.post("/api/v1/uploads")
            .as_user(u)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", len)
            .header("upload-metadata", &tus_metadata("big.txt"))
            .send()
    };
    assert_problem(
        tus_create(&strict, &u, "300000").await,
        413,
        "payload-too-large",
    )
    .await;
    nothing_stored(&strict, &u).await;
    // At the limit it is scanned.
    let f = strict.stored(&u.token, "fits.txt", text(100_000)).await;
    assert!(f["scanned_at"].is_string());

    let lenient = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .env("COFFER_SCAN__MAX_BYTES", "100000")
        .env("COFFER_SCAN__SKIP_LARGER", "true")
        .spawn()
        .await;
    let admin = lenient.admin("auditor").await;
    let u = lenient.user("big").await;
    assert_eq!(tus_create(&lenient, &u, "300000").await.status(), 201);
    let f = lenient.stored(&u.token, "big.txt", text(300_000)).await;
    assert_eq!(f["scanned_at"], Value::Null, "{f}");
    assert_eq!(f["size"], 300_000);
    let e = lenient
        .audited(&admin.token, "file.unscanned", |e| {
            e["event"] == "file.unscanned"
        })
        .await;
    assert_eq!(e["detail"]["reason"], "too_large");
    // Small files are still scanned (and refused when infected).
    infected_422(lenient.upload(&u.token, "e.txt", infected(1000)).await).await;
}

// ---- Polyglots and image bombs -------------------------------------------------------------

#[tokio::test]
async fn polyglots_are_refused_and_text_is_exempt() {
    let app = TestApp::spawn().await;
    let u = app.user("crafty").await;
    let zip_tail = b"PK\x05\x06\0\0\0\0\x01\0\x01\0\x2e\0\0\0\x10\0\0\0\0\0".to_vec();
    let cases: [(&str, Vec<u8>); 5] = [
        ("zip.png", [png(5000), zip_tail.clone()].concat()),
        (
            "script.png",
            [png(5000), b"<SCRIPT>alert(1)</script>".to_vec()].concat(),
        ),
        (
            "page.pdf",
            [pdf(3000), b"<!DOCTYPE html><p>".to_vec()].concat(),
        ),
        (
            "svg.pdf",
            [b"%PDF-1.7\n<svg onload=alert(1)>".to_vec(), noise(9000, 4)].concat(),
        ),
        (
            "php.png",
            [png(200), b"<?php system($_GET['c']); ?>".to_vec()].concat(),
        ),
    ];
    for (name, body) in cases {
        let r = app.upload(&u.token, name, body.clone()).await;
        let p = assert_problem(r, 415, "polyglot").await;
        assert!(
            p["detail"].as_str().unwrap().contains("polyglot"),
            "{name}: {p}"
        );
        let r = app.upload_multipart(&u.token, name, body).await;
        assert_problem(r, 415, "polyglot").await;
    }
    nothing_stored(&app, &u).await;
    // Text is served as text/plain with nosniff: markup in it is not a polyglot.
    let f = app
        .stored(
            &u.token,
            "page.txt",
            b"<html><script>hi</script>\n".to_vec(),
        )
        .await;
    assert_eq!(f["content_type"], "text/plain; charset=utf-8");
    // Configured off, the same PNG is stored.
    let lax = TestApp::builder()
        .env("COFFER_UPLOADS__REJECT_POLYGLOTS", "false")
        .spawn()
        .await;
    let u = lax.user("lax").await;
    lax.stored(&u.token, "zip.png", [png(5000), zip_tail].concat())
        .await;
}

#[tokio::test]
async fn image_bombs_and_unreadable_images_are_refused_undecoded() {
    let app = TestApp::builder()
        .env("COFFER_UPLOADS__MAX_IMAGE_PIXELS", "1000000")
        .spawn()
        .await;
    let u = app.user("bomber").await;
    // A 1-pixel PNG whose IHDR says 2000x2000 (one 4 MB frame) and a JPEG that says 1001x1000.
    let mut big_png = png(2000);
    big_png[16..24].copy_from_slice(&[0, 0, 7, 208, 0, 0, 7, 208]);
    let (mut big_jpeg, _) = jpeg_with_metadata(1);
    let sof = big_jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    big_jpeg[sof + 5..sof + 9].copy_from_slice(&[0x03, 0xE8, 0x03, 0xE9]);
    let cut_png = png(5000)[..3000].to_vec();
    for (name, body, says) in [
        ("bomb.png", big_png, "2000x2000"),
        ("bomb.jpg", big_jpeg, "1001x1000"),
        ("cut.png", cut_png, "cannot be read"),
    ] {
        let p = assert_problem(
            app.upload(&u.token, name, body).await,
            415,
            "unsupported-media-type",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(says), "{name}: {p}");
    }
    nothing_stored(&app, &u).await;
    // At the limit is fine.
    let mut fits = png(2000);
    fits[16..24].copy_from_slice(&[0, 0, 3, 232, 0, 0, 3, 232]);
    app.stored(&u.token, "fits.png", fits).await;
}

// ---- Metadata stripping ---------------------------------------------------------------------

/// exiftool's tags of file `id`'s blob as stored (on disk or in the bucket), through a copy
/// named like `name` (exiftool goes by the extension); `None` when exiftool is missing.
fn exiftool_on_blob(app: &TestApp, id: &str, name: &str) -> Option<serde_json::Map<String, Value>> {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    let copy = tempfile::Builder::new()
        .suffix(&format!(".{ext}"))
        .tempfile()
        .unwrap();
    std::fs::write(copy.path(), app.read_blob(&app.blob_of(id))).unwrap();
    exiftool(copy.path())
}

/// Upload `dirty` both ways; check the stored bytes against `clean` (what stripping leaves),
/// `size` and `sha256` against the stored bytes, pixels against the original's, and exiftool
/// on the blob itself.
async fn strips(app: &TestApp, u: &TestUser, name: &str, dirty: &[u8], clean: &[u8]) {
    for multipart in [false, true] {
        let r = if multipart {
            app.upload_multipart(&u.token, name, dirty.to_vec()).await
        } else {
            app.upload(&u.token, name, dirty.to_vec()).await
        };
        assert_eq!(r.status(), 201, "{name}");
        let f: Value = r.json().await.unwrap();
        let id = f["id"].as_str().unwrap();
        let stored = app.content_of(&u.token, id).await;
        assert!(stored.len() < dirty.len(), "{name}: nothing was stripped");
        assert_eq!(f["size"], stored.len(), "{name}: size of the stored bytes");
        assert_eq!(
            f["sha256"],
            sha256_hex(&stored),
            "{name}: sha256 of the stored bytes"
        );
        assert!(
            stored == clean,
            "{name}: stored bytes differ from the clean encoding"
        );
        assert_eq!(
            pixels(&stored),
            pixels(dirty),
            "{name}: decoded pixels differ"
        );
        // exiftool on the bytes as stored (no encryption here), on disk or in the bucket.
        assert_eq!(app.read_blob(&app.blob_of(id)), stored);
        let Some(tags) = exiftool_on_blob(app, id, name) else {
            eprintln!("skipped: exiftool not installed (Debian libimage-exiftool-perl)");
            continue;
        };
        let leaked = leaked_tags(&tags);
        assert!(
            leaked.is_empty(),
            "{name}: exiftool finds {leaked:?} in {tags:?}"
        );
        assert!(
            !tags.keys().any(|k| k.starts_with("ExifTool:Warning")),
            "{name}: {tags:?}"
        );
    }
}

#[tokio::test]
async fn jpeg_and_png_metadata_is_stripped_keeping_pixels_and_coded_bytes() {
    let app = TestApp::spawn().await;
    let u = app.user("photographer").await;
    let (jpeg, clean_jpeg) = jpeg_with_metadata(1);
    // The test images do carry what must go.
    for dirty in [&jpeg, &png_with_metadata().0] {
        for needle in [&b"SecretCam"[..], b"Secret Author", b"Secret Street"] {
            assert!(dirty.windows(needle.len()).any(|w| w == needle));
        }
    }
    strips(&app, &u, "photo.jpg", &jpeg, &clean_jpeg).await;
    let (png_dirty, png_clean) = png_with_metadata();
    strips(&app, &u, "shot.png", &png_dirty, &png_clean).await;
    assert_eq!(idat(&png_dirty), idat(&png_clean));

    // Orientation other than 1 stays, as the only tag; the entropy-coded bytes are the same.
    let (rotated, clean) = jpeg_with_metadata(6);
    let f = app.stored(&u.token, "rotated.jpg", rotated.clone()).await;
    let stored = app.content_of(&u.token, f["id"].as_str().unwrap()).await;
    assert_eq!(entropy_coded(&stored), entropy_coded(&clean));
    assert_eq!(pixels(&stored), pixels(&rotated));
    assert!(!stored.windows(9).any(|w| w == b"SecretCam"));
    if let Some(tags) = exiftool_on_blob(&app, f["id"].as_str().unwrap(), "rotated.jpg") {
        assert!(leaked_tags(&tags).is_empty(), "{tags:?}");
        assert_eq!(tags["EXIF:Orientation"], "Rotate 90 CW", "{tags:?}");
    }

    // Configured off: stored as sent.
    let keep = TestApp::builder()
        .env("COFFER_UPLOADS__STRIP_METADATA", "false")
        .spawn()
        .await;
    let u = keep.user("archivist").await;
    let f = keep.stored(&u.token, "photo.jpg", jpeg.clone()).await;
    assert_eq!(
        keep.content_of(&u.token, f["id"].as_str().unwrap()).await,
        jpeg
    );
    assert_eq!(f["sha256"], sha256_hex(&jpeg));
}

// ---- On PostgreSQL and S3 -------------------------------------------------------------------

#[tokio::test]
async fn content_safety_on_postgres_and_s3() {
    let Some(stack) = stack::require("content_safety_on_postgres_and_s3") else {
        return;
    };
    let s3 = S3Env::of(&stack);
    let prefix = fresh_prefix();
    let app = TestApp::builder()
        .postgres(&stack)
        .s3(&s3, &prefix)
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .spawn()
        .await;
    let u = app.user("cloudy").await;
    infected_422(app.upload(&u.token, "e.txt", infected(200_000)).await).await;
    infected_422(
        app.upload_multipart(&u.token, "e.txt", infected(200_000))
            .await,
    )
    .await;
    let zip = [
        png(5000),
        b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
    ]
    .concat();
    assert_problem(app.upload(&u.token, "z.png", zip).await, 415, "polyglot").await;
    nothing_stored(&app, &u).await;
    assert_eq!(s3.keys(&prefix).await, Vec::<String>::new());
    assert_eq!(
        s3.multipart_uploads(&prefix).unwrap_or_default(),
        Vec::<String>::new()
    );
    let db = app.database.as_ref().unwrap();
    assert_eq!(db.psql("SELECT count(*) FROM files"), "0");

    let (jpeg, clean) = jpeg_with_metadata(1);
    let f = app.stored(&u.token, "photo.jpg", jpeg).await;
    let id = f["id"].as_str().unwrap();
    assert!(f["scanned_at"].is_string(), "{f}");
    let stored = app.content_of(&u.token, id).await;
    assert!(stored == clean);
    assert_eq!(f["sha256"], sha256_hex(&clean));
    assert_eq!(f["size"], clean.len());
    let keys = s3.keys(&prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        s3.object(&keys[0]).await == clean,
        "the object holds the stripped bytes"
    );
    assert_eq!(
        db.psql(&format!(
            "SELECT scanned_at IS NOT NULL FROM files WHERE id = '{id}'"
        )),
        "t"
    );
}

// ---- Measurements (not tests) ----------------------------------------------------------------

/// A 64 MiB baseline JPEG: a real encoder's headers with EXIF, XMP and a comment, then 64 MiB
/// of entropy-coded-like data (pseudo-random, every FF stuffed with 00, as a camera writes
/// it), then EOI. The walker does not decode, so only the byte statistics matter.
fn big_jpeg(len: usize) -> Vec<u8> {
    let (dirty, _) = jpeg_with_metadata(1);
    let sos = dirty.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let header = usize::from(u16::from_be_bytes([dirty[sos + 2], dirty[sos + 3]]));
    let mut j = dirty[..sos + 2 + header].to_vec();
    for b in noise(len, 11) {
        j.push(b);
        if b == 0xFF {
            j.push(0);
        }
    }
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn timed_upload(app: &TestApp, token: &str, name: &str, body: &[u8]) -> Duration {
    let started = Instant::now();
    let r = app.upload(token, name, body.to_vec()).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 201, "{name}");
    let f: Value = r.json().await.unwrap();
    let gone = app
        .delete_file(f["id"].as_str().unwrap())
        .bearer(token)
        .status()
        .await;
    assert_eq!(gone, 204);
    took
}

/// Upload throughput of a 64 MiB JPEG with stripping on and off, and the latency clamd adds
/// to a 20 MiB upload next to clamd's own time for the same bytes. Run against a release
/// build and the stack:
/// `cargo build --release && . target/stack/env && COFFER_TEST_BIN=target/release/coffer
///  cargo test --test api measure_ -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement to report, not a test"]
async fn measure_stripping_throughput_and_scan_latency() {
    let rounds = 7;
    let big = big_jpeg(64 << 20);
    let server = |strip: bool| {
        TestApp::builder()
            .env(
                "COFFER_LIMITS__MAX_UPLOAD_BYTES",
                (128u64 << 20).to_string(),
            )
            .env("COFFER_LIMITS__USER_QUOTA_BYTES", "0")
            .env("COFFER_LOG__LEVEL", "warn")
            .env("COFFER_UPLOADS__STRIP_METADATA", strip.to_string())
    };
    let on = server(true).spawn().await;
    let off = server(false).spawn().await;
    let (u_on, u_off) = (on.user("strip_on").await, off.user("strip_off").await);
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        t_on.push(timed_upload(&on, &u_on.token, "big.jpg", &big).await);
        t_off.push(timed_upload(&off, &u_off.token, "big.jpg", &big).await);
    }
    let mib = big.len() as f64 / f64::from(1 << 20);
    let (m_on, m_off) = (median(t_on), median(t_off));
    eprintln!(
        "64 MiB JPEG upload, median of {rounds}: strip on {m_on:?} ({:.0} MiB/s), off {m_off:?} ({:.0} MiB/s), ratio on/off {:.3}",
        mib / m_on.as_secs_f64(),
        mib / m_off.as_secs_f64(),
        m_off.as_secs_f64() / m_on.as_secs_f64()
    );
    drop((on, off));

    let Some(stack) = stack::require("measure_stripping_throughput_and_scan_latency") else {
        return;
    };
    let body = text(20 << 20);
    let scanning = server(true)
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .spawn()
        .await;
    let plain = server(true).spawn().await;
    let (u_s, u_p) = (
        scanning.user("scanned").await,
        plain.user("unscanned").await,
    );
    let (mut t_s, mut t_p, mut t_c, mut t_after) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        t_s.push(timed_upload(&scanning, &u_s.token, "b.txt", &body).await);
        t_p.push(timed_upload(&plain, &u_p.token, "b.txt", &body).await);
        // clamd alone: the same bytes straight to its socket, and its answer after the end.
        let (total, after) = direct_scan(&stack, &body);
        t_c.push(total);
        t_after.push(after);
    }
    let (s, p, c, after) = (median(t_s), median(t_p), median(t_c), median(t_after));
    let added = s.saturating_sub(p);
    // Two floors: clamd's whole scan of the bytes sent straight to it (receiving them is work
    // clamd does, on the same cores), and the stricter one, only its answer's wait after the
    // end of the stream (as if receiving cost nothing).
    let over = |floor: Duration| (added.as_secs_f64() - floor.as_secs_f64()) / floor.as_secs_f64();
    eprintln!(
        "20 MiB upload, median of {rounds}: with clamd {s:?}, without {p:?}, added {added:?}; \
         clamd alone {c:?} (its answer {after:?} after the stream ended); coffer's overhead over \
         clamd's own scan time: {:.1}% (over the answer's wait alone: {:.1}%)",
        over(c) * 100.0,
        over(after) * 100.0
    );
}

/// INSTREAM straight to clamd: the whole time, and the wait for the answer after the end.
fn direct_scan(stack: &stack::Stack, bytes: &[u8]) -> (Duration, Duration) {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(stack.clamd_socket()).unwrap();
    s.write_all(b"zINSTREAM\0").unwrap();
    for chunk in bytes.chunks(64 * 1024) {
        s.write_all(&u32::try_from(chunk.len()).unwrap().to_be_bytes())
            .unwrap();
        s.write_all(chunk).unwrap();
    }
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let ended = Instant::now();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"stream: OK"), "{answer:?}");
    (started.elapsed(), ended.elapsed())
}
