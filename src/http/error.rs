//! The one error type every handler returns, its RFC 9457 `application/problem+json` body,
//! and every conversion into it from the errors of the domain and the stores (the end of the
//! file), so the answer to each failure is decided in one place.
//!
//! Invariant: what reaches the client is a stable `type`, a fixed `title`, a detail written for
//! clients, and the request id. Causes of internal errors go to the log, never into a body.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

tokio::task_local! {
    /// The current request's id, so an error body can carry it (set by the request-id layer).
    pub(crate) static REQUEST_ID: HeaderValue;
}

/// The media type of every error body.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid input field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct FieldError {
    /// The request's name for the field.
    pub(crate) field: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

impl FieldError {
    /// A field error.
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// A stable URI naming the kind of problem; its last segment is a short code.
    #[serde(rename = "type")]
    #[schema(example = "urn:coffer:problem:not-found")]
    pub(crate) kind: String,
    /// A fixed summary of the kind.
    pub(crate) title: &'static str,
    /// The HTTP status.
    pub(crate) status: u16,
    /// What happened, for humans.
    pub(crate) detail: String,
    /// Field errors, on validation failures only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) errors: Option<Vec<FieldError>>,
    /// The `X-Request-Id` of the request, to quote in support requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<String>,
}

/// Everything a request can fail with, named by what the client should do about it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// Malformed input that is not a field validation failure.
    #[error("bad request: {0}")]
    BadRequest(Cow<'static, str>),
    /// Missing, malformed, expired, revoked or wrong-type credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Authenticated but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// No such resource, or not the caller's.
    #[error("not found")]
    NotFound,
    /// A uniqueness or invariant conflict.
    #[error("conflict: {0}")]
    Conflict(Cow<'static, str>),
    /// A share link that expired or was used up.
    #[error("gone: {0}")]
    Gone(&'static str),
    /// The body is larger than allowed.
    #[error("payload too large (limit {limit} bytes)")]
    PayloadTooLarge {
        /// The limit that was passed.
        limit: u64,
    },
    /// The owner's quota would be exceeded.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// Wrong content type for the route, or an upload whose type is not allowed.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(Cow<'static, str>),
    /// An image or PDF that is also an archive or carries markup (API.md "Polyglots").
    #[error("polyglot: {0}")]
    Polyglot(String),
    /// The virus scanner found a signature in an upload; its name.
    #[error("infected: {0}")]
    Infected(String),
    /// An upload made with a grant that names its sha256 hashed to something else.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// The virus scanner gave no verdict (unreachable, erroring, too slow): nothing stored.
    #[error("the virus scanner is unavailable")]
    ScannerUnavailable,
    /// The request uses an HTTP feature the server does not implement (501), e.g. a transfer
    /// coding other than `chunked`.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// `If-Match` or `If-Unmodified-Since` does not hold for the file (412).
    #[error("precondition failed")]
    PreconditionFailed,
    /// A `Range` no byte of the file satisfies.
    #[error("range not satisfiable (size {size})")]
    RangeNotSatisfiable {
        /// The representation's length, for `Content-Range: bytes */size`.
        size: u64,
    },
    /// Field validation failures.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// The client stopped sending the body.
    #[error("request timeout")]
    RequestTimeout,
    /// Rate limited.
    #[error("too many requests")]
    TooManyRequests {
        /// Whole seconds until a retry can succeed (>= 1).
        retry_after_secs: u64,
    },
    /// The storage volume is full.
    #[error("insufficient storage")]
    InsufficientStorage,
    /// A tus request without `Tus-Resumable: 1.0.0` (412).
    #[error("unsupported tus version")]
    TusVersion,
    /// Another request is writing to this resumable upload (423).
    #[error("locked")]
    Locked,
    /// A tus body does not match its `Upload-Checksum` (460).
    #[error("checksum mismatch")]
    TusChecksumMismatch,
    /// Too many unfinished resumable uploads (429, not a rate: no `Retry-After`).
    #[error("too many pending uploads")]
    TooManyPending,
    /// A dependency (database, storage) is not usable right now.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// A stored blob failed authentication or its hash: never serve its bytes.
    #[error("integrity error")]
    Integrity,
    /// A bug or an unexpected fault; the cause is logged, never sent.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The one answer to a credential that is missing a piece, malformed, unknown, expired or
/// revoked, whatever the cause.
pub(crate) const BAD_CREDENTIALS: &str = "missing, invalid or expired credentials";

/// The one answer to an upload grant that is unknown, revoked, expired or used up.
pub(crate) const BAD_GRANT: &str = "the upload grant is unknown, revoked, expired or used up";

/// Shorthand for handler results.
pub(crate) type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// A validation failure on one field.
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::PayloadTooLarge { .. } | Self::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) | Self::Polyglot(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Infected(_) | Self::ChecksumMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ScannerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Self::TusVersion => StatusCode::PRECONDITION_FAILED,
            Self::Locked => StatusCode::LOCKED,
            Self::TusChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::TooManyPending => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Integrity | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code at the end of the problem `type`.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::QuotaExceeded => "quota-exceeded",
            Self::Polyglot(_) => "polyglot",
            Self::Infected(_) => "infected",
            Self::ChecksumMismatch | Self::TusChecksumMismatch => "checksum-mismatch",
            Self::Validation(_) => "validation-failed",
            Self::TooManyRequests { .. } => "rate-limited",
            Self::TooManyPending => "too-many-pending-uploads",
            Self::Integrity => "integrity-error",
            Self::Internal(_) => "internal-error",
            other => code_for_status(other.status()),
        }
    }

    fn detail(&self) -> Cow<'static, str> {
        match self {
            Self::BadRequest(d) | Self::Conflict(d) | Self::UnsupportedMediaType(d) => d.clone(),
            Self::Unauthorized(d)
            | Self::Forbidden(d)
            | Self::Gone(d)
            | Self::Unavailable(d)
            | Self::NotImplemented(d) => Cow::Borrowed(d),
            Self::NotFound => "no such resource".into(),
            Self::Polyglot(why) => format!("{why}; refused as a polyglot").into(),
            Self::Infected(signature) => {
                format!("the virus scanner found {signature}; nothing was stored").into()
            }
            Self::ScannerUnavailable => {
                "the virus scanner did not answer; nothing was stored, retry later".into()
            }
            Self::ChecksumMismatch => {
                "the upload does not hash to the grant's sha256; nothing was stored".into()
            }
            Self::PayloadTooLarge { limit: 0 } => "the body is too large".into(),
            Self::PayloadTooLarge { limit } => {
                format!("the body exceeds the limit of {limit} bytes").into()
            }
            Self::QuotaExceeded => "this upload would exceed your storage quota".into(),
            Self::RangeNotSatisfiable { .. } => {
                "no part of the file lies in the requested range".into()
            }
            Self::PreconditionFailed => {
                "the file does not match If-Match or was modified after If-Unmodified-Since".into()
            }
            Self::Validation(_) => "the request has invalid fields".into(),
            Self::RequestTimeout => "the request body stalled and was abandoned".into(),
            Self::TooManyRequests { retry_after_secs } => {
                format!("too many requests; retry in {retry_after_secs} s").into()
            }
            Self::InsufficientStorage => "the storage volume is full".into(),
            Self::TusVersion => "send Tus-Resumable: 1.0.0 (the version this server speaks)".into(),
            Self::Locked => "another request is writing to this upload; retry later".into(),
            Self::TusChecksumMismatch => {
                "the body does not match Upload-Checksum; none of its bytes were kept".into()
            }
            Self::TooManyPending => {
                "too many unfinished uploads; finish or delete one first".into()
            }
            Self::Integrity => {
                "the stored file failed its integrity check and cannot be served".into()
            }
            Self::Internal(_) => "an internal error occurred".into(),
        }
    }
}

/// The problem code for a bare status (framework-made errors use this too).
pub(crate) fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        408 => "request-timeout",
        409 => "conflict",
        410 => "gone",
        411 => "length-required",
        412 => "precondition-failed",
        413 => "payload-too-large",
        414 => "uri-too-long",
        415 => "unsupported-media-type",
        416 => "range-not-satisfiable",
        422 => "validation-failed",
        423 => "locked",
        429 => "rate-limited",
        431 => "request-header-fields-too-large",
        501 => "not-implemented",
        503 => "service-unavailable",
        507 => "insufficient-storage",
        s if s >= 500 => "internal-error",
        _ => "bad-request",
    }
}

/// A problem response for a status with no richer error behind it (fallback 404, 405, layer
/// rejections). Keeps the caller's headers out: it is a fresh response.
pub(crate) fn problem_response(status: StatusCode, code: &'static str, detail: String) -> Response {
    render(bare_problem(status, code, detail, current_request_id()))
}

/// The body of a problem for a bare status, for answers written below the router (where no
/// request id is in scope, so it is passed).
pub(crate) fn problem_body(status: StatusCode, detail: &str, request_id: &str) -> Vec<u8> {
    let problem = bare_problem(
        status,
        code_for_status(status),
        detail.to_owned(),
        Some(request_id.to_owned()),
    );
    serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec())
}

fn bare_problem(
    status: StatusCode,
    code: &'static str,
    detail: String,
    request_id: Option<String>,
) -> Problem {
    Problem {
        kind: format!("urn:coffer:problem:{code}"),
        title: title(status),
        status: status.as_u16(),
        detail,
        errors: None,
        request_id,
    }
}

/// The status's reason phrase; tus's 460 has none in `http`.
fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        460 => "Checksum Mismatch",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

fn current_request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

fn render(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let mut res = render(Problem {
            kind: format!("urn:coffer:problem:{}", self.code()),
            title: title(status),
            status: status.as_u16(),
            detail: self.detail().into_owned(),
            errors: match self {
                Self::Validation(ref e) => Some(e.clone()),
                _ => None,
            },
            request_id: current_request_id(),
        });
        let headers = res.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // clamd restarting (loading its database) takes seconds, not one.
            Self::ScannerUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            // The body was (or may be) left unread: tell the client not to reuse the
            // connection, rather than letting it race the close.
            Self::PayloadTooLarge { .. } | Self::QuotaExceeded => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            // 460 is tus's own: without a phrase, hyper's status line would read `<none>`.
            Self::TusChecksumMismatch => {
                res.extensions_mut()
                    .insert(hyper::ext::ReasonPhrase::from_static(b"Checksum Mismatch"));
            }
            _ => {}
        }
        res
    }
}

impl From<crate::meta::MetaError> for AppError {
    fn from(e: crate::meta::MetaError) -> Self {
        match e {
            crate::meta::MetaError::Full => Self::InsufficientStorage,
            crate::meta::MetaError::Busy => {
                Self::Unavailable("the database is busy; retry shortly")
            }
            crate::meta::MetaError::Unavailable(why) => {
                // The cause (which host, which error) is for the log only.
                tracing::warn!(error = %why, "the database is unavailable");
                Self::Unavailable("the database is unavailable; retry shortly")
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<crate::blob::BlobError> for AppError {
    fn from(e: crate::blob::BlobError) -> Self {
        match e {
            crate::blob::BlobError::NotFound => Self::NotFound,
            crate::blob::BlobError::StorageFull => Self::InsufficientStorage,
            // Its cause was logged where it was classified; the client learns only to retry.
            crate::blob::BlobError::Unavailable(_) => {
                Self::Unavailable("the blob store is not answering; retry shortly")
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<crate::crypto::read::ReadError> for AppError {
    fn from(e: crate::crypto::read::ReadError) -> Self {
        match e {
            crate::crypto::read::ReadError::Tampered => Self::Integrity,
            crate::crypto::read::ReadError::Blob(b) => b.into(),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<crate::auth::view::ViewError> for AppError {
    fn from(e: crate::auth::view::ViewError) -> Self {
        use crate::auth::view::ViewError;
        match e {
            ViewError::Meta(m) => m.into(),
            // One answer whatever the cause: a prober learns nothing about the file.
            ViewError::Malformed | ViewError::Expired | ViewError::Gone | ViewError::Mismatch => {
                Self::Unauthorized(
                    "this view URL is not valid (malformed, expired, revoked, or for another file)",
                )
            }
        }
    }
}

impl From<crate::auth::AuthError> for AppError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing => Self::Unauthorized("authentication required"),
            AuthError::TwoCredentials => Self::Unauthorized("send one credential, not two"),
            AuthError::Invalid => Self::Unauthorized(BAD_CREDENTIALS),
            AuthError::NotAdmin => Self::Forbidden("administrators only"),
            AuthError::AdminNeedsLogin => {
                Self::Forbidden("administration needs a login, not an API key")
            }
            AuthError::NeedsLogin => Self::Forbidden("API keys cannot manage credentials; log in"),
            AuthError::Meta(m) => m.into(),
            AuthError::Hash(h) => Self::Internal(h.into()),
            AuthError::Token(t) => Self::Internal(t.into()),
        }
    }
}

impl From<crate::auth::accounts::AccountError> for AppError {
    fn from(e: crate::auth::accounts::AccountError) -> Self {
        use crate::auth::accounts::AccountError;
        match e {
            AccountError::Invalid(fields) => Self::Validation(
                fields
                    .into_iter()
                    .map(|f| FieldError::new(f.field, f.message))
                    .collect(),
            ),
            // Their words are the client's answer.
            e @ (AccountError::UsernameTaken | AccountError::EmailTaken) => {
                Self::Conflict(e.to_string().into())
            }
            AccountError::Hash(h) => Self::Internal(h.into()),
            AccountError::Meta(m) => m.into(),
        }
    }
}

impl From<crate::ingest::IngestError> for AppError {
    fn from(e: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError;
        match e {
            IngestError::Refused(r) => Self::UnsupportedMediaType(r.to_string().into()),
            IngestError::TooLarge { limit } | IngestError::TooLargeToScan { limit } => {
                Self::PayloadTooLarge { limit }
            }
            IngestError::Polyglot(p) => Self::Polyglot(p.to_string()),
            IngestError::Image(m) => Self::UnsupportedMediaType(m.to_string().into()),
            IngestError::Infected(signature) => Self::Infected(signature),
            IngestError::ScanUnavailable(why) => {
                // Why goes to the log (a socket path, clamd's words), never to the client.
                tracing::warn!(error = %why, "upload refused: no verdict from clamd");
                Self::ScannerUnavailable
            }
            IngestError::Quota => Self::QuotaExceeded,
            IngestError::GrantRefused => Self::Unauthorized(BAD_GRANT),
            IngestError::ChecksumMismatch => Self::ChecksumMismatch,
            IngestError::BadBody(d) => Self::BadRequest(d.into()),
            IngestError::ClientAborted => Self::BadRequest("the upload body was cut off".into()),
            IngestError::Idle => Self::RequestTimeout,
            // The owner's account is being deleted: its credentials are dead now.
            IngestError::OwnerGone => Self::Unauthorized(BAD_CREDENTIALS),
            IngestError::Blob(b) => b.into(),
            IngestError::Meta(m) => m.into(),
        }
    }
}

impl From<crate::removal::RemoveError> for AppError {
    fn from(e: crate::removal::RemoveError) -> Self {
        use crate::removal::RemoveError;
        match e {
            RemoveError::Blob(b) => b.into(),
            RemoveError::Meta(m) => m.into(),
            RemoveError::LastAdmin => Self::Conflict("cannot delete the last administrator".into()),
            RemoveError::NoUser => Self::NotFound,
            e @ RemoveError::FilesRemain => Self::Internal(e.into()),
        }
    }
}

impl From<crate::events::hooks::CreateError> for AppError {
    fn from(e: crate::events::hooks::CreateError) -> Self {
        use crate::events::hooks::CreateError;
        match e {
            CreateError::Url(u) => Self::Validation(vec![FieldError::new("url", u.to_string())]),
            CreateError::Events(why) => Self::Validation(vec![FieldError::new("events", why)]),
            CreateError::OwnerGone => Self::Unauthorized(BAD_CREDENTIALS),
            e @ CreateError::TooMany(_) => {
                Self::Validation(vec![FieldError::new("url", e.to_string())])
            }
            CreateError::Meta(m) => m.into(),
        }
    }
}
