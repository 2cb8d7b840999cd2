//! Files: upload (multipart or raw), list, metadata, content, delete.
//!
//! Invariant: every route resolves the file through the caller's scope, so another user's file
//! is a 404 indistinguishable from a missing one; ids that are not UUIDs are 404s before any
//! storage access.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::principal::Principal;
use crate::crypto::read;
use crate::events::{self, Kind, RejectReason};
use crate::http::content::{self, ContentRequest};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::Uploader;
use crate::http::middleware::client_ip::ClientIp;
use crate::http::paging::{PageQuery, decode_time_cursor, encode_time_cursor, next_cursor};
use crate::http::routes::views;
use crate::ids::{FileId, Timestamp};
use crate::ingest::framing::MultipartFraming;
use crate::ingest::idle::{BodyError, IdleTimeout};
use crate::ingest::{self, IngestError, Upload};
use crate::meta::files::{AfterRead, FileObject, StoredFile};
use crate::removal;
use crate::small_files::SmallFile;
use crate::state::AppState;

/// Room for multipart framing and small ignored fields on top of the file itself.
const MULTIPART_OVERHEAD: u64 = 1024 * 1024;
/// Largest ignored (non-`file`) multipart part.
const OTHER_PART_LIMIT: u64 = 64 * 1024;

/// Metadata routes (JSON bodies, small limits).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_files))
        .routes(routes!(get_file, delete_file))
}

/// Streaming routes (no JSON limit, no request timeout).
pub(crate) fn streaming_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_file))
        .routes(routes!(file_content))
}

/// `POST /files` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// The original filename (raw-body uploads only; multipart uses the part's filename).
    /// Required with a raw body (400 without it); its extension decides the type.
    #[param(min_length = 1)]
    filename: Option<String>,
    /// Delete the file after this many seconds (at most `retention.max_expires_secs`).
    #[param(value_type = Option<u64>, minimum = 1)]
    expires_in: Option<String>,
}

/// Upload a file, as `multipart/form-data` with one part named `file`, or as the raw body
/// with `?filename=`. Streamed to storage; the size limit, content safety (image limits,
/// metadata stripping, polyglots) and the virus scan run while it streams, and the verdict
/// comes before the file exists.
#[utoipa::path(post, path = "/api/v1/files", tag = "files",
    params(UploadQuery),
    request_body(description = "multipart/form-data with a `file` part, or the raw bytes",
        content(
            (Vec<u8> = "application/octet-stream"),
            (UploadForm = "multipart/form-data"),
        )),
    responses(
        (status = 201, description = "Stored", body = FileObject,
            headers(("Location" = String, description = "The file's URL"))),
        (status = 413, description = "Larger than `limits.max_upload_bytes`, the quota, or (without `scan.skip_larger`) `scan.max_bytes`", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Type not allowed or not matching its extension; an image bomb or unreadable image; a polyglot (`type` ending in `polyglot`)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The virus scanner found a signature (`type` ending in `infected`, the signature in `detail`); nothing stored", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The virus scanner gave no verdict; nothing stored (`Retry-After`)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The storage volume is full", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = []), ("upload_grant" = []), ("upload_grant_query" = [])))]
async fn upload_file(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    uploader: Uploader,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    uploader.require_start()?;
    let expires_at = file_retention(&state, &uploader, q.expires_in.as_deref())?;
    let up = Upload {
        owner: uploader.owner,
        client_ip: ip,
        raw_name: String::new(),
        expires_at,
        length_hint: headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
        exact_length: false,
        grant: uploader.grant,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let staged = if content_type.to_ascii_lowercase().starts_with("multipart/") {
        // The part names the file; a `?filename=` sent beside it must still be a name the
        // server would take, so that a malformed parameter is never silently accepted.
        if let Some(name) = &q.filename {
            if name.is_empty() {
                return Err(AppError::BadRequest("?filename= is empty".into()));
            }
            state.ingest.admit_name(name)?;
        }
        stage_multipart(&state, up, content_type, body).await?
    } else {
        stage_raw(&state, up, q.filename, body).await?
    };
    let file = staged.commit(&state.ingest).await?;
    let location = format!("/api/v1/files/{}", file.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(file),
    )
        .into_response())
}

/// A raw-body upload named by `?filename=`. A declared length over the limit is refused
/// before the body is read.
async fn stage_raw(
    state: &AppState,
    up: Upload,
    filename: Option<String>,
    body: Body,
) -> AppResult<ingest::Staged> {
    // A raw body needs its name (API.md: "a raw body with the query ?filename=NAME"); none, or
    // an empty one, is a bad request (400). The name's extension then decides the type.
    let name = filename.filter(|n| !n.is_empty()).ok_or_else(|| {
        AppError::BadRequest("raw uploads need ?filename=NAME (or send multipart/form-data)".into())
    })?;
    let limit = up.limit(state.config.limits.max_upload_bytes);
    if up.length_hint.is_some_and(|n| n > limit) {
        let name = ingest::filename::sanitize(&name);
        events::record_rejection(
            &state.meta,
            up.owner,
            &name,
            RejectReason::Size,
            up.grant.as_ref().map(|g| g.id),
        )
        .await;
        return Err(AppError::PayloadTooLarge { limit });
    }
    let up = Upload {
        raw_name: name,
        exact_length: up.length_hint.is_some(),
        ..up
    };
    let stream = IdleTimeout::new(body.into_data_stream(), idle(state)).map_err(IngestError::from);
    if up.length_hint.is_none() {
        let metrics = state.clone();
        let counted = stream.inspect_ok(move |c| metrics.metrics.add_bytes_in(c.len() as u64));
        Ok(state.ingest.stage(up, Box::pin(counted)).await?)
    } else {
        Ok(state.ingest.stage(up, stream).await?)
    }
}

/// A `multipart/form-data` upload. A declared length over the limit (with room for the
/// framing) is refused before the body is read.
async fn stage_multipart(
    state: &AppState,
    up: Upload,
    content_type: &str,
    body: Body,
) -> AppResult<ingest::Staged> {
    let limit = up.limit(state.config.limits.max_upload_bytes);
    if up
        .length_hint
        .is_some_and(|n| n > limit.saturating_add(MULTIPART_OVERHEAD))
    {
        // Refused before the part (and its name) is read.
        let grant = up.grant.as_ref().map(|g| g.id);
        events::record_rejection(&state.meta, up.owner, "", RejectReason::Size, grant).await;
        return Err(AppError::PayloadTooLarge { limit });
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| AppError::BadRequest("malformed multipart Content-Type".into()))?;
    Ok(receive_multipart(state, up, boundary, body).await?)
}

/// The multipart form, for the OpenAPI document.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "documents the multipart shape; the parser is streaming"
)]
struct UploadForm {
    /// The file; its part's filename is the original name.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: Vec<u8>,
}

fn idle(state: &AppState) -> Duration {
    Duration::from_secs(state.config.limits.upload_idle_timeout_secs)
}

async fn receive_multipart(
    state: &AppState,
    up: Upload,
    boundary: String,
    body: Body,
) -> Result<ingest::Staged, IngestError> {
    let limit = up.limit(state.config.limits.max_upload_bytes);
    // The idle timeout covers every part, not only the file.
    let body = IdleTimeout::new(body.into_data_stream(), idle(state));
    // Only part bodies stream: the preamble and part headers are held until they end.
    let body = MultipartFraming::new(body, &boundary);
    let mut form = multer::Multipart::with_constraints(body, boundary, constraints(limit));
    let failed = move |e| multipart_failure(e, limit);
    let field = loop {
        match form.next_field().await.map_err(failed)? {
            None => {
                return Err(IngestError::BadBody(
                    "the form has no part named file".into(),
                ));
            }
            Some(f) if f.name() == Some("file") => break f,
            Some(other) => drain(other, limit).await?,
        }
    };
    let name = field
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| IngestError::BadBody("the file part has no filename".into()))?
        .to_owned();
    let up = Upload {
        raw_name: name,
        ..up
    };
    let staged = state
        .ingest
        .stage(up, Box::pin(field.map_err(failed)))
        .await?;
    // The parts after the file: a failure there ends the staged upload before the answer
    // (its quota and any grant use released, its reason audited).
    let rest = async {
        while let Some(next) = form.next_field().await.map_err(failed)? {
            if next.name() == Some("file") {
                return Err(IngestError::BadBody(
                    "send exactly one part named file".into(),
                ));
            }
            drain(next, limit).await?;
        }
        Ok(())
    }
    .await;
    match rest {
        Ok(()) => Ok(staged),
        Err(e) => {
            staged.abort(&e).await;
            Err(e)
        }
    }
}

/// The sizes multer holds a form to while parsing it: the whole form, the file part, each
/// other part (the pipeline applies the exact limit and the quota to the file itself).
fn constraints(limit: u64) -> multer::Constraints {
    multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit.saturating_add(MULTIPART_OVERHEAD))
            .per_field(OTHER_PART_LIMIT)
            .for_field("file", limit.saturating_add(1)),
    )
}

async fn drain(
    mut field: impl Stream<Item = Result<Bytes, multer::Error>> + Unpin,
    limit: u64,
) -> Result<(), IngestError> {
    while let Some(chunk) = field.next().await {
        chunk.map_err(|e| multipart_failure(e, limit))?;
    }
    Ok(())
}

fn multipart_failure(e: multer::Error, limit: u64) -> IngestError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            IngestError::TooLarge { limit }
        }
        multer::Error::StreamReadFailed(cause) => match cause.downcast::<BodyError>() {
            Ok(body) => IngestError::from(*body),
            Err(_) => IngestError::ClientAborted,
        },
        _ => IngestError::BadBody("malformed multipart body".into()),
    }
}

/// When an upload's file expires, for every upload route. With a grant the backend that
/// minted it decides (the grant's `file_expires_in`, else the service's default), never the
/// browser holding it: an `expires_in` from the holder is refused. Otherwise the uploader's
/// `expires_in`, or the default.
pub(crate) fn file_retention(
    state: &AppState,
    uploader: &Uploader,
    expires_in: Option<&str>,
) -> AppResult<Option<Timestamp>> {
    match &uploader.grant {
        Some(_) if expires_in.is_some() => Err(AppError::field(
            "expires_in",
            "is set by the upload grant (file_expires_in), not by its holder",
        )),
        Some(g) => {
            let default = state.config.retention.default_ttl_secs;
            Ok(g.file_expires_in
                .or((default > 0).then_some(default))
                .map(|s| Timestamp::now().plus_secs(s)))
        }
        None => retention(state, expires_in),
    }
}

/// `expires_in` -> an expiry, or the deployment default.
fn retention(state: &AppState, expires_in: Option<&str>) -> AppResult<Option<Timestamp>> {
    let cfg = &state.config.retention;
    let secs = match expires_in {
        None => (cfg.default_ttl_secs > 0).then_some(cfg.default_ttl_secs),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(s) if (1..=cfg.max_expires_secs).contains(&s) => Some(s),
            _ => {
                return Err(AppError::field(
                    "expires_in",
                    format!(
                        "must be an integer from 1 to {} seconds",
                        cfg.max_expires_secs
                    ),
                ));
            }
        },
    };
    Ok(secs.map(|s| Timestamp::now().plus_secs(s)))
}

/// A page of files.
#[derive(Serialize, ToSchema)]
pub(crate) struct FileList {
    /// Newest first.
    items: Vec<FileObject>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The caller's files, newest first.
#[utoipa::path(get, path = "/api/v1/files", tag = "files",
    params(PageQuery),
    responses((status = 200, description = "A page of files", body = FileList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_files(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> AppResult<Json<FileList>> {
    let limit = q.limit()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| decode_time_cursor(c, FileId::parse))
        .transpose()?;
    let owner = principal.user_id;
    let page = state
        .meta
        .files()
        .list_owned(owner, after, limit, Timestamp::now())
        .await?;
    let next_cursor = next_cursor(&page, |f| encode_time_cursor(f.created_at, f.id));
    Ok(Json(FileList {
        items: page.items,
        next_cursor,
    }))
}

/// Look a file up in the caller's scope; 404 for anything else.
pub(crate) async fn visible_file(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> AppResult<StoredFile> {
    let id = FileId::parse(id).ok_or(AppError::NotFound)?;
    let scope = principal.file_scope();
    state
        .meta
        .files()
        .get_visible(id, scope, Timestamp::now())
        .await?
        .ok_or(AppError::NotFound)
}

/// One file's metadata.
#[utoipa::path(get, path = "/api/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, description = "The file", body = FileObject)),
    security(("bearer" = []), ("api_key" = [])))]
async fn get_file(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<Json<FileObject>> {
    Ok(Json(visible_file(&state, &principal, &id).await?.file))
}

/// Delete a file and its blob (its share links die with it).
#[utoipa::path(delete, path = "/api/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id")),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = []), ("api_key" = [])))]
async fn delete_file(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let f = visible_file(&state, &principal, &id).await?;
    // In its own task: a client that gives up must not stop a deletion between its steps.
    let (meta, blobs, target) = (state.meta.clone(), state.blobs.clone(), f.clone());
    let removed = tokio::spawn(async move {
        removal::remove_file(&meta, &blobs, &target, Kind::FileDeleted).await
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))??;
    if !removed {
        return Err(AppError::NotFound);
    }
    state.audit.record(
        Record::new(Event::FileDelete)
            .actor(principal.user_id)
            .subject(f.file.id)
            .ip(ip)
            .detail(serde_json::json!({ "size": f.file.size, "owner": f.owner_id })),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// A file in the caller's scope (404 otherwise) and, when `prefetch` and the file is small,
/// its bytes: from memory when a recent download kept them (`small_files`), else row and
/// bytes in one trip to the blocking pool.
async fn visible_file_and_bytes(
    state: &AppState,
    principal: &Principal,
    id: FileId,
    prefetch: bool,
) -> AppResult<(StoredFile, Option<Bytes>)> {
    let scope = principal.file_scope();
    let (blobs, keyring) = (state.blobs.clone(), state.keyring.clone());
    let files = state.meta.files();
    let now = Timestamp::now();
    if !prefetch {
        let found = files.get_visible(id, scope, now).await?;
        return found.map(|f| (f, None)).ok_or(AppError::NotFound);
    }
    if let Some(hit) = state.small_files.get(id, scope, now) {
        return Ok((hit.row, Some(hit.bytes)));
    }
    let epoch = state.small_files.epoch();
    let small: AfterRead = Box::new(move |f| {
        read::prefetch_small(&blobs, &keyring, &f.source(), content::PREFETCH_MAX)
    });
    let (row, bytes) = files
        .get_visible_then(id, scope, now, small)
        .await?
        .ok_or(AppError::NotFound)?;
    // A sealed file's plaintext lives only as long as its response: never kept.
    let plain = row.sealing.is_none();
    if let Some(b) = bytes
        .as_ref()
        .filter(|b| plain && b.len() as u64 == row.file.size)
    {
        state.small_files.put(
            SmallFile {
                row: row.clone(),
                bytes: b.clone(),
            },
            epoch,
        );
    }
    Ok((row, bytes))
}

/// `?disposition=`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ContentQuery {
    /// `attachment` (default) or `inline` (honoured for images, PDF and plain text only).
    #[param(value_type = Option<String>, pattern = "^(attachment|inline)$")]
    pub(crate) disposition: Option<String>,
}

/// `GET /files/{id}/content` query: `?disposition=` and `?view=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FileContentQuery {
    /// `attachment` (default) or `inline` (honoured for images, PDF and plain text only).
    #[param(value_type = Option<String>, pattern = "^(attachment|inline)$")]
    disposition: Option<String>,
    /// A view token (from `POST /files/{id}/view-url`): read with no credentials.
    #[param(value_type = Option<String>)]
    view: Option<String>,
}

/// The file's bytes. Supports `Range` (one range), `If-None-Match`, `If-Range`, `If-Match`
/// (strong comparison) and `If-Unmodified-Since` (412 when they fail), and `HEAD`. With
/// `?view=<token>` (a view URL) no credentials are needed, and the read is not counted.
#[utoipa::path(method(get, head), path = "/api/v1/files/{id}/content", tag = "files",
    params(("id" = String, Path, description = "File id"), FileContentQuery,
        ("Range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
        ("If-None-Match" = Option<String>, Header, description = "ETags"),
        ("If-Range" = Option<String>, Header, description = "ETag or date")),
    responses(
        (status = 200, description = "The whole file, as its detected type", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "One byte range, as its detected type", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 401, description = "No credentials, or a view token that is malformed, expired, revoked or for another file", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match or If-Unmodified-Since does not hold", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 416, description = "Unsatisfiable range", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = []), ("api_key" = [])))]
async fn file_content(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Result<Principal, AppError>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FileContentQuery>,
) -> AppResult<Response> {
    if let Some(token) = q.view.as_deref() {
        return views::view_content(&state, ip, &method, &headers, &id, token, q.disposition).await;
    }
    let principal = principal?;
    let id = FileId::parse(&id).ok_or(AppError::NotFound)?;
    let get = method == Method::GET;
    // A conditional request will likely be a 304: fetch bytes only when they will be sent.
    let prefetch = get
        && !headers.contains_key(header::IF_NONE_MATCH)
        && !headers.contains_key(header::IF_MODIFIED_SINCE);
    let (f, prefetched) = visible_file_and_bytes(&state, &principal, id, prefetch).await?;
    let req = ContentRequest {
        method: &method,
        headers: &headers,
        disposition: content::disposition(q.disposition.as_deref(), &f.file.content_type)?,
        client_ip: ip,
    };
    let served = content::respond(&state, &f, &req, prefetched).await?;
    if get && served.response.status().is_success() {
        state.audit.record(
            Record::new(Event::FileDownload)
                .actor(principal.user_id)
                .subject(f.file.id)
                .ip(ip)
                .detail(serde_json::json!({ "status": served.response.status().as_u16() })),
        );
    }
    Ok(served.response)
}
