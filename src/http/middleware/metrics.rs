//! Counting every request for `/metrics`: method, route template, status, latency, bytes.
//!
//! Invariant: a request is labelled by its route template, never its raw path (a share-link
//! token lives there), so cardinality is bounded.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// Time and count every request.
pub(crate) async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    // A cheap clone (shared), not a copy of the path.
    let route = req.extensions().get::<MatchedPath>().cloned();
    state.metrics.add_bytes_in(content_length(req.headers()));
    let res = next.run(req).await;
    state.metrics.add_bytes_out(content_length(res.headers()));
    state.metrics.observe(
        method.as_str(),
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}

fn content_length(h: &HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}
