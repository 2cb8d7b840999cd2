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
