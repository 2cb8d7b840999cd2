//! Secrets from the environment: `COFFER_SECRET_KEY` (required; signs tokens), the optional
//! encryption master keys, and the object store's credentials (`storage.backend = "s3"`).
//!
//! Invariant: a [`SecretKey`] holds at least 32 bytes that are not a placeholder and not a
//! trivially repeated pattern. Secret bytes are zeroised on drop and never printed by `Debug`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;

/// Name of the required signing secret.
pub const SECRET_KEY_VAR: &str = "COFFER_SECRET_KEY";
/// Docker-secrets style alternative: a file holding the secret.
pub const SECRET_KEY_FILE_VAR: &str = "COFFER_SECRET_KEY_FILE";
/// Earlier service secrets (comma-separated), kept so that `coffer check` can verify the
/// audit entries they signed.
pub const SECRET_OLD_KEYS_VAR: &str = "COFFER_SECRET_OLD_KEYS";
/// Current encryption master key (turns on encryption at rest).
pub const ENCRYPTION_KEY_VAR: &str = "COFFER_ENCRYPTION_KEY";
/// Earlier master keys that may still wrap data keys.
pub const ENCRYPTION_OLD_KEYS_VAR: &str = "COFFER_ENCRYPTION_OLD_KEYS";

/// The password `coffer user create` reads (or `..._FILE`; else standard input).
pub const PASSWORD_VAR: &str = "COFFER_PASSWORD";

/// The object store's access key id (or `..._FILE`).
pub const S3_ACCESS_KEY_ID_VAR: &str = "COFFER_S3_ACCESS_KEY_ID";
/// The object store's secret access key (or `..._FILE`).
pub const S3_SECRET_ACCESS_KEY_VAR: &str = "COFFER_S3_SECRET_ACCESS_KEY";

/// Fewest bytes a secret key may have.
pub const MIN_SECRET_BYTES: usize = 32;

/// Values people paste from tutorials. Compared case-insensitively, also as the stem of a
/// longer value (`changeme-changeme-...`).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "mysecret",
    "my-secret",
    "my-secret-key",
    "my_secret_key",
    "secret-key",
    "secret_key",
    "secretkey",
    "your-secret-key",
    "your-secret-key-here",
    "your_secret_key_here",
    "yoursecretkey",
    "supersecret",
    "super-secret",
    "super-secret-key",
    "password",
    "default",
    "example",
    "test",
    "testing",
    "development",
    "dev",
    "insecure",
    "replace-me",
    "replaceme",
    "todo",
    "xxx",
    "coffer",
];

/// Why a secret was refused. The message always names the variable and how to make a good one.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not set at all.
    #[error(
        "{var} is not set. Generate one with `coffer gen-secret` and export it, e.g. `export {var}=$(coffer gen-secret)`"
    )]
    Missing {
        /// The variable.
        var: &'static str,
    },
    /// Set but weak.
    #[error("{var} is too weak: {why}. Generate one with `coffer gen-secret` (64 hex characters)")]
    Weak {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// An encryption key that is not 32 bytes of hex or base64.
    #[error(
        "{var} must be exactly 32 bytes, hex or base64 encoded (`coffer gen-secret` makes one)"
    )]
    BadEncryptionKey {
        /// The variable.
        var: &'static str,
    },
    /// A credential the configuration needs is not set.
    #[error(
        "{var} (or {var}_FILE) is not set; storage.backend = \"s3\" needs the object store's access key id and secret access key"
    )]
    MissingCredential {
        /// The variable.
        var: &'static str,
    },
    /// Both a variable and its `_FILE` twin are set: which one is meant is unclear.
    #[error("both {var} and {var}_FILE are set; set only one")]
    Ambiguous {
        /// The variable.
        var: &'static str,
    },
    /// The secret file could not be read.
    #[error("cannot read the file {var}_FILE names: {source}")]
    File {
        /// The variable.
        var: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The service's signing secret. Subkeys for each purpose are derived from it, so a token
/// key can never be confused with any other use.
pub struct SecretKey(SecretBox<Vec<u8>>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

impl SecretKey {
    /// Read from `COFFER_SECRET_KEY` (or the file named by `COFFER_SECRET_KEY_FILE`; both
    /// set is an error).
    pub fn from_env() -> Result<Self, SecretError> {
        match var_or_file(SECRET_KEY_VAR, |n| std::env::var_os(n))? {
            Some(raw) => Self::parse(&raw),
            None => Err(SecretError::Missing {
                var: SECRET_KEY_VAR,
            }),
        }
    }

    /// Earlier secrets from `COFFER_SECRET_OLD_KEYS` (or its `_FILE` twin): comma- or
    /// newline-separated, each judged as `COFFER_SECRET_KEY` is.
    pub fn old_from_env() -> Result<Vec<Self>, SecretError> {
        match var_or_file(SECRET_OLD_KEYS_VAR, |n| std::env::var_os(n))? {
            Some(list) => split_list(&list)
                .map(|k| {
                    Self::parse(k).map_err(|e| match e {
                        SecretError::Weak { why, .. } => SecretError::Weak {
                            var: SECRET_OLD_KEYS_VAR,
                            why,
                        },
                        other => other,
                    })
                })
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    /// Decode and judge a secret: hex or base64 is decoded, anything else is raw bytes.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let weak = |why| SecretError::Weak {
            var: SECRET_KEY_VAR,
            why,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Missing {
                var: SECRET_KEY_VAR,
            });
        }
        if is_placeholder(trimmed) {
            return Err(weak("it is a well-known placeholder"));
        }
        let bytes = decode_key_text(trimmed);
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(weak("it must carry at least 32 bytes (64 hex characters)"));
        }
        if is_repetitive(&bytes) || is_repetitive(trimmed.as_bytes()) {
            return Err(weak("it is a short pattern repeated"));
        }
        Ok(Self(SecretBox::new(Box::new(bytes))))
    }

    /// A fresh random secret, for `--dev` mode only.
    pub fn ephemeral() -> Self {
        Self(SecretBox::new(Box::new(random_bytes::<32>().to_vec())))
    }

    /// A 32-byte subkey for one purpose: HMAC-SHA256(secret, label).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The object store's credentials. `Debug` never shows them.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: SecretString,
    /// Secret access key.
    pub secret_access_key: SecretString,
}

impl S3Credentials {
    /// Read `COFFER_S3_ACCESS_KEY_ID` and `COFFER_S3_SECRET_ACCESS_KEY`, each from the
    /// variable or from the file its `_FILE` twin names (one trailing newline stripped).
    pub fn from_env() -> Result<Self, SecretError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The same, looking variables up with `lookup` (another environment).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, SecretError> {
        let read = |var| {
            var_or_file(var, &lookup)?
                .map(SecretString::from)
                .ok_or(SecretError::MissingCredential { var })
        };
        Ok(Self {
            access_key_id: read(S3_ACCESS_KEY_ID_VAR)?,
            secret_access_key: read(S3_SECRET_ACCESS_KEY_VAR)?,
        })
    }
}

/// `var`'s value, or the content of the file `var_FILE` names (Docker secrets), without its
/// trailing newline. Both set is an error; neither, or an empty value, is `None`.
pub(crate) fn var_or_file(
    var: &'static str,
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Option<String>, SecretError> {
    let not_text = SecretError::Weak {
        var,
        why: "it is not UTF-8 text",
    };
    let direct = lookup(var).filter(|v| !v.is_empty());
    let file = lookup(&format!("{var}_FILE")).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(SecretError::Ambiguous { var }),
        (Some(v), None) => v.into_string().map(Some).map_err(|_| not_text),
        (None, Some(path)) => {
            let text = std::fs::read(path).map_err(|source| SecretError::File { var, source })?;
            let text = String::from_utf8(text).map_err(|_| not_text)?;
            let value = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            Ok(Some(value.to_owned()).filter(|v| !v.is_empty()))
        }
        (None, None) => Ok(None),
    }
}

/// Refuse `var` set both directly and by its `_FILE` twin, without reading the file (for a
/// secret this configuration does not use).
pub(crate) fn not_both(
    var: &'static str,
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<(), SecretError> {
    let set = |name: &str| lookup(name).is_some_and(|v| !v.is_empty());
    if set(var) && set(&format!("{var}_FILE")) {
        return Err(SecretError::Ambiguous { var });
    }
    Ok(())
}

/// `coffer gen-secret`: 32 random bytes as 64 lower-case hex characters.
pub fn generate_hex() -> String {
    hex::encode(random_bytes::<32>())
}

/// Bytes from the operating system's CSPRNG. Failure to get randomness is not survivable
/// for a security service, so it aborts rather than continue with a weak value.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if let Err(e) = getrandom::fill(&mut buf) {
        // ok: the OS RNG failing is an unrecoverable platform fault, not request data.
        panic!("the operating system's random number generator failed: {e}");
    }
    buf
}

/// Decode an encryption master key: exactly 32 bytes, hex or base64.
pub fn parse_encryption_key(raw: &str, var: &'static str) -> Result<[u8; 32], SecretError> {
    let t = raw.trim();
    let bytes = decode_hex(t).or_else(|| decode_base64(t));
    match bytes.map(<[u8; 32]>::try_from) {
        Some(Ok(key)) if !is_repetitive(&key) => Ok(key),
        _ => Err(SecretError::BadEncryptionKey { var }),
    }
}

fn decode_key_text(t: &str) -> Vec<u8> {
    decode_hex(t)
        .or_else(|| decode_base64(t))
        .unwrap_or_else(|| t.as_bytes().to_vec())
}

fn decode_hex(t: &str) -> Option<Vec<u8>> {
    t.len()
        .is_multiple_of(2)
        .then(|| hex::decode(t).ok())
        .flatten()
}

fn decode_base64(t: &str) -> Option<Vec<u8>> {
    // Hex was tried first. Any valid base64 is decoded, whatever its length: 32 base64
    // characters are 24 bytes, too short, and must not pass as 32 raw bytes (the contract).
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .into_iter()
        .find_map(|engine| engine.decode(t).ok())
}

fn is_placeholder(t: &str) -> bool {
    // Every word (digits at its end ignored) a placeholder word: `changeme`,
    // `Secret123`, `changeme-changeme-changeme`, `your_secret_key_here`.
    const FILLER: &[&str] = &["my", "your", "the", "a", "key", "here", "value"];
    let lower = t.to_ascii_lowercase();
    let mut words = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|w| w.trim_end_matches(|c: char| c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
        .peekable();
    words.peek().is_some() && words.all(|w| PLACEHOLDERS.contains(&w) || FILLER.contains(&w))
        || PLACEHOLDERS.contains(&lower.as_str())
}

/// True when the value is one short block repeated (`0000…`, `abab…`, `deadbeefdeadbeef…`) or
/// has almost no distinct symbols.
fn is_repetitive(b: &[u8]) -> bool {
    let distinct: std::collections::HashSet<u8> = b.iter().copied().collect();
    if distinct.len() < 6 {
        return true;
    }
    (1..=16)
        .any(|period| period < b.len() && b.iter().zip(b.iter().skip(period)).all(|(x, y)| x == y))
}

/// The current master key (if any) and older ones.
pub type EncryptionKeys = (Option<[u8; 32]>, Vec<[u8; 32]>);

/// Read `COFFER_ENCRYPTION_KEY` and `COFFER_ENCRYPTION_OLD_KEYS`.
pub fn encryption_keys_from_env() -> Result<EncryptionKeys, SecretError> {
    let lookup = |n: &str| std::env::var_os(n);
    let current = match var_or_file(ENCRYPTION_KEY_VAR, lookup)? {
        Some(v) if !v.trim().is_empty() => Some(parse_encryption_key(&v, ENCRYPTION_KEY_VAR)?),
        _ => None,
    };
    let old = match var_or_file(ENCRYPTION_OLD_KEYS_VAR, lookup)? {
        Some(v) => split_list(&v)
            .map(|k| parse_encryption_key(k, ENCRYPTION_OLD_KEYS_VAR))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok((current, old))
}

/// A comma- (or newline-, for files) separated list of keys.
fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The password for `coffer user create`: `COFFER_PASSWORD` or the file `COFFER_PASSWORD_FILE`
/// names (both set is an error); `None` when neither is set.
pub fn password_from_env() -> Result<Option<SecretString>, SecretError> {
    Ok(var_or_file(PASSWORD_VAR, |n| std::env::var_os(n))?.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_accepted() {
        let s = generate_hex();
        assert_eq!(s.len(), 64);
        assert!(SecretKey::parse(&s).is_ok());
        let b64 = STANDARD.encode(random_bytes::<32>());
        assert!(SecretKey::parse(&b64).is_ok());
    }

    #[test]
    fn weak_secrets_are_refused() {
        for bad in [
            "changeme",
            "secret",
            "my-secret-key",
            "your-secret-key-here",
            "CHANGEME",
            "changeme-changeme-changeme-changeme-changeme",
            &"0".repeat(64),
            &"ab".repeat(40),
            "deadbeef",
            "short-but-random-9f8e",
        ] {
            assert!(SecretKey::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn base64_is_decoded_whatever_its_length() {
        // 32 characters of base64 are 24 bytes: too short (not 32 raw bytes).
        let short = STANDARD.encode(&random_bytes::<32>()[..24]);
        assert_eq!(short.len(), 32);
        let e = SecretKey::parse(&short).unwrap_err();
        assert!(e.to_string().contains("COFFER_SECRET_KEY"), "{e}");
        let no_pad = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        assert!(SecretKey::parse(&no_pad).is_ok());
        let hex_short = hex::encode(&random_bytes::<32>()[..20]);
        assert!(SecretKey::parse(&hex_short).is_err());
    }

    #[test]
    fn a_variable_and_its_file_twin_together_are_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, "value\n").unwrap();
        let path = file.into_os_string();
        let both = |n: &str| match n {
            "X" => Some("value".into()),
            "X_FILE" => Some(path.clone()),
            _ => None,
        };
        assert!(matches!(
            var_or_file("X", both),
            Err(SecretError::Ambiguous { .. })
        ));
        let file_only = |n: &str| (n == "X_FILE").then(|| path.clone());
        assert_eq!(
            var_or_file("X", file_only).unwrap().as_deref(),
            Some("value")
        );
    }

    #[test]
    fn long_raw_passphrases_are_bytes() {
        assert!(SecretKey::parse("correct horse battery staple, painted 1987 blue!").is_ok());
    }

    #[test]
    fn derived_subkeys_differ_by_label() {
        let k = SecretKey::parse(&generate_hex()).unwrap();
        assert_ne!(k.derive("a"), k.derive("b"));
        assert_eq!(k.derive("a"), k.derive("a"));
    }

    #[test]
    fn s3_credentials_come_from_variables_or_files() {
        use std::collections::HashMap;
        use std::ffi::OsString;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let env = |pairs: &[(&str, &OsString)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).clone()))
                .collect::<HashMap<_, _>>()
        };
        let id = OsString::from("GK123");
        let path = file.clone().into_os_string();
        let vars = env(&[
            ("COFFER_S3_ACCESS_KEY_ID", &id),
            ("COFFER_S3_SECRET_ACCESS_KEY_FILE", &path),
        ]);
        let c = S3Credentials::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(c.access_key_id.expose_secret(), "GK123");
        assert_eq!(c.secret_access_key.expose_secret(), "from-a-file");
        assert!(!format!("{c:?}").contains("from-a-file"));

        let both = env(&[
            ("COFFER_S3_ACCESS_KEY_ID", &id),
            ("COFFER_S3_SECRET_ACCESS_KEY", &id),
            ("COFFER_S3_SECRET_ACCESS_KEY_FILE", &path),
        ]);
        let e = S3Credentials::from_lookup(|k| both.get(k).cloned()).unwrap_err();
        assert!(matches!(e, SecretError::Ambiguous { .. }), "{e}");

        let missing = env(&[("COFFER_S3_ACCESS_KEY_ID", &id)]);
        let e = S3Credentials::from_lookup(|k| missing.get(k).cloned()).unwrap_err();
        assert!(e.to_string().contains("COFFER_S3_SECRET_ACCESS_KEY"), "{e}");
    }

    #[test]
    fn encryption_keys_must_be_32_bytes() {
        assert!(parse_encryption_key(&generate_hex(), ENCRYPTION_KEY_VAR).is_ok());
        assert!(parse_encryption_key("abcd", ENCRYPTION_KEY_VAR).is_err());
        assert!(parse_encryption_key(&"00".repeat(32), ENCRYPTION_KEY_VAR).is_err());
    }
}
