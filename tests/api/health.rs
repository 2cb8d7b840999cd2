//! Liveness, readiness, metrics, graceful shutdown.

use reqwest::Method;

use crate::helpers::TestApp;

#[tokio::test]
async fn healthz_and_readyz() {
    let app = TestApp::spawn().await;
    let r = app.req(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.req(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn readyz_follows_the_storage_root() {
    let app = TestApp::spawn().await;
    let moved = app.root.with_extension("moved");
    std::fs::rename(&app.root, &moved).unwrap();
    let r = app.req(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(r.status(), 503);
    std::fs::rename(&moved, &app.root).unwrap();
    let r = app.req(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = TestApp::spawn().await;
    app.req(Method::GET, "/healthz").send().await.unwrap();
    app.req(Method::GET, "/no/such/thing").send().await.unwrap();
    let r = app.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains(
            r#"coffer_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(text.contains("coffer_http_request_duration_seconds_bucket"));
    assert!(text.contains("coffer_rate_limited_total"));
    assert!(
        !text.contains("/no/such/thing"),
        "raw paths never become labels"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut app = TestApp::spawn().await;
    let status = app.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    app.eventually("the last log line", || app.logs().contains("stopped"))
        .await;
    // Nothing kept the audit writer alive past the drain (it used to wait out its timeout).
    assert!(!app.logs().contains("audit writer still has handles"));
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
