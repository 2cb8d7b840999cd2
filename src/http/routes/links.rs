//! Share links: a capability URL for one file, with an expiry and an optional download budget.
//!
//! Invariant: the token (256 random bits, URL-safe) is returned once and stored only as its
//! SHA-256; logs and audit entries name links by id, never by token. Counting a download is
//! one conditional update, so a one-use link serves exactly one GET however many race for it.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::principal::Principal;
use crate::auth::{random_token, token_hash};
use crate::download::Plan;
use crate::events;
use crate::http::content::{self, ContentRequest};
use crate::http::error::{AppError, AppResult, FieldError};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::http::routes::files::ContentQuery;
use crate::ids::{FileId, LinkId, Timestamp};
use crate::meta::links::{LinkState, NewLink};
use crate::state::AppState;

/// Link management (JSON).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_link))
        .routes(routes!(delete_link))
}

/// Link content (streaming, no credentials).
pub(crate) fn streaming_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(link_content))
}

/// `POST /files/{id}/links` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateLinkRequest {
    /// Lifetime in seconds, 1 to `links.max_expires_secs`.
    #[schema(minimum = 1, example = 3600)]
    #[serde(deserialize_with = "crate::http::extract::json_int::required")]
    expires_in: i64,
    /// Downloads allowed (1 to 4294967295); omitted = unlimited until expiry.
    #[schema(minimum = 1, maximum = 4_294_967_295_i64)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    max_downloads: Option<i64>,
}

impl CreateLinkRequest {
    /// The lifetime in seconds and the download budget, or every field that is wrong.
    fn checked(&self, max_secs: u64) -> AppResult<(u64, Option<u32>)> {
        let mut errs = Vec::new();
        let expires_in = u64::try_from(self.expires_in)
            .ok()
            .filter(|s| (1..=max_secs).contains(s));
        if expires_in.is_none() {
            errs.push(FieldError::new(
                "expires_in",
                format!("must be from 1 to {max_secs} seconds"),
            ));
        }
        let max_downloads = match self.max_downloads {
            None => None,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    errs.push(FieldError::new(
                        "max_downloads",
                        "must be from 1 to 4294967295",
                    ));
                    None
                }
            },
        };
        match expires_in.filter(|_| errs.is_empty()) {
            Some(expires_in) => Ok((expires_in, max_downloads)),
            None => Err(AppError::Validation(errs)),
        }
    }
}

/// A new share link.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedLink {
    /// The link's id (for revoking; not the token).
    id: LinkId,
    /// The capability URL, relative to the service.
    #[schema(example = "/api/v1/links/Qm9v...")]
    url: String,
    /// When it stops working.
    expires_at: Timestamp,
    /// The download budget, or null.
    max_downloads: Option<u32>,
}

/// Create a share link to one of the caller's files.
#[utoipa::path(post, path = "/api/v1/files/{id}/links", tag = "links",
    params(("id" = String, Path, description = "File id")),
    request_body = CreateLinkRequest,
    responses((status = 201, description = "Created; the URL carries the token", body = CreatedLink)),
    security(("bearer" = []), ("api_key" = [])))]
async fn create_link(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
    AppJson(req): AppJson<CreateLinkRequest>,
) -> AppResult<impl IntoResponse> {
    let (expires_in, max_downloads) = req.checked(state.config.links.max_expires_secs)?;
    // Links are minted by the file's owner only (even admins do not publish others' files).
    let file_id = FileId::parse(&id).ok_or(AppError::NotFound)?;
    let owner = principal.user_id;
    let now = Timestamp::now();
    let token = random_token::<32>();
    let link = NewLink {
        id: LinkId::new(),
        file_id,
        token_hash: token_hash(&token),
        created_at: now,
        expires_at: now.plus_secs(expires_in),
        max_downloads,
    };
    // Check and insert in one transaction: a file deleted in between is a 404, not a 500.
    let created = state
        .meta
        .links()
        .insert_for_owner(link.clone(), owner, now)
        .await?;
    if !created {
        return Err(AppError::NotFound);
    }
    state.audit.record(
        Record::new(Event::LinkCreate)
            .actor(owner)
            .subject(link.id)
            .ip(ip)
            .detail(serde_json::json!({ "file": file_id, "expires_in": expires_in, "max_downloads": max_downloads })),
    );
    let body = CreatedLink {
        id: link.id,
        url: format!("/api/v1/links/{token}"),
        expires_at: link.expires_at,
        max_downloads,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Download through a share link; no credentials needed.
#[utoipa::path(method(get, head), path = "/api/v1/links/{link}", tag = "links",
    params(("link" = String, Path, description = "The link token (from the link URL)"), ContentQuery,
        ("Range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
        ("If-None-Match" = Option<String>, Header, description = "ETags")),
    responses(
        (status = 200, description = "The whole file, as its detected type", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "One byte range, as its detected type", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 410, description = "Expired or used up", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match or If-Unmodified-Since does not hold (not counted)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 416, description = "Unsatisfiable range", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ))]
async fn link_content(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    headers: HeaderMap,
    Path(token): Path<String>,
    Query(q): Query<ContentQuery>,
) -> AppResult<Response> {
    if token.len() > 128 {
        return Err(AppError::NotFound);
    }
    let hash = token_hash(&token);
    let now = Timestamp::now();
    let (link, f) = match state.meta.links().resolve(hash, now).await? {
        LinkState::Unknown => return Err(AppError::NotFound),
        LinkState::Expired => return Err(AppError::Gone("this link has expired")),
        LinkState::UsedUp => return Err(AppError::Gone("this link has been used up")),
        LinkState::Live { id, file } => (id, file),
    };
    let req = ContentRequest {
        method: &method,
        headers: &headers,
        disposition: content::disposition(q.disposition.as_deref(), &f.file.content_type)?,
        client_ip: ip,
    };
    let served = content::respond(&state, &f, &req, None).await?;
    if method == Method::GET && matches!(served.plan, Plan::Full | Plan::Partial { .. }) {
        // Count it now; a racing GET that lost is told the link is used up.
        let used = events::link_used(f.owner_id, link, &f.file);
        if !state
            .meta
            .links()
            .consume_recording(link, Timestamp::now(), vec![used])
            .await?
        {
            // Used up by a racing GET, or gone meanwhile (revoked, its file deleted): as a
            // fresh look at the link answers.
            return Err(
                match state.meta.links().resolve(hash, Timestamp::now()).await? {
                    LinkState::Unknown => AppError::NotFound,
                    LinkState::Expired => AppError::Gone("this link has expired"),
                    LinkState::UsedUp | LinkState::Live { .. } => {
                        AppError::Gone("this link has been used up")
                    }
                },
            );
        }
        state
            .audit
            .record(Record::new(Event::LinkUse).subject(link).ip(ip).detail(
            serde_json::json!({ "file": f.file.id, "status": served.response.status().as_u16() }),
        ));
    }
    Ok(served.response)
}

/// Revoke a share link (the file's owner only).
#[utoipa::path(delete, path = "/api/v1/links/{link}", tag = "links",
    params(("link" = String, Path, description = "The link id (not its token)")),
    responses((status = 204, description = "Revoked")),
    security(("bearer" = []), ("api_key" = [])))]
async fn delete_link(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let id = LinkId::parse(&id).ok_or(AppError::NotFound)?;
    let owner = principal.user_id;
    let file = state
        .meta
        .links()
        .delete_owned(id, owner)
        .await?
        .ok_or(AppError::NotFound)?;
    state.audit.record(
        Record::new(Event::LinkDelete)
            .actor(owner)
            .subject(id)
            .ip(ip)
            .detail(serde_json::json!({ "file": file })),
    );
    Ok(StatusCode::NO_CONTENT)
}
