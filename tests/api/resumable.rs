//! Resumable uploads (tus 1.0.0) at `/api/v1/uploads`: every status the contract names, the
//! lock (423), checksums (460), bad input, the pending limit, quota reservations and their
//! release, type checks on the first bytes, the commit through the single-shot pipeline, and
//! no plaintext at rest of an unfinished upload; on the local store with SQLite and on the
//! S3 stack with PostgreSQL.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt as _;
use reqwest::Method;
use sha2::{Digest, Sha256};

use crate::helpers::fixtures::{png, sha256_hex, tus_metadata};
use crate::helpers::raw;
use crate::helpers::s3::{S3Env, fresh_prefix};
use crate::helpers::stack;
use crate::helpers::{TestApp, TestUser, problem};

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn create(app: &TestApp, u: &TestUser, name: &str, len: u64) -> reqwest::Response {
    app.post("/api/v1/uploads")
        .as_user(u)
        .headers(&[
            TUS,
            ("upload-length", &len.to_string()),
            ("upload-metadata", &tus_metadata(name)),
        ])
        .send()
        .await
}

/// Create and answer the upload's path.
async fn created(app: &TestApp, u: &TestUser, name: &str, len: u64) -> String {
    let r = create(app, u, name, len).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(header(&r, "tus-resumable"), "1.0.0");
    assert_eq!(header(&r, "upload-offset"), "0");
    assert!(!header(&r, "upload-expires").is_empty());
    let loc = header(&r, "location");
    assert!(loc.starts_with("/api/v1/uploads/"), "{loc}");
    loc
}

async fn patch(
    app: &TestApp,
    u: &TestUser,
    loc: &str,
    offset: u64,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let off = offset.to_string();
    // A fresh connection each time: an answer given before the body is read may close one
    // (API.md), and the client must not race that by reusing it.
    let mut h = vec![
        TUS,
        ("connection", "close"),
        ("upload-offset", off.as_str()),
        ("content-type", "application/offset+octet-stream"),
    ];
    h.extend_from_slice(extra);
    app.request(Method::PATCH, loc)
        .as_user(u)
        .headers(&h)
        .body(body)
        .send()
        .await
}

async fn offset_of(app: &TestApp, u: &TestUser, loc: &str) -> (u16, String) {
    let r = app.head(loc).as_user(u).headers(&[TUS]).send().await;
    (r.status().as_u16(), header(&r, "upload-offset"))
}

async fn reserved(app: &TestApp) -> i64 {
    app.sql_number("SELECT COALESCE(SUM(bytes), 0) FROM upload_reservations")
}

/// The protocol end to end on one deployment.
async fn protocol(app: &TestApp) {
    let u = app.user("tusser").await;
    let other = app.user("stranger").await;

    // OPTIONS: no credentials, the capabilities.
    let r = app.request(Method::OPTIONS, "/api/v1/uploads").send().await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    assert_eq!(
        header(&r, "tus-extension"),
        "creation,creation-with-upload,termination,expiration,checksum"
    );
    assert_eq!(header(&r, "tus-checksum-algorithm"), "sha1,sha256");
    assert!(!header(&r, "tus-max-size").is_empty());

    // A file in three PATCHes, one with each checksum kind; the last commits.
    let file = png(300_000);
    let loc = created(app, &u, "three.png", file.len() as u64).await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let (a, rest) = file.split_at(100_000);
    let (b, c) = rest.split_at(100_000);
    let sha1 = STANDARD.encode(<sha1::Sha1 as sha1::Digest>::digest(a));
    let r = patch(
        app,
        &u,
        &loc,
        0,
        a.to_vec(),
        &[("upload-checksum", &format!("sha1 {sha1}"))],
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), "100000");
    assert_eq!(header(&r, "tus-resumable"), "1.0.0");
    // HEAD: offset, length, metadata echoed, no-store; a stranger sees nothing.
    let r = app.head(&loc).as_user(&u).headers(&[TUS]).send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-offset"), "100000");
    assert_eq!(header(&r, "upload-length"), file.len().to_string());
    assert_eq!(header(&r, "upload-metadata"), tus_metadata("three.png"));
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert_eq!(offset_of(app, &other, &loc).await.0, 404);
    problem(
        patch(app, &other, &loc, 100_000, b.to_vec(), &[]).await,
        404,
    )
    .await;
    // A wrong offset (409), a missing one (400), a wrong type (415), no Tus-Resumable (412).
    problem(patch(app, &u, &loc, 5, Vec::new(), &[]).await, 409).await;
    let r = app
        .request(Method::PATCH, &loc)
        .as_user(&u)
        .headers(&[
            TUS,
            ("connection", "close"),
            ("content-type", "application/offset+octet-stream"),
        ])
        .send()
        .await;
    problem(r, 400).await;
    for garbage in ["-1", "abc", "1e3", "99999999999999999999999", " "] {
        let r = app
            .request(Method::PATCH, &loc)
            .as_user(&u)
            .headers(&[
                TUS,
                ("connection", "close"),
                ("upload-offset", garbage),
                ("content-type", "application/offset+octet-stream"),
            ])
            .send()
            .await;
        assert_eq!(r.status(), 400, "offset {garbage:?}");
    }
    let r = app
        .request(Method::PATCH, &loc)
        .as_user(&u)
        .headers(&[
            TUS,
            ("connection", "close"),
            ("upload-offset", "100000"),
            ("content-type", "application/octet-stream"),
        ])
        .send()
        .await;
    problem(r, 415).await;
    let r = app
        .request(Method::PATCH, &loc)
        .as_user(&u)
        .headers(&[
            ("connection", "close"),
            ("upload-offset", "100000"),
            ("content-type", "application/offset+octet-stream"),
        ])
        .send()
        .await;
    assert_eq!(r.status(), 412);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    // A checksum mismatch: 460, none of it counts; an unknown algorithm: 400.
    let wrong = STANDARD.encode(Sha256::digest(b"something else"));
    let mismatch = problem(
        patch(
            app,
            &u,
            &loc,
            100_000,
            b.to_vec(),
            &[("upload-checksum", &format!("sha256 {wrong}"))],
        )
        .await,
        460,
    )
    .await;
    assert_eq!(mismatch["title"], "Checksum Mismatch");
    // On the wire too (hyper knows no phrase for 460 and would write `<none>`).
    let raw_patch = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: 100000\r\nContent-Type: application/offset+octet-stream\r\n\
         Upload-Checksum: sha256 {wrong}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        u.token
    );
    let r = raw::exchange(app.addr, raw_patch.as_bytes()).await;
    assert_eq!((r.status, r.reason.as_str()), (460, "Checksum Mismatch"));
    problem(
        patch(
            app,
            &u,
            &loc,
            100_000,
            b.to_vec(),
            &[("upload-checksum", "md5 AAAA")],
        )
        .await,
        400,
    )
    .await;
    assert_eq!(offset_of(app, &u, &loc).await.1, "100000");
    // A body that would pass the length: 413, offset unchanged. Streamed without a length, so
    // the server finds out at its last byte (a declared one is refused before the body).
    let mut long = b.to_vec();
    long.extend_from_slice(c);
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(long), Ok(b"x".to_vec())];
    let r = app
        .request(Method::PATCH, &loc)
        .as_user(&u)
        .headers(&[
            TUS,
            ("upload-offset", "100000"),
            ("content-type", "application/offset+octet-stream"),
        ])
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await;
    problem(r, 413).await;
    assert_eq!(offset_of(app, &u, &loc).await.1, "100000");
    // X-HTTP-Method-Override: a POST that is a PATCH.
    let sha = STANDARD.encode(Sha256::digest(b));
    let r = app
        .post(&loc)
        .as_user(&u)
        .headers(&[
            TUS,
            ("x-http-method-override", "PATCH"),
            ("upload-offset", "100000"),
            ("content-type", "application/offset+octet-stream"),
            ("upload-checksum", &format!("sha256 {sha}")),
        ])
        .body(b.to_vec())
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), "200000");
    let r = patch(app, &u, &loc, 200_000, c.to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), file.len().to_string());
    assert_eq!(header(&r, "coffer-file-id"), id);
    // Every 201 and 204 says when the upload expires; a finished one, as it finished.
    let finished_at = httpdate::parse_http_date(&header(&r, "upload-expires")).unwrap();
    let (now, slack) = (
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(5),
    );
    assert!(finished_at <= now + slack && now <= finished_at + slack);
    // The file, as a single-shot upload would be.
    let f = app
        .get(&format!("/api/v1/files/{id}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
    assert_eq!(f["filename"], "three.png");
    assert_eq!(f["content_type"], "image/png");
    let got = app
        .download(&u.token, &id, &[])
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&file));
    assert_eq!(offset_of(app, &u, &loc).await.0, 404);
    app.eventually("staged chunks deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert_eq!(reserved(app).await, 0);

    // Creation-with-upload, and Upload-Length 0 commits at creation.
    let small = b"hello, tus\n".to_vec();
    let r = app
        .post("/api/v1/uploads")
        .as_user(&u)
        .headers(&[
            TUS,
            ("upload-length", &small.len().to_string()),
            ("upload-metadata", &tus_metadata("hello.txt")),
            ("content-type", "application/offset+octet-stream"),
        ])
        .body(small.clone())
        .send()
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "upload-offset"), small.len().to_string());
    assert!(!header(&r, "upload-expires").is_empty());
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&small));
    let r = create(app, &u, "empty.txt", 0).await;
    assert_eq!(r.status(), 201);
    assert!(!header(&r, "upload-expires").is_empty());
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["size"], 0);

    // Termination releases the bytes and the quota.
    let loc = created(app, &u, "gone.png", 50_000).await;
    assert_eq!(reserved(app).await, 50_000);
    assert_eq!(
        patch(app, &u, &loc, 0, png(50_000)[..20_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    assert_eq!(
        app.delete(&loc)
            .as_user(&other)
            .headers(&[TUS])
            .status()
            .await,
        404
    );
    assert_eq!(
        app.delete(&loc).as_user(&u).headers(&[TUS]).status().await,
        204
    );
    assert_eq!(offset_of(app, &u, &loc).await.0, 404);
    assert_eq!(
        app.delete(&loc).as_user(&u).headers(&[TUS]).status().await,
        404
    );
    assert_eq!(reserved(app).await, 0);
    app.eventually("terminated chunks deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;

    // The type is checked on the first bytes: a mismatch is 415 and ends the upload.
    let loc = created(app, &u, "fake.png", 20_000).await;
    problem(patch(app, &u, &loc, 0, vec![b'a'; 9_000], &[]).await, 415).await;
    assert_eq!(offset_of(app, &u, &loc).await.0, 404);
    assert_eq!(reserved(app).await, 0);
    // Or across PATCHes: the first 8 KiB decide once they are all there.
    let loc = created(app, &u, "late.pdf", 20_000).await;
    assert_eq!(
        patch(app, &u, &loc, 0, b"%PDF".to_vec(), &[])
            .await
            .status(),
        204
    );
    let r = patch(app, &u, &loc, 4, vec![b' '; 10_000], &[]).await;
    assert_eq!(r.status(), 204, "a PDF head is a PDF");
    let loc = created(app, &u, "late.png", 20_000).await;
    assert_eq!(
        patch(app, &u, &loc, 0, b"GIF8".to_vec(), &[])
            .await
            .status(),
        204
    );
    problem(patch(app, &u, &loc, 4, vec![0; 10_000], &[]).await, 415).await;
    assert_eq!(offset_of(app, &u, &loc).await.0, 404);
}

#[tokio::test]
async fn tus_protocol_on_local_files_and_sqlite() {
    let app = TestApp::spawn().await;
    protocol(&app).await;
}

#[tokio::test]
async fn tus_protocol_on_s3_and_postgres() {
    let Some(s3) = S3Env::require("tus_protocol_on_s3_and_postgres") else {
        return;
    };
    let Some(stack) = stack::require("tus_protocol_on_s3_and_postgres") else {
        return;
    };
    let app = TestApp::builder()
        .postgres(&stack)
        .s3(&s3, &fresh_prefix())
        .spawn()
        .await;
    protocol(&app).await;
}

#[tokio::test]
async fn creation_refuses_bad_input_and_stores_nothing() {
    let app = TestApp::builder()
        .env("COFFER_LIMITS__MAX_UPLOAD_BYTES", "1000000")
        .env("COFFER_LIMITS__USER_QUOTA_BYTES", "1500000")
        .spawn()
        .await;
    let u = app.user("badinput").await;
    let post = |h: Vec<(&'static str, String)>| {
        let mut req = app.post("/api/v1/uploads").as_user(&u);
        for (k, v) in &h {
            req = req.header(k, v);
        }
        req.send()
    };
    let m = tus_metadata("a.png");
    let cases: Vec<(Vec<(&str, String)>, u16)> = vec![
        (
            vec![
                ("upload-length", "10".into()),
                ("upload-metadata", m.clone()),
            ],
            412,
        ),
        (vec![tus(), ("upload-metadata", m.clone())], 400),
        (
            vec![
                tus(),
                ("upload-length", "-5".into()),
                ("upload-metadata", m.clone()),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-length", "abc".into()),
                ("upload-metadata", m.clone()),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-length", "99999999999999999999999".into()),
                ("upload-metadata", m.clone()),
            ],
            413,
        ),
        // Twice, even the same value: no one length.
        (
            vec![
                tus(),
                ("upload-length", "10".into()),
                ("upload-length", "10".into()),
                ("upload-metadata", m.clone()),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-defer-length", "1".into()),
                ("upload-metadata", m.clone()),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-length", "1000001".into()),
                ("upload-metadata", m.clone()),
            ],
            413,
        ),
        (vec![tus(), ("upload-length", "10".into())], 400),
        (
            vec![
                tus(),
                ("upload-length", "10".into()),
                ("upload-metadata", "filename !!!notbase64".into()),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-length", "10".into()),
                ("upload-metadata", format!("other {}", STANDARD.encode("x"))),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-length", "10".into()),
                ("upload-metadata", "filename ".into()),
            ],
            400,
        ),
        (
            vec![
                tus(),
                ("upload-length", "10".into()),
                ("upload-metadata", tus_metadata("noext")),
            ],
            415,
        ),
        (
            vec![
                tus(),
                ("upload-length", "10".into()),
                ("upload-metadata", tus_metadata("evil.exe")),
            ],
            415,
        ),
    ];
    for (h, status) in cases {
        let shown = format!("{h:?}");
        let r = post(h).await;
        assert_eq!(r.status().as_u16(), status, "{shown}");
        assert_eq!(header(&r, "tus-resumable"), "1.0.0", "{shown}");
    }
    // No credentials: 401.
    let r = app
        .post("/api/v1/uploads")
        .headers(&[TUS, ("upload-length", "10"), ("upload-metadata", &m)])
        .send()
        .await;
    assert_eq!(r.status(), 401);
    // Over quota at creation: 413 quota-exceeded.
    let loc = created(&app, &u, "one.png", 1_000_000).await;
    let body = problem(create(&app, &u, "two.png", 600_000).await, 413).await;
    assert!(
        body["type"].as_str().unwrap().ends_with("quota-exceeded"),
        "{body}"
    );
    // A filename with path parts keeps only its last part.
    let p = png(5_000);
    let r = app
        .post("/api/v1/uploads")
        .as_user(&u)
        .headers(&[
            TUS,
            ("upload-length", &p.len().to_string()),
            (
                "upload-metadata",
                &format!(
                    "filename {},expires_in {}",
                    STANDARD.encode("../../etc/x\\y/pic.png"),
                    STANDARD.encode("3600")
                ),
            ),
            ("content-type", "application/offset+octet-stream"),
        ])
        .body(p)
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["filename"], "pic.png");
    assert!(
        !f["expires_at"].is_null(),
        "expires_in from the metadata: {f}"
    );
    assert_eq!(
        app.delete(&loc).as_user(&u).headers(&[TUS]).status().await,
        204
    );
    assert_eq!(reserved(&app).await, 0);
    assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_uploads"), 0);
}

fn tus() -> (&'static str, String) {
    ("tus-resumable", "1.0.0".into())
}

#[tokio::test]
async fn four_thousand_creations_keep_twenty_pending_and_leak_nothing() {
    let app = TestApp::builder()
        .env("COFFER_RATE_LIMIT__REQUESTS_PER_SECOND", "100000")
        .env("COFFER_RATE_LIMIT__BURST", "100000")
        .spawn()
        .await;
    let u = app.user("hoarder").await;
    // 4,000 creations, 16 at a time: exactly the default 20 get 201, the rest 429 without
    // Retry-After (not a rate), and nothing else is held.
    let statuses: Vec<(u16, bool, String)> = futures_util::stream::iter(0..4000)
        .map(|i| {
            let (app, u) = (&app, &u);
            async move {
                let r = create(app, u, &format!("p{i}.png"), 1000).await;
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry, header(&r, "location"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let created: Vec<&String> = statuses
        .iter()
        .filter(|s| s.0 == 201)
        .map(|s| &s.2)
        .collect();
    assert_eq!(created.len(), 20);
    assert!(statuses.iter().all(|s| s.0 == 201 || (s.0 == 429 && !s.1)));
    assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_uploads"), 20);
    assert_eq!(reserved(&app).await, 20_000);
    // Another user is not affected; terminating one frees a slot.
    let v = app.user("neighbour").await;
    created_loc(&app, &v).await;
    assert_eq!(
        app.delete(created[0])
            .as_user(&u)
            .headers(&[TUS])
            .status()
            .await,
        204
    );
    created_loc(&app, &u).await;
    assert_eq!(create(&app, &u, "over.png", 1000).await.status(), 429);
    assert_eq!(reserved(&app).await, 21_000);
}

async fn created_loc(app: &TestApp, u: &TestUser) -> String {
    created(app, u, "slot.png", 1000).await
}

#[tokio::test]
async fn cors_lets_a_page_on_an_allowed_origin_speak_tus() {
    let origin = "http://app.example.test";
    let app = TestApp::builder()
        .env("COFFER_CORS__ALLOWED_ORIGINS", origin)
        .spawn()
        .await;
    let u = app.user("pagey").await;
    let r = app
        .request(Method::OPTIONS, "/api/v1/uploads/00000000-0000-4000-8000-000000000000")
        .headers(&[
            ("origin", origin),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "tus-resumable,upload-offset,upload-checksum,content-type,x-http-method-override,upload-grant"),
        ])
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), origin);
    let methods = header(&r, "access-control-allow-methods").to_ascii_lowercase();
    assert!(
        methods.contains("patch") && methods.contains("options"),
        "{methods}"
    );
    let allowed = header(&r, "access-control-allow-headers").to_ascii_lowercase();
    for h in [
        "tus-resumable",
        "upload-length",
        "upload-metadata",
        "upload-offset",
        "upload-checksum",
        "upload-concat",
        "upload-defer-length",
        "x-http-method-override",
        "upload-grant",
    ] {
        assert_eq!(
            allowed.split(',').filter(|a| a.trim() == h).count(),
            1,
            "{h} once in {allowed}"
        );
    }
    // A real request from the page reads the tus headers.
    let r = app
        .post("/api/v1/uploads")
        .as_user(&u)
        .headers(&[
            TUS,
            ("origin", origin),
            ("upload-length", "5"),
            ("upload-metadata", &tus_metadata("a.txt")),
        ])
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let exposed = header(&r, "access-control-expose-headers").to_ascii_lowercase();
    for h in [
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-expires",
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "location",
        "coffer-file-id",
    ] {
        assert!(exposed.contains(h), "{h} not in {exposed}");
    }
    // A plain OPTIONS from the page (a client asking for the capabilities) reads them too.
    let r = app
        .request(Method::OPTIONS, "/api/v1/uploads")
        .headers(&[("origin", origin), TUS])
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    assert_eq!(header(&r, "access-control-allow-origin"), origin);
    let exposed = header(&r, "access-control-expose-headers").to_ascii_lowercase();
    for h in ["tus-version", "tus-extension", "tus-max-size"] {
        assert!(exposed.contains(h), "{h} not in {exposed}");
    }
    assert!(header(&r, "vary").to_ascii_lowercase().contains("origin"));
    // Another origin gets no CORS headers, preflight or plain.
    for preflight in [true, false] {
        let mut headers = vec![("origin", "http://evil.test")];
        if preflight {
            headers.push(("access-control-request-method", "POST"));
        }
        let r = app
            .request(Method::OPTIONS, "/api/v1/uploads")
            .headers(&headers)
            .send()
            .await;
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert!(r.headers().get("access-control-expose-headers").is_none());
    }
}

#[tokio::test]
async fn a_second_patch_at_once_is_423_and_no_lock_leaks() {
    let app = TestApp::spawn().await;
    let u = app.user("racer").await;
    let file = png(200_000);
    let loc = created(&app, &u, "race.png", file.len() as u64).await;
    // The first PATCH trickles its body; meanwhile a second one is refused.
    let first_body = file[..100_000].to_vec();
    let (tx, first) = trickled_patch(&app, &u, &loc, "0", &[]);
    tx.send(Ok(first_body[..50_000].to_vec())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    problem(
        patch(&app, &u, &loc, 0, file[..10].to_vec(), &[]).await,
        423,
    )
    .await;
    tx.send(Ok(first_body[50_000..].to_vec())).await.unwrap();
    drop(tx);
    let r = first.await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "upload-offset"), "100000");
    // An aborted body (the client breaks off) gives the lock back: the next PATCH is taken.
    let (tx, aborted) = trickled_patch(&app, &u, &loc, "100000", &[]);
    tx.send(Ok(file[100_000..120_000].to_vec())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.send(Err(std::io::Error::other("client gives up")))
        .await
        .unwrap();
    let _ = aborted.await;
    // Without a checksum the durable bytes of the aborted PATCH count (at most what was sent).
    // The offset is read once the lock is back: before, the aborted PATCH may still be
    // recording what it wrote.
    let held = "SELECT COUNT(*) FROM resumable_uploads WHERE lock_holder IS NOT NULL";
    for _ in 0..50 {
        if app.sql_number(held) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.sql_number(held), 0, "the aborted PATCH's lock leaked");
    let (status, off) = offset_of(&app, &u, &loc).await;
    assert_eq!(status, 200);
    let offset = off.parse::<u64>().unwrap();
    assert!((100_000..=120_000).contains(&offset), "{offset}");
    let r = patch(
        &app,
        &u,
        &loc,
        offset,
        file[offset as usize..].to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
}

#[tokio::test]
async fn an_interrupted_patch_with_a_checksum_keeps_nothing() {
    let app = TestApp::spawn().await;
    let u = app.user("careful").await;
    let file = png(100_000);
    let loc = created(&app, &u, "c.png", file.len() as u64).await;
    let sum = STANDARD.encode(Sha256::digest(&file));
    let (tx, sent) = trickled_patch(
        &app,
        &u,
        &loc,
        "0",
        &[("upload-checksum", &format!("sha256 {sum}"))],
    );
    tx.send(Ok(file[..60_000].to_vec())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.send(Err(std::io::Error::other("gone"))).await.unwrap();
    let _ = sent.await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(offset_of(&app, &u, &loc).await, (200, "0".to_owned()));
    assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_chunks"), 0);
}

#[tokio::test]
async fn kill_9_mid_patch_then_resume_gives_the_exact_file() {
    let mut app = TestApp::spawn().await;
    let u = app.user("survivor").await;
    let file = png(3_000_000);
    let loc = created(&app, &u, "big.png", file.len() as u64).await;
    assert_eq!(
        patch(&app, &u, &loc, 0, file[..1_000_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    // A PATCH whose body is half sent when the server dies.
    let (tx, sent) = trickled_patch(&app, &u, &loc, "1000000", &[]);
    tx.send(Ok(file[1_000_000..1_500_000].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.expect_leftovers();
    app.kill9();
    drop(tx);
    let killed = std::time::Instant::now();
    let app = app.relaunch().spawn().await;
    let _ = sent.await;
    let (status, off) = offset_of(&app, &u, &loc).await;
    assert_eq!(status, 200);
    let off: u64 = off.parse().unwrap();
    assert!((1_000_000..=1_500_000).contains(&off), "{off}");
    // The lock of the dead PATCH expires (a lease of a few seconds): probe with empty PATCHes
    // (423 until then), then resume from the reported offset. A stock client retries for
    // about 9 s (tus-js-client's default delays: 0, 1, 3 and 5 s).
    let mut probe = patch(&app, &u, &loc, off, Vec::new(), &[]).await.status();
    while probe == 423 && killed.elapsed() < std::time::Duration::from_secs(9) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        probe = patch(&app, &u, &loc, off, Vec::new(), &[]).await.status();
    }
    assert_eq!(probe, 204, "after {:?}", killed.elapsed());
    let r = patch(&app, &u, &loc, off, file[off as usize..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
}

/// The upload goes while a PATCH of it is under way (deleted by its client, as Uppy's cancel
/// does, or its grant revoked): the PATCH answers 404, as the next request would, and nothing
/// it wrote stays on disk, the first PATCH's growing blob included.
#[tokio::test]
async fn an_upload_deleted_during_a_patch_answers_404_and_leaves_no_bytes() {
    let app = TestApp::spawn().await;
    let u = app.user("canceller").await;
    let text = "cancel me\n".repeat(20_000).into_bytes();
    for first in [true, false] {
        let loc = created(&app, &u, "gone.txt", text.len() as u64).await;
        let at = if first {
            0
        } else {
            let r = patch(&app, &u, &loc, 0, text[..50_000].to_vec(), &[]).await;
            assert_eq!(r.status(), 204);
            50_000
        };
        let (tx, sent) = trickled_patch(&app, &u, &loc, &at.to_string(), &[]);
        tx.send(Ok(text[at..at + 50_000].to_vec())).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = app
            .request(Method::DELETE, &loc)
            .as_user(&u)
            .headers(&[TUS])
            .send()
            .await;
        assert_eq!(r.status(), 204);
        tx.send(Ok(text[at + 50_000..at + 60_000].to_vec()))
            .await
            .unwrap();
        drop(tx);
        let r = sent.await.unwrap();
        assert_eq!(r.status(), 404, "first PATCH: {first}");
        assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
    }
    app.eventually("nothing of the deleted uploads stays", || {
        app.blob_files().is_empty() && app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
    })
    .await;
    assert_eq!(reserved(&app).await, 0);
}

/// A text upload whose first 8 KiB are not text is refused at the PATCH that brings them (415,
/// the upload ended), not at its last.
#[tokio::test]
async fn a_text_upload_that_starts_as_binary_is_refused_at_its_first_bytes() {
    let app = TestApp::spawn().await;
    let u = app.user("texter").await;
    let zeros = [b"text\0".repeat(2_000), b"more text\n".repeat(5_000)].concat();
    let invalid = [vec![0xff; 9_000], b"more text\n".repeat(5_000)].concat();
    let magic = [png(9_000), b"more text\n".repeat(5_000)].concat();
    for body in [zeros, invalid, magic] {
        let loc = created(&app, &u, "notes.txt", body.len() as u64).await;
        let r = patch(&app, &u, &loc, 0, body[..9_000].to_vec(), &[]).await;
        assert_eq!(r.status(), 415);
        assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
    }
    // Text that only looks odd is not: a multi-byte character cut by the 8 KiB mark.
    let mut fine = "a".repeat(8_191).into_bytes();
    fine.extend_from_slice("é and more\n".repeat(100).as_bytes());
    let loc = created(&app, &u, "fine.txt", fine.len() as u64).await;
    let r = patch(&app, &u, &loc, 0, fine[..8_192].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let r = patch(&app, &u, &loc, 8_192, fine[8_192..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(reserved(&app).await, 0);
}

/// A last PATCH whose file was stored but whose upload's rows stayed (their removal failed)
/// is answered again with that file when the client retries, and its blob is not written
/// twice.
#[tokio::test]
async fn a_retried_last_patch_of_a_stored_file_answers_that_file() {
    let app = TestApp::spawn().await;
    let u = app.user("retrying").await;
    let file = png(60_000);
    let loc = created(&app, &u, "twice.png", file.len() as u64).await;
    let r = patch(&app, &u, &loc, 0, file[..30_000].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    app.sql_exec("CREATE TABLE kept_upload AS SELECT * FROM resumable_uploads");
    let r = patch(&app, &u, &loc, 30_000, file[30_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    // As if the removal after the commit had failed.
    app.sql_exec(
        "INSERT INTO resumable_uploads SELECT * FROM kept_upload;
         UPDATE resumable_uploads SET upload_offset = length, lock_holder = NULL,
             lock_until = NULL;
         DROP TABLE kept_upload;",
    );
    let blobs = app.blob_files().len();
    let r = patch(&app, &u, &loc, 60_000, Vec::new(), &[]).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "coffer-file-id"), fid);
    assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
    assert_eq!(app.blob_files().len(), blobs);
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
    let list = app.files().as_user(&u).expect(200).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

/// Every byte durable but no file: the last PATCH's node died between making its bytes
/// durable and storing the file. A client takes `Upload-Offset == Upload-Length` for a
/// finished upload and never PATCHes again, so the HEAD that sees it stores the file.
#[tokio::test]
async fn a_head_finds_every_byte_durable_and_stores_the_file() {
    let app = TestApp::spawn().await;
    let u = app.user("stranded").await;
    let text = "all of it durable\n".repeat(5_000).into_bytes();
    let loc = created(&app, &u, "stranded.txt", 200_000).await;
    let r = patch(&app, &u, &loc, 0, text.clone(), &[]).await;
    assert_eq!(r.status(), 204);
    // As if the PATCH that brought the last bytes had died right after making them durable.
    app.sql_exec(&format!(
        "UPDATE resumable_uploads SET length = {}",
        text.len()
    ));
    let r = app.head(&loc).as_user(&u).headers(&[TUS]).send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "upload-offset"), text.len().to_string());
    let fid = header(&r, "coffer-file-id");
    assert_eq!(loc.rsplit('/').next().unwrap(), fid);
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&text));
    assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
}

#[tokio::test]
async fn with_encryption_no_plaintext_of_an_unfinished_upload_is_at_rest() {
    let app = TestApp::builder()
        .env(
            "COFFER_ENCRYPTION_KEY",
            hex::encode(Sha256::digest(b"tus test key")),
        )
        .spawn()
        .await;
    let u = app.user("secretive").await;
    let marker = "UNFINISHED-PLAINTEXT-MARKER";
    let text: Vec<u8> = format!("{marker}\n").repeat(5_000).into_bytes();
    let loc = created(&app, &u, "notes.txt", text.len() as u64 + 10).await;
    assert_eq!(
        patch(&app, &u, &loc, 0, text.clone(), &[]).await.status(),
        204
    );
    let blobs = app.blob_files();
    assert!(!blobs.is_empty());
    for b in &blobs {
        let bytes = app.read_blob(b);
        assert!(
            memchr::memmem::find(&bytes, marker.as_bytes()).is_none(),
            "plaintext in {b:?}"
        );
    }
    let r = patch(
        &app,
        &u,
        &loc,
        text.len() as u64,
        b"0123456789".to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let got = app
        .download(&u.token, &fid, &[])
        .await
        .bytes()
        .await
        .unwrap();
    let mut want = text;
    want.extend_from_slice(b"0123456789");
    assert_eq!(sha256_hex(&got), sha256_hex(&want));
}

#[tokio::test]
async fn expired_uploads_are_404_and_swept_with_their_quota() {
    let app = TestApp::builder()
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let u = app.user("forgetful").await;
    let loc = created(&app, &u, "old.png", 50_000).await;
    assert_eq!(
        patch(&app, &u, &loc, 0, png(50_000)[..30_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    assert_eq!(reserved(&app).await, 50_000);
    // Expire it behind the server's back (the TTL's minimum is a minute).
    app.sql_exec("UPDATE resumable_uploads SET expires_at = 0");
    assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
    app.eventually("the sweeper removed the expired upload", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_uploads") == 0
            && app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
            && app.sql_number("SELECT COALESCE(SUM(bytes), 0) FROM upload_reservations") == 0
    })
    .await;
    assert!(app.blob_files().is_empty());
}

/// A PATCH at `offset` whose body the test feeds through the sender it returns (an error
/// item breaks the body off), on its way in a task of its own; `extra` headers on top.
fn trickled_patch(
    app: &TestApp,
    u: &TestUser,
    loc: &str,
    offset: &str,
    extra: &[(&str, &str)],
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Response>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let mut h = vec![
        TUS,
        ("upload-offset", offset),
        ("content-type", "application/offset+octet-stream"),
    ];
    h.extend_from_slice(extra);
    let req = app
        .request(Method::PATCH, loc)
        .as_user(u)
        .headers(&h)
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)));
    (tx, tokio::spawn(req.send()))
}

/// A request body fed by a channel (an error item breaks the body off).
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[tokio::test]
async fn the_final_patch_is_scanned_by_clamd_like_a_single_shot_upload() {
    let Some(stack) = stack::require("the_final_patch_is_scanned_by_clamd") else {
        return;
    };
    let app = TestApp::builder()
        .env("COFFER_SCAN__CLAMD", &stack.clamd)
        .spawn()
        .await;
    let admin = app.admin("watcher").await;
    let u = app.user("carrier").await;
    // The EICAR string split across two PATCHes: only the whole upload shows it.
    let e = stack::eicar();
    let (first, second) = (
        [b"x".repeat(70_000), e[..30].to_vec()].concat(),
        [e[30..].to_vec(), b"y".repeat(1000)].concat(),
    );
    let len = (first.len() + second.len()) as u64;
    let loc = created(&app, &u, "carrier.txt", len).await;
    assert_eq!(
        patch(&app, &u, &loc, 0, first.clone(), &[]).await.status(),
        204
    );
    let body = problem(
        patch(&app, &u, &loc, first.len() as u64, second, &[]).await,
        422,
    )
    .await;
    assert!(
        body["type"].as_str().unwrap().ends_with("infected"),
        "{body}"
    );
    assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
    assert_eq!(reserved(&app).await, 0);
    assert_eq!(app.sql_number("SELECT COUNT(*) FROM files"), 0);
    app.eventually("the chunks are deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert!(app.blob_files().is_empty());
    let audit = app.audit(&admin.token).await;
    let infected = audit
        .iter()
        .filter(|a| a["event"] == "file.infected")
        .count();
    assert_eq!(infected, 1, "{audit:?}");
    // A clean one through the same scanner is stored, its scan recorded.
    let clean = b"clean text\n".repeat(10_000);
    let loc = created(&app, &u, "clean.txt", clean.len() as u64).await;
    let r = patch(&app, &u, &loc, 0, clean.clone(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&clean));
    assert!(!f["scanned_at"].is_null(), "{f}");
}

#[tokio::test]
async fn a_failed_creation_with_upload_and_a_deleted_account_leave_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin("remover").await;
    let u = app.user("leaver").await;
    // creation-with-upload whose body fails its checksum: 460, and no upload stays behind.
    let wrong = STANDARD.encode(Sha256::digest(b"not this"));
    let r = app
        .post("/api/v1/uploads")
        .as_user(&u)
        .headers(&[
            TUS,
            ("upload-length", "100"),
            ("upload-metadata", &tus_metadata("a.txt")),
            ("content-type", "application/offset+octet-stream"),
            ("upload-checksum", &format!("sha256 {wrong}")),
        ])
        .body(b"a".repeat(50))
        .send()
        .await;
    problem(r, 460).await;
    assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_uploads"), 0);
    assert_eq!(reserved(&app).await, 0);
    // creation-with-upload whose client goes away mid-body (it never learns the URL): the
    // upload is ended, its bytes and quota released.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let req = app
        .post("/api/v1/uploads")
        .as_user(&u)
        .headers(&[
            TUS,
            ("upload-length", "100000"),
            ("upload-metadata", &tus_metadata("gone.txt")),
            ("content-type", "application/offset+octet-stream"),
        ])
        .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
        .send();
    let sending = tokio::spawn(req);
    tx.send(Ok(b"text\n".repeat(6_000))).await.unwrap();
    app.eventually("the upload is created", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_uploads") == 1
    })
    .await;
    tx.send(Err(std::io::Error::other("gone"))).await.unwrap();
    // (The request fails on the client side: its helper panics in its task.)
    let _ = sending.await;
    app.eventually("the unannounced upload is ended", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_uploads") == 0
            && app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
    })
    .await;
    assert_eq!(reserved(&app).await, 0);
    app.eventually("its bytes are deleted", || app.blob_files().is_empty())
        .await;
    // An account deleted with unfinished uploads: rows, chunks and reservations go with it.
    let loc = created(&app, &u, "half.png", 50_000).await;
    assert_eq!(
        patch(&app, &u, &loc, 0, png(50_000)[..20_000].to_vec(), &[])
            .await
            .status(),
        204
    );
    let r = app
        .delete(&format!("/api/v1/admin/users/{}", u.id))
        .as_user(&admin)
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_uploads"), 0);
    assert_eq!(reserved(&app).await, 0);
    app.eventually("the staged chunks are deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert!(app.blob_files().is_empty());
}

#[tokio::test]
async fn staged_chunks_are_not_orphans_for_check_repair_or_a_restart() {
    let mut app = TestApp::spawn().await;
    let u = app.user("checker").await;
    let file = png(60_000);
    let loc = created(&app, &u, "kept.png", file.len() as u64).await;
    let r = patch(&app, &u, &loc, 0, file[..25_000].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let (code, out) = app.run_cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = app.run_cli(&["check", "--repair"]);
    assert_eq!(code, 0, "{out}");
    // A first PATCH under way on the local store: its growing blob has no row yet, and a
    // repair beside it leaves it alone (its writer holds it). (On S3 nothing is written in
    // place: a PATCH's bytes are a multipart upload until its chunk is recorded.)
    if app.bucket_prefix().is_none() {
        a_first_patch_survives_a_repair_beside_it(&app, &u).await;
    }
    // A crash and a restart (start-up recovery looks for orphans) keep them too.
    app.kill9();
    let app = app.relaunch().spawn().await;
    assert_eq!(offset_of(&app, &u, &loc).await, (200, "25000".to_owned()));
    let r = patch(&app, &u, &loc, 25_000, file[25_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
    // Once the finished upload's chunks are gone (deleted off the request's path), the store
    // holds exactly the file.
    app.eventually("the finished upload's chunks are deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

/// A first PATCH on the local store, its growing blob named by no row yet, and `check
/// --repair` run beside it: the blob is left alone and the file comes out exact.
async fn a_first_patch_survives_a_repair_beside_it(app: &TestApp, u: &TestUser) {
    let other = png(50_000);
    let loc2 = created(app, u, "growing.png", other.len() as u64).await;
    let (tx, sent) = trickled_patch(app, u, &loc2, "0", &[]);
    tx.send(Ok(other[..30_000].to_vec())).await.unwrap();
    app.eventually("the growing blob is written", || {
        app.blob_files().len() == 2
    })
    .await;
    let (_, out) = app.run_cli(&["check", "--repair"]);
    assert!(out.contains("orphan"), "{out}");
    tx.send(Ok(other[30_000..].to_vec())).await.unwrap();
    drop(tx);
    let r = sent.await.unwrap();
    assert_eq!(r.status(), 204);
    let f = app
        .get(&format!("/api/v1/files/{}", header(&r, "coffer-file-id")))
        .as_user(u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&other));
}

/// After the purge of a finished upload's staging: nothing queued, no chunk row, and the
/// store holds exactly the files named (by id), each blob with the given bytes.
async fn store_holds_exactly(app: &TestApp, files: &[(&str, &[u8])]) {
    app.eventually("the finished upload's staging is deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert_eq!(
        app.blob_files().len(),
        files.len(),
        "{:?}",
        app.blob_files()
    );
    for (id, bytes) in files {
        assert!(
            app.read_blob(&app.blob_of(id)) == *bytes,
            "the blob of {id}"
        );
    }
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn bytes_a_refused_or_broken_off_patch_left_are_cut_off_and_the_file_is_exact() {
    // On the local store every PATCH appends to one staged blob in place: what a refused
    // PATCH (wrong checksum) or a broken-off one wrote past the durable offset must never
    // reach the file.
    let app = TestApp::spawn().await;
    let u = app.user("patchy").await;
    let file = png(3_000_000);
    let loc = created(&app, &u, "patchy.png", file.len() as u64).await;
    let r = patch(&app, &u, &loc, 0, file[..1_000_000].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    // 1 MB of other bytes under a checksum of the right ones: 460, nothing counts.
    let wrong = crate::helpers::fixtures::noise(1_000_000, 7);
    let sum = STANDARD.encode(Sha256::digest(&file[1_000_000..2_000_000]));
    let r = patch(
        &app,
        &u,
        &loc,
        1_000_000,
        wrong,
        &[("upload-checksum", &format!("sha256 {sum}"))],
    )
    .await;
    assert_eq!(r.status(), 460);
    assert_eq!(offset_of(&app, &u, &loc).await, (200, "1000000".to_owned()));
    // A PATCH broken off mid-body, without a checksum: what arrived counts.
    let (tx, sent) = trickled_patch(&app, &u, &loc, "1000000", &[]);
    tx.send(Ok(file[1_000_000..1_400_000].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.send(Err(std::io::Error::other("gone"))).await.unwrap();
    let _ = sent.await;
    let mut off = 0;
    for _ in 0..50 {
        // The lock is given up once the broken-off PATCH's bytes are durable.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = patch(&app, &u, &loc, 0, Vec::new(), &[]).await;
        if r.status() == 409 {
            off = offset_of(&app, &u, &loc).await.1.parse().unwrap();
            break;
        }
    }
    assert!((1_000_000..=1_400_000).contains(&off), "{off}");
    // One growing chunk holds every durable byte (written once, in place; on the local
    // store: the bucket takes a chunk per PATCH).
    if app.bucket_prefix().is_none() {
        assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_chunks"), 1);
        assert_eq!(
            app.sql_number("SELECT length FROM resumable_chunks WHERE start_offset = 0"),
            off as i64
        );
    }
    let r = patch(&app, &u, &loc, off, file[off as usize..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
    assert_eq!(f["size"], file.len() as u64);
    assert!(app.content_of(&u.token, &fid).await == file);
    store_holds_exactly(&app, &[(&fid, &file)]).await;
    assert_eq!(reserved(&app).await, 0);
}

#[tokio::test]
async fn an_image_whose_metadata_is_stripped_is_stored_stripped_through_tus() {
    // The staged bytes cannot become the file as they are when stripping changes them: the
    // file is the stripped image, exactly as a single-shot upload of it stores it.
    let app = TestApp::spawn().await;
    let u = app.user("stripper").await;
    let (jpeg, clean) = crate::helpers::images::jpeg_with_metadata(1);
    assert!(clean.len() < jpeg.len());
    let loc = created(&app, &u, "photo.jpg", jpeg.len() as u64).await;
    let half = jpeg.len() / 2;
    let r = patch(&app, &u, &loc, 0, jpeg[..half].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let r = patch(&app, &u, &loc, half as u64, jpeg[half..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    let single = app.stored(&u.token, "photo.jpg", jpeg.clone()).await;
    assert_eq!(f["sha256"], sha256_hex(&clean));
    assert_eq!(f["sha256"], single["sha256"]);
    assert_eq!(f["size"], clean.len() as u64);
    assert!(app.content_of(&u.token, &fid).await == clean);
    let sid = single["id"].as_str().unwrap().to_owned();
    store_holds_exactly(&app, &[(&fid, &clean), (&sid, &clean)]).await;
}

const TUS_KEY: &[u8] = b"tus test key";

/// No blob and no temp file holds `marker` (plaintext of an unfinished upload). On the local
/// store (a bucket's objects may be deleted between listing and reading them; the S3 path is
/// checked by `with_encryption_no_plaintext_of_an_unfinished_upload_is_at_rest`).
fn no_plaintext_at_rest(app: &TestApp, marker: &[u8]) {
    if app.bucket_prefix().is_some() {
        return;
    }
    let mut all = app.blob_files();
    all.extend(app.temp_files());
    for b in &all {
        // Temp files (and blobs on the local store) are files; the bucket's are objects.
        let bytes = if b.is_absolute() {
            std::fs::read(b).unwrap_or_default()
        } else {
            app.read_blob(b)
        };
        assert!(
            memchr::memmem::find(&bytes, marker).is_none(),
            "plaintext in {b:?}"
        );
    }
}

#[tokio::test]
async fn sealed_in_place_across_a_restart_and_odd_patch_sizes_gives_the_exact_file() {
    // Encryption on: PATCHes of sizes that split 64 KiB segments (the partial segment is
    // staged as a sealed tail and sealed into the upload's blob by the next PATCH), a
    // PATCH broken off mid-body, and a crash and restart between PATCHes.
    let key = hex::encode(Sha256::digest(TUS_KEY));
    let mut app = TestApp::builder()
        .env("COFFER_ENCRYPTION_KEY", &key)
        .env("COFFER_LIMITS__UPLOAD_IDLE_TIMEOUT_SECS", "2")
        .spawn()
        .await;
    let u = app.user("sealedtus").await;
    let marker = b"SEALED-IN-PLACE-MARKER-";
    let file: Vec<u8> = (0..1_000_000u32)
        .map(|i| {
            if i % 1000 == 999 {
                b'\n'
            } else {
                marker[i as usize % marker.len()]
            }
        })
        .collect();
    let loc = created(&app, &u, "sealed.txt", file.len() as u64).await;
    let mut off = 0usize;
    // 10,000 bytes (no whole segment yet), then 100,000 (crosses one), then 131,072.
    for n in [10_000usize, 100_000, 131_072] {
        let r = patch(&app, &u, &loc, off as u64, file[off..off + n].to_vec(), &[]).await;
        assert_eq!(r.status(), 204, "PATCH at {off}");
        off += n;
        assert_eq!(header(&r, "upload-offset"), off.to_string());
        no_plaintext_at_rest(&app, marker);
    }
    // Staged in place (on the local store; the bucket takes a chunk per PATCH): three whole
    // segments in the upload's blob, the rest as a sealed tail.
    if app.bucket_prefix().is_none() {
        assert_eq!(
            app.sql_number("SELECT length FROM resumable_chunks WHERE start_offset = 0"),
            3 * 65_536
        );
        assert_eq!(app.sql_number("SELECT COUNT(*) FROM resumable_chunks"), 2);
    }
    // A PATCH broken off mid-body: what arrived counts, sealed.
    let (tx, sent) = trickled_patch(&app, &u, &loc, &off.to_string(), &[]);
    tx.send(Ok(file[off..off + 150_000].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.send(Err(std::io::Error::other("gone"))).await.unwrap();
    let _ = sent.await;
    let mut now = off;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if patch(&app, &u, &loc, 0, Vec::new(), &[]).await.status() == 409 {
            now = offset_of(&app, &u, &loc).await.1.parse().unwrap();
            break;
        }
    }
    assert!((off..=off + 150_000).contains(&now), "{now}");
    off = now;
    no_plaintext_at_rest(&app, marker);
    // A crash between PATCHes, and a restart with the same key.
    app.kill9();
    let app = app
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", &key)
        .spawn()
        .await;
    assert_eq!(offset_of(&app, &u, &loc).await, (200, off.to_string()));
    let r = patch(
        &app,
        &u,
        &loc,
        off as u64,
        file[off..off + 70_001].to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 204);
    off += 70_001;
    no_plaintext_at_rest(&app, marker);
    let r = patch(&app, &u, &loc, off as u64, file[off..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&file));
    assert_eq!(f["size"], file.len() as u64);
    assert!(app.content_of(&u.token, &fid).await == file);
    no_plaintext_at_rest(&app, marker);
    app.eventually("the finished upload's staging is deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert_eq!(app.blob_files().len(), 1, "{:?}", app.blob_files());
    assert_eq!(reserved(&app).await, 0);
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_sealed_image_whose_metadata_is_stripped_is_stored_stripped_through_tus() {
    let app = TestApp::builder()
        .env(
            "COFFER_ENCRYPTION_KEY",
            hex::encode(Sha256::digest(TUS_KEY)),
        )
        .spawn()
        .await;
    let u = app.user("sealedstrip").await;
    let (jpeg, clean) = crate::helpers::images::jpeg_with_metadata(1);
    let loc = created(&app, &u, "photo.jpg", jpeg.len() as u64).await;
    let half = jpeg.len() / 2;
    let r = patch(&app, &u, &loc, 0, jpeg[..half].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let r = patch(&app, &u, &loc, half as u64, jpeg[half..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    let fid = header(&r, "coffer-file-id");
    let f = app
        .get(&format!("/api/v1/files/{fid}"))
        .as_user(&u)
        .expect(200)
        .await;
    assert_eq!(f["sha256"], sha256_hex(&clean));
    assert!(app.content_of(&u.token, &fid).await == clean);
    app.eventually("the finished upload's staging is deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert_eq!(app.blob_files().len(), 1);
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn what_the_carried_checks_refuse_is_refused_at_the_last_patch_and_nothing_stays() {
    // Each PATCH carries the upload's checks on (hash, image walk, polyglot window, UTF-8):
    // what they find is answered at the last PATCH, as a single-shot upload would be.
    let app = TestApp::spawn().await;
    let u = app.user("carried").await;
    let zip_tail = b"PK\x05\x06\0\0\0\0\x01\0\x01\0\x2e\0\0\0\x10\0\0\0\0\0".to_vec();
    let mut bad_text = "fine text\n".repeat(30_000).into_bytes();
    bad_text.extend_from_slice(&[0xff, 0xfe, b'\n']);
    let cases = [
        ("zip.png", [png(400_000), zip_tail].concat(), "polyglot"),
        ("bad.txt", bad_text, ""),
    ];
    for (name, bytes, kind) in cases {
        let loc = created(&app, &u, name, bytes.len() as u64).await;
        let third = bytes.len() / 3;
        for at in [0, third] {
            let r = patch(
                &app,
                &u,
                &loc,
                at as u64,
                bytes[at..at + third].to_vec(),
                &[],
            )
            .await;
            assert_eq!(r.status(), 204, "{name} at {at}");
        }
        let r = patch(
            &app,
            &u,
            &loc,
            2 * third as u64,
            bytes[2 * third..].to_vec(),
            &[],
        )
        .await;
        assert_eq!(r.status(), 415, "{name}");
        let p: serde_json::Value = r.json().await.unwrap();
        assert!(p["type"].as_str().unwrap_or_default().contains(kind), "{p}");
        assert_eq!(offset_of(&app, &u, &loc).await.0, 404);
    }
    let list = app.files().as_user(&u).expect(200).await;
    assert_eq!(list["items"], serde_json::Value::Array(vec![]), "{list}");
    app.eventually("the refused uploads' staging is deleted", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
            && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
    })
    .await;
    assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    assert_eq!(reserved(&app).await, 0);
}

#[tokio::test]
async fn three_patches_on_one_node_commit_the_exact_file_plain_and_sealed() {
    // The common case: every PATCH on this node, the checks carried along; the file must
    // be byte-exact with the right sha256, plain and sealed.
    for sealed in [false, true] {
        let mut b = TestApp::builder();
        if sealed {
            b = b.env(
                "COFFER_ENCRYPTION_KEY",
                hex::encode(Sha256::digest(TUS_KEY)),
            );
        }
        let app = b.spawn().await;
        let u = app.user("threepatch").await;
        let file = png(2_500_000);
        let loc = created(&app, &u, "three.png", file.len() as u64).await;
        let cuts = [0usize, 1_048_576, 1_900_003, file.len()];
        let mut last = None;
        for w in cuts.windows(2) {
            let r = patch(&app, &u, &loc, w[0] as u64, file[w[0]..w[1]].to_vec(), &[]).await;
            assert_eq!(r.status(), 204);
            last = Some(r);
        }
        let fid = header(&last.unwrap(), "coffer-file-id");
        let f = app
            .get(&format!("/api/v1/files/{fid}"))
            .as_user(&u)
            .expect(200)
            .await;
        assert_eq!(f["sha256"], sha256_hex(&file), "sealed: {sealed}");
        assert_eq!(f["content_type"], "image/png");
        assert!(app.content_of(&u.token, &fid).await == file);
        app.eventually("the finished upload's staging is deleted", || {
            app.sql_number("SELECT COUNT(*) FROM resumable_chunks") == 0
                && app.sql_number("SELECT COUNT(*) FROM blob_deletions") == 0
        })
        .await;
        assert_eq!(app.blob_files().len(), 1);
        let (code, out) = app.run_cli(&["check", "--deep"]);
        assert_eq!(code, 0, "{out}");
    }
}

/// `coffer rotate-key` re-wraps the keys of an unfinished upload's sealed staging (the growing
/// blob and a partial tail), so the upload still finishes, exact, once the old key is gone.
async fn sealed_staging_survives_a_key_rotation(app: crate::helpers::TestAppBuilder) {
    let old_key = hex::encode(Sha256::digest(b"the key before the rotation"));
    let new_key = hex::encode(Sha256::digest(b"the key after the rotation"));
    let mut app = app.env("COFFER_ENCRYPTION_KEY", &old_key).spawn().await;
    let u = app.user("rotating_tus").await;
    let file: Vec<u8> = (0..300_000u32)
        .map(|i| b"rotate\n"[i as usize % 7])
        .collect();
    let loc = created(&app, &u, "rotating.txt", file.len() as u64).await;
    // One whole segment and a partial tail, both sealed under the old key.
    let r = patch(&app, &u, &loc, 0, file[..100_000].to_vec(), &[]).await;
    assert_eq!(r.status(), 204);
    app.terminate();

    let mut app = app
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", &new_key)
        .env("COFFER_ENCRYPTION_OLD_KEYS", &old_key)
        .spawn()
        .await;
    let (code, stdout) = app.run_cli(&["rotate-key"]);
    assert_eq!(code, 0, "{stdout}");
    let staged = app.sql_number("SELECT COUNT(*) FROM resumable_chunks");
    assert!(staged >= 1, "the upload is staged");
    assert!(
        stdout.contains(&format!("and {staged} staged upload chunks")),
        "{stdout}"
    );
    app.terminate();

    // Only the new key now: the upload goes on and ends with the exact file.
    let app = app
        .relaunch()
        .env("COFFER_ENCRYPTION_KEY", &new_key)
        .spawn()
        .await;
    assert_eq!(offset_of(&app, &u, &loc).await, (200, "100000".into()));
    let r = patch(&app, &u, &loc, 100_000, file[100_000..].to_vec(), &[]).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    let fid = header(&r, "coffer-file-id");
    assert!(app.content_of(&u.token, &fid).await == file);
    let (code, out) = app.run_cli(&["check", "--deep"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn an_unfinished_sealed_upload_finishes_after_a_key_rotation_on_sqlite() {
    sealed_staging_survives_a_key_rotation(
        TestApp::builder().single_node("runs the CLI on one server's store between restarts"),
    )
    .await;
}

#[tokio::test]
async fn an_unfinished_sealed_upload_finishes_after_a_key_rotation_on_postgres() {
    let Some(stack) =
        stack::require("an_unfinished_sealed_upload_finishes_after_a_key_rotation_on_postgres")
    else {
        return;
    };
    sealed_staging_survives_a_key_rotation(TestApp::builder().postgres(&stack)).await;
}
