//! Access tokens: HS256 JWTs signed with a subkey of `COFFER_SECRET_KEY`.
//!
//! Invariant: exactly one algorithm exists for this process. The `jsonwebtoken` crypto
//! provider installed here knows HS256 only, and validation pins it too, so `alg: none`, RS/ES
//! confusion and every other algorithm fail before any claim is read. Tokens must carry
//! `sub`, `exp`, `iat`, `nbf`, `jti`, `iss`, `sid` and `type: "access"`.

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, new_error};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::{SessionId, Timestamp, UserId};
use crate::secrets::SecretKey;

/// Leeway for clock skew on `exp` and `nbf`.
pub(crate) const LEEWAY_SECS: u64 = 2;
/// The `type` claim of access tokens.
pub const ACCESS: &str = "access";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique token id (for revocation).
    pub jti: String,
    /// Issuer.
    pub iss: String,
    /// Token type; only `access` is accepted as a credential.
    #[serde(rename = "type")]
    pub typ: String,
    /// The login this token belongs to.
    pub sid: String,
}

/// A verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The user it speaks for.
    pub user: UserId,
    /// The login it was issued to: revoking the login revokes it.
    pub session: SessionId,
    /// Its own id, for revoking it alone (logout).
    pub jti: String,
    /// When it stops being accepted (`exp`).
    pub expires_at: Timestamp,
}

/// Why a token was refused (all answer 401; the variant is for logs and tests only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Signature, algorithm, shape or claims invalid.
    #[error("invalid token")]
    Invalid,
    /// Expired or not yet valid.
    #[error("token expired or not yet valid")]
    Expired,
    /// Not an access token.
    #[error("wrong token type")]
    WrongType,
}

/// Signs and verifies access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl_secs: u64,
}

impl TokenKeys {
    /// Derive the signing key from the service secret.
    pub fn new(
        secret: &SecretKey,
        issuer: &str,
        ttl_secs: u64,
    ) -> jsonwebtoken::errors::Result<Self> {
        install_provider();
        let key = secret.derive("coffer/jwt/hs256/v1");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "sub", "iss", "jti"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(&key)?,
            decoding: DecodingKey::from_secret(&key)?,
            validation,
            issuer: issuer.to_owned(),
            ttl_secs,
        })
    }

    /// Access-token lifetime.
    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Sign a token for `user` in login `session`, with a random id.
    pub fn issue(
        &self,
        user: UserId,
        session: SessionId,
        now: Timestamp,
    ) -> Result<String, TokenError> {
        self.issue_as(user, session, now, uuid::Uuid::new_v4().to_string())
    }

    /// Sign a token for `user` in login `session` issued at `now` with the id `jti`: the same
    /// arguments give the same token.
    pub fn issue_as(
        &self,
        user: UserId,
        session: SessionId,
        now: Timestamp,
        jti: String,
    ) -> Result<String, TokenError> {
        let iat = now.unix_secs();
        let claims = Claims {
            sub: user.to_string(),
            exp: iat.saturating_add(i64::try_from(self.ttl_secs).unwrap_or(i64::MAX)),
            iat,
            nbf: iat,
            jti,
            iss: self.issuer.clone(),
            typ: ACCESS.to_owned(),
            sid: session.to_string(),
        };
        self.sign(&claims)
    }

    /// Sign arbitrary claims (also used by tests to forge expired or wrong-type tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    /// Verify signature, algorithm, issuer, expiry, not-before and type.
    pub fn verify(&self, token: &str) -> Result<Access, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let c = data.claims;
        if c.typ != ACCESS {
            return Err(TokenError::WrongType);
        }
        Ok(Access {
            user: UserId::parse(&c.sub).ok_or(TokenError::Invalid)?,
            session: SessionId::parse(&c.sid).ok_or(TokenError::Invalid)?,
            jti: c.jti,
            expires_at: Timestamp::from_unix_secs(c.exp),
        })
    }
}

/// The process-wide `jsonwebtoken` provider: HS256 and nothing else.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: make_signer,
    verifier_factory: make_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

fn install_provider() {
    // Err means it is installed already (a second `TokenKeys` in the same process).
    let _ = PROVIDER.install_default();
}

struct Hs256(Hmac<Sha256>);

impl Hs256 {
    fn new(key: &[u8]) -> jsonwebtoken::errors::Result<Self> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .map(Self)
            .map_err(|_| new_error(ErrorKind::InvalidKeyFormat))
    }
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // verify_slice compares in constant time.
        mac.verify_slice(sig).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn make_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.as_bytes())?)),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

fn make_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match alg {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_as_bytes()?)?)),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            &SecretKey::parse(&crate::secrets::generate_hex()).unwrap(),
            "coffer",
            900,
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let (u, s) = (UserId::new(), SessionId::new());
        let t = k.issue(u, s, Timestamp::now()).unwrap();
        let a = k.verify(&t).unwrap();
        assert_eq!((a.user, a.session), (u, s));
    }

    #[test]
    fn forgeries_are_refused() {
        let k = keys();
        let t = k
            .issue(UserId::new(), SessionId::new(), Timestamp::now())
            .unwrap();
        let mut parts: Vec<&str> = t.split('.').collect();
        // alg: none with the signature stripped.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        parts[0] = &none;
        assert_eq!(
            k.verify(&format!("{}.{}.", parts[0], parts[1])),
            Err(TokenError::Invalid)
        );
        // Another key.
        assert_eq!(keys().verify(&t), Err(TokenError::Invalid));
        // Tampered payload.
        let mut bad = t.clone();
        bad.insert(t.find('.').unwrap() + 3, 'x');
        assert_eq!(k.verify(&bad), Err(TokenError::Invalid));
        // HS512 header.
        let hs512 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","typ":"JWT"}"#);
        let p: Vec<&str> = t.split('.').collect();
        assert_eq!(
            k.verify(&format!("{hs512}.{}.{}", p[1], p[2])),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn expiry_not_before_and_type() {
        let k = keys();
        let now = Timestamp::now().unix_secs();
        let base = Claims {
            sub: UserId::new().to_string(),
            exp: now + 60,
            iat: now,
            nbf: now,
            jti: "j".into(),
            iss: "coffer".into(),
            typ: ACCESS.into(),
            sid: SessionId::new().to_string(),
        };
        let expired = Claims {
            exp: now - 10,
            ..base.clone()
        };
        assert_eq!(
            k.verify(&k.sign(&expired).unwrap()),
            Err(TokenError::Expired)
        );
        let early = Claims {
            nbf: now + 60,
            ..base.clone()
        };
        assert_eq!(k.verify(&k.sign(&early).unwrap()), Err(TokenError::Expired));
        let refresh = Claims {
            typ: "refresh".into(),
            ..base.clone()
        };
        assert_eq!(
            k.verify(&k.sign(&refresh).unwrap()),
            Err(TokenError::WrongType)
        );
        let foreign = Claims {
            iss: "someone-else".into(),
            ..base
        };
        assert_eq!(
            k.verify(&k.sign(&foreign).unwrap()),
            Err(TokenError::Invalid)
        );
    }
}
