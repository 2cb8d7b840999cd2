//! Creating accounts, shared by `POST /auth/register` and `coffer user create`.
//!
//! Invariant: every account passes the same validation and password policy, whichever door
//! it came through; uniqueness is decided by the database.

use secrecy::{ExposeSecret, SecretString};

use crate::auth::password::{self, Passwords};
use crate::config::AuthConfig;
use crate::error::{AppError, FieldError};
use crate::ids::{Timestamp, UserId};
use crate::meta::MetaStore;
use crate::meta::users::{Inserted, NewUser, Role, User};

/// What a new account needs.
pub struct NewAccount {
    /// 3-50 of `[A-Za-z0-9_]`.
    pub username: String,
    /// An email address.
    pub email: String,
    /// The password (checked against the policy, then hashed).
    pub password: SecretString,
    /// Its role.
    pub role: Role,
}

/// Whether a username is 3-50 of `[A-Za-z0-9_]`.
pub fn valid_username(u: &str) -> bool {
    (3..=50).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A pragmatic address check: one `@`, a plausible local part, a dotted domain of LDH labels.
pub fn valid_email(e: &str) -> bool {
    if e.len() > 254 {
        return false;
    }
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    let local_ok = (1..=64).contains(&local.len())
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&*+-/=?^_`{|}~.".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    local_ok && domain_ok
}

/// Every problem with a new account's fields.
pub fn validate(cfg: &AuthConfig, a: &NewAccount) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if !valid_username(&a.username) {
        errs.push(FieldError::new(
            "username",
            "must be 3-50 characters of letters, digits and _",
        ));
    }
    if !valid_email(&a.email) {
        errs.push(FieldError::new("email", "must be a valid email address"));
    }
    errs.extend(password::check_policy(cfg, a.password.expose_secret()));
    errs
}

/// Validate, hash and insert. Conflicts are 409, validation failures 422.
pub async fn create(
    meta: &MetaStore,
    passwords: &Passwords,
    cfg: &AuthConfig,
    a: NewAccount,
) -> Result<User, AppError> {
    let errs = validate(cfg, &a);
    if !errs.is_empty() {
        return Err(AppError::Validation(errs));
    }
    let hash = passwords
        .hash(a.password)
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
    let new = NewUser {
        id: UserId::new(),
        username: a.username,
        email: a.email,
        password_hash: hash,
        role: a.role,
        created_at: Timestamp::now(),
    };
    match meta.users().insert(new.clone()).await? {
        Inserted::Created => Ok(User {
            id: new.id,
            username: new.username,
            email: new.email,
            role: new.role,
            created_at: new.created_at,
        }),
        Inserted::UsernameTaken => Err(AppError::Conflict("that username is taken".into())),
        Inserted::EmailTaken => Err(AppError::Conflict(
            "that email is already registered".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails() {
        assert!(valid_username("alice_01"));
        assert!(!valid_username("al"));
        assert!(!valid_username("alice smith"));
        assert!(!valid_username(&"a".repeat(51)));
        assert!(valid_email("a.b+tag@example.co.uk"));
        assert!(!valid_email("no-at.example.com"));
        assert!(!valid_email("a@b"));
        assert!(!valid_email("a@@b.com"));
        assert!(!valid_email("a b@example.com"));
        assert!(!valid_email("a@-x.com"));
        assert!(!valid_email("<script>@x.com"));
    }
}
