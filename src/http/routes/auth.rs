//! Accounts and tokens: register, login, refresh, logout, me.
//!
//! Invariant: a failed login answers with the same status and body after the same work
//! whatever the account's state (unknown, locked, hashed with older argon2 parameters): the
//! same database reads, and argon2 work for every cost in use (see `auth::password`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{Event, Record};
use crate::auth::accounts::{self, NewAccount};
use crate::auth::cache::Revoked;
use crate::auth::principal::Principal;
use crate::auth::token_hash;
use crate::error::{AppError, AppResult};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::ids::{SessionId, Timestamp, UserId};
use crate::meta::sessions::{NewSession, Rotation};
use crate::meta::users::{ForLogin, Role, User};
use crate::state::AppState;

/// Routes that spend the login budget.
pub(crate) fn login_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
}

/// The other account routes.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// `POST /auth/register` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3-50 of `[A-Za-z0-9_]`.
    #[schema(example = "alice")]
    username: String,
    /// An email address.
    #[schema(example = "alice@example.com")]
    email: String,
    /// Per the password policy.
    #[schema(example = "Correct-Horse-9")]
    password: String,
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = User),
        (status = 403, description = "Registration is closed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Username or email taken", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    body: Result<AppJson<RegisterRequest>, AppError>,
) -> AppResult<impl IntoResponse> {
    // Closed is closed, whatever the body says.
    if !state.config.auth.open_registration {
        return Err(AppError::Forbidden("registration is closed"));
    }
    let AppJson(req) = body?;
    let account = NewAccount {
        username: req.username,
        email: req.email,
        password: SecretString::from(req.password),
        role: Role::User,
    };
    let user = accounts::create(&state.meta, &state.passwords, &state.config.auth, account).await?;
    state.audit.record(
        Record::new(Event::Register)
            .actor(user.id)
            .subject(user.id)
            .ip(ip),
    );
    Ok((StatusCode::CREATED, Json(user)))
}

/// `POST /auth/login` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The username (case-insensitive).
    username: String,
    /// The password.
    password: String,
}

/// A token pair.
#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    /// The JWT to send as `Authorization: Bearer`.
    access_token: String,
    /// Opaque; exchange at `/auth/refresh`. Each use rotates it.
    refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
}

const BAD_LOGIN: AppError = AppError::Unauthorized("invalid username or password");

/// Exchange a username and password for tokens.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "Logged in", body = TokenPair)))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(req): AppJson<LoginRequest>,
) -> AppResult<Json<TokenPair>> {
    let username: String = req.username.chars().take(64).collect();
    if let Err(wait) = state.throttle.check(&username, ip) {
        return Err(AppError::TooManyRequests {
            retry_after_secs: wait,
        });
    }
    let ForLogin {
        credentials: creds,
        costs,
    } = state.meta.users().for_login(&username).await?;
    let stored = creds.as_ref().map(|c| c.password_hash.clone());
    let password = SecretString::from(req.password);
    let verdict = state
        .passwords
        .verify(password.clone(), stored, costs)
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    let Some(creds) = creds.as_ref().filter(|_| verdict.ok) else {
        state.throttle.failed(&username, ip);
        // Name the account only when it exists: people type passwords into the username
        // field, and those must not end up in the trail.
        let mut record = Record::new(Event::LoginFailed).ip(ip);
        if let Some(c) = &creds {
            record = record
                .subject(c.user.id)
                .detail(serde_json::json!({ "username": c.user.username }));
        }
        state.audit.record(record);
        return Err(BAD_LOGIN);
    };
    state.throttle.succeeded(&username, ip);
    let user = creds.user.id;
    if verdict.needs_rehash {
        upgrade_hash(&state, user, password);
    }
    let pair = start_session(&state, user).await?;
    state
        .audit
        .record(Record::new(Event::Login).actor(user).subject(user).ip(ip));
    Ok(Json(pair))
}

/// Store a hash with the current parameters, off the request path.
fn upgrade_hash(state: &AppState, user: UserId, password: SecretString) {
    let state = state.clone();
    tokio::spawn(async move {
        match state.passwords.hash(password).await {
            Ok(hash) => {
                if let Err(e) = state.meta.users().set_password_hash(user, hash).await {
                    tracing::warn!(error = %e, "cannot store the upgraded password hash");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot upgrade a password hash"),
        }
    });
}

async fn start_session(state: &AppState, user: UserId) -> AppResult<TokenPair> {
    let now = Timestamp::now();
    let session = SessionId::new();
    let refresh = state.refresh_tokens.first();
    state
        .meta
        .sessions()
        .create(NewSession {
            id: session,
            user,
            refresh_hash: token_hash(&refresh),
            created_at: now,
            expires_at: now.plus_secs(state.config.auth.refresh_ttl_secs),
        })
        .await?;
    pair(state, user, session, refresh, now)
}

fn pair(
    state: &AppState,
    user: UserId,
    session: SessionId,
    refresh: String,
    now: Timestamp,
) -> AppResult<TokenPair> {
    let access = state
        .tokens
        .issue(user, session, now)
        .map_err(|e| AppError::Internal(e.into()))?;
    Ok(TokenPair {
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer",
        expires_in: state.tokens.ttl_secs(),
    })
}

/// `POST /auth/refresh` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The current refresh token.
    refresh_token: String,
}

/// Rotate a refresh token: the old one is spent, a new pair is returned. Presenting a spent
/// token revokes its whole login, unless `auth.refresh_reuse_grace_secs` is set and it is the
/// token rotated last, within that many seconds: then the answer is the same new refresh
/// token (with a fresh access token of the same login).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 200, description = "A new token pair", body = TokenPair)))]
async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    AppJson(req): AppJson<RefreshRequest>,
) -> AppResult<Json<TokenPair>> {
    if headers.contains_key("x-api-key") {
        return Err(AppError::Forbidden("API keys cannot refresh tokens"));
    }
    let now = Timestamp::now();
    let old = token_hash(&req.refresh_token);
    // Derived, not drawn: a replay within the grace period recomputes the same token.
    let fresh = state.refresh_tokens.next(&req.refresh_token);
    let new = token_hash(&fresh);
    let expires = now.plus_secs(state.config.auth.refresh_ttl_secs);
    let grace = state.config.auth.refresh_reuse_grace_secs;
    let grace_since = (grace > 0).then(|| now.minus_secs(grace));
    let rotation = state
        .meta
        .sessions()
        .rotate(old, new, now, expires, grace_since)
        .await?;
    match rotation {
        Rotation::Rotated { session, user } | Rotation::Replayed { session, user } => {
            let mut record = Record::new(Event::Refresh)
                .actor(user)
                .subject(session)
                .ip(ip);
            if matches!(rotation, Rotation::Replayed { .. }) {
                record = record.detail(serde_json::json!({ "replayed_within_grace": true }));
            }
            state.audit.record(record);
            Ok(Json(pair(&state, user, session, fresh, now)?))
        }
        Rotation::Reused { session, user } => {
            state.principals.invalidate(Revoked::Session(session));
            state.audit.record(
                Record::new(Event::RefreshReuse)
                    .subject(session)
                    .actor(user)
                    .ip(ip)
                    .detail(serde_json::json!({ "action": "login revoked" })),
            );
            Err(AppError::Unauthorized(
                "refresh token already used; the login has been revoked",
            ))
        }
        Rotation::Invalid => Err(AppError::Unauthorized("invalid or expired refresh token")),
    }
}

/// End the calling login: its access and refresh tokens stop working at once.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "Logged out")),
    security(("bearer" = [])))]
async fn logout(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Principal,
) -> AppResult<StatusCode> {
    let (session, jti, expires_at) = principal.require_token()?;
    state
        .meta
        .sessions()
        .logout(session, jti.to_owned(), expires_at, Timestamp::now())
        .await?;
    state.principals.invalidate(Revoked::Session(session));
    state.audit.record(
        Record::new(Event::Logout)
            .actor(principal.user_id)
            .subject(session)
            .ip(ip),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The calling user.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "auth",
    responses((status = 200, description = "The caller", body = User)),
    security(("bearer" = []), ("api_key" = [])))]
async fn me(State(state): State<AppState>, principal: Principal) -> AppResult<Json<User>> {
    let user = state
        .meta
        .users()
        .get(principal.user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(user))
}
