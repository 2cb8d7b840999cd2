//! The stack: the routes, merged, under every layer of middleware, listed once, outermost
//! first.
//!
//! Invariant: every response passes through the whole stack (404s and errors included), so
//! request ids, security headers, CORS and problem bodies apply uniformly; the one exception,
//! the HTTP/1 parser's own 400 and 431 made before there is a request to route, gets the same
//! security headers, a request id and a problem body from `parser_errors`. JSON routes get a
//! 64 KiB body limit and a request timeout; the streaming routes (upload, content, links) get
//! neither, because their own idle timeouts and size limits bound them.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::Response;
use tower::ServiceBuilder;
use tower_http::LatencyUnit;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::http::middleware::client_ip::{self, ClientIp};
use crate::http::middleware::{cors, drain, headers, metrics, rate_limit, request_id};
use crate::http::openapi;
use crate::http::routes::{
    admin, auth, files, grants, health, keys, links, uploads, views, webhooks,
};
use crate::state::AppState;

/// Build the application router and its OpenAPI document.
pub(crate) fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let cfg = &state.config;
    let json_limit = cfg.limits.json_body_bytes;
    let timeout = Duration::from_secs(cfg.server.request_timeout_secs);

    let json_routes = OpenApiRouter::new()
        .merge(auth::login_router().layer(from_fn_with_state(state.clone(), rate_limit::login)))
        .merge(auth::router())
        .merge(keys::router())
        .merge(files::router())
        .merge(links::router())
        .merge(views::router())
        .merge(grants::router())
        .merge(webhooks::router())
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
        .merge(links::streaming_router())
        .merge(uploads::router());

    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(json_routes)
        .merge(streaming_routes)
        .split_for_parts();
    openapi::add_common_responses(&mut doc);

    // Outermost first: a request passes these top to bottom, its response bottom to top.
    let stack = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("upload-grant"),
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
        .layer(from_fn_with_state(state.clone(), metrics::count))
        .layer(from_fn_with_state(state.clone(), headers::security_headers))
        .layer(from_fn(headers::problem_errors))
        .layer(CatchPanicLayer::custom(headers::panic_response))
        .layer(from_fn_with_state(state.clone(), headers::trusted_hosts))
        // CORS answers preflights itself, so they are counted before it; every other request
        // after it, so a 429 still carries the CORS headers a browser needs to read it.
        .layer(from_fn_with_state(state.clone(), rate_limit::preflights))
        .layer(from_fn_with_state(
            state.clone(),
            uploads::options_before_cors,
        ))
        .layer(from_fn(cors::tidy))
        .layer(cors::layer(&state.config.cors))
        .layer(from_fn_with_state(state.clone(), rate_limit::global));

    let router = router
        .fallback(fallback)
        .layer(stack)
        .with_state(state.clone());
    // Before routing (a layer on the router runs after it picked the method's handler):
    // `X-HTTP-Method-Override` on the tus routes.
    let router = Router::new()
        .fallback_service(router)
        .layer(from_fn(uploads::method_override))
        // Outermost: whatever answers early below, the rest of the body is read after it.
        .layer(from_fn_with_state(state, drain::layer));
    (router, doc)
}

/// Paths no route matches. The wording differs from a missing resource's only so the
/// OpenAPI coverage test can tell an unrouted path from a routed 404.
async fn fallback() -> Response {
    crate::http::error::problem_response(
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
