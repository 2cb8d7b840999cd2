//! Creating accounts, shared by `POST /auth/register` and `coffer user create`.
//!
//! Invariant: every account passes the same validation and password policy, whichever door
//! it came through; uniqueness is decided by the database.

use secrecy::{ExposeSecret, SecretString};

use crate::auth::password::{self, HashError, Passwords};
use crate::config::AuthConfig;
use crate::ids::{Timestamp, UserId};
use crate::meta::users::{Inserted, NewUser, Role, User};
use crate::meta::{MetaError, MetaStore};

/// Why an account was not created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    /// Fields that break their rules: every one of them, not only the first.
    #[error("invalid account fields")]
    Invalid(Vec<InvalidField>),
    /// The words are the answer the client gets too.
    #[error("that username is taken")]
    UsernameTaken,
    /// The words are the answer the client gets too.
    #[error("that email is already registered")]
    EmailTaken,
    /// Hashing the password failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// A field of a new account that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidField {
    /// The field's name, as the request and the command line spell it.
    pub(crate) field: &'static str,
    /// What is wrong with it, in words for the person who typed it.
    pub(crate) message: String,
}

impl InvalidField {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// What a new account needs.
pub(crate) struct NewAccount {
    /// 3-50 of `[A-Za-z0-9_]`.
    pub(crate) username: String,
    /// An email address.
    pub(crate) email: String,
    /// The password (checked against the policy, then hashed).
    pub(crate) password: SecretString,
    pub(crate) role: Role,
}

/// Whether a username is 3-50 of `[A-Za-z0-9_]`.
pub(crate) fn valid_username(u: &str) -> bool {
    (3..=50).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A pragmatic address check: one `@`, a plausible local part, a dotted domain of LDH labels.
pub(crate) fn valid_email(e: &str) -> bool {
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
pub(crate) fn validate(cfg: &AuthConfig, a: &NewAccount) -> Vec<InvalidField> {
    let mut errs = Vec::new();
    if !valid_username(&a.username) {
        errs.push(InvalidField::new(
            "username",
            "must be 3-50 characters of letters, digits and _",
        ));
    }
    if !valid_email(&a.email) {
        errs.push(InvalidField::new("email", "must be a valid email address"));
    }
    let weak = password::check_policy(cfg, a.password.expose_secret());
    errs.extend(weak.into_iter().map(|m| InvalidField::new("password", m)));
    errs
}

/// Validate, hash and insert; uniqueness is the database's answer.
pub(crate) async fn create(
    meta: &MetaStore,
    passwords: &Passwords,
    cfg: &AuthConfig,
    a: NewAccount,
) -> Result<User, AccountError> {
    let errs = validate(cfg, &a);
    if !errs.is_empty() {
        return Err(AccountError::Invalid(errs));
    }
    let hash = passwords.hash(a.password).await?;
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
        Inserted::UsernameTaken => Err(AccountError::UsernameTaken),
        Inserted::EmailTaken => Err(AccountError::EmailTaken),
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
