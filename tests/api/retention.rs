//! Retention: expiring files (bounded, with a default) disappear with their blobs.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, problem};

#[tokio::test]
async fn expired_files_disappear_with_their_blobs() {
    let app = TestApp::builder()
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let admin = app.admin("keeper").await;
    let u = app.user("ephemeral").await;
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .query(&[("filename", "short.png"), ("expires_in", "1")])
        .body(png(500))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    assert!(f["expires_at"].is_string());
    let kept = app.stored(&u.token, "kept.png", png(500)).await;
    let id = f["id"].as_str().unwrap().to_owned();
    app.eventually("the blob is swept", || app.blob_files().len() == 1)
        .await;
    problem(
        app.authed(Method::GET, &format!("/api/v1/files/{id}"), &u.token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        app.authed(
            Method::GET,
            &format!("/api/v1/files/{}", kept["id"].as_str().unwrap()),
            &u.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        200
    );
    // The sweeper records the expiry right after removing the row.
    for _ in 0..200 {
        let entries = app.audit(&admin.token).await;
        if entries
            .iter()
            .any(|e| e["event"] == "file.expire" && e["subject_id"] == id.as_str())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no file.expire entry");
}

#[tokio::test]
async fn expiry_is_bounded_and_defaults_apply() {
    let app = TestApp::builder()
        .env("COFFER_RETENTION__MAX_EXPIRES_SECS", "3600")
        .env("COFFER_RETENTION__DEFAULT_TTL_SECS", "600")
        .spawn()
        .await;
    let u = app.user("bounded").await;
    for bad in ["0", "3601", "-5", "soon"] {
        let r = app
            .authed(Method::POST, "/api/v1/files", &u.token)
            .query(&[("filename", "a.png"), ("expires_in", bad)])
            .body(png(50))
            .send()
            .await
            .unwrap();
        let v = problem(r, 422).await;
        assert_eq!(v["errors"][0]["field"], "expires_in");
    }
    let f = app.stored(&u.token, "default.png", png(50)).await;
    let at = time::OffsetDateTime::parse(
        f["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let secs = (at - time::OffsetDateTime::now_utc()).whole_seconds();
    assert!((590..=600).contains(&secs), "{secs}");
    // Multipart takes the query too.
    let part = reqwest::multipart::Part::bytes(png(50)).file_name("m.png");
    let r = app
        .authed(Method::POST, "/api/v1/files", &u.token)
        .query(&[("expires_in", "60")])
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["expires_at"].is_string());
}
