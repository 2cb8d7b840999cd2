//! A short-lived, in-process mirror of "this credential is live", so an authenticated request
//! does not need a database round trip every time.
//!
//! Invariant: the cache never outlives a revocation, made by this node or another. Every
//! change that can end or weaken a credential (logout, refresh-token reuse, account deletion,
//! role change, API-key deletion) is announced by the metadata engine that committed it
//! ([`crate::meta::revocations`]), on this node before the change's call returns and on the
//! others as their listener hears it; the cache is a [`RevocationSink`] and drops exactly the
//! entries that revocation covers, so other users' entries survive (one user creating and
//! deleting keys in a loop cannot empty everyone's cache). While the announcements from other
//! nodes may be missed (the listener lost its connection) the cache serves nothing, and it
//! starts empty when they resume. A check that started before a revocation cannot put a
//! revoked credential back: it carries the epoch it started at, and a put is refused when a
//! revocation made since covers it (or when too many were made since to tell). Entries also
//! expire after `auth.principal_cache_secs` (0 disables the cache) and never outlive their
//! token.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ids::{ApiKeyId, SessionId, UserId};
use crate::meta::revocations::{Recent, RevocationSink, Revoked};
use crate::meta::users::Role;

/// Entries held at most; beyond this the cache starts over (it is only a shortcut).
const MAX_ENTRIES: usize = 50_000;

/// What a cached credential resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) user: UserId,
    /// Their role when checked.
    pub(crate) role: Role,
    /// The login (tokens) or key (API keys) it belongs to.
    pub(crate) via: CachedVia,
}

/// The credential an entry stands for: revocations find entries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CachedVia {
    /// An access token of this login.
    Session(SessionId),
    /// This API key.
    ApiKey(ApiKeyId),
}

/// Whether revocation `r` ends `c`.
fn covers(r: Revoked, c: &Cached) -> bool {
    match r {
        Revoked::Session(s) => c.via == CachedVia::Session(s),
        Revoked::ApiKey(k) => c.via == CachedVia::ApiKey(k),
        Revoked::User(u) => c.user == u,
        Revoked::Everything => true,
        Revoked::File(_) => false,
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    /// Lookups answered from the cache.
    pub(crate) hits: u64,
    /// Lookups that went to the database.
    pub(crate) misses: u64,
    /// Entries dropped because a revocation covered them.
    pub(crate) revoked: u64,
    /// Entries held now.
    pub(crate) entries: u64,
    /// Whether revocations from every node reach the cache (else it serves nothing).
    pub(crate) live: bool,
}

struct Entry {
    value: Cached,
    until: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<Vec<u8>, Entry>,
    /// The keys cached for each credential (a login has one per access token it issued).
    by_via: HashMap<CachedVia, HashSet<Vec<u8>>>,
    /// The credentials cached for each user.
    by_user: HashMap<UserId, HashSet<CachedVia>>,
    /// The last revocations, newest last; the last one made the current epoch.
    recent: Recent,
    revoked: u64,
}

impl State {
    fn insert(&mut self, key: Vec<u8>, entry: Entry) {
        self.remove(&key);
        let (via, user) = (entry.value.via, entry.value.user);
        self.by_via.entry(via).or_default().insert(key.clone());
        self.by_user.entry(user).or_default().insert(via);
        self.entries.insert(key, entry);
    }

    /// Drop one entry and its index references.
    fn remove(&mut self, key: &[u8]) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        let Cached { user, via, .. } = e.value;
        if let Slot::Occupied(mut keys) = self.by_via.entry(via) {
            keys.get_mut().remove(key);
            if keys.get().is_empty() {
                keys.remove();
                if let Slot::Occupied(mut vias) = self.by_user.entry(user) {
                    vias.get_mut().remove(&via);
                    if vias.get().is_empty() {
                        vias.remove();
                    }
                }
            }
        }
        true
    }

    /// Drop every entry of one credential; returns how many.
    fn remove_via(&mut self, via: CachedVia) -> u64 {
        let keys = self.by_via.get(&via).cloned().unwrap_or_default();
        keys.iter().map(|k| u64::from(self.remove(k))).sum()
    }

    fn clear(&mut self) -> u64 {
        let n = self.entries.len() as u64;
        self.entries.clear();
        self.by_via.clear();
        self.by_user.clear();
        n
    }
}

/// The cache, keyed by the token's `jti` or the API key's hash.
pub(crate) struct PrincipalCache {
    ttl: Duration,
    /// Whether revocations made elsewhere reach this cache now; without them it serves nothing.
    live: AtomicBool,
    /// Revocations so far; changed only with `state` locked.
    epoch: AtomicU64,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PrincipalCache {
    /// A cache whose entries live at most `ttl` (zero disables it).
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A live entry for `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Cached> {
        if self.ttl.is_zero() || !self.live.load(Ordering::Acquire) {
            return None;
        }
        let found = self.state.lock().ok().and_then(|mut s| {
            let e = s.entries.get(key)?;
            if e.until > Instant::now() {
                return Some(e.value);
            }
            s.remove(key);
            None
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remember a credential checked against the database at `epoch` (read with
    /// [`PrincipalCache::epoch`] *before* the check, so a revocation racing the check wins),
    /// for at most `ttl` and never past `limit` (the token's own expiry).
    pub(crate) fn put(&self, key: Vec<u8>, value: Cached, epoch: u64, limit: Duration) {
        if self.ttl.is_zero() || !self.live.load(Ordering::Acquire) {
            return;
        }
        let until = Instant::now() + self.ttl.min(limit);
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        // Revocations made while the credential was being checked: the check may have read
        // the database before them.
        let missed = self.epoch.load(Ordering::Acquire).saturating_sub(epoch);
        if s.recent.refuses(missed, |r| covers(r, &value)) {
            return;
        }
        if s.entries.len() >= MAX_ENTRIES {
            s.clear();
        }
        s.insert(key, Entry { value, until });
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forget every entry `what` covers, and refuse puts of checks that started before now
    /// and that it covers. Call it after the revocation is committed.
    pub(crate) fn invalidate(&self, what: Revoked) {
        let Ok(mut s) = self.state.lock() else {
            // A poisoned lock: `get` answers nothing any more, so nothing stale is served.
            return;
        };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        s.recent.push(what);
        let dropped = match what {
            Revoked::Session(id) => s.remove_via(CachedVia::Session(id)),
            Revoked::ApiKey(id) => s.remove_via(CachedVia::ApiKey(id)),
            Revoked::User(id) => {
                let vias = s.by_user.get(&id).cloned().unwrap_or_default();
                vias.into_iter().map(|v| s.remove_via(v)).sum()
            }
            Revoked::Everything => s.clear(),
            Revoked::File(_) => 0,
        };
        s.revoked += dropped;
    }

    /// Whether the cache serves from memory now.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Counters for `/metrics`.
    pub(crate) fn stats(&self) -> CacheStats {
        let (revoked, entries) = self
            .state
            .lock()
            .map(|s| (s.revoked, s.entries.len() as u64))
            .unwrap_or_default();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            revoked,
            entries,
            live: self.is_live(),
        }
    }
}

impl RevocationSink for PrincipalCache {
    fn revoked(&self, what: Revoked) {
        self.invalidate(what);
    }

    fn feed(&self, live: bool) {
        if live {
            // Announcements may have been missed while the feed was down: forget everything,
            // and refuse the puts of checks that began before now.
            self.invalidate(Revoked::Everything);
            self.live.store(true, Ordering::Release);
        } else {
            self.live.store(false, Ordering::Release);
            self.invalidate(Revoked::Everything);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn token(user: UserId, session: SessionId) -> Cached {
        Cached {
            user,
            role: Role::User,
            via: CachedVia::Session(session),
        }
    }

    fn key(user: UserId, id: ApiKeyId) -> Cached {
        Cached {
            user,
            role: Role::User,
            via: CachedVia::ApiKey(id),
        }
    }

    #[test]
    fn entries_expire_and_the_cache_can_be_off() {
        let c = PrincipalCache::new(MINUTE);
        let v = token(UserId::new(), SessionId::new());
        c.put(b"c".to_vec(), v, c.epoch(), Duration::ZERO);
        assert_eq!(c.get(b"c"), None, "never past the token's expiry");
        let off = PrincipalCache::new(Duration::ZERO);
        off.put(b"d".to_vec(), v, off.epoch(), MINUTE);
        assert_eq!(off.get(b"d"), None);
    }

    #[test]
    fn a_revocation_drops_only_what_it_covers() {
        let c = PrincipalCache::new(MINUTE);
        let (alice, bob) = (UserId::new(), UserId::new());
        let (login_a, login_b) = (SessionId::new(), SessionId::new());
        let (key_a, key_b) = (ApiKeyId::new(), ApiKeyId::new());
        let entries = [
            (b"a1".to_vec(), token(alice, login_a)),
            // A second access token of the same login.
            (b"a2".to_vec(), token(alice, login_a)),
            (b"ak".to_vec(), key(alice, key_a)),
            (b"b1".to_vec(), token(bob, login_b)),
            (b"bk".to_vec(), key(bob, key_b)),
        ];
        let fill = || {
            for (k, v) in &entries {
                c.put(k.clone(), *v, c.epoch(), MINUTE);
            }
        };
        let live = || -> Vec<&[u8]> {
            entries
                .iter()
                .filter(|(k, _)| c.get(k).is_some())
                .map(|(k, _)| k.as_slice())
                .collect()
        };
        fill();
        c.invalidate(Revoked::ApiKey(key_a));
        assert_eq!(live(), [&b"a1"[..], b"a2", b"b1", b"bk"]);
        c.invalidate(Revoked::Session(login_a));
        assert_eq!(live(), [&b"b1"[..], b"bk"]);
        fill();
        c.invalidate(Revoked::User(alice));
        assert_eq!(live(), [&b"b1"[..], b"bk"]);
        // Revoking something not cached changes nothing.
        c.invalidate(Revoked::User(UserId::new()));
        c.invalidate(Revoked::Session(SessionId::new()));
        assert_eq!(live(), [&b"b1"[..], b"bk"]);
        c.invalidate(Revoked::Everything);
        assert!(live().is_empty());
        let stats = c.stats();
        assert_eq!((stats.revoked, stats.entries), (8, 0));
        // The indexes hold nothing for entries that are gone.
        let s = c.state.lock().unwrap();
        assert!(s.by_via.is_empty() && s.by_user.is_empty());
    }

    #[test]
    fn a_check_that_started_before_a_revocation_cannot_put_it_back() {
        let c = PrincipalCache::new(MINUTE);
        let (alice, bob) = (UserId::new(), UserId::new());
        let (login_a, login_b) = (SessionId::new(), SessionId::new());
        // Checks of alice's and bob's tokens start; alice's login is revoked meanwhile.
        let started = c.epoch();
        c.invalidate(Revoked::Session(login_a));
        c.put(b"a".to_vec(), token(alice, login_a), started, MINUTE);
        c.put(b"b".to_vec(), token(bob, login_b), started, MINUTE);
        assert_eq!(c.get(b"a"), None, "the revoked login is not cached");
        assert!(c.get(b"b").is_some(), "an unrelated one is");
        // The same for users and keys, and a check started after the revocation is cached.
        let started = c.epoch();
        c.invalidate(Revoked::User(alice));
        let k = ApiKeyId::new();
        c.put(b"ak".to_vec(), key(alice, k), started, MINUTE);
        assert_eq!(c.get(b"ak"), None);
        c.put(b"ak".to_vec(), key(alice, k), c.epoch(), MINUTE);
        assert!(c.get(b"ak").is_some());
        // Too many revocations since the check started to tell: not cached.
        let started = c.epoch();
        for _ in 0..=crate::meta::revocations::RECENT {
            c.invalidate(Revoked::Session(SessionId::new()));
        }
        c.put(b"b2".to_vec(), token(bob, login_b), started, MINUTE);
        assert_eq!(c.get(b"b2"), None);
    }

    #[test]
    fn a_cache_whose_feed_is_down_serves_nothing_and_starts_empty_when_it_is_back() {
        let c = PrincipalCache::new(MINUTE);
        let v = token(UserId::new(), SessionId::new());
        c.put(b"t".to_vec(), v, c.epoch(), MINUTE);
        let started = c.epoch();
        c.feed(false);
        assert_eq!(c.get(b"t"), None);
        c.put(b"u".to_vec(), v, c.epoch(), MINUTE);
        assert_eq!(c.get(b"u"), None, "nothing is cached while down");
        c.feed(true);
        assert!(c.is_live());
        assert_eq!(c.get(b"t"), None, "what was cached before is gone");
        c.put(b"t".to_vec(), v, started, MINUTE);
        assert_eq!(
            c.get(b"t"),
            None,
            "a check from before the outage cannot put it back"
        );
        c.put(b"t".to_vec(), v, c.epoch(), MINUTE);
        assert!(c.get(b"t").is_some());
    }

    #[test]
    fn a_replaced_entry_leaves_no_stale_index() {
        let c = PrincipalCache::new(MINUTE);
        let (alice, bob) = (UserId::new(), UserId::new());
        let s = SessionId::new();
        c.put(b"t".to_vec(), token(alice, s), c.epoch(), MINUTE);
        // The same key now resolves to another user (it cannot in practice; the index must
        // follow anyway).
        c.put(b"t".to_vec(), token(bob, s), c.epoch(), MINUTE);
        c.invalidate(Revoked::User(alice));
        assert!(c.get(b"t").is_some());
        c.invalidate(Revoked::User(bob));
        assert_eq!(c.get(b"t"), None);
        let st = c.stats();
        assert_eq!((st.hits, st.misses, st.revoked), (1, 1, 1));
    }
}
