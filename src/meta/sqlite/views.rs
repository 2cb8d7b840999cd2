//! The `view_uses` table in SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::Sqlite;
use crate::ids::Timestamp;
use crate::meta::error::MetaError;
use crate::meta::views::Views;

/// Record a token's first use; `true` when this call recorded it.
pub fn first_view(c: &Connection, key: &[u8], expires_at: Timestamp) -> rusqlite::Result<bool> {
    let n = c.execute(
        "INSERT INTO view_uses (key, expires_at) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        params![key, expires_at],
    )?;
    Ok(n == 1)
}

/// Forget uses of expired tokens.
pub fn prune_views(c: &Connection, now: Timestamp) -> rusqlite::Result<usize> {
    c.execute("DELETE FROM view_uses WHERE expires_at <= ?1", [now])
}

#[async_trait]
impl Views for Sqlite {
    async fn first_view(&self, key: Vec<u8>, expires_at: Timestamp) -> Result<bool, MetaError> {
        self.write(move |c| first_view(c, &key, expires_at)).await
    }

    async fn prune_views(&self, now: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| prune_views(c, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::test_conn;

    #[test]
    fn a_first_use_is_recorded_once_until_it_expires() {
        let c = test_conn();
        let now = Timestamp::now();
        assert!(first_view(&c, b"k1", now.plus_secs(60)).unwrap());
        assert!(!first_view(&c, b"k1", now.plus_secs(60)).unwrap());
        assert!(first_view(&c, b"k2", now.plus_secs(1)).unwrap());
        assert_eq!(prune_views(&c, now.plus_secs(2)).unwrap(), 1);
        assert!(!first_view(&c, b"k1", now.plus_secs(60)).unwrap());
    }
}
