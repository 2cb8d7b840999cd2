//! Refresh-token rotation with `auth.refresh_reuse_grace_secs` (issue 20, item 9): by default a
//! replayed refresh token revokes its login; with a grace period, the token rotated just now
//! may be presented again and answers the same new refresh token, so a client that retries
//! after a lost response (or two tabs refreshing at once) stays logged in.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, TestAppBuilder, TestUser};

/// Refresh, expecting a new pair: (access, refresh).
async fn rotated(app: &TestApp, token: &str) -> (String, String) {
    let v = app.refresh(token).expect(200).await;
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// What `GET /users/me` answers to an access token.
async fn me(app: &TestApp, access: &str) -> u16 {
    app.me().bearer(access).status().await
}

fn with_grace(secs: u64) -> TestAppBuilder {
    TestApp::builder().env("COFFER_AUTH__REFRESH_REUSE_GRACE_SECS", secs.to_string())
}

/// Two refreshes of one token at once.
async fn refresh_twice_at_once(app: &TestApp, u: &TestUser) -> [reqwest::Response; 2] {
    let (a, b) = tokio::join!(
        app.refresh(&u.refresh).send(),
        app.refresh(&u.refresh).send()
    );
    [a, b]
}

#[tokio::test]
async fn without_grace_a_concurrent_double_refresh_revokes_the_login() {
    let app = TestApp::spawn().await;
    let u = app.user("racer").await;
    let [a, b] = refresh_twice_at_once(&app, &u).await;
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "one rotates, the other is reuse");
    let won: Value = if a.status() == 200 { a } else { b }.json().await.unwrap();
    // Reuse detection, the contract's default: the winner's new pair died with the login.
    assert_eq!(me(&app, won["access_token"].as_str().unwrap()).await, 401);
    app.refresh(won["refresh_token"].as_str().unwrap())
        .problem(401)
        .await;
}

#[tokio::test]
async fn with_grace_a_replay_answers_the_same_pair_until_the_window_closes() {
    let app = with_grace(1).spawn().await;
    let u = app.user("retrier").await;
    let (access2, refresh2) = rotated(&app, &u.refresh).await;
    // The response was lost; the client retries with the token it still holds.
    let (access2b, refresh2b) = rotated(&app, &u.refresh).await;
    assert_eq!(
        (&access2b, &refresh2b),
        (&access2, &refresh2),
        "the same pair"
    );
    assert_eq!(me(&app, &access2).await, 200);
    // After the window the same replay is reuse: 401 and the whole login is revoked.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.refresh(&u.refresh).problem(401).await;
    assert_eq!(me(&app, &access2).await, 401);
    app.refresh(&refresh2).problem(401).await;
    // The user's other logins are untouched.
    let (other, _) = app.login("retrier", &u.password).await;
    assert_eq!(me(&app, &other).await, 200);
}

#[tokio::test]
async fn with_grace_only_the_token_rotated_last_is_forgiven() {
    let app = with_grace(30).spawn().await;
    let u = app.user("keeper").await;
    let pair = rotated(&app, &u.refresh).await;
    let refresh2 = pair.1.clone();
    // Seconds later, still the same pair, the access token included (issued at the rotation).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = app.refresh(&u.refresh).expect(200).await;
    assert_eq!(
        (
            again["access_token"].as_str().unwrap(),
            again["refresh_token"].as_str().unwrap()
        ),
        (pair.0.as_str(), pair.1.as_str())
    );
    let left = again["expires_in"].as_u64().unwrap();
    assert!(left < 900, "expires_in counts from the rotation: {left}");
    // The login lives on: the new token rotates normally.
    let (access3, refresh3) = rotated(&app, &refresh2).await;
    assert_ne!(refresh3, refresh2);
    assert_eq!(me(&app, &access3).await, 200);
    // The first token is now two rotations old: reuse, the login is revoked.
    app.refresh(&u.refresh).problem(401).await;
    assert_eq!(me(&app, &access3).await, 401);
    app.refresh(&refresh3).problem(401).await;
}

#[tokio::test]
async fn with_grace_a_concurrent_double_refresh_gives_both_the_same_pair() {
    let app = with_grace(30).spawn().await;
    let u = app.user("twotabs").await;
    let [a, b] = refresh_twice_at_once(&app, &u).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["refresh_token"], b["refresh_token"]);
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(me(&app, a["access_token"].as_str().unwrap()).await, 200);
    let (access, _) = rotated(&app, a["refresh_token"].as_str().unwrap()).await;
    assert_eq!(me(&app, &access).await, 200);
}
