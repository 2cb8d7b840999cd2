//! Connection policies: a connection that never sends a request is dropped, one address cannot
//! hold every connection, cleartext HTTP/2 is spoken only when configured, and an idle
//! keep-alive connection is parked without hyper's buffers yet serves its next request.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::TestApp;
use crate::helpers::raw::RawConn;

/// Whether the server closes `s` (EOF or reset) within `within` without sending a byte; fails
/// the test if it neither answers nor closes by then.
async fn closed_silently(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .expect("the server closes in time");
    read.unwrap_or(0) == 0
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_dropped() {
    let app = TestApp::builder()
        .env("COFFER_SERVER__HEADER_READ_TIMEOUT_SECS", "1")
        .spawn()
        .await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut partial_h2 = TcpStream::connect(app.addr).await.unwrap();
    partial_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for (row, s) in [
        ("silent", &mut silent),
        ("half an h2 preface", &mut partial_h2),
    ] {
        let closed = closed_silently(s, Duration::from_secs(10)).await;
        assert!(closed, "{row}: an answer instead of a close");
    }
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let app = TestApp::builder()
        .single_node("counts one server's connections per address")
        .env("COFFER_SERVER__MAX_CONNECTIONS_PER_IP", "2")
        .spawn()
        .await;
    let held = [
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third connection from the same address is closed at once.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_silently(&mut third, Duration::from_secs(5)).await);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.get("/healthz").status().await, 200);
}

#[tokio::test]
async fn cleartext_http2_is_off_unless_configured() {
    // The HTTP/2 preface, then an empty SETTINGS frame.
    const OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    async fn first_frame_type(app: &TestApp) -> Option<u8> {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(OPENING).await.unwrap();
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .expect("the server answers or closes");
        read.ok().map(|_| head[3])
    }
    // Off by default: the connection is closed without an HTTP/2 answer.
    let app = TestApp::spawn().await;
    assert_eq!(first_frame_type(&app).await, None);
    // On: the server's SETTINGS frame (type 4) comes back.
    let app = TestApp::builder()
        .env("COFFER_SERVER__HTTP2", "true")
        .spawn()
        .await;
    assert_eq!(first_frame_type(&app).await, Some(4));
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Open `n` keep-alive connections that each made one request, then wait until the server has
/// parked them.
async fn parked_connections(app: &TestApp, n: u64) -> Vec<RawConn> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut c = RawConn::open(app.addr).await;
        c.send(HEALTHZ).await;
        assert_eq!(c.response().await.status, 200);
        conns.push(c);
    }
    wait_parked(app, n).await;
    conns
}

/// Wait until at least `n` idle connections are parked (the test client's own pooled
/// connection is busy asking, so it is not among them).
async fn wait_parked(app: &TestApp, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.metric("coffer_http_connections_parked").await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "idle connections were never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests_as_if_never_parked() {
    let app = TestApp::builder()
        .single_node("reads one process's connection gauges in its /metrics")
        .spawn()
        .await;
    let mut conns = parked_connections(&app, 3).await;
    // Twice over: a parked connection that served a request is parked again.
    for round in 0..2 {
        for (i, c) in conns.iter_mut().enumerate() {
            c.send(HEALTHZ).await;
            let r = c.response().await;
            assert_eq!(r.status, 200, "round {round}, connection {i}");
            assert_ne!(r.header("connection"), Some("close"), "round {round}");
        }
        if round == 0 {
            wait_parked(&app, 3).await;
        }
    }
    // Two requests pipelined in one write, the second one's head cut short, then a pause long
    // enough to park: the first is answered, and the second once its head is whole (hyper had
    // read the start of it before it was parked).
    let c = &mut conns[0];
    c.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /heal")
        .await;
    assert_eq!(c.response().await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(b"thz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    // Open and parked connections are counted (this test's three, plus the client's own).
    assert!(app.metric("coffer_http_connections_open").await >= 3);
}

#[tokio::test]
async fn uploads_and_downloads_pass_whole_over_parked_connections() {
    let app = TestApp::spawn().await;
    let user = app.user("parker").await;
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = app.upload(&user.token, "a.txt", body.clone()).await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The test client's pooled connection goes idle (parked within a second), then carries the
    // next request (a download) and the one after (a second upload).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = app
        .get(&format!("/api/v1/files/{id}/content"))
        .as_user(&user)
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(got.as_ref(), body.as_slice());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.upload(&user.token, "b.txt", body).await.status(), 201);
}

/// A parked connection's next request head is due within the header read timeout counted from
/// its last answer, as without parking: neither the park nor a head that starts while parked
/// restarts the clock (a slow client would otherwise get it twice).
#[tokio::test]
async fn a_parked_connection_gets_one_header_read_timeout_from_its_last_answer() {
    let app = TestApp::builder()
        .single_node("reads one process's connection gauges in its /metrics")
        .env("COFFER_SERVER__HEADER_READ_TIMEOUT_SECS", "3")
        .spawn()
        .await;
    // Quiet: closed without a word about 3 s after the answer (the clock here starts once it
    // is parked, up to a second after the answer).
    let mut quiet = parked_connections(&app, 1).await.remove(0);
    let t0 = std::time::Instant::now();
    assert!(quiet.closed().await, "an answer instead of a close");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed too soon: {waited:?}"
    );
    // A head started while parked, 2.5 s after the answer, and never finished: closed by the
    // same deadline, not 3 s after the head started.
    let mut c = RawConn::open(app.addr).await;
    c.send(HEALTHZ).await;
    assert_eq!(c.response().await.status, 200);
    let t0 = std::time::Instant::now();
    wait_parked(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(t0.elapsed())).await;
    c.send(b"GET /healthz HTTP/1.1\r\n").await;
    assert!(c.closed().await, "an answer to half a head");
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_millis(4800),
        "the park restarted the header timeout: closed {waited:?} after the answer"
    );
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let mut app = TestApp::builder()
        .single_node("signals one process")
        .env("COFFER_SERVER__SHUTDOWN_GRACE_SECS", "30")
        .spawn()
        .await;
    let mut conns = parked_connections(&app, 2).await;
    let started = std::time::Instant::now();
    let status = app.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for idle connections: {:?}",
        started.elapsed()
    );
    for c in &mut conns {
        assert!(c.closed().await);
    }
}
