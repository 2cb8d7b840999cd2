//! Per-user storage quota with reservations for uploads in flight.
//!
//! Invariant: at every instant, `stored + reserved <= quota` for each user. An upload reserves
//! its maximum size before reading the body; its row is committed (moving bytes from
//! "reserved" to "stored" via the usage trigger) before the reservation is released, so the
//! sum can only over-count, never under-count. Two concurrent uploads therefore cannot both
//! slip under the quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ids::UserId;
use crate::meta::{MetaError, MetaStore};

/// The reservation ledger.
#[derive(Clone)]
pub struct Quota {
    limit: u64,
    meta: MetaStore,
    reserved: Arc<Mutex<HashMap<UserId, u64>>>,
    /// Serialises the check-then-reserve step (an async lock: it is held across a DB read).
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// Nothing (or not enough) is left.
    #[error("quota exceeded")]
    Exceeded,
    /// The usage could not be read.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Bytes held for an upload in flight; released on drop.
pub struct Reservation {
    ledger: Option<Arc<Mutex<HashMap<UserId, u64>>>>,
    user: UserId,
    bytes: u64,
}

impl Reservation {
    /// How many bytes this upload may store.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(ledger) = &self.ledger else { return };
        if let Ok(mut map) = ledger.lock()
            && let Some(v) = map.get_mut(&self.user)
        {
            *v = v.saturating_sub(self.bytes);
            if *v == 0 {
                map.remove(&self.user);
            }
        }
    }
}

impl Quota {
    /// A ledger enforcing `limit` bytes per user (0 = unlimited).
    pub fn new(limit: u64, meta: MetaStore) -> Self {
        Self {
            limit,
            meta,
            reserved: Arc::default(),
            gate: Arc::default(),
        }
    }

    /// Reserve up to `want` bytes. With `exact`, anything less than `want` fails; otherwise
    /// (length unknown in advance) the reservation may be smaller, down to 1 byte.
    pub async fn reserve(
        &self,
        user: UserId,
        want: u64,
        exact: bool,
    ) -> Result<Reservation, QuotaError> {
        if self.limit == 0 {
            return Ok(Reservation {
                ledger: None,
                user,
                bytes: want,
            });
        }
        let _gate = self.gate.lock().await;
        // Reservations only, then storage: an upload that commits in between is then counted
        // twice (held before, stored after), never not at all. The other order would let a
        // commit-and-release slip between the two reads and overshoot the quota.
        let held = self.held(user)?;
        let stored = self.meta.users().used_bytes(user).await?;
        let free = self.limit.saturating_sub(stored).saturating_sub(held);
        let bytes = if exact { want } else { want.min(free) };
        if bytes > free || (bytes == 0 && want > 0) {
            return Err(QuotaError::Exceeded);
        }
        let mut map = self.reserved.lock().map_err(|_| QuotaError::Exceeded)?;
        *map.entry(user).or_insert(0) += bytes;
        Ok(Reservation {
            ledger: Some(self.reserved.clone()),
            user,
            bytes,
        })
    }

    fn held(&self, user: UserId) -> Result<u64, QuotaError> {
        let map = self.reserved.lock().map_err(|_| QuotaError::Exceeded)?;
        Ok(map.get(&user).copied().unwrap_or(0))
    }
}
