//! Access and refresh tokens: what the server accepts, refresh rotation and reuse, and what
//! ends a login (logout, deletion of the account), across restarts too.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer::auth::jwt::{Claims, TokenKeys};
use coffer::secrets::SecretKey;

use crate::helpers::{PASSWORD, TestApp, problem, secret};

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
    assert_eq!(app.me().as_user(&u).status().await, 200);
    let claims = claims_of(&u.token);
    assert_eq!(claims.sub, u.id);
    assert_eq!(claims.typ, "access");
    let keys = server_keys(&app);
    let sign = |c: Claims| keys.sign(&c).unwrap();

    let [header, payload, signature] = [0, 1, 2].map(|i| u.token.split('.').nth(i).unwrap());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let evil_payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&Claims {
            sub: uuid::Uuid::new_v4().to_string(),
            ..claims.clone()
        })
        .unwrap(),
    );
    let other_secret =
        TokenKeys::new(&SecretKey::parse(&secret()).unwrap(), "coffer", 900).unwrap();
    let now = coffer::ids::Timestamp::now().unix_secs();
    let forged = [
        (
            "alg none, empty signature",
            format!("{none_header}.{payload}."),
        ),
        ("alg none, no signature", format!("{none_header}.{payload}")),
        (
            "another user's id under the old signature",
            format!("{header}.{evil_payload}.{signature}"),
        ),
        (
            "signed with another secret",
            other_secret.sign(&claims).unwrap(),
        ),
        (
            "expired",
            sign(Claims {
                exp: now - 60,
                iat: now - 1000,
                nbf: now - 1000,
                ..claims.clone()
            }),
        ),
        (
            "not valid yet",
            sign(Claims {
                nbf: now + 600,
                ..claims.clone()
            }),
        ),
        (
            "a refresh token's type",
            sign(Claims {
                typ: "refresh".into(),
                ..claims.clone()
            }),
        ),
        (
            "another issuer",
            sign(Claims {
                iss: "elsewhere".into(),
                ..claims.clone()
            }),
        ),
        ("not a JWT", "not.a.jwt".into()),
        ("the refresh token itself", u.refresh.clone()),
    ];
    for (row, token) in forged {
        let r = app.me().bearer(&token).send().await;
        let challenge = r.headers().get("www-authenticate").cloned();
        assert_eq!(
            challenge.as_ref().map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{row}"
        );
        problem(r, 401).await;
    }
    // A correctly signed fresh token for the same login still works (the forgeries above were
    // refused for what they are, not because the login died).
    let fresh = sign(Claims {
        jti: "fresh".into(),
        ..claims
    });
    assert_eq!(app.me().bearer(&fresh).status().await, 200);
    // Credentials are never read from the query string.
    let in_query = format!("/api/v1/users/me?access_token={}", u.token);
    assert_eq!(app.get(&in_query).status().await, 401);
    // The scheme name is case-insensitive.
    let odd_case = format!("bEaReR {}", u.token);
    let r = app.me().header("authorization", &odd_case).status().await;
    assert_eq!(r, 200);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let u = app.user("erin").await;
    let pair = app.refresh(&u.refresh).expect(200).await;
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    let access2 = pair["access_token"].as_str().unwrap();
    let refresh2 = pair["refresh_token"].as_str().unwrap();
    assert_ne!(refresh2, u.refresh);
    assert_eq!(app.me().bearer(access2).status().await, 200);

    // Presenting the spent token again: 401, and the whole login dies.
    app.refresh(&u.refresh).problem(401).await;
    app.refresh(refresh2).problem(401).await;
    assert_eq!(app.me().bearer(access2).status().await, 401);
    assert_eq!(app.me().as_user(&u).status().await, 401);
    // Other logins of the same user are untouched.
    let (other, _) = app.login("erin", PASSWORD).await;
    assert_eq!(app.me().bearer(&other).status().await, 200);
    app.refresh("garbage").problem(401).await;
}

#[tokio::test]
async fn logout_kills_the_access_and_refresh_token_at_once() {
    let app = TestApp::spawn().await;
    let u = app.user("frank").await;
    let (second, _) = app.login("frank", PASSWORD).await;
    assert_eq!(app.logout().as_user(&u).status().await, 204);
    app.me().as_user(&u).problem(401).await;
    app.refresh(&u.refresh).problem(401).await;
    // Only the calling login ends.
    assert_eq!(app.me().bearer(&second).status().await, 200);
    app.logout().problem(401).await;
}

#[tokio::test]
async fn revocations_survive_a_restart() {
    let mut app = TestApp::spawn().await;
    let u = app.user("grace").await;
    let (kept, _) = app.login("grace", PASSWORD).await;
    assert_eq!(app.logout().as_user(&u).status().await, 204);
    app.terminate();
    let app2 = app.relaunch().spawn().await;
    assert_eq!(app2.me().as_user(&u).status().await, 401);
    assert_eq!(app2.me().bearer(&kept).status().await, 200);
}

#[tokio::test]
async fn deleted_users_tokens_stop_working() {
    let app = TestApp::builder().spawn().await;
    let admin = app.admin("boss").await;
    let u = app.user("henry").await;
    let key = app.new_api_key(&u.token, "k").await;
    assert_eq!(app.delete_user(&u.id).as_user(&admin).status().await, 204);
    app.me().as_user(&u).problem(401).await;
    app.me()
        .api_key(key["key"].as_str().unwrap())
        .problem(401)
        .await;
    app.refresh(&u.refresh).problem(401).await;
}
