//! Administration: users and the audit trail (role `admin`).
//!
//! Invariant: authorisation is checked in each handler, in view of the reader: first line,
//! `principal.require_admin()?`. No route edits the audit trail.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::principal::Principal;
use crate::http::error::{AppError, AppResult};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::http::paging::{
    PageQuery, SeqPageQuery, decode_time_cursor, encode_seq, encode_time_cursor, next_cursor,
};
use crate::ids::UserId;
use crate::meta::audit::AuditEntry;
use crate::meta::users::{Role, RoleChange, User};
use crate::removal;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(delete_user))
        .routes(routes!(set_role))
        .routes(routes!(list_audit))
}

/// A page of users.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserList {
    /// Newest first.
    items: Vec<User>,
    /// The next page's cursor, or null.
    next_cursor: Option<String>,
}

/// All accounts, newest first.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin",
    params(PageQuery),
    responses((status = 200, description = "A page of users", body = UserList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> AppResult<Json<UserList>> {
    principal.require_admin()?;
    let limit = q.limit()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| decode_time_cursor(c, UserId::parse))
        .transpose()?;
    let page = state.meta.users().list(after, limit).await?;
    let next_cursor = next_cursor(&page, |u| encode_time_cursor(u.created_at, u.id));
    Ok(Json(UserList {
        items: page.items,
        next_cursor,
    }))
}

/// Delete an account with all its files, links, keys and logins.
#[utoipa::path(delete, path = "/api/v1/admin/users/{id}", tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "The last administrator", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn delete_user(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    principal.require_admin()?;
    let id = UserId::parse(&id).ok_or(AppError::NotFound)?;
    // In its own task: a client that gives up (or a request timeout) must not stop a
    // deletion halfway.
    let task_state = state.clone();
    let files = tokio::spawn(async move {
        let s = &task_state;
        // The account's credentials die with the lock (the engine announces it to every
        // node's cache), not when its last file is gone.
        removal::remove_user(&s.meta, &s.blobs, id).await
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))??;
    state.audit.record(
        Record::new(Event::AdminUserDelete)
            .actor(principal.user_id)
            .subject(id)
            .ip(ip)
            .detail(serde_json::json!({ "files_deleted": files })),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/users/{id}/role` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleRequest {
    /// The new role.
    role: Role,
}

/// Promote or demote an account. Takes effect on its live tokens at once (roles are read on
/// every request); demoting the last administrator is refused.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/role", tag = "admin",
    params(("id" = String, Path, description = "User id")),
    request_body = RoleRequest,
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 409, description = "The last administrator", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("api_key" = [])))]
async fn set_role(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
    Path(id): Path<String>,
    AppJson(req): AppJson<RoleRequest>,
) -> AppResult<Json<User>> {
    principal.require_admin()?;
    let id = UserId::parse(&id).ok_or(AppError::NotFound)?;
    let role = req.role;
    let user = match state.meta.users().set_role(id, role).await? {
        RoleChange::Changed(user) => user,
        RoleChange::NoUser => return Err(AppError::NotFound),
        RoleChange::LastAdmin => {
            return Err(AppError::Conflict(
                "cannot demote the last administrator".into(),
            ));
        }
    };
    state.audit.record(
        Record::new(Event::AdminUserRole)
            .actor(principal.user_id)
            .subject(id)
            .ip(ip)
            .detail(serde_json::json!({ "role": role.as_str() })),
    );
    Ok(Json(user))
}

/// A page of audit entries.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditList {
    /// Newest first.
    items: Vec<AuditEntry>,
    /// The next page's cursor, or null.
    next_cursor: Option<String>,
}

/// The security audit trail, newest first.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin",
    params(SeqPageQuery),
    responses((status = 200, description = "A page of audit entries", body = AuditList)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_audit(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<SeqPageQuery>,
) -> AppResult<Json<AuditList>> {
    principal.require_admin()?;
    let limit = q.limit()?;
    let before = q.before()?;
    // What was recorded before this request is in the answer.
    state.audit.flush().await;
    let page = state.meta.audit().list(before, limit).await?;
    let next_cursor = next_cursor(&page, |e| encode_seq(e.seq));
    Ok(Json(AuditList {
        items: page.items.into_iter().map(|e| e.entry).collect(),
        next_cursor,
    }))
}
