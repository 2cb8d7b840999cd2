//! Sanitising the client's original filename, which is kept as metadata only (it never names
//! anything on disk).
//!
//! Invariant: the result has no path separators, control characters, quotes, angle brackets
//! or bidirectional controls, is NFC, has no leading dots and no trailing dots or spaces, is at
//! most 255 bytes (cut on a UTF-8 boundary, extension kept) and is never empty.

use unicode_normalization::UnicodeNormalization as _;

/// Longest stored name, in bytes.
pub const MAX_BYTES: usize = 255;
/// Name used when nothing is left.
pub const FALLBACK: &str = "file";
/// Longest extension kept whole when a name is shortened.
const MAX_EXT_BYTES: usize = 32;

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

fn is_removed(c: char) -> bool {
    c.is_control() || matches!(c, '"' | '\'' | '<' | '>') || is_bidi_control(c)
}

/// Sanitise a client-supplied filename.
pub fn sanitize(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !is_removed(*c)).nfc().collect();
    // NFC can, in principle, compose into a removed character's neighbourhood; filter again.
    let cleaned: String = cleaned.chars().filter(|c| !is_removed(*c)).collect();
    let trimmed = cleaned.trim_start_matches('.').trim_end_matches(['.', ' ']);
    let capped = cap(trimmed);
    if capped.is_empty() {
        FALLBACK.to_owned()
    } else {
        capped
    }
}

/// Cut to [`MAX_BYTES`] on a character boundary, keeping a short extension.
fn cap(name: &str) -> String {
    if name.len() <= MAX_BYTES {
        return name.to_owned();
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() < MAX_EXT_BYTES => (stem, Some(ext)),
        _ => (name, None),
    };
    let room = MAX_BYTES - ext.map_or(0, |e| e.len() + 1);
    let mut cut = room.min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = stem.get(..cut).unwrap_or("").trim_end_matches(['.', ' ']);
    // All dots and spaces: keep the extension, never a leading dot.
    let stem = if stem.is_empty() { FALLBACK } else { stem };
    match ext {
        Some(ext) => format!("{stem}.{ext}"),
        None => stem.to_owned(),
    }
}

/// The extension that decides the type: the last one, lower-cased; `None` without one.
pub fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples_from_the_contract() {
        assert_eq!(sanitize("../../etc/passwd.png"), "passwd.png");
        assert_eq!(sanitize("..\\a.png"), "a.png");
        assert_eq!(sanitize("C:\\Users\\x\\photo.jpg"), "photo.jpg");
        assert_eq!(sanitize("a\r\nb.png"), "ab.png");
        assert_eq!(sanitize("we\"i'r<d>.png"), "weird.png");
        assert_eq!(sanitize("nul\0byte.png"), "nulbyte.png");
        assert_eq!(sanitize("evil\u{202E}gnp.exe"), "evilgnp.exe");
        assert_eq!(sanitize("...hidden.png"), "hidden.png");
        assert_eq!(sanitize("trailing.png. . "), "trailing.png");
        assert_eq!(sanitize("../"), "file");
        assert_eq!(sanitize(""), "file");
        assert_eq!(sanitize("e\u{301}.png"), "\u{e9}.png");
        let long = format!("{}.png", "a".repeat(300));
        let s = sanitize(&long);
        assert_eq!(s.len(), 255);
        assert!(s.ends_with(".png"));
        assert_eq!(sanitize(&format!("{}.png", " ".repeat(300))), "file.png");
        assert_eq!(sanitize(&format!("{}.png", ". ".repeat(150))), "file.png");
        let wide = format!("{}.png", "\u{e9}".repeat(200));
        let s = sanitize(&wide);
        assert!(s.len() <= 255 && s.ends_with(".png"));
    }

    #[test]
    fn extension_is_the_last_one_lower_cased() {
        assert_eq!(extension("CAMERA.PNG").as_deref(), Some("png"));
        assert_eq!(extension("a.php.png").as_deref(), Some("png"));
        assert_eq!(extension("a.png.php").as_deref(), Some("php"));
        assert_eq!(extension("noext"), None);
        assert_eq!(extension("file"), None);
    }

    proptest! {
        #[test]
        fn sanitized_names_are_safe(raw in "\\PC{0,400}|[\\x00-\\x7f]{0,300}") {
            let s = sanitize(&raw);
            prop_assert!(!s.is_empty());
            prop_assert!(s.len() <= MAX_BYTES);
            prop_assert!(!s.contains(['/', '\\', '"', '\'', '<', '>']));
            prop_assert!(!s.chars().any(|c| c.is_control() || is_bidi_control(c)));
            prop_assert!(!s.starts_with('.'));
            prop_assert!(!s.ends_with(['.', ' ']));
            prop_assert_eq!(sanitize(&s), s.clone(), "idempotent");
        }
    }
}
