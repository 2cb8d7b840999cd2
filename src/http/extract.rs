//! Extractors: strict JSON bodies and the authenticated [`Principal`].
//!
//! Invariant: credentials are read from `Authorization: Bearer` and `X-API-Key` only (never a
//! query string or cookie); a request only becomes a `Principal` after its token's signature,
//! expiry, type and revocation state, or its API key's hash and expiry, were checked against
//! the database. The role comes from the database on every request.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::PartialSchema;
use utoipa::openapi::{RefOr, Schema};

use crate::state::AppState;
use std::time::Duration;

use crate::auth::api_key;
use crate::auth::cache::{Cached, CachedVia};
use crate::auth::token_hash;
use crate::error::{AppError, FieldError};
use crate::ids::{ApiKeyId, SessionId, Timestamp, UserId};
use crate::meta::users::Role;

/// A JSON body: `application/json` only (415 otherwise), syntax errors 400, missing or unknown
/// fields and wrong types 422 naming the field.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned + PartialSchema, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(AppError::UnsupportedMediaType(
                "the body must be application/json".into(),
            ));
        }
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|e| match e.status().as_u16() {
                    413 => AppError::PayloadTooLarge { limit: 0 },
                    _ => AppError::BadRequest("the body could not be read".into()),
                })?;
        parse(&bytes).map(Self)
    }
}

/// `application/json` or `application/*+json`, parameters aside.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A JSON body as `T`, strictly: straight from the bytes, so unknown fields, duplicate keys
/// and wrong types are refused by serde itself. A body whose schema is an object must be a
/// JSON object (serde would also take a struct's fields from an array), and every required
/// field it lacks is named, not only the first.
fn parse<T: DeserializeOwned + PartialSchema>(bytes: &[u8]) -> Result<T, AppError> {
    let not_json = || AppError::BadRequest("the body is not valid JSON".into());
    let schema = match T::schema() {
        RefOr::T(Schema::Object(o)) => Some(o),
        _ => None,
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if schema.is_some() && first != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Err(AppError::Validation(vec![FieldError::new(
                "body",
                "must be an object",
            )])),
            Err(_) => Err(not_json()),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let e = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => return de.end().map(|()| v).map_err(|_| not_json()),
        Err(e) => e,
    };
    if !e.inner().is_data() {
        return Err(not_json());
    }
    let mut errors = vec![data_error(&e.to_string())];
    if errors.iter().any(|f| f.message == "is required")
        && let (Some(schema), Ok(Value::Object(present))) =
            (schema, serde_json::from_slice::<Value>(bytes))
    {
        errors = schema
            .required
            .iter()
            .filter(|f| !present.contains_key(f.as_str()))
            .map(|f| FieldError::new(f.clone(), "is required"))
            .collect();
    }
    Err(AppError::Validation(errors))
}

/// Turn serde's message into a field error. serde names the field in backticks for missing
/// and unknown fields, and `path_to_error` gives the path for type errors ("<path>: <msg>",
/// or only "<msg>" for the body itself).
fn data_error(detail: &str) -> FieldError {
    let named = |marker: &str| {
        detail
            .split_once(marker)
            .and_then(|(_, rest)| rest.split('`').next())
            .map(str::to_owned)
    };
    let (field, message) = if let Some(f) = named("unknown field `") {
        (f, "unknown field".to_owned())
    } else if let Some(f) = named("duplicate field `") {
        (f, "is given more than once".to_owned())
    } else if let Some(f) = named("missing field `") {
        (f, "is required".to_owned())
    } else if let Some((path, msg)) = detail
        .split_once(": ")
        // Without a path, the body itself has the wrong type.
        .map(|(p, m)| {
            if p.starts_with("invalid ") {
                ("body", detail)
            } else {
                (p, m)
            }
        })
    {
        let msg = msg.split(" at line ").next().unwrap_or(msg);
        // "invalid type: string \"x\", expected u64": say what was expected, not what was sent.
        let msg = msg.split_once("expected ").map_or(msg, |(_, want)| want);
        (path.to_owned(), format!("must be {}", json_kind(msg)))
    } else {
        ("body".to_owned(), "has the wrong shape".to_owned())
    };
    // Never echo long client text back.
    let message: String = message.chars().take(120).collect();
    FieldError::new(field.chars().take(64).collect::<String>(), message)
}

/// serde's name for what it expected, in JSON's words: never a Rust type name.
fn json_kind(expected: &str) -> std::borrow::Cow<'_, str> {
    // An enum: serde lists the accepted values in backticks.
    if expected.contains('`') {
        return format!("one of {expected}").into();
    }
    std::borrow::Cow::Borrowed(match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "a string" => expected,
        e if e.starts_with("struct ") || e.starts_with("a map") => "an object",
        e if e.starts_with("a sequence") || e.starts_with("a tuple") => "an array",
        _ => "of another type",
    })
}

/// How the caller authenticated.
#[derive(Debug, Clone)]
pub enum Via {
    /// An access token.
    Token {
        /// Its login.
        session: SessionId,
        /// Its id.
        jti: String,
        /// Its expiry.
        expires_at: Timestamp,
    },
    /// An API key.
    ApiKey(ApiKeyId),
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Who.
    pub user_id: UserId,
    /// Their role now.
    pub role: Role,
    /// With what.
    pub via: Via,
}

impl Principal {
    /// Admins only, logged in (403 otherwise): an API key acts as its owner for files and
    /// links, never with the owner's admin powers, so a leaked backend key cannot promote,
    /// delete users or read the audit trail.
    pub fn require_admin(&self) -> Result<(), AppError> {
        match (self.role, &self.via) {
            (Role::Admin, Via::Token { .. }) => Ok(()),
            (Role::Admin, Via::ApiKey(_)) => Err(AppError::Forbidden(
                "administration needs a login, not an API key",
            )),
            (Role::User, _) => Err(AppError::Forbidden("administrators only")),
        }
    }

    /// Routes that manage credentials need a login, not an API key (403 otherwise).
    pub fn require_token(&self) -> Result<(SessionId, &str, Timestamp), AppError> {
        match &self.via {
            Via::Token {
                session,
                jti,
                expires_at,
            } => Ok((*session, jti, *expires_at)),
            Via::ApiKey(_) => Err(AppError::Forbidden(
                "API keys cannot manage credentials; log in",
            )),
        }
    }

    /// The owner filter for file lookups: logged-in admins see everyone's files; an API key
    /// sees its owner's.
    pub fn file_scope(&self) -> Option<UserId> {
        match (self.role, &self.via) {
            (Role::Admin, Via::Token { .. }) => None,
            _ => Some(self.user_id),
        }
    }
}

const BAD_CREDENTIALS: AppError = AppError::Unauthorized("missing, invalid or expired credentials");

impl FromRequestParts<AppState> for Principal {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let bearer = parts.headers.get(header::AUTHORIZATION);
        let key = parts.headers.get("x-api-key");
        let principal = match (bearer, key) {
            (Some(_), Some(_)) => {
                return Err(AppError::Unauthorized("send one credential, not two"));
            }
            (Some(v), None) => {
                let token = v
                    .to_str()
                    .ok()
                    .and_then(bearer_token)
                    .ok_or(BAD_CREDENTIALS)?;
                from_token(state, token).await?
            }
            (None, Some(v)) => {
                from_api_key(state, v.to_str().map_err(|_| BAD_CREDENTIALS)?).await?
            }
            (None, None) => return Err(AppError::Unauthorized("authentication required")),
        };
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn from_token(state: &AppState, token: &str) -> Result<Principal, AppError> {
    // Signature, algorithm, issuer, expiry and type: checked on every request, cache or not.
    let access = state.tokens.verify(token).map_err(|_| BAD_CREDENTIALS)?;
    let (session, user) = (access.session, access.user);
    let key = [b"t:".as_slice(), access.jti.as_bytes()].concat();
    let role = match state.principals.get(&key) {
        Some(Cached {
            user: u,
            role,
            via: CachedVia::Session(s),
        }) if u == user && s == session => role,
        _ => {
            let epoch = state.principals.epoch();
            let role = state
                .meta
                .sessions()
                .live_principal(session, user, access.jti.clone(), Timestamp::now())
                .await?
                .ok_or(BAD_CREDENTIALS)?;
            let left = time_left(access.expires_at);
            state.principals.put(
                key,
                Cached {
                    user,
                    role,
                    via: CachedVia::Session(session),
                },
                epoch,
                left,
            );
            role
        }
    };
    Ok(Principal {
        user_id: user,
        role,
        via: Via::Token {
            session,
            jti: access.jti,
            expires_at: access.expires_at,
        },
    })
}

fn time_left(until: Timestamp) -> Duration {
    Duration::from_micros(u64::try_from(until.0.saturating_sub(Timestamp::now().0)).unwrap_or(0))
}

async fn from_api_key(state: &AppState, key: &str) -> Result<Principal, AppError> {
    let key = key.trim().to_owned();
    let prefix = api_key::prefix_of(&key).ok_or(BAD_CREDENTIALS)?.to_owned();
    // Keyed by the hash of the whole key: only the exact key can ever hit.
    let cache_key = [b"k:".as_slice(), &token_hash(&key)].concat();
    if let Some(Cached {
        user,
        role,
        via: CachedVia::ApiKey(id),
    }) = state.principals.get(&cache_key)
    {
        return Ok(Principal {
            user_id: user,
            role,
            via: Via::ApiKey(id),
        });
    }
    let epoch = state.principals.epoch();
    let found = state.meta.api_keys().find_by_prefix(&prefix).await?;
    let Some(found) = found else {
        // Same work as a hit, so timing does not reveal which prefixes exist.
        let _ = api_key::matches(&key, &[0; 32]);
        return Err(BAD_CREDENTIALS);
    };
    let now = Timestamp::now();
    if !api_key::matches(&key, &found.hash) || found.expires_at.is_some_and(|e| e <= now) {
        return Err(BAD_CREDENTIALS);
    }
    let left = found.expires_at.map_or(Duration::MAX, time_left);
    let value = Cached {
        user: found.user_id,
        role: found.role,
        via: CachedVia::ApiKey(found.id),
    };
    state.principals.put(cache_key, value, epoch, left);
    Ok(Principal {
        user_id: found.user_id,
        role: found.role,
        via: Via::ApiKey(found.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        username: String,
        password: String,
        days: Option<i64>,
        tags: Option<Vec<String>>,
        kind: Option<Kind>,
    }

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        User,
        Admin,
    }

    fn raw_errors(body: &str) -> Vec<(String, String)> {
        match parse::<Body>(body.as_bytes()) {
            Err(AppError::Validation(v)) => v.into_iter().map(|e| (e.field, e.message)).collect(),
            other => panic!("not a validation error: {:?}", other.map(|_| ())),
        }
    }

    fn errors(body: Value) -> Vec<(String, String)> {
        raw_errors(&body.to_string())
    }

    #[test]
    fn serde_errors_name_the_field() {
        let pair = |f: &str, m: &str| (f.to_owned(), m.to_owned());
        assert!(parse::<Body>(br#"{"username": "a", "password": "b"}"#).is_ok());
        // Not JSON, or trailing garbage: 400, not 422.
        for bad in [
            &b"{"[..],
            b"{\"username\": \"a\", \"password\": \"b\"} x",
            b"[1,",
        ] {
            assert!(matches!(parse::<Body>(bad), Err(AppError::BadRequest(_))));
        }
        // A key given twice is refused, not resolved one way or the other.
        let dup = raw_errors(r#"{"username": "a", "password": "b", "password": "c"}"#);
        assert_eq!(dup, [pair("password", "is given more than once")]);
        // Unknown fields are named before missing ones.
        assert_eq!(
            raw_errors(r#"{"usernme": "a"}"#),
            [pair("usernme", "unknown field")]
        );
        assert_eq!(
            errors(json!({})),
            [
                pair("username", "is required"),
                pair("password", "is required")
            ]
        );
        assert_eq!(
            errors(json!({"username": "a", "password": "b", "role": "admin"})),
            [pair("role", "unknown field")]
        );
        assert_eq!(
            errors(json!({"username": 5, "password": "b"})),
            [pair("username", "must be a string")]
        );
        // Never a Rust type name.
        assert_eq!(
            errors(json!({"username": "a", "password": "b", "days": "5"})),
            [pair("days", "must be an integer")]
        );
        assert_eq!(
            errors(json!({"username": "a", "password": "b", "tags": "x"})),
            [pair("tags", "must be an array")]
        );
        assert_eq!(errors(json!([1, 2])), [pair("body", "must be an object")]);
        assert_eq!(
            errors(json!({"username": "a", "password": "b", "kind": "root"})),
            [pair("kind", "must be one of `user` or `admin`")]
        );
    }
}
