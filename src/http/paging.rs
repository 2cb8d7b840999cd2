//! Listings: `?limit=&cursor=` and opaque keyset cursors, written once for every list route.
//!
//! Invariant: a cursor is opaque to clients (base64url of a versioned text) and anything that
//! is not one this server made is a 400, never a database error; `limit` is 1-1000 (422
//! otherwise), 50 by default.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::http::error::AppError;
use crate::ids::Timestamp;
use crate::meta::Page;

/// `?limit=&cursor=` for listings.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size, 1-1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub(crate) cursor: Option<String>,
}

/// Default and largest page sizes.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// The largest page.
pub(crate) const MAX_LIMIT: usize = 1000;

impl PageQuery {
    /// The validated page size.
    pub(crate) fn limit(&self) -> Result<usize, AppError> {
        match self.limit.as_deref().map(|s| s.trim().parse::<usize>()) {
            None => Ok(DEFAULT_LIMIT),
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(AppError::field(
                "limit",
                "must be an integer between 1 and 1000",
            )),
        }
    }
}

/// Opaque cursors: base64url of `v1:<text>`.
pub(crate) fn encode_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{text}"))
}

/// Decode a cursor made by [`encode_cursor`] (400 otherwise).
pub(crate) fn decode_cursor(cursor: &str) -> Result<String, AppError> {
    let bad = || AppError::BadRequest("invalid cursor".into());
    if cursor.len() > 256 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    text.strip_prefix("v1:").map(str::to_owned).ok_or_else(bad)
}

/// A `(created_at, id)` keyset cursor.
pub(crate) fn decode_time_cursor<I>(
    cursor: &str,
    parse: impl Fn(&str) -> Option<I>,
) -> Result<(Timestamp, I), AppError> {
    let text = decode_cursor(cursor)?;
    let (at, id) = text
        .split_once('/')
        .ok_or_else(|| AppError::BadRequest("invalid cursor".into()))?;
    let at = at
        .parse::<i64>()
        .map_err(|_| AppError::BadRequest("invalid cursor".into()))?;
    let id = parse(id).ok_or_else(|| AppError::BadRequest("invalid cursor".into()))?;
    Ok((Timestamp(at), id))
}

/// Encode a `(created_at, id)` cursor.
pub(crate) fn encode_time_cursor(at: Timestamp, id: impl std::fmt::Display) -> String {
    encode_cursor(&format!("{}/{id}", at.0))
}

/// The cursor of the page after `page`, or `None` on the last page.
pub(crate) fn next_cursor<T>(page: &Page<T>, cursor_of: impl Fn(&T) -> String) -> Option<String> {
    if page.more {
        page.items.last().map(cursor_of)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_time_cursor(Timestamp(42), "x");
        assert_eq!(
            decode_time_cursor(&c, |s| Some(s.to_owned())).unwrap(),
            (Timestamp(42), "x".to_owned())
        );
        assert!(decode_cursor("!!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("v2:x")).is_err());
    }
}
