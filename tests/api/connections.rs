//! Connection policies: a connection that never sends a request is dropped, one address cannot
//! hold every connection, and cleartext HTTP/2 is spoken only when configured.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::TestApp;

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
