//! Downloads, listing, metadata and deletion: byte-exact round trips, HTTP semantics, safe
//! headers, and no way into another user's files.

use serde_json::json;

use crate::helpers::fixtures::{pdf, png};
use crate::helpers::{Refusal, TestApp, each_once, file_form, problem};

#[tokio::test]
async fn round_trips_are_byte_identical() {
    let app = TestApp::spawn().await;
    let u = app.user("roundtrip").await;
    for size in [1usize, 4096, 300_000, 10 * 1024 * 1024] {
        let bytes = png(size.max(40));
        let f = app.stored(&u.token, "r.png", bytes.clone()).await;
        let r = app.download(&u.token, f["id"].as_str().unwrap(), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            bytes.len().to_string().as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..], "size {size}");
    }
    // An empty text file.
    let f = app.stored(&u.token, "empty.txt", Vec::new()).await;
    let id = f["id"].as_str().unwrap();
    let r = app.download(&u.token, id, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app.download(&u.token, id, &[("range", "bytes=0-")]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */0");
}

#[tokio::test]
async fn content_headers_are_safe() {
    let app = TestApp::spawn().await;
    let u = app.user("headers").await;
    let name = "r\u{e9}sum\u{e9} \"final\";.pdf";
    let f = app
        .post("/api/v1/files")
        .as_user(&u)
        .multipart(file_form(name, pdf(2000)))
        .expect(201)
        .await;
    let id = f["id"].as_str().unwrap();
    let r = app.download(&u.token, id, &[]).await;
    let h = r.headers();
    assert_eq!(h["content-type"], "application/pdf");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; sandbox; frame-ancestors 'none'"
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(
        h["etag"],
        format!("\"{}\"", f["sha256"].as_str().unwrap()).as_str()
    );
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(h.contains_key("last-modified"));
    let cd = h["content-disposition"].to_str().unwrap();
    // The stored name lost its quotes; the fallback replaces non-ASCII and unsafe characters.
    assert_eq!(
        cd,
        "attachment; filename=\"r_sum_ final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final%3B.pdf"
    );

    // inline only for safe types; unknown values are 400.
    let disposition =
        |id: &str, value: &str| app.content(id).as_user(&u).query(&[("disposition", value)]);
    let r = disposition(id, "inline").send().await;
    let cd = r.headers()["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("inline;"), "{cd}");
    disposition(id, "evil").problem(400).await;
    let txt = app
        .stored(&u.token, "t.txt", b"<script>alert(1)</script>".to_vec())
        .await;
    let r = disposition(txt["id"].as_str().unwrap(), "inline")
        .send()
        .await;
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let cd = r.headers()["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("inline;"), "{cd}");
}

#[tokio::test]
async fn ranges_conditionals_and_head() {
    let app = TestApp::spawn().await;
    let u = app.user("ranger").await;
    let bytes = png(1000);
    let f = app.stored(&u.token, "r.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    let etag = format!("\"{}\"", f["sha256"].as_str().unwrap());
    let range = async |spec: &str| app.download(&u.token, id, &[("range", spec)]).await;

    for (spec, from, to) in [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=990-", 990, 999),
        ("bytes=-10", 990, 999),
        ("bytes=500-5000", 500, 999),
        ("bytes=-5000", 0, 999),
    ] {
        let r = range(spec).await;
        assert_eq!(r.status(), 206, "{spec}");
        let h = r.headers();
        assert_eq!(
            h["content-range"],
            format!("bytes {from}-{to}/1000").as_str(),
            "{spec}"
        );
        let len = (to - from + 1).to_string();
        assert_eq!(h["content-length"], len.as_str(), "{spec}");
        let body = r.bytes().await.unwrap();
        assert_eq!(body.as_ref(), &bytes[from..=to], "{spec}");
    }
    for spec in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = range(spec).await;
        assert_eq!(r.headers()["content-range"], "bytes */1000", "{spec}");
        let refusal = Refusal::of(r).await;
        assert_eq!(refusal, (416, "range-not-satisfiable", ""), "{spec}");
    }
    // Several ranges, other units and garbage: the whole file.
    for spec in ["bytes=0-1,5-6", "items=0-1", "bytes=x-y", "bytes=9-1"] {
        let r = range(spec).await;
        assert_eq!(r.status(), 200, "{spec}");
        assert_eq!(r.bytes().await.unwrap().len(), 1000, "{spec}");
    }
    // If-None-Match.
    for inm in [
        etag.as_str(),
        "*",
        &format!("\"other\", {etag}"),
        &format!("W/{etag}"),
    ] {
        let r = app.download(&u.token, id, &[("if-none-match", inm)]).await;
        assert_eq!(r.status(), 304, "{inm}");
        assert_eq!(r.headers()["etag"], etag.as_str(), "{inm}");
        assert!(r.headers().get("content-length").is_none(), "{inm}");
        assert!(r.bytes().await.unwrap().is_empty(), "{inm}");
        // HEAD answers the same: no length (0 is not the file's).
        let r = app
            .authed(
                reqwest::Method::HEAD,
                &format!("/api/v1/files/{id}/content"),
                &u.token,
            )
            .header("if-none-match", inm)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "HEAD {inm}");
        assert!(r.headers().get("content-length").is_none(), "HEAD {inm}");
    }
    let r = app
        .download(&u.token, id, &[("if-none-match", "\"nope\"")])
        .await;
    assert_eq!(r.status(), 200);
    // If-Range: the range applies only while the validator matches.
    let r = app
        .download(&u.token, id, &[("range", "bytes=0-9"), ("if-range", &etag)])
        .await;
    assert_eq!(r.status(), 206);
    let stale = [("range", "bytes=0-9"), ("if-range", "\"stale\"")];
    let r = app.download(&u.token, id, &stale).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    // If-Match (strong) and If-Unmodified-Since, as S3 answers them: 412 when they fail.
    let ok = [
        vec![("if-match", etag.clone())],
        vec![("if-match", "*".to_owned())],
        vec![("if-match", format!("\"other\", {etag}"))],
        vec![
            ("if-match", "\"other\"".to_owned()),
            ("if-match", etag.clone()),
        ],
        vec![(
            "if-unmodified-since",
            "Fri, 01 Jan 2100 00:00:00 GMT".to_owned(),
        )],
    ];
    for pairs in ok {
        let h: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = app.download(&u.token, id, &h).await;
        assert_eq!(r.status(), 200, "{h:?}");
    }
    let r = app
        .download(&u.token, id, &[("if-match", &etag), ("range", "bytes=0-9")])
        .await;
    assert_eq!(r.status(), 206);
    let failed = [
        vec![("if-match", "\"nope\"".to_owned())],
        vec![("if-match", format!("W/{etag}"))],
        vec![(
            "if-unmodified-since",
            "Sat, 01 Jan 2000 00:00:00 GMT".to_owned(),
        )],
        vec![
            ("if-match", "\"nope\"".to_owned()),
            ("if-none-match", etag.clone()),
        ],
    ];
    for pairs in failed {
        let h: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = app.download(&u.token, id, &h).await;
        let refusal = Refusal::of(r).await;
        assert_eq!(refusal, (412, "precondition-failed", ""), "{h:?}");
    }
    // HEAD: the headers of a GET, no body.
    let head = || app.head(&format!("/api/v1/files/{id}/content")).as_user(&u);
    let r = head().send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = head().header("range", "bytes=1-2").send().await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-length"], "2");
}

#[tokio::test]
async fn other_users_files_are_404_everywhere() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner").await;
    let thief = app.user("thief").await;
    let f = app.stored(&owner.token, "secret.png", png(100)).await;
    let id = f["id"].as_str().unwrap();
    let missing = uuid::Uuid::new_v4().to_string();
    for target in [id, missing.as_str()] {
        let content = format!("/api/v1/files/{target}/content");
        // Every refusal says the same as a file that does not exist.
        let answers = [
            ("the file", app.file(target)),
            ("its content", app.content(target)),
            ("a delete", app.delete_file(target)),
            (
                "a new link",
                app.create_link(target, &json!({"expires_in": 60})),
            ),
        ];
        let mut details = Vec::new();
        for (row, req) in answers {
            let v = req.as_user(&thief).problem(404).await;
            details.push((row, v["detail"].clone()));
        }
        assert!(
            details.iter().all(|(_, d)| *d == details[0].1),
            "{details:?}"
        );
        assert_eq!(app.head(&content).as_user(&thief).status().await, 404);
    }
    let list = app.files().as_user(&thief).expect(200).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    // The owner still has it.
    assert_eq!(app.download(&owner.token, id, &[]).await.status(), 200);
}

#[tokio::test]
async fn hostile_ids_never_reach_the_filesystem() {
    let app = TestApp::spawn().await;
    let u = app.user("prober").await;
    app.stored(&u.token, "x.png", png(100)).await;
    let long = "a".repeat(5000);
    for id in [
        "..%2f..%2fcoffer.db",
        "%2e%2e",
        "..%5c..%5cwindows",
        "%00",
        "..",
        "abc",
        long.as_str(),
        "00000000-0000-0000-0000-000000000000%00",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ] {
        for req in [app.file(id), app.content(id)] {
            let r = req.as_user(&u).send().await;
            let (s, path) = (r.status().as_u16(), r.url().path().to_owned());
            assert!(s == 404 || s == 400, "{path}: {s}");
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("SQLite") && !body.contains("/storage") && !body.contains("root:"),
                "{path}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn pagination_returns_every_file_exactly_once() {
    let app = TestApp::spawn().await;
    let u = app.user("pager").await;
    let mut ids = Vec::new();
    for i in 0..23 {
        let f = app
            .stored(&u.token, &format!("p{i}.png"), png(50 + i))
            .await;
        ids.push(f["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page = app.files().as_user(&u).query(&[("limit", "5")]);
        if let Some(c) = &cursor {
            page = page.query(&[("cursor", c)]);
        }
        let v = page.expect(200).await;
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        if seen.is_empty() {
            // Newest first; an upload landing mid-walk must not disturb the pages after it.
            assert_eq!(items[0]["id"], ids.last().unwrap().as_str());
            app.stored(&u.token, "late.png", png(60)).await;
        }
        seen.extend(items.iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let seen = each_once(&seen, "id");
    for id in &ids {
        assert!(seen.contains(id), "{id} missing");
    }
    let v = app.files().as_user(&u).expect(200).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 24);
    assert!(v["next_cursor"].is_null());
}

#[tokio::test]
async fn delete_removes_row_and_blob() {
    let app = TestApp::spawn().await;
    let u = app.user("deleter").await;
    let f = app.stored(&u.token, "d.png", png(500)).await;
    let id = f["id"].as_str().unwrap();
    assert_eq!(app.blob_files().len(), 1);
    assert_eq!(app.delete_file(id).as_user(&u).status().await, 204);
    assert!(app.blob_files().is_empty());
    app.file(id).as_user(&u).problem(404).await;
    app.delete_file(id).as_user(&u).problem(404).await;
}

#[tokio::test]
async fn internal_errors_reveal_nothing() {
    let app = TestApp::spawn().await;
    let u = app.user("unlucky").await;
    let f = app.stored(&u.token, "lost.png", png(100)).await;
    // An operator deletes the blob by hand: the row now points at nothing.
    for p in app.blob_files() {
        app.remove_blob(&p);
    }
    let r = app.download(&u.token, f["id"].as_str().unwrap(), &[]).await;
    let v = problem(r, 500).await;
    let body = v.to_string();
    assert_eq!(v["detail"], "an internal error occurred");
    for leak in [
        "blob",
        "storage",
        "/tmp",
        "sqlite",
        "panicked",
        "src/",
        f["id"].as_str().unwrap(),
    ] {
        assert!(!body.to_lowercase().contains(leak), "{leak} in {body}");
    }
    // The cause is in the log for the operator.
    app.eventually("the cause is logged", || app.logs().contains("is missing"))
        .await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::builder()
        .env("COFFER_SERVER__SEND_TIMEOUT_SECS", "1")
        .spawn()
        .await;
    let u = app.user("stalled").await;
    let size = 24 * 1024 * 1024;
    let f = app.stored(&u.token, "big.png", png(size)).await;
    // A small receive buffer, so the kernel cannot absorb the whole file for the client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(app.addr).await.unwrap();
    let req = format!(
        "GET /api/v1/files/{}/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        f["id"].as_str().unwrap(),
        u.token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read nothing for longer than the send timeout...
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // ...then everything: the connection ends before the body does.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < size, "the whole body arrived ({got} bytes)");
    // The server is fine and serves the next reader in full.
    let r = app.download(&u.token, f["id"].as_str().unwrap(), &[]).await;
    assert_eq!(r.bytes().await.unwrap().len(), size);
}

/// Over HTTP/2 a reader that keeps its stream's flow-control window shut cannot be cut off by
/// the connection's send timeout (the connection goes on serving other streams and pings):
/// that stream alone is reset once the window has stayed shut for `send_timeout_secs`, and
/// the connection keeps serving.
/// A peer that never opens its window holds what h2 keeps of the answers it asked for (the
/// last piece of each, after the stream's task ended) only as long as its connection lives:
/// with no answer under way for the header timeout, the connection is told to go away and is
/// dropped after the send timeout.
#[tokio::test]
async fn an_http2_connection_whose_answers_never_drain_is_closed_once_idle() {
    let app = TestApp::builder()
        .env("COFFER_SERVER__SEND_TIMEOUT_SECS", "1")
        .env("COFFER_SERVER__HEADER_READ_TIMEOUT_SECS", "1")
        .env("COFFER_SERVER__HTTP2", "true")
        .spawn()
        .await;
    let u = app.user("h2pinned").await;
    let f = app.stored(&u.token, "some.png", png(300_000)).await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // One byte of window per stream, never opened again.
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let path = format!("/api/v1/files/{}/content", f["id"].as_str().unwrap());
    let mut answers = Vec::new();
    for _ in 0..4 {
        let mut ready = client.clone().ready().await.unwrap();
        let req = http::Request::get(format!("http://{}{path}", app.addr))
            .header("authorization", format!("Bearer {}", u.token))
            .header("range", "bytes=0-9999")
            .body(())
            .unwrap();
        let (answer, _) = ready.send_request(req, true).unwrap();
        answers.push(answer);
    }
    for answer in answers {
        assert_eq!(answer.await.unwrap().status(), 206);
    }
    // Each answer's task ends once its pieces are handed over; the window never lets them
    // out, and the connection goes within the two timeouts (plus the checks' second).
    let closed = tokio::time::timeout(std::time::Duration::from_secs(8), conn).await;
    assert!(closed.is_ok(), "the connection was kept open");
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_reset_and_the_connection_lives_on() {
    let app = TestApp::builder()
        .env("COFFER_SERVER__SEND_TIMEOUT_SECS", "1")
        .env("COFFER_SERVER__HTTP2", "true")
        .spawn()
        .await;
    let u = app.user("h2stalled").await;
    let size = 4 * 1024 * 1024;
    let f = app.stored(&u.token, "big.png", png(size)).await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // A 16 KiB stream window that this client never opens again (no capacity is released).
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", app.addr))
            .header("authorization", format!("Bearer {}", u.token))
            .body(())
            .unwrap()
    };
    let path = format!("/api/v1/files/{}/content", f["id"].as_str().unwrap());
    let (answer, _) = client.send_request(get(&path), true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    // Read what the window let through, without releasing capacity, until the stream ends.
    let started = std::time::Instant::now();
    let mut got = 0usize;
    let ended = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), body.data()).await {
            Err(_) => panic!("the stalled stream was never reset ({got} bytes)"),
            Ok(None) => break None,
            Ok(Some(Ok(chunk))) => got += chunk.len(),
            Ok(Some(Err(e))) => break Some(e),
        }
    };
    let e = ended.expect("the stream ended cleanly although the window never opened");
    assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}");
    assert!(got < size, "{got} bytes");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    // The same connection serves the next request, and a reader that reads (and so opens
    // its window again) gets the whole file however small the window.
    let mut client = client.ready().await.unwrap();
    let (answer, _) = client.send_request(get("/healthz"), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    let mut client = client.ready().await.unwrap();
    let (answer, _) = client.send_request(get(&path), true).unwrap();
    let mut body = answer.await.unwrap().into_body();
    let mut whole = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        whole += chunk.len();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(whole, size);
}
