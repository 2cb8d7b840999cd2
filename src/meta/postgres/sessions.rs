//! Logins, refresh tokens and revoked access-token ids in PostgreSQL.
//!
//! Invariant: a rotation reads and writes in one `SERIALIZABLE` transaction, so two nodes
//! presenting the same refresh token at once cannot both rotate it: one of them loses the
//! conflict, runs again, and finds the token spent (reuse, or a replay within the grace).

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::users::LOCKED;
use super::{IsolationLevel, PgResult, Postgres, REVOCATIONS_CHANNEL, Tx, notify};
use crate::ids::{SessionId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::revocations::Revoked;
use crate::meta::sessions::{NewSession, Rotation, Sessions};
use crate::meta::users::Role;

/// Start a login with its first refresh token (one statement).
pub async fn create(c: &impl GenericClient, s: &NewSession) -> PgResult<()> {
    let st = c
        .prepare_cached(
            "WITH s AS (
                 INSERT INTO sessions (id, user_id, created_at, expires_at)
                 VALUES ($1, $2, $3, $4) RETURNING id)
             INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at)
             SELECT $5, s.id, $3, $4 FROM s",
        )
        .await?;
    c.execute(
        &st,
        &[
            &s.id,
            &s.user,
            &s.created_at,
            &s.expires_at,
            &&s.refresh_hash[..],
        ],
    )
    .await?;
    Ok(())
}

/// What [`rotate`] takes.
pub struct RotateArgs {
    /// The token presented.
    pub old: [u8; 32],
    /// Its successor (a function of `old`).
    pub new: [u8; 32],
    /// Now.
    pub now: Timestamp,
    /// The successor's expiry.
    pub expires_at: Timestamp,
    /// Replays of a token rotated at or after this are not reuse.
    pub grace_since: Option<Timestamp>,
    /// `<node> <echo id>`: how the announcement of a revocation begins.
    pub origin: String,
}

/// Spend `old` and record `new` in its place, in the caller's serializable transaction (the
/// same steps as on SQLite).
pub async fn rotate(t: &Tx<'_>, a: &RotateArgs) -> PgResult<Rotation> {
    let st = t
        .prepare_cached(
            "SELECT t.session_id, s.user_id, t.used_at, t.expires_at, s.revoked_at
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
             WHERE t.hash = $1",
        )
        .await?;
    let Some(row) = t.query_opt(&st, &[&&a.old[..]]).await? else {
        return Ok(Rotation::Invalid);
    };
    let session: SessionId = row.try_get(0)?;
    let user: UserId = row.try_get(1)?;
    let used_at: Option<i64> = row.try_get(2)?;
    let token_expiry: Timestamp = row.try_get(3)?;
    let revoked_at: Option<i64> = row.try_get(4)?;
    if revoked_at.is_some() {
        return Ok(Rotation::Invalid);
    }
    if let Some(used_at) = used_at {
        if a.grace_since.is_some_and(|since| used_at >= since.0)
            && successor_is_unused(t, &a.new, session, a.now).await?
        {
            return Ok(Rotation::Replayed {
                session,
                user,
                rotated_at: Timestamp(used_at),
            });
        }
        revoke(t, session, a.now).await?;
        let payload = format!("{} {}", a.origin, Revoked::Session(session).encode());
        notify(t, &payload).await?;
        return Ok(Rotation::Reused { session, user });
    }
    if token_expiry <= a.now {
        return Ok(Rotation::Invalid);
    }
    t.execute(
        "UPDATE refresh_tokens SET used_at = $2 WHERE hash = $1",
        &[&&a.old[..], &a.now],
    )
    .await?;
    t.execute(
        "INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4)",
        &[&&a.new[..], &session, &a.now, &a.expires_at],
    )
    .await?;
    t.execute(
        "UPDATE sessions SET expires_at = $2 WHERE id = $1",
        &[&session, &a.expires_at],
    )
    .await?;
    Ok(Rotation::Rotated { session, user })
}

/// Whether `hash` is a live, unused refresh token of `session`.
async fn successor_is_unused(
    t: &Tx<'_>,
    hash: &[u8; 32],
    session: SessionId,
    now: Timestamp,
) -> PgResult<bool> {
    let st = t
        .prepare_cached(
            "SELECT 1 FROM refresh_tokens
             WHERE hash = $1 AND session_id = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .await?;
    Ok(t.query_opt(&st, &[&&hash[..], &session, &now])
        .await?
        .is_some())
}

/// Revoke a login: its refresh tokens and access tokens stop working.
async fn revoke(t: &Tx<'_>, id: SessionId, now: Timestamp) -> PgResult<()> {
    t.execute(
        "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        &[&id, &now],
    )
    .await?;
    Ok(())
}

/// End a login, revoke the access token that asked for it, and announce it to the other
/// nodes (one statement, so one transaction: the announcement leaves on its commit).
pub async fn logout(
    c: &impl GenericClient,
    session: SessionId,
    jti: &str,
    token_expires_at: Timestamp,
    now: Timestamp,
    payload: &str,
) -> PgResult<()> {
    let st = c
        .prepare_cached(
            "WITH ended AS (
                 UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL),
             spent AS (
                 INSERT INTO revoked_tokens (jti, expires_at) VALUES ($3, $4)
                 ON CONFLICT (jti) DO NOTHING)
             SELECT pg_notify($5, $6)",
        )
        .await?;
    c.execute(
        &st,
        &[
            &session,
            &now,
            &jti,
            &token_expires_at,
            &REVOCATIONS_CHANNEL,
            &payload,
        ],
    )
    .await?;
    Ok(())
}

/// The role an access token speaks for, if its login and user are live (and not locked) and
/// it is not revoked.
pub async fn live_principal(
    c: &impl GenericClient,
    session: SessionId,
    user: UserId,
    jti: &str,
    now: Timestamp,
) -> PgResult<Option<Role>> {
    let st = c
        .prepare_cached(
            "SELECT u.role FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > $4
               AND u.password_hash <> $5
               AND NOT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $3)",
        )
        .await?;
    c.query_opt(&st, &[&session, &user, &jti, &now, &LOCKED])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// Remove revocation entries, logins and refresh tokens past their expiry. Rows removed.
pub async fn prune(t: &Tx<'_>, now: Timestamp) -> PgResult<usize> {
    let mut n = 0;
    for sql in [
        "DELETE FROM revoked_tokens WHERE expires_at <= $1",
        "DELETE FROM sessions WHERE expires_at <= $1",
        // Spent tokens of long-lived logins: past their expiry a replay is refused anyway.
        "DELETE FROM refresh_tokens WHERE expires_at <= $1",
    ] {
        n += t.execute(sql, &[&now]).await?;
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[async_trait]
impl Sessions for Postgres {
    async fn create(&self, session: NewSession) -> Result<(), MetaError> {
        self.one(session, |c, s| Box::pin(create(c, s))).await
    }

    async fn rotate(
        &self,
        old: [u8; 32],
        new: [u8; 32],
        now: Timestamp,
        expires_at: Timestamp,
        grace_since: Option<Timestamp>,
    ) -> Result<Rotation, MetaError> {
        let echo = self.hub.echo();
        let args = RotateArgs {
            old,
            new,
            now,
            expires_at,
            grace_since,
            origin: echo.origin(),
        };
        let rotation = self
            .tx(IsolationLevel::Serializable, args, |t, a| {
                Box::pin(rotate(t, a))
            })
            .await?;
        if let Rotation::Reused { session, .. } = rotation {
            self.announce(Some(Revoked::Session(session)), echo).await;
        }
        Ok(rotation)
    }

    async fn logout(
        &self,
        session: SessionId,
        jti: String,
        token_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), MetaError> {
        let echo = self.hub.echo();
        let payload = Self::payload(&echo, Revoked::Session(session));
        self.one(
            (session, jti, token_expires_at, now, payload),
            |c, (session, jti, expires, now, payload)| {
                Box::pin(logout(c, *session, jti, *expires, *now, payload))
            },
        )
        .await?;
        self.announce(Some(Revoked::Session(session)), echo).await;
        Ok(())
    }

    async fn live_principal(
        &self,
        session: SessionId,
        user: UserId,
        jti: String,
        now: Timestamp,
    ) -> Result<Option<Role>, MetaError> {
        self.one((session, user, jti, now), |c, (session, user, jti, now)| {
            Box::pin(live_principal(c, *session, *user, jti, *now))
        })
        .await
    }

    async fn prune(&self, now: Timestamp) -> Result<usize, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, now, |t, &now| {
            Box::pin(prune(t, now))
        })
        .await
    }
}
