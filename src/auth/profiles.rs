//! The parts of an account that never change (username, email, creation time), kept in
//! memory once read, so `GET /users/me` after a credential check from the cache needs no
//! database round trip (issue 13: on PostgreSQL that round trip set its p99).
//!
//! Invariant: what `user` answers is what the database holds. The cached fields are never
//! updated by any code path (only the password, the role, the lock and the view-key
//! generation change), user ids are random and never reused, and the role is not cached here:
//! it comes from the caller's [`Principal`](crate::auth::principal::Principal), checked
//! against revocations like every credential (a role change is one). An account being deleted
//! is locked first, which kills its credentials and is announced: its entry is dropped then and
//! never asked for again (a read racing the lock may put it back; nothing can read it). When
//! the feed of announcements comes back after missing some, everything is dropped. Disabled,
//! like the credential cache, by `auth.principal_cache_secs = 0`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ids::{Timestamp, UserId};
use crate::meta::revocations::{RevocationSink, Revoked};
use crate::meta::users::{Role, User};
use crate::meta::{MetaError, MetaStore};

/// Accounts held at most; beyond this the cache starts over (it is only a shortcut).
const MAX_ENTRIES: usize = 4_096;

/// What never changes about an account.
#[derive(Debug, Clone)]
struct Fixed {
    username: String,
    email: String,
    created_at: Timestamp,
}

/// The cache of accounts' unchanging parts.
pub(crate) struct Profiles {
    enabled: bool,
    fixed: Mutex<HashMap<UserId, Fixed>>,
}

impl Profiles {
    /// A cache, or one that always asks the database (`enabled` false).
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            fixed: Mutex::new(HashMap::new()),
        }
    }

    /// The account `id`, whose role the caller's credential check read: from memory when it
    /// was read before, else from the database (`None`: no such account).
    pub(crate) async fn user(
        &self,
        meta: &MetaStore,
        id: UserId,
        role: Role,
    ) -> Result<Option<User>, MetaError> {
        if let Some(f) = self.cached(id) {
            return Ok(Some(User {
                id,
                username: f.username,
                email: f.email,
                role,
                created_at: f.created_at,
            }));
        }
        let Some(user) = meta.users().get(id).await? else {
            return Ok(None);
        };
        self.remember(&user);
        Ok(Some(user))
    }

    fn cached(&self, id: UserId) -> Option<Fixed> {
        if !self.enabled {
            return None;
        }
        self.fixed.lock().ok()?.get(&id).cloned()
    }

    fn remember(&self, user: &User) {
        if !self.enabled {
            return;
        }
        let Ok(mut fixed) = self.fixed.lock() else {
            return;
        };
        if fixed.len() >= MAX_ENTRIES {
            fixed.clear();
        }
        fixed.insert(
            user.id,
            Fixed {
                username: user.username.clone(),
                email: user.email.clone(),
                created_at: user.created_at,
            },
        );
    }

    fn forget(&self, what: Option<UserId>) {
        if let Ok(mut fixed) = self.fixed.lock() {
            match what {
                Some(id) => drop(fixed.remove(&id)),
                None => fixed.clear(),
            }
        }
    }
}

impl RevocationSink for Profiles {
    fn revoked(&self, what: Revoked) {
        match what {
            Revoked::User(id) => self.forget(Some(id)),
            Revoked::Everything => self.forget(None),
            Revoked::Session(_) | Revoked::ApiKey(_) | Revoked::File(_) => {}
        }
    }

    fn feed(&self, live: bool) {
        // Nothing here is wrong while the feed is down (the fields never change); deletions
        // announced meanwhile are forgotten when it is back.
        if live {
            self.forget(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> User {
        User {
            id: UserId::new(),
            username: "alice".into(),
            email: "alice@example.com".into(),
            role,
            created_at: Timestamp(1_700_000_000),
        }
    }

    #[test]
    fn the_role_is_the_callers_and_announcements_drop_entries() {
        let p = Profiles::new(true);
        let (a, b) = (user(Role::User), user(Role::Admin));
        p.remember(&a);
        p.remember(&b);
        let got = p.cached(a.id).expect("cached");
        assert_eq!(
            (got.username.as_str(), got.created_at),
            ("alice", a.created_at)
        );
        p.revoked(Revoked::Session(crate::ids::SessionId::new()));
        p.revoked(Revoked::User(a.id));
        assert!(
            p.cached(a.id).is_none(),
            "a deleted or changed account is dropped"
        );
        assert!(p.cached(b.id).is_some(), "others stay");
        p.feed(false);
        assert!(p.cached(b.id).is_some());
        p.feed(true);
        assert!(
            p.cached(b.id).is_none(),
            "a feed that comes back starts empty"
        );
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let p = Profiles::new(false);
        let a = user(Role::User);
        p.remember(&a);
        assert!(p.cached(a.id).is_none());
    }
}
