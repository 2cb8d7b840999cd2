//! Administration: listing users page by page.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestApp, problem};

#[tokio::test]
async fn user_pages_cover_everyone_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin("lister").await;
    for i in 0..6 {
        app.user(&format!("member{i}")).await;
    }
    let users = app
        .pages("/api/v1/admin/users", &admin.token, 2)
        .await
        .concat();
    assert!(users.iter().all(|u| u.as_object().unwrap().len() == 5));
    let mut seen: Vec<String> = users
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.first().unwrap(), "member5", "newest first");
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((n, seen.len()), (7, 7));
    problem(
        app.authed(Method::GET, "/api/v1/admin/users?cursor=xyz", &admin.token)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn an_admin_may_delete_another_admin_but_not_the_last() {
    let app = TestApp::spawn().await;
    let a = app.admin("first").await;
    let b = app.admin("second").await;
    assert_eq!(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", b.id),
            &a.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        204
    );
    problem(
        app.authed(
            Method::DELETE,
            &format!("/api/v1/admin/users/{}", a.id),
            &a.token,
        )
        .send()
        .await
        .unwrap(),
        409,
    )
    .await;
    problem(
        app.authed(Method::DELETE, "/api/v1/admin/users/not-a-uuid", &a.token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn promotion_and_demotion_apply_to_live_tokens_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin("promoter").await;
    let u = app.user("climber").await;
    let role = |id: &str, role: &str| {
        app.authed(
            Method::POST,
            &format!("/api/v1/admin/users/{id}/role"),
            &admin.token,
        )
        .json(&serde_json::json!({ "role": role }))
        .send()
    };
    problem(
        app.authed(Method::GET, "/api/v1/admin/users", &u.token)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let r = role(&u.id, "admin").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "admin");
    // The same token, no new login: admin now.
    assert_eq!(
        app.authed(Method::GET, "/api/v1/admin/users", &u.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(role(&u.id, "user").await.unwrap().status(), 200);
    problem(
        app.authed(Method::GET, "/api/v1/admin/users", &u.token)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // The last admin cannot demote itself; unknown roles are 422.
    problem(role(&admin.id, "user").await.unwrap(), 409).await;
    problem(role(&u.id, "root").await.unwrap(), 422).await;
    let events: Vec<String> = app
        .audit(&admin.token)
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.iter().filter(|e| *e == "admin.user_role").count(), 2);
}
