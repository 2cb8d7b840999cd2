//! API keys: create (shown once), list, delete.
//!
//! Invariant: only a logged-in user (a JWT, not another API key) manages keys, and a key is
//! returned in plaintext exactly once, in the 201 that created it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::api_key;
use crate::auth::principal::Principal;
use crate::http::error::{AppError, AppResult, FieldError};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::ids::{ApiKeyId, Timestamp, UserId};
use crate::meta::api_keys::{ApiKey, NewApiKey};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(delete_api_key))
}

/// `POST /api-keys` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKeyRequest {
    /// A label: 1-100 characters, no control characters, not only spaces (trimmed).
    #[schema(
        example = "backend-prod",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// Lifetime in days, 1-3650; omitted = no expiry.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "crate::http::extract::json_int::optional")]
    expires_in_days: Option<i64>,
}

impl CreateKeyRequest {
    /// The trimmed label and the lifetime in days, or every field that is wrong.
    fn checked(&self) -> AppResult<(String, Option<u64>)> {
        let name = self.name.trim().to_owned();
        let mut errs = Vec::new();
        // Judged as sent, so the rule is exactly the pattern the OpenAPI document states.
        let raw = &self.name;
        if name.is_empty() || raw.chars().count() > 100 || raw.chars().any(char::is_control) {
            errs.push(FieldError::new(
                "name",
                "must be 1-100 printable characters",
            ));
        }
        let days = match self.expires_in_days {
            None => None,
            Some(d @ 1..=3650) => Some(d.unsigned_abs()),
            Some(_) => {
                errs.push(FieldError::new(
                    "expires_in_days",
                    "must be between 1 and 3650",
                ));
                None
            }
        };
        if errs.is_empty() {
            Ok((name, days))
        } else {
            Err(AppError::Validation(errs))
        }
    }
}

/// A new key, with the secret shown this once.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    /// Id.
    id: ApiKeyId,
    /// Label.
    name: String,
    /// The key: send it as `X-API-Key`. It cannot be shown again.
    key: String,
    /// Its first 12 characters.
    prefix: String,
    /// Creation time.
    created_at: Timestamp,
    /// Expiry, or null.
    expires_at: Option<Timestamp>,
}

/// Create an API key for app backends.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys",
    request_body = CreateKeyRequest,
    responses((status = 201, description = "Created; the key is shown once", body = CreatedKey)),
    security(("bearer" = [])))]
async fn create_api_key(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    AppJson(req): AppJson<CreateKeyRequest>,
) -> AppResult<impl IntoResponse> {
    principal.require_token()?;
    let (name, days) = req.checked()?;
    let now = Timestamp::now();
    let expires_at = days.map(|d| now.plus_secs(d * 86_400));
    let owner = principal.user_id;
    let (public, key) = insert_new_key(&state, owner, name, now, expires_at).await?;
    state.audit.record(
        Record::new(Event::ApiKeyCreate)
            .actor(owner)
            .subject(public.id)
            .ip(ip),
    );
    let body = CreatedKey {
        id: public.id,
        name: public.name,
        key,
        prefix: public.prefix,
        created_at: now,
        expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Draw a fresh key for `owner` and store its row; the key itself is returned, and exists
/// nowhere else.
async fn insert_new_key(
    state: &AppState,
    owner: UserId,
    name: String,
    now: Timestamp,
    expires_at: Option<Timestamp>,
) -> AppResult<(ApiKey, String)> {
    // A prefix collision (40 random bits) is possible in principle: draw again.
    for _ in 0..4 {
        let new = api_key::generate();
        let row = NewApiKey {
            key: ApiKey {
                id: ApiKeyId::new(),
                name: name.clone(),
                prefix: new.prefix.clone(),
                created_at: now,
                expires_at,
            },
            user_id: owner,
            hash: new.hash,
        };
        let public = row.key.clone();
        if state.meta.api_keys().insert(row).await? {
            return Ok((public, new.key));
        }
    }
    Err(AppError::Internal(anyhow::anyhow!(
        "could not draw a unique API key prefix"
    )))
}

/// The caller's keys.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    /// Newest first; never the keys themselves.
    items: Vec<ApiKey>,
}

/// List the caller's API keys (without the keys).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "The caller's keys", body = KeyList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_api_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> AppResult<Json<KeyList>> {
    let owner = principal.user_id;
    let items = state.meta.api_keys().list(owner).await?;
    Ok(Json(KeyList { items }))
}

/// Delete one of the caller's API keys.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = [])))]
async fn delete_api_key(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    principal.require_token()?;
    let id = ApiKeyId::parse(&id).ok_or(AppError::NotFound)?;
    let owner = principal.user_id;
    if !state.meta.api_keys().delete(owner, id).await? {
        return Err(AppError::NotFound);
    }
    state.audit.record(
        Record::new(Event::ApiKeyDelete)
            .actor(owner)
            .subject(id)
            .ip(ip),
    );
    Ok(StatusCode::NO_CONTENT)
}
