//! HTTP semantics of file content (RFC 9110): validators, conditional requests, single byte
//! ranges and `Content-Disposition` (RFC 6266 with RFC 8187 `filename*`). Pure functions,
//! property-tested and fuzzed; `http::content` turns a [`Plan`] into a response.
//!
//! Invariant: a plan never names a byte outside `0..len`; anything that is not exactly one
//! satisfiable or unsatisfiable `bytes` range is served whole, as RFC 9110 section 14.2
//! allows for ranges a server does not support.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::ids::Timestamp;

/// How a `Range` header applies to a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable range: send everything.
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A well-formed range no byte satisfies (416).
    Unsatisfiable,
}

/// Parse a `Range` header for a representation of `len` bytes. Several ranges, other units
/// and malformed values all mean [`RangeSpec::Full`].
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some((unit, set)) = value.split_once('=') else {
        return RangeSpec::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeSpec::Full;
    }
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeSpec::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if len > 0 => RangeSpec::Partial {
                start: len - n.min(len),
                end: len - 1,
            },
            // An empty representation: a non-zero suffix is its only satisfiable range (RFC
            // 9110 section 14.1.1), answered with the whole of it.
            Some(_) => RangeSpec::Full,
            None => RangeSpec::Full,
        },
        // bytes=a-: from a to the end.
        (false, true) => match num(first) {
            Some(a) if a < len => RangeSpec::Partial {
                start: a,
                end: len - 1,
            },
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Full,
        },
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a < len {
                    RangeSpec::Partial {
                        start: a,
                        end: b.min(len - 1),
                    }
                } else {
                    RangeSpec::Unsatisfiable
                }
            }
            _ => RangeSpec::Full,
        },
        (true, true) => RangeSpec::Full,
    }
}

/// The strong entity tag of a file: its quoted SHA-256.
pub fn etag(sha256_hex: &str) -> String {
    format!("\"{sha256_hex}\"")
}

fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// `If-None-Match` (weak comparison, RFC 9110 section 13.1.2): `*` or any listed tag.
pub fn none_match(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || opaque(t) == etag)
}

/// `If-Match` (strong comparison, RFC 9110 section 13.1.1): `*` (the file exists) or a listed
/// tag equal to ours; a weak tag never matches.
pub fn if_match(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag)
}

/// `If-Range` (RFC 9110 section 13.1.5): a strong tag equal to ours, or exactly our date.
pub fn if_range_holds(value: &str, etag: &str, last_modified: &str) -> bool {
    let v = value.trim();
    if v.starts_with('"') {
        v == etag
    } else if v.starts_with("W/") {
        false
    } else {
        v == last_modified
    }
}

/// What to send for a content request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 412: `If-Match` or `If-Unmodified-Since` does not hold.
    PreconditionFailed,
    /// 304.
    NotModified,
    /// 200 with all bytes.
    Full,
    /// 206 with `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416.
    Unsatisfiable,
}

impl Plan {
    /// The byte span to read, as `(start, end_exclusive)`.
    pub fn span(self, len: u64) -> (u64, u64) {
        match self {
            Self::Partial { start, end } => (start, end + 1),
            Self::Full => (0, len),
            Self::NotModified | Self::Unsatisfiable | Self::PreconditionFailed => (0, 0),
        }
    }
}

/// Decide the response from the request's conditional and range headers.
pub fn plan(
    method: &Method,
    headers: &HeaderMap,
    len: u64,
    etag: &str,
    modified: Timestamp,
) -> Plan {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let last_modified = modified.to_http_date();
    let modified_secs = u64::try_from(modified.unix_secs()).unwrap_or(0);
    let date_secs = |v: &str| {
        httpdate::parse_http_date(v).ok().map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    };
    // RFC 9110 section 13.2.2, in its order: If-Match, else If-Unmodified-Since; then
    // If-None-Match, else If-Modified-Since; then If-Range.
    // One list over every line (RFC 9110 section 5.3); lines with no element at all are as
    // good as absent, and a value that is not text matches nothing.
    let if_matches: Vec<&HeaderValue> = headers
        .get_all(header::IF_MATCH)
        .iter()
        .filter(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|e| !e.trim_ascii().is_empty())
        })
        .collect();
    if !if_matches.is_empty() {
        if !if_matches
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| if_match(v, etag)))
        {
            return Plan::PreconditionFailed;
        }
    } else if let Some(since) = text(header::IF_UNMODIFIED_SINCE).and_then(date_secs)
        && modified_secs > since
    {
        return Plan::PreconditionFailed;
    }
    // One list over every line here too.
    let none_matches: Vec<&str> = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !none_matches.is_empty() {
        if none_matches.iter().any(|v| none_match(v, etag)) {
            return Plan::NotModified;
        }
    } else if let Some(since) = text(header::IF_MODIFIED_SINCE).and_then(date_secs)
        && modified_secs <= since
    {
        return Plan::NotModified;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Plan::Full;
    }
    let Some(range) = text(header::RANGE) else {
        return Plan::Full;
    };
    if let Some(ir) = text(header::IF_RANGE)
        && !if_range_holds(ir, etag, &last_modified)
    {
        return Plan::Full;
    }
    match parse_range(range, len) {
        RangeSpec::Full => Plan::Full,
        RangeSpec::Partial { start, end } => Plan::Partial { start, end },
        RangeSpec::Unsatisfiable => Plan::Unsatisfiable,
    }
}

/// `attachment` (the default) or `inline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Save as a file.
    Attachment,
    /// Display in the browser (only for types that are safe to render).
    Inline,
}

/// Types a browser renders without running code: raster images, PDF, plain text.
pub fn inline_safe(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    (essence.starts_with("image/") && essence != "image/svg+xml")
        || essence == "application/pdf"
        || essence == "text/plain"
}

/// RFC 8187 `attr-char`: everything else is percent-encoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The ASCII fallback name: every non-ASCII or unsafe character becomes `_`.
pub fn ascii_fallback(name: &str) -> String {
    name.chars()
        .map(|c| {
            if (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%' | ';' | '/')) || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `Content-Disposition` with both the ASCII `filename` and the UTF-8 `filename*`.
pub fn content_disposition(kind: Disposition, name: &str) -> HeaderValue {
    let kind = match kind {
        Disposition::Attachment => "attachment",
        Disposition::Inline => "inline",
    };
    let value = format!(
        "{kind}; filename=\"{}\"; filename*=UTF-8''{}",
        ascii_fallback(name),
        utf8_percent_encode(name, ATTR_CHAR)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_shapes() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        // An empty file: a non-zero suffix is satisfiable, as the whole (empty) file.
        assert_eq!(parse_range("bytes=-5", 0), Full);
        assert_eq!(parse_range("bytes=-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("bytes=9-1", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=a-b", 100), Full);
        assert_eq!(parse_range("bytes=-", 100), Full);
        assert_eq!(
            parse_range("BYTES= 1 - 2 ", 100),
            Partial { start: 1, end: 2 }
        );
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Full);
    }

    #[test]
    fn conditionals() {
        let tag = etag("ab");
        assert!(none_match("\"ab\"", &tag));
        assert!(none_match("W/\"ab\"", &tag));
        assert!(none_match("\"x\", \"ab\"", &tag));
        assert!(none_match("*", &tag));
        assert!(!none_match("\"x\"", &tag));
        assert!(if_range_holds("\"ab\"", &tag, "d"));
        assert!(!if_range_holds("W/\"ab\"", &tag, "d"));
        assert!(if_range_holds("d", &tag, "d"));
        assert!(if_match("\"ab\"", &tag));
        assert!(if_match("\"x\", \"ab\"", &tag));
        assert!(if_match("*", &tag));
        assert!(!if_match("W/\"ab\"", &tag), "strong comparison");
        assert!(!if_match("\"x\"", &tag));
    }

    #[test]
    fn preconditions_come_first_in_the_order_of_rfc_9110() {
        let tag = etag("ab");
        let at = Timestamp::from_unix_secs(1_000_000_000);
        let get = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            plan(&Method::GET, &h, 100, &tag, at)
        };
        let before = Timestamp::from_unix_secs(999_999_999).to_http_date();
        let after = Timestamp::from_unix_secs(1_000_000_001).to_http_date();
        assert_eq!(get(&[("if-match", "\"x\"")]), Plan::PreconditionFailed);
        assert_eq!(
            get(&[("if-match", "")]),
            Plan::Full,
            "an empty list is no condition"
        );
        assert_eq!(get(&[("if-match", " , ")]), Plan::Full);
        assert_eq!(get(&[("if-match", "\"ab\"")]), Plan::Full);
        assert_eq!(
            get(&[("if-unmodified-since", &before)]),
            Plan::PreconditionFailed
        );
        assert_eq!(get(&[("if-unmodified-since", &after)]), Plan::Full);
        assert_eq!(get(&[("if-unmodified-since", "garbage")]), Plan::Full);
        // If-Match decides alone; If-Unmodified-Since is then ignored.
        assert_eq!(
            get(&[("if-match", "*"), ("if-unmodified-since", &before)]),
            Plan::Full
        );
        // A failed precondition beats a matching If-None-Match and a Range.
        assert_eq!(
            get(&[
                ("if-match", "\"x\""),
                ("if-none-match", "\"ab\""),
                ("range", "bytes=0-1")
            ]),
            Plan::PreconditionFailed
        );
        assert_eq!(
            get(&[("if-match", "\"ab\""), ("range", "bytes=0-1")]),
            Plan::Partial { start: 0, end: 1 }
        );
        // If-None-Match over two lines is one list.
        let mut h = HeaderMap::new();
        h.append("if-none-match", HeaderValue::from_static("\"x\""));
        h.append("if-none-match", HeaderValue::from_static("\"ab\""));
        assert_eq!(plan(&Method::GET, &h, 100, &tag, at), Plan::NotModified);
    }

    #[test]
    fn disposition_escapes_everything_unsafe() {
        let v = content_disposition(
            Disposition::Attachment,
            "na\u{ef}ve \"r\u{e9}sum\u{e9}\";.pdf",
        );
        let s = v.to_str().unwrap();
        assert!(
            s.starts_with("attachment; filename=\"na_ve _r_sum__;.pdf\"")
                || s.starts_with("attachment; filename=\"na_ve _r_sum___.pdf\""),
            "{s}"
        );
        assert!(
            s.contains("filename*=UTF-8''na%C3%AFve%20%22r%C3%A9sum%C3%A9%22%3B.pdf"),
            "{s}"
        );
    }

    proptest! {
        #[test]
        fn ranges_stay_inside_the_file(value in "(bytes|BYTES|x)=[0-9 ,-]{0,24}", len in 0u64..10_000) {
            if let RangeSpec::Partial { start, end } = parse_range(&value, len) {
                prop_assert!(start <= end && end < len);
            }
        }

        #[test]
        fn disposition_is_always_a_valid_header(name in "\\PC{0,100}") {
            let v = content_disposition(Disposition::Attachment, &name);
            let s = v.to_str().unwrap();
            prop_assert!(s.is_ascii());
            let fallback = ascii_fallback(&name);
            prop_assert!(!fallback.contains(['"', '\\']));
        }
    }
}
