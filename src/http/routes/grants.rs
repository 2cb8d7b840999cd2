//! Upload grants: an app backend (API key or token) mints a short-lived, scoped grant, and a
//! browser uploads straight to coffer with it (`Upload-Grant` or `?grant=` on the upload
//! routes; see `http::extract::Uploader`). Mint (the token shown once), list, get (with the
//! files uploaded with it), revoke.
//!
//! Invariant: the token appears only in the 201 body, never in a list, an audit entry or a
//! log. Only the grant's owner sees or revokes it, and a grant can manage nothing (these
//! routes take a [`Principal`], which a grant never is).

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::grant;
use crate::auth::principal::Principal;
use crate::config::Config;
use crate::http::error::{AppError, AppResult, BAD_CREDENTIALS, FieldError};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::ids::{FileId, GrantId, Timestamp};
use crate::meta::grants::{Grant, NewGrant};
use crate::state::AppState;

/// Upload-grant routes (JSON).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_grant, list_grants))
        .routes(routes!(get_grant, revoke_grant))
}

/// The lifetime of a grant that asks for none.
const DEFAULT_EXPIRES_SECS: u64 = 900;
/// The most uploads one grant may allow.
const MAX_UPLOADS: i64 = 1000;

/// `POST /upload-grants` body; every field optional.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantRequest {
    /// Seconds until uploads can no longer start with it: 1 to `grants.max_expires_secs`
    /// (default 86400); default 900.
    #[schema(minimum = 1, example = 900)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    expires_in: Option<i64>,
    /// The largest file, in bytes: 1 to `limits.max_upload_bytes` (the default).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    max_bytes: Option<i64>,
    /// The extensions allowed (without the dot), each one of `uploads.allowed` (the
    /// default: all of them).
    #[schema(min_items = 1, example = json!(["png", "jpg"]))]
    #[serde(default)]
    extensions: Option<Vec<String>>,
    /// How many uploads it allows: 1 to 1000; default 1 (and 1 with `sha256`).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    max_uploads: Option<i64>,
    /// Retention of the files uploaded with it, in seconds, as an upload's `expires_in`
    /// (1 to `retention.max_expires_secs`); default: the service's retention.
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    file_expires_in: Option<i64>,
    /// The SHA-256 (64 hex digits) the one upload must hash to; then `max_uploads` must be 1.
    /// An upload with other content is refused with 422 (`checksum-mismatch`).
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    #[serde(default)]
    sha256: Option<String>,
}

/// What a request asks for, checked against the configuration: the grant's terms, or every
/// field that is wrong.
struct Terms {
    expires_in: u64,
    max_bytes: u64,
    extensions: Vec<String>,
    max_uploads: u32,
    file_expires_in: Option<u64>,
    sha256: Option<String>,
}

impl GrantRequest {
    fn checked(self, config: &Config) -> AppResult<Terms> {
        let mut errs = Vec::new();
        let mut range = |field: &str, v: Option<i64>, max: u64, default: u64| match v {
            None => default,
            Some(v) => match u64::try_from(v) {
                Ok(v) if (1..=max).contains(&v) => v,
                _ => {
                    errs.push(FieldError::new(field, format!("must be from 1 to {max}")));
                    default
                }
            },
        };
        let max_expires = config.grants.max_expires_secs;
        let expires_in = range(
            "expires_in",
            self.expires_in,
            max_expires,
            DEFAULT_EXPIRES_SECS.min(max_expires),
        );
        let limit = config.limits.max_upload_bytes;
        let max_bytes = range("max_bytes", self.max_bytes, limit, limit);
        let max_uploads = range(
            "max_uploads",
            self.max_uploads,
            MAX_UPLOADS.unsigned_abs(),
            1,
        );
        let file_expires_in = self.file_expires_in.map(|v| {
            range(
                "file_expires_in",
                Some(v),
                config.retention.max_expires_secs,
                1,
            )
        });
        let allowed = &config.uploads.allowed;
        let extensions = match self.extensions {
            None => allowed.keys().cloned().collect::<BTreeSet<_>>(),
            Some(list) => {
                // Exactly as configured (lower case, no dot), as the document's enum says.
                let asked: BTreeSet<String> = list.into_iter().collect();
                if asked.is_empty() {
                    errs.push(FieldError::new("extensions", "must name at least one"));
                }
                if let Some(bad) = asked.iter().find(|e| !allowed.contains_key(*e)) {
                    let bad: String = bad.chars().take(20).collect();
                    errs.push(FieldError::new(
                        "extensions",
                        format!("{bad:?} is not an allowed extension (uploads.allowed)"),
                    ));
                }
                asked
            }
        };
        let sha256 = match self.sha256 {
            None => None,
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if max_uploads != 1 {
                    errs.push(FieldError::new(
                        "max_uploads",
                        "must be 1 when sha256 is given",
                    ));
                }
                Some(h.to_ascii_lowercase())
            }
            Some(_) => {
                errs.push(FieldError::new("sha256", "must be 64 hexadecimal digits"));
                None
            }
        };
        if !errs.is_empty() {
            return Err(AppError::Validation(errs));
        }
        Ok(Terms {
            expires_in,
            max_bytes,
            extensions: extensions.into_iter().collect(),
            max_uploads: u32::try_from(max_uploads).unwrap_or(1),
            file_expires_in,
            sha256,
        })
    }
}

/// A new grant, with its token shown this once.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedGrant {
    /// The grant.
    #[serde(flatten)]
    grant: Grant,
    /// The token: the browser sends it as `Upload-Grant` (or `?grant=`). It cannot be shown
    /// again.
    #[schema(example = "cgr_3q2-7wEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLE")]
    token: String,
}

/// A grant with the files uploaded with it.
#[derive(Serialize, ToSchema)]
pub(crate) struct GrantDetail {
    /// The grant.
    #[serde(flatten)]
    grant: Grant,
    /// The live files uploaded with it, oldest first.
    file_ids: Vec<FileId>,
}

/// The caller's grants.
#[derive(Serialize, ToSchema)]
pub(crate) struct GrantList {
    /// Newest first, without tokens.
    items: Vec<Grant>,
}

/// Mint an upload grant: a browser holding only its token may upload files to the caller's
/// account, within its limits, until it expires, is used up or is revoked.
#[utoipa::path(post, path = "/api/v1/upload-grants", tag = "upload-grants",
    request_body(content = Option<GrantRequest>, description = "Optional; `{}` or no body takes the defaults"),
    responses(
        (status = 201, description = "Minted; the token is shown once", body = CreatedGrant,
            headers(("Location" = String, description = "The grant's URL"))),
        (status = 422, description = "A field out of range, an extension not allowed, or `sha256` with `max_uploads` above 1", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn create_grant(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    body: Option<AppJson<GrantRequest>>,
) -> AppResult<impl IntoResponse> {
    let req = body.map(|AppJson(r)| r).unwrap_or_default();
    let terms = req.checked(&state.config)?;
    let owner = principal.user_id;
    let now = Timestamp::now();
    let (token, token_hash) = grant::new_token();
    let grant = Grant {
        id: GrantId::new(),
        expires_at: now.plus_secs(terms.expires_in),
        max_bytes: terms.max_bytes,
        extensions: terms.extensions,
        max_uploads: terms.max_uploads,
        uses: 0,
        file_expires_in: terms.file_expires_in,
        sha256: terms.sha256,
        created_at: now,
    };
    let inserted = state
        .meta
        .grants()
        .insert_grant(NewGrant {
            grant: grant.clone(),
            owner,
            token_hash,
        })
        .await?;
    if !inserted {
        // The account was locked for deletion after this request authenticated.
        return Err(AppError::Unauthorized(BAD_CREDENTIALS));
    }
    state.audit.record(
        Record::new(Event::GrantCreate)
            .actor(owner)
            .subject(grant.id)
            .ip(ip)
            .detail(serde_json::json!({
                "expires_at": grant.expires_at,
                "max_bytes": grant.max_bytes,
                "max_uploads": grant.max_uploads,
                "extensions": grant.extensions,
                "sha256": grant.sha256.is_some(),
            })),
    );
    let location = format!("/api/v1/upload-grants/{}", grant.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(CreatedGrant { grant, token }),
    ))
}

/// The caller's upload grants (expired ones too, for a while), without their tokens.
#[utoipa::path(get, path = "/api/v1/upload-grants", tag = "upload-grants",
    responses((status = 200, description = "The caller's grants", body = GrantList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_grants(
    State(state): State<AppState>,
    principal: Principal,
) -> AppResult<Json<GrantList>> {
    let items = state.meta.grants().list_grants(principal.user_id).await?;
    Ok(Json(GrantList { items }))
}

/// One of the caller's grants, with its uses and the files uploaded with it.
#[utoipa::path(get, path = "/api/v1/upload-grants/{id}", tag = "upload-grants",
    params(("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The grant", body = GrantDetail),
        (status = 404, description = "No such grant of the caller's (or revoked)", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn get_grant(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<Json<GrantDetail>> {
    let id = GrantId::parse(&id).ok_or(AppError::NotFound)?;
    let (grant, file_ids) = state
        .meta
        .grants()
        .get_grant(principal.user_id, id, Timestamp::now())
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(GrantDetail { grant, file_ids }))
}

/// Revoke a grant at once, on every node: no upload can start with it, and one under way
/// (a resumable upload, or a body still streaming) is refused when it would commit.
#[utoipa::path(delete, path = "/api/v1/upload-grants/{id}", tag = "upload-grants",
    params(("id" = String, Path, description = "Grant id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such grant of the caller's", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn revoke_grant(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let id = GrantId::parse(&id).ok_or(AppError::NotFound)?;
    let owner = principal.user_id;
    if !state.meta.grants().delete_grant(owner, id).await? {
        return Err(AppError::NotFound);
    }
    // Its unfinished resumable uploads end now: bytes, rows and quota released.
    state.resumable.end_grant(id).await?;
    state.audit.record(
        Record::new(Event::GrantRevoke)
            .actor(owner)
            .subject(id)
            .ip(ip),
    );
    Ok(StatusCode::NO_CONTENT)
}
