//! A short-lived, in-process mirror of "this credential is live", so an authenticated request
//! does not need a database round trip every time.
//!
//! Invariant: the cache never outlives a revocation made by this process. Every change that
//! can end or weaken a credential (logout, refresh-token reuse, account deletion, role change,
//! API-key deletion) calls [`PrincipalCache::invalidate`], which bumps an epoch that every
//! entry is checked against, so the next request goes back to SQLite. Entries also expire
//! after `auth.principal_cache_secs` (bounding how long a revocation written by another
//! process could go unseen; 0 disables the cache) and never outlive their token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ids::{ApiKeyId, SessionId, UserId};
use crate::meta::users::Role;

/// Entries held at most; beyond this the cache starts over (it is only a shortcut).
const MAX_ENTRIES: usize = 50_000;

/// What a cached credential resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    /// The user.
    pub user: UserId,
    /// Their role when checked.
    pub role: Role,
    /// The login (tokens) or key (API keys) it belongs to.
    pub via: CachedVia,
}

/// Which credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachedVia {
    /// An access token of this login.
    Session(SessionId),
    /// This API key.
    ApiKey(ApiKeyId),
}

struct Entry {
    value: Cached,
    epoch: u64,
    until: Instant,
}

/// The cache, keyed by the token's `jti` or the API key's hash.
pub struct PrincipalCache {
    ttl: Duration,
    epoch: AtomicU64,
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl PrincipalCache {
    /// A cache whose entries live at most `ttl` (zero disables it).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            epoch: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A live entry for `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let map = self.entries.lock().ok()?;
        let e = map.get(key)?;
        (e.epoch == epoch && e.until > Instant::now()).then_some(e.value)
    }

    /// Remember a credential checked against the database at `epoch` (read with
    /// [`PrincipalCache::epoch`] *before* the check, so a revocation racing the check wins),
    /// for at most `ttl` and never past `limit` (the token's own expiry).
    pub fn put(&self, key: Vec<u8>, value: Cached, epoch: u64, limit: Duration) {
        if self.ttl.is_zero() {
            return;
        }
        let until = Instant::now() + self.ttl.min(limit);
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(
                key,
                Entry {
                    value,
                    epoch,
                    until,
                },
            );
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forget everything: a credential may have been revoked.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> Cached {
        Cached {
            user: UserId::new(),
            role: Role::User,
            via: CachedVia::Session(SessionId::new()),
        }
    }

    #[test]
    fn entries_die_on_invalidation_and_expiry() {
        let c = PrincipalCache::new(Duration::from_secs(60));
        let v = value();
        c.put(b"a".to_vec(), v, c.epoch(), Duration::from_secs(60));
        assert_eq!(c.get(b"a"), Some(v));
        c.invalidate();
        assert_eq!(c.get(b"a"), None);

        // A check that started before an invalidation cannot repopulate the cache.
        let stale_epoch = c.epoch();
        c.invalidate();
        c.put(b"b".to_vec(), v, stale_epoch, Duration::from_secs(60));
        assert_eq!(c.get(b"b"), None);

        c.put(b"c".to_vec(), v, c.epoch(), Duration::ZERO);
        assert_eq!(c.get(b"c"), None, "never past the token's expiry");
        let off = PrincipalCache::new(Duration::ZERO);
        off.put(b"d".to_vec(), v, off.epoch(), Duration::from_secs(60));
        assert_eq!(off.get(b"d"), None);
    }
}
