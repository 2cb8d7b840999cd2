//! Sessions: registering, logging in, rotating a refresh token, logging out. Each returns
//! what happened as a typed outcome and records it in the audit trail here, the one place
//! these events are written.
//!
//! Invariant: a failed login is the same [`LoginOutcome::Refused`] after the same work
//! whatever the account's state (unknown, locked, hashed with older argon2 parameters): the
//! same database reads, and argon2 work for every cost in use (see `auth::password`). A
//! refresh token is spent by its use: the next one is derived from it (`auth::refresh`), a
//! replay of the token rotated last within `auth.refresh_reuse_grace_secs` answers the same
//! pair, and any other reuse revokes the login (the store announces it to every node's credential cache).
//! Logout revokes the login the same two ways. No audit entry carries a secret.

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::SecretString;

use crate::audit::{AuditLog, Event, Record};
use crate::auth::accounts::{self, AccountError, NewAccount};
use crate::auth::jwt::TokenKeys;
use crate::auth::password::Passwords;
use crate::auth::principal::TokenLogin;
use crate::auth::refresh::RefreshTokens;
use crate::auth::throttle::LoginThrottle;
use crate::auth::{AuthError, token_hash};
use crate::config::AuthConfig;
use crate::ids::{SessionId, Timestamp, UserId};
use crate::meta::MetaStore;
use crate::meta::sessions::{NewSession, Rotation};
use crate::meta::users::{ForLogin, User};

/// Logins and what they need: the store (which announces what it revokes to every node's
/// credential cache), the hasher, the throttle, the token makers, and the audit trail.
pub(crate) struct Sessions {
    /// `[auth]`: password policy, refresh-token lifetime and grace period.
    pub(crate) config: AuthConfig,
    pub(crate) meta: MetaStore,
    pub(crate) passwords: Passwords,
    pub(crate) throttle: LoginThrottle,
    pub(crate) tokens: Arc<TokenKeys>,
    pub(crate) refresh_tokens: RefreshTokens,
    pub(crate) audit: AuditLog,
}

/// A login's tokens, for its client and no one else.
pub(crate) struct Tokens {
    /// The signed access token (a JWT).
    pub(crate) access: String,
    /// The opaque refresh token; only its hash is stored.
    pub(crate) refresh: String,
    /// Seconds until the access token expires.
    pub(crate) expires_in_secs: u64,
}

/// What a login attempt came to.
pub(crate) enum LoginOutcome {
    LoggedIn(Tokens),
    /// Unknown name, wrong password or locked account: one outcome, so none can be told apart.
    Refused,
    /// Too many failures from this network for this account: not checked, not counted.
    Throttled {
        retry_after_secs: u64,
    },
}

/// What presenting a refresh token came to.
pub(crate) enum RefreshOutcome {
    /// Rotated, or replayed within the grace period (then the same refresh token again).
    Refreshed(Tokens),
    /// Already spent: the login is revoked now.
    Reused,
    /// Unknown, expired, or its login is revoked.
    Invalid,
}

impl Sessions {
    /// Open an account (validated, hashed, unique) and record it.
    pub(crate) async fn register(
        &self,
        account: NewAccount,
        ip: IpAddr,
    ) -> Result<User, AccountError> {
        let user = accounts::create(&self.meta, &self.passwords, &self.config, account).await?;
        self.audit.record(
            Record::new(Event::Register)
                .actor(user.id)
                .subject(user.id)
                .ip(ip),
        );
        Ok(user)
    }

    /// Exchange a username and password for a new login's tokens.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: SecretString,
        ip: IpAddr,
    ) -> Result<LoginOutcome, AuthError> {
        let username: String = username.chars().take(64).collect();
        if let Err(wait) = self.throttle.check(&username, ip).await? {
            return Ok(LoginOutcome::Throttled {
                retry_after_secs: wait,
            });
        }
        let ForLogin {
            credentials: creds,
            costs,
        } = self.meta.users().for_login(&username).await?;
        let stored = creds.as_ref().map(|c| c.password_hash.clone());
        let verdict = self
            .passwords
            .verify(password.clone(), stored, costs)
            .await?;
        let Some(creds) = creds.as_ref().filter(|_| verdict.ok) else {
            self.throttle.failed(&username, ip).await;
            // Name the account only when it exists: people type passwords into the username
            // field, and those must not end up in the trail.
            let mut record = Record::new(Event::LoginFailed).ip(ip);
            if let Some(c) = &creds {
                record = record
                    .subject(c.user.id)
                    .detail(serde_json::json!({ "username": c.user.username }));
            }
            self.audit.record(record);
            return Ok(LoginOutcome::Refused);
        };
        self.throttle.succeeded(&username, ip).await;
        let user = creds.user.id;
        if verdict.needs_rehash {
            self.upgrade_hash(user, password);
        }
        let tokens = self.start(user).await?;
        self.audit
            .record(Record::new(Event::Login).actor(user).subject(user).ip(ip));
        Ok(LoginOutcome::LoggedIn(tokens))
    }

    /// Store a hash with the current parameters, off the request path.
    fn upgrade_hash(&self, user: UserId, password: SecretString) {
        let (passwords, meta) = (self.passwords.clone(), self.meta.clone());
        tokio::spawn(async move {
            match passwords.hash(password).await {
                Ok(hash) => {
                    if let Err(e) = meta.users().set_password_hash(user, hash).await {
                        tracing::warn!(error = %e, "cannot store the upgraded password hash");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot upgrade a password hash"),
            }
        });
    }

    /// A new login with its first refresh token.
    async fn start(&self, user: UserId) -> Result<Tokens, AuthError> {
        let now = Timestamp::now();
        let session = SessionId::new();
        let refresh = self.refresh_tokens.first();
        self.meta
            .sessions()
            .create(NewSession {
                id: session,
                user,
                refresh_hash: token_hash(&refresh),
                created_at: now,
                expires_at: now.plus_secs(self.config.refresh_ttl_secs),
            })
            .await?;
        self.issue(user, session, refresh, now)
    }

    /// A fresh access token of the login, with `refresh` as its refresh token.
    fn issue(
        &self,
        user: UserId,
        session: SessionId,
        refresh: String,
        now: Timestamp,
    ) -> Result<Tokens, AuthError> {
        Ok(Tokens {
            access: self.tokens.issue(user, session, now)?,
            refresh,
            expires_in_secs: self.tokens.ttl_secs(),
        })
    }

    /// Spend a refresh token for a new pair of the same login.
    pub(crate) async fn refresh(
        &self,
        presented: &str,
        ip: IpAddr,
    ) -> Result<RefreshOutcome, AuthError> {
        let now = Timestamp::now();
        let old = token_hash(presented);
        // Derived, not drawn: a replay within the grace period recomputes the same token.
        let fresh = self.refresh_tokens.next(presented);
        let new = token_hash(&fresh);
        let expires = now.plus_secs(self.config.refresh_ttl_secs);
        let grace = self.config.refresh_reuse_grace_secs;
        let grace_since = (grace > 0).then(|| now.minus_secs(grace));
        let rotation = self
            .meta
            .sessions()
            .rotate(old, new, now, expires, grace_since)
            .await?;
        let (session, user, issued_at, replayed) = match rotation {
            Rotation::Rotated { session, user } => (session, user, now, false),
            Rotation::Replayed {
                session,
                user,
                rotated_at,
            } => (session, user, rotated_at, true),
            Rotation::Reused { session, user } => {
                self.audit.record(
                    Record::new(Event::RefreshReuse)
                        .subject(session)
                        .actor(user)
                        .ip(ip)
                        .detail(serde_json::json!({ "action": "login revoked" })),
                );
                return Ok(RefreshOutcome::Reused);
            }
            Rotation::Invalid => return Ok(RefreshOutcome::Invalid),
        };
        let mut record = Record::new(Event::Refresh)
            .actor(user)
            .subject(session)
            .ip(ip);
        if replayed {
            record = record.detail(serde_json::json!({ "replayed_within_grace": true }));
        }
        self.audit.record(record);
        // The access token is fixed by the new refresh token and the rotation's time, so a
        // replay within the grace answers the same pair.
        let jti = self.refresh_tokens.access_id(&fresh);
        let age = now.unix_secs().saturating_sub(issued_at.unix_secs());
        Ok(RefreshOutcome::Refreshed(Tokens {
            access: self.tokens.issue_as(user, session, issued_at, jti)?,
            refresh: fresh,
            expires_in_secs: self
                .tokens
                .ttl_secs()
                .saturating_sub(u64::try_from(age).unwrap_or(0)),
        }))
    }

    /// End a login: the access token that asks is revoked until it would expire, and the
    /// login's refresh token and every other access token of it stop working at once.
    pub(crate) async fn logout(
        &self,
        user: UserId,
        login: &TokenLogin,
        ip: IpAddr,
    ) -> Result<(), AuthError> {
        let session = login.session;
        self.meta
            .sessions()
            .logout(
                session,
                login.jti.clone(),
                login.expires_at,
                Timestamp::now(),
            )
            .await?;
        self.audit.record(
            Record::new(Event::Logout)
                .actor(user)
                .subject(session)
                .ip(ip),
        );
        Ok(())
    }
}
