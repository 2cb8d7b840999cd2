//! Liveness, readiness, metrics, graceful shutdown.

use crate::helpers::TestApp;

#[tokio::test]
async fn healthz_and_readyz() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").status().await, 200);
    assert_eq!(app.get("/readyz").status().await, 200);
}

#[tokio::test]
async fn readyz_follows_the_storage_root() {
    let app = TestApp::builder()
        .single_node("makes the local storage root unwritable")
        .spawn()
        .await;
    let moved = app.root.with_extension("moved");
    std::fs::rename(&app.root, &moved).unwrap();
    assert_eq!(app.get("/readyz").status().await, 503);
    std::fs::rename(&moved, &app.root).unwrap();
    assert_eq!(app.get("/readyz").status().await, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = TestApp::builder()
        .single_node("metrics count one process's requests")
        .spawn()
        .await;
    app.get("/healthz").send().await;
    app.get("/no/such/thing").send().await;
    let r = app.get("/metrics").send().await;
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
