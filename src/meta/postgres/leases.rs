//! Leases in PostgreSQL: one statement (an upsert that only replaces an expired or own lease;
//! two nodes taking an expired lease at once conflict on the row, and the second sees the
//! first's fresh lease when it re-checks the condition).

use async_trait::async_trait;

use super::Postgres;
use crate::ids::Timestamp;
use crate::meta::error::MetaError;
use crate::meta::leases::Leases;

#[async_trait]
impl Leases for Postgres {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, MetaError> {
        let args = (name.to_owned(), holder.to_owned(), now, until);
        self.one(args, |c, (name, holder, now, until)| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $4)
                         ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $4
                         WHERE leases.holder = $2 OR leases.expires_at <= $3
                         RETURNING 1",
                    )
                    .await?;
                Ok(c.query_opt(&st, &[name, holder, now, until])
                    .await?
                    .is_some())
            })
        })
        .await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), MetaError> {
        let args = (name.to_owned(), holder.to_owned());
        self.one(args, |c, (name, holder)| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM leases WHERE name = $1 AND holder = $2",
                    &[name, holder],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }
}
