//! Uploads: what is stored (detected type, hash, sanitised name), the type policy, multipart
//! framing, credentials, and many uploads at once. Limits are in `upload_limits.rs`.

use reqwest::multipart::{Form, Part};

use crate::helpers::fixtures::{elf, gif, jpeg, pdf, png, sha256_hex};
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
    // A PNG that carries markup at its end is a polyglot (API.md 1.1, "Polyglots"): refused
    // as one, not stored as a PNG whatever its name suggests (tests/api/content_safety.rs has
    // the rest). A real PNG with a dangerous-looking name is stored as a PNG.
    let poly = [png(64), html].concat();
    let r = Refusal::of(app.upload(&u.token, "shell.php.png", poly).await).await;
    assert_eq!(r, (415, "polyglot", ""));
    let f = app.stored(&u.token, "shell.php.png", png(64)).await;
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
async fn a_query_filename_beside_multipart_is_still_checked() {
    let app = TestApp::spawn().await;
    let u = app.user("both").await;
    let with_query = |q: &str| {
        app.post(&format!("/api/v1/files?filename={q}"))
            .as_user(&u)
            .multipart(file_form("a.png", png(10)))
    };
    // The part names the file; the parameter beside it must still be a name the server takes.
    with_query("").problem(400).await;
    with_query("no-extension%13").problem(415).await;
    with_query("a.exe").problem(415).await;
    assert!(app.blob_files().is_empty());
    let f = with_query("other.png").expect(201).await;
    assert_eq!(f["filename"], "a.png");
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
async fn uploads_need_credentials() {
    let app = TestApp::spawn().await;
    app.post("/api/v1/files?filename=a.png")
        .body(png(10))
        .problem(401)
        .await;
}
