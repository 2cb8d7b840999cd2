//! The authenticated caller ([`Principal`]) and the authorisation rules every route applies to
//! it: administration, credential management and the owner filter for files.
//!
//! Invariant: an API key acts as its owner for files and links and for nothing else: it never
//! carries the owner's admin powers and never manages credentials; both need a login.

use crate::auth::AuthError;
use crate::ids::{SessionId, Timestamp, UserId};
use crate::meta::users::Role;

/// How the caller authenticated.
#[derive(Debug, Clone)]
pub(crate) enum Via {
    Token(TokenLogin),
    /// An API key (which one matters only to the cache, which keeps it for revocations).
    ApiKey,
}

/// The login an access token belongs to, and the token itself: what a logout revokes.
#[derive(Debug, Clone)]
pub(crate) struct TokenLogin {
    pub(crate) session: SessionId,
    /// The token's own id (`jti`).
    pub(crate) jti: String,
    /// When the token expires: its revocation is kept until then.
    pub(crate) expires_at: Timestamp,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub(crate) user_id: UserId,
    /// Read from the database when the credential was checked, never from the credential.
    pub(crate) role: Role,
    pub(crate) via: Via,
}

impl Principal {
    /// Admins only, logged in (403 otherwise): an API key acts as its owner for files and
    /// links, never with the owner's admin powers, so a leaked backend key cannot promote,
    /// delete users or read the audit trail.
    pub(crate) fn require_admin(&self) -> Result<(), AuthError> {
        match (self.role, &self.via) {
            (Role::Admin, Via::Token(_)) => Ok(()),
            (Role::Admin, Via::ApiKey) => Err(AuthError::AdminNeedsLogin),
            (Role::User, _) => Err(AuthError::NotAdmin),
        }
    }

    /// Routes that manage credentials need a login, not an API key (403 otherwise).
    pub(crate) fn require_token(&self) -> Result<&TokenLogin, AuthError> {
        match &self.via {
            Via::Token(login) => Ok(login),
            Via::ApiKey => Err(AuthError::NeedsLogin),
        }
    }

    /// The owner filter for file lookups: logged-in admins see everyone's files; an API key
    /// sees its owner's.
    pub(crate) fn file_scope(&self) -> Option<UserId> {
        match (self.role, &self.via) {
            (Role::Admin, Via::Token(_)) => None,
            _ => Some(self.user_id),
        }
    }
}
