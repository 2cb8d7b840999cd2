//! `X-Request-Id`: echo a client's id when it is short and plain, otherwise make one; put it
//! on the response and in scope for error bodies and logs.
//!
//! Invariant: the id that reaches logs and responses is at most 64 characters of
//! `[A-Za-z0-9._-]`, so a client cannot inject log lines or header content through it.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::http::error::REQUEST_ID;

/// The header name.
pub(crate) const X_REQUEST_ID: &str = "x-request-id";

/// Whether a client-supplied id can be echoed.
pub(crate) fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A new id: 64 random bits drawn once per process, then a counter. Unique, cheap (no system
/// call per request) and not a secret, so it need not be unpredictable.
pub(crate) fn fresh_id() -> HeaderValue {
    static PREFIX: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| u64::from_le_bytes(crate::secrets::random_bytes::<8>()));
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:016x}{n:016x}", *PREFIX))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The request id, as the trace span and handlers see it.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub HeaderValue);

/// Middleware: settle the id, then run the request inside its scope.
pub(crate) async fn layer(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(X_REQUEST_ID) {
        Some(v) if acceptable(v) => v.clone(),
        _ => fresh_id(),
    };
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    res.headers_mut().insert(X_REQUEST_ID, id);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_echoed() {
        assert!(acceptable(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!acceptable(&HeaderValue::from_static("")));
        assert!(!acceptable(&HeaderValue::from_static("a b")));
        assert!(!acceptable(
            &HeaderValue::from_str(&"a".repeat(65)).unwrap()
        ));
        assert!(!acceptable(&HeaderValue::from_static("x\"y")));
    }
}
