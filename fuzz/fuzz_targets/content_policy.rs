//! `coffer::ingest::policy`: the extension picks a rule, the head must prove it, and the
//! streaming UTF-8 check agrees with `std::str::from_utf8` (plus no NUL) however the bytes
//! are split.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use coffer::ingest::filename;
use coffer::ingest::policy::{
    Refusal, Rule, SNIFF_LEN, TEXT_PLAIN, UploadPolicy, Utf8Check, check_rule,
};
use libfuzzer_sys::fuzz_target;

const ALLOWED: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("gif", "image/gif"),
    ("pdf", "application/pdf"),
    ("txt", "text/plain"),
];

static POLICY: LazyLock<UploadPolicy> = LazyLock::new(|| {
    let map: BTreeMap<String, String> = ALLOWED
        .iter()
        .map(|(e, m)| {
            assert!(check_rule(e, m).is_ok(), "{e} -> {m} must be configurable");
            ((*e).to_owned(), (*m).to_owned())
        })
        .collect();
    UploadPolicy::new(&map)
});

#[derive(Debug, Arbitrary)]
struct Input {
    /// A whole filename (goes through sanitize + extension like the real pipeline) or a raw
    /// extension.
    name: String,
    raw_ext: bool,
    /// The first bytes of the body.
    head: Vec<u8>,
    /// Where to split `head` for the streaming check.
    cuts: Vec<u16>,
    /// A configured rule to check (`check_rule` must never panic).
    rule_ext: String,
    rule_mime: String,
}

/// What each magic type's bytes must start with (infer 0.22's matchers).
fn proves(mime: &str, head: &[u8]) -> bool {
    match mime {
        "image/png" => head.starts_with(b"\x89PNG"),
        "image/jpeg" => head.starts_with(b"\xFF\xD8\xFF"),
        "image/gif" => head.starts_with(b"GIF"),
        // infer accepts `%PDF` anywhere in the first 1024 bytes (PDF reference H.3.4.1).
        "application/pdf" => head
            .get(..head.len().min(1024))
            .is_some_and(|h| h.windows(4).any(|w| w == b"%PDF")),
        other => panic!("unexpected magic type {other}"),
    }
}

fuzz_target!(|input: Input| {
    let head = &input.head[..input.head.len().min(SNIFF_LEN)];

    // Rule lookup: exactly the configured (lower-case) extensions, by their last extension.
    let ext = if input.raw_ext {
        Some(input.name.clone())
    } else {
        filename::extension(&filename::sanitize(&input.name))
    };
    let rule = POLICY.rule_for(ext.as_deref());
    let configured = ext
        .as_deref()
        .and_then(|e| ALLOWED.iter().find(|(x, _)| *x == e));
    match (&rule, configured, &ext) {
        (Err(Refusal::NoExtension), None, None) => {}
        (Err(Refusal::ExtensionNotAllowed(e)), None, Some(x)) => assert_eq!(e, x),
        (Ok(Rule::Text), Some((_, m)), _) => assert!(m.starts_with("text/")),
        (Ok(Rule::Magic(m)), Some((_, want)), _) => assert_eq!(m, want),
        other => panic!("rule_for({ext:?}) gave {other:?}"),
    }

    // Every rule against the same head: magic types need their magic number, text is
    // accepted here (checked while streaming) and stored as text/plain; charset=utf-8.
    for (e, mime) in ALLOWED {
        let Ok(rule) = POLICY.rule_for(Some(e)) else {
            panic!("{e} is configured");
        };
        match (rule, UploadPolicy::decide(rule, head)) {
            (Rule::Text, Ok(t)) => assert_eq!(t, TEXT_PLAIN),
            (Rule::Text, Err(r)) => panic!("text refused at decide: {r:?}"),
            (Rule::Magic(m), Ok(t)) => {
                assert_eq!(&t, mime);
                assert_eq!(m, mime);
                assert!(
                    proves(mime, head),
                    "{mime} accepted without its magic: {head:?}"
                );
            }
            (Rule::Magic(m), Err(Refusal::MagicMismatch(x))) => {
                assert_eq!(&x, m);
                assert!(
                    !proves(mime, head),
                    "{mime} refused with its magic: {head:?}"
                );
            }
            (r, d) => panic!("{r:?} -> {d:?}"),
        }
    }

    // Streaming UTF-8 check, split at arbitrary points, agrees with std.
    let expect = std::str::from_utf8(&input.head).is_ok() && !input.head.contains(&0);
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (input.head.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut check = Utf8Check::default();
    let mut from = 0;
    let mut ok = true;
    for cut in cuts.into_iter().chain([input.head.len()]) {
        if check.update(&input.head[from..cut]).is_err() {
            ok = false;
            break;
        }
        from = cut;
    }
    let ok = ok && check.finish().is_ok();
    assert_eq!(
        ok, expect,
        "Utf8Check disagrees with std for {:?}",
        input.head
    );

    // Rule validation never panics, and whatever it admits is not an executable type.
    if check_rule(&input.rule_ext, &input.rule_mime).is_ok() {
        let e = &input.rule_ext;
        assert!(!e.is_empty() && e.len() <= 16);
        assert!(
            e.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let m = input.rule_mime.trim().to_ascii_lowercase();
        for bad in [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "text/javascript",
        ] {
            assert_ne!(m, bad);
        }
        for bad in ["html", "htm", "svg", "js", "php", "exe", "sh"] {
            assert_ne!(e, bad);
        }
    }
});
