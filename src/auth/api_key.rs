//! API keys for app backends: `cfk_<8 id chars>_<43 secret chars>`.
//!
//! The first 12 characters (`cfk_` and 8 random characters) are the public prefix that finds
//! the row; the whole key is stored only as its SHA-256, compared in constant time. So the
//! database lookup depends on the public part only, never on the secret.

use subtle::ConstantTimeEq as _;

use crate::auth::{random_token, token_hash};

/// Every key starts with this.
pub const KEY_TAG: &str = "cfk_";
/// Length of the public prefix.
pub const PREFIX_LEN: usize = 12;
const ID_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// A freshly generated key: shown once, then only its hash exists.
pub(crate) struct NewKey {
    /// The full key.
    pub(crate) key: String,
    /// Its public prefix.
    pub(crate) prefix: String,
    /// SHA-256 of the full key.
    pub(crate) hash: [u8; 32],
}

/// Make a new key (40 bits of public id, 256 bits of secret).
pub(crate) fn generate() -> NewKey {
    let raw = crate::secrets::random_bytes::<8>();
    let id: String = raw
        .iter()
        .filter_map(|b| ID_ALPHABET.get(usize::from(b % 32)).map(|c| char::from(*c)))
        .collect();
    let prefix = format!("{KEY_TAG}{id}");
    let key = format!("{prefix}_{}", random_token::<32>());
    NewKey {
        hash: token_hash(&key),
        prefix,
        key,
    }
}

/// The prefix of a presented key, if it has the right shape.
pub fn prefix_of(key: &str) -> Option<&str> {
    let prefix = key.get(..PREFIX_LEN)?;
    (prefix.starts_with(KEY_TAG) && key.len() > PREFIX_LEN + 16 && key.is_ascii()).then_some(prefix)
}

/// Constant-time check of a presented key against a stored hash.
pub(crate) fn matches(key: &str, stored: &[u8]) -> bool {
    token_hash(key).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_prefix_and_verify() {
        let k = generate();
        assert_eq!(k.prefix.len(), PREFIX_LEN);
        assert!(k.key.starts_with(&k.prefix));
        assert_eq!(prefix_of(&k.key), Some(k.prefix.as_str()));
        assert!(matches(&k.key, &k.hash));
        assert!(!matches(&format!("{}x", k.key), &k.hash));
        assert_eq!(prefix_of("short"), None);
        assert_eq!(prefix_of("Bearer abcdefghijklmnopqrstuvwxyz"), None);
    }
}
