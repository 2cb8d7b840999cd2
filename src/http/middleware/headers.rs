//! Response security headers, the `Host` checks (RFC 9112 framing, then the trusted hosts), and
//! turning framework-made errors (fallback 404, 405, body-limit 413, timeouts) into problem
//! documents.
//!
//! Invariant: every response, errors and 404s included, carries the headers of the contract;
//! every error response is `application/problem+json`; no request with a missing (HTTP/1.1),
//! repeated or malformed `Host` reaches a route.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::{AppError, PROBLEM_JSON, code_for_status, problem_response};
use crate::state::AppState;

/// The CSP of API responses (content responses set their own sandboxing one).
pub(crate) const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
const PERMISSIONS: &str = "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()";
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Paths load balancers probe by IP: exempt from the host check and rate limiting.
pub(crate) fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// On a response that `serving.frame_ancestors` lets other origins frame (inline content,
/// whose own CSP names them in `frame-ancestors`): no `X-Frame-Options: DENY`, which would
/// forbid what the CSP allows in browsers that read only it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frameable;

/// Add the security headers to whatever the inner service answered.
pub(crate) async fn security_headers(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let mut res = next.run(req).await;
    set_security_headers(res.headers_mut(), state.config.https());
    if res.extensions().get::<Frameable>().is_some() {
        res.headers_mut().remove(header::X_FRAME_OPTIONS);
    }
    res
}

/// The security headers of the contract, on any response (also the HTTP/1 parser's own error
/// answers, see [`crate::http::parser_errors`]). A content response's own CSP and cache policy
/// are kept; `Server` is dropped.
pub(crate) fn set_security_headers(h: &mut HeaderMap, hsts: bool) {
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
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    h.remove(header::SERVER);
}

/// Refuse a request whose head breaks RFC 9112 (on every route, probes included): its `Host`
/// (§3.2) or its transfer coding (§6.1); then one naming a host outside
/// `server.allowed_hosts` (compared without port, case-insensitively; probes exempt).
pub(crate) async fn trusted_hosts(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(fault) = host_fault(req.version(), req.headers(), req.uri()) {
        return AppError::BadRequest(fault.into()).into_response();
    }
    if let Some(fault) = coding_fault(req.headers()) {
        return fault.into_response();
    }
    let allowed = &state.config.server.allowed_hosts;
    if allowed.is_empty() || is_probe(req.uri().path()) {
        return next.run(req).await;
    }
    // Every name the request gives must be allowed: the `Host` header and the target's
    // authority (absolute form, which RFC 9112 §3.2.2 says wins; HTTP/2's `:authority`, which
    // hyper puts there). A request that gives none is refused.
    let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    let names: Vec<&[u8]> = host.into_iter().chain(authority).collect();
    let is_allowed = |name: &[u8]| {
        std::str::from_utf8(name).map(strip_port).is_ok_and(|h| {
            allowed.iter().any(|a| {
                a.trim_start_matches('[')
                    .trim_end_matches(']')
                    .eq_ignore_ascii_case(h)
            })
        })
    };
    if !names.is_empty() && names.into_iter().all(is_allowed) {
        next.run(req).await
    } else {
        AppError::BadRequest("the Host header is not allowed".into()).into_response()
    }
}

/// What is wrong with a request's `Host`, by RFC 9112 §3.2: an HTTP/1.1 request needs exactly
/// one, any request at most one, and its value must be a valid `uri-host [":" port]`.
/// HTTP/1.0 predates `Host` and may omit it; HTTP/2 may carry the authority in `:authority`
/// instead (RFC 9113 §8.3.1).
fn host_fault(version: Version, headers: &HeaderMap, uri: &Uri) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some("a request may carry only one Host header");
    }
    match first {
        Some(v) if !valid_host(v.as_bytes()) => Some("the Host header is not a valid host"),
        Some(_) => None,
        None if version == Version::HTTP_11 => Some("an HTTP/1.1 request needs a Host header"),
        None if version == Version::HTTP_2 && uri.authority().is_none() => {
            Some("an HTTP/2 request needs an :authority or a Host header")
        }
        None => None,
    }
}

/// What is wrong with a request's `Transfer-Encoding` (RFC 9112 §6.1): hyper reads any list
/// that ends in `chunked` as chunked, but no other coding is decoded here, so one is 501
/// (rather than taking compressed bytes for the content), and `chunked` applied twice is 400.
fn coding_fault(headers: &HeaderMap) -> Option<AppError> {
    let mut chunked = 0;
    for coding in headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
    {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Some(AppError::NotImplemented(
                "no transfer coding but chunked is supported",
            ));
        }
        chunked += 1;
    }
    (chunked > 1).then(|| AppError::BadRequest("chunked may be applied only once".into()))
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2-3, as RFC 9110 §7.2 uses it), with a non-empty host
/// (RFC 9110 §4.2.1: an `http` URI never has an empty one) and no userinfo.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let (literal, after) = rest.split_at(end);
            let ok =
                std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
            if !ok {
                return false;
            }
            (&b"[]"[..], after.get(1..).unwrap_or_default())
        }
        None => match v.iter().rposition(|&b| b == b':') {
            Some(i) => (
                v.get(..i).unwrap_or_default(),
                v.get(i..).unwrap_or_default(),
            ),
            None => (v, &b""[..]),
        },
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    !host.is_empty() && (host == b"[]" || host.iter().all(reg_name)) && port_ok
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
pub(crate) async fn problem_errors(req: Request, next: Next) -> Response {
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
pub(crate) fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
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

    #[test]
    fn host_values_follow_rfc_3986() {
        for ok in [
            "example.com",
            "EXAMPLE.com:8443",
            "localhost:",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "a_b.example~%41",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "user@example.com",
            "example.com:80x",
            "example.com:123456",
            "exa mple.com",
            "example.com/path",
            "[::1",
            "[not-v6]:80",
            "[::1]x",
            "ex\u{e4}mple.com",
            "a:b:c",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn host_must_come_once_except_in_http_1_0_and_2() {
        let one = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.append(header::HOST, HeaderValue::from_static(v));
            h
        };
        let origin: Uri = "/healthz".parse().unwrap();
        let absolute: Uri = "http://example.com/healthz".parse().unwrap();
        let none = HeaderMap::new();
        let mut two = one("example.com");
        two.append(header::HOST, HeaderValue::from_static("example.com"));
        assert!(host_fault(Version::HTTP_11, &none, &origin).is_some());
        assert!(host_fault(Version::HTTP_11, &none, &absolute).is_some());
        assert!(host_fault(Version::HTTP_11, &one("example.com"), &origin).is_none());
        assert!(host_fault(Version::HTTP_11, &two, &origin).is_some());
        assert!(host_fault(Version::HTTP_10, &none, &origin).is_none());
        assert!(host_fault(Version::HTTP_10, &two, &origin).is_some());
        assert!(host_fault(Version::HTTP_10, &one("a@b"), &origin).is_some());
        assert!(host_fault(Version::HTTP_2, &none, &absolute).is_none());
        assert!(host_fault(Version::HTTP_2, &none, &origin).is_some());
        assert!(host_fault(Version::HTTP_2, &two, &absolute).is_some());
    }

    #[test]
    fn only_chunked_once_is_a_transfer_coding() {
        let codings = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            coding_fault(&h).map(|e| e.status().as_u16())
        };
        assert_eq!(codings(&[]), None);
        assert_eq!(codings(&["chunked"]), None);
        assert_eq!(codings(&["Chunked"]), None);
        assert_eq!(codings(&["gzip, chunked"]), Some(501));
        assert_eq!(codings(&["gzip", "chunked"]), Some(501));
        assert_eq!(codings(&["chunked, chunked"]), Some(400));
        assert_eq!(codings(&["chunked", "chunked"]), Some(400));
    }
}
