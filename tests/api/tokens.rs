//! Access and refresh tokens: what the server accepts, refresh rotation and reuse, and what
//! ends a login (logout, deletion of the account), across restarts too.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer::auth::jwt::{Claims, TokenKeys};
use coffer::secrets::SecretKey;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, problem};

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
