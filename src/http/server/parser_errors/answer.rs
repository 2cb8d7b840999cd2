//! The answer that goes out instead of hyper's bare one: like every other error of the service,
//! with the security headers, a fresh request id and a problem+json body.
//!
//! Invariant: only a bare 4xx or 5xx head (no `X-Request-Id`: nothing of the service's) is
//! replaced; anything else is left as it is.

use std::io::IoSlice;
use std::net::IpAddr;
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use memchr::memmem;

use super::framing::status_line;
use crate::http::error::{PROBLEM_JSON, problem_body};
use crate::http::middleware::headers;
use crate::http::middleware::request_id::{X_REQUEST_ID, fresh_id};

/// The complete answer to put in place of hyper's bare one, which starts `bufs`; `None`
/// when `bufs` does not start with a bare error head (then nothing is replaced).
pub(super) fn replacement(bufs: &[IoSlice<'_>], hsts: bool, peer: IpAddr) -> Option<Vec<u8>> {
    let mut start = Vec::with_capacity(256);
    for b in bufs {
        start.extend_from_slice(b.get(..b.len().min(1024 - start.len())).unwrap_or_default());
    }
    let line_end = memmem::find(&start, b"\r\n")?;
    let (version, status) = status_line(start.get(..line_end)?)?;
    let status = StatusCode::from_u16(status).ok()?;
    // Anything but hyper's bare error head: leave it alone.
    let ours = memmem::find(&start.to_ascii_lowercase(), b"\r\nx-request-id:").is_some();
    if !(status.is_client_error() || status.is_server_error()) || ours {
        return None;
    }
    let id = fresh_id();
    tracing::info!(
        status = status.as_u16(),
        request_id = id.to_str().unwrap_or("-"),
        client.ip = %peer,
        "refused a request the HTTP/1 parser could not read"
    );
    Some(answer(version, status, id, hsts))
}

/// The whole answer for a refused request: like every other error of the service, with the
/// security headers, a request id and a problem body.
fn answer(version: &[u8], status: StatusCode, id: HeaderValue, hsts: bool) -> Vec<u8> {
    let detail = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request's header section is too large",
        StatusCode::URI_TOO_LONG => "the request target is too long",
        _ => "the request is not valid HTTP/1.1",
    };
    let body = problem_body(status, detail, id.to_str().unwrap_or("-"));
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    // The request's framing is lost: hyper closes the connection after it, and says so.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        h.insert(header::DATE, date);
    }
    h.insert(X_REQUEST_ID, id);
    headers::set_security_headers(&mut h, hsts);
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(version);
    out.extend_from_slice(format!(" {} {reason}\r\n", status.as_str()).as_bytes());
    for (name, value) in &h {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}
