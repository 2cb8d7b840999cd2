//! Uploads: type policy, names, size limits, quotas, atomicity, concurrency.

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::{Body, Method};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::fixtures::{self, elf, gif, jpeg, noise, pdf, png, sha256_hex};
use crate::helpers::{TestApp, problem};

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
        let f: Value = r.json().await.unwrap();
        assert_eq!(f["content_type"], ty, "{name}");
        assert_eq!(f["size"], bytes.len(), "{name}");
        assert_eq!(f["sha256"], sha256_hex(&bytes), "{name}");
        assert_eq!(f["filename"], name);
        assert!(f["expires_at"].is_null());
        assert_eq!(loc, format!("/api/v1/files/{}", f["id"].as_str().unwrap()));
        // Stored under its UUID, never its name.
        assert!(
            app.blob_files()
                .iter()
                .all(|p| !p.to_string_lossy().contains(name))
        );
    }
    // The same through multipart; the part's Content-Type is ignored.
    let part = reqwest::multipart::Part::bytes(png(777))
        .file_name("multi.png")
        .mime_str("text/html")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("note", "ignored")
        .part("file", part);
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["content_type"], "image/png");
    assert_eq!(f["size"], 777);
}

#[tokio::test]
async fn wrong_types_are_415_and_leave_nothing() {
    let app = TestApp::spawn().await;
    let u = app.user("typist").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("evil.exe", elf(100)),
        ("page.html", b"<html><script>alert(1)</script>".to_vec()),
        (
            "image.svg",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(),
        ),
        ("noext", png(100)),
        ("fake.jpg", png(100)),
        (
            "fake.jpg",
            b"<html><script>alert(1)</script></html>".to_vec(),
        ),
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
    for (name, bytes) in cases {
        let v = problem(app.upload(&u.token, name, bytes.clone()).await, 415).await;
        assert!(v["detail"].is_string(), "{name}");
        problem(app.upload_multipart(&u.token, name, bytes).await, 415).await;
    }
    assert!(app.blob_files().is_empty());
    assert!(app.temp_files().is_empty());
    // A polyglot that really is a PNG is stored as a PNG, whatever its name suggests.
    let mut poly = png(64);
    poly.extend_from_slice(b"<html><script>alert(1)</script>");
    let f = app.stored(&u.token, "shell.php.png", poly).await;
    assert_eq!(f["content_type"], "image/png");
}

#[tokio::test]
async fn filenames_are_sanitised() {
    let app = TestApp::spawn().await;
    let u = app.user("namer").await;
    let long = format!("{}.png", "n".repeat(300));
    for (raw, want) in [
        ("../../etc/passwd.png", "passwd.png".to_owned()),
        ("..\\..\\a.png", "a.png".to_owned()),
        ("we\"i'r<d>.png", "weird.png".to_owned()),
        ("line\r\nbreak.png", "linebreak.png".to_owned()),
        ("nul\0.png", "nul.png".to_owned()),
        ("evil\u{202E}gnp.png", "evilgnp.png".to_owned()),
        ("...dots.png", "dots.png".to_owned()),
        ("e\u{301}clair.png", "\u{e9}clair.png".to_owned()),
        ("CAMERA.PNG", "CAMERA.PNG".to_owned()),
    ] {
        // Control characters cannot travel in a well-formed multipart header; the query can.
        if !raw.contains(['\r', '\n', '\0']) {
            let part = reqwest::multipart::Part::bytes(png(50)).file_name(raw.to_owned());
            let form = reqwest::multipart::Form::new().part("file", part);
            let r = app
                .authed(Method::POST, "/api/v1/files", &u.token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{raw:?}");
            let f: Value = r.json().await.unwrap();
            assert_eq!(f["filename"], want.as_str(), "{raw:?}");
        }
        // The raw-body form agrees.
        let f = app.stored(&u.token, raw, png(50)).await;
        assert_eq!(f["filename"], want.as_str(), "raw {raw:?}");
    }
    let f = app.stored(&u.token, &long, png(50)).await;
    let name = f["filename"].as_str().unwrap();
    assert_eq!(name.len(), 255);
    assert!(name.ends_with(".png"));
    // An empty ?filename= is a bad request; so is none.
    problem(app.upload(&u.token, "", png(10)).await, 400).await;
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .body(png(10))
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
}

#[tokio::test]
async fn multipart_needs_exactly_one_named_file_part() {
    let app = TestApp::spawn().await;
    let u = app.user("parts").await;
    let two = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(10)).file_name("a.png"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(10)).file_name("b.png"),
        );
    problem(
        app.authed(Method::POST, "/api/v1/files", &u.token)
            .multipart(two)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let unnamed =
        reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(png(10)));
    problem(
        app.authed(Method::POST, "/api/v1/files", &u.token)
            .multipart(unnamed)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let other = reqwest::multipart::Form::new().part(
        "upload",
        reqwest::multipart::Part::bytes(png(10)).file_name("a.png"),
    );
    problem(
        app.authed(Method::POST, "/api/v1/files", &u.token)
            .multipart(other)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz\r\ngarbage")
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    // A preamble or a part header longer than 16 KiB is refused, not buffered. The bodies
    // end just past the limit, so the server has read all of them when it answers (else the
    // unread rest could reset the connection before the client reads the 400).
    let long_preamble = "p".repeat(16 * 1024 + 1);
    let long_header = format!("--xyz\r\nX-Pad: {}", "h".repeat(16 * 1024));
    for body in [long_preamble, long_header] {
        let r = app
            .authed(Method::POST, "/api/v1/files", &u.token)
            .header("content-type", "multipart/form-data; boundary=xyz")
            .body(body)
            .send()
            .await
            .unwrap();
        let v = problem(r, 400).await;
        assert!(v["detail"].as_str().unwrap().contains("too long"), "{v}");
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
    assert_eq!(
        app.upload(&u.token, "exact.png", png(10_000))
            .await
            .status(),
        201
    );
    assert_eq!(
        app.upload_multipart(&u.token, "exact.png", png(10_000))
            .await
            .status(),
        201
    );
    let before = app.blob_files().len();
    // Declared by Content-Length.
    problem(app.upload(&u.token, "big.png", png(10_001)).await, 413).await;
    problem(
        app.upload_multipart(&u.token, "big.png", png(10_001)).await,
        413,
    )
    .await;
    // Chunked, no length: caught while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        png(50_000).chunks(4096).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .query(&[("filename", "chunked.png")])
        .body(Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    problem(r, 413).await;
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
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/files?filename=a.png HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 5000000000\r\n\r\n",
        u.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no early answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("application/problem+json"));
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
    let results = futures_util::future::join_all(uploads).await;
    let mut ok = 0;
    for r in results {
        match r.status().as_u16() {
            201 => ok += 1,
            413 => {
                let v = problem(r, 413).await;
                assert!(
                    v["type"].as_str().unwrap().ends_with("quota-exceeded"),
                    "{v}"
                );
            }
            s => panic!("unexpected {s}"),
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
        let r = app
            .upload(&u.token, &format!("fill{i}.png"), png(20_000))
            .await;
        assert_eq!(r.status(), 201);
    }
    problem(app.upload(&u.token, "over.png", png(20_000)).await, 413).await;
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: u64 = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    assert!(total <= 100_000);
    // Deleting frees the space again.
    let id = list["items"][0]["id"].as_str().unwrap();
    assert_eq!(
        app.authed(Method::DELETE, &format!("/api/v1/files/{id}"), &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        app.upload(&u.token, "again.png", png(20_000))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin("watcher").await;
    let u = app.user("quitter").await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/files?filename=partial.png HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 10000000\r\n\r\n",
        u.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&png(3_000_000)).await.unwrap();
    app.eventually("a temp file exists while streaming", || {
        !app.temp_files().is_empty()
    })
    .await;
    drop(s);
    app.eventually("the temp file is gone", || app.temp_files().is_empty())
        .await;
    assert!(app.blob_files().is_empty());
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["items"].as_array().unwrap().is_empty());
    // The abort is audited with the bytes received so far.
    let mut found = false;
    for _ in 0..100 {
        let entries = app.audit(&admin.token).await;
        if let Some(e) = entries
            .iter()
            .find(|e| e["event"] == "file.upload_rejected")
        {
            assert_eq!(e["detail"]["reason"], "client_aborted");
            assert!(e["detail"]["bytes_received"].as_u64().unwrap() > 0);
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "no file.upload_rejected entry");
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
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/files?filename=slow{i}.png HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n",
            u.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // More than one batch, so each upload has been through the blocking pool.
        s.write_all(&png(300_000)).await.unwrap();
        held.push(s);
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
            let r = app
                .upload(&token, &format!("c{i}.png"), bytes.clone())
                .await;
            assert_eq!(r.status(), 201);
            let f: Value = r.json().await.unwrap();
            assert_eq!(f["sha256"], sha256_hex(&bytes));
        }
    });
    futures_util::future::join_all(uploads).await;
    let list: Value = app
        .authed(Method::GET, "/api/v1/files?limit=100", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .query(&[("filename", "big.png")])
        .header("content-length", size.to_string())
        .body(Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
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
    let r = app
        .req(Method::POST, "/api/v1/files?filename=a.png")
        .body(fixtures::png(10))
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
}

#[tokio::test]
async fn a_stalled_upload_is_cut_off_with_408_wherever_it_stalls() {
    let app = TestApp::builder()
        .env("COFFER_LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "1")
        .spawn()
        .await;
    let u = app.user("staller").await;
    for (ctype, partial) in [
        // Inside the file of a raw upload.
        ("application/octet-stream", png(1000)),
        // In a multipart part before the file part.
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello".to_vec(),
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/files?filename=slow.png HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {ctype}\r\nContent-Length: 100000\r\n\r\n",
            u.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&partial).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{ctype}: {text}");
    }
    app.eventually("temp files removed", || app.temp_files().is_empty())
        .await;
}
