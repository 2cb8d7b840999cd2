//! Logins, refresh tokens and revoked access-token ids in SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use super::users::LOCKED;
use crate::ids::{SessionId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::revocations::Revoked;
use crate::meta::sessions::{NewSession, Rotation, Sessions};
use crate::meta::users::Role;

/// Start a login with its first refresh token.
pub fn create(
    c: &Connection,
    id: SessionId,
    user: UserId,
    refresh_hash: &[u8; 32],
    now: Timestamp,
    expires_at: Timestamp,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, user, now, expires_at],
    )?;
    c.execute(
        "INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![&refresh_hash[..], id, now, expires_at],
    )?;
    Ok(())
}

/// Spend `old` and record `new` in its place, in the caller's write transaction. `new` must
/// be a function of `old` (see `auth::refresh`): then a replay of `old` that was rotated at
/// or after `grace_since` (`None`: no grace), into a `new` still unused, is
/// [`Rotation::Replayed`] rather than reuse.
pub fn rotate(
    c: &Connection,
    old: &[u8; 32],
    new: &[u8; 32],
    now: Timestamp,
    expires_at: Timestamp,
    grace_since: Option<Timestamp>,
) -> rusqlite::Result<Rotation> {
    let row = c
        .query_row(
            "SELECT t.session_id, s.user_id, t.used_at, t.expires_at, s.revoked_at
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
             WHERE t.hash = ?1",
            [&old[..]],
            |r| {
                Ok((
                    r.get::<_, SessionId>(0)?,
                    r.get::<_, UserId>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Timestamp>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((session, user, used_at, token_expiry, revoked_at)) = row else {
        return Ok(Rotation::Invalid);
    };
    if revoked_at.is_some() {
        return Ok(Rotation::Invalid);
    }
    if let Some(used_at) = used_at {
        if grace_since.is_some_and(|since| used_at >= since.0)
            && successor_is_unused(c, new, session, now)?
        {
            return Ok(Rotation::Replayed {
                session,
                user,
                rotated_at: Timestamp(used_at),
            });
        }
        revoke(c, session, now)?;
        return Ok(Rotation::Reused { session, user });
    }
    if token_expiry <= now {
        return Ok(Rotation::Invalid);
    }
    c.execute(
        "UPDATE refresh_tokens SET used_at = ?2 WHERE hash = ?1",
        params![&old[..], now],
    )?;
    c.execute(
        "INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![&new[..], session, now, expires_at],
    )?;
    c.execute(
        "UPDATE sessions SET expires_at = ?2 WHERE id = ?1",
        params![session, expires_at],
    )?;
    Ok(Rotation::Rotated { session, user })
}

/// Whether `hash` is a live, unused refresh token of `session`.
fn successor_is_unused(
    c: &Connection,
    hash: &[u8; 32],
    session: SessionId,
    now: Timestamp,
) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM refresh_tokens
             WHERE hash = ?1 AND session_id = ?2 AND used_at IS NULL AND expires_at > ?3",
    )?
    .query_row(params![&hash[..], session, now], |_| Ok(()))
    .optional()?
    .is_some())
}

/// Revoke a login: its refresh tokens and access tokens stop working.
pub fn revoke(c: &Connection, id: SessionId, now: Timestamp) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?;
    Ok(())
}

/// Revoke one access token until it would have expired anyway.
pub fn revoke_access_token(
    c: &Connection,
    jti: &str,
    expires_at: Timestamp,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)",
        params![jti, expires_at],
    )?;
    Ok(())
}

/// Who an access token speaks for, if its login and user are still live and it is not revoked.
/// The role comes from the database, so a demotion applies at once. An account locked for
/// deletion speaks for no one, even through a login that started after the lock (a password
/// verified just before it).
pub fn live_principal(
    c: &Connection,
    session: SessionId,
    user: UserId,
    jti: &str,
    now: Timestamp,
) -> rusqlite::Result<Option<Role>> {
    c.prepare_cached(
        "SELECT u.role FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = ?1 AND s.user_id = ?2 AND s.revoked_at IS NULL AND s.expires_at > ?4
           AND u.password_hash != ?5
           AND NOT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?3)",
    )?
    .query_row(params![session, user, jti, now, LOCKED], |r| r.get(0))
    .optional()
}

/// Remove revocation entries and logins whose tokens have all expired. Returns rows removed.
pub fn prune(c: &Connection, now: Timestamp) -> rusqlite::Result<usize> {
    let a = c.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?1", [now])?;
    let b = c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
    // Spent tokens of long-lived (often refreshed) logins: past their expiry a replay is
    // refused as expired anyway, so keeping them only grows the table.
    let t = c.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?1", [now])?;
    Ok(a + b + t)
}

#[async_trait]
impl Sessions for Sqlite {
    async fn create(&self, s: NewSession) -> Result<(), MetaError> {
        self.write(move |c| create(c, s.id, s.user, &s.refresh_hash, s.created_at, s.expires_at))
            .await
    }

    async fn rotate(
        &self,
        old: [u8; 32],
        new: [u8; 32],
        now: Timestamp,
        expires_at: Timestamp,
        grace_since: Option<Timestamp>,
    ) -> Result<Rotation, MetaError> {
        let rotation = self
            .write(move |c| rotate(c, &old, &new, now, expires_at, grace_since))
            .await?;
        if let Rotation::Reused { session, .. } = rotation {
            self.announce(Some(Revoked::Session(session)));
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
        self.write(move |c| {
            revoke(c, session, now)?;
            revoke_access_token(c, &jti, token_expires_at)
        })
        .await?;
        self.announce(Some(Revoked::Session(session)));
        Ok(())
    }

    async fn live_principal(
        &self,
        session: SessionId,
        user: UserId,
        jti: String,
        now: Timestamp,
    ) -> Result<Option<Role>, MetaError> {
        self.read(move |c| live_principal(c, session, user, &jti, now))
            .await
    }

    async fn prune(&self, now: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| prune(c, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::{test_conn, users};

    fn user(c: &Connection) -> UserId {
        let u = crate::meta::users::NewUser {
            id: UserId::new(),
            username: "carol".into(),
            email: "carol@example.com".into(),
            password_hash: "x".into(),
            role: Role::User,
            created_at: Timestamp::now(),
        };
        users::insert(c, &u).unwrap();
        u.id
    }

    #[test]
    fn rotation_and_reuse_detection() {
        let c = test_conn();
        let uid = user(&c);
        let sid = SessionId::new();
        let now = Timestamp::now();
        let later = now.plus_secs(3600);
        create(&c, sid, uid, &[1; 32], now, later).unwrap();
        assert_eq!(
            live_principal(&c, sid, uid, "j1", now).unwrap(),
            Some(Role::User)
        );

        assert_eq!(
            rotate(&c, &[1; 32], &[2; 32], now, later, None).unwrap(),
            Rotation::Rotated {
                session: sid,
                user: uid
            }
        );
        // Presenting the spent token again revokes the family, including the fresh token.
        assert_eq!(
            rotate(&c, &[1; 32], &[3; 32], now, later, None).unwrap(),
            Rotation::Reused {
                session: sid,
                user: uid
            }
        );
        assert_eq!(
            rotate(&c, &[2; 32], &[4; 32], now, later, None).unwrap(),
            Rotation::Invalid
        );
        assert_eq!(live_principal(&c, sid, uid, "j1", now).unwrap(), None);
        assert_eq!(
            rotate(&c, &[9; 32], &[5; 32], now, later, None).unwrap(),
            Rotation::Invalid
        );
    }

    #[test]
    fn a_locked_account_is_no_principal() {
        let c = test_conn();
        let uid = user(&c);
        let now = Timestamp::now();
        users::lock(&c, uid).unwrap();
        // A login whose password was verified just before the lock, stored just after it.
        let sid = SessionId::new();
        create(&c, sid, uid, &[1; 32], now, now.plus_secs(60)).unwrap();
        assert_eq!(live_principal(&c, sid, uid, "j1", now).unwrap(), None);
    }

    #[test]
    fn within_grace_only_the_token_rotated_last_replays() {
        let c = test_conn();
        let uid = user(&c);
        let sid = SessionId::new();
        let now = Timestamp::now();
        let later = now.plus_secs(3600);
        let grace = Some(now.minus_secs(5));
        create(&c, sid, uid, &[1; 32], now, later).unwrap();
        let rotated = Rotation::Rotated {
            session: sid,
            user: uid,
        };
        let replayed = Rotation::Replayed {
            session: sid,
            user: uid,
            rotated_at: now,
        };
        assert_eq!(
            rotate(&c, &[1; 32], &[2; 32], now, later, grace).unwrap(),
            rotated
        );
        // Again, and again: the same successor, nothing changes.
        for _ in 0..2 {
            assert_eq!(
                rotate(&c, &[1; 32], &[2; 32], now, later, grace).unwrap(),
                replayed
            );
        }
        // A successor that is not the one the token rotated into is reuse.
        assert_eq!(
            rotate(&c, &[1; 32], &[7; 32], now, later, grace).unwrap(),
            Rotation::Reused {
                session: sid,
                user: uid
            }
        );
        assert_eq!(live_principal(&c, sid, uid, "j", now).unwrap(), None);

        // A token rotated before the grace period began, or two rotations ago, is reuse.
        let sid = SessionId::new();
        create(&c, sid, uid, &[3; 32], now, later).unwrap();
        rotate(&c, &[3; 32], &[4; 32], now, later, grace).unwrap();
        let after = Some(now.plus_secs(1));
        assert!(matches!(
            rotate(&c, &[3; 32], &[4; 32], now, later, after).unwrap(),
            Rotation::Reused { .. }
        ));
        let sid = SessionId::new();
        create(&c, sid, uid, &[5; 32], now, later).unwrap();
        rotate(&c, &[5; 32], &[6; 32], now, later, grace).unwrap();
        rotate(&c, &[6; 32], &[8; 32], now, later, grace).unwrap();
        assert!(matches!(
            rotate(&c, &[5; 32], &[6; 32], now, later, grace).unwrap(),
            Rotation::Reused { .. }
        ));
        assert_eq!(
            rotate(&c, &[8; 32], &[9; 32], now, later, grace).unwrap(),
            Rotation::Invalid,
            "the login is revoked"
        );
    }

    #[test]
    fn revoked_jti_is_refused_and_pruned() {
        let c = test_conn();
        let uid = user(&c);
        let sid = SessionId::new();
        let now = Timestamp::now();
        create(&c, sid, uid, &[1; 32], now, now.plus_secs(60)).unwrap();
        revoke_access_token(&c, "j1", now.plus_secs(10)).unwrap();
        assert_eq!(live_principal(&c, sid, uid, "j1", now).unwrap(), None);
        assert_eq!(
            live_principal(&c, sid, uid, "j2", now).unwrap(),
            Some(Role::User)
        );
        assert_eq!(
            prune(&c, now.plus_secs(11)).unwrap(),
            1,
            "the revocation, not the live login"
        );
    }
}
