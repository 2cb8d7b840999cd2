//! `coffer::ingest::filename::{sanitize, extension}`: the documented invariants hold for every
//! input, and the extension survives shortening.
//!
//! Input: the first byte picks a mode. Mode 0 (even): the rest is the raw name (lossy UTF-8).
//! Mode 1 (odd): the rest is `prefix \0 ext`, and the name is `prefix + "a" * n + "." + ext'`
//! where `ext'` keeps only ASCII letters and digits (1-16 of them) and `n` comes from the
//! second byte; then the extension must survive sanitising, whatever the prefix holds.
#![no_main]

use coffer::ingest::filename::{MAX_BYTES, extension, sanitize};
use libfuzzer_sys::fuzz_target;
use unicode_normalization::UnicodeNormalization as _;

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn check(raw: &str) -> String {
    let s = sanitize(raw);
    assert!(!s.is_empty(), "empty result for {raw:?}");
    assert!(s.len() <= MAX_BYTES, "{} bytes for {raw:?}", s.len());
    assert!(
        !s.contains(['/', '\\', '"', '\'', '<', '>']),
        "forbidden character in {s:?} from {raw:?}"
    );
    assert!(
        !s.chars().any(|c| c.is_control()),
        "control character in {s:?} from {raw:?}"
    );
    assert!(
        !s.chars().any(is_bidi_control),
        "bidi control in {s:?} from {raw:?}"
    );
    assert!(!s.starts_with('.'), "leading dot in {s:?} from {raw:?}");
    assert!(
        !s.ends_with(['.', ' ']),
        "trailing dot or space in {s:?} from {raw:?}"
    );
    let nfc: String = s.nfc().collect();
    assert_eq!(nfc, s, "not NFC: {s:?} from {raw:?}");
    assert_eq!(sanitize(&s), s, "not idempotent: {s:?} from {raw:?}");

    // extension(): the last non-empty suffix after a dot that is not the whole name,
    // lower-cased, and never holding a dot.
    let expected = s
        .rsplit_once('.')
        .filter(|(stem, ext)| !stem.is_empty() && !ext.is_empty())
        .map(|(_, ext)| ext.to_lowercase());
    let got = extension(&s);
    assert_eq!(got, expected, "extension({s:?})");
    if let Some(e) = &got {
        assert!(!e.contains('.'));
        // `CAMERA.PNG` is a PNG too.
        assert_eq!(
            extension(&s.to_ascii_uppercase()),
            got,
            "extension is case-blind for {s:?}"
        );
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        let _ = check("");
        return;
    };
    if mode % 2 == 0 {
        let raw = String::from_utf8_lossy(rest);
        let _ = check(&raw);
        return;
    }
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let (prefix, ext) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"png"[..]),
    };
    let ext: String = ext
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .take(16)
        .map(|&b| char::from(b))
        .collect();
    if ext.is_empty() {
        return;
    }
    let prefix = String::from_utf8_lossy(prefix);
    let stem = "a".repeat(usize::from(n) * 2 + 1);
    let raw = format!("{prefix}{stem}.{ext}");
    let s = check(&raw);
    assert_eq!(
        extension(&s),
        Some(ext.to_ascii_lowercase()),
        "extension lost: {raw:?} -> {s:?}"
    );
});
