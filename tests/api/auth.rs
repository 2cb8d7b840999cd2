//! Accounts and tokens: registration, login, token validation, refresh rotation, logout,
//! API keys, roles, the audit trail and secrets kept out of logs and responses.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer::auth::jwt::{Claims, TokenKeys};
use coffer::secrets::SecretKey;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::fixtures::png;
use crate::helpers::{PASSWORD, TestApp, problem};

fn register_body(username: &str, email: &str, password: &str) -> Value {
    json!({"username": username, "email": email, "password": password})
}

#[tokio::test]
async fn registration_statuses() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json(
            "/api/v1/auth/register",
            &register_body("alice", "alice@example.com", PASSWORD),
        )
        .await;
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["username"], "alice");
    assert_eq!(user["role"], "user");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    let keys: Vec<_> = user.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");

    // Uniqueness is case-insensitive, for usernames and emails.
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("ALICE", "other@example.com", PASSWORD),
        )
        .await,
        409,
    )
    .await;
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("alice2", "Alice@Example.COM", PASSWORD),
        )
        .await,
        409,
    )
    .await;

    // Validation lists every bad field.
    let v = problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("a!", "not-an-email", "short"),
        )
        .await,
        422,
    )
    .await;
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"username") && fields.contains(&"email") && fields.contains(&"password"),
        "{v}"
    );
    for weak in ["alllowercase1", "NoDigitsAtAll", "Password1", "Qwerty123"] {
        let v = problem(
            app.post_json(
                "/api/v1/auth/register",
                &register_body("bob", "bob@example.com", weak),
            )
            .await,
            422,
        )
        .await;
        assert_eq!(v["errors"][0]["field"], "password", "{weak}");
    }
    // A role field is rejected, never honoured.
    let mut body = register_body("mallory", "mallory@example.com", PASSWORD);
    body["role"] = json!("admin");
    let v = problem(app.post_json("/api/v1/auth/register", &body).await, 422).await;
    assert_eq!(v["errors"][0]["field"], "role");
    // Every missing field is named, not only the first; an array is not an object.
    let v = problem(
        app.post_json("/api/v1/auth/register", &json!({"username": "carl"}))
            .await,
        422,
    )
    .await;
    let fields: Vec<_> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"]);
    let v = problem(
        app.post_json(
            "/api/v1/auth/register",
            &json!(["carl", "carl@example.com", PASSWORD]),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(v["errors"][0]["field"], "body");
}

#[tokio::test]
async fn closed_registration_is_403_but_the_cli_still_creates_users() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__OPEN_REGISTRATION", "false")
        .spawn()
        .await;
    problem(
        app.post_json(
            "/api/v1/auth/register",
            &register_body("eve", "eve@example.com", PASSWORD),
        )
        .await,
        403,
    )
    .await;
    let admin = app.admin("root_admin").await;
    let me: Value = app
        .authed(Method::GET, "/api/v1/users/me", &admin.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    // The CLI applies the same policy; the password may come from standard input.
    let mut child = app
        .cli(&[
            "user",
            "create",
            "--username",
            "weakling",
            "--email",
            "w@example.com",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let mut child = app
        .cli(&[
            "user",
            "create",
            "--username",
            "stdin_user",
            "--email",
            "s@example.com",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    app.login("stdin_user", PASSWORD).await;
}

#[tokio::test]
async fn login_does_not_reveal_which_users_exist() {
    let app = TestApp::spawn().await;
    app.user("carol").await;
    let unknown = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "nobody", "password": PASSWORD}),
        )
        .await;
    assert_eq!(unknown.headers()["www-authenticate"], "Bearer");
    let unknown = problem(unknown, 401).await;
    let wrong = problem(
        app.post_json(
            "/api/v1/auth/login",
            &json!({"username": "carol", "password": "Wrong-Pass-99"}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(unknown["detail"], wrong["detail"]);
    assert_eq!(unknown["type"], wrong["type"]);
    // Usernames are case-insensitive at login too.
    app.login("CAROL", PASSWORD).await;
}

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn server_keys(app: &TestApp) -> TokenKeys {
    TokenKeys::new(&SecretKey::parse(&app.secret()).unwrap(), "coffer", 900).unwrap()
}

#[tokio::test]
async fn forged_expired_and_wrong_type_tokens_are_401() {
    let app = TestApp::spawn().await;
    let u = app.user("dave").await;
    let me = |t: String| app.authed(Method::GET, "/api/v1/users/me", &t).send();
    assert_eq!(me(u.token.clone()).await.unwrap().status(), 200);
    let claims = claims_of(&u.token);
    assert_eq!(claims.sub, u.id);
    assert_eq!(claims.typ, "access");
    let keys = server_keys(&app);

    // alg: none.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = u.token.split('.').nth(1).unwrap();
    // Tampered payload, signature kept.
    let mut evil = claims.clone();
    evil.sub = uuid::Uuid::new_v4().to_string();
    let evil_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
    let sig = u.token.split('.').nth(2).unwrap();
    // Another secret.
    let other = TokenKeys::new(
        &SecretKey::parse(&crate::helpers::secret()).unwrap(),
        "coffer",
        900,
    )
    .unwrap();
    let now = coffer::ids::Timestamp::now().unix_secs();
    let forged = [
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}"),
        format!(
            "{}.{evil_payload}.{sig}",
            u.token.split('.').next().unwrap()
        ),
        other.sign(&claims).unwrap(),
        keys.sign(&Claims {
            exp: now - 60,
            iat: now - 1000,
            nbf: now - 1000,
            ..claims.clone()
        })
        .unwrap(),
        keys.sign(&Claims {
            nbf: now + 600,
            ..claims.clone()
        })
        .unwrap(),
        keys.sign(&Claims {
            typ: "refresh".into(),
            ..claims.clone()
        })
        .unwrap(),
        keys.sign(&Claims {
            iss: "elsewhere".into(),
            ..claims.clone()
        })
        .unwrap(),
        "not.a.jwt".into(),
        u.refresh.clone(),
    ];
    for (i, t) in forged.into_iter().enumerate() {
        let r = me(t).await.unwrap();
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "case {i}"
        );
        problem(r, 401).await;
    }
    // A correctly signed fresh token for the same login still works (the forgeries above were
    // refused for what they are, not because the login died).
    let fresh = keys
        .sign(&Claims {
            jti: "fresh".into(),
            ..claims
        })
        .unwrap();
    assert_eq!(me(fresh).await.unwrap().status(), 200);
    // Credentials are never read from the query string.
    let r = app
        .req(
            Method::GET,
            &format!("/api/v1/users/me?access_token={}", u.token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The scheme name is case-insensitive.
    let r = app
        .req(Method::GET, "/api/v1/users/me")
        .header("authorization", format!("bEaReR {}", u.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let u = app.user("erin").await;
    let refresh = async |t: &str| {
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": t}))
            .await
    };
    let r = refresh(&u.refresh).await;
    assert_eq!(r.status(), 200);
    let pair: Value = r.json().await.unwrap();
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    let (access2, refresh2) = (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(refresh2, u.refresh);
    assert_eq!(
        app.authed(Method::GET, "/api/v1/users/me", &access2)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Presenting the spent token again: 401, and the whole login dies.
    problem(refresh(&u.refresh).await, 401).await;
    problem(refresh(&refresh2).await, 401).await;
    assert_eq!(
        app.authed(Method::GET, "/api/v1/users/me", &access2)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app.authed(Method::GET, "/api/v1/users/me", &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Other logins of the same user are untouched.
    let (other, _) = app.login("erin", PASSWORD).await;
    assert_eq!(
        app.authed(Method::GET, "/api/v1/users/me", &other)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    problem(refresh("garbage").await, 401).await;
}

#[tokio::test]
async fn logout_kills_the_access_and_refresh_token_at_once() {
    let app = TestApp::spawn().await;
    let u = app.user("frank").await;
    let (second, _) = app.login("frank", PASSWORD).await;
    let r = app
        .authed(Method::POST, "/api/v1/auth/logout", &u.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(
        app.authed(Method::GET, "/api/v1/users/me", &u.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": u.refresh}))
            .await,
        401,
    )
    .await;
    // Only the calling login ends.
    assert_eq!(
        app.authed(Method::GET, "/api/v1/users/me", &second)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    problem(
        app.req(Method::POST, "/api/v1/auth/logout")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn revocations_survive_a_restart() {
    let mut app = TestApp::spawn().await;
    let u = app.user("grace").await;
    let (kept, _) = app.login("grace", PASSWORD).await;
    assert_eq!(
        app.authed(Method::POST, "/api/v1/auth/logout", &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    app.terminate();
    let app2 = app.relaunch().spawn().await;
    assert_eq!(
        app2.authed(Method::GET, "/api/v1/users/me", &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app2.authed(Method::GET, "/api/v1/users/me", &kept)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn deleted_users_tokens_stop_working() {
    let app = TestApp::spawn().await;
    let admin = app.admin("boss").await;
    let u = app.user("henry").await;
    let key: Value = app
        .authed(Method::POST, "/api/v1/api-keys", &u.token)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = app
        .authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", u.id),
            &admin.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    problem(
        app.authed(Method::GET, "/api/v1/users/me", &u.token)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let r = app
        .req(Method::GET, "/api/v1/users/me")
        .header("x-api-key", key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
    problem(
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": u.refresh}))
            .await,
        401,
    )
    .await;
}

#[tokio::test]
async fn api_keys_lifecycle() {
    let app = TestApp::spawn().await;
    let u = app.user("ivan").await;
    let r = app
        .authed(Method::POST, "/api/v1/api-keys", &u.token)
        .json(&json!({"name": "backend", "expires_in_days": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap();
    assert_eq!(prefix.len(), 12);
    assert!(key.starts_with(prefix));
    assert!(created["expires_at"].is_string());

    let list: Value = app
        .authed(Method::GET, "/api/v1/api-keys", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("key").is_none() && items[0].get("hash").is_none());
    assert!(!list.to_string().contains(&key[12..]));

    let with_key = |m: Method, p: &str| app.req(m, p).header("x-api-key", key.clone());
    let me: Value = with_key(Method::GET, "/api/v1/users/me")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], u.id.as_str());
    // An API key cannot manage credentials.
    problem(
        with_key(Method::POST, "/api/v1/api-keys")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        with_key(Method::POST, "/api/v1/auth/logout")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        with_key(Method::POST, "/api/v1/auth/refresh")
            .json(&json!({"refresh_token": u.refresh}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let id = created["id"].as_str().unwrap();
    problem(
        with_key(Method::DELETE, &format!("/api/v1/api-keys/{id}"))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;

    // Validation.
    problem(
        app.authed(Method::POST, "/api/v1/api-keys", &u.token)
            .json(&json!({"name": "x", "expires_in_days": 0}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        app.authed(Method::POST, "/api/v1/api-keys", &u.token)
            .json(&json!({"name": "x", "expires_in_days": 3651}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let no_expiry: Value = app
        .authed(Method::POST, "/api/v1/api-keys", &u.token)
        .json(&json!({"name": "forever"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(no_expiry["expires_at"].is_null());

    // Someone else cannot delete it; the owner can, and then it stops working.
    let other = app.user("judy").await;
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            &other.token,
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    assert_eq!(
        app.authed(Method::DELETE, &format!("/api/v1/api-keys/{id}"), &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(
        with_key(Method::GET, "/api/v1/users/me")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    // A key with a valid prefix but a wrong secret.
    let forged = format!("{}_{}", &key[..12], "A".repeat(43));
    problem(
        app.req(Method::GET, "/api/v1/users/me")
            .header("x-api-key", forged)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn admin_routes_need_the_admin_role() {
    let app = TestApp::spawn().await;
    let u = app.user("kim").await;
    for path in ["/api/v1/admin/users", "/api/v1/admin/audit"] {
        problem(app.req(Method::GET, path).send().await.unwrap(), 401).await;
        problem(
            app.authed(Method::GET, path, &u.token)
                .send()
                .await
                .unwrap(),
            403,
        )
        .await;
    }
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", u.id),
            &u.token,
        )
        .send()
        .await
        .unwrap(),
        403,
    )
    .await;
    let admin = app.admin("chief").await;
    let r = app
        .authed(Method::GET, "/api/v1/admin/users", &admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The last admin cannot be deleted.
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", admin.id),
            &admin.token,
        )
        .send()
        .await
        .unwrap(),
        409,
    )
    .await;
}

#[tokio::test]
async fn an_admins_api_key_has_no_admin_powers() {
    let app = TestApp::spawn().await;
    let admin = app.admin("boss").await;
    let u = app.user("mona").await;
    let theirs: Value = app
        .upload(&u.token, "m.png", png(2000))
        .await
        .json()
        .await
        .unwrap();
    let key: Value = app
        .authed(Method::POST, "/api/v1/api-keys", &admin.token)
        .json(&json!({"name": "backend"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let with_key = |m: Method, p: &str| app.req(m, p).header("x-api-key", key.clone());
    for path in ["/api/v1/admin/users", "/api/v1/admin/audit"] {
        problem(with_key(Method::GET, path).send().await.unwrap(), 403).await;
    }
    problem(
        with_key(Method::POST, &format!("/api/v1/admin/users/{}/role", u.id))
            .json(&json!({"role": "admin"}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        with_key(Method::DELETE, &format!("/api/v1/admin/users/{}", u.id))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // The key acts as its owner for files: another user's file is not found.
    let id = theirs["id"].as_str().unwrap();
    problem(
        with_key(Method::GET, &format!("/api/v1/files/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    // The admin's login still can.
    let r = app
        .authed(Method::GET, &format!("/api/v1/files/{id}"), &admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn security_events_are_audited_without_secrets() {
    let app = TestApp::spawn().await;
    let admin = app.admin("auditor").await;
    let u = app.user("leo").await;
    app.post_json(
        "/api/v1/auth/login",
        &json!({"username": "leo", "password": "Not-The-Pass-1"}),
    )
    .await;
    let pair: Value = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": u.refresh}))
        .await
        .json()
        .await
        .unwrap();
    app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": u.refresh}))
        .await;
    let key: Value = app
        .authed(Method::POST, "/api/v1/api-keys", &admin.token)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.authed(
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap()),
        &admin.token,
    )
    .send()
    .await
    .unwrap();
    let (t, _) = app.login("leo", PASSWORD).await;
    app.authed(Method::POST, "/api/v1/auth/logout", &t)
        .send()
        .await
        .unwrap();

    let entries = app.audit(&admin.token).await;
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "auth.register",
        "auth.login",
        "auth.login_failed",
        "auth.refresh",
        "auth.refresh_reuse",
        "auth.logout",
        "apikey.create",
        "apikey.delete",
    ] {
        assert!(events.contains(&want), "{want} missing from {events:?}");
    }
    let failed = entries
        .iter()
        .find(|e| e["event"] == "auth.login_failed")
        .unwrap();
    assert_eq!(failed["client_ip"], "127.0.0.1");
    for e in &entries {
        for k in [
            "id",
            "at",
            "event",
            "actor_id",
            "subject_id",
            "client_ip",
            "detail",
        ] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
    }
    // Newest first.
    assert!(entries.first().unwrap()["at"].as_str() >= entries.last().unwrap()["at"].as_str());

    // No password, token, hash or key anywhere: not in the trail, not in the server's log.
    let secrets = [
        PASSWORD.to_owned(),
        "Not-The-Pass-1".to_owned(),
        u.token.clone(),
        u.refresh.clone(),
        t.clone(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
        app.secret(),
    ];
    let trail = serde_json::to_string(&entries).unwrap();
    // Wait for the log to catch up with the last request, then scan all of it.
    app.eventually("the log captured the events", || {
        app.logs().contains("auth.logout")
    })
    .await;
    let logs = app.logs();
    for s in &secrets {
        assert!(!trail.contains(s.as_str()), "secret in audit trail");
        assert!(!logs.contains(s.as_str()), "secret in logs");
    }
    assert!(!logs.contains("$argon2"), "hash in logs");
    assert!(!trail.contains("$argon2"), "hash in audit trail");
}

#[tokio::test]
async fn audit_pages_cover_everything_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin("pager").await;
    for i in 0..7 {
        app.post_json(
            "/api/v1/auth/login",
            &json!({"username": format!("ghost{i}"), "password": "Wrong-1-Pass"}),
        )
        .await;
    }
    let pages = app.pages("/api/v1/admin/audit", &admin.token, 3).await;
    assert!(pages.iter().all(|p| p.len() <= 3));
    let mut seen: Vec<String> = pages
        .concat()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total);
    assert!(total >= 8);
    problem(
        app.authed(Method::GET, "/api/v1/admin/audit?limit=0", &admin.token)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        app.authed(Method::GET, "/api/v1/admin/audit?limit=1001", &admin.token)
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    problem(
        app.authed(Method::GET, "/api/v1/admin/audit?cursor=@@@", &admin.token)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn sql_injection_payloads_are_just_data() {
    // Every query binds its values; these strings must behave as plain (odd) text.
    let app = TestApp::spawn().await;
    let u = app.user("bobby").await;
    for username in [
        "bobby' OR '1'='1",
        "bobby'--",
        "x\" OR \"\"=\"",
        "bobby; DROP TABLE users",
    ] {
        let r = app
            .post_json(
                "/api/v1/auth/login",
                &json!({"username": username, "password": "' OR '1'='1"}),
            )
            .await;
        problem(r, 401).await;
    }
    let name = "'; DROP TABLE files; --.png";
    let f = app
        .stored(&u.token, name, crate::helpers::fixtures::png(100))
        .await;
    assert_eq!(f["filename"], "; DROP TABLE files; --.png");
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .query(&[("limit", "1 OR 1=1")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["status"], 422);
    let list: Value = app
        .authed(Method::GET, "/api/v1/files", &u.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    app.login("bobby", PASSWORD).await;
}
