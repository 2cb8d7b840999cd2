//! Rate limits at the edge: one bucket per client address for every route (probes exempt),
//! and a stricter shared one for login and register. The buckets themselves are
//! `crate::limits`.
//!
//! Invariant: a refused request is a 429 problem with `Retry-After` in whole seconds (>= 1),
//! counted in `/metrics`.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::AppError;
use crate::http::middleware::client_ip::ClientIp;
use crate::http::middleware::headers;
use crate::limits::LoginRefused;
use crate::metrics::Limiter;
use crate::state::AppState;

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

/// Preflights, counted before CORS answers them.
pub(crate) async fn preflights(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == Method::OPTIONS
        && let Some(refused) = over_global_limit(&state, &req)
    {
        return refused;
    }
    next.run(req).await
}

/// Every other request, counted after CORS (so a 429 carries what a browser needs to read it).
pub(crate) async fn global(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match over_global_limit(&state, &req) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// The login and register budget.
pub(crate) async fn login(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match state.limits.check_login(client(&req)).await {
        Ok(()) => next.run(req).await,
        Err(LoginRefused::Unavailable(e)) => AppError::from(e).into_response(),
        Err(LoginRefused::Wait(wait)) => {
            state.metrics.rate_limited(Limiter::Login);
            AppError::TooManyRequests {
                retry_after_secs: wait,
            }
            .into_response()
        }
    }
}
