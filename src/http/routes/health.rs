//! Operations: liveness, readiness, metrics and the OpenAPI document.
//!
//! Invariant: `/healthz` and `/readyz` answer by IP (no host check, no rate limit) and reveal
//! nothing but their state.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{AppError, AppResult};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// A health answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` or `ready`.
    status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 200 when the database answers, the blob store is usable (the storage root
/// writable, or the object store answering) and, with `scan.clamd` set, clamd answers
/// `PING`; else 503.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<AppState>) -> AppResult<Json<Health>> {
    let (db, storage, scanner) = tokio::join!(
        state.meta.ping(),
        state.blobs.ready(),
        state.ingest.safety.ready()
    );
    match (db, storage, scanner) {
        (true, true, Ok(())) => Ok(Json(Health { status: "ready" })),
        (false, _, _) => Err(AppError::Unavailable("the database is not usable")),
        (_, false, _) => Err(AppError::Unavailable("the blob store is not usable")),
        (_, _, Err(why)) => {
            tracing::warn!(error = %why, "readiness: clamd does not answer PING");
            Err(AppError::Unavailable("the virus scanner does not answer"))
        }
    }
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state
            .metrics
            .render(state.principals.stats(), state.small_files.stats()),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi(State(state): State<AppState>) -> Response {
    let doc = state.openapi.get().cloned().unwrap_or_default();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        doc,
    )
        .into_response()
}
