//! The upload type policy: the extension picks a rule, the content must prove it.
//!
//! Invariant: a file is accepted only if its (last, lower-cased) extension is configured and
//! its bytes match: magic bytes (`infer`) for binary types, strict UTF-8 without NUL for text
//! types. The stored content type is the one proven, never the client's header. Types a
//! browser would execute (HTML, SVG, XML, scripts) and executables cannot be configured.

use std::collections::BTreeMap;

/// Bytes of the stream read before deciding (enough for every magic number `infer` knows).
pub const SNIFF_LEN: usize = 8192;
/// What text types are stored as.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Content types refused even if configured.
const DANGEROUS_TYPES: &[&str] = &[
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/x-javascript",
    "application/wasm",
    "application/x-sh",
    "application/x-shellscript",
    "application/x-executable",
    "application/x-elf",
    "application/x-msdownload",
    "application/vnd.microsoft.portable-executable",
    "application/x-mach-binary",
    "application/x-httpd-php",
    "application/java-archive",
    "application/x-java-archive",
];

/// Extensions refused even if configured.
const DANGEROUS_EXTS: &[&str] = &[
    "html", "htm", "xhtml", "shtml", "svg", "svgz", "xml", "xsl", "js", "mjs", "cjs", "php",
    "phtml", "phar", "asp", "aspx", "jsp", "exe", "dll", "com", "bat", "cmd", "sh", "bash", "ps1",
    "msi", "scr", "jar", "wasm", "elf", "so", "dylib", "app", "vbs", "hta",
];

/// How one extension's content is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The bytes must carry this type's magic number.
    Magic(String),
    /// UTF-8 without NUL; stored as [`TEXT_PLAIN`].
    Text,
}

/// Why a file was refused (all 415s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No extension.
    #[error("the filename has no extension")]
    NoExtension,
    /// Extension not in `uploads.allowed`.
    #[error("files of type .{0} are not accepted")]
    ExtensionNotAllowed(String),
    /// Bytes do not carry the extension's magic number.
    #[error("the content is not a valid {0} file")]
    MagicMismatch(String),
    /// Text that is not UTF-8 or holds NUL.
    #[error("text files must be UTF-8 without NUL bytes")]
    NotText,
}

impl Refusal {
    /// A short reason for the audit trail.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoExtension => "no_extension",
            Self::ExtensionNotAllowed(_) => "extension_not_allowed",
            Self::MagicMismatch(_) => "magic_mismatch",
            Self::NotText => "not_text",
        }
    }
}

/// Check one configured rule (used by config validation).
pub fn check_rule(ext: &str, mime: &str) -> Result<(), String> {
    if ext.is_empty()
        || ext.len() > 16
        || !ext
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("extensions are 1-16 lower-case letters or digits, without the dot".into());
    }
    let mime = mime.trim().to_ascii_lowercase();
    if DANGEROUS_TYPES.contains(&mime.as_str()) || DANGEROUS_EXTS.contains(&ext) {
        return Err(format!(
            "{ext} / {mime} can execute in a browser or on a host and is never allowed"
        ));
    }
    if mime == "application/octet-stream" {
        // `infer` knows this type only as the EOT font signature; configured, it would look
        // like "any bytes" and refuse nearly everything.
        return Err(format!(
            "{mime} means any bytes, which cannot be checked; allow the specific types instead"
        ));
    }
    if mime.starts_with("text/") || infer::is_mime_supported(&mime) {
        Ok(())
    } else {
        Err(format!(
            "{mime} has no known magic bytes; only text/* types may go without"
        ))
    }
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    rules: BTreeMap<String, Rule>,
}

impl UploadPolicy {
    /// From `uploads.allowed` (already validated).
    pub fn new(allowed: &BTreeMap<String, String>) -> Self {
        let rules = allowed
            .iter()
            .map(|(ext, mime)| {
                let mime = mime.trim().to_ascii_lowercase();
                let rule = if mime.starts_with("text/") {
                    Rule::Text
                } else {
                    Rule::Magic(mime)
                };
                (ext.to_ascii_lowercase(), rule)
            })
            .collect();
        Self { rules }
    }

    /// The rule for an extension; refused before a byte of the body is read.
    pub fn rule_for(&self, ext: Option<&str>) -> Result<&Rule, Refusal> {
        let ext = ext.ok_or(Refusal::NoExtension)?;
        self.rules
            .get(ext)
            .ok_or_else(|| Refusal::ExtensionNotAllowed(ext.to_owned()))
    }

    /// Decide on the first bytes (up to [`SNIFF_LEN`], fewer only at end of stream). Returns
    /// the content type to store. Text is checked here for its head; the rest is checked as
    /// it streams ([`Utf8Check`]).
    pub fn decide(rule: &Rule, head: &[u8]) -> Result<String, Refusal> {
        match rule {
            Rule::Magic(mime) => {
                if infer::is_mime(head, mime) {
                    Ok(mime.clone())
                } else {
                    Err(Refusal::MagicMismatch(mime.clone()))
                }
            }
            // The head only: it may end inside a sequence the next bytes complete.
            Rule::Text => Utf8Check::default()
                .update(head)
                .map(|()| TEXT_PLAIN.to_owned()),
        }
    }
}

/// Streaming UTF-8 and NUL validation, carrying an incomplete sequence across chunks.
#[derive(Debug, Default)]
pub struct Utf8Check {
    carry: Vec<u8>,
}

impl Utf8Check {
    /// Check the next chunk.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        if memchr::memchr(0, chunk).is_some() {
            return Err(Refusal::NotText);
        }
        let mut joined;
        let data = if self.carry.is_empty() {
            chunk
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(chunk);
            &joined[..]
        };
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            // An incomplete sequence at the very end may complete in the next chunk.
            Err(e) if e.error_len().is_none() => {
                self.carry = data.get(e.valid_up_to()..).unwrap_or_default().to_vec();
                Ok(())
            }
            Err(_) => Err(Refusal::NotText),
        }
    }

    /// End of stream: nothing may be left incomplete.
    pub fn finish(self) -> Result<(), Refusal> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(Refusal::NotText)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn policy() -> UploadPolicy {
        let mut m = BTreeMap::new();
        m.insert("png".into(), "image/png".into());
        m.insert("jpg".into(), "image/jpeg".into());
        m.insert("txt".into(), "text/plain".into());
        UploadPolicy::new(&m)
    }

    #[test]
    fn magic_must_match_the_extension() {
        let p = policy();
        let png = p.rule_for(Some("png")).unwrap();
        assert_eq!(UploadPolicy::decide(png, PNG).unwrap(), "image/png");
        let jpg = p.rule_for(Some("jpg")).unwrap();
        assert!(UploadPolicy::decide(jpg, PNG).is_err());
        assert!(UploadPolicy::decide(jpg, b"<html><script>").is_err());
        assert!(UploadPolicy::decide(jpg, b"<?php system($_GET[1]);").is_err());
        assert!(UploadPolicy::decide(png, b"").is_err());
        assert_eq!(
            p.rule_for(Some("exe")),
            Err(Refusal::ExtensionNotAllowed("exe".into()))
        );
        assert_eq!(p.rule_for(None), Err(Refusal::NoExtension));
    }

    #[test]
    fn dangerous_rules_cannot_be_configured() {
        assert!(check_rule("html", "text/html").is_err());
        assert!(check_rule("svg", "image/svg+xml").is_err());
        assert!(check_rule("txt", "text/javascript").is_err());
        assert!(check_rule("js", "text/plain").is_err());
        assert!(check_rule("json", "application/json").is_err());
        assert!(check_rule("png", "image/png").is_ok());
        assert!(check_rule("md", "text/markdown").is_ok());
        assert!(check_rule("PNG", "image/png").is_err());
        assert!(check_rule("bin", "application/octet-stream").is_err());
        assert!(check_rule("zip", "application/zip").is_ok());
    }

    #[test]
    fn utf8_check_handles_split_sequences() {
        let text = "h\u{e9}llo \u{1F600} w\u{f6}rld".as_bytes();
        for cut in 0..text.len() {
            let mut c = Utf8Check::default();
            c.update(&text[..cut]).unwrap();
            c.update(&text[cut..]).unwrap();
            c.finish().unwrap();
        }
        let mut c = Utf8Check::default();
        c.update(&text[..2]).unwrap();
        assert!(c.finish().is_err());
        assert!(Utf8Check::default().update(b"a\0b").is_err());
        assert!(Utf8Check::default().update(PNG).is_err());
    }

    proptest! {
        #[test]
        fn utf8_check_agrees_with_std(bytes in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..64) {
            let cut = cut.min(bytes.len());
            let mut c = Utf8Check::default();
            let ok = c.update(&bytes[..cut]).and_then(|_| c.update(&bytes[cut..])).and_then(|_| c.finish()).is_ok();
            let expect = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
            prop_assert_eq!(ok, expect);
        }
    }
}
