//! Per-client rate limits (GCRA, via `governor`): one bucket per address for every route, and
//! a stricter shared bucket for login and register.
//!
//! Invariant: tracked state stays bounded. Buckets that have refilled are indistinguishable
//! from new ones and are dropped every few seconds; beyond `max_tracked_clients` they are
//! dropped at once, and if an address-spraying attack still fills the table, requests pass
//! unlimited until buckets refill: failing closed would let the sprayer lock out every client.
//! IPv6 clients are keyed by their /64, since one host usually owns the whole prefix.
//!
//! With several nodes on one PostgreSQL database the login budget is the service's, not a
//! node's (`login_per_minute` is per address for the whole service): the same GCRA, one upsert
//! per attempt in `meta::throttle`. While the database does not answer, the attempt is refused
//! as unavailable at once (a login or a registration needs the database anyway, and waiting
//! for it twice would double the time to a 503); any other database failure falls back to this
//! node's bucket. The general bucket stays per node: behind N nodes a client gets up to N times
//! `requests_per_second` (see the README).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

use crate::config::RateLimitConfig;
use crate::ids::Timestamp;
use crate::meta::{MetaError, MetaStore};
use crate::net::network_key;

type Keyed =
    RateLimiter<IpAddr, governor::state::keyed::DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// One keyed limiter with its housekeeping.
pub struct Bucket {
    limiter: Keyed,
    max_keys: usize,
    last_sweep_ms: AtomicU64,
    started: std::time::Instant,
}

impl Bucket {
    fn new(quota: Quota, max_keys: usize) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            max_keys,
            last_sweep_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// `Err(seconds to wait)` when the address is over its budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.limiter.len() >= self.max_keys {
            self.sweep();
            if self.limiter.len() >= self.max_keys {
                // Spraying faster than buckets refill. Refusing everyone would hand the sprayer
                // a denial of service against all clients; tracking more would grow memory
                // without bound. So requests pass unchecked until buckets refill (the
                // per-account login throttle still applies).
                return Ok(());
            }
        }
        self.limiter
            .check_key(&network_key(ip))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                wait.as_secs_f64().ceil().max(1.0) as u64
            })
    }

    /// Drop refilled buckets; at most once a second.
    pub fn sweep(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000 && last != 0 {
            return;
        }
        self.last_sweep_ms.store(now.max(1), Ordering::Relaxed);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// The service's limiters.
pub struct RateLimits {
    /// Every route but health checks.
    pub global: Bucket,
    /// Login and register, one shared budget (this node's; see [`RateLimits::check_login`]).
    pub login: Bucket,
    /// The login budget shared by every node, when the database is shared.
    login_shared: Option<SharedBudget>,
}

/// Why a login or registration may not go on.
#[derive(Debug)]
pub enum LoginRefused {
    /// Over the address's budget: retry in this many seconds.
    Wait(u64),
    /// The shared budget's database does not answer.
    Unavailable(MetaError),
}

/// The login budget in the shared database: one request per `interval_us`, bursts of `burst`.
struct SharedBudget {
    meta: MetaStore,
    interval_us: i64,
    burst: u32,
}

impl RateLimits {
    /// From `[rate_limit]` (validated: all positive).
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let per = Duration::from_secs_f64(1.0 / f64::from(cfg.requests_per_second.max(1)));
        let global = Quota::with_period(per)
            .unwrap_or_else(|| Quota::per_second(nz(cfg.requests_per_second)))
            .allow_burst(nz(cfg.burst));
        let login = Quota::per_minute(nz(cfg.login_per_minute));
        Self {
            global: Bucket::new(global, cfg.max_tracked_clients),
            login: Bucket::new(login, cfg.max_tracked_clients),
            login_shared: None,
        }
    }

    /// The same limits, with the login budget kept in `meta`'s shared tables when it has them
    /// (PostgreSQL): the same rate and burst as the in-memory bucket, for the whole service.
    pub fn shared_by(mut self, meta: &MetaStore, cfg: &RateLimitConfig) -> Self {
        if meta.login_throttles().is_some() {
            let per_minute = i64::from(cfg.login_per_minute.max(1));
            self.login_shared = Some(SharedBudget {
                meta: meta.clone(),
                interval_us: 60_000_000 / per_minute,
                burst: cfg.login_per_minute.max(1),
            });
        }
        self
    }

    /// Take one login or register attempt of `ip` from its budget; `Err(seconds to wait)`.
    pub async fn check_login(&self, ip: IpAddr) -> Result<(), LoginRefused> {
        let Some(b) = &self.login_shared else {
            return self.login.check(ip).map_err(LoginRefused::Wait);
        };
        let Some(t) = b.meta.login_throttles() else {
            return self.login.check(ip).map_err(LoginRefused::Wait);
        };
        let net = network_key(ip).to_string();
        match t
            .take_budget(&net, Timestamp::now(), b.interval_us, b.burst)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(wait_us)) => {
                let wait = u64::try_from(wait_us).unwrap_or(1);
                Err(LoginRefused::Wait(wait.div_ceil(1_000_000).max(1)))
            }
            Err(e @ (MetaError::Unavailable(_) | MetaError::Busy)) => {
                Err(LoginRefused::Unavailable(e))
            }
            Err(e) => {
                // This node's bucket meanwhile: a limit per node rather than none.
                tracing::warn!(error = %e, "cannot read the shared login budget; using this node's");
                self.login.check(ip).map_err(LoginRefused::Wait)
            }
        }
    }

    /// Periodic housekeeping.
    pub fn sweep(&self) {
        self.global.sweep();
        self.login.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rps: u32, burst: u32, login: u32) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: rps,
            burst,
            login_per_minute: login,
            max_tracked_clients: 16,
        }
    }

    #[test]
    fn login_budget_allows_five_then_refuses() {
        let r = RateLimits::new(&cfg(50, 100, 5));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            assert!(r.login.check(ip).is_ok());
        }
        let wait = r.login.check(ip).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(r.login.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let r = RateLimits::new(&cfg(1, 1, 5));
        assert!(r.global.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(r.global.check("2001:db8::2".parse().unwrap()).is_err());
        assert!(r.global.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn spraying_stays_bounded() {
        let r = RateLimits::new(&cfg(1, 1, 5));
        for i in 0..10_000u32 {
            let _ = r.global.check(IpAddr::from(i.to_be_bytes()));
        }
        assert!(r.global.len() <= 16, "{}", r.global.len());
        // Full of sprayed addresses: a newcomer is not refused.
        assert!(r.global.check("198.51.100.200".parse().unwrap()).is_ok());
    }
}
