//! Serving file content: the one responder behind both `/files/{id}/content` and share links.
//!
//! Invariant: bytes are streamed from the blob store with constant memory; sealed blobs are
//! decrypted segment by segment and a segment that fails authentication is never served.
//! Before the first byte that failure is a 500 `integrity-error`; after it, the connection is
//! aborted. Either way a `file.integrity_error` audit entry is written.

use std::net::IpAddr;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::audit::{Event, Record};
use crate::crypto::read::{self, PlainStream, ReadError};
use crate::download::{self, Disposition, Plan};
use crate::http::error::AppError;
use crate::http::middleware::headers::Frameable;
use crate::meta::files::StoredFile;
use crate::state::AppState;

/// What every content CSP starts with: nothing may load, and the document is sandboxed (no
/// scripts, no same-origin access) even if a browser decides to render it.
const SANDBOX: &str = "default-src 'none'; sandbox";

/// The CSP of file content that nothing may frame (all of it but inline content with
/// `serving.frame_ancestors` set): [`SANDBOX`] and `frame-ancestors 'none'`.
pub(crate) const CONTENT_CSP: &str = "default-src 'none'; sandbox; frame-ancestors 'none'";

/// The CSP of inline content that `serving.frame_ancestors` lets those origins frame (see
/// `frameable_csp`); `None` when nothing may frame it (the plain [`CONTENT_CSP`] and
/// `X-Frame-Options: DENY` then apply).
fn frame_policy(state: &AppState, kind: Disposition) -> Option<Result<HeaderValue, AppError>> {
    let origins = &state.config.serving.frame_ancestors;
    (kind == Disposition::Inline && !origins.is_empty())
        .then(|| header_value(&frameable_csp(origins)))
}

/// The content CSP (`default-src 'none'`: nothing loads; `sandbox`: no script runs) with
/// `frame-ancestors` the configured origins (validated at load to hold only origin
/// characters). PDFs keep `sandbox` too: Chromium's viewer renders a sandboxed PDF in a
/// frame (checked by the browser test, tests/browser/view_urls.mjs).
fn frameable_csp(origins: &[String]) -> String {
    format!("{SANDBOX}; frame-ancestors {}", origins.join(" "))
}

/// `?disposition=` (absent = attachment; unknown = 400; inline only for safe types).
pub(crate) fn disposition(
    query: Option<&str>,
    content_type: &str,
) -> Result<Disposition, AppError> {
    match query {
        None | Some("attachment") => Ok(Disposition::Attachment),
        Some("inline") if download::inline_safe(content_type) => Ok(Disposition::Inline),
        Some("inline") => Ok(Disposition::Attachment),
        Some(_) => Err(AppError::BadRequest(
            "disposition must be attachment or inline".into(),
        )),
    }
}

/// What the responder decided (callers count link downloads on `Full` and `Partial` GETs).
pub(crate) struct Served {
    pub(crate) response: Response,
    /// The plan it followed.
    pub(crate) plan: Plan,
}

/// What a content request asks for.
pub(crate) struct ContentRequest<'a> {
    /// GET or HEAD.
    pub(crate) method: &'a Method,
    /// Its headers (conditionals, `Range`).
    pub(crate) headers: &'a HeaderMap,
    /// `attachment` or `inline`.
    pub(crate) disposition: Disposition,
    /// For the audit trail.
    pub(crate) client_ip: IpAddr,
}

/// Largest file whose bytes are read together with its row (one blocking hop, not two).
pub(crate) const PREFETCH_MAX: u64 = 64 * 1024;

/// Stream the bytes of `f` the way the request asks. `prefetched` is the whole plaintext when
/// the caller already read it ([`read::prefetch_small`]).
pub(crate) async fn respond(
    state: &AppState,
    f: &StoredFile,
    req: &ContentRequest<'_>,
    prefetched: Option<Bytes>,
) -> Result<Served, AppError> {
    let len = f.file.size;
    let etag = download::etag(&f.file.sha256);
    let plan = download::plan(req.method, req.headers, len, &etag, f.file.created_at);
    let (mut headers, framed) = representation_headers(state, f, &etag, req.disposition)?;
    let (status, (start, end)) = match plan {
        Plan::NotModified => {
            let mut res = StatusCode::NOT_MODIFIED.into_response();
            res.headers_mut().extend(headers);
            if framed {
                res.extensions_mut().insert(Frameable);
            }
            return Ok(Served {
                response: res,
                plan,
            });
        }
        Plan::Unsatisfiable => return Err(AppError::RangeNotSatisfiable { size: len }),
        Plan::PreconditionFailed => return Err(AppError::PreconditionFailed),
        Plan::Full => (StatusCode::OK, plan.span(len)),
        Plan::Partial { start, end } => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{len}"))?,
            );
            (StatusCode::PARTIAL_CONTENT, plan.span(len))
        }
    };
    headers.insert(header::CONTENT_TYPE, header_value(&f.file.content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));

    let body = if *req.method == Method::HEAD || start == end {
        Body::empty()
    } else if let Some(all) = prefetched.filter(|b| b.len() as u64 == len) {
        Body::from(
            all.slice(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0)),
        )
    } else {
        stream_range(state, f, start, end, req.client_ip).await?
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().extend(headers);
    if framed {
        res.extensions_mut().insert(Frameable);
    }
    Ok(Served {
        response: res,
        plan,
    })
}

/// The headers of every answer about `f`, a 304 included: validators, caching, and the
/// headers that keep a browser from running it; and whether other origins may frame it.
fn representation_headers(
    state: &AppState,
    f: &StoredFile,
    etag: &str,
    kind: Disposition,
) -> Result<(HeaderMap, bool), AppError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(etag)?);
    headers.insert(
        header::LAST_MODIFIED,
        header_value(&f.file.created_at.to_http_date())?,
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CACHE_CONTROL,
        header_value(&state.config.downloads.cache_control)?,
    );
    let framed = match frame_policy(state, kind) {
        Some(csp) => {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp?);
            true
        }
        None => {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_CSP),
            );
            false
        }
    };
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        download::content_disposition(kind, &f.file.filename),
    );
    Ok((headers, framed))
}

fn header_value(s: &str) -> Result<HeaderValue, AppError> {
    HeaderValue::from_str(s).map_err(|e| AppError::Internal(e.into()))
}

/// Bytes `[start, end)` of `f` (non-empty) as a streamed body. The first chunk is read before
/// answering, so a blob that fails authentication at its start gets a clean error instead of
/// a 200 that breaks off; a later failure aborts the connection.
async fn stream_range(
    state: &AppState,
    f: &StoredFile,
    start: u64,
    end: u64,
    client_ip: IpAddr,
) -> Result<Body, AppError> {
    let failed = |e: ReadError| {
        match e {
            ReadError::Tampered => integrity_failure(state, f, client_ip),
            // The row exists, so a missing blob is our fault, not a 404 for the client.
            ReadError::Blob(crate::blob::BlobError::NotFound) => {
                let why = format!("blob {} of file {} is missing", f.blob_key, f.file.id);
                return AppError::Internal(anyhow::anyhow!(why));
            }
            _ => {}
        }
        AppError::from(e)
    };
    let mut stream = open(state, f, start, end).await.map_err(failed)?;
    let first = match stream.next().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return Err(failed(e)),
        // A non-empty range that yields nothing was cut short.
        None => return Err(failed(ReadError::Tampered)),
    };
    let (audit_state, file, ip) = (state.clone(), f.clone(), client_ip);
    let rest = stream.map_err(move |e| {
        if matches!(e, ReadError::Tampered) {
            integrity_failure(&audit_state, &file, ip);
        }
        // An error mid-body makes hyper abort the connection: the client sees a
        // truncated transfer, never wrong bytes.
        std::io::Error::other(e)
    });
    Ok(Body::from_stream(
        futures_util::stream::once(async move { Ok(first) }).chain(rest),
    ))
}

fn integrity_failure(state: &AppState, f: &StoredFile, ip: IpAddr) {
    tracing::error!(file.id = %f.file.id, "stored blob failed its integrity check");
    state.audit.record(
        Record::new(Event::FileIntegrityError)
            .subject(f.file.id)
            .ip(ip)
            .detail(serde_json::json!({ "owner": f.owner_id, "blob": f.blob_key })),
    );
}

/// Plaintext bytes `[start, end)` of a file, decrypting when its blob is sealed.
pub(crate) async fn open(
    state: &AppState,
    f: &StoredFile,
    start: u64,
    end: u64,
) -> Result<PlainStream, ReadError> {
    read::read(&state.blobs, &state.keyring, &f.source(), start, end).await
}
