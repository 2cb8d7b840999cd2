//! Logins (`sessions`), their rotating refresh tokens, and revoked access-token ids.
//!
//! Invariant: a refresh token is stored only as its SHA-256; presenting one that was already
//! rotated revokes its whole login (RFC 6819 section 5.2.2.3, OAuth 2.1 section 4.3.1), except
//! the token rotated last, presented again within the grace period the caller gives and while
//! its successor is unused (`auth.refresh_reuse_grace_secs`, off by default). A revoked login
//! stops every access token that carries its id. An account locked for deletion speaks for no
//! one, whatever login it holds.

use async_trait::async_trait;

use crate::ids::{SessionId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::users::Role;

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Rotated: the old token is spent, the new one is live.
    Rotated {
        /// The login.
        session: SessionId,
        /// Its owner.
        user: UserId,
    },
    /// Unknown, expired, or its login is revoked.
    Invalid,
    /// Rotated moments ago (within the grace period) into `new`, which is still unused:
    /// nothing changed, the caller answers `new` again.
    Replayed {
        /// The login.
        session: SessionId,
        /// Its owner.
        user: UserId,
        /// When it was rotated (the `now` of that rotation), so the same access token can be
        /// answered again.
        rotated_at: Timestamp,
    },
    /// Already rotated: the login has been revoked in response.
    Reused {
        /// The revoked login.
        session: SessionId,
        /// Its owner.
        user: UserId,
    },
}

/// A new login with its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The login's id (carried by its access tokens).
    pub id: SessionId,
    /// Whose.
    pub user: UserId,
    /// SHA-256 of the first refresh token.
    pub refresh_hash: [u8; 32],
    /// Now.
    pub created_at: Timestamp,
    /// When its refresh tokens stop working.
    pub expires_at: Timestamp,
}

/// Logins and revocations.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Start a login with its first refresh token.
    async fn create(&self, session: NewSession) -> Result<(), MetaError>;

    /// Spend the refresh token `old` and record `new` in its place (one transaction); reuse
    /// of a spent token revokes the login. `new` must be a function of `old` (see
    /// `auth::refresh`): then a replay of `old` rotated at or after `grace_since` (`None`: no
    /// grace), into a `new` still unused, is [`Rotation::Replayed`] rather than reuse.
    async fn rotate(
        &self,
        old: [u8; 32],
        new: [u8; 32],
        now: Timestamp,
        expires_at: Timestamp,
        grace_since: Option<Timestamp>,
    ) -> Result<Rotation, MetaError>;

    /// End a login and revoke the access token that asked for it (until it would expire).
    async fn logout(
        &self,
        session: SessionId,
        jti: String,
        token_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), MetaError>;

    /// The role an access token speaks for, if its login and user are still live (and not
    /// locked) and it is not revoked. Read on every uncached request, so a demotion or a
    /// revocation applies at once.
    async fn live_principal(
        &self,
        session: SessionId,
        user: UserId,
        jti: String,
        now: Timestamp,
    ) -> Result<Option<Role>, MetaError>;

    /// Remove revocation entries, logins and refresh tokens past their expiry. Rows removed.
    async fn prune(&self, now: Timestamp) -> Result<usize, MetaError>;
}
