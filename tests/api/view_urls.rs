//! View URLs (`API.md`, "Reading from a browser page"): minted by the owner, read with no
//! credentials exactly as the owner's download, 401 for every way a token can be wrong, dead
//! on revocation and with their file or owner, never in logs or the audit trail.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::fixtures::{pdf, png};
use crate::helpers::{TestApp, TestUser, stack};

fn view_url_path(id: &str) -> String {
    format!("/api/v1/files/{id}/view-url")
}

/// Mint a view URL as `token` (a bearer token): the 201 body.
async fn mint(app: &TestApp, token: &str, id: &str, body: Value) -> Value {
    app.post(&view_url_path(id))
        .bearer(token)
        .json(&body)
        .expect(201)
        .await
}

/// The token part of a view URL.
fn token_of(url: &str) -> &str {
    url.split_once("?view=").map(|(_, t)| t).unwrap_or_default()
}

async fn revoke(app: &TestApp, u: &TestUser) {
    let r = app
        .post("/api/v1/users/me/revoke-view-urls")
        .as_user(u)
        .send()
        .await;
    assert_eq!(r.status(), 204);
}

/// The headers a view URL answer must share with the owner's own download.
const SAME_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "accept-ranges",
    "cache-control",
    "content-disposition",
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
];

#[tokio::test]
async fn a_view_url_serves_exactly_as_the_owners_download_with_no_credentials() {
    let app = TestApp::spawn().await;
    let admin = app.admin("viewadmin").await;
    let u = app.user("viewer").await;
    let bytes = png(5000);
    let f = app.stored(&u.token, "pic.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    let v = mint(&app, &u.token, id, json!({})).await;
    let url = v["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("/api/v1/files/{id}/content?view=")),
        "{url}"
    );
    let token = token_of(url);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "URL-safe: {token}"
    );
    // Default lifetime: 300 s.
    let expires = v["expires_at"].as_str().unwrap();
    let left = seconds_until(expires);
    assert!((295..=301).contains(&left), "{expires}: {left} s");

    let owner = app.download(&u.token, id, &[]).await;
    assert_eq!(owner.status(), 200);
    let viewed = app.get(url).send().await;
    assert_eq!(viewed.status(), 200);
    for h in SAME_HEADERS {
        assert_eq!(owner.headers().get(*h), viewed.headers().get(*h), "{h}");
    }
    assert_eq!(viewed.bytes().await.unwrap().as_ref(), &bytes[..]);

    // HEAD, Range, If-None-Match, If-Range, inline: as the owner's download.
    let head = app.head(url).send().await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "5000");
    let r = app.get(url).header("range", "bytes=100-199").send().await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/5000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[100..200]);
    let etag = format!("\"{}\"", f["sha256"].as_str().unwrap());
    assert_eq!(
        app.get(url).header("if-none-match", &etag).status().await,
        304
    );
    let stale = app
        .get(url)
        .headers(&[("range", "bytes=0-9"), ("if-range", "\"0000\"")])
        .send()
        .await;
    assert_eq!(stale.status(), 200, "a stale If-Range gets the whole file");
    let unsatisfiable = app.get(url).header("range", "bytes=9000-").send().await;
    assert_eq!(unsatisfiable.status(), 416);
    let inline = app.get(&format!("{url}&disposition=inline")).send().await;
    assert_eq!(inline.status(), 200);
    let cd = inline.headers()["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("inline"), "{cd}");
    app.get(&format!("{url}&disposition=nope"))
        .problem(400)
        .await;

    // One `file.view` entry for the token, however often it was used; no `file.download`
    // for reads through it (only the owner's own one above).
    app.audited(&admin.token, "file.view", |e| e["event"] == "file.view")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let trail = app.audit(&admin.token).await;
    let count = |name: &str| trail.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("file.view"), 1, "{trail:#?}");
    assert_eq!(count("file.download"), 1, "{trail:#?}");
    let view = trail.iter().find(|e| e["event"] == "file.view").unwrap();
    assert_eq!(view["subject_id"], id);
    assert_eq!(view["detail"]["owner"], u.id.as_str());
    // Another token for the same file is another entry (once, too).
    let second = mint(&app, &u.token, id, json!({"expires_in": 60})).await;
    let second = second["url"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(app.get(second).status().await, 200);
    }
    let views = || async {
        let trail = app.audit(&admin.token).await;
        trail.iter().filter(|e| e["event"] == "file.view").count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while views().await < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(views().await, 2);
    let trail = app.audit(&admin.token).await;
    // The tokens are nowhere: not in the log, not in the audit trail.
    let (logs, audited) = (app.logs(), serde_json::to_string(&trail).unwrap());
    for t in [token, token_of(second)] {
        assert!(!logs.contains(t), "token in the log");
        assert!(!audited.contains(t), "token in the audit trail");
    }
    assert!(!app.logs().contains("?view="), "query string in the log");
}

fn seconds_until(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    (t - time::OffsetDateTime::now_utc()).whole_seconds()
}

#[tokio::test]
async fn minting_is_for_the_owner_with_a_checked_lifetime() {
    let app = TestApp::builder()
        .env("COFFER_LINKS__MAX_VIEW_SECS", "100")
        .spawn()
        .await;
    let u = app.user("minter").await;
    let other = app.user("stranger").await;
    let admin = app.admin("mintadmin").await;
    let f = app.stored(&u.token, "a.png", png(100)).await;
    let id = f["id"].as_str().unwrap();

    // No body at all, `{}` and an explicit lifetime all work; the default is capped by the
    // configured maximum.
    let r = app.post(&view_url_path(id)).as_user(&u).send().await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert!(seconds_until(v["expires_at"].as_str().unwrap()) <= 100);
    let v = mint(&app, &u.token, id, json!({"expires_in": 100})).await;
    assert!((95..=101).contains(&seconds_until(v["expires_at"].as_str().unwrap())));
    // JSON null is no body too (the document describes the optional body as nullable).
    let v = mint(&app, &u.token, id, Value::Null).await;
    assert!(seconds_until(v["expires_at"].as_str().unwrap()) <= 100);

    for bad in [
        json!({"expires_in": 0}),
        json!({"expires_in": 101}),
        json!({"expires_in": -5}),
        json!({"expires_in": "60"}),
        json!({"expires_in": 60, "file": id}),
    ] {
        let p = app
            .post(&view_url_path(id))
            .as_user(&u)
            .json(&bad)
            .problem(422)
            .await;
        assert!(p["errors"].is_array(), "{bad}: {p}");
    }
    // Not JSON: 415; no credentials: 401; someone else's file, even for an admin, or no
    // such file: 404.
    let r = app
        .post(&view_url_path(id))
        .as_user(&u)
        .header("content-type", "text/plain")
        .body("expires_in=5")
        .send()
        .await;
    assert_eq!(r.status(), 415);
    app.post(&view_url_path(id)).problem(401).await;
    app.post(&view_url_path(id))
        .as_user(&other)
        .problem(404)
        .await;
    app.post(&view_url_path(id))
        .as_user(&admin)
        .problem(404)
        .await;
    app.post(&view_url_path("not-a-uuid"))
        .as_user(&u)
        .problem(404)
        .await;
    let missing = "01890000-0000-7000-8000-000000000000";
    app.post(&view_url_path(missing))
        .as_user(&u)
        .problem(404)
        .await;
}

/// `token` with its expiry moved by `delta` seconds (the MAC left alone).
fn with_tampered_expiry(token: &str, delta: i64) -> String {
    let mut raw = URL_SAFE_NO_PAD.decode(token).unwrap();
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&raw[1..9]);
    let moved = i64::from_be_bytes(exp) + delta;
    raw[1..9].copy_from_slice(&moved.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

#[tokio::test]
async fn a_token_opens_only_its_own_file_until_it_expires() {
    let app = TestApp::spawn().await;
    let u = app.user("holder").await;
    let a = app.stored(&u.token, "a.png", png(100)).await;
    let b = app.stored(&u.token, "b.png", png(200)).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let v = mint(&app, &u.token, a, json!({"expires_in": 60})).await;
    let token = token_of(v["url"].as_str().unwrap()).to_owned();
    let content = |id: &str, t: &str| format!("/api/v1/files/{id}/content?view={t}");
    assert_eq!(app.get(&content(a, &token)).status().await, 200);

    let longer = with_tampered_expiry(&token, 3600);
    let mut flipped = URL_SAFE_NO_PAD.decode(&token).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let flipped = URL_SAFE_NO_PAD.encode(flipped);
    let cases: Vec<(&str, String)> = vec![
        ("replayed for another file", content(b, &token)),
        ("tampered expiry", content(a, &longer)),
        ("tampered MAC", content(a, &flipped)),
        ("malformed", content(a, "not-a-token")),
        ("empty", content(a, "")),
        ("too long", content(a, &"A".repeat(500))),
        ("not base64", content(a, "%21%21%21")),
        ("the file id is not a UUID", content("nope", &token)),
    ];
    for (what, path) in &cases {
        let r = app.get(path).send().await;
        assert_eq!(r.status(), 401, "{what}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json"),
            "{what}"
        );
        assert_eq!(app.head(path).status().await, 401, "{what} (HEAD)");
    }
    // A valid token wins over (absent) credentials; credentials do not rescue a bad token.
    let r = app.get(&content(b, &token)).bearer(&u.token).send().await;
    assert_eq!(r.status(), 401, "a view token is judged on its own");

    // Expired: minted for 1 s.
    let short = mint(&app, &u.token, a, json!({"expires_in": 1})).await;
    let short = short["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.get(&short).problem(401).await;
    // The longer-lived one still works.
    assert_eq!(app.get(&content(a, &token)).status().await, 200);
}

#[tokio::test]
async fn revocation_deletion_and_the_owners_deletion_end_view_urls() {
    let app = TestApp::spawn().await;
    let admin = app.admin("revokeadmin").await;
    let u = app.user("revoker").await;
    let other = app.user("bystander").await;
    let a = app.stored(&u.token, "a.png", png(100)).await;
    let a = a["id"].as_str().unwrap();
    let o = app.stored(&other.token, "o.png", png(100)).await;
    let o = o["id"].as_str().unwrap();

    let before = mint(&app, &u.token, a, json!({})).await;
    let before = before["url"].as_str().unwrap().to_owned();
    let others = mint(&app, &other.token, o, json!({})).await;
    let others = others["url"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&before).status().await, 200);

    // Revocation: every URL minted before stops at once; one minted after works; another
    // user's are untouched. Needs credentials.
    app.post("/api/v1/users/me/revoke-view-urls")
        .problem(401)
        .await;
    revoke(&app, &u).await;
    app.get(&before).problem(401).await;
    assert_eq!(app.get(&others).status().await, 200);
    let after = mint(&app, &u.token, a, json!({})).await;
    let after = after["url"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&after).status().await, 200);
    app.audited(&admin.token, "view.revoke", |e| {
        e["event"] == "view.revoke" && e["actor_id"] == u.id.as_str()
    })
    .await;

    // Deleting the file ends its view URLs.
    app.delete_file(a).as_user(&u).expect(204).await;
    app.get(&after).problem(401).await;

    // Deleting the owner ends theirs.
    assert_eq!(app.get(&others).status().await, 200);
    app.delete_user(&other.id).as_user(&admin).expect(204).await;
    app.get(&others).problem(401).await;
}

#[tokio::test]
async fn api_keys_mint_view_urls_and_ranges_work_through_them() {
    let app = TestApp::spawn().await;
    let u = app.user("backend").await;
    let key = app.new_api_key(&u.token, "server").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = pdf(40_000);
    let f = app.stored(&u.token, "doc.pdf", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    let v = app
        .post(&view_url_path(id))
        .api_key(&key)
        .json(&json!({"expires_in": 60}))
        .expect(201)
        .await;
    let url = v["url"].as_str().unwrap();
    // A video player's requests: an open-ended range, then one from the middle.
    let first = app.get(url).header("range", "bytes=0-").send().await;
    assert_eq!(first.status(), 206);
    assert_eq!(first.headers()["content-range"], "bytes 0-39999/40000");
    let mid = app.get(url).header("range", "bytes=20000-").send().await;
    assert_eq!(mid.status(), 206);
    assert_eq!(mid.bytes().await.unwrap().as_ref(), &bytes[20000..]);
    let tail = app.get(url).header("range", "bytes=-10").send().await;
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &bytes[39990..]);
    // The API key can revoke too.
    let r = app
        .post("/api/v1/users/me/revoke-view-urls")
        .api_key(&key)
        .send()
        .await;
    assert_eq!(r.status(), 204);
    app.get(url).problem(401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_revocation_on_one_node_reaches_the_other_at_once() {
    let Some(stack) = stack::require("postgres_a_revocation_on_one_node_reaches_the_other_at_once")
    else {
        return;
    };
    let a = TestApp::builder().postgres(&stack).spawn().await;
    let b = a.relaunch().spawn().await;
    let u = a.user("twonodes").await;
    let f = a.stored(&u.token, "n.png", png(500)).await;
    let id = f["id"].as_str().unwrap();
    let v = mint(&a, &u.token, id, json!({})).await;
    let url = v["url"].as_str().unwrap();
    let (ra, rb) = tokio::join!(
        a.req(Method::GET, url).send(),
        b.req(Method::GET, url).send()
    );
    assert_eq!(ra.unwrap().status(), StatusCode::OK);
    assert_eq!(
        rb.unwrap().status(),
        StatusCode::OK,
        "minted on a, read on b"
    );
    for _ in 0..3 {
        assert_eq!(a.get(url).status().await, 200);
        assert_eq!(b.get(url).status().await, 200);
    }
    // One `file.view` entry for the token, though both nodes saw its first use.
    let admin = a.admin("twonodesadmin").await;
    a.audited(&admin.token, "file.view", |e| e["event"] == "file.view")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trail = a.audit(&admin.token).await;
    let views = trail.iter().filter(|e| e["event"] == "file.view").count();
    assert_eq!(views, 1, "{trail:#?}");
    revoke(&a, &u).await;
    assert_eq!(b.get(url).status().await, 401, "revoked on a, refused by b");
    assert_eq!(a.get(url).status().await, 401);
}

#[tokio::test]
async fn inline_content_may_be_framed_only_by_the_configured_origins() {
    const APP: &str = "http://127.0.0.1:9";
    let framing = TestApp::builder()
        .env(
            "COFFER_SERVING__FRAME_ANCESTORS",
            format!("{APP}, https://b.example"),
        )
        .env("COFFER_CORS__ALLOWED_ORIGINS", APP)
        .env("COFFER_CORS__MAX_AGE_SECS", "1234")
        .spawn()
        .await;
    let closed = TestApp::spawn().await;
    let ancestors = format!("frame-ancestors {APP} https://b.example");
    for (app, open) in [(&framing, true), (&closed, false)] {
        let u = app.user("framer").await;
        let image = app.stored(&u.token, "i.png", png(100)).await;
        let doc = app.stored(&u.token, "d.pdf", pdf(100)).await;
        let text = app
            .stored(&u.token, "t.txt", b"<script>alert(1)</script>".to_vec())
            .await;
        for f in [&image, &doc, &text] {
            let id = f["id"].as_str().unwrap();
            let view = mint(app, &u.token, id, json!({})).await;
            let view = view["url"].as_str().unwrap().to_owned();
            let owner_inline = format!("/api/v1/files/{id}/content?disposition=inline");
            for (what, inline, req) in [
                (
                    "view, inline",
                    true,
                    app.get(&format!("{view}&disposition=inline")),
                ),
                ("owner, inline", true, app.get(&owner_inline).as_user(&u)),
                ("view, attachment", false, app.get(&view)),
                ("owner, attachment", false, app.content(id).as_user(&u)),
            ] {
                let r = req.send().await;
                assert_eq!(r.status(), 200, "{what}");
                let h = r.headers();
                let csp = h["content-security-policy"].to_str().unwrap();
                assert!(csp.starts_with("default-src 'none';"), "{what}: {csp}");
                if open && inline {
                    // Still no script, PDFs included (Chromium's viewer renders them
                    // sandboxed: tests/browser).
                    let want = format!("default-src 'none'; sandbox; {ancestors}");
                    assert_eq!(csp, want, "{what}");
                    assert!(h.get("x-frame-options").is_none(), "{what}");
                } else {
                    assert_eq!(
                        csp, "default-src 'none'; sandbox; frame-ancestors 'none'",
                        "{what}"
                    );
                    assert_eq!(h["x-frame-options"], "DENY", "{what}");
                }
            }
            // A 304 of frameable content says the same.
            let etag = format!("\"{}\"", f["sha256"].as_str().unwrap());
            let r = app
                .get(&format!("{view}&disposition=inline"))
                .header("if-none-match", &etag)
                .send()
                .await;
            assert_eq!(r.status(), 304);
            assert_eq!(r.headers().get("x-frame-options").is_none(), open);
        }
        // Every other response keeps DENY and frame-ancestors 'none'.
        for r in [
            app.get("/api/v1/files").as_user(&u).send().await,
            app.get("/api/v1/nope").send().await,
            app.get(&format!(
                "/api/v1/files/{}/content?view=bad",
                image["id"].as_str().unwrap()
            ))
            .send()
            .await,
        ] {
            assert_eq!(r.headers()["x-frame-options"], "DENY");
            let csp = r.headers()["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        }
    }
    // cors.max_age_secs on preflights.
    let pre = framing
        .request(Method::OPTIONS, "/api/v1/files")
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await;
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-max-age"], "1234");
}
