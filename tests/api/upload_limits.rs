//! Upload limits: size (declared or streamed), the quota under concurrent uploads, a body that
//! stalls, a client that leaves, and the memory and threads a slow or huge upload may hold.

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::Body;

use crate::helpers::fixtures::{PNG_FRAME, PNG_TAIL, noise, png, png_head};
use crate::helpers::raw::{RawConn, upload_head};
use crate::helpers::{Refusal, TestApp, problem};

#[tokio::test]
async fn size_limit_exact_fits_one_more_is_413() {
    let app = TestApp::builder()
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "10000")
        .spawn()
        .await;
    let u = app.user("sizer").await;
    let exact = app.upload(&u.token, "exact.png", png(10_000)).await;
    assert_eq!(exact.status(), 201);
    let exact = app
        .upload_multipart(&u.token, "exact.png", png(10_000))
        .await;
    assert_eq!(exact.status(), 201);
    let before = app.blob_files().len();
    // Declared by Content-Length.
    problem(app.upload(&u.token, "big.png", png(10_001)).await, 413).await;
    let r = app.upload_multipart(&u.token, "big.png", png(10_001)).await;
    problem(r, 413).await;
    // Chunked, no length: caught while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        png(50_000).chunks(4096).map(|c| Ok(c.to_vec())).collect();
    app.post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "chunked.png")])
        .body(Body::wrap_stream(futures_util::stream::iter(chunks)))
        .problem(413)
        .await;
    app.eventually("temp files removed", || app.temp_files().is_empty())
        .await;
    assert_eq!(app.blob_files().len(), before);
}

#[tokio::test]
async fn content_length_alone_gets_413_before_the_body() {
    let app = TestApp::builder()
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "1000")
        .spawn()
        .await;
    let u = app.user("liar").await;
    // Announce a huge body, send none of it: the answer must come anyway.
    let mut c = RawConn::open(app.addr).await;
    c.send(&upload_head(&u.token, "a.png", 5_000_000_000, None))
        .await;
    let r = tokio::time::timeout(Duration::from_secs(5), c.response())
        .await
        .expect("no early answer");
    assert_eq!(r.status, 413);
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/problem+json"));
}

#[tokio::test]
async fn quota_holds_under_concurrent_uploads() {
    let app = TestApp::builder()
        .env("COFFER_LIMITS__USER_QUOTA_BYTES", "100000")
        .spawn()
        .await;
    let u = app.user("hoarder").await;
    let uploads = (0..12).map(|i| {
        let (app, token) = (&app, u.token.clone());
        async move { app.upload(&token, &format!("q{i}.png"), png(20_000)).await }
    });
    let mut ok = 0;
    for r in futures_util::future::join_all(uploads).await {
        match Refusal::of(r).await {
            r if r.status == 201 => ok += 1,
            r => assert_eq!(r, (413, "quota-exceeded", "")),
        }
    }
    // Near the limit a racing upload may be refused early (a finished upload counts as stored
    // a moment before its reservation is released), never late.
    assert!(
        (1..=5).contains(&ok),
        "{ok} x 20000 stored with a 100000 quota"
    );
    // Sequentially, exactly what fits is accepted.
    for i in ok..5 {
        app.stored(&u.token, &format!("fill{i}.png"), png(20_000))
            .await;
    }
    let over = app.upload(&u.token, "over.png", png(20_000)).await;
    assert_eq!(Refusal::of(over).await, (413, "quota-exceeded", ""));
    let list = app.files().as_user(&u).expect(200).await;
    let items = list["items"].as_array().unwrap();
    let total: u64 = items.iter().map(|f| f["size"].as_u64().unwrap()).sum();
    assert!(total <= 100_000);
    // Deleting frees the space again.
    let id = items[0]["id"].as_str().unwrap();
    assert_eq!(app.delete_file(id).as_user(&u).status().await, 204);
    app.stored(&u.token, "again.png", png(20_000)).await;
}

#[tokio::test]
async fn a_stalled_upload_is_cut_off_with_408_wherever_it_stalls() {
    let app = TestApp::builder()
        .env("COFFER_LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "1")
        .spawn()
        .await;
    let u = app.user("staller").await;
    for (row, content_type, partial) in [
        (
            "inside the file of a raw upload",
            "application/octet-stream",
            png(1000),
        ),
        (
            "in a multipart part before the file part",
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello".to_vec(),
        ),
    ] {
        let mut c = RawConn::open(app.addr).await;
        c.send(&upload_head(
            &u.token,
            "slow.png",
            100_000,
            Some(content_type),
        ))
        .await;
        c.send(&partial).await;
        let r = c.response().await;
        assert_eq!(r.status, 408, "{row}: {r:?}");
    }
    app.eventually("temp files removed", || app.temp_files().is_empty())
        .await;
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_nothing() {
    let app = TestApp::builder()
        .single_node("watches the local temp file of an upload in flight")
        .spawn()
        .await;
    let admin = app.admin("watcher").await;
    let u = app.user("quitter").await;
    let mut c = RawConn::open(app.addr).await;
    c.send(&upload_head(&u.token, "partial.png", 10_000_000, None))
        .await;
    c.send(&png(3_000_000)).await;
    app.eventually("a temp file exists while streaming", || {
        !app.temp_files().is_empty()
    })
    .await;
    drop(c);
    app.eventually("the temp file is gone", || app.temp_files().is_empty())
        .await;
    assert!(app.blob_files().is_empty());
    let list = app.files().as_user(&u).expect(200).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    // The abort is audited with the bytes received so far.
    let e = app
        .audited(&admin.token, "file.upload_rejected", |e| {
            e["event"] == "file.upload_rejected"
        })
        .await;
    assert_eq!(e["detail"]["reason"], "client_aborted");
    assert!(e["detail"]["bytes_received"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn trickling_uploads_hold_no_threads() {
    // Two blocking threads (the least allowed) and many uploads: if an upload held one while
    // waiting for bytes, or a batch waited for other blocking work, everything below would
    // hang.
    let app = TestApp::builder()
        .single_node("watches the local temp files of uploads in flight")
        .env("COFFER_SERVER__BLOCKING_THREADS", "2")
        .spawn()
        .await;
    let u = app.user("trickler").await;
    let mut held = Vec::new();
    for i in 0..12 {
        let mut c = RawConn::open(app.addr).await;
        let name = format!("slow{i}.png");
        c.send(&upload_head(&u.token, &name, 1_000_000, None)).await;
        // More than one batch, so each upload has been through the blocking pool.
        c.send(&png(300_000)).await;
        held.push(c);
    }
    app.eventually("every upload has its temp file", || {
        app.temp_files().len() == 12
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let me = client
        .get(app.url("/api/v1/users/me"))
        .bearer_auth(&u.token)
        .send()
        .await
        .expect("users/me answers while uploads stall");
    assert_eq!(me.status(), 200);
    let r = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let login = client
        .post(app.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "trickler", "password": u.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    // Uploads that do flow, more of them than threads, all complete meanwhile.
    let uploads = (0..8).map(|i| {
        client
            .post(app.url(&format!("/api/v1/files?filename=fast{i}.png")))
            .bearer_auth(&u.token)
            .body(png(2 * 1024 * 1024))
            .send()
    });
    for r in futures_util::future::join_all(uploads).await {
        assert_eq!(r.expect("a flowing upload completes").status(), 201);
    }
    drop(held);
    app.eventually("the stalled uploads leave nothing", || {
        app.temp_files().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_large_upload_streams_in_bounded_memory() {
    // 1 GiB through the whole pipeline (and back); the server's peak RSS stays far below it.
    let size = 1024 * 1024 * 1024usize;
    let app = TestApp::builder().single_node("measures one process's peak RSS; 1 GiB would be 3 GiB of Garage replicas on the shared disk")
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", size.to_string())
        .env("COFFER_LIMITS__USER_QUOTA_BYTES", "0")
        .spawn()
        .await;
    let u = app.user("bulk").await;
    // One PNG whose IDAT chunk is 1 GiB of noise (the PNG walker streams it through).
    let chunk = noise(1 << 20, 9);
    let mut head = png_head(size - PNG_FRAME);
    head.extend_from_slice(&chunk[head.len()..]);
    let mut tail = chunk[..chunk.len() - PNG_TAIL.len()].to_vec();
    tail.extend_from_slice(PNG_TAIL);
    let stream = futures_util::stream::iter((0..1024).map(move |i| {
        Ok::<_, std::io::Error>(match i {
            0 => head.clone(),
            1023 => tail.clone(),
            _ => chunk.clone(),
        })
    }));
    let f = app
        .post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "big.png")])
        .header("content-length", &size.to_string())
        .body(Body::wrap_stream(stream))
        .expect(201)
        .await;
    assert_eq!(f["size"], size);
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.pid().unwrap())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("peak RSS after a 1 GiB upload: {hwm_kib} KiB");
    // Memory must not follow the file's size. This is a debug build: the release figure (the
    // bench's, 48 MiB budget) was 25 MiB, while a debug server in CI, with the suite running
    // beside it, peaked at 48.0 MiB once. 64 MiB leaves room for that, still far below 1 GiB.
    assert!(
        hwm_kib < 64 * 1024,
        "peak RSS {hwm_kib} KiB for a {size}-byte upload"
    );
    // And it downloads back byte for byte.
    let r = app.download(&u.token, f["id"].as_str().unwrap(), &[]).await;
    let mut body = r.bytes_stream();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut n = 0usize;
    while let Some(c) = body.next().await {
        let c = c.unwrap();
        n += c.len();
        sha2::Digest::update(&mut hasher, &c);
    }
    assert_eq!(n, size);
    assert_eq!(
        hex::encode(sha2::Digest::finalize(hasher)),
        f["sha256"].as_str().unwrap()
    );
}
