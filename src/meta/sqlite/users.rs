//! The `users` table in SQLite.
//!
//! Invariant: usernames and emails are unique case-insensitively (the schema's
//! `COLLATE NOCASE UNIQUE`, not a check-then-insert race).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use super::conn::is_unique_violation;
use crate::ids::{Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::page::Page;
use crate::meta::revocations::Revoked;
use crate::meta::users::{
    Credentials, Deleted, ForLogin, Inserted, Locked, NewUser, Role, RoleChange, User, Users,
};

impl rusqlite::types::FromSql for Role {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Role::parse(v.as_str()?).ok_or(rusqlite::types::FromSqlError::InvalidType)
    }
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
    // Never over a lock: a rehash racing the account's deletion must not unlock it.
    c.execute(
        "UPDATE users SET password_hash = ?2 WHERE id = ?1 AND password_hash != ?3",
        params![id, hash, LOCKED],
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

/// The view-key generation of a live (not locked) account.
pub fn view_generation(c: &Connection, id: UserId) -> rusqlite::Result<Option<i64>> {
    c.prepare_cached("SELECT view_generation FROM users WHERE id = ?1 AND password_hash != ?2")?
        .query_row(params![id, LOCKED], |r| r.get(0))
        .optional()
}

/// Move an account's view-key generation on.
pub fn bump_view_generation(c: &Connection, id: UserId) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE users SET view_generation = view_generation + 1 WHERE id = ?1",
        [id],
    )?;
    Ok(())
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

#[async_trait]
impl Users for Sqlite {
    async fn insert(&self, user: NewUser) -> Result<Inserted, MetaError> {
        self.write(move |c| insert(c, &user)).await
    }

    async fn for_login(&self, username: &str) -> Result<ForLogin, MetaError> {
        let username = username.to_owned();
        self.read(move |c| {
            Ok(ForLogin {
                credentials: credentials_by_username(c, &username)?,
                costs: password_costs(c)?,
            })
        })
        .await
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, MetaError> {
        self.read(move |c| get(c, id)).await
    }

    async fn set_password_hash(&self, id: UserId, hash: String) -> Result<(), MetaError> {
        self.write(move |c| set_password_hash(c, id, &hash)).await
    }

    async fn used_bytes(&self, id: UserId) -> Result<u64, MetaError> {
        self.read(move |c| used_bytes(c, id)).await
    }

    async fn view_generation(&self, id: UserId) -> Result<Option<i64>, MetaError> {
        self.read(move |c| view_generation(c, id)).await
    }

    async fn bump_view_generation(&self, id: UserId) -> Result<(), MetaError> {
        self.write(move |c| bump_view_generation(c, id)).await
    }

    async fn list(
        &self,
        after: Option<(Timestamp, UserId)>,
        limit: usize,
    ) -> Result<Page<User>, MetaError> {
        self.read(move |c| list(c, after, limit)).await
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<RoleChange, MetaError> {
        let change = self
            .write(move |c| {
                let Some(user) = get(c, id)? else {
                    return Ok(RoleChange::NoUser);
                };
                if user.role == Role::Admin && role == Role::User && count_admins(c)? <= 1 {
                    return Ok(RoleChange::LastAdmin);
                }
                set_role(c, id, role)?;
                Ok(RoleChange::Changed(User { role, ..user }))
            })
            .await?;
        if let RoleChange::Changed(u) = &change {
            self.announce(Some(Revoked::User(u.id)));
        }
        Ok(change)
    }

    async fn lock(&self, id: UserId) -> Result<Locked, MetaError> {
        let locked = self
            .write(move |c| {
                let Some(target) = get(c, id)? else {
                    return Ok(Locked::NoUser);
                };
                if target.role == Role::Admin && count_admins(c)? <= 1 {
                    return Ok(Locked::LastAdmin);
                }
                lock(c, id)?;
                Ok(Locked::Locked)
            })
            .await?;
        if locked == Locked::Locked {
            self.announce(Some(Revoked::User(id)));
        }
        Ok(locked)
    }

    async fn delete(&self, id: UserId) -> Result<Deleted, MetaError> {
        self.write(move |c| delete(c, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::test_conn;

    #[test]
    fn the_view_generation_moves_on_and_dies_with_the_lock() {
        let c = test_conn();
        let u = new_user("viewgen");
        insert(&c, &u).unwrap();
        assert_eq!(view_generation(&c, u.id).unwrap(), Some(0));
        bump_view_generation(&c, u.id).unwrap();
        bump_view_generation(&c, u.id).unwrap();
        assert_eq!(view_generation(&c, u.id).unwrap(), Some(2));
        assert_eq!(view_generation(&c, UserId::new()).unwrap(), None);
        assert!(lock(&c, u.id).unwrap());
        assert_eq!(
            view_generation(&c, u.id).unwrap(),
            None,
            "locked: no view URL works"
        );
    }

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
        use crate::meta::files::{FileObject, Inserted as FileInserted, StoredFile};
        use crate::meta::sqlite::{api_keys, files};
        let c = test_conn();
        let u = new_user("leaving");
        insert(&c, &u).unwrap();
        let file = |id: FileId| StoredFile {
            file: FileObject {
                id,
                filename: "a.txt".into(),
                size: 1,
                content_type: "text/plain; charset=utf-8".into(),
                sha256: "00".into(),
                created_at: Timestamp::now(),
                expires_at: None,
                scanned_at: None,
                grant_id: None,
            },
            owner_id: u.id,
            blob_key: id.to_string(),
            sealing: None,
        };
        let kept = FileId::new();
        assert_eq!(
            files::insert(&c, &file(kept)).unwrap(),
            FileInserted::Inserted
        );
        assert!(lock(&c, u.id).unwrap());
        assert_eq!(
            files::insert(&c, &file(FileId::new())).unwrap(),
            FileInserted::OwnerGone,
            "an upload that authenticated before the lock cannot land after it"
        );
        assert!(api_keys::find_by_prefix(&c, "nothing").unwrap().is_none());
        assert_eq!(delete(&c, u.id).unwrap(), Deleted::OwnsFiles);
        assert!(files::delete(&c, kept, Timestamp(1)).unwrap().is_some());
        assert_eq!(delete(&c, u.id).unwrap(), Deleted::Deleted);
        assert_eq!(delete(&c, u.id).unwrap(), Deleted::NoUser);
        assert_eq!(
            files::insert(&c, &file(FileId::new())).unwrap(),
            FileInserted::OwnerGone,
            "nor after the account is gone (no foreign-key error)"
        );
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
}
