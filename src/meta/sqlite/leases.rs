//! Leases in SQLite: one statement (an upsert that only replaces an expired or own lease).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::Sqlite;
use crate::ids::Timestamp;
use crate::meta::error::MetaError;
use crate::meta::leases::Leases;

#[async_trait]
impl Leases for Sqlite {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, MetaError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?4)
                 ON CONFLICT (name) DO UPDATE SET holder = ?2, expires_at = ?4
                 WHERE leases.holder = ?2 OR leases.expires_at <= ?3
                 RETURNING 1",
            )?
            .query_row(params![name, holder, now, until], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
        })
        .await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), MetaError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |c| {
            c.prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])
                .map(|_| ())
        })
        .await
    }
}
