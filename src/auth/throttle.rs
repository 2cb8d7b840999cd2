//! Slowing password guessing against one account, without handing an attacker a lock-out.
//!
//! Failures are counted per (account, client network) and, far more gently, per account. An
//! IPv6 client counts as its /64, so hopping addresses inside its own prefix changes nothing.
//! After `login_failures_before_delay` failures from one network, that network must wait
//! before its next try, the wait doubling per failure up to `login_max_delay_secs`; attempts
//! during the wait are refused without being checked or counted. The per-account counter (for
//! guessing spread over many networks) only imposes short waits, and never on a network the
//! owner has logged in from before, so an attacker cannot lock the owner out.
//!
//! Several nodes on one PostgreSQL database share this state (`meta::throttle`): a guesser
//! spreading attempts over the nodes meets the same counters, with the same numbers. One
//! SQLite node keeps it in memory.
//!
//! Invariant: memory is bounded: idle entries are forgotten after the window, and the map never
//! holds more than `MAX_ENTRIES`; shared rows that can no longer delay anyone are pruned by the
//! sweeper. A database that fails a throttle call is logged and the attempt goes on to the
//! login itself, which needs the same database.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::Timestamp;
use crate::meta::throttle::{DelayRule, ThrottleRules};
use crate::meta::{MetaError, MetaStore};
use crate::net::network_key;

/// Entries forgotten after this long without a failure.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Per-account failures (from any address) before the gentle delay applies.
const ACCOUNT_FACTOR: u32 = 4;
/// The per-account delay never exceeds this.
const ACCOUNT_MAX_DELAY: Duration = Duration::from_secs(30);
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    until: Instant,
}

/// Networks remembered per account after a successful login.
const KNOWN_PER_ACCOUNT: usize = 8;
/// How long a successful login vouches for its network.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);

/// The failure counters.
pub(crate) struct LoginThrottle {
    threshold: u32,
    max_delay: Duration,
    entries: Mutex<HashMap<(String, Option<IpAddr>), Entry>>,
    /// Networks each account logged in from recently: exempt from the account-wide delay.
    known: Mutex<HashMap<String, Vec<(IpAddr, Instant)>>>,
    /// The shared tables, when several nodes may serve (PostgreSQL); else the maps above.
    shared: Option<MetaStore>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Whole seconds to wait for `d` (at least 1), as `Retry-After` says it.
fn wait_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl LoginThrottle {
    /// A throttle with the configured threshold and cap, kept in memory.
    pub(crate) fn new(threshold: u32, max_delay_secs: u64) -> Self {
        Self {
            threshold: threshold.max(1),
            max_delay: Duration::from_secs(max_delay_secs.max(1)),
            entries: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// The same throttle, kept in `meta`'s shared tables when it has them (PostgreSQL).
    pub(crate) fn shared_by(mut self, meta: &MetaStore) -> Self {
        self.shared = meta.login_throttles().is_some().then(|| meta.clone());
        self
    }

    /// The rules in the units the shared tables use.
    pub(crate) fn rules(&self) -> ThrottleRules {
        ThrottleRules {
            network: DelayRule {
                threshold: self.threshold,
                max_delay_us: micros(self.max_delay),
            },
            account: DelayRule {
                threshold: self.threshold.saturating_mul(ACCOUNT_FACTOR),
                max_delay_us: micros(ACCOUNT_MAX_DELAY.min(self.max_delay)),
            },
            window_us: micros(WINDOW),
            known_for_us: micros(KNOWN_FOR),
            known_per_account: u32::try_from(KNOWN_PER_ACCOUNT).unwrap_or(u32::MAX),
        }
    }

    /// `Ok(Err(seconds))` when this attempt must wait. A shared throttle that cannot be read
    /// fails the attempt (never an unthrottled login).
    pub(crate) async fn check(
        &self,
        username: &str,
        ip: IpAddr,
    ) -> Result<Result<(), u64>, MetaError> {
        let Some(t) = self.shared.as_ref().and_then(|m| m.login_throttles()) else {
            return Ok(self.check_here(username, ip));
        };
        let (user, net, now) = (username.to_lowercase(), network_key(ip), Timestamp::now());
        match t
            .wait_until(&user, &net.to_string(), now, micros(KNOWN_FOR))
            .await
        {
            Ok(Some(until)) => Ok(Err(wait_secs(Duration::from_micros(
                u64::try_from(until.0 - now.0).unwrap_or(0),
            )))),
            Ok(None) => Ok(Ok(())),
            Err(e) => Err(e),
        }
    }

    /// Count a failed attempt.
    pub(crate) async fn failed(&self, username: &str, ip: IpAddr) {
        let Some(t) = self.shared.as_ref().and_then(|m| m.login_throttles()) else {
            return self.failed_here(username, ip);
        };
        let (user, net) = (username.to_lowercase(), network_key(ip).to_string());
        if let Err(e) = t.failed(&user, &net, Timestamp::now(), self.rules()).await {
            tracing::warn!(error = %e, "cannot count a failed login in the shared throttle");
        }
    }

    /// A success clears its network's counter and vouches for the network.
    pub(crate) async fn succeeded(&self, username: &str, ip: IpAddr) {
        let Some(t) = self.shared.as_ref().and_then(|m| m.login_throttles()) else {
            return self.succeeded_here(username, ip);
        };
        let (user, net) = (username.to_lowercase(), network_key(ip).to_string());
        if let Err(e) = t
            .succeeded(&user, &net, Timestamp::now(), self.rules())
            .await
        {
            tracing::warn!(error = %e, "cannot record a login in the shared throttle");
        }
    }

    /// [`LoginThrottle::check`] in this process's memory.
    fn check_here(&self, username: &str, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let (user, net) = (username.to_lowercase(), network_key(ip));
        let trusted = self.is_known(&user, net, now);
        let Ok(map) = self.entries.lock() else {
            return Ok(());
        };
        let account = if trusted {
            None
        } else {
            map.get(&(user.clone(), None))
        };
        let wait = [map.get(&(user, Some(net))), account]
            .into_iter()
            .flatten()
            .filter(|e| e.until > now)
            .map(|e| e.until - now)
            .max();
        match wait {
            Some(w) => Err(wait_secs(w)),
            None => Ok(()),
        }
    }

    fn is_known(&self, user: &str, net: IpAddr, now: Instant) -> bool {
        self.known.lock().is_ok_and(|known| {
            known.get(user).is_some_and(|nets| {
                nets.iter()
                    .any(|(n, at)| *n == net && now.duration_since(*at) < KNOWN_FOR)
            })
        })
    }

    /// [`LoginThrottle::failed`] in this process's memory.
    fn failed_here(&self, username: &str, ip: IpAddr) {
        let now = Instant::now();
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.duration_since(e.last) < WINDOW && e.until > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let user = username.to_lowercase();
        let mut bump = |key, threshold: u32, cap: Duration| {
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
                until: now,
            });
            if now.duration_since(e.last) >= WINDOW {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            if e.failures >= threshold {
                let exp = (e.failures - threshold).min(20);
                e.until = now + Duration::from_secs(1u64 << exp).min(cap);
            }
        };
        bump(
            (user.clone(), Some(network_key(ip))),
            self.threshold,
            self.max_delay,
        );
        bump(
            (user, None),
            self.threshold.saturating_mul(ACCOUNT_FACTOR),
            ACCOUNT_MAX_DELAY.min(self.max_delay),
        );
    }

    /// [`LoginThrottle::succeeded`] in this process's memory.
    fn succeeded_here(&self, username: &str, ip: IpAddr) {
        let (user, net, now) = (username.to_lowercase(), network_key(ip), Instant::now());
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&(user.clone(), Some(net)));
        }
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_ENTRIES {
                known.clear();
            }
            let nets = known.entry(user).or_default();
            nets.retain(|(n, at)| *n != net && now.duration_since(*at) < KNOWN_FOR);
            if nets.len() >= KNOWN_PER_ACCOUNT {
                nets.remove(0);
            }
            nets.push((net, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_after_threshold_per_address_only() {
        let t = LoginThrottle::new(3, 900);
        let attacker: IpAddr = "203.0.113.9".parse().unwrap();
        let owner: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..2 {
            t.failed_here("alice", attacker);
            assert!(t.check_here("alice", attacker).is_ok());
        }
        t.failed_here("alice", attacker);
        assert!(t.check_here("ALICE", attacker).is_err());
        assert!(
            t.check_here("alice", owner).is_ok(),
            "the owner's address is not locked"
        );
        t.succeeded_here("alice", attacker);
        assert!(t.check_here("alice", attacker).is_ok());
    }

    #[test]
    fn the_owner_is_never_locked_out_by_a_distributed_attack() {
        let t = LoginThrottle::new(2, 900);
        let home: IpAddr = "198.51.100.7".parse().unwrap();
        t.succeeded_here("carol", home);
        for i in 0..40u8 {
            t.failed_here("carol", IpAddr::from([10, 0, 0, i]));
        }
        assert!(
            t.check_here("carol", "192.0.2.1".parse().unwrap()).is_err(),
            "strangers wait"
        );
        assert!(
            t.check_here("carol", home).is_ok(),
            "the owner's network does not"
        );
        // An IPv6 host hopping inside its /64 is one network.
        for i in 0..3u16 {
            t.failed_here("dave", IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]));
        }
        assert!(
            t.check_here("dave", IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 99]))
                .is_err()
        );
    }

    #[test]
    fn account_wide_delay_is_short() {
        let t = LoginThrottle::new(2, 900);
        for i in 0..40u8 {
            t.failed_here("bob", IpAddr::from([10, 0, 0, i]));
        }
        let wait = t
            .check_here("bob", "192.0.2.1".parse().unwrap())
            .unwrap_err();
        assert!(wait <= 30, "{wait}");
    }
}
