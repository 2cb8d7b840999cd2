//! The `users` table in PostgreSQL.
//!
//! Invariant: usernames and emails are unique case-insensitively (unique indexes on
//! `lower(... COLLATE "C")`, SQLite's NOCASE), decided by the database. Every change that can
//! lower the number of administrators who can log in (a demotion, a lock) holds the
//! `ADMINS` advisory lock, so its count sees every such change committed before it: two
//! nodes demoting or deleting the last two administrators at once cannot both succeed.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::{IsolationLevel, PgResult, Postgres, Tx, lock_keys, notify};
use crate::ids::{Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::page::Page;
use crate::meta::revocations::Revoked;
use crate::meta::users::{
    Credentials, Deleted, ForLogin, Inserted, Locked, NewUser, Role, RoleChange, User, Users,
};

/// The `password_hash` of an account being deleted (as on SQLite): no password verifies
/// against it, and every query that lets an account act refuses an owner marked with it.
pub(crate) const LOCKED: &str = "!locked";

fn user(r: &Row) -> PgResult<User> {
    Ok(User {
        id: r.try_get(0)?,
        username: r.try_get(1)?,
        email: r.try_get(2)?,
        role: r.try_get(3)?,
        created_at: r.try_get(4)?,
    })
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Insert an account; a uniqueness conflict is an outcome, not an error.
pub async fn insert(c: &impl GenericClient, u: &NewUser) -> PgResult<Inserted> {
    let st = c
        .prepare_cached(
            "INSERT INTO users (id, username, email, password_hash, role, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    let res = c
        .execute(
            &st,
            &[
                &u.id,
                &u.username,
                &u.email,
                &u.password_hash,
                &u.role,
                &u.created_at,
            ],
        )
        .await;
    match res {
        Ok(_) => Ok(Inserted::Created),
        Err(e) => match e.as_db_error() {
            Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
                if db.constraint() == Some("users_email_nocase") {
                    Ok(Inserted::EmailTaken)
                } else {
                    Ok(Inserted::UsernameTaken)
                }
            }
            _ => Err(e),
        },
    }
}

/// The account and hash for a username (case-insensitive) and every argon2 cost in use, in
/// one statement (one snapshot, one round trip).
pub async fn for_login(c: &impl GenericClient, username: &str) -> PgResult<ForLogin> {
    let st = c
        .prepare_cached(
            "SELECT u.id, u.username, u.email, u.role, u.created_at, u.password_hash,
                    ARRAY(SELECT cost FROM password_costs ORDER BY cost)
             FROM (SELECT 1) AS one
             LEFT JOIN users u ON lower(u.username COLLATE \"C\") = lower($1 COLLATE \"C\")",
        )
        .await?;
    let r = c.query_one(&st, &[&username]).await?;
    let credentials = match r.try_get::<_, Option<String>>(5)? {
        Some(password_hash) => Some(Credentials {
            user: user(&r)?,
            password_hash,
        }),
        None => None,
    };
    Ok(ForLogin {
        credentials,
        costs: r.try_get(6)?,
    })
}

/// One account.
pub async fn get(c: &impl GenericClient, id: UserId) -> PgResult<Option<User>> {
    let st = c
        .prepare_cached("SELECT id, username, email, role, created_at FROM users WHERE id = $1")
        .await?;
    c.query_opt(&st, &[&id])
        .await?
        .as_ref()
        .map(user)
        .transpose()
}

/// Replace a password hash, never over a lock (a rehash racing the account's deletion must not
/// unlock it: the condition is checked again on the row a concurrent lock committed).
pub async fn set_password_hash(c: &impl GenericClient, id: UserId, hash: &str) -> PgResult<()> {
    let st = c
        .prepare_cached("UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash <> $3")
        .await?;
    c.execute(&st, &[&id, &hash, &LOCKED]).await?;
    Ok(())
}

/// The view-key generation of a live (not locked) account.
pub async fn view_generation(c: &impl GenericClient, id: UserId) -> PgResult<Option<i64>> {
    let st = c
        .prepare_cached("SELECT view_generation FROM users WHERE id = $1 AND password_hash <> $2")
        .await?;
    match c.query_opt(&st, &[&id, &LOCKED]).await? {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

/// Move an account's view-key generation on.
pub async fn bump_view_generation(c: &impl GenericClient, id: UserId) -> PgResult<()> {
    let st = c
        .prepare_cached("UPDATE users SET view_generation = view_generation + 1 WHERE id = $1")
        .await?;
    c.execute(&st, &[&id]).await?;
    Ok(())
}

/// Bytes the user stores now.
pub async fn used_bytes(c: &impl GenericClient, id: UserId) -> PgResult<u64> {
    let st = c
        .prepare_cached("SELECT used_bytes FROM users WHERE id = $1")
        .await?;
    let v: i64 = match c.query_opt(&st, &[&id]).await? {
        Some(r) => r.try_get(0)?,
        None => 0,
    };
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Newest first, keyset-paginated after `(created_at, id)`.
pub async fn list(
    c: &impl GenericClient,
    after: Option<(Timestamp, UserId)>,
    n: usize,
) -> PgResult<Page<User>> {
    let fetch = limit(n.saturating_add(1));
    let rows = match after {
        None => {
            let st = c
                .prepare_cached(
                    "SELECT id, username, email, role, created_at FROM users
                     ORDER BY created_at DESC, id DESC LIMIT $1",
                )
                .await?;
            c.query(&st, &[&fetch]).await?
        }
        Some((at, id)) => {
            let st = c
                .prepare_cached(
                    "SELECT id, username, email, role, created_at FROM users
                     WHERE (created_at, id) < ($1, $2)
                     ORDER BY created_at DESC, id DESC LIMIT $3",
                )
                .await?;
            c.query(&st, &[&at, &id, &fetch]).await?
        }
    };
    let users = rows.iter().map(user).collect::<PgResult<Vec<_>>>()?;
    Ok(Page::from_overfetch(users, n))
}

/// Take the `ADMINS` lock (until the transaction ends) and count the administrators who can
/// still log in, as committed by every earlier holder.
async fn lock_and_count_admins(t: &Tx<'_>) -> PgResult<i64> {
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_keys::ADMINS])
        .await?;
    let st = t
        .prepare_cached("SELECT count(*) FROM users WHERE role = 'admin' AND password_hash <> $1")
        .await?;
    t.query_one(&st, &[&LOCKED]).await?.try_get(0)
}

/// Change a role, refusing to demote the last administrator who can still log in; a change
/// is announced (`payload`) to the other nodes.
pub async fn set_role(t: &Tx<'_>, id: UserId, role: Role, payload: &str) -> PgResult<RoleChange> {
    let admins = lock_and_count_admins(t).await?;
    let Some(user) = get(t, id).await? else {
        return Ok(RoleChange::NoUser);
    };
    if user.role == Role::Admin && role == Role::User && admins <= 1 {
        return Ok(RoleChange::LastAdmin);
    }
    t.execute("UPDATE users SET role = $2 WHERE id = $1", &[&id, &role])
        .await?;
    notify(t, payload).await?;
    Ok(RoleChange::Changed(User { role, ..user }))
}

/// First step of deleting an account: its logins and API keys go, and it can no longer log
/// in (announced, `payload`, to the other nodes); refused for the last administrator who can
/// still log in.
pub async fn lock(t: &Tx<'_>, id: UserId, payload: &str) -> PgResult<Locked> {
    let admins = lock_and_count_admins(t).await?;
    let Some(target) = get(t, id).await? else {
        return Ok(Locked::NoUser);
    };
    if target.role == Role::Admin && admins <= 1 {
        return Ok(Locked::LastAdmin);
    }
    t.execute("DELETE FROM sessions WHERE user_id = $1", &[&id])
        .await?;
    t.execute("DELETE FROM api_keys WHERE user_id = $1", &[&id])
        .await?;
    // Waits for an upload inserting a file row for this owner (it holds the row), so that
    // file is either committed before the lock or refused after it.
    t.execute(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        &[&id, &LOCKED],
    )
    .await?;
    notify(t, payload).await?;
    Ok(Locked::Locked)
}

/// Delete an account row (its sessions and keys cascade), only when it owns no file. One
/// statement: the outer query sees the row as it was before the delete.
pub async fn delete(c: &impl GenericClient, id: UserId) -> PgResult<Deleted> {
    let st = c
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM users WHERE id = $1
                   AND NOT EXISTS (SELECT 1 FROM files WHERE owner_id = $1)
                 RETURNING 1)
             SELECT (SELECT count(*) FROM gone), EXISTS (SELECT 1 FROM users WHERE id = $1)",
        )
        .await?;
    match c.query_one(&st, &[&id]).await {
        Ok(r) => Ok(match (r.try_get::<_, i64>(0)?, r.try_get::<_, bool>(1)?) {
            (1, _) => Deleted::Deleted,
            (_, true) => Deleted::OwnsFiles,
            _ => Deleted::NoUser,
        }),
        // A file row committed after this statement's snapshot: the foreign key refuses.
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(Deleted::OwnsFiles),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Users for Postgres {
    async fn insert(&self, user: NewUser) -> Result<Inserted, MetaError> {
        self.one(user, |c, u| Box::pin(insert(c, u))).await
    }

    async fn for_login(&self, username: &str) -> Result<ForLogin, MetaError> {
        self.one(username.to_owned(), |c, name| Box::pin(for_login(c, name)))
            .await
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, MetaError> {
        self.one(id, |c, &id| Box::pin(get(c, id))).await
    }

    async fn set_password_hash(&self, id: UserId, hash: String) -> Result<(), MetaError> {
        self.one((id, hash), |c, (id, hash)| {
            Box::pin(set_password_hash(c, *id, hash))
        })
        .await
    }

    async fn used_bytes(&self, id: UserId) -> Result<u64, MetaError> {
        self.one(id, |c, &id| Box::pin(used_bytes(c, id))).await
    }

    async fn view_generation(&self, id: UserId) -> Result<Option<i64>, MetaError> {
        self.one(id, |c, &id| Box::pin(view_generation(c, id)))
            .await
    }

    async fn bump_view_generation(&self, id: UserId) -> Result<(), MetaError> {
        self.one(id, |c, &id| Box::pin(bump_view_generation(c, id)))
            .await
    }

    async fn list(
        &self,
        after: Option<(Timestamp, UserId)>,
        limit: usize,
    ) -> Result<Page<User>, MetaError> {
        self.one((after, limit), |c, &(after, limit)| {
            Box::pin(list(c, after, limit))
        })
        .await
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<RoleChange, MetaError> {
        let echo = self.hub.echo();
        let payload = Self::payload(&echo, Revoked::User(id));
        let change = self
            .tx(
                IsolationLevel::ReadCommitted,
                (id, role, payload),
                |t, (id, role, payload)| Box::pin(set_role(t, *id, *role, payload)),
            )
            .await?;
        if let RoleChange::Changed(_) = change {
            self.announce(Some(Revoked::User(id)), echo).await;
        }
        Ok(change)
    }

    async fn lock(&self, id: UserId) -> Result<Locked, MetaError> {
        let echo = self.hub.echo();
        let payload = Self::payload(&echo, Revoked::User(id));
        let locked = self
            .tx(
                IsolationLevel::ReadCommitted,
                (id, payload),
                |t, (id, p)| Box::pin(lock(t, *id, p)),
            )
            .await?;
        if locked == Locked::Locked {
            self.announce(Some(Revoked::User(id)), echo).await;
        }
        Ok(locked)
    }

    async fn delete(&self, id: UserId) -> Result<Deleted, MetaError> {
        self.one(id, |c, &id| Box::pin(delete(c, id))).await
    }
}
