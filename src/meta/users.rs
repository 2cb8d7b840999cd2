//! The `users` table.
//!
//! Invariant: usernames and emails are unique case-insensitively (enforced by the schema's
//! `COLLATE NOCASE UNIQUE`, not by a check-then-insert race). `password_hash` never leaves
//! this module except towards password verification.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{Timestamp, UserId};
use crate::meta::{Page, is_unique_violation};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A normal account.
    User,
    /// May administer users and read the audit trail.
    Admin,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl rusqlite::types::FromSql for Role {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Role::parse(v.as_str()?).ok_or(rusqlite::types::FromSqlError::InvalidType)
    }
}

/// A user as clients see it: never a hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    /// The id (the `sub` of its tokens).
    pub id: UserId,
    /// 3-50 of `[A-Za-z0-9_]`.
    pub username: String,
    /// The email address.
    pub email: String,
    /// `user` or `admin`.
    pub role: Role,
    /// When the account was made.
    pub created_at: Timestamp,
}

/// A user with the password hash, for login.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The account.
    pub user: User,
    /// The PHC string.
    pub password_hash: String,
}

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Its id.
    pub id: UserId,
    /// Username.
    pub username: String,
    /// Email.
    pub email: String,
    /// PHC hash.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Creation time.
    pub created_at: Timestamp,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The row exists now.
    Created,
    /// The username is taken (case-insensitively).
    UsernameTaken,
    /// The email is taken (case-insensitively).
    EmailTaken,
}

const COLUMNS: &str = "id, username, email, role, created_at";

fn row_to_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        role: r.get(3)?,
        created_at: r.get(4)?,
    })
}

/// Insert an account; a uniqueness conflict is an outcome, not an error.
pub fn insert(c: &Connection, u: &NewUser) -> rusqlite::Result<Inserted> {
    let res = c.execute(
        "INSERT INTO users (id, username, email, password_hash, role, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            u.id,
            u.username,
            u.email,
            u.password_hash,
            u.role.as_str(),
            u.created_at
        ],
    );
    match res {
        Ok(_) => Ok(Inserted::Created),
        Err(e) if is_unique_violation(&e) => {
            let msg = e.to_string();
            if msg.contains("users.email") {
                Ok(Inserted::EmailTaken)
            } else {
                Ok(Inserted::UsernameTaken)
            }
        }
        Err(e) => Err(e),
    }
}

/// The account and hash for a username (case-insensitive).
pub fn credentials_by_username(
    c: &Connection,
    username: &str,
) -> rusqlite::Result<Option<Credentials>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS}, password_hash FROM users WHERE username = ?1"
    ))?
    .query_row([username], |r| {
        Ok(Credentials {
            user: row_to_user(r)?,
            password_hash: r.get(5)?,
        })
    })
    .optional()
}

/// Every argon2 cost the stored hashes use (kept by triggers, see migration v2), e.g.
/// `$argon2id$v=19$m=19456,t=2,p=1$43`: the PHC string up to its salt, then the length of its
/// hash in base64 characters.
pub fn password_costs(c: &Connection) -> rusqlite::Result<Vec<String>> {
    c.prepare_cached("SELECT cost FROM password_costs ORDER BY cost")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// One account.
pub fn get(c: &Connection, id: UserId) -> rusqlite::Result<Option<User>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], row_to_user)
        .optional()
}

/// Replace a password hash (rehash on login after a parameter change).
pub fn set_password_hash(c: &Connection, id: UserId, hash: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE users SET password_hash = ?2 WHERE id = ?1",
        params![id, hash],
    )?;
    Ok(())
}

/// Bytes the user stores now.
pub fn used_bytes(c: &Connection, id: UserId) -> rusqlite::Result<u64> {
    let v: i64 = c
        .prepare_cached("SELECT used_bytes FROM users WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok(u64::try_from(v).unwrap_or(0))
}

/// The `password_hash` of an account being deleted: no password verifies against it, and
/// every query that lets an account act (`sessions::live_principal`, `api_keys::find_by_prefix`,
/// `files::insert`) refuses an owner marked with it.
pub(crate) const LOCKED: &str = "!locked";

/// Number of admins who can still log in (an account being deleted no longer counts).
pub fn count_admins(c: &Connection) -> rusqlite::Result<u64> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND password_hash != ?1",
        [LOCKED],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// First step of deleting an account: it can no longer log in, and its logins and API keys
/// are gone, so nothing it holds works while its files are removed.
pub fn lock(c: &Connection, id: UserId) -> rusqlite::Result<bool> {
    c.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
    c.execute("DELETE FROM api_keys WHERE user_id = ?1", [id])?;
    Ok(c.execute(
        "UPDATE users SET password_hash = ?2 WHERE id = ?1",
        params![id, LOCKED],
    )? == 1)
}

/// What [`delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The row is gone (its sessions and keys with it).
    Deleted,
    /// The account still owns files: nothing was deleted.
    OwnsFiles,
    /// No such account.
    NoUser,
}

/// Delete an account row (its sessions and keys cascade), only when it owns no file: the caller
/// removes the files (and their blobs) first, and a file that slipped in meanwhile is an
/// outcome to act on, not a foreign-key failure.
pub fn delete(c: &Connection, id: UserId) -> rusqlite::Result<Deleted> {
    let n = c.execute(
        "DELETE FROM users WHERE id = ?1
           AND NOT EXISTS (SELECT 1 FROM files WHERE owner_id = ?1)",
        [id],
    )?;
    if n == 1 {
        Ok(Deleted::Deleted)
    } else if get(c, id)?.is_some() {
        Ok(Deleted::OwnsFiles)
    } else {
        Ok(Deleted::NoUser)
    }
}

/// Change a role.
pub fn set_role(c: &Connection, id: UserId, role: Role) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE users SET role = ?2 WHERE id = ?1",
        params![id, role.as_str()],
    )? == 1)
}

/// Newest first, keyset-paginated after `(created_at, id)`.
pub fn list(
    c: &Connection,
    after: Option<(Timestamp, UserId)>,
    limit: usize,
) -> rusqlite::Result<Page<User>> {
    let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let rows = match after {
        None => c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM users ORDER BY created_at DESC, id DESC LIMIT ?1"
            ))?
            .query_map([fetch], row_to_user)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        Some((at, id)) => c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM users WHERE (created_at, id) < (?1, ?2)
                 ORDER BY created_at DESC, id DESC LIMIT ?3"
            ))?
            .query_map(params![at, id, fetch], row_to_user)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(Page::from_overfetch(rows, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::test_conn;

    pub(crate) fn new_user(name: &str) -> NewUser {
        NewUser {
            id: UserId::new(),
            username: name.into(),
            email: format!("{name}@example.com"),
            password_hash: "$argon2id$dummy".into(),
            role: Role::User,
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn usernames_and_emails_are_unique_case_insensitively() {
        let c = test_conn();
        assert_eq!(insert(&c, &new_user("alice")).unwrap(), Inserted::Created);
        let mut dup = new_user("ALICE");
        dup.email = "other@example.com".into();
        assert_eq!(insert(&c, &dup).unwrap(), Inserted::UsernameTaken);
        let mut dup = new_user("bob");
        dup.email = "Alice@Example.com".into();
        assert_eq!(insert(&c, &dup).unwrap(), Inserted::EmailTaken);
        assert!(credentials_by_username(&c, "Alice").unwrap().is_some());
    }

    #[test]
    fn a_locked_account_gains_no_file_and_goes_only_once_empty() {
        use crate::ids::FileId;
        use crate::meta::{api_keys, files};
        let c = test_conn();
        let u = new_user("leaving");
        insert(&c, &u).unwrap();
        let file = |id: FileId| files::StoredFile {
            file: files::FileObject {
                id,
                filename: "a.txt".into(),
                size: 1,
                content_type: "text/plain; charset=utf-8".into(),
                sha256: "00".into(),
                created_at: Timestamp::now(),
                expires_at: None,
            },
            owner_id: u.id,
            blob_key: id.to_string(),
            sealing: None,
        };
        let kept = FileId::new();
        assert_eq!(
            files::insert(&c, &file(kept)).unwrap(),
            files::Inserted::Inserted
        );
        assert!(lock(&c, u.id).unwrap());
        assert_eq!(
            files::insert(&c, &file(FileId::new())).unwrap(),
            files::Inserted::OwnerGone,
            "an upload that authenticated before the lock cannot land after it"
        );
        assert!(api_keys::find_by_prefix(&c, "nothing").unwrap().is_none());
        assert_eq!(delete(&c, u.id).unwrap(), Deleted::OwnsFiles);
        assert!(files::delete(&c, kept).unwrap());
        assert_eq!(delete(&c, u.id).unwrap(), Deleted::Deleted);
        assert_eq!(delete(&c, u.id).unwrap(), Deleted::NoUser);
        assert_eq!(
            files::insert(&c, &file(FileId::new())).unwrap(),
            files::Inserted::OwnerGone,
            "nor after the account is gone (no foreign-key error)"
        );
    }

    #[test]
    fn password_costs_follow_the_stored_hashes() {
        let c = test_conn();
        let phc = |m: u32| {
            format!(
                "$argon2id$v=19$m={m},t=2,p=1$c29tZXNhbHRzb21lc2FsdA$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY"
            )
        };
        let cost = |m: u32| format!("$argon2id$v=19$m={m},t=2,p=1$43");
        let mut a = new_user("alice");
        a.password_hash = phc(19456);
        let mut b = new_user("bob");
        b.password_hash = phc(65536);
        // Not argon2: counts for nothing.
        let carol = new_user("carol");
        for u in [&a, &b, &carol] {
            insert(&c, u).unwrap();
        }
        assert_eq!(password_costs(&c).unwrap(), [cost(19456), cost(65536)]);
        // A rehash moves bob to the common cost; the stronger one is no longer in use.
        set_password_hash(&c, b.id, &phc(19456)).unwrap();
        assert_eq!(password_costs(&c).unwrap(), [cost(19456)]);
        set_password_hash(&c, carol.id, &phc(4096)).unwrap();
        assert_eq!(password_costs(&c).unwrap(), [cost(19456), cost(4096)]);
        // Locking and deleting accounts take their costs with them.
        lock(&c, carol.id).unwrap();
        delete(&c, a.id).unwrap();
        assert_eq!(password_costs(&c).unwrap(), [cost(19456)]);
        delete(&c, b.id).unwrap();
        assert!(password_costs(&c).unwrap().is_empty());
    }

    #[test]
    fn listing_pages_cover_everyone_once() {
        let c = test_conn();
        for i in 0..7 {
            insert(&c, &new_user(&format!("user{i}"))).unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = list(&c, after, 3).unwrap();
            after = page.items.last().map(|u| (u.created_at, u.id));
            seen.extend(page.items.into_iter().map(|u| u.username));
            if !page.more {
                break;
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 7);
    }
}
