//! Uploads: type policy, names, size limits, quotas, atomicity, concurrency.

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::Body;
use reqwest::multipart::{Form, Part};

use crate::helpers::fixtures::{elf, gif, jpeg, noise, pdf, png, sha256_hex};
use crate::helpers::raw::{RawConn, upload_head};
use crate::helpers::{Refusal, TestApp, file_form, problem};

#[tokio::test]
async fn valid_files_are_stored_with_their_detected_type_and_hash() {
    let app = TestApp::spawn().await;
    let u = app.user("uploader").await;
    for (name, bytes, ty) in [
        ("photo.png", png(5000), "image/png"),
        ("photo.JPG", jpeg(3000), "image/jpeg"),
        ("anim.gif", gif(100), "image/gif"),
        ("doc.pdf", pdf(20_000), "application/pdf"),
        (
            "notes.txt",
            "h\u{e9}llo w\u{f6}rld\n".as_bytes().to_vec(),
            "text/plain; charset=utf-8",
        ),
        ("empty.txt", Vec::new(), "text/plain; charset=utf-8"),
    ] {
        let r = app.upload(&u.token, name, bytes.clone()).await;
        assert_eq!(r.status(), 201, "{name}");
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let f: serde_json::Value = r.json().await.unwrap();
        assert_eq!(f["content_type"], ty, "{name}");
        assert_eq!(f["size"], bytes.len(), "{name}");
        assert_eq!(f["sha256"], sha256_hex(&bytes), "{name}");
        assert_eq!(f["filename"], name);
        assert!(f["expires_at"].is_null(), "{name}");
        let id = f["id"].as_str().unwrap();
        assert_eq!(loc, format!("/api/v1/files/{id}"), "{name}");
        // Stored under its UUID, never its name.
        let blobs = app.blob_files();
        assert!(blobs.iter().all(|p| !p.to_string_lossy().contains(name)));
    }
    // The same through multipart; the part's Content-Type and other fields are ignored.
    let part = Part::bytes(png(777))
        .file_name("multi.png")
        .mime_str("text/html")
        .unwrap();
    let form = Form::new().text("note", "ignored").part("file", part);
    let f = app
        .post("/api/v1/files")
        .as_user(&u)
        .multipart(form)
        .expect(201)
        .await;
    assert_eq!(f["content_type"], "image/png");
    assert_eq!(f["size"], 777);
}

#[tokio::test]
async fn wrong_types_are_415_and_leave_nothing() {
    let app = TestApp::spawn().await;
    let u = app.user("typist").await;
    let html = b"<html><script>alert(1)</script>".to_vec();
    let refused = [
        ("evil.exe", elf(100)),
        ("page.html", html.clone()),
        (
            "image.svg",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(),
        ),
        ("noext", png(100)),
        ("fake.jpg", png(100)),
        ("fake.jpg", [&html[..], b"</html>"].concat()),
        ("shell.jpg", b"<?php system($_GET['c']); ?>".to_vec()),
        ("fake.pdf", b"<?php echo 1; ?>".to_vec()),
        ("fake.pdf", png(100)),
        ("double.png.php", png(100)),
        ("empty.png", Vec::new()),
        ("png.txt", png(100)),
        ("nul.txt", b"text\0with nul".to_vec()),
        ("latin1.txt", vec![b'c', b'a', b'f', 0xe9]),
        ("elf.png", elf(100)),
    ];
    for (name, bytes) in refused {
        let raw = Refusal::of(app.upload(&u.token, name, bytes.clone()).await).await;
        assert_eq!(raw, (415, "unsupported-media-type", ""), "raw {name}");
        let multipart = Refusal::of(app.upload_multipart(&u.token, name, bytes).await).await;
        assert_eq!(
            multipart,
            (415, "unsupported-media-type", ""),
            "multipart {name}"
        );
    }
    assert!(app.blob_files().is_empty());
    assert!(app.temp_files().is_empty());
    // A polyglot that really is a PNG is stored as a PNG, whatever its name suggests.
    let poly = [png(64), html].concat();
    let f = app.stored(&u.token, "shell.php.png", poly).await;
    assert_eq!(f["content_type"], "image/png");
}

#[tokio::test]
async fn filenames_are_sanitised() {
    let app = TestApp::spawn().await;
    let u = app.user("namer").await;
    for (raw, want) in [
        ("../../etc/passwd.png", "passwd.png"),
        ("..\\..\\a.png", "a.png"),
        ("we\"i'r<d>.png", "weird.png"),
        ("line\r\nbreak.png", "linebreak.png"),
        ("nul\0.png", "nul.png"),
        ("evil\u{202E}gnp.png", "evilgnp.png"),
        ("...dots.png", "dots.png"),
        ("e\u{301}clair.png", "\u{e9}clair.png"),
        ("CAMERA.PNG", "CAMERA.PNG"),
    ] {
        // Control characters cannot travel in a well-formed multipart header; the query can.
        if !raw.contains(['\r', '\n', '\0']) {
            let f = app
                .post("/api/v1/files")
                .as_user(&u)
                .multipart(file_form(raw, png(50)))
                .expect(201)
                .await;
            assert_eq!(f["filename"], want, "multipart {raw:?}");
        }
        // The raw-body form agrees.
        let f = app.stored(&u.token, raw, png(50)).await;
        assert_eq!(f["filename"], want, "raw {raw:?}");
    }
    let long = format!("{}.png", "n".repeat(300));
    let f = app.stored(&u.token, &long, png(50)).await;
    let name = f["filename"].as_str().unwrap();
    assert_eq!(name.len(), 255);
    assert!(name.ends_with(".png"));
    // An empty ?filename= is a bad request; so is none.
    problem(app.upload(&u.token, "", png(10)).await, 400).await;
    let unnamed = app.post("/api/v1/files").as_user(&u).body(png(10));
    unnamed.problem(400).await;
}

#[tokio::test]
async fn multipart_needs_exactly_one_named_file_part() {
    let app = TestApp::spawn().await;
    let u = app.user("parts").await;
    let upload = || app.post("/api/v1/files").as_user(&u);
    let framed = |body: String| {
        upload()
            .header("content-type", "multipart/form-data; boundary=xyz")
            .body(body)
    };
    let named = |name: &str| Part::bytes(png(10)).file_name(name.to_owned());
    // A preamble or a part header longer than 16 KiB is refused, not buffered. The bodies
    // end just past the limit, so the server has read all of them when it answers (else the
    // unread rest could reset the connection before the client reads the 400).
    let refused = [
        (
            "two file parts",
            upload().multipart(
                Form::new()
                    .part("file", named("a.png"))
                    .part("file", named("b.png")),
            ),
            "",
        ),
        (
            "a file part without a name",
            upload().multipart(Form::new().part("file", Part::bytes(png(10)))),
            "",
        ),
        (
            "the file in another field",
            upload().multipart(Form::new().part("upload", named("a.png"))),
            "",
        ),
        ("garbage", framed("--xyz\r\ngarbage".into()), ""),
        (
            "a preamble over 16 KiB",
            framed("p".repeat(16 * 1024 + 1)),
            "too long",
        ),
        (
            "a part header over 16 KiB",
            framed(format!("--xyz\r\nX-Pad: {}", "h".repeat(16 * 1024))),
            "too long",
        ),
    ];
    for (row, req, says) in refused {
        let v = req.send().await;
        let v = problem(v, 400).await;
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{row}: {v}");
    }
    assert!(app.blob_files().is_empty());
    assert!(app.temp_files().is_empty());
}

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
async fn a_client_that_disconnects_leaves_nothing() {
    let app = TestApp::spawn().await;
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
async fn fifty_concurrent_uploads_all_succeed() {
    let app = TestApp::spawn().await;
    let u = app.user("busy").await;
    let uploads = (0..50).map(|i| {
        let (app, token) = (&app, u.token.clone());
        async move {
            let bytes = png(10_000 + i * 100);
            let f = app
                .stored(&token, &format!("c{i}.png"), bytes.clone())
                .await;
            assert_eq!(f["sha256"], sha256_hex(&bytes));
        }
    });
    futures_util::future::join_all(uploads).await;
    let list = app
        .files()
        .as_user(&u)
        .query(&[("limit", "100")])
        .expect(200)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 50);
    assert_eq!(app.blob_files().len(), 50);
    assert!(app.temp_files().is_empty());
    assert!(!app.logs().contains("database is locked"));
}

#[tokio::test]
async fn a_large_upload_streams_in_bounded_memory() {
    // 1 GiB through the whole pipeline (and back); the server's peak RSS stays far below it.
    let size = 1024 * 1024 * 1024usize;
    let app = TestApp::builder()
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", size.to_string())
        .env("COFFER_LIMITS__USER_QUOTA_BYTES", "0")
        .spawn()
        .await;
    let u = app.user("bulk").await;
    let chunk = noise(1 << 20, 9);
    let mut head = png(64);
    head.extend_from_slice(&chunk[64..]);
    let stream =
        futures_util::stream::iter((0..1024).map(move |i| {
            Ok::<_, std::io::Error>(if i == 0 { head.clone() } else { chunk.clone() })
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
    assert!(
        hwm_kib < 48 * 1024,
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

#[tokio::test]
async fn uploads_need_credentials() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/files?filename=a.png")
        .body(png(10))
        .problem(401)
        .await;
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
