//! Webhooks: create (the secret shown once), list, delete, the delivery log and a manual
//! retry (API.md "Events and webhooks").
//!
//! Invariant: an owner (Bearer token or API key) sees and changes only their own webhooks;
//! another owner's is a 404. A secret appears only in the 201 that created it.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::principal::Principal;
use crate::http::error::{AppError, AppResult};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::http::paging::{SeqPageQuery, encode_seq, next_cursor};
use crate::ids::{Timestamp, WebhookId};
use crate::meta::events::{Delivery, Webhook};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

/// An event type.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "documents the accepted strings; requests carry them as text, checked in events::hooks"
)]
pub(crate) enum EventType {
    /// A file was stored (any upload path).
    #[schema(rename = "file.created")]
    FileCreated,
    /// A file was deleted.
    #[schema(rename = "file.deleted")]
    FileDeleted,
    /// A file's retention ran out.
    #[schema(rename = "file.expired")]
    FileExpired,
    /// An upload was refused.
    #[schema(rename = "upload.rejected")]
    UploadRejected,
    /// A share link served a file.
    #[schema(rename = "link.used")]
    LinkUsed,
}

/// `POST /webhooks` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateWebhookRequest {
    /// Where events are sent: `https://` (`http://` too with `webhooks.allow_http`), a host
    /// name, at most 2048 characters, no credentials. An IP literal or `localhost` is taken
    /// only with `webhooks.allow_private_targets` (and then not stated by the pattern); a name
    /// that resolves to a loopback, private, link-local or otherwise special address is
    /// refused at every delivery.
    #[schema(
        example = "https://backend.example.com/coffer-events",
        max_length = 2048,
        pattern = r"^https://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[^\s]*)?$"
    )]
    url: String,
    /// The event types to receive (at least one); omitted = all of them.
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1, example = json!(["file.created", "file.deleted"]))]
    events: Option<Vec<String>>,
}

/// A new webhook, with its secret shown this once.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedWebhook {
    /// Id.
    id: WebhookId,
    /// Where events are sent.
    url: String,
    /// The event types it receives.
    events: Vec<String>,
    /// The signing secret (`whsec_` + base64 of 32 bytes), for a Standard Webhooks verifier.
    /// It cannot be shown again.
    secret: String,
    /// Creation time.
    created_at: Timestamp,
}

/// Register a webhook for the caller's files.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Created; the secret is shown once", body = CreatedWebhook),
        (status = 422, description = "A URL or event type that is refused", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn create_webhook(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    AppJson(req): AppJson<CreateWebhookRequest>,
) -> AppResult<impl IntoResponse> {
    let (hook, secret) = state
        .webhooks
        .create(principal.user_id, &req.url, req.events.as_deref())
        .await?;
    // The URL's host and the types, never the secret (nor the URL's path or query, which
    // may carry the backend's own token).
    state.audit.record(
        Record::new(Event::WebhookCreate)
            .actor(principal.user_id)
            .subject(hook.id)
            .ip(ip)
            .detail(serde_json::json!({
                "host": crate::events::hooks::url_host(&hook.url),
                "events": hook.events,
            })),
    );
    let body = CreatedWebhook {
        id: hook.id,
        url: hook.url,
        events: hook.events,
        secret,
        created_at: hook.created_at,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// The caller's webhooks.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookList {
    /// Newest first; never a secret.
    items: Vec<Webhook>,
}

/// List the caller's webhooks (without secrets).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The caller's webhooks", body = WebhookList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_webhooks(
    State(state): State<AppState>,
    principal: Principal,
) -> AppResult<Json<WebhookList>> {
    let items = state.meta.outbox().list_webhooks(principal.user_id).await?;
    Ok(Json(WebhookList { items }))
}

/// Delete one of the caller's webhooks (its pending deliveries go with it).
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted")),
    security(("bearer" = []), ("api_key" = [])))]
async fn delete_webhook(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    let id = WebhookId::parse(&id).ok_or(AppError::NotFound)?;
    if !state
        .meta
        .outbox()
        .delete_webhook(id, principal.user_id)
        .await?
    {
        return Err(AppError::NotFound);
    }
    state.audit.record(
        Record::new(Event::WebhookDelete)
            .actor(principal.user_id)
            .subject(id)
            .ip(ip),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// A page of a webhook's delivery log.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    /// Newest event first.
    items: Vec<Delivery>,
    /// The next page's cursor, or null.
    next_cursor: Option<String>,
}

/// The delivery log of one of the caller's webhooks, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), SeqPageQuery),
    responses((status = 200, description = "A page of deliveries", body = DeliveryList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<SeqPageQuery>,
) -> AppResult<Json<DeliveryList>> {
    let id = WebhookId::parse(&id).ok_or(AppError::NotFound)?;
    let limit = q.limit()?;
    let before = q.before()?;
    let page = state
        .meta
        .outbox()
        .deliveries(id, principal.user_id, before, limit)
        .await?
        .ok_or(AppError::NotFound)?;
    let next_cursor = next_cursor(&page, |d| encode_seq(d.seq));
    Ok(Json(DeliveryList {
        items: page.items,
        next_cursor,
    }))
}

/// Send an event to one of the caller's webhooks again, now (also one delivered or given
/// up).
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{event_id}/retry", tag = "webhooks",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("event_id" = String, Path, description = "Event id (`evt_...`)"),
    ),
    responses((status = 202, description = "Due now")),
    security(("bearer" = []), ("api_key" = [])))]
async fn retry_delivery(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, event_id)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    let id = WebhookId::parse(&id).ok_or(AppError::NotFound)?;
    if event_id.len() > 64 {
        return Err(AppError::NotFound);
    }
    if !state
        .meta
        .outbox()
        .retry(id, principal.user_id, event_id, Timestamp::now())
        .await?
    {
        return Err(AppError::NotFound);
    }
    Ok(StatusCode::ACCEPTED)
}
