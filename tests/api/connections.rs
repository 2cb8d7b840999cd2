//! Connection policies: a connection that never sends a request is dropped, one address cannot
//! hold every connection, and cleartext HTTP/2 is spoken only when configured.

use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::TestApp;

#[tokio::test]
async fn a_connection_that_never_speaks_is_dropped() {
    let app = TestApp::builder()
        .env("COFFER_SERVER__HEADER_READ_TIMEOUT_SECS", "1")
        .spawn()
        .await;
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut partial_h2 = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    partial_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for s in [&mut silent, &mut partial_h2] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("still open")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::builder()
        .env("COFFER_SERVER__MAX_CONNECTIONS_PER_IP", "2")
        .spawn()
        .await;
    let held = [
        tokio::net::TcpStream::connect(app.addr).await.unwrap(),
        tokio::net::TcpStream::connect(app.addr).await.unwrap(),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A third connection from the same address is closed at once.
    let mut third = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        app.req(Method::GET, "/healthz")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn cleartext_http2_is_off_unless_configured() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The HTTP/2 preface, then an empty SETTINGS frame.
    const OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    async fn first_frame_type(app: &TestApp) -> Option<u8> {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(OPENING).await.unwrap();
        let mut head = [0u8; 9];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut head))
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
