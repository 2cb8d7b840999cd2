//! View URLs: minting them (the file's owner, by token or API key), revoking all of a
//! caller's at once, and serving content through one (`files::file_content` hands a request
//! with `?view=` to [`view_content`]).
//!
//! Invariant: only the file's owner mints (an admin's wider file scope does not apply: a view
//! URL publishes the file); the token appears only in the 201 body, never in an audit entry.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::principal::Principal;
use crate::auth::view::{ViewError, ViewKeys};
use crate::http::content::{self, ContentRequest};
use crate::http::error::{AppError, AppResult, FieldError};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::ids::{FileId, Timestamp};
use crate::state::AppState;

/// View-URL routes (JSON).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mint_view_url))
        .routes(routes!(revoke_view_urls))
}

/// The lifetime of a view URL that asks for none.
const DEFAULT_VIEW_SECS: u64 = 300;

/// `POST /files/{id}/view-url` body (optional).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ViewUrlRequest {
    /// Lifetime in seconds, 1 to `links.max_view_secs` (default 3600); default 300.
    #[schema(minimum = 1, example = 300)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    expires_in: Option<i64>,
}

/// A new view URL.
#[derive(Serialize, ToSchema)]
pub(crate) struct ViewUrl {
    /// The URL, relative to the service: `/api/v1/files/{id}/content?view=<token>`. Add
    /// `&disposition=inline` to show an image, PDF or text file in the page.
    #[schema(example = "/api/v1/files/0190.../content?view=AQAAAABn...")]
    url: String,
    /// When it stops working.
    expires_at: Timestamp,
}

/// Mint a view URL for one of the caller's files: usable with no credentials in `<img>`,
/// `<video>`, `<iframe>` or a download link until it expires, the caller revokes their view
/// URLs, or the file or its owner is deleted. Reads through it are not counted.
#[utoipa::path(post, path = "/api/v1/files/{id}/view-url", tag = "files",
    params(("id" = String, Path, description = "File id")),
    request_body(content = Option<ViewUrlRequest>, description = "Optional; `{}` or no body takes the defaults"),
    responses(
        (status = 201, description = "Minted; the URL carries the token", body = ViewUrl),
        (status = 404, description = "No such file among the caller's", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`expires_in` out of range", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn mint_view_url(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Option<AppJson<ViewUrlRequest>>,
) -> AppResult<impl IntoResponse> {
    let max = state.config.links.max_view_secs;
    let req = body.map(|AppJson(r)| r).unwrap_or_default();
    let secs = match req.expires_in {
        None => DEFAULT_VIEW_SECS.min(max),
        Some(s) => u64::try_from(s)
            .ok()
            .filter(|s| (1..=max).contains(s))
            .ok_or_else(|| {
                AppError::Validation(vec![FieldError::new(
                    "expires_in",
                    format!("must be from 1 to {max} seconds"),
                )])
            })?,
    };
    // The owner only, even for an admin: a view URL publishes the file.
    let file_id = FileId::parse(&id).ok_or(AppError::NotFound)?;
    let owner = principal.user_id;
    let now = Timestamp::now();
    let meta = &state.meta;
    meta.files()
        .get_visible(file_id, Some(owner), now)
        .await?
        .ok_or(AppError::NotFound)?;
    let generation = meta
        .users()
        .view_generation(owner)
        .await?
        .ok_or(AppError::NotFound)?;
    let expires_at = Timestamp::from_unix_secs(now.unix_secs()).plus_secs(secs);
    let token = state.views.mint(file_id, owner, expires_at, generation);
    let body = ViewUrl {
        url: format!("/api/v1/files/{file_id}/content?view={token}"),
        expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Revoke every view URL the caller has minted, at once and on every node.
#[utoipa::path(post, path = "/api/v1/users/me/revoke-view-urls", tag = "files",
    responses((status = 204, description = "Every view URL the caller minted stops working")),
    security(("bearer" = []), ("api_key" = [])))]
async fn revoke_view_urls(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
) -> AppResult<StatusCode> {
    let owner = principal.user_id;
    state.meta.users().bump_view_generation(owner).await?;
    state
        .audit
        .record(Record::new(Event::ViewRevoke).actor(owner).ip(ip));
    Ok(StatusCode::NO_CONTENT)
}

/// Content through a view URL: the token, not a credential, opens the file (401 whatever is
/// wrong with it); then exactly the owner's download. The first use of each token is audited.
pub(crate) async fn view_content(
    state: &AppState,
    ip: std::net::IpAddr,
    method: &Method,
    headers: &HeaderMap,
    id: &str,
    token: &str,
    disposition: Option<String>,
) -> AppResult<Response> {
    let now = Timestamp::now();
    let token = ViewKeys::parse(token, now)?;
    // An id that is not a UUID opens nothing: the same 401 as any other wrong token.
    let id = FileId::parse(id).ok_or(ViewError::Gone)?;
    let f = state.views.resolve(&state.meta, &token, id, now).await?;
    let req = ContentRequest {
        method,
        headers,
        disposition: content::disposition(disposition.as_deref(), &f.file.content_type)?,
        client_ip: ip,
    };
    let served = content::respond(state, &f, &req, None).await?;
    if state.views.first_use(&token, now) {
        let record = Record::new(Event::FileView)
            .subject(f.file.id)
            .ip(ip)
            .detail(serde_json::json!({
                "owner": f.owner_id,
                "status": served.response.status().as_u16(),
                "expires_at": token.expires_at(),
            }));
        // The first use this node sees; whether it is the first anywhere is one insert, made
        // off the answer's path. If the database cannot say, the entry is written anyway: a
        // duplicate in the trail is better than a read missing from it.
        let (meta, audit) = (state.meta.clone(), state.audit.clone());
        let (key, expires_at) = (token.use_key().to_vec(), token.expires_at());
        tokio::spawn(async move {
            match meta.views().first_view(key, expires_at).await {
                Ok(false) => {}
                Ok(true) => audit.record(record),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a view URL's first use");
                    audit.record(record);
                }
            }
        });
    }
    Ok(served.response)
}
