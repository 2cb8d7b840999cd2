//! The HTTP surface: routers per resource, merged under one middleware stack.
//!
//! Invariant: every response passes through the whole stack (404s and errors included), so
//! request ids, security headers, CORS and problem bodies apply uniformly; the one exception,
//! the HTTP/1 parser's own 400 and 431 made before there is a request to route, gets the same
//! security headers, a request id and a problem body from `parser_errors`. JSON routes get a
//! 64 KiB body limit and a request timeout; the streaming routes (upload, content, links) get
//! neither, because their own idle timeouts and size limits bound them.

pub mod admin;
pub mod auth;
pub mod client_ip;
pub mod content;
pub mod extract;
pub mod files;
pub mod headers;
pub mod health;
pub mod keys;
pub mod links;
pub mod metrics;
pub mod openapi;
pub(crate) mod parser_errors;
pub mod rate_limit;
pub mod request_id;
pub mod send_timeout;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::error::AppError;
use crate::http::client_ip::ClientIp;
use crate::http::metrics::Limiter;

/// Build the application router and its OpenAPI document.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let cfg = &state.config;
    let json_limit = cfg.limits.json_body_bytes;
    let timeout = Duration::from_secs(cfg.server.request_timeout_secs);

    let json_routes = OpenApiRouter::new()
        .merge(auth::login_router().layer(from_fn_with_state(state.clone(), login_rate_limit)))
        .merge(auth::router())
        .merge(keys::router())
        .merge(files::router())
        .merge(links::router())
        .merge(admin::router())
        .merge(health::router())
        .layer(
            ServiceBuilder::new()
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                ))
                .layer(RequestBodyLimitLayer::new(json_limit))
                .layer(DefaultBodyLimit::max(json_limit)),
        );
    let streaming_routes = OpenApiRouter::new()
        .merge(files::streaming_router())
        .merge(links::streaming_router());

    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(json_routes)
        .merge(streaming_routes)
        .split_for_parts();
    openapi::add_common_responses(&mut doc);

    let stack = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            HeaderName::from_static("x-api-key"),
        ]))
        .layer(from_fn(request_id::layer))
        .layer(from_fn_with_state(state.clone(), client_ip::layer))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_request(())
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
        .layer(from_fn_with_state(state.clone(), metrics::layer))
        .layer(from_fn_with_state(state.clone(), headers::security_headers))
        .layer(from_fn(headers::problem_errors))
        .layer(CatchPanicLayer::custom(headers::panic_response))
        .layer(from_fn_with_state(state.clone(), headers::trusted_hosts))
        // CORS answers preflights itself, so they are counted before it; every other request
        // after it, so a 429 still carries the CORS headers a browser needs to read it.
        .layer(from_fn_with_state(state.clone(), preflight_rate_limit))
        .layer(from_fn(cors_answers))
        .layer(cors(&state))
        .layer(from_fn_with_state(state.clone(), global_rate_limit));

    let router = router.fallback(fallback).layer(stack).with_state(state);
    (router, doc)
}

/// Paths no route matches. The wording differs from a missing resource's only so the
/// OpenAPI coverage test can tell an unrouted path from a routed 404.
async fn fallback() -> Response {
    crate::error::problem_response(
        StatusCode::NOT_FOUND,
        "not-found",
        "no route matches this path".into(),
    )
}

/// The trace span of a request: method, route template (never the raw path: a share-link
/// token lives there), request id and client address.
fn make_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let id = req
        .extensions()
        .get::<request_id::RequestId>()
        .and_then(|r| r.0.to_str().ok())
        .unwrap_or("-");
    let ip = req
        .extensions()
        .get::<ClientIp>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    tracing::info_span!("request", method = %req.method(), route, request_id = id, client.ip = ip)
}

fn cors(state: &AppState) -> CorsLayer {
    let origins: Vec<HeaderValue> = state
        .config
        .cors
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    // Tokens ride in headers, never cookies, so credentials are never allowed.
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            header::RANGE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::CONTENT_DISPOSITION,
            header::CONTENT_RANGE,
            header::CONTENT_LENGTH,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Tidies what the CORS layer answers. It sends its method, header and exposed-header lists
/// whatever the origin; they are dropped unless the origin was allowed, so CORS answers only
/// the configured origins. Its preflight answer is an empty 200; the contract (and RFC 9110
/// for an empty answer) says 204.
async fn cors_answers(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
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

fn client(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<ClientIp>()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0)
}

fn over_global_limit(state: &AppState, req: &Request) -> Option<Response> {
    if headers::is_probe(req.uri().path()) {
        return None;
    }
    let wait = state.limits.global.check(client(req)).err()?;
    state.metrics.rate_limited(Limiter::Global);
    Some(
        AppError::TooManyRequests {
            retry_after_secs: wait,
        }
        .into_response(),
    )
}

async fn preflight_rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS
        && let Some(refused) = over_global_limit(&state, &req)
    {
        return refused;
    }
    next.run(req).await
}

async fn global_rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match over_global_limit(&state, &req) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

async fn login_rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.limits.login.check(client(&req)) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            state.metrics.rate_limited(Limiter::Login);
            AppError::TooManyRequests {
                retry_after_secs: wait,
            }
            .into_response()
        }
    }
}
