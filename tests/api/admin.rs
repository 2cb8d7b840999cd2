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
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = app
            .authed(Method::GET, "/api/v1/admin/users", &admin.token)
            .query(&[("limit", "2")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        for u in v["items"].as_array().unwrap() {
            assert_eq!(u.as_object().unwrap().len(), 5, "{u}");
            seen.push(u["username"].as_str().unwrap().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
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
