//! Share links: public downloads by capability URL, expiry, budgets, revocation, races.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, TestUser, problem};

async fn link(app: &TestApp, u: &TestUser, file: &str, body: Value) -> Value {
    let r = app
        .authed(
            Method::POST,
            &format!("/api/v1/files/{file}/links"),
            &u.token,
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

#[tokio::test]
async fn links_serve_without_credentials_with_safe_headers() {
    let app = TestApp::spawn().await;
    let u = app.user("sharer").await;
    let bytes = png(3000);
    let f = app.stored(&u.token, "shared.png", bytes.clone()).await;
    let l = link(
        &app,
        &u,
        f["id"].as_str().unwrap(),
        json!({"expires_in": 3600}),
    )
    .await;
    let url = l["url"].as_str().unwrap();
    assert!(url.starts_with("/api/v1/links/"));
    let token = url.trim_start_matches("/api/v1/links/");
    assert!(token.len() >= 43, "256 bits, URL-safe");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_ne!(l["id"].as_str().unwrap(), token);
    assert!(l["max_downloads"].is_null());
    assert!(l["expires_at"].is_string());

    let r = app.req(Method::GET, url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-security-policy"],
        "default-src 'none'; sandbox"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..]);
    let r = app
        .req(Method::GET, url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..10]);
    // The token never reaches the log.
    assert!(!app.logs().contains(token));
    // Unknown tokens are 404.
    problem(
        app.req(
            Method::GET,
            "/api/v1/links/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn budgets_count_gets_only_and_are_410_when_spent() {
    let app = TestApp::spawn().await;
    let u = app.user("budget").await;
    let f = app.stored(&u.token, "b.png", png(100)).await;
    let l = link(
        &app,
        &u,
        f["id"].as_str().unwrap(),
        json!({"expires_in": 3600, "max_downloads": 2}),
    )
    .await;
    let url = l["url"].as_str().unwrap();
    assert_eq!(l["max_downloads"], 2);
    // HEAD and 304 do not count.
    assert_eq!(
        app.req(Method::HEAD, url).send().await.unwrap().status(),
        200
    );
    let etag = format!("\"{}\"", f["sha256"].as_str().unwrap());
    assert_eq!(
        app.req(Method::GET, url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap()
            .status(),
        304
    );
    assert_eq!(
        app.req(Method::GET, url).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        app.req(Method::GET, url)
            .header("range", "bytes=0-1")
            .send()
            .await
            .unwrap()
            .status(),
        206
    );
    problem(app.req(Method::GET, url).send().await.unwrap(), 410).await;
    assert_eq!(
        app.req(Method::HEAD, url).send().await.unwrap().status(),
        410
    );
}

#[tokio::test]
async fn a_one_use_link_serves_exactly_one_of_many_racing_gets() {
    let app = TestApp::spawn().await;
    let u = app.user("racer").await;
    let f = app.stored(&u.token, "once.png", png(50_000)).await;
    let l = link(
        &app,
        &u,
        f["id"].as_str().unwrap(),
        json!({"expires_in": 3600, "max_downloads": 1}),
    )
    .await;
    let url = l["url"].as_str().unwrap().to_owned();
    let gets = (0..16).map(|_| {
        let (app, url) = (&app, url.clone());
        async move {
            app.req(Method::GET, &url)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let mut statuses = futures_util::future::join_all(gets).await;
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 410),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn expired_links_are_410_and_revoked_ones_404() {
    let app = TestApp::spawn().await;
    let u = app.user("expirer").await;
    let f = app.stored(&u.token, "e.png", png(100)).await;
    let id = f["id"].as_str().unwrap();
    let short = link(&app, &u, id, json!({"expires_in": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    problem(
        app.req(Method::GET, short["url"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
        410,
    )
    .await;

    let l = link(&app, &u, id, json!({"expires_in": 600})).await;
    let other = app.user("stranger").await;
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/links/{}", l["id"].as_str().unwrap()),
            &other.token,
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/links/{}", l["id"].as_str().unwrap()),
            &u.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        204
    );
    problem(
        app.req(Method::GET, l["url"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // Links die with their file.
    let l = link(&app, &u, id, json!({"expires_in": 600})).await;
    assert_eq!(
        app.authed(Method::DELETE, &format!("/api/v1/files/{id}"), &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(
        app.req(Method::GET, l["url"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn link_requests_are_validated() {
    let app = TestApp::builder()
        .env("COFFER_LINKS__MAX_EXPIRES_SECS", "100")
        .spawn()
        .await;
    let u = app.user("validator").await;
    let f = app.stored(&u.token, "v.png", png(100)).await;
    let path = format!("/api/v1/files/{}/links", f["id"].as_str().unwrap());
    for body in [
        json!({"expires_in": 0}),
        json!({"expires_in": 101}),
        json!({"expires_in": 10, "max_downloads": 0}),
        json!({"expires_in": 10, "extra": 1}),
        json!({}),
    ] {
        let r = app
            .authed(Method::POST, &path, &u.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        problem(r, 422).await;
    }
    let admin = app.admin("linkadmin").await;
    let entries = app.audit(&admin.token).await;
    assert!(
        entries
            .iter()
            .all(|e| !e.to_string().contains("/api/v1/links/"))
    );
}

#[tokio::test]
async fn link_use_is_audited_by_id_not_token() {
    let app = TestApp::spawn().await;
    let admin = app.admin("linkaudit").await;
    let u = app.user("linker").await;
    let f = app.stored(&u.token, "a.png", png(100)).await;
    let l = link(
        &app,
        &u,
        f["id"].as_str().unwrap(),
        json!({"expires_in": 600}),
    )
    .await;
    app.req(Method::GET, l["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let token = l["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("/api/v1/links/");
    let entries = app.audit(&admin.token).await;
    let uses: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "link.use")
        .collect();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0]["subject_id"], l["id"]);
    assert!(entries.iter().any(|e| e["event"] == "link.create"));
    assert!(!serde_json::to_string(&entries).unwrap().contains(token));
}
