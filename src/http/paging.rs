//! Listings: `?limit=&cursor=` and keyset cursors, written once for every list route.
//!
//! Invariant: a cursor is opaque to clients, and the OpenAPI document states exactly which
//! strings are cursors (a pattern): every string it allows is a position in the listing (a page,
//! possibly empty) and anything else is a 400, never a database error. `limit` is 1-1000 (422
//! otherwise), 50 by default.

use crate::http::error::AppError;
use crate::ids::Timestamp;
use crate::meta::Page;

/// `?limit=&cursor=` for listings ordered by creation time (files, users).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size, 1-1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<String>,
    /// The `next_cursor` of the previous page: a position, `<created_at>.<id>`.
    #[param(
        min_length = 1,
        max_length = 55,
        pattern = r"^[0-9]{1,18}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    pub(crate) cursor: Option<String>,
}

/// `?limit=&cursor=` for listings ordered by sequence number (the audit trail).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SeqPageQuery {
    /// Page size, 1-1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<String>,
    /// The `next_cursor` of the previous page: a position, a sequence number.
    #[param(min_length = 1, max_length = 18, pattern = r"^[0-9]{1,18}$")]
    pub(crate) cursor: Option<String>,
}

/// Default and largest page sizes.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// The largest page.
pub(crate) const MAX_LIMIT: usize = 1000;

impl PageQuery {
    /// The validated page size.
    pub(crate) fn limit(&self) -> Result<usize, AppError> {
        limit(self.limit.as_deref())
    }
}

impl SeqPageQuery {
    /// The validated page size.
    pub(crate) fn limit(&self) -> Result<usize, AppError> {
        limit(self.limit.as_deref())
    }

    /// The sequence number the cursor names (400 when it is not a cursor).
    pub(crate) fn before(&self) -> Result<Option<i64>, AppError> {
        self.cursor.as_deref().map(decode_seq).transpose()
    }
}

fn limit(raw: Option<&str>) -> Result<usize, AppError> {
    match raw.map(|s| s.trim().parse::<usize>()) {
        None => Ok(DEFAULT_LIMIT),
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(AppError::field(
            "limit",
            "must be an integer between 1 and 1000",
        )),
    }
}

fn bad() -> AppError {
    AppError::BadRequest("invalid cursor".into())
}

/// 1 to 18 ASCII digits (so it always fits an `i64`).
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A sequence cursor, as [`SeqPageQuery`] states it.
pub(crate) fn decode_seq(cursor: &str) -> Result<i64, AppError> {
    digits(cursor).ok_or_else(bad)
}

/// Encode a sequence cursor.
pub(crate) fn encode_seq(seq: i64) -> String {
    seq.to_string()
}

/// A `(created_at, id)` keyset cursor, as [`PageQuery`] states it (`parse` reads the id).
pub(crate) fn decode_time_cursor<I>(
    cursor: &str,
    parse: impl Fn(&str) -> Option<I>,
) -> Result<(Timestamp, I), AppError> {
    let (at, id) = cursor.split_once('.').ok_or_else(bad)?;
    let at = digits(at).ok_or_else(bad)?;
    // The id as the document states it: lower-case hex (ids are always written that way).
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    let id = parse(id).ok_or_else(bad)?;
    Ok((Timestamp(at), id))
}

/// Encode a `(created_at, id)` cursor.
pub(crate) fn encode_time_cursor(at: Timestamp, id: impl std::fmt::Display) -> String {
    format!("{}.{id}", at.0)
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
        let id = "0193a1b2-0000-7000-8000-00000000000a";
        let c = encode_time_cursor(Timestamp(42), id);
        assert_eq!(
            decode_time_cursor(&c, |s| Some(s.to_owned())).unwrap(),
            (Timestamp(42), id.to_owned())
        );
        assert_eq!(decode_seq(&encode_seq(7)).unwrap(), 7);
        for bad in ["", "!!!", "-1", "1234567890123456789", "x.y", "1.X"] {
            assert!(decode_seq(bad).is_err(), "{bad}");
            assert!(
                decode_time_cursor(bad, |s| (s.len() == 36).then_some(())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_string_the_document_calls_a_cursor_is_one() {
        // The edges of the patterns the document states (see the `#[param]`s above).
        let uuid = "ffffffff-ffff-ffff-ffff-ffffffffffff";
        for at in ["0", "999999999999999999"] {
            let c = format!("{at}.{uuid}");
            assert!(
                decode_time_cursor(&c, crate::ids::FileId::parse).is_ok(),
                "{c}"
            );
            assert!(decode_seq(at).is_ok(), "{at}");
        }
    }
}
