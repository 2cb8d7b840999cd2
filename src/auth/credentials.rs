//! Resolving what a request presents (a bearer token or an API key) into a [`Principal`],
//! through the principal cache and the metadata store.
//!
//! Invariant: credentials come from `Authorization: Bearer` and `X-API-Key` only (never a
//! query string or cookie), one of them per request; a request only becomes a `Principal`
//! after its token's signature, expiry, type and revocation state, or its API key's hash and
//! expiry, were checked against the database (or a cache entry no revocation made since
//! covers: see `auth::cache`). The role comes from the database, never from the credential.
//! A credential that fails any check is the same [`AuthError::Invalid`], so a client cannot
//! tell which check failed.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::cache::{Cached, CachedVia, PrincipalCache};
use crate::auth::jwt::TokenKeys;
use crate::auth::principal::{Principal, TokenLogin, Via};
use crate::auth::{AuthError, api_key, token_hash};
use crate::ids::Timestamp;
use crate::meta::MetaStore;

/// One credential header as the request carried it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Header<'a> {
    Absent,
    /// Sent, but not visible ASCII: refused like any malformed credential.
    Unreadable,
    Value(&'a str),
}

/// Checks credentials, with what that takes: the token keys, the cache, the store.
pub(crate) struct Credentials {
    pub(crate) tokens: Arc<TokenKeys>,
    pub(crate) principals: Arc<PrincipalCache>,
    pub(crate) meta: MetaStore,
}

impl Credentials {
    /// The caller behind a request's `Authorization` and `X-API-Key` headers.
    pub(crate) async fn authenticate(
        &self,
        authorization: Header<'_>,
        api_key: Header<'_>,
    ) -> Result<Principal, AuthError> {
        match (authorization, api_key) {
            (Header::Absent, Header::Absent) => Err(AuthError::Missing),
            (Header::Value(v), Header::Absent) => {
                let token = bearer_token(v).ok_or(AuthError::Invalid)?;
                self.check_token(token).await
            }
            (Header::Absent, Header::Value(key)) => self.check_api_key(key).await,
            (Header::Unreadable, Header::Absent) | (Header::Absent, Header::Unreadable) => {
                Err(AuthError::Invalid)
            }
            // Readable or not, two credentials are refused before either is looked at.
            _ => Err(AuthError::TwoCredentials),
        }
    }

    async fn check_token(&self, token: &str) -> Result<Principal, AuthError> {
        // Signature, algorithm, issuer, expiry and type: checked on every request, cache or not.
        let access = self.tokens.verify(token).map_err(|_| AuthError::Invalid)?;
        let (session, user) = (access.session, access.user);
        let key = [b"t:".as_slice(), access.jti.as_bytes()].concat();
        let role = match self.principals.get(&key) {
            Some(Cached {
                user: u,
                role,
                via: CachedVia::Session(s),
            }) if u == user && s == session => role,
            _ => {
                let epoch = self.principals.epoch();
                let role = self
                    .meta
                    .sessions()
                    .live_principal(session, user, access.jti.clone(), Timestamp::now())
                    .await?
                    .ok_or(AuthError::Invalid)?;
                let left = time_left(access.expires_at);
                self.principals.put(
                    key,
                    Cached {
                        user,
                        role,
                        via: CachedVia::Session(session),
                    },
                    epoch,
                    left,
                );
                role
            }
        };
        Ok(Principal {
            user_id: user,
            role,
            via: Via::Token(TokenLogin {
                session,
                jti: access.jti,
                expires_at: access.expires_at,
            }),
        })
    }

    async fn check_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let key = key.trim().to_owned();
        let prefix = api_key::prefix_of(&key)
            .ok_or(AuthError::Invalid)?
            .to_owned();
        // Keyed by the hash of the whole key: only the exact key can ever hit.
        let cache_key = [b"k:".as_slice(), &token_hash(&key)].concat();
        if let Some(Cached {
            user,
            role,
            via: CachedVia::ApiKey(_),
        }) = self.principals.get(&cache_key)
        {
            return Ok(Principal {
                user_id: user,
                role,
                via: Via::ApiKey,
            });
        }
        let epoch = self.principals.epoch();
        let found = self.meta.api_keys().find_by_prefix(&prefix).await?;
        let Some(found) = found else {
            // Same work as a hit, so timing does not reveal which prefixes exist.
            let _ = api_key::matches(&key, &[0; 32]);
            return Err(AuthError::Invalid);
        };
        let now = Timestamp::now();
        if !api_key::matches(&key, &found.hash) || found.expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::Invalid);
        }
        let left = found.expires_at.map_or(Duration::MAX, time_left);
        let value = Cached {
            user: found.user_id,
            role: found.role,
            via: CachedVia::ApiKey(found.id),
        };
        self.principals.put(cache_key, value, epoch, left);
        Ok(Principal {
            user_id: found.user_id,
            role: found.role,
            via: Via::ApiKey,
        })
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn time_left(until: Timestamp) -> Duration {
    Duration::from_micros(u64::try_from(until.0.saturating_sub(Timestamp::now().0)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
