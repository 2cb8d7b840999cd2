//! The OpenAPI document covers every route, and every documented operation is routed.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::TestApp;

/// Every route of the contract (`API.md`).
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/users/me"),
    ("post", "/api/v1/api-keys"),
    ("get", "/api/v1/api-keys"),
    ("delete", "/api/v1/api-keys/{id}"),
    ("post", "/api/v1/files"),
    ("get", "/api/v1/files"),
    ("get", "/api/v1/files/{id}"),
    ("delete", "/api/v1/files/{id}"),
    ("get", "/api/v1/files/{id}/content"),
    ("head", "/api/v1/files/{id}/content"),
    ("post", "/api/v1/files/{id}/links"),
    ("get", "/api/v1/links/{link}"),
    ("head", "/api/v1/links/{link}"),
    ("delete", "/api/v1/links/{link}"),
    ("post", "/api/v1/files/{id}/view-url"),
    ("post", "/api/v1/users/me/revoke-view-urls"),
    ("get", "/api/v1/admin/users"),
    ("delete", "/api/v1/admin/users/{id}"),
    ("get", "/api/v1/admin/audit"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
];

async fn document(app: &TestApp) -> Value {
    app.get("/api/v1/openapi.json").expect(200).await
}

#[tokio::test]
async fn the_document_describes_every_contract_route() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (method, path) in CONTRACT {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        for status in ["400", "401", "404", "429", "500"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} lacks {status}"
            );
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let concrete = path
                .replace("{id}", "00000000-0000-4000-8000-000000000000")
                .replace("{link}", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app.request(m, &concrete).send().await;
            assert_ne!(r.status(), 405, "{method} {path}");
            if r.status() == 404 && *method != "head" {
                let v: Value = r.json().await.unwrap();
                assert_ne!(
                    v["detail"], "no route matches this path",
                    "{method} {path} is documented but not routed"
                );
            }
            count += 1;
        }
    }
    assert!(count >= CONTRACT.len(), "{count}");
}

#[test]
fn routes_are_only_registered_through_the_documenting_macro() {
    // A plain `.route(...)` would serve a path the document does not describe.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let sources = crate::helpers::files_under(&dir);
    assert!(sources.len() > 10, "{sources:?}");
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            assert!(
                !code.contains(".route(")
                    && !code.contains(".route_service(")
                    && !code.contains(".nest("),
                "{}:{} registers a route outside utoipa_axum::routes!",
                path.display(),
                i + 1
            );
        }
    }
}

#[tokio::test]
async fn an_undocumented_path_hits_the_fallback() {
    let app = TestApp::spawn().await;
    let v = app.get("/api/v1/secret-admin-panel").problem(404).await;
    assert_eq!(v["detail"], "no route matches this path");
}
