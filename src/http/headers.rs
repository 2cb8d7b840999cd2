//! Response security headers, the trusted-`Host` check, and turning framework-made errors
//! (fallback 404, 405, body-limit 413, timeouts) into problem documents.
//!
//! Invariant: every response, errors and 404s included, carries the headers of the contract;
//! every error response is `application/problem+json`.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::{AppError, PROBLEM_JSON, code_for_status, problem_response};

/// The CSP of API responses (content responses set their own sandboxing one).
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
const PERMISSIONS: &str = "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()";
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Paths load balancers probe by IP: exempt from the host check and rate limiting.
pub fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// Add the security headers to whatever the inner service answered.
pub async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert("permissions-policy", HeaderValue::from_static(PERMISSIONS));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(API_CSP));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if state.config.server.behind_tls_proxy {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    h.remove(header::SERVER);
    res
}

/// Refuse a `Host` outside `server.allowed_hosts` (compared without port, case-insensitively).
pub async fn trusted_hosts(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let allowed = &state.config.server.allowed_hosts;
    if allowed.is_empty() || is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    // HTTP/2 carries the host in :authority, which hyper exposes through the URI.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let ok = host.as_deref().map(strip_port).is_some_and(|h| {
        allowed.iter().any(|a| {
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(h)
        })
    });
    if ok {
        next.run(req).await
    } else {
        AppError::BadRequest("the Host header is not allowed".into()).into_response()
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(v6, _)| v6);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Give error responses that did not come from [`AppError`] a problem body, keeping their
/// meaningful headers (`Allow`, `Retry-After`, `WWW-Authenticate`, `Content-Range`).
pub async fn problem_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return res;
    }
    let (parts, _) = res.into_parts();
    let mut fresh = problem_response(
        status,
        code_for_status(status),
        default_detail(status).into(),
    );
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // Refused before the body was read: the connection cannot be reused.
        fresh
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().append(name, value.clone());
        }
    }
    fresh
}

fn default_detail(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "no such resource",
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this resource",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
        StatusCode::REQUEST_TIMEOUT => "the request took too long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported content type",
        StatusCode::TOO_MANY_REQUESTS => "too many requests",
        s if s.is_server_error() => "an internal error occurred",
        _ => "the request could not be processed",
    }
}

/// The response a caught panic becomes (the panic message itself goes to the log only).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = msg, "handler panicked");
    AppError::Internal(anyhow::anyhow!("panic")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }
}
