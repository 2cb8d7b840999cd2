//! The `audit` table and its anchor in SQLite. Appends run in the single writer's
//! transaction, so the tail they chain from cannot change under them.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use crate::ids::Timestamp;
use crate::meta::audit::{Audit, AuditEntry, ChainKey, ChainedEntry, Link, chain};
use crate::meta::error::MetaError;
use crate::meta::page::Page;

fn last_link(c: &Connection) -> rusqlite::Result<Link> {
    let last = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Link {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()?;
    match last {
        Some(l) => Ok(l),
        None => anchor(c),
    }
}

fn anchor(c: &Connection) -> rusqlite::Result<Link> {
    Ok(
        c.query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok(Link {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_else(Link::genesis),
    )
}

/// Append entries in order, chaining from the current tail (read inside the caller's write
/// transaction, so another process appending too cannot fork the chain).
pub fn append(c: &Connection, key: &ChainKey, entries: &[AuditEntry]) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO audit (seq, id, at, event, actor_id, subject_id, client_ip, detail, hash,
                            key_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for e in chain(key, last_link(c)?, entries) {
        stmt.execute(params![
            e.seq,
            e.entry.id.hyphenated().to_string(),
            e.entry.at,
            e.entry.event,
            e.entry.actor_id,
            e.entry.subject_id,
            e.entry.client_ip,
            e.detail_raw,
            e.hash,
            e.key_id,
        ])?;
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainedEntry> {
    let id: String = r.get(1)?;
    let detail: String = r.get(7)?;
    Ok(ChainedEntry {
        seq: r.get(0)?,
        entry: AuditEntry {
            id: uuid::Uuid::try_parse(&id).unwrap_or_default(),
            at: r.get(2)?,
            event: r.get(3)?,
            actor_id: r.get(4)?,
            subject_id: r.get(5)?,
            client_ip: r.get(6)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        },
        hash: r.get(8)?,
        detail_raw: detail,
        key_id: r.get(9)?,
    })
}

const COLUMNS: &str = "seq, id, at, event, actor_id, subject_id, client_ip, detail, hash, key_id";

/// Newest first, after the `seq` cursor.
pub fn list(
    c: &Connection,
    before_seq: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Page<ChainedEntry>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit WHERE (?1 IS NULL OR seq < ?1) ORDER BY seq DESC LIMIT ?2"
        ))?
        .query_map(
            params![before_seq, i64::try_from(limit + 1).unwrap_or(i64::MAX)],
            row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Remove entries older than `cutoff`, moving the anchor to the last one removed.
pub fn prune(c: &Connection, cutoff: Timestamp) -> rusqlite::Result<usize> {
    let last: Option<(i64, Vec<u8>)> = c
        .query_row(
            "SELECT seq, hash FROM audit WHERE at < ?1 ORDER BY seq DESC LIMIT 1",
            [cutoff],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = last else {
        return Ok(0);
    };
    let n = c.execute("DELETE FROM audit WHERE seq <= ?1", [seq])?;
    c.execute(
        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )?;
    Ok(n)
}

/// Entries in chain order after `after_seq`.
pub fn chain_page(
    c: &Connection,
    after_seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<ChainedEntry>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?
    .query_map(
        params![after_seq, i64::try_from(limit).unwrap_or(i64::MAX)],
        row,
    )?
    .collect()
}

#[async_trait]
impl Audit for Sqlite {
    async fn append(&self, key: &ChainKey, entries: Vec<AuditEntry>) -> Result<(), MetaError> {
        let key = ChainKey(key.0);
        self.write(move |c| append(c, &key, &entries)).await
    }

    async fn list(
        &self,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Page<ChainedEntry>, MetaError> {
        self.read(move |c| list(c, before_seq, limit)).await
    }

    async fn prune(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| prune(c, cutoff)).await
    }

    async fn anchor(&self) -> Result<Link, MetaError> {
        self.read(anchor).await
    }

    async fn chain_page(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, MetaError> {
        self.read(move |c| chain_page(c, after_seq, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::audit::{ChainCheck, ChainKeys};
    use crate::meta::sqlite::test_conn;

    const K: ChainKey = ChainKey([7; 32]);

    /// What `Audit::verify_chain` does, on one connection.
    fn verify_chain(c: &Connection, key: &ChainKey) -> rusqlite::Result<Vec<String>> {
        verify_with(c, &ChainKeys::new([ChainKey(key.0)]))
    }

    fn verify_with(c: &Connection, keys: &ChainKeys) -> rusqlite::Result<Vec<String>> {
        let start = anchor(c)?;
        let after = start.seq;
        let mut check = ChainCheck::new(keys, start);
        for e in chain_page(c, after, usize::MAX)? {
            check.next(e);
        }
        Ok(check.finish())
    }

    fn entry(event: &str) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: Timestamp::now(),
            event: event.into(),
            actor_id: None,
            subject_id: Some("s".into()),
            client_ip: Some("127.0.0.1".into()),
            detail: serde_json::json!({"k": 1}),
        }
    }

    #[test]
    fn chain_detects_edits_and_deletions() {
        let c = test_conn();
        append(&c, &K, &[entry("a"), entry("b"), entry("c")]).unwrap();
        append(&c, &K, &[entry("d")]).unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());

        c.execute("UPDATE audit SET event = 'x' WHERE seq = 2", [])
            .unwrap();
        assert_eq!(verify_chain(&c, &K).unwrap().len(), 1);
        c.execute("UPDATE audit SET event = 'b' WHERE seq = 2", [])
            .unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());

        c.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        assert!(!verify_chain(&c, &K).unwrap().is_empty());
        // Without the key the chain cannot be verified, let alone recomputed.
        assert!(!verify_chain(&c, &ChainKey([8; 32])).unwrap().is_empty());
    }

    #[test]
    fn a_new_secret_continues_the_chain_and_each_entry_is_checked_with_its_own_key() {
        const NEW: ChainKey = ChainKey([9; 32]);
        let c = test_conn();
        append(&c, &K, &[entry("a"), entry("b")]).unwrap();
        // Written before fingerprints were kept: no key id.
        c.execute("UPDATE audit SET key_id = NULL WHERE seq = 1", [])
            .unwrap();
        append(&c, &NEW, &[entry("c"), entry("d")]).unwrap();
        let both = ChainKeys::new([ChainKey(NEW.0), ChainKey(K.0)]);
        assert_eq!(verify_with(&c, &both).unwrap(), Vec::<String>::new());

        // Only the new key: the old entries are "signed with another key", not altered.
        let only_new = ChainKeys::new([ChainKey(NEW.0)]);
        let problems = verify_with(&c, &only_new).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("predates key fingerprints"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("entry 2 signed with another key")
                && problems[1].contains(&K.fingerprint()),
            "{problems:?}"
        );
        assert!(!problems.iter().any(|p| p.contains("was altered\n")));

        // An edit under a key that is given is still tampering.
        c.execute("UPDATE audit SET event = 'x' WHERE seq = 4", [])
            .unwrap();
        let problems = verify_with(&c, &both).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("entry 4") && problems[0].contains("altered"));
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable() {
        let c = test_conn();
        let mut old = entry("old");
        old.at = Timestamp::from_unix_secs(1);
        append(&c, &K, &[old, entry("new1"), entry("new2")]).unwrap();
        assert_eq!(prune(&c, Timestamp::from_unix_secs(100)).unwrap(), 1);
        assert!(verify_chain(&c, &K).unwrap().is_empty());
        append(&c, &K, &[entry("new3")]).unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());
        // Removing the oldest remaining entry without moving the anchor is detected.
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(!verify_chain(&c, &K).unwrap().is_empty());
    }
}
