//! Accounts: what the rest of the crate may ask of the `users` table, whatever the engine.
//!
//! Invariant: usernames and emails are unique case-insensitively, decided by the database (a
//! unique index), never by a check-then-insert race. `password_hash` leaves the store only
//! towards password verification. An account being deleted is locked first: from that commit
//! on it can log in with nothing, no credential of it resolves, and no file row can be added
//! to it.

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::page::Page;

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
    /// 3-50 of `[A-Za-z0-9_]`.
    pub username: String,
    /// An email address.
    pub email: String,
    /// The PHC hash of its password.
    pub password_hash: String,
    /// `user` or `admin`.
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

/// What a login attempt reads, in one go: the account (if any) and every argon2 cost the
/// stored hashes use, so a failed login can do the same work whatever the account's state.
#[derive(Debug, Clone)]
pub struct ForLogin {
    /// The account and its hash.
    pub credentials: Option<Credentials>,
    /// Each cost in use, e.g. `$argon2id$v=19$m=19456,t=2,p=1$43`: the PHC string up to its
    /// salt, then the length of its hash in base64 characters.
    pub costs: Vec<String>,
}

/// What a role change did.
#[derive(Debug, Clone)]
pub enum RoleChange {
    /// Done: the account as it is now.
    Changed(User),
    /// It is the last administrator who can still log in: not demoted.
    LastAdmin,
    /// No such account.
    NoUser,
}

/// What locking an account for deletion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Locked: its logins and keys are gone, it gains no file.
    Locked,
    /// It is the last administrator who can still log in: left alone.
    LastAdmin,
    /// No such account.
    NoUser,
}

/// What deleting an account row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The row is gone (its sessions and keys with it).
    Deleted,
    /// The account still owns files: nothing was deleted.
    OwnsFiles,
    /// No such account.
    NoUser,
}

/// The `users` table.
#[async_trait]
pub trait Users: Send + Sync {
    /// Insert an account; a uniqueness conflict is an outcome, not an error.
    async fn insert(&self, user: NewUser) -> Result<Inserted, MetaError>;

    /// The account and hash for a username (case-insensitive; a locked account's hash is
    /// returned too: it verifies nothing) and the costs in use, read together.
    async fn for_login(&self, username: &str) -> Result<ForLogin, MetaError>;

    /// One account.
    async fn get(&self, id: UserId) -> Result<Option<User>, MetaError>;

    /// Replace a password hash (a rehash after a parameter change). A locked account keeps
    /// its lock.
    async fn set_password_hash(&self, id: UserId, hash: String) -> Result<(), MetaError>;

    /// Bytes the user stores now.
    async fn used_bytes(&self, id: UserId) -> Result<u64, MetaError>;

    /// Newest first, keyset-paginated after `(created_at, id)`.
    async fn list(
        &self,
        after: Option<(Timestamp, UserId)>,
        limit: usize,
    ) -> Result<Page<User>, MetaError>;

    /// Change a role, refusing to demote the last administrator who can still log in (one
    /// transaction, so two admins demoting each other cannot both succeed).
    async fn set_role(&self, id: UserId, role: Role) -> Result<RoleChange, MetaError>;

    /// First step of deleting an account, with the last-administrator check in the same
    /// transaction: its logins and API keys go, it can no longer log in, and no file row can
    /// be added to it.
    async fn lock(&self, id: UserId) -> Result<Locked, MetaError>;

    /// Delete an account row (its sessions and keys go with it), only when it owns no file.
    async fn delete(&self, id: UserId) -> Result<Deleted, MetaError>;

    /// The account's view-key generation, bound into the view tokens it mints; `None` when
    /// the account is gone or locked for deletion (its view URLs are dead).
    async fn view_generation(&self, id: UserId) -> Result<Option<i64>, MetaError>;

    /// Move the account's view-key generation on: every view token minted before stops
    /// working. One write, so every node sees it at its next check.
    async fn bump_view_generation(&self, id: UserId) -> Result<(), MetaError>;
}
