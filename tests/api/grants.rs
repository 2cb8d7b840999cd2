//! Upload grants (`API.md`, "Upload grants"): a backend mints a scoped, short-lived grant with
//! its API key, and a browser uploads with only the grant; size, extensions, sha256 and the
//! use count hold (atomically, on every node), a failed upload gives its use back, a grant is
//! no credential anywhere else, and its token is never listed, logged or audited.

use std::time::Duration;

use reqwest::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::fixtures::{jpeg, png, sha256_hex, tus_metadata};
use crate::helpers::request::{assert_problem, file_form};
use crate::helpers::{TestApp, TestUser};

const GRANTS: &str = "/api/v1/upload-grants";

/// Mint a grant as `u` (bearer): the 201 body.
async fn mint(app: &TestApp, u: &TestUser, body: Value) -> Value {
    app.post(GRANTS).as_user(u).json(&body).expect(201).await
}

fn token(g: &Value) -> &str {
    g["token"].as_str().expect("a token")
}

fn id(v: &Value) -> &str {
    v["id"].as_str().expect("an id")
}

/// A raw upload with a grant in the `Upload-Grant` header.
async fn upload(app: &TestApp, grant: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.post("/api/v1/files")
        .header("upload-grant", grant)
        .query(&[("filename", name)])
        .body(bytes)
        .send()
        .await
}

/// The grant as its owner sees it.
async fn grant_of(app: &TestApp, u: &TestUser, id: &str) -> Value {
    app.get(&format!("{GRANTS}/{id}"))
        .as_user(u)
        .expect(200)
        .await
}

/// An upload whose body the test feeds: the sender, and the request under way.
fn held_upload(
    app: &TestApp,
    grant: &str,
    name: &str,
) -> (
    mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<reqwest::Response>,
) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let req = app
        .post("/api/v1/files")
        .header("upload-grant", grant)
        .query(&[("filename", name)])
        .body(Body::wrap_stream(body));
    (tx, tokio::spawn(req.send()))
}

/// Wait (bounded) until the grant counts `uses`.
async fn until_uses(app: &TestApp, u: &TestUser, id: &str, uses: u64) {
    for _ in 0..200 {
        if grant_of(app, u, id).await["uses"] == uses {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the grant never counted {uses} uses");
}

#[tokio::test]
async fn a_backend_mints_a_grant_and_a_browser_uploads_with_only_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin("grantadmin").await;
    let u = app.user("backend").await;
    let key = app.new_api_key(&u.token, "prod").await;
    let key = key["key"].as_str().unwrap();

    // The backend mints with its API key; the defaults fill what it leaves out.
    let r = app
        .post(GRANTS)
        .api_key(key)
        .json(&json!({ "max_uploads": 2, "extensions": ["png", "jpg", "png"] }))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let g: Value = r.json().await.unwrap();
    assert_eq!(location, format!("{GRANTS}/{}", id(&g)));
    let t = token(&g);
    assert!(t.starts_with("cgr_") && t.len() >= 47, "{t}");
    assert!(
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(g["uses"], 0);
    assert_eq!(g["max_uploads"], 2);
    assert_eq!(g["extensions"], json!(["jpg", "png"]));
    assert!(g["max_bytes"].as_u64().unwrap() > 1_000_000);
    assert_eq!(g["sha256"], Value::Null);
    assert_eq!(g["file_expires_in"], Value::Null);
    let created = g["created_at"].as_str().unwrap();
    let expires = g["expires_at"].as_str().unwrap();
    assert!(expires > created, "{g}");

    // The browser: a raw body with the header, then a plain HTML form with `?grant=`.
    let r = upload(&app, t, "a.png", png(5_000)).await;
    assert_eq!(r.status(), 201);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["grant_id"], g["id"]);
    let b = app
        .post(&format!("/api/v1/files?grant={t}"))
        .multipart(file_form("b.jpg", jpeg(4_000)))
        .expect(201)
        .await;
    assert_eq!(b["grant_id"], g["id"]);
    // Used up: 401, nothing stored.
    let r = upload(&app, t, "c.png", png(100)).await;
    assert_problem(r, 401, "unauthorized").await;
    assert_eq!(app.blob_files().len(), 2);

    // The files are the owner's; the backend lists the grant's.
    let mine = app.files().as_user(&u).expect(200).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);
    let detail = app
        .get(&format!("{GRANTS}/{}", id(&g)))
        .api_key(key)
        .expect(200)
        .await;
    assert_eq!(detail["uses"], 2);
    assert_eq!(detail["file_ids"], json!([a["id"], b["id"]]));
    assert!(detail.get("token").is_none(), "{detail}");
    let own = app.file(id(&a)).as_user(&u).expect(200).await;
    assert_eq!(own["grant_id"], g["id"]);
    // An upload by the owner has none.
    let plain = app.stored(&u.token, "own.png", png(300)).await;
    assert_eq!(plain["grant_id"], Value::Null);

    let list = app.get(GRANTS).api_key(key).expect(200).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], g["id"]);
    assert!(items[0].get("token").is_none(), "{list}");

    // Audited, and the token is in no audit entry and no log line.
    let entries = app
        .audit_with(&admin.token, &["grant.create", "grant.use"])
        .await;
    let uses: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "grant.use")
        .collect();
    assert_eq!(uses.len(), 2, "{entries:?}");
    assert_eq!(uses[0]["detail"]["grant_id"], g["id"]);
    let secret_part = &t[4..];
    assert!(
        !serde_json::to_string(&entries)
            .unwrap()
            .contains(secret_part)
    );
    assert!(!app.logs().contains(secret_part));
}

#[tokio::test]
async fn a_grant_is_no_credential_outside_the_upload_routes() {
    let app = TestApp::spawn().await;
    let u = app.user("scoped").await;
    let g = mint(&app, &u, json!({ "max_uploads": 5 })).await;
    let t = token(&g);
    let f = app.stored(&u.token, "mine.png", png(200)).await;
    let fid = id(&f);
    let by_header = |method: reqwest::Method, path: String| {
        app.request(method, &path).header("upload-grant", t)
    };
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/files".to_owned()),
        (reqwest::Method::GET, format!("/api/v1/files/{fid}")),
        (reqwest::Method::GET, format!("/api/v1/files/{fid}/content")),
        (reqwest::Method::DELETE, format!("/api/v1/files/{fid}")),
        (
            reqwest::Method::POST,
            format!("/api/v1/files/{fid}/view-url"),
        ),
        (reqwest::Method::POST, format!("/api/v1/files/{fid}/links")),
        (reqwest::Method::GET, "/api/v1/users/me".to_owned()),
        (reqwest::Method::GET, GRANTS.to_owned()),
        (reqwest::Method::POST, GRANTS.to_owned()),
        (reqwest::Method::DELETE, format!("{GRANTS}/{}", id(&g))),
    ] {
        let r = by_header(method.clone(), path.clone()).send().await;
        assert_eq!(r.status(), 401, "{method} {path}");
        let r = app
            .request(method.clone(), &format!("{path}?grant={t}"))
            .send()
            .await;
        assert_eq!(r.status(), 401, "{method} {path}?grant=");
    }
    // One credential per request: a grant beside a token, or two grants, is refused.
    let r = app
        .post("/api/v1/files")
        .as_user(&u)
        .header("upload-grant", t)
        .query(&[("filename", "x.png")])
        .body(png(100))
        .send()
        .await;
    assert_problem(r, 401, "unauthorized").await;
    let r = app
        .post(&format!("/api/v1/files?filename=x.png&grant={t}"))
        .header("upload-grant", t)
        .body(png(100))
        .send()
        .await;
    assert_problem(r, 401, "unauthorized").await;
    // However the query spells it, a grant is a grant: beside a token, or twice, refused.
    for query in [
        format!("filename=x.png&grant={t}&grant={t}"),
        format!("filename=x.png&gr%61nt={t}"),
        format!("filename=x.png&grant={t}&grant="),
    ] {
        let r = app
            .post(&format!("/api/v1/files?{query}"))
            .as_user(&u)
            .body(png(100))
            .send()
            .await;
        assert_eq!(r.status(), 401, "{query}");
    }
    // Unknown and malformed tokens.
    for bad in [
        "cgr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "nope",
        "",
    ] {
        let r = upload(&app, bad, "x.png", png(100)).await;
        assert_eq!(r.status(), 401, "{bad:?}");
    }
    assert_eq!(grant_of(&app, &u, id(&g)).await["uses"], 0);
    assert_eq!(app.blob_files().len(), 1);
}

#[tokio::test]
async fn limits_hold_and_a_failed_upload_gives_its_use_back() {
    let app = TestApp::spawn().await;
    let u = app.user("limited").await;
    let g = mint(
        &app,
        &u,
        json!({ "max_bytes": 10_000, "extensions": ["png"], "file_expires_in": 3600 }),
    )
    .await;
    let (t, gid) = (token(&g), id(&g));
    // Another extension: 415 before the body counts.
    let r = upload(&app, t, "photo.jpg", jpeg(500)).await;
    assert_problem(r, 415, "unsupported-media-type").await;
    // Too large by Content-Length, and while streaming (no length declared).
    let r = upload(&app, t, "big.png", png(10_001)).await;
    assert_problem(r, 413, "payload-too-large").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        png(30_000).chunks(4_096).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .post("/api/v1/files")
        .header("upload-grant", t)
        .query(&[("filename", "streamed.png")])
        .body(Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await;
    assert_problem(r, 413, "payload-too-large").await;
    // Content that is not what its name says.
    let r = upload(&app, t, "fake.png", jpeg(500)).await;
    assert_problem(r, 415, "unsupported-media-type").await;
    // The browser does not choose the retention: the grant does.
    let r = app
        .post("/api/v1/files?filename=short.png&expires_in=1")
        .header("upload-grant", t)
        .body(png(100))
        .send()
        .await;
    let p = assert_problem(r, 422, "validation-failed").await;
    assert_eq!(p["errors"][0]["field"], "expires_in", "{p}");
    // A form refused after its file part gives the use back before the answer: the very
    // next upload may take it.
    let two_files = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(500)).file_name("one.png"),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(500)).file_name("two.png"),
        );
    app.post("/api/v1/files")
        .header("upload-grant", t)
        .multipart(two_files)
        .problem(400)
        .await;
    assert_eq!(grant_of(&app, &u, gid).await["uses"], 0);
    // An aborted body gives its use back too.
    let (tx, req) = held_upload(&app, t, "cut.png");
    tx.send(png(9_000)[..3_000].to_vec()).await.unwrap();
    until_uses(&app, &u, gid, 1).await;
    req.abort();
    drop(tx);
    until_uses(&app, &u, gid, 0).await;
    assert!(app.blob_files().is_empty());

    // The single use is still there; the file takes the grant's retention.
    let f: Value = upload(&app, t, "ok.png", png(10_000))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["grant_id"], g["id"]);
    assert!(f["expires_at"].is_string(), "{f}");
    let detail = grant_of(&app, &u, gid).await;
    assert_eq!(detail["uses"], 1);
    assert_eq!(detail["file_ids"], json!([f["id"]]));
    let r = upload(&app, t, "again.png", png(100)).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_grant_with_sha256_takes_only_that_content() {
    let app = TestApp::spawn().await;
    let u = app.user("hashed").await;
    let want = png(7_000);
    let hash = sha256_hex(&want);
    let r = app
        .post(GRANTS)
        .as_user(&u)
        .json(&json!({ "sha256": hash, "max_uploads": 2 }))
        .send()
        .await;
    assert_problem(r, 422, "validation-failed").await;
    let g = mint(&app, &u, json!({ "sha256": hash.to_uppercase() })).await;
    assert_eq!(g["sha256"], hash);
    let r = upload(&app, token(&g), "other.png", png(7_001)).await;
    let p = assert_problem(r, 422, "checksum-mismatch").await;
    assert!(p["detail"].as_str().unwrap().contains("sha256"), "{p}");
    assert!(app.blob_files().is_empty());
    assert_eq!(grant_of(&app, &u, id(&g)).await["uses"], 0);
    let f: Value = upload(&app, token(&g), "right.png", want)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["sha256"], hash);
}

#[tokio::test]
async fn of_two_concurrent_uploads_with_a_single_use_grant_exactly_one_is_stored() {
    let app = TestApp::spawn().await;
    let u = app.user("racer").await;
    for round in 0..5 {
        let g = mint(&app, &u, json!({})).await;
        let t = token(&g).to_owned();
        let racers = (0..8).map(|i| {
            let (app, t) = (&app, t.clone());
            async move {
                upload(app, &t, &format!("r{round}-{i}.png"), png(20_000))
                    .await
                    .status()
                    .as_u16()
            }
        });
        let mut statuses = futures_util::future::join_all(racers).await;
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [201, 401, 401, 401, 401, 401, 401, 401],
            "round {round}"
        );
        assert_eq!(grant_of(&app, &u, id(&g)).await["uses"], 1);
    }
    assert_eq!(app.blob_files().len(), 5);
}

#[tokio::test]
async fn revocation_stops_uploads_at_once_and_expiry_lets_started_ones_finish() {
    let app = TestApp::spawn().await;
    let u = app.user("revoker").await;
    let other = app.user("stranger").await;
    let body = png(40_000);

    // Revoked while a body streams: the upload is refused when it would commit.
    let g = mint(&app, &u, json!({ "max_uploads": 3 })).await;
    let (t, gid) = (token(&g).to_owned(), id(&g).to_owned());
    let (tx, req) = held_upload(&app, &t, "late.png");
    tx.send(body[..20_000].to_vec()).await.unwrap();
    until_uses(&app, &u, &gid, 1).await;
    // Only its owner can see or revoke it.
    app.get(&format!("{GRANTS}/{gid}"))
        .as_user(&other)
        .problem(404)
        .await;
    app.delete(&format!("{GRANTS}/{gid}"))
        .as_user(&other)
        .problem(404)
        .await;
    let r = app
        .delete(&format!("{GRANTS}/{gid}"))
        .as_user(&u)
        .send()
        .await;
    assert_eq!(r.status(), 204);
    tx.send(body[20_000..].to_vec()).await.unwrap();
    drop(tx);
    let r = req.await.unwrap();
    assert_problem(r, 401, "unauthorized").await;
    assert!(app.blob_files().is_empty());
    let r = upload(&app, &t, "after.png", png(100)).await;
    assert_eq!(r.status(), 401);
    app.get(&format!("{GRANTS}/{gid}"))
        .as_user(&u)
        .problem(404)
        .await;
    app.delete(&format!("{GRANTS}/{gid}"))
        .as_user(&u)
        .problem(404)
        .await;

    // Expired while a body streams: an upload that started in time finishes.
    let g = mint(&app, &u, json!({ "expires_in": 1, "max_uploads": 2 })).await;
    let (t, gid) = (token(&g).to_owned(), id(&g).to_owned());
    let (tx, req) = held_upload(&app, &t, "slow.png");
    tx.send(body[..20_000].to_vec()).await.unwrap();
    until_uses(&app, &u, &gid, 1).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    tx.send(body[20_000..].to_vec()).await.unwrap();
    drop(tx);
    let r = req.await.unwrap();
    assert_eq!(r.status(), 201);
    // A new one cannot start.
    let r = upload(&app, &t, "new.png", png(100)).await;
    assert_eq!(r.status(), 401);
    // Still listed, with its file, after it expired.
    let detail = grant_of(&app, &u, &gid).await;
    assert_eq!(detail["file_ids"].as_array().unwrap().len(), 1);
    let audit = app.admin("revokeadmin").await;
    app.audit_with(&audit.token, &["grant.revoke"]).await;
}

#[tokio::test]
async fn minting_checks_every_field() {
    let app = TestApp::spawn().await;
    let u = app.user("minter").await;
    for (body, field) in [
        (json!({ "expires_in": 0 }), "expires_in"),
        (json!({ "expires_in": 86_401 }), "expires_in"),
        (json!({ "max_bytes": 0 }), "max_bytes"),
        (json!({ "max_bytes": 1_u64 << 50 }), "max_bytes"),
        (json!({ "extensions": [] }), "extensions"),
        (json!({ "extensions": ["exe"] }), "extensions"),
        (json!({ "extensions": ["PNG"] }), "extensions"),
        (json!({ "extensions": [".png"] }), "extensions"),
        (json!({ "max_uploads": 0 }), "max_uploads"),
        (json!({ "max_uploads": 1001 }), "max_uploads"),
        (json!({ "file_expires_in": 0 }), "file_expires_in"),
        (json!({ "sha256": "xyz" }), "sha256"),
        (json!({ "max_uploads": "2" }), "max_uploads"),
        (json!({ "uses": 3 }), "uses"),
    ] {
        let p = app.post(GRANTS).as_user(&u).json(&body).problem(422).await;
        let errors = p["errors"].as_array().unwrap();
        assert!(errors.iter().any(|e| e["field"] == field), "{body}: {p}");
    }
    // No body, `{}` and `null` take the defaults: 15 minutes, one upload.
    let g = app.post(GRANTS).as_user(&u).expect(201).await;
    assert_eq!(g["max_uploads"], 1);
    let g = mint(
        &app,
        &u,
        json!({ "expires_in": 86_400, "max_uploads": 1000 }),
    )
    .await;
    assert_eq!(g["max_uploads"], 1000);
    app.get(GRANTS).problem(401).await;
}

/// A tus request with the grant in `Upload-Grant`.
fn tus_req(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    grant: &str,
) -> crate::helpers::request::Req {
    app.request(method, path)
        .header("tus-resumable", "1.0.0")
        .header("upload-grant", grant)
}

/// Create a tus upload of `len` bytes with a grant: the response.
async fn tus_create(app: &TestApp, grant: &str, name: &str, len: usize) -> reqwest::Response {
    tus_req(app, reqwest::Method::POST, "/api/v1/uploads", grant)
        .header("upload-length", &len.to_string())
        .header("upload-metadata", &tus_metadata(name))
        .send()
        .await
}

/// PATCH `bytes` at `offset` with a grant: the response.
async fn tus_patch_answer(
    app: &TestApp,
    loc: &str,
    grant: &str,
    offset: usize,
    bytes: Vec<u8>,
) -> reqwest::Response {
    tus_req(app, reqwest::Method::PATCH, loc, grant)
        .header("upload-offset", &offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(bytes)
        .send()
        .await
}

/// PATCH `bytes` at `offset` with a grant: the status.
async fn tus_patch(app: &TestApp, loc: &str, grant: &str, offset: usize, bytes: Vec<u8>) -> u16 {
    tus_patch_answer(app, loc, grant, offset, bytes)
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn resumable_uploads_take_a_grant_and_answer_only_to_it() {
    let app = TestApp::spawn().await;
    let u = app.user("tusgrant").await;
    let body = png(300_000);
    let g = mint(
        &app,
        &u,
        json!({ "max_uploads": 2, "max_bytes": 400_000, "extensions": ["png"], "sha256": null }),
    )
    .await;
    let (t, gid) = (token(&g).to_owned(), id(&g).to_owned());

    // Refused at creation: another extension, too long for the grant.
    let r = tus_create(&app, &t, "a.jpg", 1_000).await;
    assert_eq!(r.status(), 415);
    let r = tus_create(&app, &t, "big.png", 400_001).await;
    assert_eq!(r.status(), 413);
    assert_eq!(grant_of(&app, &u, &gid).await["uses"], 0);

    // Created with the grant: it takes a use; the owner's own token cannot see it, nor can
    // a grant be used on an upload the owner made.
    let r = tus_create(&app, &t, "photo.png", body.len()).await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(grant_of(&app, &u, &gid).await["uses"], 1);
    let by_owner = app
        .head(&loc)
        .as_user(&u)
        .header("tus-resumable", "1.0.0")
        .status()
        .await;
    assert_eq!(by_owner, 404);
    assert_eq!(
        tus_patch(&app, &loc, &t, 0, body[..150_000].to_vec()).await,
        204
    );
    let head = tus_req(&app, reqwest::Method::HEAD, &loc, &t).send().await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["upload-offset"], "150000");
    // The holder cannot choose the retention.
    let r = tus_req(&app, reqwest::Method::POST, "/api/v1/uploads", &t)
        .header("upload-length", "100")
        .header(
            "upload-metadata",
            &format!("{},expires_in MQ==", tus_metadata("x.png")),
        )
        .send()
        .await;
    assert_eq!(r.status(), 422);

    // The grant is used up by the second creation; the first upload still finishes.
    let second = tus_create(&app, &t, "second.png", 1_000).await;
    assert_eq!(second.status(), 201);
    let r = tus_create(&app, &t, "third.png", 1_000).await;
    assert_eq!(r.status(), 401);
    let last = tus_patch_answer(&app, &loc, &t, 150_000, body[150_000..].to_vec()).await;
    assert_eq!(last.status(), 204);
    let fid = last.headers()["coffer-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let f = app.file(&fid).as_user(&u).expect(200).await;
    assert_eq!(f["grant_id"], g["id"]);
    assert_eq!(f["sha256"], sha256_hex(&body));

    // Revoking ends the other unfinished upload at once: its quota back, 401 to the grant.
    let second_loc = second.headers()["location"].to_str().unwrap().to_owned();
    let r = app
        .delete(&format!("{GRANTS}/{gid}"))
        .as_user(&u)
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(tus_patch(&app, &second_loc, &t, 0, png(1_000)).await, 401);
    assert_eq!(
        app.sql_number("SELECT COUNT(*) FROM resumable_uploads"),
        0,
        "the revoked grant's upload is gone"
    );
    assert_eq!(
        app.sql_number("SELECT COUNT(*) FROM upload_reservations"),
        0
    );
}

#[tokio::test]
async fn a_resumable_upload_with_a_sha256_grant_is_checked_at_its_last_patch() {
    let app = TestApp::spawn().await;
    let u = app.user("tushash").await;
    let want = png(50_000);
    let g = mint(&app, &u, json!({ "sha256": sha256_hex(&want) })).await;
    let t = token(&g).to_owned();
    // A valid PNG, but not the one the grant names.
    let wrong = png(49_999);
    let r = tus_create(&app, &t, "x.png", wrong.len()).await;
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        tus_patch(&app, &loc, &t, 0, wrong[..20_000].to_vec()).await,
        204
    );
    let last = tus_patch_answer(&app, &loc, &t, 20_000, wrong[20_000..].to_vec()).await;
    assert_problem(last, 422, "checksum-mismatch").await;
    // Nothing stored; the staged chunks go right after the answer.
    app.eventually("the staged chunks are deleted", || {
        app.blob_files().is_empty()
    })
    .await;
    // The use came back with the refusal: the right bytes go through.
    let r = tus_create(&app, &t, "y.png", want.len()).await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(tus_patch(&app, &loc, &t, 0, want).await, 204);
}

#[tokio::test]
async fn a_sha256_grant_names_the_bytes_sent_even_when_stripping_stores_others() {
    // The grant's sha256 is of the image as the browser has it; the file is stored with its
    // metadata stripped, so its own sha256 differs. Single-shot and resumable alike.
    let app = TestApp::spawn().await;
    let u = app.user("stripsend").await;
    let (dirty, _) = crate::helpers::images::png_with_metadata();
    let named = json!({ "sha256": sha256_hex(&dirty) });
    let g = mint(&app, &u, named.clone()).await;
    let r = upload(&app, token(&g), "sent.png", dirty.clone()).await;
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    let stored = app.content_of(&u.token, f["id"].as_str().unwrap()).await;
    assert!(stored.len() < dirty.len(), "nothing was stripped");
    assert_eq!(f["sha256"], sha256_hex(&stored));

    let g = mint(&app, &u, named.clone()).await;
    let t = token(&g).to_owned();
    let r = tus_create(&app, &t, "sent.png", dirty.len()).await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let half = dirty.len() / 2;
    assert_eq!(
        tus_patch(&app, &loc, &t, 0, dirty[..half].to_vec()).await,
        204
    );
    let last = tus_req(&app, reqwest::Method::PATCH, &loc, &t)
        .header("upload-offset", half.to_string().as_str())
        .header("content-type", "application/offset+octet-stream")
        .body(dirty[half..].to_vec())
        .send()
        .await;
    assert_eq!(last.status(), 204);
    let fid = last.headers()["coffer-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.content_of(&u.token, &fid).await, stored);

    // Other bytes that strip to the same image (one byte changed in the tEXt chunk the
    // stripping drops) are refused: the grant names what was sent.
    let g = mint(&app, &u, named).await;
    let mut other = dirty.clone();
    let at = 8 + (8 + 13 + 4) + 8 + 2;
    assert_eq!(&dirty[at - 6..at - 2], b"tEXt");
    other[at] ^= 1;
    let r = upload(&app, token(&g), "other.png", other).await;
    assert_problem(r, 422, "checksum-mismatch").await;
}

#[tokio::test]
async fn an_unfinished_resumable_upload_that_is_deleted_or_refused_gives_its_use_back() {
    let app = TestApp::spawn().await;
    let u = app.user("tusgiveback").await;
    let g = mint(&app, &u, json!({ "max_uploads": 1, "extensions": ["png"] })).await;
    let (t, gid) = (token(&g).to_owned(), id(&g).to_owned());
    let body = png(100_000);

    // Deleted (tus termination) with bytes received: the use comes back.
    let r = tus_create(&app, &t, "a.png", body.len()).await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        tus_patch(&app, &loc, &t, 0, body[..30_000].to_vec()).await,
        204
    );
    assert_eq!(grant_of(&app, &u, &gid).await["uses"], 1);
    let r = tus_req(&app, reqwest::Method::DELETE, &loc, &t)
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(grant_of(&app, &u, &gid).await["uses"], 0);

    // Refused on its first bytes (not a PNG): the upload ends and the use comes back.
    let r = tus_create(&app, &t, "b.png", 1_000).await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(tus_patch(&app, &loc, &t, 0, vec![b'x'; 1_000]).await, 415);
    assert_eq!(grant_of(&app, &u, &gid).await["uses"], 0);

    // The single use is still there: an upload made with it finishes.
    let r = tus_create(&app, &t, "c.png", body.len()).await;
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let last = tus_patch_answer(&app, &loc, &t, 0, body.clone()).await;
    assert_eq!(last.status(), 204);
    let fid = last.headers()["coffer-file-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let got = grant_of(&app, &u, &gid).await;
    assert_eq!(got["uses"], 1);
    assert_eq!(got["file_ids"], json!([fid]));
    assert_eq!(
        tus_create(&app, &t, "d.png", 1_000).await.status(),
        401,
        "used up"
    );
}

/// A revocation whose ending of the grant's unfinished uploads failed (the grant gone, its
/// uploads left): the sweeper ends them, so their quota does not wait for their expiry.
#[tokio::test]
async fn the_sweeper_ends_uploads_a_failed_revocation_left_behind() {
    let app = TestApp::builder()
        .single_node("writes the SQLite file behind the server")
        .env("COFFER_RETENTION__SWEEP_INTERVAL_SECS", "1")
        .spawn()
        .await;
    let u = app.user("halfrevoked").await;
    let g = mint(&app, &u, json!({})).await;
    let t = token(&g).to_owned();
    assert_eq!(tus_create(&app, &t, "left.png", 1_000).await.status(), 201);
    assert_eq!(
        app.sql_number("SELECT COUNT(*) FROM upload_reservations"),
        1
    );
    // What a revocation that failed after removing the grant leaves.
    let gid = g["id"].as_str().unwrap();
    app.sql_exec(&format!("DELETE FROM upload_grants WHERE id = '{gid}'"));
    app.eventually("the sweeper ends the orphaned upload", || {
        app.sql_number("SELECT COUNT(*) FROM resumable_uploads") == 0
            && app.sql_number("SELECT COUNT(*) FROM upload_reservations") == 0
    })
    .await;
}
