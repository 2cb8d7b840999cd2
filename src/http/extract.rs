//! Extractors: strict JSON bodies, the authenticated [`Principal`] (resolved by
//! `auth::credentials`; this only reads the two headers it looks at), and the [`Uploader`]
//! of an upload route (a principal, or an upload grant resolved by `auth::grant`).
//!
//! Invariant: a JSON body is refused unless it is `application/json` and exactly the type's
//! shape (unknown, duplicate, missing and mistyped fields are named, never guessed at); a
//! request's principal is resolved once, then kept in its extensions.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::PartialSchema;
use utoipa::openapi::{RefOr, Schema};

use crate::auth::AuthError;
use crate::auth::credentials::Header;
use crate::auth::grant;
use crate::auth::principal::Principal;
use crate::http::error::{AppError, FieldError};
use crate::ids::UserId;
use crate::meta::grants::Grant;
use crate::state::AppState;

/// A JSON body: `application/json` only (415 otherwise), syntax errors 400, missing or unknown
/// fields and wrong types 422 naming the field.
pub(crate) struct AppJson<T>(pub T);

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

/// An optional JSON body: a request with no body and no `Content-Type` is `None`, and so is a
/// JSON `null` (the document describes an optional body as nullable); anything else is held
/// to [`AppJson`]'s rules.
impl<T: DeserializeOwned + PartialSchema, S: Send + Sync> axum::extract::OptionalFromRequest<S>
    for AppJson<T>
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let declared = req.headers().contains_key(header::CONTENT_TYPE);
        let json = is_json(req.headers());
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|e| match e.status().as_u16() {
                    413 => AppError::PayloadTooLarge { limit: 0 },
                    _ => AppError::BadRequest("the body could not be read".into()),
                })?;
        if bytes.is_empty() && !declared {
            return Ok(None);
        }
        if !json {
            return Err(AppError::UnsupportedMediaType(
                "the body must be application/json".into(),
            ));
        }
        if bytes.trim_ascii() == b"null" {
            return Ok(None);
        }
        parse(&bytes).map(|v| Some(Self(v)))
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

/// JSON integers as JSON Schema counts them (`"type": "integer"`): `5` and `5.0` alike, since
/// the document promises that any number without a fraction is an integer; never `5.5` or
/// `"5"`. For `#[serde(deserialize_with = "...")]` on `i64` fields.
pub(crate) mod json_int {
    use serde::Deserializer;
    use serde::de::{self, Visitor};

    struct Int;

    impl Visitor<'_> for Int {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // serde's own name, which the field error turns into "an integer".
            f.write_str("i64")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            // Exactly representable and in range: |v| < 2^63.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.is_finite() && v.fract() == 0.0 && v.abs() < LIMIT {
                #[allow(clippy::cast_possible_truncation)]
                Ok(v as i64)
            } else {
                Err(E::invalid_type(de::Unexpected::Float(v), &self))
            }
        }
    }

    struct OptInt;

    impl<'de> Visitor<'de> for OptInt {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("i64")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            required(d).map(Some)
        }
    }

    /// An integer field.
    pub(crate) fn required<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(Int)
    }

    /// An optional integer field (null or absent: `None`; pair with `#[serde(default)]`).
    pub(crate) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_option(OptInt)
    }
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Where a browser puts an upload grant (or the query's `?grant=`, for plain HTML forms).
pub(crate) const UPLOAD_GRANT: HeaderName = HeaderName::from_static("upload-grant");

/// Who is uploading: a principal (bearer token or API key), or an upload grant, which acts
/// as its owner for uploading and for nothing else. Only the upload routes take it; every
/// other route asks for a [`Principal`], which a grant never becomes.
#[derive(Debug, Clone)]
pub(crate) struct Uploader {
    /// Whose file it will be.
    pub(crate) owner: UserId,
    /// The grant it is made with, whose limits apply.
    pub(crate) grant: Option<Grant>,
}

impl Uploader {
    /// Whether this caller may start an upload: any principal; a grant only while it is
    /// neither expired nor used up (401 otherwise). Continuing an upload it started needs
    /// no such check.
    pub(crate) fn require_start(&self) -> Result<(), AppError> {
        match &self.grant {
            Some(g) if !grant::may_start(g, crate::ids::Timestamp::now()) => {
                Err(AppError::Unauthorized(crate::http::error::BAD_GRANT))
            }
            _ => Ok(()),
        }
    }
}

/// The `grant` parameters of a query string (other parameters are the route's business),
/// decoded as a form does. Every one counts, however it is spelled or encoded, so that a
/// query the route's own parser would refuse can never hide a grant.
fn grants_in_query(query: Option<&str>) -> Vec<String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key) == "grant").then(|| decode(value))
        })
        .collect()
}

impl FromRequestParts<AppState> for Uploader {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(u) = parts.extensions.get::<Uploader>() {
            return Ok(u.clone());
        }
        let in_header = parts.headers.get(&UPLOAD_GRANT);
        let mut in_query = grants_in_query(parts.uri.query());
        if in_query.len() > 1 {
            return Err(AuthError::TwoCredentials.into());
        }
        let token = match (in_header, in_query.pop()) {
            (None, None) => {
                let p = Principal::from_request_parts(parts, state).await?;
                return Ok(Self {
                    owner: p.user_id,
                    grant: None,
                });
            }
            (Some(h), None) => h.to_str().map_err(|_| AuthError::Invalid)?.to_owned(),
            (None, Some(q)) => q,
            (Some(_), Some(_)) => return Err(AuthError::TwoCredentials.into()),
        };
        // One credential per request: a grant beside a token or key is refused unread.
        if parts.headers.contains_key(header::AUTHORIZATION)
            || parts.headers.contains_key(&X_API_KEY)
        {
            return Err(AuthError::TwoCredentials.into());
        }
        let found = grant::resolve(&state.meta, &token)
            .await
            .map_err(|e| match e {
                AuthError::Invalid => AppError::Unauthorized(crate::http::error::BAD_GRANT),
                other => other.into(),
            })?;
        let uploader = Self {
            owner: found.owner,
            grant: Some(found.grant),
        };
        parts.extensions.insert(uploader.clone());
        Ok(uploader)
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let read = |name: &HeaderName| match parts.headers.get(name) {
            None => Header::Absent,
            Some(v) => v.to_str().map_or(Header::Unreadable, Header::Value),
        };
        let principal = state
            .credentials
            .authenticate(read(&header::AUTHORIZATION), read(&X_API_KEY))
            .await?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Ints {
        #[serde(deserialize_with = "json_int::required")]
        a: i64,
        #[serde(default, deserialize_with = "json_int::optional")]
        b: Option<i64>,
    }

    fn raw_errors(body: &str) -> Vec<(String, String)> {
        raw_errors_of::<Body>(body)
    }

    fn raw_errors_of<T: DeserializeOwned + PartialSchema + std::fmt::Debug>(
        body: &str,
    ) -> Vec<(String, String)> {
        match parse::<T>(body.as_bytes()) {
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
        // An integer is any number without a fraction, as JSON Schema counts it.
        assert_eq!(
            parse::<Ints>(br#"{"a": 434.0, "b": 7}"#)
                .map(|i| (i.a, i.b))
                .ok(),
            Some((434, Some(7)))
        );
        assert_eq!(
            parse::<Ints>(br#"{"a": 1, "b": null}"#)
                .map(|i| (i.a, i.b))
                .ok(),
            Some((1, None))
        );
        assert_eq!(parse::<Ints>(br#"{"a": 1}"#).map(|i| i.b).ok(), Some(None));
        for bad in [
            r#"{"a": 1.5}"#,
            r#"{"a": "1"}"#,
            r#"{"a": 1e19}"#,
            r#"{"a": 1, "b": 2.5}"#,
        ] {
            let errs = raw_errors_of::<Ints>(bad);
            assert_eq!(errs.len(), 1, "{bad}");
            assert_eq!(errs[0].1, "must be an integer", "{bad}");
        }
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
