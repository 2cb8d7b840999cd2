//! Share links: public downloads by capability URL, expiry, budgets, revocation, races.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestApp;
use crate::helpers::fixtures::png;

/// The token part of a link's URL.
fn token_of(url: &str) -> &str {
    url.trim_start_matches("/api/v1/links/")
}

#[tokio::test]
async fn links_serve_without_credentials_with_safe_headers() {
    let app = TestApp::spawn().await;
    let u = app.user("sharer").await;
    let bytes = png(3000);
    let f = app.stored(&u.token, "shared.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    let l = app
        .new_link(&u.token, id, &json!({"expires_in": 3600}))
        .await;
    let url = l["url"].as_str().unwrap();
    assert!(url.starts_with("/api/v1/links/"));
    let token = token_of(url);
    assert!(token.len() >= 43, "256 bits, URL-safe");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_ne!(l["id"].as_str().unwrap(), token);
    assert!(l["max_downloads"].is_null());
    assert!(l["expires_at"].is_string());

    let r = app.get(url).send().await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; sandbox; frame-ancestors 'none'"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    let cd = h["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("attachment"), "{cd}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..]);
    let r = app.get(url).header("range", "bytes=0-9").send().await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..10]);
    // The token never reaches the log.
    assert!(!app.logs().contains(token));
    // Unknown tokens are 404.
    let unknown = format!("/api/v1/links/{}", "A".repeat(43));
    app.get(&unknown).problem(404).await;
}

#[tokio::test]
async fn budgets_count_gets_only_and_are_410_when_spent() {
    let app = TestApp::spawn().await;
    let u = app.user("budget").await;
    let f = app.stored(&u.token, "b.png", png(100)).await;
    let id = f["id"].as_str().unwrap();
    let l = app
        .new_link(
            &u.token,
            id,
            &json!({"expires_in": 3600, "max_downloads": 2}),
        )
        .await;
    let url = l["url"].as_str().unwrap();
    assert_eq!(l["max_downloads"], 2);
    // HEAD and 304 do not count.
    assert_eq!(app.head(url).status().await, 200);
    let etag = format!("\"{}\"", f["sha256"].as_str().unwrap());
    let unchanged = app.get(url).header("if-none-match", &etag);
    assert_eq!(unchanged.status().await, 304);
    // Nor does a failed precondition (412).
    let changed = app.get(url).header("if-match", "\"another\"");
    assert_eq!(changed.status().await, 412);
    assert_eq!(app.get(url).status().await, 200);
    let ranged = app.get(url).header("range", "bytes=0-1");
    assert_eq!(ranged.status().await, 206);
    app.get(url).problem(410).await;
    assert_eq!(app.head(url).status().await, 410);
}

#[tokio::test]
async fn a_one_use_link_serves_exactly_one_of_many_racing_gets() {
    let app = TestApp::spawn().await;
    let u = app.user("racer").await;
    let f = app.stored(&u.token, "once.png", png(50_000)).await;
    let l = app
        .new_link(
            &u.token,
            f["id"].as_str().unwrap(),
            &json!({"expires_in": 3600, "max_downloads": 1}),
        )
        .await;
    let url = l["url"].as_str().unwrap();
    let gets = (0..16).map(|_| app.get(url).status());
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
    let short = app.new_link(&u.token, id, &json!({"expires_in": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.get(short["url"].as_str().unwrap()).problem(410).await;

    let l = app
        .new_link(&u.token, id, &json!({"expires_in": 600}))
        .await;
    let link_id = l["id"].as_str().unwrap();
    let other = app.user("stranger").await;
    app.delete_link(link_id).as_user(&other).problem(404).await;
    assert_eq!(app.delete_link(link_id).as_user(&u).status().await, 204);
    app.get(l["url"].as_str().unwrap()).problem(404).await;

    // Links die with their file.
    let l = app
        .new_link(&u.token, id, &json!({"expires_in": 600}))
        .await;
    assert_eq!(app.delete_file(id).as_user(&u).status().await, 204);
    app.get(l["url"].as_str().unwrap()).problem(404).await;
}

#[tokio::test]
async fn link_requests_are_validated() {
    let app = TestApp::builder()
        .env("COFFER_LINKS__MAX_EXPIRES_SECS", "100")
        .spawn()
        .await;
    let u = app.user("validator").await;
    let f = app.stored(&u.token, "v.png", png(100)).await;
    let id = f["id"].as_str().unwrap();
    for (row, body, want) in [
        (
            "no lifetime",
            json!({"expires_in": 0}),
            (422, "validation-failed", "expires_in"),
        ),
        (
            "over the configured maximum",
            json!({"expires_in": 101}),
            (422, "validation-failed", "expires_in"),
        ),
        (
            "a budget of nothing",
            json!({"expires_in": 10, "max_downloads": 0}),
            (422, "validation-failed", "max_downloads"),
        ),
        (
            "an unknown field",
            json!({"expires_in": 10, "extra": 1}),
            (422, "validation-failed", "extra"),
        ),
        (
            "no fields",
            json!({}),
            (422, "validation-failed", "expires_in"),
        ),
    ] {
        let got = app.create_link(id, &body).as_user(&u).refusal().await;
        assert_eq!(got, want, "{row}");
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
    let l = app
        .new_link(
            &u.token,
            f["id"].as_str().unwrap(),
            &json!({"expires_in": 600}),
        )
        .await;
    let url = l["url"].as_str().unwrap();
    assert_eq!(app.get(url).status().await, 200);
    let entries = app.audit_with(&admin.token, &["link.use"]).await;
    let uses: Vec<_> = entries
        .iter()
        .filter(|e| e["event"] == "link.use")
        .collect();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0]["subject_id"], l["id"]);
    assert!(entries.iter().any(|e| e["event"] == "link.create"));
    assert!(
        !serde_json::to_string(&entries)
            .unwrap()
            .contains(token_of(url))
    );
}
