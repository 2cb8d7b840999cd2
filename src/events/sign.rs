//! Standard Webhooks signatures (standardwebhooks.com): `webhook-signature: v1,<base64 of
//! HMAC-SHA256(secret bytes, "{webhook-id}.{webhook-timestamp}.{body}")>`, the secret being
//! the base64 after `whsec_`.
//!
//! Invariant: neither a secret nor a signature is ever logged or audited; the secret's bytes
//! are zeroised when dropped.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The prefix of a secret's text form.
pub const PREFIX: &str = "whsec_";

/// A fresh secret: 32 random bytes.
pub fn generate() -> Zeroizing<[u8; 32]> {
    Zeroizing::new(crate::secrets::random_bytes::<32>())
}

/// The text form shown once: `whsec_` + base64.
pub fn encode(secret: &[u8]) -> String {
    format!("{PREFIX}{}", STANDARD.encode(secret))
}

/// The bytes of a text-form secret.
#[cfg(test)]
pub fn decode(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let b64 = text.strip_prefix(PREFIX).unwrap_or(text);
    STANDARD.decode(b64).ok().map(Zeroizing::new)
}

/// The `webhook-signature` value for one try.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn the_specifications_example_signs_the_same() {
        let secret = decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip() {
        let s = generate();
        let text = encode(&*s);
        assert!(text.starts_with(PREFIX));
        assert_eq!(decode(&text).unwrap().as_slice(), &s[..]);
    }
}
