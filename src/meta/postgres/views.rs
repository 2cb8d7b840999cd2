//! The `view_uses` table in PostgreSQL.
//!
//! Invariant: the first use is one `INSERT ... ON CONFLICT DO NOTHING` on the primary key, so
//! of two nodes seeing a token's first use at once exactly one records it.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{PgResult, Postgres};
use crate::ids::Timestamp;
use crate::meta::error::MetaError;
use crate::meta::views::Views;

/// Record a token's first use; `true` when this call recorded it.
pub async fn first_view(
    c: &impl GenericClient,
    key: &[u8],
    expires_at: Timestamp,
) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "INSERT INTO view_uses (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .await?;
    Ok(c.execute(&st, &[&key, &expires_at]).await? == 1)
}

/// Forget uses of expired tokens.
pub async fn prune_views(c: &impl GenericClient, now: Timestamp) -> PgResult<usize> {
    let st = c
        .prepare_cached("DELETE FROM view_uses WHERE expires_at <= $1")
        .await?;
    Ok(usize::try_from(c.execute(&st, &[&now]).await?).unwrap_or(usize::MAX))
}

#[async_trait]
impl Views for Postgres {
    async fn first_view(&self, key: Vec<u8>, expires_at: Timestamp) -> Result<bool, MetaError> {
        self.one((key, expires_at), |c, (key, expires_at)| {
            Box::pin(first_view(c, key, *expires_at))
        })
        .await
    }

    async fn prune_views(&self, now: Timestamp) -> Result<usize, MetaError> {
        self.one(now, |c, &now| Box::pin(prune_views(c, now))).await
    }
}
