//! Login throttling shared by every node (PostgreSQL): failed logins per (account, network)
//! and per account, networks an account logged in from, and the per-network budget of logins
//! and registrations. The rules (thresholds, growing delays, the budget's rate) are the
//! caller's; this interface keeps their state where every node sees it, one statement per
//! change, so two nodes counting at once both count.
//!
//! Invariant: state only, keyed by a lower-cased username and a network key (an IPv4
//! address, an IPv6 /64); rows that can no longer delay anyone are pruned.

use async_trait::async_trait;

use crate::ids::Timestamp;
use crate::meta::error::MetaError;

/// How failures turn into delays (see `auth::throttle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayRule {
    /// Failures before the first delay.
    pub threshold: u32,
    /// The longest delay, in microseconds.
    pub max_delay_us: i64,
}

/// What the throttle counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRules {
    /// Per (account, network).
    pub network: DelayRule,
    /// Per account, from any network.
    pub account: DelayRule,
    /// A failure older than this no longer counts (microseconds).
    pub window_us: i64,
    /// How long a successful login vouches for its network (microseconds).
    pub known_for_us: i64,
    /// Networks remembered per account.
    pub known_per_account: u32,
}

/// The shared login-throttle tables.
#[async_trait]
pub trait LoginThrottles: Send + Sync {
    /// Until when `username` must wait before trying from `network` (the later of the
    /// network's and, unless the account logged in from that network recently, the account's
    /// delay); `None` when it need not.
    async fn wait_until(
        &self,
        username: &str,
        network: &str,
        now: Timestamp,
        known_for_us: i64,
    ) -> Result<Option<Timestamp>, MetaError>;

    /// Count a failure from `network` and for the account.
    async fn failed(
        &self,
        username: &str,
        network: &str,
        now: Timestamp,
        rules: ThrottleRules,
    ) -> Result<(), MetaError>;

    /// A success: clear the network's counter, vouch for the network.
    async fn succeeded(
        &self,
        username: &str,
        network: &str,
        now: Timestamp,
        rules: ThrottleRules,
    ) -> Result<(), MetaError>;

    /// Take one request from `network`'s login budget (GCRA: one every `interval_us`, bursts
    /// of `burst`). `None` when taken; otherwise how long until one is free (microseconds).
    async fn take_budget(
        &self,
        network: &str,
        now: Timestamp,
        interval_us: i64,
        burst: u32,
    ) -> Result<Option<i64>, MetaError>;

    /// Remove rows that can no longer delay anyone. Rows removed.
    async fn prune(&self, now: Timestamp, rules: ThrottleRules) -> Result<usize, MetaError>;
}
