//! CORS from configuration: exact origins, never credentials (tokens ride in headers, not
//! cookies).
//!
//! Invariant: only a configured origin gets any `Access-Control-*` header; a preflight from
//! one is answered 204.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsConfig;

/// The response headers a page may read: the tus ones among them.
const EXPOSED: [HeaderName; 17] = [
    header::LOCATION,
    header::ETAG,
    header::CONTENT_DISPOSITION,
    header::CONTENT_RANGE,
    header::CONTENT_LENGTH,
    header::RETRY_AFTER,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("upload-offset"),
    HeaderName::from_static("upload-length"),
    HeaderName::from_static("upload-metadata"),
    HeaderName::from_static("upload-expires"),
    HeaderName::from_static("tus-resumable"),
    HeaderName::from_static("tus-version"),
    HeaderName::from_static("tus-extension"),
    HeaderName::from_static("tus-max-size"),
    HeaderName::from_static("tus-checksum-algorithm"),
    HeaderName::from_static("coffer-file-id"),
];

fn origins(cfg: &CorsConfig) -> Vec<HeaderValue> {
    cfg.allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect()
}

/// What `Vary` names on every answer (what the CORS headers depend on).
const VARY: &str = "origin, access-control-request-method, access-control-request-headers";

/// The CORS layer for the configured origins. The middleware around it is cloned on every
/// request, so what it holds is cheap to clone: the origins are shared, and `Vary` is added
/// by [`tidy`] as one static value (the layer's own is a list joined on every request).
pub(crate) fn layer(cfg: &CorsConfig) -> CorsLayer {
    let origins: Arc<[HeaderValue]> = origins(cfg).into();
    // Tokens ride in headers, never cookies, so credentials are never allowed.
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origins.contains(origin)
        }))
        .vary(Vec::<HeaderName>::new())
        // PATCH and OPTIONS, and the tus headers below, for resumable uploads (API.md).
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("upload-grant"),
            header::RANGE,
            header::IF_NONE_MATCH,
            header::IF_RANGE,
            header::IF_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-metadata"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-checksum"),
            HeaderName::from_static("upload-concat"),
            HeaderName::from_static("upload-defer-length"),
            HeaderName::from_static("x-http-method-override"),
        ])
        .expose_headers(EXPOSED)
        // Chromium caps this at 7200 s: a page then preflights each URL once in two hours.
        .max_age(Duration::from_secs(cfg.max_age_secs))
}

/// The CORS headers of an answer to a plain (not preflight) OPTIONS request, which the layer
/// cannot give: it takes every OPTIONS for a preflight. As the layer does for any other
/// request: the origin echoed and the exposed headers when it is allowed, `Vary` always.
pub(crate) fn plain_options(cfg: &CorsConfig, origin: Option<&HeaderValue>, res: &mut Response) {
    let headers = res.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static(VARY));
    let Some(origin) = origin.filter(|o| origins(cfg).contains(o)) else {
        return;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    let exposed = EXPOSED
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(v) = HeaderValue::from_str(&exposed) {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

/// Tidies what the CORS layer answers, and adds `Vary` to it. The layer sends its method,
/// header and exposed-header lists whatever the origin; they are dropped unless the origin
/// was allowed, so CORS answers only the configured origins. Its preflight answer is an empty
/// 200; the contract (and RFC 9110 for an empty answer) says 204.
pub(crate) async fn tidy(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static(VARY));
    if !headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
    }
    if preflight && res.status() == StatusCode::OK {
        *res.status_mut() = StatusCode::NO_CONTENT;
    }
    res
}
