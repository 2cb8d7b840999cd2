//! `coffer::download::{parse_range, plan}` and `content_disposition`: a plan never names a
//! byte outside `0..len`, exact answers for well-formed single ranges, and the
//! `Content-Disposition` value is always a valid ASCII header that round-trips the name.
#![no_main]

use arbitrary::Arbitrary;
use coffer::download::{
    Disposition, Plan, RangeSpec, ascii_fallback, content_disposition, etag, parse_range, plan,
};
use coffer::ids::Timestamp;
use http::{HeaderMap, HeaderValue, Method, header};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    range: String,
    len: u64,
    small_len: bool,
    /// A well-formed `bytes=a-b` / `bytes=a-` / `bytes=-n` built from numbers.
    first: Option<u64>,
    last: Option<u64>,
    method: u8,
    if_none_match: Option<Vec<u8>>,
    if_range: Option<Vec<u8>>,
    if_modified_since: Option<Vec<u8>>,
    raw_range: Option<Vec<u8>>,
    /// `Last-Modified` (the file's `created_at`), microseconds since the epoch.
    modified_us: i64,
    name: String,
    inline: bool,
}

fn check_spec(spec: RangeSpec, len: u64, what: &str) {
    if let RangeSpec::Partial { start, end } = spec {
        assert!(start <= end, "{what}: start {start} > end {end}");
        assert!(end < len, "{what}: end {end} outside len {len}");
    }
}

/// RFC 9110 section 14.1.2 for one well-formed range.
fn expected(first: Option<u64>, last: Option<u64>, len: u64) -> RangeSpec {
    match (first, last) {
        (Some(a), Some(b)) if a > b => RangeSpec::Full, // invalid: ignored
        (Some(a), _) if a >= len => RangeSpec::Unsatisfiable,
        (Some(a), Some(b)) => RangeSpec::Partial {
            start: a,
            end: b.min(len - 1),
        },
        (Some(a), None) => RangeSpec::Partial {
            start: a,
            end: len - 1,
        },
        (None, Some(0)) => RangeSpec::Unsatisfiable,
        (None, Some(_)) if len == 0 => RangeSpec::Unsatisfiable,
        (None, Some(n)) => RangeSpec::Partial {
            start: len - n.min(len),
            end: len - 1,
        },
        (None, None) => RangeSpec::Full,
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let len = if input.small_len {
        input.len % 1024
    } else {
        input.len
    };

    // Arbitrary text.
    check_spec(parse_range(&input.range, len), len, &input.range);

    // Well-formed single ranges get the exact RFC answer.
    if input.first.is_some() || input.last.is_some() {
        let v = format!(
            "bytes={}-{}",
            input.first.map(|a| a.to_string()).unwrap_or_default(),
            input.last.map(|b| b.to_string()).unwrap_or_default()
        );
        let got = parse_range(&v, len);
        check_spec(got, len, &v);
        assert_eq!(
            got,
            expected(input.first, input.last, len),
            "{v} for len {len}"
        );
    }

    // The whole decision with arbitrary headers.
    let method = match input.method % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::DELETE,
    };
    let tag = etag("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    let mut headers = HeaderMap::new();
    let mut put = |name: header::HeaderName, v: &Option<Vec<u8>>| {
        if let Some(v) = v {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.insert(name, v);
            }
        }
    };
    put(header::IF_NONE_MATCH, &input.if_none_match);
    put(header::IF_RANGE, &input.if_range);
    put(header::IF_MODIFIED_SINCE, &input.if_modified_since);
    put(header::RANGE, &input.raw_range);
    if input.raw_range.is_none() {
        if let Ok(v) = HeaderValue::from_str(&input.range) {
            headers.insert(header::RANGE, v);
        }
    }
    // Finding 1 (reported): `Timestamp::to_http_date` panics (httpdate: "date must be before
    // year 9999") for instants from 10000-01-01 on. `created_at` comes from the server clock,
    // so the harness keeps to years before 10000 to go on exercising the rest of `plan`.
    const LAST_HTTP_DATE_US: i64 = 253_402_300_799_999_999;
    let modified = Timestamp(input.modified_us.min(LAST_HTTP_DATE_US));
    let p = plan(&method, &headers, len, &tag, modified);
    match p {
        Plan::Partial { start, end } => {
            assert!(
                method == Method::GET || method == Method::HEAD,
                "{method} got a range"
            );
            assert!(start <= end && end < len, "plan {p:?} for len {len}");
            assert!(headers.contains_key(header::RANGE));
        }
        Plan::NotModified => assert!(
            headers.contains_key(header::IF_NONE_MATCH)
                || headers.contains_key(header::IF_MODIFIED_SINCE)
        ),
        Plan::Unsatisfiable => assert!(headers.contains_key(header::RANGE)),
        Plan::Full => {}
    }
    let (a, b) = p.span(len);
    assert!(a <= b && b <= len, "span {a}..{b} for len {len}");
    // Our own tag always matches.
    let mut own = HeaderMap::new();
    own.insert(
        header::IF_NONE_MATCH,
        HeaderValue::from_str(&tag).expect("tag"),
    );
    assert_eq!(plan(&method, &own, len, &tag, modified), Plan::NotModified);

    // Content-Disposition: ASCII, parseable, the fallback holds nothing that breaks the
    // quoted string, and filename* decodes to exactly the name.
    let kind = if input.inline {
        Disposition::Inline
    } else {
        Disposition::Attachment
    };
    let v = content_disposition(kind, &input.name);
    let s = v.to_str().expect("visible ASCII");
    let fallback = ascii_fallback(&input.name);
    assert!(!fallback.contains(['"', '\\']), "{fallback:?}");
    assert!(fallback.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
    assert_eq!(fallback.chars().count(), input.name.chars().count());
    let prefix = format!(
        "{}; filename=\"{fallback}\"; filename*=UTF-8''",
        if input.inline { "inline" } else { "attachment" }
    );
    let encoded = s
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected Content-Disposition {s:?} for {:?}", input.name));
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~%".contains(&b)),
        "{encoded:?}"
    );
    assert_eq!(percent_decode(encoded), input.name.as_bytes());
});
