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

/// File bytes are binary of the real types, and the constraints the server enforces are
/// stated (from its configuration where they come from it).
#[tokio::test]
async fn bytes_are_binary_and_enforced_constraints_are_stated() {
    let app = TestApp::builder()
        .env("COFFER_AUTH__PASSWORD_MIN_LENGTH", "10")
        .env("COFFER_LINKS__MAX_EXPIRES_SECS", "7200")
        .spawn()
        .await;
    let doc = document(&app).await;
    let binary = |s: &Value, media: &str| {
        assert_eq!(s["type"], "string", "{s}");
        assert_eq!(s["format"], "binary", "{s}");
        assert_eq!(s["contentMediaType"], media, "{s}");
    };
    let upload = &doc["paths"]["/api/v1/files"]["post"];
    binary(
        &upload["requestBody"]["content"]["application/octet-stream"]["schema"],
        "application/octet-stream",
    );
    binary(
        &doc["components"]["schemas"]["UploadForm"]["properties"]["file"],
        "application/octet-stream",
    );
    for path in ["/api/v1/files/{id}/content", "/api/v1/links/{link}"] {
        for status in ["200", "206"] {
            let content = &doc["paths"][path]["get"]["responses"][status]["content"];
            assert!(content.get("*/*").is_none(), "{path} {status}: {content}");
            binary(&content["image/png"]["schema"], "image/png");
            // Text files (UTF-8, checked on upload) are text.
            let text = &content["text/plain; charset=utf-8"]["schema"];
            assert_eq!(text["type"], "string", "{text}");
            assert_eq!(text["contentMediaType"], "text/plain; charset=utf-8");
            assert!(text.get("format").is_none(), "{text}");
        }
    }
    // Operation ids are unique (GET and HEAD of one handler too).
    let mut ids = std::collections::BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            }
        }
    }
    let param = |op: &Value, name: &str| {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    };
    assert_eq!(param(upload, "filename")["minLength"], 1);
    let filename = upload["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "filename")
        .unwrap();
    assert_ne!(
        filename["required"], true,
        "multipart uploads need no ?filename="
    );
    let pattern = filename["schema"]["pattern"].as_str().unwrap();
    assert!(
        pattern.contains("[pP]") && pattern.contains("[gG]") && pattern.contains("\\u202e"),
        "{pattern}"
    );
    assert_eq!(upload["requestBody"]["required"], false);
    assert_eq!(
        doc["components"]["schemas"]["UploadForm"]["additionalProperties"],
        false
    );
    // Cursors are stated exactly: a time-keyed position, or a sequence number.
    assert!(
        param(&doc["paths"]["/api/v1/files"]["get"], "cursor")["pattern"]
            .as_str()
            .unwrap()
            .starts_with("^[0-9]{1,18}\\.")
    );
    assert_eq!(
        param(&doc["paths"]["/api/v1/admin/audit"]["get"], "cursor")["pattern"],
        "^[0-9]{1,18}$"
    );
    assert!(param(upload, "expires_in")["maximum"].as_u64().is_some());
    assert_eq!(
        param(&doc["paths"]["/api/v1/files"]["get"], "cursor")["minLength"],
        1
    );
    let schemas = &doc["components"]["schemas"];
    let password = &schemas["RegisterRequest"]["properties"]["password"];
    assert_eq!(password["minLength"], 10);
    assert_eq!(password["maxLength"], 128);
    assert!(password["pattern"].as_str().unwrap().contains("[A-Z]"));
    assert_eq!(
        schemas["RegisterRequest"]["properties"]["username"]["pattern"],
        "^[A-Za-z0-9_]{3,50}$"
    );
    let link = &schemas["CreateLinkRequest"]["properties"];
    assert_eq!(link["expires_in"]["maximum"], 7200);
    assert_eq!(
        schemas["ViewUrlRequest"]["properties"]["expires_in"]["maximum"],
        3600
    );
    assert_eq!(link["max_downloads"]["maximum"], 4_294_967_295_u64);
    let key = &schemas["CreateKeyRequest"]["properties"]["name"];
    assert_eq!(
        (&key["minLength"], &key["maxLength"]),
        (&1.into(), &100.into())
    );
}

/// What the document states is what the server takes: an integer written as `30.0` is an
/// integer (JSON Schema's reading), and any string of a cursor's pattern is a position.
#[tokio::test]
async fn schema_valid_values_are_accepted() {
    let app = TestApp::spawn().await;
    let admin = app.admin("stater").await;
    let f = app
        .stored(&admin.token, "a.png", crate::helpers::fixtures::png(100))
        .await;
    let id = f["id"].as_str().unwrap();
    let body = serde_json::json!({"expires_in": 3600.0, "max_downloads": 2.0});
    assert_eq!(
        app.create_link(id, &body).as_user(&admin).status().await,
        201
    );
    let body = serde_json::json!({"name": "k", "expires_in_days": 30.0});
    assert_eq!(
        app.create_api_key(&body).as_user(&admin).status().await,
        201
    );
    for bad in [
        serde_json::json!({"expires_in": 3600.5}),
        serde_json::json!({"expires_in": "3600"}),
    ] {
        let got = app.create_link(id, &bad).as_user(&admin).refusal().await;
        assert_eq!(got, (422, "validation-failed", "expires_in"), "{bad}");
    }
    // A raw body needs its name: none, or an empty one, is a bad request (400).
    let raw = |q: &str| {
        app.post(&format!("/api/v1/files{q}"))
            .as_user(&admin)
            .body(crate::helpers::fixtures::png(100))
    };
    assert_eq!(raw("").status().await, 400);
    assert_eq!(raw("?filename=").status().await, 400);
    assert_eq!(raw("?filename=..%2Fx%00.PnG.%20").status().await, 201);
    for path in [
        "/api/v1/files?cursor=0.00000000-0000-0000-0000-000000000000",
        "/api/v1/files?cursor=999999999999999999.ffffffff-ffff-ffff-ffff-ffffffffffff",
        "/api/v1/admin/users?cursor=5.00000000-0000-0000-0000-000000000000",
        "/api/v1/admin/audit?cursor=0",
        "/api/v1/admin/audit?cursor=999999999999999999",
    ] {
        assert_eq!(app.get(path).as_user(&admin).status().await, 200, "{path}");
    }
}

/// The contract ships with the repository: `docs/openapi.json` is the document a server on
/// the embedded defaults serves, byte for byte (pretty-printed). After a change to the API,
/// `COFFER_UPDATE_DOCS=1 cargo test --test api openapi::the_shipped` rewrites it.
#[tokio::test]
async fn the_shipped_document_is_the_served_one() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let served = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("COFFER_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == served,
        "docs/openapi.json is not the served document; run \
         COFFER_UPDATE_DOCS=1 cargo test --test api openapi::the_shipped"
    );
}
