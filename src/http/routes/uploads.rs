//! Resumable uploads on the wire: tus 1.0.0 (creation, creation-with-upload, termination,
//! expiration, checksum) at `/api/v1/uploads`. Headers in, `resumable` calls, headers out.
//!
//! Invariant: every request but OPTIONS carries `Tus-Resumable: 1.0.0` (412 otherwise) and
//! the caller's credentials; an upload that is not the caller's is a 404 like a missing one;
//! every response carries `Tus-Resumable` ([`tus_headers`]).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::TryStreamExt as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::Uploader;
use crate::http::middleware::client_ip::ClientIp;
use crate::http::middleware::cors;
use crate::http::routes::files::file_retention;
use crate::ids::{FileId, Timestamp};
use crate::ingest::IngestError;
use crate::ingest::idle::IdleTimeout;
use crate::meta::resumable::Creator;
use crate::resumable::{Checksum, ChecksumAlgorithm, Creation, Patch, Progress, ResumableError};
use crate::state::AppState;

const TUS_VERSION: &str = "1.0.0";
const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// Where the routes live (the method override is honoured under it only).
pub(crate) const PREFIX: &str = "/api/v1/uploads";

/// The tus routes (streaming: no JSON limit, no request timeout).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_options, create_upload))
        .routes(routes!(upload_status, patch_upload, delete_upload))
        .layer(axum::middleware::from_fn(tus_headers))
}

/// `Tus-Resumable` on every response; `Tus-Version` with a 412.
async fn tus_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    if res.status() == StatusCode::PRECONDITION_FAILED {
        res.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    res
}

/// `X-HTTP-Method-Override` (for clients behind proxies that pass only GET and POST), honoured
/// on the tus routes only: applied before routing.
pub(crate) async fn method_override(mut req: Request, next: Next) -> Response {
    if req.method() == Method::POST && req.uri().path().starts_with(PREFIX) {
        let wanted = req
            .headers()
            .get("x-http-method-override")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| match v.trim().to_ascii_uppercase().as_str() {
                "PATCH" => Some(Method::PATCH),
                "DELETE" => Some(Method::DELETE),
                "HEAD" => Some(Method::HEAD),
                _ => None,
            });
        if let Some(m) = wanted {
            *req.method_mut() = m;
        }
    }
    next.run(req).await
}

impl From<ResumableError> for AppError {
    fn from(e: ResumableError) -> Self {
        match e {
            ResumableError::NotFound => Self::NotFound,
            ResumableError::OffsetMismatch { sent, offset } => Self::Conflict(
                format!("Upload-Offset {sent} is not the upload's offset {offset}").into(),
            ),
            ResumableError::PastLength => Self::PayloadTooLarge { limit: 0 },
            ResumableError::Locked => Self::Locked,
            ResumableError::ChecksumMismatch => Self::TusChecksumMismatch,
            ResumableError::TooManyPending => Self::TooManyPending,
            ResumableError::Ingest(i) => i.into(),
        }
    }
}

/// Whose uploads the caller may see: the owner's, through the same kind of credential
/// (an upload made with a grant answers only to that grant).
fn creator(uploader: &Uploader) -> Creator {
    Creator {
        owner: uploader.owner,
        grant: uploader.grant.as_ref().map(|g| g.id),
    }
}

fn require_tus(headers: &HeaderMap) -> AppResult<()> {
    match header_str(headers, "tus-resumable") {
        Some(v) if v.trim() == TUS_VERSION => Ok(()),
        _ => Err(AppError::TusVersion),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // Sent twice, a tus header has no one value: as if malformed.
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// A non-negative decimal integer, nothing else (no sign, no spaces inside, no exponent).
fn parse_count(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// `Upload-Length`: as [`parse_count`], but a number past `u64` is still a number, over every
/// limit (413, not 400).
fn parse_length(v: &str) -> Option<u64> {
    parse_count(v).or_else(|| {
        let v = v.trim();
        (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then_some(u64::MAX)
    })
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
/// Returns the decoded `filename` and `expires_in`.
fn parse_metadata(raw: &str) -> AppResult<(String, Option<String>)> {
    let bad = |why: &str| AppError::BadRequest(format!("Upload-Metadata: {why}").into());
    let (mut filename, mut expires_in) = (None, None);
    for pair in raw.split(',') {
        let mut parts = pair.trim().splitn(2, ' ');
        let key = parts.next().unwrap_or("");
        if key.is_empty() {
            return Err(bad("an empty key"));
        }
        let value = match parts.next().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(v) => STANDARD
                .decode(v)
                .map_err(|_| bad("a value that is not base64"))?,
        };
        match key {
            "filename" => {
                let v =
                    String::from_utf8(value).map_err(|_| bad("a filename that is not UTF-8"))?;
                filename = Some(v);
            }
            "expires_in" => {
                let v = String::from_utf8(value).map_err(|_| bad("expires_in is not UTF-8"))?;
                expires_in = Some(v);
            }
            _ => {}
        }
    }
    let filename = filename
        .filter(|f| !f.is_empty())
        .ok_or_else(|| bad("filename is required"))?;
    Ok((filename, expires_in))
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
fn parse_checksum(headers: &HeaderMap) -> AppResult<Option<Checksum>> {
    let malformed = || AppError::BadRequest("malformed Upload-Checksum".into());
    if headers.get_all("upload-checksum").iter().nth(1).is_some() {
        return Err(malformed());
    }
    let Some(v) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| malformed())?;
    let (algo, digest) = v.trim().split_once(' ').ok_or_else(malformed)?;
    let algorithm = match algo.to_ascii_lowercase().as_str() {
        "sha1" => ChecksumAlgorithm::Sha1,
        "sha256" => ChecksumAlgorithm::Sha256,
        _ => {
            return Err(AppError::BadRequest(
                "Upload-Checksum: unsupported algorithm (sha1, sha256)".into(),
            ));
        }
    };
    let digest = STANDARD
        .decode(digest.trim())
        .map_err(|_| AppError::BadRequest("Upload-Checksum: the digest is not base64".into()))?;
    Ok(Some(Checksum { algorithm, digest }))
}

fn http_date(t: Timestamp) -> String {
    let secs = u64::try_from(t.unix_secs()).unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

fn set(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// Whether the request carries an upload body (creation-with-upload).
fn has_body(headers: &HeaderMap) -> bool {
    let typed = header_str(headers, "content-type")
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(OFFSET_STREAM));
    let empty = header_str(headers, "content-length").and_then(parse_count) == Some(0);
    typed && !empty
}

fn body_stream(
    state: &AppState,
    body: Body,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, IngestError>> + Send + Unpin + 'static {
    let idle = Duration::from_secs(state.config.limits.upload_idle_timeout_secs);
    IdleTimeout::new(body.into_data_stream(), idle).map_err(IngestError::from)
}

/// The server's tus capabilities. Needs no credentials.
#[utoipa::path(options, path = "/api/v1/uploads", tag = "uploads",
    responses((status = 204, description = "tus 1.0.0 with creation, creation-with-upload, termination, expiration and checksum",
        headers(("Tus-Version" = String), ("Tus-Extension" = String), ("Tus-Max-Size" = u64),
            ("Tus-Checksum-Algorithm" = String)))))]
async fn upload_options(State(state): State<AppState>) -> Response {
    capabilities(&state)
}

/// The OPTIONS answer. The CORS layer takes every OPTIONS request for a preflight, so a plain
/// one (without `Access-Control-Request-Method`) to the tus root is answered here, in front
/// of it ([`options_before_cors`]).
fn capabilities(state: &AppState) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    set(h, "tus-version", TUS_VERSION.into());
    set(
        h,
        "tus-extension",
        "creation,creation-with-upload,termination,expiration,checksum".into(),
    );
    set(
        h,
        "tus-max-size",
        state.config.limits.max_upload_bytes.to_string(),
    );
    set(h, "tus-checksum-algorithm", "sha1,sha256".into());
    set(h, "tus-resumable", TUS_VERSION.into());
    res
}

/// Answer a plain OPTIONS to the tus root before the CORS layer would take it for a
/// preflight, with the CORS headers of a plain request (so a page on an allowed origin reads
/// the capabilities); real preflights (and everything else) pass on.
pub(crate) async fn options_before_cors(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == Method::OPTIONS
        && req.uri().path() == PREFIX
        && !req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut res = capabilities(&state);
        cors::plain_options(
            &state.config.cors,
            req.headers().get(header::ORIGIN),
            &mut res,
        );
        return res;
    }
    next.run(req).await
}

/// Create a resumable upload (tus creation; with an `application/offset+octet-stream` body
/// also its first PATCH). `Upload-Length: 0` stores the empty file at once.
#[utoipa::path(post, path = "/api/v1/uploads", tag = "uploads",
    params(
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Length" = u64, Header, description = "The file's length in bytes"),
        ("Upload-Metadata" = String, Header, description = "`filename` (required) and optionally `expires_in`, base64 values as tus says"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "Optional: the first bytes"),
    responses(
        (status = 201, description = "Created", headers(("Location" = String), ("Upload-Offset" = u64), ("Upload-Expires" = String), ("Coffer-File-Id" = String, description = "When the upload is complete"))),
        (status = 400, description = "Missing or malformed Upload-Length or Upload-Metadata", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "Tus-Resumable missing or not 1.0.0", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Longer than `limits.max_upload_bytes`, or over quota", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Extension not allowed", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many unfinished uploads", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []), ("upload_grant" = []), ("upload_grant_query" = [])))]
async fn create_upload(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    uploader: Uploader,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    require_tus(&headers)?;
    uploader.require_start()?;
    let length = header_str(&headers, "upload-length")
        .and_then(parse_length)
        .ok_or_else(|| {
            AppError::BadRequest("Upload-Length must be a non-negative integer".into())
        })?;
    let metadata = header_str(&headers, "upload-metadata")
        .ok_or_else(|| AppError::BadRequest("Upload-Metadata with a filename is required".into()))?
        .to_owned();
    let (filename, expires_in) = parse_metadata(&metadata)?;
    let file_expires_at = file_retention(&state, &uploader, expires_in.as_deref())?;
    let creation = Creation {
        owner: uploader.owner,
        client_ip: ip,
        length,
        metadata,
        filename,
        file_expires_at,
        grant: uploader.grant.clone(),
    };
    // Before the upload exists: a bad header then leaves nothing behind.
    let checksum = parse_checksum(&headers)?;
    let (id, mut progress) = state.resumable.create(creation).await?;
    // Until the answer is made, the client does not know this upload's URL: should it go away
    // mid-body (this future dropped), the upload is ended rather than left holding quota, a
    // pending slot and a grant's use until it expires.
    let mut unannounced = Unannounced {
        state: state.clone(),
        id,
        creator: creator(&uploader),
        armed: true,
    };
    if matches!(progress, Progress::Pending { .. }) && has_body(&headers) {
        let patch = Patch {
            id,
            owner: uploader.owner,
            grant: uploader.grant.clone(),
            client_ip: ip,
            offset: 0,
            length_hint: header_str(&headers, "content-length").and_then(parse_count),
            checksum,
            keep_broken_off: false,
        };
        match state
            .resumable
            .patch(patch, body_stream(&state, body))
            .await
        {
            Ok(p) => progress = p,
            Err(e) => {
                unannounced.end().await;
                return Err(e.into());
            }
        }
    }
    unannounced.armed = false;
    let mut res = StatusCode::CREATED.into_response();
    set(res.headers_mut(), "location", format!("{PREFIX}/{id}"));
    progress_headers(res.headers_mut(), &progress);
    Ok(res)
}

/// An upload whose creation has not been answered yet: ended if the creation fails, or if its
/// request goes away before the answer (then in a task of its own).
struct Unannounced {
    state: AppState,
    id: FileId,
    creator: Creator,
    armed: bool,
}

impl Unannounced {
    async fn end(mut self) {
        self.armed = false;
        let _ = self.state.resumable.terminate(self.id, self.creator).await;
    }
}

impl Drop for Unannounced {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (state, id, creator) = (self.state.clone(), self.id, self.creator);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = state.resumable.terminate(id, creator).await;
            });
        }
    }
}

fn progress_headers(h: &mut HeaderMap, p: &Progress) {
    match p {
        Progress::Pending { offset, expires_at } => {
            set(h, "upload-offset", offset.to_string());
            set(h, "upload-expires", http_date(*expires_at));
        }
        Progress::Committed(file, length) => {
            set(h, "upload-offset", length.to_string());
            // The upload's URL answers 404 from now on: it expires as it finishes.
            set(h, "upload-expires", http_date(Timestamp::now()));
            set(h, "coffer-file-id", file.id.to_string());
        }
    }
}

/// An upload's offset (only bytes that are durable), length, metadata and expiry.
#[utoipa::path(head, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, description = "The upload (and future file) id"),
        ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses(
        (status = 200, description = "Unfinished, or every byte durable and the file stored now (the last PATCH's node died committing it)", headers(("Upload-Offset" = u64), ("Upload-Length" = u64), ("Upload-Metadata" = String), ("Upload-Expires" = String), ("Coffer-File-Id" = String, description = "When the file was stored by this request"))),
        (status = 404, description = "Unknown, someone else's, finished, expired or terminated"),
        (status = 423, description = "Every byte durable, the file being stored by another request; ask again"),
        (status = 412, description = "Tus-Resumable missing or not 1.0.0"),
    ),
    security(("bearer" = []), ("api_key" = []), ("upload_grant" = []), ("upload_grant_query" = [])))]
async fn upload_status(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    uploader: Uploader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> AppResult<Response> {
    require_tus(&headers)?;
    let id = FileId::parse(&id).ok_or(AppError::NotFound)?;
    let up = state.resumable.get(id, creator(&uploader)).await?;
    let mut res = StatusCode::OK.into_response();
    if up.offset == up.length {
        // Every byte is durable but the file is not stored: the last PATCH's node died while
        // committing it. A client takes this offset for a finished upload and never PATCHes
        // again, so the commit is made now (an empty PATCH of the server's own); while the
        // dead PATCH's lock lasts (seconds), 423 tells the client to ask again.
        let finish = Patch {
            id,
            owner: uploader.owner,
            grant: uploader.grant.clone(),
            client_ip: ip,
            offset: up.length,
            length_hint: Some(0),
            checksum: None,
            keep_broken_off: true,
        };
        let progress = state
            .resumable
            .patch(finish, body_stream(&state, Body::empty()))
            .await?;
        progress_headers(res.headers_mut(), &progress);
    }
    let h = res.headers_mut();
    set(h, "upload-offset", up.offset.to_string());
    set(h, "upload-length", up.length.to_string());
    if !up.metadata.is_empty() {
        set(h, "upload-metadata", up.metadata.clone());
    }
    set(h, "upload-expires", http_date(up.expires_at));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Append bytes at `Upload-Offset`. The PATCH that reaches `Upload-Length` stores the file
/// exactly as `POST /api/v1/files` would and answers `Coffer-File-Id`.
#[utoipa::path(patch, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, description = "The upload (and future file) id"),
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1` or `sha256`, a space, the base64 digest of this body")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Stored durably", headers(("Upload-Offset" = u64), ("Upload-Expires" = String), ("Coffer-File-Id" = String, description = "On the PATCH that completes the upload"))),
        (status = 400, description = "Upload-Offset missing or malformed; unknown checksum algorithm", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown, someone else's, expired or terminated", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Upload-Offset is not the upload's offset", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "Tus-Resumable missing or not 1.0.0", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body would pass Upload-Length", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Wrong Content-Type, or the first bytes do not match the extension (the upload is terminated)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 423, description = "Another PATCH is writing to this upload", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 460, description = "The body does not match Upload-Checksum; none of it was kept", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []), ("upload_grant" = []), ("upload_grant_query" = [])))]
async fn patch_upload(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    uploader: Uploader,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    require_tus(&headers)?;
    let id = FileId::parse(&id).ok_or(AppError::NotFound)?;
    if !header_str(&headers, "content-type")
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(OFFSET_STREAM))
    {
        return Err(AppError::UnsupportedMediaType(
            "a PATCH body is application/offset+octet-stream".into(),
        ));
    }
    let offset = header_str(&headers, "upload-offset")
        .and_then(parse_count)
        .ok_or_else(|| {
            AppError::BadRequest("Upload-Offset must be a non-negative integer".into())
        })?;
    let patch = Patch {
        id,
        owner: uploader.owner,
        grant: uploader.grant,
        client_ip: ip,
        offset,
        length_hint: header_str(&headers, "content-length").and_then(parse_count),
        checksum: parse_checksum(&headers)?,
        keep_broken_off: true,
    };
    let progress = state
        .resumable
        .patch(patch, body_stream(&state, body))
        .await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    progress_headers(res.headers_mut(), &progress);
    Ok(res)
}

/// Terminate an upload: its bytes and its quota reservation are released.
#[utoipa::path(delete, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, description = "The upload id"),
        ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses(
        (status = 204, description = "Terminated"),
        (status = 404, description = "Unknown, someone else's, finished, expired or terminated", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "Tus-Resumable missing or not 1.0.0", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []), ("upload_grant" = []), ("upload_grant_query" = [])))]
async fn delete_upload(
    State(state): State<AppState>,
    uploader: Uploader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> AppResult<StatusCode> {
    require_tus(&headers)?;
    let id = FileId::parse(&id).ok_or(AppError::NotFound)?;
    state.resumable.terminate(id, creator(&uploader)).await?;
    Ok(StatusCode::NO_CONTENT)
}
