//! Accounts and tokens: register, login, refresh, logout, me. The work (and the audit
//! entries) is `auth::sessions`; these handlers turn its outcomes into answers.
//!
//! Invariant: a refused login is one answer (401 "invalid username or password") whatever the
//! account's state; `auth::sessions` makes it the same work too.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::accounts::NewAccount;
use crate::auth::principal::Principal;
use crate::auth::sessions::{LoginOutcome, RefreshOutcome, Tokens};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::AppJson;
use crate::http::middleware::client_ip::ClientIp;
use crate::meta::users::{Role, User};
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
pub(crate) struct RegisterRequest {
    /// 3-50 of `[A-Za-z0-9_]`.
    #[schema(
        example = "alice",
        min_length = 3,
        max_length = 50,
        pattern = "^[A-Za-z0-9_]{3,50}$"
    )]
    username: String,
    /// An email address. The server accepts dotted local parts too (`a.b@example.com`);
    /// the pattern states a simpler form every address of which it accepts.
    #[schema(
        example = "alice@example.com",
        max_length = 254,
        pattern = r"^[A-Za-z0-9!#$%&*+/=?^_`{|}~-]{1,64}@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,4}[A-Za-z]{2,24}$"
    )]
    email: String,
    /// Per the password policy: the length and the characters it requires are stated by
    /// `minLength`, `maxLength` and `pattern` from the server's configuration; a well-known
    /// common password is refused too.
    #[schema(example = "Correct-Horse-9")]
    password: String,
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = User),
        (status = 403, description = "Registration is closed", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Username or email taken", body = crate::http::error::Problem, content_type = "application/problem+json"),
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
    let user = state.sessions.register(account, ip).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// `POST /auth/login` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// The username (case-insensitive).
    username: String,
    /// The password.
    password: String,
}

/// A token pair.
#[derive(Serialize, ToSchema)]
pub(crate) struct TokenPair {
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

impl From<Tokens> for TokenPair {
    fn from(t: Tokens) -> Self {
        Self {
            access_token: t.access,
            refresh_token: t.refresh,
            token_type: "Bearer",
            expires_in: t.expires_in_secs,
        }
    }
}

/// Exchange a username and password for tokens.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "Logged in", body = TokenPair)))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(req): AppJson<LoginRequest>,
) -> AppResult<Json<TokenPair>> {
    let password = SecretString::from(req.password);
    match state.sessions.login(&req.username, password, ip).await? {
        LoginOutcome::LoggedIn(tokens) => Ok(Json(tokens.into())),
        // One answer whatever the reason.
        LoginOutcome::Refused => Err(AppError::Unauthorized("invalid username or password")),
        LoginOutcome::Throttled { retry_after_secs } => {
            Err(AppError::TooManyRequests { retry_after_secs })
        }
    }
}

/// `POST /auth/refresh` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
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
    match state.sessions.refresh(&req.refresh_token, ip).await? {
        RefreshOutcome::Refreshed(tokens) => Ok(Json(tokens.into())),
        RefreshOutcome::Reused => Err(AppError::Unauthorized(
            "refresh token already used; the login has been revoked",
        )),
        RefreshOutcome::Invalid => Err(AppError::Unauthorized("invalid or expired refresh token")),
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
    let login = principal.require_token()?;
    state.sessions.logout(principal.user_id, login, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The calling user.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "auth",
    responses((status = 200, description = "The caller", body = User)),
    security(("bearer" = []), ("api_key" = [])))]
async fn me(State(state): State<AppState>, principal: Principal) -> AppResult<Json<User>> {
    let user = state
        .profiles
        .user(&state.meta, principal.user_id, principal.role)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(user))
}
