//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations.
//!
//! Invariant: routes are registered only through `utoipa_axum::routes!`, which adds each
//! handler to the router and to this document together; `tests/api/openapi.rs` fails if a
//! route answers but is not documented. Every operation also lists the problem responses any
//! route can give (rate limits, body limits, validation), so clients and schema fuzzers see
//! every status code they may meet.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use crate::config::Config;
use crate::http::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "coffer",
        description = "A secure file-storage service: streamed, validated uploads; authenticated downloads; share links; encryption at rest.",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "api-keys", description = "Keys for app backends"),
        (name = "files", description = "Upload, list, download, delete"),
        (name = "links", description = "Share links"),
        (name = "upload-grants", description = "Scoped, short-lived upload credentials for browsers"),
        (name = "webhooks", description = "Events sent to app backends"),
        (name = "admin", description = "Administration (role admin)"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        // Upload grants: a credential for the upload routes only.
        c.add_security_scheme(
            "upload_grant",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Upload-Grant",
                "An upload grant's token (POST /api/v1/upload-grants); upload routes only",
            ))),
        );
        c.add_security_scheme(
            "upload_grant_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "grant",
                "An upload grant's token in the query, for plain HTML forms; upload routes only",
            ))),
        );
    }
}

/// Problem responses every operation may give, by status.
const COMMON: &[(&str, &str)] = &[
    ("400", "Malformed request"),
    ("401", "Missing, invalid, expired or revoked credentials"),
    ("403", "Not allowed"),
    ("404", "No such resource"),
    ("405", "Method not allowed"),
    ("408", "Request timeout"),
    ("409", "Conflict"),
    ("413", "Body or quota too large"),
    ("415", "Unsupported media type"),
    ("422", "Validation failed"),
    ("429", "Rate limited (see Retry-After)"),
    ("500", "Internal error"),
    ("501", "A transfer coding other than chunked"),
    ("503", "Temporarily unavailable"),
];

/// Add the common problem responses to every operation that does not define them itself.
pub(crate) fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    let problem = || {
        ResponseBuilder::new().content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.head,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            for (status, description) in COMMON {
                op.responses
                    .responses
                    .entry((*status).to_owned())
                    .or_insert_with(|| problem().description(*description).build().into());
            }
        }
    }
}

/// A binary body of one media type, the OpenAPI 3.1 way (`contentMediaType`), with
/// `format: binary` for tools that still read bodies the 3.0 way (openapi-python-client,
/// openapi-typescript): the bytes as they are, never an array of integers.
fn binary(media_type: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "string",
        "format": "binary",
        "contentMediaType": media_type,
    })
}

/// A download's body: text (checked UTF-8 on upload) as a string of its type, anything else as
/// binary. Generators then hand text files over as text and other files as bytes.
fn served_schema(media_type: &str) -> serde_json::Value {
    if media_type.starts_with("text/") {
        serde_json::json!({ "type": "string", "contentMediaType": media_type })
    } else {
        binary(media_type)
    }
}

/// The content types downloads are served as: each allowed type as stored (text types as
/// `text/plain; charset=utf-8`).
fn served_types(config: &Config) -> Vec<String> {
    let mut types: Vec<String> = config
        .uploads
        .allowed
        .values()
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            if m.starts_with("text/") {
                crate::ingest::policy::TEXT_PLAIN.to_owned()
            } else {
                m
            }
        })
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Exactly the names the server takes (the contract's sanitising, then an allowed extension,
/// in any case): a path is dropped up to the last `/` or `\`; control, quote, angle-bracket
/// and bidirectional-control characters are removed wherever they are; trailing dots and
/// spaces are trimmed; what is left needs a stem that is not only dots and an allowed
/// extension after its last dot.
fn filename_pattern(config: &Config) -> String {
    const REMOVED: &str =
        r#"\u0000-\u001f\u007f-\u009f"'<>\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"#;
    let removed = format!("[{REMOVED}]");
    let exts: Vec<String> = config
        .uploads
        .allowed
        .keys()
        .map(|e| {
            // Each letter in either case, removed characters allowed between them.
            e.chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| {
                    let (l, u) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
                    if l == u {
                        c.to_string()
                    } else {
                        format!("[{l}{u}]")
                    }
                })
                .collect::<Vec<_>>()
                .join(&format!("{removed}*"))
        })
        .filter(|e| !e.is_empty())
        .collect();
    format!(
        r"^(?:[\s\S]*[/\\])?[^/\\]*[^/\\.{REMOVED}][^/\\]*\.{removed}*(?:{})(?:{removed}|[. ])*$",
        exts.join("|")
    )
}

/// Set `key` in the object at `pointer`, when the document has that object.
fn set(doc: &mut serde_json::Value, pointer: &str, key: &str, value: serde_json::Value) {
    if let Some(object) = doc
        .pointer_mut(pointer)
        .and_then(serde_json::Value::as_object_mut)
    {
        object.insert(key.to_owned(), value);
    }
}

/// State in the document what this server's configuration enforces, so that generated
/// clients and form validators refuse what the server would: the password policy, the
/// longest share-link and retention lifetimes, and file bytes as binary of the real types.
pub(crate) fn apply_config(doc: &mut serde_json::Value, config: &Config) {
    use serde_json::{Value, json};
    let auth = &config.auth;
    let mut needs = Vec::new();
    if auth.password_require_digit {
        needs.push("[0-9]");
    }
    if auth.password_require_uppercase {
        needs.push("[A-Z]");
    }
    // Any order of the required classes, without lookaheads (which many regex engines
    // behind schema tools lack); [\s\S] is "any character" including newlines.
    let any = r"[\s\S]*";
    let pattern = match needs.as_slice() {
        [] => format!("^{any}$"),
        [one] => format!("^{any}{one}{any}$"),
        [a, b, ..] => format!("^{any}({a}{any}{b}|{b}{any}{a}){any}$"),
    };
    let password = "/components/schemas/RegisterRequest/properties/password";
    set(doc, password, "minLength", json!(auth.password_min_length));
    set(doc, password, "maxLength", json!(auth.password_max_length));
    set(doc, password, "pattern", json!(pattern));
    set(
        doc,
        "/components/schemas/CreateLinkRequest/properties/expires_in",
        "maximum",
        json!(config.links.max_expires_secs),
    );
    set(
        doc,
        "/components/schemas/ViewUrlRequest/properties/expires_in",
        "maximum",
        json!(config.links.max_view_secs),
    );
    let grant = "/components/schemas/GrantRequest";
    let grant_field = |f: &str| format!("{grant}/properties/{f}");
    set(
        doc,
        &grant_field("expires_in"),
        "maximum",
        json!(config.grants.max_expires_secs),
    );
    set(
        doc,
        &grant_field("max_bytes"),
        "maximum",
        json!(config.limits.max_upload_bytes),
    );
    set(
        doc,
        &grant_field("file_expires_in"),
        "maximum",
        json!(config.retention.max_expires_secs),
    );
    set(
        doc,
        &grant_field("extensions"),
        "items",
        json!({ "type": "string", "enum": config.uploads.allowed.keys().collect::<Vec<_>>() }),
    );
    // A grant bound to one content allows one upload.
    set(
        doc,
        grant,
        "if",
        json!({ "properties": { "sha256": { "type": "string" } }, "required": ["sha256"] }),
    );
    set(
        doc,
        grant,
        "then",
        json!({ "properties": { "max_uploads": { "enum": [1, null] } } }),
    );
    if config.webhooks.allow_http {
        let url = "/components/schemas/CreateWebhookRequest/properties/url";
        if let Some(p) = doc
            .pointer(&format!("{url}/pattern"))
            .and_then(Value::as_str)
            .map(|p| p.replacen("^https://", "^https?://", 1))
        {
            set(doc, url, "pattern", json!(p));
        }
    }
    let form = "/components/schemas/UploadForm";
    set(
        doc,
        &format!("{form}/properties"),
        "file",
        binary("application/octet-stream"),
    );
    // Other parts (text fields) are ignored, whatever their names, as long as their headers
    // are HTTP headers: a name may hold no control character (a form encoder escapes CR, LF
    // and `"`).
    set(
        doc,
        form,
        "patternProperties",
        json!({ "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$": { "type": "string" } }),
    );
    set(doc, form, "additionalProperties", json!(false));

    let served = served_types(config);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        // One handler serves GET and HEAD; operation ids must still be unique (a generator
        // keys its functions by them, and HEAD would replace GET).
        let get_id = item.get("get").and_then(|g| g.get("operationId")).cloned();
        if let Some(head) = item.get_mut("head").and_then(Value::as_object_mut)
            && let Some(id) = get_id.as_ref().and_then(Value::as_str)
            && head.get("operationId").and_then(Value::as_str) == Some(id)
        {
            head.insert("operationId".into(), json!(format!("{id}_head")));
        }
        // Operations only: `get_mut`, never indexing, so that nothing is added to an entry
        // (a path-level `parameters` list, say) that lacks the key.
        for op in item.values_mut().filter(|op| op.is_object()) {
            if path == "/api/v1/files"
                && let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut)
            {
                for p in params.iter_mut().filter(|p| p["name"] == "expires_in") {
                    if let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) {
                        schema.insert("maximum".into(), json!(config.retention.max_expires_secs));
                    }
                }
                // The name of a raw-body upload (multipart takes the part's filename); without
                // one, a raw body has no type and is refused like a name without extension.
                for p in params.iter_mut().filter(|p| p["name"] == "filename") {
                    if let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) {
                        schema.insert("pattern".into(), json!(filename_pattern(config)));
                    }
                }
            }
            if let Some(raw) = op
                .pointer_mut("/requestBody/content/application~1octet-stream")
                .and_then(Value::as_object_mut)
            {
                raw.insert("schema".into(), binary("application/octet-stream"));
            }
            // An absent raw body is an empty file, which is stored like any other.
            if path == "/api/v1/files"
                && let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut)
            {
                body.insert("required".into(), json!(false));
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for response in responses.values_mut() {
                let Some(content) = response.get_mut("content").and_then(Value::as_object_mut)
                else {
                    continue;
                };
                if content.remove("*/*").is_some() {
                    for t in &served {
                        content.insert(t.clone(), json!({ "schema": served_schema(t) }));
                    }
                }
            }
        }
    }
}
